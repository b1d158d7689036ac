"""TrainConfig rejects bad values before any work, naming the field and the allowed values; every setting reaches
where it is used; the command line is built from the fields' metadata."""
import dataclasses
import json
import re
import sys

import pytest

from grto_lib.config import TrainConfig


@pytest.mark.parametrize("field,value,message", [
    ("dataset", "coco", "reasonseg, cod, earthreason"),
    ("method", "ppo", "grpo, grto, b-grto"),
    ("preset", "huge", "tiny, paper"),
    ("tool_weighting", "top1", "uniform, advantage, positive"),
    ("steps", 0, "positive integer"),
    ("steps", "10", "must be an integer"),
    ("steps", True, "must be an integer"),
    ("lora", "yes", "must be True or False"),
    ("generate_every", 0, "positive integer"),
    ("rl_prompts", -1, "non-negative"),
    ("num_generations", 1, "num_generations must be >= 2"),
    ("tool_lr", -1.0, "non-negative"),
    ("reward_weights", {"iou": 1.0}, "keys must be among"),
    ("scale_rewards", "std", "group, batch, none"),
    ("box_threshold", 1.0, "None or a number in \\[0, 1\\)"),
    ("box_threshold", "0.5", "must be a number or None"),
    ("micro_batch", 2.0, "must be an integer or None"),
    ("policy_max_grad_norm", -1.0, "non-negative"),
    ("lora_rank", 0, "positive integer"),
    ("lora_alpha", 0, "positive integer"),
    ("lora_dropout", 1.0, "must be a number in \\[0, 1\\)"),
    ("on_target_iou", 1.0, "must be a number in \\[0, 1\\)"),
    ("on_target_iou", -0.1, "must be a number in \\[0, 1\\)"),
    ("tool_train", "all", "image encoder would not train; choose one of decoder, decoder\\+prompt"),
    ("tool_train", "encoder", "choose one of decoder, decoder\\+prompt"),
    ("report_to", "all", "choose one of none, tensorboard, wandb, mlflow, trackio"),
    ("reward_weights", {"mask": "2"}, "must be a finite number"),
])
def test_bad_values_raise_with_the_field_name(field, value, message):
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig(**{field: value})
    assert field in str(error.value)


def test_paths_are_checked_before_any_work_not_when_a_config_is_built(tmp_path):
    config = TrainConfig(data_root="/does/not/exist")  # a config may be written where the data is not
    with pytest.raises(ValueError, match="TrainConfig.data_root='/does/not/exist' is not a folder"):
        config.check_paths()
    from grto_lib.runs import load_models, load_splits
    from grto_lib.train import train

    for work in (load_splits, load_models, train):
        with pytest.raises(ValueError, match="is not a folder"):
            work(config)
    TrainConfig(data_root=str(tmp_path)).check_paths()


def test_round_trip_and_unknown_keys(tmp_path):
    config = TrainConfig(method="grto", steps=7, reward_weights={"mask": 3.0})
    config.to_json(tmp_path / "c.json")
    assert TrainConfig.from_json(tmp_path / "c.json") == config
    (tmp_path / "bad.json").write_text(json.dumps({"stepz": 3}))
    with pytest.raises(ValueError, match="unknown TrainConfig fields \\['stepz'\\]"):
        TrainConfig.from_json(tmp_path / "bad.json")


def test_trains_tool_only_for_grto_variants():
    assert [TrainConfig(method=m).trains_tool for m in ("grpo", "grto", "b-grto")] == [False, True, True]


def test_micro_batch_must_divide_the_completions_of_a_step():
    with pytest.raises(ValueError, match="micro_batch=5 must be a positive divisor of .* = 64"):
        TrainConfig(micro_batch=5)
    from pathlib import Path

    from grto_lib.train import grpo_args

    args = grpo_args(TrainConfig(micro_batch=16), Path("/tmp/unused"))
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 4)
    assert args.steps_per_generation == 4  # one generation call per optimizer step
    assert grpo_args(TrainConfig(micro_batch=16, generate_every=3), Path("/tmp/unused")).steps_per_generation == 12


def test_every_advantage_scaling_is_accepted_and_reaches_trl():
    from pathlib import Path

    from grto_lib.losses import SCALES
    from grto_lib.train import grpo_args

    assert [TrainConfig(scale_rewards=s).scale_rewards for s in SCALES] == list(SCALES)
    with pytest.raises(ValueError, match="choose one of group, batch, none"):
        TrainConfig(scale_rewards="std")
    assert grpo_args(TrainConfig(scale_rewards="none"), Path("/tmp/unused")).scale_rewards == "none"


def test_command_line_flags_are_typed_like_the_fields(tmp_path):
    from grto_lib.train import parse_args

    (tmp_path / "c.json").write_text(json.dumps({"method": "grto", "steps": 7}))
    config, threads = parse_args(["--config", str(tmp_path / "c.json"), "--steps", "9", "--micro-batch", "16",
                                  "--box-threshold", "0.5", "--scale-rewards", "none", "--lora", "true",
                                  "--reward-weights", '{"mask": 3.0}', "--threads", "2", "--lora_rank", "4",
                                  "--on-target-iou", "0.7", "--tool-train", "decoder+prompt"])
    assert (config.method, config.steps, config.micro_batch, config.box_threshold) == ("grto", 9, 16, 0.5)
    assert (config.scale_rewards, config.lora, config.reward_weights, threads) == ("none", True, {"mask": 3.0}, 2)
    assert (config.lora_rank, config.on_target_iou, config.tool_train) == (4, 0.7, "decoder+prompt")
    assert parse_args([])[0] == TrainConfig()
    assert parse_args(["--lora", "--method", "grpo"])[0] == TrainConfig(lora=True, method="grpo")
    assert parse_args(["--compile-generation", "false"])[0].compile_generation is False


def test_reward_weights_on_the_command_line_as_key_value_pairs_or_json(capsys):
    from grto_lib.config import parse_reward_weights
    from grto_lib.train import parse_args

    assert parse_args(["--reward-weights", "mask=2,format=0.5"])[0].reward_weights == {"mask": 2.0, "format": 0.5}
    assert parse_args(["--reward_weights", '{"box": 0}'])[0].reward_weights == {"box": 0}
    for text, message in [("iou=1", "keys must be among \\['format', 'answer', 'box', 'points', 'mask'\\]"),
                          ("mask", "'mask' is not key=number"), ("mask=two", "'mask=two' is not key=number"),
                          ('{"mask": 2', "is not a JSON object"), ('{"mask": "2"}', "must be a finite number"),
                          ("mask=inf", "must be a finite number")]:
        with pytest.raises(ValueError, match=message):
            parse_reward_weights(text)
        with pytest.raises(SystemExit):
            parse_args(["--reward-weights", text])
        error = " ".join(capsys.readouterr().err.split())
        assert "error: argument --reward-weights/--reward_weights: TrainConfig.reward_weights" in error
        assert re.search(message, error)  # the parser's own message, not argparse's "invalid value"


def test_the_command_line_help_is_each_fields_metadata(capsys):
    from grto_lib.config import field_help
    from grto_lib.train import CommandLine, parse_args

    helps = {**field_help(TrainConfig), **field_help(CommandLine)}
    fields = [f.name for cls in (TrainConfig, CommandLine) for f in dataclasses.fields(cls)]
    assert sorted(helps) == sorted(fields) and all(len(text) > 10 for text in helps.values())  # every field
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = "".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere there is a space or a hyphen
    missing = [name for name, text in helps.items() if "".join(text.split()) not in shown]
    assert not missing, f"--help lacks the help of {missing}"
    assert "--policy-max-grad-norm" in shown and "(default:1.0)" in shown
    with pytest.raises(ValueError, match="choose one of grpo, grto, b-grto"):  # TrainConfig's own check
        parse_args(["--method", "ppo"])


def test_grpo_args_compose_with_overrides(tmp_path):
    from grto_lib.train import grpo_args

    plain = grpo_args(TrainConfig(report_to="tensorboard"), tmp_path)
    changed = grpo_args(TrainConfig(report_to="tensorboard"), tmp_path, report_to=[], warmup_steps=0)
    assert plain.report_to == ["tensorboard"] and changed.report_to == [] and changed.warmup_steps == 0
    assert changed.shuffle_dataset is False and changed.loss_type == plain.loss_type == "grpo"


def test_policy_clipping_and_the_checkpoint_limit_reach_grpo_config_with_todays_values(tmp_path):
    from trl import GRPOConfig

    from grto_lib.train import grpo_args
    from grto_lib.trainer import SAVE_TOTAL_LIMIT

    default = grpo_args(TrainConfig(), tmp_path)
    trl_default = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}["max_grad_norm"]
    assert default.max_grad_norm == trl_default == 1.0  # what runs clipped to before the field existed
    assert grpo_args(TrainConfig(policy_max_grad_norm=0.25), tmp_path).max_grad_norm == 0.25
    assert default.save_total_limit == SAVE_TOTAL_LIMIT == 2


def test_report_to_is_the_users_choice_and_a_missing_package_is_named_before_any_work(tmp_path, monkeypatch):
    from grto_lib.train import grpo_args, train

    assert grpo_args(TrainConfig(), tmp_path).report_to == []  # the default, "none": no package needed
    assert grpo_args(TrainConfig(report_to="tensorboard"), tmp_path).report_to == ["tensorboard"]
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import machinery's mark of a missing module
    config = TrainConfig(report_to="tensorboard", output_dir=str(tmp_path / "run"))  # built and saved anywhere
    message = "report_to='tensorboard' needs the tensorboard package, which is not installed: `pip install tensorboard`"
    for work in (lambda: grpo_args(config, tmp_path), lambda: train(config)):
        with pytest.raises(ImportError, match=message):
            work()
    assert not (tmp_path / "run").exists()
    assert grpo_args(config, tmp_path, report_to=[]).report_to == []  # a benchmark's override needs no package


def test_a_run_folder_saved_before_the_newer_fields_loads_and_resumes(tmp_path):
    """A ``config.json`` without the fields added later (they ran at what are now their defaults) loads with the
    defaults, and its folder resumes under a config that leaves them at the defaults, not under one that changes
    them (``report_to`` is bookkeeping: a resumed run may change it)."""
    from grto_lib.train import check_run_folder
    from grto_lib.trainer import COMPLETE_MARKER

    newer = ("policy_max_grad_norm", "lora_rank", "lora_alpha", "lora_dropout", "on_target_iou", "tool_train",
             "report_to")
    config = TrainConfig(method="grto", steps=4, output_dir=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in dataclasses.asdict(config).items()
                                                      if k not in newer}))
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / COMPLETE_MARKER).write_text("ok\n")
    assert TrainConfig.from_json(tmp_path / "config.json") == config
    check_run_folder(dataclasses.replace(config, steps=8, report_to="tensorboard"))
    for name, value in [("lora_rank", 8), ("on_target_iou", 0.7), ("policy_max_grad_norm", 0.5),
                        ("tool_train", "decoder+prompt")]:
        with pytest.raises(ValueError, match=f"another configuration.*'{name}'"):
            check_run_folder(dataclasses.replace(config, **{name: value}))


def test_on_target_iou_decides_which_rollouts_the_tool_trains_on_in_grto_and_bto():
    """Two rollouts of one sample: the target's own box and one shifted by a quarter of its width (box IoU 0.6). At
    0.5 both are on target; at 0.7 only the first, in the scorer (GRTO) and in the bootstrap (BTO)."""
    from grto_lib.bootstrap import bootstrap_tool
    from grto_lib.data import load_dataset
    from grto_lib.geometry import box_iou, mask_to_box
    from grto_lib.prompts import format_answer
    from grto_lib.runs import TINY_TOOL
    from grto_lib.scorer import RolloutScorer
    from grto_lib.tool import load_tool, load_tool_config

    dataset = load_dataset("reasonseg", "train", size=1)
    tool = load_tool(load_tool_config(TINY_TOOL))
    target = mask_to_box(dataset[0].mask)  # policy view = image (128 px): no rescaling
    shift = (target[2] - target[0]) / 4
    boxes = [target, target + [-shift, 0, -shift, 0] if target[0] >= shift else target + [shift, 0, shift, 0]]
    texts = [format_answer(box, [[1, 1], [1, 1]]) for box in boxes]
    scored = {iou: RolloutScorer(dataset, tool, 128, on_target_iou=iou).score(texts, [0, 0]) for iou in (0.5, 0.7)}
    assert 0.5 < box_iou(scored[0.5].tool_batch.boxes[1].numpy(), target) < 0.7  # the case between the thresholds
    assert scored[0.5].tool_batch.on_target.tolist() == [True, True]
    assert scored[0.7].tool_batch.on_target.tolist() == [True, False]
    assert scored[0.5].terms == scored[0.7].terms  # the rewards do not depend on it
    records = [{"sample_index": 0, "valid": True, "bbox": box.tolist(), "points": [[1.0, 1.0], [1.0, 1.0]]}
               for box in scored[0.5].tool_batch.boxes]
    assert [bootstrap_tool(tool, dataset, records, steps=1, weighting="on_target", on_target_iou=iou)
            ["trained_rollouts"] for iou in (0.5, 0.7)] == [2, 1]


def test_the_trainer_gets_the_configs_on_target_iou_clipping_reporting_and_tool_parts(tmp_path):
    import torch
    from transformers.integrations import TensorBoardCallback

    from grto_lib.runs import load_models, load_splits
    from grto_lib.train import build_trainer

    config = TrainConfig(method="grto", steps=1, prompts_per_step=2, num_generations=2, train_size=4, eval_size=2,
                         on_target_iou=0.7, policy_max_grad_norm=0.25, report_to="tensorboard",
                         tool_train="decoder+prompt", output_dir=str(tmp_path))
    train_set, _ = load_splits(config)
    policy, processor, tool, size = load_models(config)
    trainer = build_trainer(config, policy, processor, tool, train_set, size)
    assert trainer.scorer.on_target_iou == 0.7 and trainer.args.max_grad_norm == 0.25
    assert any(isinstance(callback, TensorBoardCallback) for callback in trainer.callback_handler.callbacks)
    names = {id(p): n for n, p in tool.named_parameters()}
    parts = {names[id(p)].split(".")[1] for p in trainer.tool_parameters}
    assert parts == {"mask_decoder", "prompt_encoder"}
    sample = train_set[0]
    embeddings = tool.embed([sample.image])
    logits = tool.decode(embeddings, torch.tensor([0]), torch.tensor([[10.0, 10.0, 60.0, 60.0]]),
                         torch.tensor([[[30.0, 30.0], [40.0, 40.0]]]), [sample.mask.shape])
    logits.sum().backward()
    prompt_grads = [p.grad for n, p in tool.named_parameters() if n.startswith("sam.prompt_encoder.")]
    assert any(g is not None and g.abs().sum() > 0 for g in prompt_grads)  # decoder+prompt trains the prompt encoder


def test_tool_train_replaces_the_tool_folders_own_trainable_parts(tmp_path):
    """A tool folder saved with ``trainable="all"`` (how the tiny stand-in is pretrained) loads for RL with the
    config's ``tool_train``: the image encoder, which RL cannot train, is frozen."""
    from grto_lib.config import TOOL_TRAIN
    from grto_lib.runs import TINY_TOOL, load_models
    from grto_lib.tool import TRAINABLE, load_tool, load_tool_config, save_tool

    assert set(TOOL_TRAIN) == set(TRAINABLE) - {"all"}
    tool = load_tool(load_tool_config(TINY_TOOL))
    tool.set_trainable("all")
    save_tool(tool, tmp_path / "tool")
    assert load_tool_config(tmp_path / "tool").trainable == "all"
    for parts, trained in [("decoder", {"mask_decoder"}), ("decoder+prompt", {"mask_decoder", "prompt_encoder"})]:
        _, _, loaded, _ = load_models(TrainConfig(tool_checkpoint=str(tmp_path / "tool"), tool_train=parts))
        assert {n.split(".")[1] for n, p in loaded.named_parameters() if p.requires_grad} == trained
        assert loaded.config.trainable == parts  # what its checkpoints will record


def test_the_paper_preset_refuses_a_random_tool_unless_asked_before_any_work():
    with pytest.raises(ValueError, match="needs tool_checkpoint.*sam_vit_h_4b8939.pth.*dl.fbaipublicfiles.com.*"
                                         "random_tool=True"):
        TrainConfig(preset="paper")
    assert TrainConfig(preset="paper", random_tool=True).tool_checkpoint is None  # benchmarks opt in
    with pytest.raises(ValueError, match="tool_checkpoint='missing.pth'.*neither a checkpoint file"):
        TrainConfig(preset="paper", tool_checkpoint="missing.pth").check_paths()


def test_a_policy_path_must_be_a_model_folder_or_a_hub_id(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    for value, message in [(str(tmp_path / "empty"), "folder without config.json"),
                           (str(tmp_path / "weights.bin"), "is a file"),
                           ("not a model", "neither a model folder .* nor a hub id"),
                           ("Qwen/Qwen2.5-VL-7B-Instruct", "not in the local Hugging Face cache while HF_HUB_OFFLINE")]:
        with pytest.raises(ValueError, match=f"TrainConfig.policy_path=.*{message}"):
            TrainConfig(policy_path=value).check_paths()
    (tmp_path / "empty" / "config.json").write_text("{}")
    TrainConfig(policy_path=str(tmp_path / "empty")).check_paths()


def test_one_default_for_the_tool_weighting_and_the_completion_limit_by_preset():
    import inspect

    from grto_lib import losses
    from grto_lib.bootstrap import bootstrap_tool
    from grto_lib.trainer import GRTOTrainer

    assert TrainConfig().tool_weighting == losses.DEFAULT_TOOL_WEIGHTING == "on_target"
    assert inspect.signature(bootstrap_tool).parameters["weighting"].default == losses.DEFAULT_TOOL_WEIGHTING
    tool_settings = ("tool_lr", "tool_loss_weight", "tool_loss", "tool_weighting", "tool_max_grad_norm")
    parameters = inspect.signature(GRTOTrainer.__init__).parameters  # no second set of defaults: TrainConfig's
    assert all(parameters[name].default is inspect.Parameter.empty for name in tool_settings)
    assert TrainConfig().completion_tokens == 128
    assert TrainConfig(preset="paper", random_tool=True).completion_tokens == 512
    assert TrainConfig(preset="paper", random_tool=True, max_completion_length=300).completion_tokens == 300


def test_the_paper_presets_completion_limit_is_the_same_however_the_config_is_built(tmp_path):
    """The preset's settings are derived where they are read, so every way of asking for the paper preset gives its
    completion limit (512) and compiled generation: the
    constructor, ``dataclasses.replace`` of a tiny config, ``--config tiny.json --preset paper``, and a resumed
    run's saved ``config.json``; and a run folder saved with the tiny limit spelt out (128) resumes as None."""
    import dataclasses

    from grto_lib.train import _run_settings, parse_args

    paper = dict(preset="paper", random_tool=True)
    TrainConfig().to_json(tmp_path / "tiny.json")
    built = {
        "constructor": TrainConfig(**paper),
        "replace": dataclasses.replace(TrainConfig(), **paper),
        "config file + flags": parse_args(["--config", str(tmp_path / "tiny.json"), "--preset", "paper",
                                           "--random-tool", "true"])[0],
    }
    built["constructor"].to_json(tmp_path / "run_config.json")
    built["resume"] = TrainConfig.from_json(tmp_path / "run_config.json")
    assert {name: config.completion_tokens for name, config in built.items()} == dict.fromkeys(built, 512)
    assert all(config.compiles_generation for config in built.values()) and not TrainConfig().compiles_generation
    assert _run_settings(TrainConfig(max_completion_length=128)) == _run_settings(TrainConfig())
    assert _run_settings(TrainConfig(**paper)) != _run_settings(TrainConfig(**paper, max_completion_length=128))
