"""The policy: tokenizer, coordinate-channel image processor, processor, tiny Qwen2.5-VL, loading, LoRA, TRL."""
import json

import numpy as np
import pytest
import torch

from grto_lib import policy
from grto_lib.policy import (
    CHAT_TEMPLATE, CoordImageProcessor, PolicyConfig, TinyQwenProcessor, build_tiny_policy, build_tokenizer,
    load_policy,
)
from grto_lib.prompts import build_messages, format_answer, policy_view, to_trl_rows
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
    text = processor.apply_chat_template(build_messages("the red circle"), add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou segment the object")
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
    model, _ = load_policy(PolicyConfig(model_name_or_path=str(saved), lora=True, lora_r=4))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(".visual." not in n for n in trainable)
    layers = model.base_model.model.config.text_config.num_hidden_layers
    assert len(trainable) == 2 * 7 * layers  # A and B for q, k, v, o, gate, up, down in every layer
    frozen = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert frozen and not any(p.requires_grad for p in frozen)


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
    with pytest.raises(FileNotFoundError, match="python -m grto_lib.policy_standin"):
        load_policy(PolicyConfig(model_name_or_path=str(tmp_path / "missing")))


def test_image_size_must_match_the_tiny_folder(saved):
    with pytest.raises(ValueError, match="reads 128 px images"):
        load_policy(PolicyConfig(model_name_or_path=str(saved), policy_image_size=112))


def test_paper_code_path_on_a_local_folder(tiny, tmp_path):
    """The paper preset's loader (stock processor, LoRA on by default) on a tiny 3-channel, 14 px-patch model."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    _, processor = tiny
    config = policy.tiny_model_config(processor.tokenizer)
    config.vision_config.in_channels, config.vision_config.patch_size = 3, 14
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(tmp_path)
    Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=processor.tokenizer,
                        video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE).save_pretrained(tmp_path)
    model, paper_processor = load_policy(PolicyConfig(preset="paper", model_name_or_path=str(tmp_path),
                                                      policy_image_size=56, dtype="float32"))
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
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, processor = load_policy(PolicyConfig(model_name_or_path=str(saved)))
    rows = to_trl_rows([type("S", (), {"query": q, "image": _image(i)})() for i, q in enumerate(CORPUS * 2)], 128)
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, use_cpu=True,
                      bf16=False, report_to=[], max_completion_length=8, beta=0.0, loss_type="grpo")
    trainer = GRPOTrainer(model=model, processing_class=processor, args=args, train_dataset=Dataset.from_list(rows),
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


# --- the committed stand-in -----------------------------------------------------------------------------------


@pytest.mark.skipif(not (policy.REPO_ROOT / policy.TINY_DEFAULT_PATH / "config.json").is_file(),
                    reason="stand-in not built (python -m grto_lib.policy_standin)")
def test_standin_answers_and_grounds():
    from grto_lib.data import load_dataset
    from grto_lib.policy_standin import evaluate_boxes

    model, processor = load_policy(PolicyConfig())
    test = load_dataset("shapes", "test")
    scores = evaluate_boxes(model, processor, [test[i] for i in range(64)])  # measured: IoU 0.357, 64 boxes
    assert scores["format_valid"] == 1.0
    assert scores["distinct_boxes"] >= 60  # boxes follow the image, not one box for all
    assert scores["box_iou"] > 0.3
    for name in ("reasonseg", "cod", "earthreason"):  # the format survives unseen words and textured scenes
        test = load_dataset(name, "test")
        assert evaluate_boxes(model, processor, [test[i] for i in range(16)])["format_valid"] >= 0.9, name


# --- the stand-in recipe --------------------------------------------------------------------------------------


def test_supervised_batch_labels_only_the_completion(tiny):
    from grto_lib.data import load_dataset
    from grto_lib.policy_standin import supervised_batch, target_completion

    _, processor = tiny
    samples = [load_dataset("shapes", "train", size=3)[i] for i in range(3)]
    batch = supervised_batch(processor, samples)
    for row, sample in enumerate(samples):
        labelled = batch["labels"][row][batch["labels"][row] != -100]
        expected = processor.tokenizer(target_completion(sample) + "<|im_end|>", add_special_tokens=False)["input_ids"]
        assert labelled.tolist() == expected
        assert torch.equal(batch["input_ids"][row, -len(expected):], labelled)  # left padding: completion last
    text = target_completion(samples[0])
    assert text.startswith(f"<think>{samples[0].query}</think><answer>") and parse_answer(text) is not None


def test_unknown_word_queries_are_deterministic():
    from grto_lib.data import load_dataset
    from grto_lib.policy_standin import UnknownWordQueries

    base = load_dataset("shapes", "train", size=200)
    noisy = UnknownWordQueries(base, rate=0.5, seed=0)
    queries = [noisy[i].query for i in range(200)]
    assert queries == [UnknownWordQueries(base, rate=0.5, seed=0)[i].query for i in range(200)]
    changed = [q for q, i in zip(queries, range(200)) if q != base[i].query]
    assert 70 < len(changed) < 130
    assert all(1 <= q.split().count("<|unk|>") <= 3 for q in changed)
    assert [q.replace("<|unk|>", "").split() for q in changed] == [
        base[i].query.split() for i in range(200) if queries[i] != base[i].query]


def test_textured_backgrounds_keep_the_objects():
    from grto_lib.data import load_dataset
    from grto_lib.policy_standin import TexturedBackgrounds

    base = load_dataset("shapes", "train", size=40)
    textured = TexturedBackgrounds(base, rate=0.5, seed=0)
    changed = 0
    for i in range(40):
        sample, original, scene = textured[i], base[i], base.scene(i)
        objects = np.any([o.mask for o in scene.objects], axis=0)
        assert sample.query == original.query and np.array_equal(sample.mask, original.mask)
        assert np.array_equal(sample.image[objects], original.image[objects])
        changed += not np.array_equal(sample.image, original.image)
        assert np.array_equal(sample.image, TexturedBackgrounds(base, rate=0.5, seed=0)[i].image)
    assert 10 < changed < 30
    assert all(np.array_equal(TexturedBackgrounds(base, rate=0.0)[i].image, base[i].image) for i in range(5))


def test_weak_label_mixture_mixes_worlds_and_mislabels_at_the_given_rate():
    from grto_lib.data import SHAPES, load_dataset
    from grto_lib.policy_standin import WeakLabelMixture

    shares = {"shapes": 1, "reasonseg": 1, "cod": 1, "earthreason": 1}
    mixture = WeakLabelMixture(shares, label_accuracy=0.7, size=400, image_size=128)
    again = WeakLabelMixture(shares, label_accuracy=0.7, size=400, image_size=128)
    kept, wrong, worlds = 0, 0, []
    for i in range(400):
        name, sample = mixture.world_of(i), mixture[i]
        worlds.append(name)
        scene = mixture.worlds[name].scene(i)
        assert np.array_equal(sample.mask, again[i].mask) and sample.query == scene.sample.query
        if name == "shapes":
            assert np.array_equal(sample.mask, scene.sample.mask)  # explicit queries keep clean labels
            continue
        if np.array_equal(sample.mask, scene.sample.mask):
            kept += 1
            continue
        wrong += 1  # a wrong label is another object of the scene, of the target's family when there is one
        target = scene.objects[scene.target]
        matches = [o for k, o in enumerate(scene.objects) if k != scene.target and np.array_equal(o.mask, sample.mask)]
        assert matches
        same_family = [o for k, o in enumerate(scene.objects) if k != scene.target and o.area >= 4 and (
            o.kind == target.kind or (o.kind in SHAPES and target.kind in SHAPES))]
        if same_family:
            assert any(o.kind == target.kind or o.kind in SHAPES for o in matches)
    assert all(60 < worlds.count(name) < 140 for name in shares)
    assert 0.65 < kept / (kept + wrong) < 0.85  # 0.7, plus scenes without another object
    # pretraining scenes (data seed 1) are not the scenes reinforcement learning trains on (seed 0)
    rl = load_dataset("reasonseg", "train", size=400)
    assert not any(np.array_equal(mixture.worlds["reasonseg"][i].image, rl[i].image) for i in range(20))


def test_pretraining_is_deterministic_and_saves_a_loadable_policy(tmp_path):
    from safetensors.torch import load_file

    from grto_lib.policy_standin import pretrain_policy_standin

    kwargs = dict(seed=3, steps=2, batch_size=2, warmup=1, eval_size=0)
    report = pretrain_policy_standin(tmp_path / "a", **kwargs)
    pretrain_policy_standin(tmp_path / "b", **kwargs)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert report["steps"] == 2 and np.isfinite(report["final_loss"])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors",
        "processor_config.json", "tokenizer.json", "tokenizer_config.json"]
    # stage 2 of the recipe continues a saved policy
    pretrain_policy_standin(tmp_path / "c", init_from=tmp_path / "a", **dict(kwargs, steps=1, texture_rate=1.0))
    c = load_file(tmp_path / "c" / "model.safetensors")
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    # a later stage can train on the weak-label mixture of several worlds instead
    pretrain_policy_standin(tmp_path / "d", init_from=tmp_path / "a",
                            **dict(kwargs, steps=1, worlds={"cod": 1.0, "earthreason": 1.0}, label_accuracy=0.7))
    assert not torch.equal(a["lm_head.weight"], load_file(tmp_path / "d" / "model.safetensors")["lm_head.weight"])
    model, processor = load_policy(PolicyConfig(model_name_or_path=str(tmp_path / "a")))
    unk = processor.tokenizer.unk_token_id
    pizza = processor.tokenizer.convert_tokens_to_ids("pizza")  # a reasoning word no shapes query holds
    embeddings = model.get_input_embeddings().weight
    assert pizza != unk and torch.equal(embeddings[pizza], embeddings[unk])


def test_committed_standins_match_their_manifest():
    from grto_lib.standins import verify_standins

    assert verify_standins() == []
