"""TrainConfig rejects bad values before any work, naming the field and the allowed values."""
import json

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
                                  "--reward-weights", '{"mask": 3.0}', "--threads", "2"])
    assert (config.method, config.steps, config.micro_batch, config.box_threshold) == ("grto", 9, 16, 0.5)
    assert (config.scale_rewards, config.lora, config.reward_weights, threads) == ("none", True, {"mask": 3.0}, 2)
    assert parse_args([])[0] == TrainConfig()
    assert parse_args(["--lora", "--method", "grpo"])[0] == TrainConfig(lora=True, method="grpo")


def test_the_command_line_help_is_each_fields_docstring(capsys):
    from grto_lib.config import field_docs
    from grto_lib.train import parse_args

    docs = field_docs(TrainConfig)
    assert set(docs) == {f.name for f in __import__("dataclasses").fields(TrainConfig)}  # every field documented
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert docs["tool_weighting"][:60] in shown and "torch CPU threads" in shown
    with pytest.raises(ValueError, match="choose one of grpo, grto, b-grto"):  # TrainConfig's own check
        parse_args(["--method", "ppo"])


def test_grpo_args_compose_with_overrides(tmp_path):
    from grto_lib.train import grpo_args

    plain = grpo_args(TrainConfig(), tmp_path)
    changed = grpo_args(TrainConfig(), tmp_path, report_to=[], warmup_steps=0)
    assert plain.report_to == ["tensorboard"] and changed.report_to == [] and changed.warmup_steps == 0
    assert changed.shuffle_dataset is False and changed.loss_type == plain.loss_type == "grpo"


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
