"""The results study: its plan is compute-matched, and its tables aggregate the runs it plans."""
import json

import pytest

from grto_lib.study import results
from grto_lib.config import DATASETS


def test_plan_runs_every_method_on_every_setting_at_equal_compute():
    plan = results.plan()
    main = [f"{d}_{m}_s{s}" for d in DATASETS for m in results.METHODS for s in results.SEEDS]
    assert set(main) <= set(plan) and len(plan) == len(main) + 3  # 2 ablations, 1 control
    for name in main:
        config = plan[name]
        assert (config.steps, config.prompts_per_step, config.num_generations) == (20, 8, 8)
        assert config.logging_steps == 1  # the training reward of every step
        assert config.rl_prompts == 5 * config.prompts_per_step  # first and last 5 steps: the same prompts
    assert plan["control_reasonseg_grto_plus_bto_time"].steps == 20 + results.CONTROL_EXTRA_STEPS


def test_run_all_starts_the_longest_runs_first(monkeypatch):
    started = []
    monkeypatch.setattr(results, "run_one", lambda name, config: (started.append(name), (name, 1.0))[1])
    results.run_all(jobs=1)
    assert sorted(started) == sorted(results.plan())
    first = started[:len([n for n in started if "b-grto" in n or n.startswith("control_")])]
    assert all("b-grto" in n or n.startswith("control_") for n in first)  # BTO or extra steps: the longest


def test_summarize_reports_mean_and_spread_over_seeds_and_checks_the_targets(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    curve = [{"step": 0, "seconds": 0.0, "giou": 0.1}, {"step": 20, "seconds": 9.0, "giou": 0.2}]
    methods = {"grpo": 0.0, "grto": 0.1, "b-grto": 0.2}
    for name in results.plan():
        seed = int(name[-1]) if name[-1].isdigit() else 0
        bonus = next((v for m, v in methods.items() if f"_{m}_" in name), 0.0)
        giou = 0.1 * (1 + seed) + bonus  # seeds 0, 1, 2 -> 0.1, 0.2, 0.3 (+ the method's bonus)
        rewards = [1.0] * 10 + [2.0] * 10 if name != "cod_grto_s1" else [2.0] * 10 + [1.0] * 10
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({
            "config": {"steps": 20}, "test": {"giou": giou, "ciou": giou, "box_acc": giou, "format_valid": 1.0},
            "curve": curve,
            "timing": {"bto_seconds": 3.0, "rl_seconds_excluding_eval": 9.0},
            "log_history": [{"reward": r, "step": k + 1} for k, r in enumerate(rewards)] + [{"train_loss": 0.1}]}))
    reference = {d: {"reference": {"giou": 0.05, "box_acc": 0.05}, "oracle": {"giou": 0.9}} for d in DATASETS}
    reference["standin"] = {"follows_query": {"right_object": 0.95}}
    summary = results.summarize(reference)
    rows = summary["datasets"]["cod"]["rows"]
    assert rows["grpo"]["giou"] == pytest.approx((0.2, 0.0816497), abs=1e-6)  # mean, population std
    assert summary["bto_cost"]["cod"]["share_of_bgrto_time"][0] == pytest.approx(0.25)
    assert summary["rewards"]["cod_grpo_s0"] == {"first_5": 1.0, "last_5": 2.0}
    table = (tmp_path / "results" / "table.md").read_text()
    assert "| grpo | 0.200 ± 0.082 |" in table and "| b-grto | 0.400 ± 0.082 |" in table
    holds = {t["target"]: t["holds"] for t in summary["targets"]}
    assert holds["the stand-in follows its query: right object >= 0.9 (follows_query)"]
    assert holds["GRPO on reasonseg: test box accuracy >= reference + 0.10"]  # 0.2 - 0.05
    assert not holds["training reward: mean of the last 5 logged steps above the first 5 (the same prompts), in every run"]
    assert all(holds[f"{d}: B-GRTO >= GRTO >= GRPO in test gIoU"] for d in DATASETS)
    assert holds["B-GRTO - GRPO >= +0.10 test gIoU, averaged over the three settings"]
    targets = (tmp_path / "results" / "targets.md").read_text()
    assert "29 of 30 runs (not: cod_grto_s1) | **no** |" in targets
