"""GRPO / GRTO / B-GRTO on TRL with the tiny world's stand-ins: mechanics, equivalence with TRL, resume, learning."""
import json

import pytest
import torch
from safetensors.torch import load_file

from grto_lib import losses
from grto_lib.config import TrainConfig
from grto_lib.rewards import RewardWeights
from grto_lib.scorer import RolloutScorer
from grto_lib.standins import STANDINS_DIR
from grto_lib.train import build_trainer, load_models, load_splits, train

TINY = dict(steps=2, prompts_per_step=2, num_generations=4, train_size=16, eval_size=8, curve_every=1, curve_size=4,
            save_steps=1, logging_steps=1, bto_prompts=4, bto_generations=4, bto_steps=5)
STANDIN_TOOL = load_file(STANDINS_DIR / "tool" / "tool.safetensors")


def _tool_weights(folder):
    return load_file(folder / "tool.safetensors")


def _changed(a, b):
    return sorted(k for k in a if not torch.equal(a[k], b[k]))


def test_grto_trains_the_decoder_only_and_grpo_leaves_the_tool_alone(tmp_path):
    grto = train(TrainConfig(method="grto", output_dir=str(tmp_path / "grto"), tool_lr=1e-3, **TINY))
    changed = _changed(STANDIN_TOOL, _tool_weights(tmp_path / "grto" / "final" / "tool"))
    assert changed and all(k.startswith("mask_decoder.") for k in changed)
    assert all(entry["tool/loss"] > 0 for entry in grto["log_history"] if "tool/loss" in entry)

    grpo = train(TrainConfig(method="grpo", output_dir=str(tmp_path / "grpo"), **TINY))
    assert _changed(STANDIN_TOOL, _tool_weights(tmp_path / "grpo" / "final" / "tool")) == []
    assert not any("tool/loss" in entry for entry in grpo["log_history"])
    # Both wrote metrics.json with a test score for every sample and a learning curve from step 0.
    for run in ("grto", "grpo"):
        metrics = json.loads((tmp_path / run / "metrics.json").read_text())
        assert metrics["test"]["n"] == 8 and 0.0 <= metrics["test"]["giou"] <= 1.0
        assert [p["step"] for p in metrics["curve"]] == [0, 1, 2]


def test_bgrto_bootstraps_from_a_buffer_on_disk_and_reuses_it(tmp_path, monkeypatch):
    config = TrainConfig(method="b-grto", output_dir=str(tmp_path / "b"), **dict(TINY, steps=1))
    metrics = train(config)
    buffer = tmp_path / "b" / "bto_buffer"
    records = [json.loads(l) for l in (buffer / "rollouts.jsonl").read_text().splitlines()]
    assert len(records) == 16 and {"sample_index", "completion", "valid", "bbox", "points"} <= set(records[0])
    assert json.loads((buffer / "meta.json").read_text())["n_rollouts"] == 16
    assert _changed(STANDIN_TOOL, _tool_weights(tmp_path / "b" / "bto_tool"))  # BTO moved the tool
    assert metrics["timing"]["bto_seconds"] > 0

    # A second run in a fresh folder that points at the same buffer content must not generate again.
    import sys
    monkeypatch.setattr(sys.modules["grto_lib.train"], "build_bto_buffer", lambda *a, **k: pytest.fail("buffer regenerated"))
    fresh = tmp_path / "c"
    fresh.mkdir()
    (fresh / "bto_buffer").symlink_to(buffer)
    train(TrainConfig(method="b-grto", output_dir=str(fresh), **dict(TINY, steps=1)))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_policy_loss_and_advantages_equal_trls(tmp_path, loss_type):
    config = TrainConfig(method="grpo", loss_type=loss_type, output_dir=str(tmp_path), **dict(TINY, steps=1,
                         curve_every=0))
    train_set, _ = load_splits(config)
    policy, processor, tool, size = load_models(config)
    trainer = build_trainer(config, policy, processor, tool, train_set, size)
    seen = {}
    generate, compute = trainer._generate_and_score_completions, trainer._compute_loss

    def spy_generate(inputs):
        out = generate(inputs)
        seen["advantages"] = out["advantages"].clone()
        return out

    def spy_compute(model, inputs):
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            model, torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1), inputs["completion_ids"].size(1),
            pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
            num_images=inputs["num_images"], mm_token_type_ids=inputs.get("mm_token_type_ids"))
        seen["ours"] = losses.grpo_token_loss(
            logps, None, inputs["advantages"], inputs["completion_mask"], loss_type=loss_type,
            max_completion_length=config.max_completion_length,
            num_items_in_batch=inputs["num_items_in_batch"]).detach()
        loss = compute(model, inputs)
        seen["trl"] = loss.detach()
        return loss

    trainer._generate_and_score_completions, trainer._compute_loss = spy_generate, spy_compute
    trainer.train()
    assert torch.allclose(seen["ours"], seen["trl"], atol=1e-6), (seen["ours"], seen["trl"])

    weights = RewardWeights()
    per_term = trainer._logs["rewards"]
    total = sum(torch.tensor(list(per_term[name])) * getattr(weights, name) for name in RolloutScorer.TERMS)
    expected = losses.group_advantages(total, config.num_generations)
    assert torch.allclose(seen["advantages"], expected, atol=1e-5)


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    common = dict(TINY, steps=4, save_steps=2, curve_every=0)
    whole = train(TrainConfig(method="grto", output_dir=str(tmp_path / "whole"), **common))

    class Interrupt(Exception):
        pass

    from transformers import TrainerCallback

    class StopAfterStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise Interrupt

    with pytest.raises(Interrupt):
        train(TrainConfig(method="grto", output_dir=str(tmp_path / "cut"), **common),
              extra_callbacks=[StopAfterStep2()])
    resumed = train(TrainConfig(method="grto", output_dir=str(tmp_path / "cut"), **common))
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["test"] == pytest.approx(whole["test"], abs=1e-9)
    assert _changed(_tool_weights(tmp_path / "whole" / "final" / "tool"),
                    _tool_weights(tmp_path / "cut" / "final" / "tool")) == []


def test_resuming_a_folder_with_another_configuration_is_refused(tmp_path):
    train(TrainConfig(method="grpo", output_dir=str(tmp_path), **dict(TINY, steps=1, curve_every=0)))
    with pytest.raises(ValueError, match="another configuration.*method"):
        train(TrainConfig(method="grto", output_dir=str(tmp_path), **dict(TINY, steps=1, curve_every=0)))
