"""GRPO / GRTO / B-GRTO on TRL with the tiny world's stand-ins: mechanics, equivalence with TRL, resume, learning."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from grto_lib import losses
from grto_lib.config import TrainConfig
from grto_lib.rewards import RewardWeights
from grto_lib.scorer import TERMS, RolloutScorer
from grto_lib.tinyworld.standins import STANDINS_DIR
from grto_lib.train import build_trainer, train
from grto_lib.runs import load_models, load_splits

TINY = dict(steps=2, prompts_per_step=2, num_generations=4, train_size=16, eval_size=8, curve_every=1, curve_size=4,
            save_steps=1, logging_steps=1, bto_prompts=4, bto_generations=4, bto_steps=5)
STANDIN_TOOL = load_file(STANDINS_DIR / "tool" / "tool.safetensors")


def _tool_weights(folder):
    return load_file(folder / "tool.safetensors")


def _changed(a, b):
    return sorted(k for k in a if not torch.equal(a[k], b[k]))


@pytest.mark.slow
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
        assert not (tmp_path / run / "README.md").exists()  # no Hub model card naming a base model "None"
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
    assert len(metrics["timing"]["rl_step_seconds"]) == 1 and len(metrics["timing"]["checkpoint_seconds"]) == 1

    # A second run in a fresh folder that points at the same buffer content must not generate again.
    import grto_lib.bootstrap
    monkeypatch.setattr(grto_lib.bootstrap, "build_bto_buffer", lambda *a, **k: pytest.fail("buffer regenerated"))
    fresh = tmp_path / "c"
    fresh.mkdir()
    (fresh / "bto_buffer").symlink_to(buffer)
    train(TrainConfig(method="b-grto", output_dir=str(fresh), **dict(TINY, steps=1)))


def test_every_phase_runs_on_the_device_train_chose(tmp_path, monkeypatch):
    """The models are on the trainer's device before any work: BTO's rollouts and tool updates, every RL step and
    the evaluation run there (on a CPU machine the CPU, on a GPU machine cuda), as seen by spies on the calls
    themselves and as metrics.json records it."""
    import grto_lib.train
    from grto_lib.train import grpo_args
    from transformers import TrainerCallback

    config = TrainConfig(method="b-grto", output_dir=str(tmp_path), **dict(TINY, steps=1, curve_every=0))
    device = str(grpo_args(config, tmp_path).device)
    seen = {}

    def spy(name, function, *models):
        def wrapped(*args, **kwargs):
            seen[name] = {str(next(args[i].parameters()).device) for i in models}
            return function(*args, **kwargs)
        monkeypatch.setattr(grto_lib.train, function.__name__, wrapped)

    spy("bto_rollouts", grto_lib.train.bto_buffer, 0, 2)  # (policy, processor, tool, ...)
    spy("bto_tool_updates", grto_lib.train.bootstrap_tool, 0)
    spy("evaluation", grto_lib.train.evaluate_policy, 0, 2)

    class Step(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            seen["rl"] = {str(next(model.parameters()).device), str(args.device)}

    metrics = train(config, extra_callbacks=[Step()])
    assert seen == dict.fromkeys(("bto_rollouts", "bto_tool_updates", "rl", "evaluation"), {device})
    assert metrics["devices"] == dict.fromkeys(("bto", "rl", "evaluation"), {"policy": device, "tool": device})
    peaks = metrics["memory"]  # GiB on a GPU, None on a CPU
    assert set(peaks) == {"load", "bto", "rl", "evaluation"}
    assert all((peak is None) if device == "cpu" else peak > 0 for peak in peaks.values())


def test_a_bto_buffer_made_by_another_request_is_rebuilt_and_says_so(tmp_path, caplog):
    """A b-grto run cut off after its buffer was written, run again in the same folder with another temperature,
    must not train on the old rollouts: the buffer's fingerprint differs, a warning names the field, and the new
    buffer records the new temperature. Another policy (weights), prompt or dataset differs the same way."""
    from grto_lib.bootstrap import buffer_fingerprint, load_bto_buffer

    folder = tmp_path / "run"
    train(TrainConfig(method="b-grto", output_dir=str(folder), **dict(TINY, steps=1, curve_every=0)))
    old = json.loads((folder / "bto_buffer" / "meta.json").read_text())["fingerprint"]
    assert old["temperature"] == 1.0 and len(old["policy_weights"]) == 64
    for path in folder.glob("checkpoint-*"):  # as if the first run had been killed before its first checkpoint
        import shutil
        shutil.rmtree(path)
    with caplog.at_level("WARNING", logger="grto_lib.bootstrap"):
        train(TrainConfig(method="b-grto", output_dir=str(folder), temperature=0.3,
                          **dict(TINY, steps=1, curve_every=0)))
    assert "made by another request" in caplog.text and "temperature" in caplog.text
    assert json.loads((folder / "bto_buffer" / "meta.json").read_text())["fingerprint"]["temperature"] == 0.3

    config = TrainConfig(**dict(TINY, curve_every=0))
    train_set, _ = load_splits(config)
    policy, processor, _, size = load_models(config)
    sampling = dict(n_prompts=4, generations=4, policy_image_size=size, temperature=0.3, seed=0)
    assert load_bto_buffer(folder / "bto_buffer", buffer_fingerprint(policy, processor, train_set, **sampling))
    with torch.no_grad():
        next(p for p in policy.parameters() if p.requires_grad).add_(1e-3)  # a policy trained a little further
    assert load_bto_buffer(folder / "bto_buffer", buffer_fingerprint(policy, processor, train_set, **sampling)) is None


def test_on_target_tool_loss_ignores_rollouts_whose_box_misses_the_target(tmp_path):
    from grto_lib.geometry import mask_to_box
    from grto_lib.prompts import format_answer

    trainer = _trainer(tmp_path, method="grto", tool_weighting="on_target")
    scorer, sample = trainer.scorer, trainer.scorer.dataset[0]
    scale = scorer.policy_image_size / sample.mask.shape[1]
    hit = format_answer(mask_to_box(sample.mask) * scale, [[1, 1], [1, 1]])
    miss = format_answer([0, 0, 2, 2], [[1, 1], [1, 1]])

    def loss(texts):
        trainer.tool_batch = scorer.score(texts, [0] * len(texts)).tool_batch
        n = len(texts)
        return trainer.batch_tool_loss({"tool_rollout": torch.arange(n), "advantages": torch.zeros(n),
                                        "tool_total": None}).item()

    assert loss([miss, miss]) == 0.0
    assert loss([hit, miss]) > 0.0


def test_box_threshold_turns_the_box_reward_into_an_indicator():
    from grto_lib.data import load_dataset
    from grto_lib.geometry import mask_to_box
    from grto_lib.prompts import format_answer
    from grto_lib.rewards import box_reward, parse_answer
    from grto_lib.tool import load_tool, load_tool_config

    dataset = load_dataset("reasonseg", "train", size=1)
    tool = load_tool(load_tool_config(STANDINS_DIR / "tool"))
    box = mask_to_box(dataset[0].mask)  # policy view = image (128 px): no rescaling
    texts = [format_answer(b, [[1, 1], [1, 1]]) for b in (box, box + [-8, -8, 8, 8])]
    iou = box_reward(parse_answer(texts[1]), box, dataset[0].mask.shape)  # the grown box, clipped to the image
    assert 0.0 < iou < 0.5
    plain = RolloutScorer(dataset, tool, 128).score(texts, [0, 0]).terms["box"]
    assert plain == pytest.approx([1.0, iou], abs=1e-6)
    assert RolloutScorer(dataset, tool, 128, box_threshold=0.5).score(texts, [0, 0]).terms["box"] == [1.0, 0.0]
    assert TrainConfig(box_threshold=0.5).box_threshold == 0.5


def test_bto_on_target_trains_only_on_rollouts_whose_box_matches_the_target():
    from grto_lib.bootstrap import bootstrap_tool
    from grto_lib.data import load_dataset
    from grto_lib.geometry import mask_to_box
    from grto_lib.tool import load_tool, load_tool_config

    dataset = load_dataset("reasonseg", "train", size=2)
    tool = load_tool(load_tool_config(STANDINS_DIR / "tool"))
    on, off = mask_to_box(dataset[0].mask).tolist(), [0.0, 0.0, 2.0, 2.0]
    records = [{"sample_index": i, "valid": True, "bbox": box, "points": [[1.0, 1.0], [1.0, 1.0]]}
               for i, box in ((0, on), (0, off), (1, off))]
    assert bootstrap_tool(tool, dataset, records, steps=1, weighting="uniform")["trained_rollouts"] == 3
    assert bootstrap_tool(tool, dataset, records, steps=1, weighting="on_target")["trained_rollouts"] == 1
    with pytest.raises(ValueError, match="matches the target"):
        bootstrap_tool(tool, dataset, records[1:], steps=1, weighting="on_target")


def test_a_zero_tool_max_grad_norm_means_no_clipping():
    """``tool_max_grad_norm=0`` (like ``policy_max_grad_norm=0``) leaves the tool's gradient as it is: the bootstrap
    steps as with an unreachable bound, not with a gradient scaled to zero, and a tight bound steps differently."""
    import torch

    from grto_lib.bootstrap import bootstrap_tool
    from grto_lib.data import load_dataset
    from grto_lib.geometry import mask_to_box
    from grto_lib.tool import load_tool, load_tool_config

    dataset = load_dataset("reasonseg", "train", size=1)
    records = [{"sample_index": 0, "valid": True, "bbox": mask_to_box(dataset[0].mask).tolist(),
                "points": [[1.0, 1.0], [1.0, 1.0]]}]
    weights = {}
    for bound in (0.0, 1e12, 1e-6):
        tool = load_tool(load_tool_config(STANDINS_DIR / "tool"))
        bootstrap_tool(tool, dataset, records, steps=2, weighting="uniform", max_grad_norm=bound)
        weights[bound] = torch.cat([p.detach().flatten() for p in tool.parameters()])
    assert torch.equal(weights[0.0], weights[1e12])
    assert not torch.allclose(weights[0.0], weights[1e-6])


@pytest.mark.parametrize("scale", ["group", "none"])
def test_policy_loss_and_advantages_equal_trls(tmp_path, scale):
    """In the trainer, TRL's loss is ``losses.clipped_policy_loss`` (loss_type="grpo", one micro-batch) and TRL's
    advantages are ``losses.group_advantages``."""
    config = TrainConfig(method="grpo", loss_type="grpo", scale_rewards=scale, output_dir=str(tmp_path),
                         **dict(TINY, steps=1, curve_every=0))
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
        seen["ours"] = losses.clipped_policy_loss(logps, logps.detach(), inputs["advantages"],
                                                  inputs["completion_mask"]).detach()
        loss = compute(model, inputs)
        seen["trl"] = loss.detach()
        return loss

    trainer._generate_and_score_completions, trainer._compute_loss = spy_generate, spy_compute
    trainer.train()
    assert torch.allclose(seen["ours"], seen["trl"], atol=1e-6), (seen["ours"], seen["trl"])

    weights = RewardWeights()
    per_term = trainer._logs["rewards"]
    total = sum(torch.tensor(list(per_term[name])) * getattr(weights, name) for name in TERMS)
    expected = losses.group_advantages(total, config.num_generations, scale=scale)
    assert torch.allclose(seen["advantages"], expected, atol=1e-5)


@pytest.mark.parametrize("weighting", ["on_target", "uniform"])
def test_the_step_by_hand_of_notebook_03_computes_the_trainers_loss(tmp_path, weighting):
    """On GRTOTrainer's own batch, notebook 03's hand-made step (log-probs recomputed from the completion texts,
    ``losses.clipped_policy_loss``, the tool's masks from the parsed prompts, the gated weights and
    ``losses.rollout_tool_losses``) gives the trainer's loss and the same gradients for policy and tool, to 1e-5.
    (On-policy the policy loss's value is -mean(A) whatever the log-probs: the gradients are the real check.)"""
    from grto_lib.generation import completion_logprobs
    from grto_lib.geometry import box_on_target
    from grto_lib.tool import trainable_parameters

    config = TrainConfig(method="grto", tool_weighting=weighting, output_dir=str(tmp_path),
                         **dict(TINY, steps=1, curve_every=0))
    train_set, _ = load_splits(config)
    policy, processor, tool, size = load_models(config)
    trainer = build_trainer(config, policy, processor, tool, train_set, size)
    policy_params = [p for p in policy.parameters() if p.requires_grad]
    tool_params = trainable_parameters(tool)
    seen = {}
    compute = trainer._compute_loss

    def gradients(loss, params):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])

    def spy_compute(model, inputs):
        loss = compute(model, inputs)
        seen["trainer"] = (loss.detach(), gradients(loss, policy_params), gradients(loss, tool_params))
        index = trainer.tool_batch.sample_index[inputs["tool_rollout"]].tolist()
        texts = processor.tokenizer.batch_decode(inputs["completion_ids"], skip_special_tokens=True)
        policy_loss = 0
        for i in sorted(set(index)):  # one prompt's group at a time, as in the notebook (TRL shuffles the rows)
            rows = [r for r, j in enumerate(index) if j == i]
            logps, mask = completion_logprobs(model, processor, train_set[i], [texts[r] for r in rows], size)
            policy_loss = policy_loss + losses.clipped_policy_loss(
                logps, logps.detach(), inputs["advantages"][rows], mask) * len(rows) / len(texts)
        samples = [train_set[i] for i in index]
        _, boxes, points, valid = trainer.scorer.parse(texts, samples)
        on_target = torch.as_tensor(box_on_target(boxes, [s.mask for s in samples]))
        weights = losses.tool_loss_weights(inputs["advantages"], torch.as_tensor(valid), weighting, on_target)
        logits = tool.decode(tool.embed([s.image for s in samples]), torch.arange(len(samples)),
                             torch.tensor(boxes, dtype=torch.float32), torch.tensor(points, dtype=torch.float32),
                             [s.mask.shape for s in samples])
        tool_loss = (weights * losses.rollout_tool_losses(logits, samples)).sum()
        hand = policy_loss + config.tool_loss_weight * tool_loss
        seen["hand"] = (hand.detach(), gradients(hand, policy_params), gradients(hand, tool_params))
        return loss

    trainer._compute_loss = spy_compute
    trainer.train()
    for name, ours, theirs in zip(("loss", "policy gradient", "tool gradient"), seen["hand"], seen["trainer"]):
        assert torch.allclose(ours, theirs, atol=1e-5), (name, (ours - theirs).abs().max())
    assert seen["trainer"][1].abs().max() > 1e-3  # the policy gradient is not trivially zero
    assert seen["trainer"][2].abs().max() > 1e-3  # nor the tool's: the batch has rollouts that train it


def test_resuming_a_folder_with_another_configuration_is_refused(tmp_path):
    train(TrainConfig(method="grpo", output_dir=str(tmp_path), **dict(TINY, steps=1, curve_every=0)))
    with pytest.raises(ValueError, match="another configuration.*method"):
        train(TrainConfig(method="grto", output_dir=str(tmp_path), **dict(TINY, steps=1, curve_every=0)))


def _trainer(tmp_path, **overrides):
    config = TrainConfig(output_dir=str(tmp_path), **dict(TINY, curve_every=0, **overrides))
    train_set, _ = load_splits(config)
    policy, processor, tool, size = load_models(config)
    return build_trainer(config, policy, processor, tool, train_set, size)


def test_rl_prompts_cuts_the_training_order_to_a_window_that_repeats(tmp_path):
    whole = _trainer(tmp_path / "whole").train_dataset
    window = _trainer(tmp_path / "window", rl_prompts=4).train_dataset
    assert len(whole) == 16 and len(window) == 4
    assert window["sample_index"] == whole["sample_index"][:4]  # the first 4 of the same stratified order


def test_a_non_finite_loss_skips_the_update_and_training_goes_on(tmp_path):
    from transformers import TrainerCallback

    # every valid rollout trains the tool and 4 groups leave some reward spread, so that step 2 moves both
    trainer = _trainer(tmp_path, method="grto", steps=2, tool_weighting="uniform", prompts_per_step=4)
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots.append(([p.detach().clone() for p in model.parameters()],
                              [p.detach().clone() for p in trainer.tool.parameters()]))

    start = ([p.detach().clone() for p in trainer.model.parameters()],
             [p.detach().clone() for p in trainer.tool.parameters()])
    real_tool_loss, calls = trainer.batch_tool_loss, []

    def poisoned(inputs):  # the first step's tool loss is NaN, later ones are real
        calls.append(1)
        loss = real_tool_loss(inputs)
        return loss * float("nan") if len(calls) == 1 else loss

    trainer.batch_tool_loss = poisoned
    trainer.add_callback(Snapshot())
    trainer.train()
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))  # noqa: E731
    assert same(start[0], snapshots[0][0]) and same(start[1], snapshots[0][1])  # step 1: nothing moved
    assert not same(snapshots[0][0], snapshots[1][0]) and not same(snapshots[0][1], snapshots[1][1])  # step 2 did
    logged = [e["nonfinite_loss_skipped"] for e in trainer.state.log_history if "nonfinite_loss_skipped" in e]
    assert logged == [1.0, 0.0]


def test_liger_kernel_is_refused_because_it_bypasses_the_tool_loss(tmp_path):
    from grto_lib.train import grpo_args
    from grto_lib.trainer import GRTOTrainer

    config = TrainConfig(output_dir=str(tmp_path), **TINY)
    args = grpo_args(config, tmp_path)
    args.use_liger_kernel = True
    with pytest.raises(ValueError, match="use_liger_kernel"):
        GRTOTrainer(model=None, args=args, scorer=None, train_tool=True, tool_lr=1e-4, tool_loss_weight=1.0,
                    tool_loss="bce_dice", tool_weighting="uniform", tool_max_grad_norm=1.0)


@pytest.mark.slow
def test_grto_learns_mean_training_reward_rises(tmp_path):
    """A real learning test: 20 GRTO steps of 8 x 8 on reasonseg (the study's settings), fixed seed, cycling through
    the first 40 prompts (``rl_prompts`` = 5 steps' worth), so the first and the last 5 steps see the same prompts in
    the same order and their rewards compare the policy and the tool, not the draw of prompts. The mean reward of the
    last 5 steps must exceed that of the first 5 by at least 0.25 (of a maximum of 4.5); measured: 2.26 -> 3.08."""
    metrics = train(TrainConfig(method="grto", output_dir=str(tmp_path), steps=20, prompts_per_step=8,
                                num_generations=8, train_size=256, rl_prompts=40, eval_size=8, curve_every=0,
                                save_steps=100, logging_steps=1))
    rewards = [e["reward"] for e in metrics["log_history"] if "reward" in e]
    assert len(rewards) == 20
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last - first > 0.25, f"mean reward {first:.3f} -> {last:.3f}"


@pytest.mark.slow
def test_grpo_policy_learns_from_reward_alone_on_a_repeated_pool(tmp_path):
    """The policy learns from reward, with the tool frozen: GRPO on a pool of 4 prompts, all of them every step,
    raises the mean reward of the last 5 steps over the first 5 by at least 0.5 (of 4.5). On 2000 prompts, each
    seen once, it rose far less in 40 steps (1.46 -> 1.77, by inflating boxes) and the test split did not improve
    (docs/benchmarks.md section 6): what the tiny policy learns here is these images, not what queries mean."""
    metrics = train(TrainConfig(method="grpo", output_dir=str(tmp_path), steps=20, prompts_per_step=4,
                                num_generations=8, train_size=4, eval_size=8, curve_every=0, save_steps=100,
                                logging_steps=1))
    rewards = [e["reward"] for e in metrics["log_history"] if "reward" in e]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last - first > 0.5, f"mean reward {first:.3f} -> {last:.3f}"


@pytest.mark.slow
def test_two_cpu_processes_bootstrap_once_and_keep_policy_and_tool_identical(tmp_path):
    """B-GRTO on two CPU processes (torchrun, gloo; accelerate's own launcher runs CPU jobs in one process): the main
    process alone builds the BTO buffer and bootstraps the tool, the other loads that tool (train() checks they are
    identical before RL), the tool's gradients are then summed like the policy's, so both networks end identical on
    every process; the learning curve is recorded once per step."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "grto_lib.train",
               "--method", "b-grto", "--steps", "2", "--prompts-per-step", "2", "--num-generations", "4",
               "--train-size", "16", "--eval-size", "8", "--curve-every", "1", "--curve-size", "2",
               "--bto-prompts", "8", "--bto-steps", "5", "--tool-lr", "1e-3", "--output-dir", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["distributed"] == {"processes": 2, "policy": True, "tool": True}
    assert len(re.findall(r"BTO: tool updates:\s+0%", result.stderr)) == 1  # one bootstrap, on the main process
    assert _changed(_tool_weights(tmp_path / "bto_tool"), _tool_weights(tmp_path / "final" / "tool"))  # RL trained it
    assert [json.loads(line)["step"] for line in (tmp_path / "curve.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert metrics["devices"] == dict.fromkeys(("bto", "rl", "evaluation"), {"policy": "cpu", "tool": "cpu"})

    resumed = subprocess.run([*command[:command.index("--steps") + 1], "3", *command[command.index("--steps") + 2:]],
                             env=env, capture_output=True, text=True, timeout=900)  # both start from the bootstrap
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-2") and metrics["distributed"]["tool"]


def test_grto_and_bto_on_a_real_format_folder_with_images_of_different_sizes(tmp_path):
    """A LISA-format ReasonSeg folder (jpg + labelme json) whose images differ in size, with an ignore region:
    the policy sees resized views, the tool scores and trains at each image's own resolution."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        folder = tmp_path / "ReasonSeg" / split
        folder.mkdir(parents=True)
        for k, (w, h) in enumerate([(150, 100), (96, 120), (128, 128), (200, 90)]):
            image = rng.integers(150, 255, (h, w, 3), dtype=np.uint8)
            x1, y1 = w // 4, h // 4
            image[y1:y1 + h // 3, x1:x1 + w // 3] = (200, 30, 30)
            Image.fromarray(image).save(folder / f"img{k}.jpg")
            shapes = [{"label": "target", "shape_type": "polygon",
                       "points": [[x1, y1], [x1 + w // 3, y1], [x1 + w // 3, y1 + h // 3], [x1, y1 + h // 3]]},
                      {"label": "ignore", "shape_type": "polygon", "points": [[0, 0], [8, 0], [8, 8], [0, 8]]}]
            (folder / f"img{k}.json").write_text(json.dumps(
                {"text": ["the red shape"], "is_sentence": False, "shapes": shapes}))
    metrics = train(TrainConfig(method="b-grto", data_root=str(tmp_path / "ReasonSeg"),
                                output_dir=str(tmp_path / "run"), **dict(TINY, curve_every=0)))
    assert metrics["test"]["n"] == 4 and metrics["test"]["format_valid"] > 0
    assert _changed(STANDIN_TOOL, _tool_weights(tmp_path / "run" / "final" / "tool"))
    assert all(entry["tool/loss"] > 0 for entry in metrics["log_history"] if "tool/loss" in entry)


def test_micro_batches_give_the_whole_steps_update_of_policy_and_tool(tmp_path):
    """``micro_batch`` promises the same numbers: on the same rollouts, the gradients both optimizers step with are
    those of the whole step (fp32, to float rounding). The tool's weights are normalised over the whole step, not
    per micro-batch (that made the tool's update differ by 8-18 %)."""
    from scripted_step import one_step

    whole = one_step(tmp_path / "whole", prompts_per_step=4)
    assert whole["policy_moved"] and whole["tool_moved"] and whole["skipped"] == [0.0]
    for micro_batch in (4, 8):
        split = one_step(tmp_path / f"micro{micro_batch}", prompts_per_step=4, micro_batch=micro_batch)
        for model in ("policy", "tool"):
            error = ((split[model] - whole[model]).norm() / whole[model].norm()).item()
            assert error < 1e-5, (micro_batch, model, error)


def test_a_non_finite_loss_in_the_second_micro_batch_skips_the_whole_step(tmp_path):
    """The first micro-batch's gradients are already accumulated when the second one's loss is NaN: the step must
    still leave every parameter of both models where it was."""
    from scripted_step import one_step

    poisoned = one_step(tmp_path, prompts_per_step=4, micro_batch=4, poison_call=2)
    assert poisoned["skipped"] == [1.0]
    assert not poisoned["policy_moved"] and not poisoned["tool_moved"]


def _torchrun(tmp_path, name: str, *args: str) -> list[dict]:
    """tests/scripted_step.py under ``torchrun`` with two CPU (gloo) processes; each process's result."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / name / "result.pt"
    out.parent.mkdir()
    script = Path(__file__).parent / "scripted_step.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), "--out", str(out),
               *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(f"{out}.rank{rank}") for rank in (0, 1)]


@pytest.mark.slow
def test_two_processes_give_one_processs_update_on_the_same_rollouts(tmp_path):
    """Two gloo processes with 2 prompts each make the update one process makes with all 4 (same scripted
    rollouts): the policy's gradients are averaged by DDP, the tool's summed against the step's global weights.
    A NaN loss on one of the two processes skips the step on both, and neither waits forever (timeout)."""
    from scripted_step import one_step

    alone = one_step(tmp_path / "alone", prompts_per_step=4)
    pair = _torchrun(tmp_path, "pair", "--prompts-per-step", "2")
    for model in ("policy", "tool"):
        assert torch.equal(pair[0][model], pair[1][model])
        error = ((pair[0][model] - alone[model]).norm() / alone[model].norm()).item()
        assert error < 1e-5, (model, error)
    nan = _torchrun(tmp_path, "nan", "--prompts-per-step", "2", "--poison-rank", "1")
    for rank in nan:
        assert rank["skipped"] == [1.0] and not rank["policy_moved"] and not rank["tool_moved"]


def test_generate_every_k_samples_k_steps_of_rollouts_in_one_generation_call(tmp_path):
    trainer = _trainer(tmp_path, method="grto", generate_every=2, micro_batch=4)
    calls, inner = [], trainer._generate_single_turn

    def counting(prompt_ids, *args, **kwargs):
        calls.append(len(prompt_ids))
        return inner(prompt_ids, *args, **kwargs)

    trainer._generate_single_turn = counting
    before = [p.detach().clone() for p in trainer.tool_parameters]
    trainer.train()
    assert trainer.state.global_step == 2
    assert calls == [16]  # 2 steps x 2 prompts x 4 rollouts, sampled at once
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.tool_parameters))


def test_grto_with_a_lora_policy_trains_only_the_adapter_and_the_tool(tmp_path):
    metrics = train(TrainConfig(method="grto", lora=True, output_dir=str(tmp_path), **dict(TINY, curve_every=0)))
    saved = sorted(p.name for p in (tmp_path / "final" / "policy").iterdir())
    assert "adapter_config.json" in saved and "adapter_model.safetensors" in saved
    assert _changed(STANDIN_TOOL, _tool_weights(tmp_path / "final" / "tool"))
    from grto_lib.runs import load_run
    _, policy, _, _, _ = load_run(tmp_path)  # the adapter reloads on top of the stand-in
    assert hasattr(policy, "peft_config") and metrics["test"]["n"] == 8


def test_the_paper_preset_trains_a_policy_given_as_a_hugging_face_folder(tmp_path, hugging_face_qwen_folder):
    """What a researcher runs, with a tiny random model in a hub snapshot's layout in place of Qwen2.5-VL-3B:
    ``TrainConfig(preset="paper", policy_path=folder, tool_checkpoint=...)``. The stock processor is loaded from
    the folder, the policy is wrapped in LoRA and switched to the fast paths, it is asked with the system prompt
    that states the answer format (the tiny preset keeps its stand-in's), and one GRTO step trains the adapter."""
    from transformers import Qwen2_5_VLProcessor

    from grto_lib.fast_qwen import RepeatedImagesModel
    from grto_lib.prompts import SYSTEM_PROMPT, TINY_SYSTEM_PROMPT, system_prompt_for

    config = TrainConfig(preset="paper", policy_path=str(hugging_face_qwen_folder),
                         tool_checkpoint=str(STANDINS_DIR / "tool"), method="grto", output_dir=str(tmp_path),
                         **dict(TINY, steps=1, prompts_per_step=1, num_generations=2, train_size=2, eval_size=1,
                                curve_every=0, max_completion_length=8))
    policy, processor, _, size = load_models(config)
    assert isinstance(processor, Qwen2_5_VLProcessor) and size == 840
    assert hasattr(policy, "peft_config") and any(isinstance(m, RepeatedImagesModel) for m in policy.modules())
    assert system_prompt_for(processor) == SYSTEM_PROMPT
    assert system_prompt_for(load_models(TrainConfig())[1]) == TINY_SYSTEM_PROMPT
    metrics = train(config)
    assert metrics["test"]["n"] == 1 and 0.0 <= metrics["test"]["format_valid"] <= 1.0
    assert (tmp_path / "final" / "policy" / "adapter_model.safetensors").is_file()
    rows = build_trainer(config, policy, processor, load_models(TrainConfig())[2], load_splits(config)[0],
                         size).train_dataset
    assert rows[0]["prompt"][0]["content"][0]["text"] == SYSTEM_PROMPT


def test_compile_generation_samples_the_same_rollouts_through_the_static_cache(tmp_path):
    """``compile_generation`` runs generation on a static key-value cache with TRL's compile switch lifted (on a GPU
    transformers then compiles the decoding step; on a CPU the same path runs uncompiled): the same seed samples the
    same rollouts, so the logged rewards and completion lengths are those of the default dynamic cache."""
    logs = {}
    for name, compiled in (("dynamic", False), ("static", True)):
        trainer = _trainer(tmp_path / name, method="grto", steps=1, compile_generation=compiled)
        assert trainer.generation_config.cache_implementation == ("static" if compiled else None)
        assert trainer.generation_config.disable_compile is not compiled
        trainer.train()
        logs[name] = {k: v for k, v in trainer.state.log_history[0].items()
                      if k.startswith(("rewards/", "completions/")) or k == "reward"}
    assert logs["static"] == logs["dynamic"] and logs["static"]["completions/mean_length"] > 20
