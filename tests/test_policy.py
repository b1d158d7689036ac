"""The policy: tokenizer, coordinate-channel image processor, processor, tiny Qwen2.5-VL, loading, LoRA, TRL."""
import json

import numpy as np
import pytest
import torch

from grto_lib import policy
from grto_lib.policy import PolicyConfig, load_policy
from grto_lib.tinyworld import tiny_qwen
from grto_lib.tinyworld.tiny_qwen import (CHAT_TEMPLATE, CoordImageProcessor, TinyQwenProcessor, build_tiny_policy,
                                          build_tokenizer)
from grto_lib.prompts import (TINY_SYSTEM_PROMPT, build_messages, format_answer, policy_view, system_prompt_for,
                              to_trl_rows)
from grto_lib.rewards import parse_answer

CORPUS = ["the red circle", "the blue square", "the shape left of the green one"]


def _image(seed=0, size=128):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _conversation(query, image):
    """build_messages with the image filled in, as TRL passes prompts to the processor."""
    messages = build_messages(query)
    messages[1]["content"][0] = {"type": "image", "image": image}
    return messages


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny_policy(CORPUS, seed=0)
    return model.eval(), processor


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    model, processor = tiny
    folder = tmp_path_factory.mktemp("tiny_policy")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# --- tokenizer ------------------------------------------------------------------------------------------------


def test_tokenizer_round_trip_of_an_answer():
    tokenizer = build_tokenizer(CORPUS)
    text = format_answer([12, 30, 50, 70], [[30.4, 50], [31, 52]], think="the red circle")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # <think> the red circle </think> <answer> { "bbox" : [ 4 numbers, 3 commas ] ,
    # "points" : [ [ x , y ] , [ x , y ] ] } </answer>
    assert len(ids) == 1 + 3 + 1 + 1 + 3 + 9 + 3 + 13 + 2
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == ('<think> the red circle </think> <answer> { "bbox" : [ 12 , 30 , 50 , 70 ] , '
                       '"points" : [ [ 30 , 50 ] , [ 31 , 52 ] ] } </answer>')
    payload = decoded[decoded.index("<answer>") + len("<answer>"):decoded.index("</answer>")]
    assert json.loads(payload) == {"bbox": [12, 30, 50, 70], "points": [[30, 50], [31, 52]]}
    answer = parse_answer(decoded)
    assert answer.bbox == (12, 30, 50, 70) and answer.points == [(30, 50), (31, 52)]


def test_tokenizer_vocabulary():
    tokenizer = build_tokenizer(CORPUS)
    for token in ["0", "128", "255", '"bbox"', '"points"', "<think>", "</answer>", "{", ":", "left", "green"]:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id, token
    assert tokenizer.tokenize('"bbox":[255,0]') == ['"bbox"', ":", "[", "255", ",", "0", "]"]
    assert tokenizer("The RED zebra")["input_ids"] == [tokenizer.convert_tokens_to_ids("the"),
                                                       tokenizer.convert_tokens_to_ids("red"), tokenizer.unk_token_id]
    assert tokenizer("256")["input_ids"] == [tokenizer.unk_token_id]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    # Control tokens vanish when TRL decodes completions; the answer tags must not.
    ids = tokenizer("<|im_start|><think><|image_pad|>")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>"
    # 8 special + 6 answer tokens + 256 numbers + 32 punctuation marks + 3 roles, then the words
    assert tokenizer.convert_tokens_to_ids("0") == 14 and tokenizer.convert_tokens_to_ids("255") == 269


# --- processor ------------------------------------------------------------------------------------------------


def test_chat_template_renders_build_messages(tiny):
    _, processor = tiny
    assert system_prompt_for(processor) == TINY_SYSTEM_PROMPT  # the words the stand-in's tokenizer knows
    text = processor.apply_chat_template(build_messages("the red circle", system_prompt_for(processor)),
                                         add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou segment the object a query refers to.")
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>the red circle<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert not processor.apply_chat_template(build_messages("q"), add_generation_prompt=False).endswith("assistant\n")


def test_processor_outputs_for_a_128px_image(tiny):
    _, processor = tiny
    inputs = processor.apply_chat_template([_conversation("the red circle", policy_view(_image(), 128))],
                                           add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    # 16 x 16 patches of 8 px, each 5 channels x 2 frames x 8 x 8; merged 2 x 2 into 64 image tokens
    assert inputs["pixel_values"].shape == (256, 5 * 2 * 8 * 8)
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_pad).sum()) == 64
    assert torch.equal(inputs["mm_token_type_ids"].bool(), inputs["input_ids"] == image_pad)


def test_coordinate_channels_hold_absolute_positions():
    processor = CoordImageProcessor(image_size=128)
    pixels = processor(np.zeros((128, 128, 3), np.uint8))["pixel_values"].reshape(256, 5, 2, 8, 8)
    assert np.all(pixels[:, :3] == -1.0)  # black is -1 after scaling
    x_mean, y_mean = pixels[:, 3].mean(axis=(1, 2, 3)), pixels[:, 4].mean(axis=(1, 2, 3))
    # rows are ordered in 2 x 2 merge blocks: patch (0,0), (0,1), (1,0), (1,1), then the next block to the right
    step = 8 * 2 / 128  # patch width in [-1, 1] units
    first = -1 + 4 * 2 / 128  # mean of the centres of columns 0..7
    np.testing.assert_allclose(x_mean[:5], [first, first + step, first, first + step, first + 2 * step], atol=1e-6)
    np.testing.assert_allclose(y_mean[:5], [first, first, first + step, first + step, first], atol=1e-6)
    assert len(np.unique(np.round(x_mean, 6))) == 16 and len(np.unique(np.round(y_mean, 6))) == 16
    np.testing.assert_allclose(pixels[0, 3, 0, 0, :2], [-1 + 1 / 128, -1 + 3 / 128], atol=1e-6)  # pixel centres


def test_patch_layout_matches_qwen2vl_image_processor():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    channels = np.random.default_rng(0).standard_normal((5, 32, 48)).astype(np.float32)
    ours = CoordImageProcessor(image_size=32).patchify(channels)
    theirs, grid_h, grid_w = Qwen2VLImageProcessor.patchify(None, torch.from_numpy(channels)[None], patch_size=8,
                                                            merge_size=2, temporal_patch_size=2)
    assert (grid_h, grid_w) == (4, 6)
    np.testing.assert_array_equal(ours, theirs[0].numpy())


def test_processor_save_and_reload(tiny, saved):
    _, processor = tiny
    reloaded = TinyQwenProcessor.from_pretrained(saved)
    assert reloaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert reloaded.chat_template == CHAT_TEMPLATE
    a = processor(text=["<|image_pad|> the red circle"], images=[_image(1)], return_tensors="pt")
    b = reloaded(text=["<|image_pad|> the red circle"], images=[_image(1)], return_tensors="pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        CoordImageProcessor()(np.zeros((128, 128, 3), np.float32))
    with pytest.raises(ValueError, match="multiple of"):
        CoordImageProcessor(image_size=100)


# --- model ----------------------------------------------------------------------------------------------------


def test_tiny_config(tiny):
    model, processor = tiny
    text, vision = model.config.text_config, model.config.vision_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert vision.in_channels == 5 and vision.patch_size == 8 and vision.spatial_merge_size == 2
    assert model.model.visual.patch_embed.proj.in_channels == 5
    assert list(vision.fullatt_block_indexes) == list(range(vision.depth))
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert 300_000 < sum(p.numel() for p in model.parameters()) < 2_000_000


def test_number_embeddings_are_ordered(tiny):
    model, processor = tiny
    ids = processor.tokenizer.convert_tokens_to_ids([str(n) for n in range(256)])
    rows = torch.nn.functional.normalize(model.get_output_embeddings().weight[ids], dim=1)
    similarity = rows @ rows.T
    assert similarity[100, 101] > similarity[100, 110] > similarity[100, 200]


def test_forward_and_generate(tiny):
    model, processor = tiny
    inputs = processor.apply_chat_template([_conversation("the red circle", _image())], add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 5)
    assert model.generation_config.eos_token_id == processor.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_image_changes_the_output(tiny):
    model, processor = tiny
    logits = []
    for seed in (0, 1):
        inputs = processor.apply_chat_template([_conversation("the red circle", _image(seed))],
                                               add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        with torch.no_grad():
            logits.append(model(**inputs).logits[0, -1])
    assert (logits[0] - logits[1]).abs().max() > 1e-4


# --- loading --------------------------------------------------------------------------------------------------


def test_save_reload_gives_identical_logits(tiny, saved):
    model, processor = tiny
    reloaded, reloaded_processor = load_policy(PolicyConfig(model_name_or_path=str(saved)))
    assert type(reloaded).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert isinstance(reloaded_processor, TinyQwenProcessor)
    inputs = processor.apply_chat_template([_conversation("the blue square", _image(3))], add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reloaded.eval()(**inputs).logits)


def test_lora_wraps_the_language_model_only(saved):
    model, _ = load_policy(PolicyConfig(model_name_or_path=str(saved), lora=True, lora_rank=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(".visual." not in n for n in trainable)
    layers = model.base_model.model.config.text_config.num_hidden_layers
    assert len(trainable) == 2 * 7 * layers  # A and B for q, k, v, o, gate, up, down in every layer
    frozen = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert frozen and not any(p.requires_grad for p in frozen)


@pytest.mark.parametrize("rank,alpha,dropout", [(16, 32, 0.05), (4, 12, 0.0)])
def test_the_lora_settings_of_the_train_config_make_the_adapter(rank, alpha, dropout):
    """``TrainConfig.lora_rank``, ``lora_alpha`` and ``lora_dropout`` reach peft through ``runs.load_models``; their
    defaults are PolicyConfig's (the values every LoRA run used before the fields existed)."""
    from grto_lib.config import TrainConfig
    from grto_lib.runs import load_models

    assert [getattr(PolicyConfig(), f) for f in ("lora_rank", "lora_alpha", "lora_dropout")] == [16, 32, 0.05]
    assert [getattr(TrainConfig(), f) for f in ("lora_rank", "lora_alpha", "lora_dropout")] == [16, 32, 0.05]
    model, _, _, _ = load_models(TrainConfig(lora=True, lora_rank=rank, lora_alpha=alpha, lora_dropout=dropout))
    adapter = model.peft_config["default"]
    assert (adapter.r, adapter.lora_alpha, adapter.lora_dropout) == (rank, alpha, dropout)
    layer = model.base_model.model.model.language_model.layers[0].self_attn.q_proj
    assert layer.lora_A["default"].weight.shape[0] == rank == layer.lora_B["default"].weight.shape[1]
    assert layer.scaling["default"] == alpha / rank
    assert isinstance(layer.lora_dropout["default"], torch.nn.Dropout if dropout else torch.nn.Identity)


def test_config_defaults_and_errors(tmp_path):
    tiny, paper = PolicyConfig(), PolicyConfig(preset="paper")
    assert (tiny.policy_image_size, tiny.lora, tiny.dtype) == (128, False, "float32")
    assert tiny.model_name_or_path == str(policy.REPO_ROOT / "data" / "standins" / "policy")
    assert (paper.policy_image_size, paper.lora, paper.dtype, paper.model_name_or_path) == (
        840, True, "bfloat16", "Qwen/Qwen2.5-VL-3B-Instruct")
    with pytest.raises(ValueError, match="preset='huge'.*tiny, paper"):
        PolicyConfig(preset="huge")
    with pytest.raises(ValueError, match="dtype='float64'"):
        PolicyConfig(dtype="float64")
    with pytest.raises(ValueError, match="multiple of 28"):
        PolicyConfig(preset="paper", policy_image_size=800)
    for field, value, message in [("lora_rank", 0, "a positive integer"), ("lora_alpha", 2.5, "a positive integer"),
                                  ("lora_dropout", 1.0, "a number in \\[0, 1\\)")]:
        with pytest.raises(ValueError, match=f"PolicyConfig.{field}={value!r} must be {message}"):
            PolicyConfig(**{field: value})
    with pytest.raises(FileNotFoundError, match="python -m grto_lib.tinyworld.standins --only policy"):
        load_policy(PolicyConfig(model_name_or_path=str(tmp_path / "missing")))


def test_image_size_must_match_the_tiny_folder(saved):
    with pytest.raises(ValueError, match="reads 128 px images"):
        load_policy(PolicyConfig(model_name_or_path=str(saved), policy_image_size=112))


def test_paper_code_path_on_a_local_folder(hugging_face_qwen_folder):
    """The paper preset's loader (stock processor, LoRA on by default) on a tiny 3-channel, 14 px-patch model."""
    from transformers import Qwen2_5_VLProcessor

    model, paper_processor = load_policy(PolicyConfig(preset="paper", dtype="float32", policy_image_size=56,
                                                      model_name_or_path=str(hugging_face_qwen_folder)))
    assert type(model).__name__ == "PeftModelForCausalLM"
    assert isinstance(paper_processor, Qwen2_5_VLProcessor)
    inputs = paper_processor.apply_chat_template([_conversation("the red circle", policy_view(_image(), 112))],
                                                 add_generation_prompt=True, tokenize=True, return_dict=True,
                                                 return_tensors="pt")
    # min = max pixels = 56^2: a 112 px image is brought to the 56 px view (4 x 4 patches of 14 px), where the
    # stock processor would keep 112 px (8 x 8 patches)
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert inputs["pixel_values"].shape == (16, 3 * 2 * 14 * 14)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


# --- TRL ------------------------------------------------------------------------------------------------------


def test_grpo_trainer_accepts_the_tiny_policy(tiny, saved, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    model, processor = load_policy(PolicyConfig(model_name_or_path=str(saved)))
    rows = to_trl_rows([type("S", (), {"query": q, "image": _image(i)})() for i, q in enumerate(CORPUS * 2)], 128,
                       TINY_SYSTEM_PROMPT)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, use_cpu=True,
                      bf16=False, report_to=[], max_completion_length=8, beta=0.0, loss_type="grpo")
    trainer = GRPOTrainer(model=model, processing_class=processor, args=args, train_dataset=rows,
                          reward_funcs=[lambda completions, **kwargs: [0.0] * len(completions)])
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert trainer._is_vlm and trainer.eos_token_ids == [im_end]
    assert trainer._image_pad_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # TRL's own prompt path: images inside the conversation, chat template, tokenization, vision fields
    prompts = [_conversation(q, policy_view(_image(i), 128)) for i, q in enumerate(CORPUS[:2])]
    prompt_ids, images, fields = trainer._tokenize_prompts(prompts)
    assert [len(i) for i in images] == [1, 1]
    assert sorted(fields) == ["image_grid_thw", "mm_token_type_ids", "pixel_values"]
    assert fields["pixel_values"].shape == (512, 640)
    assert all(ids.count(trainer._image_pad_token_id) == 64 for ids in prompt_ids)


# --- the fast paths (grto_lib.fast_qwen) ------------------------------------------------------------------------


def _assert_same_logits_and_gradients(stock, fast, batch) -> None:
    """The stock and the fast model give the same logits and the same gradient of every parameter, to 1e-5."""
    outputs = []
    for m in (stock, fast):
        m.train()
        logits = m(**batch).logits
        logits.float().logsumexp(-1).mean().backward()
        outputs.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (stock_logits, stock_grads), (fast_logits, fast_grads) = outputs
    assert torch.allclose(fast_logits, stock_logits, atol=1e-5)
    assert stock_grads.keys() == fast_grads.keys() and any("visual" in n for n in stock_grads)
    for name, grad in stock_grads.items():
        assert torch.allclose(fast_grads[name], grad, atol=1e-5), name


@pytest.mark.parametrize("repeats", [1, 4])
def test_fast_paths_compute_what_the_stock_classes_compute(tiny, repeats):
    """Batched vision attention and encoding each repeated image once give the stock model's logits and gradients
    to 1e-5, for distinct images and for images repeated as GRPO repeats them."""
    import copy

    from grto_lib.data import load_dataset
    from grto_lib.fast_qwen import RepeatedImagesModel, SameSizeImagesVisionAttention, disable_fast_paths

    model, processor = tiny
    fast = copy.deepcopy(model)
    stock = copy.deepcopy(model)
    disable_fast_paths(stock)
    assert isinstance(fast.model, RepeatedImagesModel) and type(stock.model) is not RepeatedImagesModel
    assert any(isinstance(m, SameSizeImagesVisionAttention) for m in fast.modules())
    samples = load_dataset("reasonseg", "train", size=8)
    texts, images = [], []
    for i in range(8):
        sample = samples[i // repeats]
        texts.append(processor.apply_chat_template(build_messages(sample.query, system_prompt_for(processor)),
                                                   add_generation_prompt=True)
                     + "<think> x </think>")
        images.append(policy_view(sample.image, 128))
    _assert_same_logits_and_gradients(stock, fast, processor(text=texts, images=images, padding=True,
                                                              return_tensors="pt"))


@pytest.mark.parametrize("view", [224, 196])
def test_fast_paths_are_exact_on_qwen2_5_vl_3bs_vision_layout(hugging_face_qwen_folder, view):
    """The 3B's vision tower attends within 112 px windows except in its full-attention blocks (here block 1 of 2),
    14 px patches. At 224 px every image has 4 equal windows (the batched attention runs over windows of all
    images); at 196 px the windows differ in size (the stock code runs). Both: the stock model's logits and
    gradients to 1e-5, for images repeated as GRPO repeats them."""
    import copy

    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from grto_lib.data import load_dataset
    from grto_lib.fast_qwen import disable_fast_paths, enable_fast_paths

    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(hugging_face_qwen_folder, dtype=torch.float32)
    assert stock.config.vision_config.fullatt_block_indexes == [1] and stock.config.vision_config.window_size == 112
    fast = copy.deepcopy(stock)
    enable_fast_paths(fast)
    disable_fast_paths(stock)
    processor = AutoProcessor.from_pretrained(hugging_face_qwen_folder,
                                              size={"shortest_edge": view * view, "longest_edge": view * view})
    samples = load_dataset("reasonseg", "train", size=2)
    texts = [processor.apply_chat_template(build_messages(samples[i // 2].query), add_generation_prompt=True)
             + "<think> x </think>" for i in range(4)]
    images = [policy_view(samples[i // 2].image, view) for i in range(4)]
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    assert batch["image_grid_thw"][0].tolist() == [1, view // 14, view // 14]
    _assert_same_logits_and_gradients(stock, fast, batch)


# --- the committed stand-in -----------------------------------------------------------------------------------


STANDIN_BUILT = (policy.REPO_ROOT / policy.TINY_DEFAULT_PATH / "config.json").is_file()


@pytest.mark.skipif(not STANDIN_BUILT, reason="stand-in not built (python -m grto_lib.tinyworld.standins --only policy)")
def test_standin_follows_its_query():
    """Asked in turn for every object of a scene by its name, the stand-in boxes the object named (the manifest
    holds the number on 120 scenes: 0.995, against 0.41 for a blind guess)."""
    from grto_lib.tinyworld.diagnostics import follows_query

    model, processor = load_policy(PolicyConfig())
    scores = follows_query(model, processor, 128, scenes=24)
    assert scores["right_object"] >= 0.9 > scores["chance"] + 0.4
    assert scores["same_object_for_every_query"] <= 0.1


@pytest.mark.skipif(not STANDIN_BUILT, reason="stand-in not built (python -m grto_lib.tinyworld.standins --only policy)")
def test_selection_scores_show_what_reward_can_select():
    """On reasonseg the stand-in's greedy answer is often wrong while some sample is right: the gap RL closes."""
    from grto_lib.data import load_dataset
    from grto_lib.tinyworld.diagnostics import selection_scores

    model, processor = load_policy(PolicyConfig())
    scores = selection_scores(model, processor, load_dataset("reasonseg", "test", size=12), 128, rollouts=3)
    assert scores["all"]["n"] == 12 == sum(row["n"] for kind, row in scores.items() if kind != "all")
    assert all(row["pass_at_k"] >= row["sampled_box_acc"] for row in scores.values())
    assert scores["all"]["pass_at_k"] >= scores["all"]["greedy_box_acc"] + 0.2  # measured: 0.75 against 0.33


@pytest.mark.skipif(not STANDIN_BUILT, reason="stand-in not built (python -m grto_lib.tinyworld.standins --only policy)")
def test_no_two_query_words_share_an_input_embedding():
    from grto_lib.tinyworld.worlds import query_corpus

    model, processor = load_policy(PolicyConfig())
    tokenizer = processor.tokenizer
    words = tiny_qwen.corpus_words(query_corpus())
    ids = tokenizer.convert_tokens_to_ids(words)
    assert tokenizer.unk_token_id not in ids and len(set(ids)) == len(words)
    rows = model.get_input_embeddings().weight[ids]
    distances = torch.cdist(rows, rows) + torch.eye(len(ids)) * 1e9
    assert distances.min() > 0.1  # every pair of different words reads differently


# --- the stand-in recipe --------------------------------------------------------------------------------------


def test_the_thought_lists_the_objects_reads_the_query_and_picks():
    from grto_lib.data import load_dataset
    from grto_lib.geometry import mask_to_box
    from grto_lib.tinyworld.policy_standin import candidates, readings, target_completion

    scenes = load_dataset("reasonseg", "train", size=40).scene
    for i in range(40):
        scene = scenes(i)
        listed = candidates(scene)
        assert sorted(listed) == list(range(len(scene.objects)))  # every shape, left to right
        centres = [mask_to_box(scene.objects[k].mask)[[0, 2]].sum() for k in listed]
        assert centres == sorted(centres)
        reading, misreading, wrong = readings(scene)
        for misread in (False, True):
            text = target_completion(scene, misread)
            think = text[len("<think>"):text.index("</think>")]
            entries, rest = think.split(" : ")
            assert len(entries.split(" ; ")) == len(listed)
            query, picked = rest.split(" = ")
            pick = wrong if misread and misreading is not None else scene.target
            assert query == f"{scene.sample.query} means {misreading if pick != scene.target else reading}"
            answer = parse_answer(text)
            assert list(answer.bbox) == [float(v) for v in mask_to_box(scene.objects[pick].mask)]
            assert picked.endswith(" ".join(str(int(v)) for v in answer.bbox))
            x, y = answer.points[0]
            assert scene.objects[pick].mask[int(y), int(x)]  # the point lies inside the picked object
        if scene.query_kind == "explicit":
            assert misreading is None
        else:
            assert wrong != scene.target


def test_misreadings_are_the_confusions_the_table_names():
    from grto_lib.data import load_dataset
    from grto_lib.tinyworld.policy_standin import readings

    checked = set()
    for name in ("reasonseg", "earthreason"):
        scenes = load_dataset(name, "train", size=300).scene
        for i in range(300):
            scene = scenes(i)
            reading, misreading, wrong = readings(scene)
            kind, words = scene.query_kind, scene.sample.query.split()
            if kind == "relation":  # the reference object instead of the one related to it
                assert reading.endswith(misreading) and misreading.split()[-1] in (
                    scene.objects[wrong].colour, scene.objects[wrong].kind)
            elif kind == "superlative":
                assert (reading, misreading) in [("largest", "smallest"), ("smallest", "largest"),
                                                 ("leftmost", "rightmost"), ("rightmost", "leftmost"),
                                                 ("topmost", "lowest"), ("lowest", "topmost")]
            elif kind in ("building_near", "building_far", "field_near", "field_road", "field_river"):
                landmark = [w for w in words if w in ("river", "lake", "road")][-1]
                assert scene.objects[wrong].kind == misreading == landmark  # the landmark itself
            elif kind in ("explicit", "landmark"):
                assert misreading is None and wrong is None
            checked.add(kind)
    assert {"relation", "superlative", "explicit", "building_near", "landmark"} <= checked


def test_supervised_batch_labels_only_the_completion(tiny):
    from grto_lib.data import load_dataset
    from grto_lib.tinyworld.policy_standin import supervised_batch

    _, processor = tiny
    samples = load_dataset("shapes", "train", size=3)
    examples = [(samples[i], f"<think>{samples[i].query}</think><answer>x</answer>") for i in range(3)]
    batch = supervised_batch(processor, examples)
    for row, (sample, completion) in enumerate(examples):
        labelled = batch["labels"][row][batch["labels"][row] != -100]
        expected = processor.tokenizer(completion + "<|im_end|>", add_special_tokens=False)["input_ids"]
        assert labelled.tolist() == expected
        assert torch.equal(batch["input_ids"][row, -len(expected):], labelled)  # left padding: completion last


def test_weak_label_mixture_misreads_non_explicit_queries_at_the_given_rate():
    from grto_lib.data import load_dataset
    from grto_lib.tinyworld.policy_standin import WeakLabelMixture, readings

    shares = {"shapes": 1, "reasonseg": 1, "cod": 1, "earthreason": 1}
    mixture = WeakLabelMixture(shares, label_accuracy=0.6, size=400)
    again = WeakLabelMixture(shares, label_accuracy=0.6, size=400)
    misread, worlds = [], []
    for i in range(400):
        name, scene, wrong = mixture.draw(i)
        worlds.append(name)
        sample, completion = mixture[i]
        assert completion == again[i][1] and sample.query == scene.sample.query
        if scene.query_kind == "explicit":
            assert f" means {readings(scene)[0]} = " in completion  # explicit queries keep clean labels
        elif readings(scene)[1] is not None:
            misread.append(wrong)
            assert (f" means {readings(scene)[1]} = " in completion) == wrong
    assert all(60 < worlds.count(name) < 140 for name in shares)
    assert 0.3 < np.mean(misread) < 0.5  # 1 - label_accuracy
    # pretraining scenes (data seed 1) are not the scenes reinforcement learning trains on (seed 0)
    rl = load_dataset("reasonseg", "train", size=400)
    assert not any(np.array_equal(mixture.worlds["reasonseg"][i].image, rl[i].image) for i in range(20))


def test_pretraining_is_deterministic_and_saves_a_loadable_policy(tmp_path):
    from safetensors.torch import load_file

    from grto_lib.tinyworld.policy_standin import pretrain_policy_standin

    kwargs = dict(seed=3, steps=2, batch_size=2, scenes=8, warmup=1, eval_size=0,
                  sizes={"hidden_size": 64, "num_layers": 1})
    report = pretrain_policy_standin(tmp_path / "a", **kwargs)
    pretrain_policy_standin(tmp_path / "b", **kwargs)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert report["steps"] == 2 and np.isfinite(report["final_loss"])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
        "processor_config.json", "tokenizer.json", "tokenizer_config.json"]
    model, processor = load_policy(PolicyConfig(model_name_or_path=str(tmp_path / "a")))
    assert model.config.text_config.hidden_size == 64


def test_committed_standins_match_their_manifest():
    from grto_lib.tinyworld.standins import verify_standins

    assert verify_standins() == []
