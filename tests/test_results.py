"""The results study: its plan is compute-matched, and its tables aggregate the runs it plans."""
import json

import pytest

from grto_lib import results
from grto_lib.config import DATASETS


def test_plan_runs_every_method_on_every_setting_at_equal_compute():
    plan = results.plan()
    main = [f"{d}_{m}_s{s}" for d in DATASETS for m in results.METHODS for s in results.SEEDS]
    gated = [f"{d}_b-grto-gated_s{s}" for d in results.GATED_DATASETS for s in results.SEEDS]
    assert set(main + gated) <= set(plan) and len(plan) == len(main) + len(gated) + 5  # 4 ablations, 1 control
    for name in main + gated:
        config = plan[name]
        assert (config.steps, config.prompts_per_step, config.num_generations) == (40, 8, 8)
    assert all(plan[name].tool_weighting == "on_target" and plan[name].method == "b-grto" for name in gated)
    assert plan["control_grto_plus_bto_time"].steps == 60


def test_summarize_reports_mean_and_spread_over_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    curve = [{"step": 0, "seconds": 0.0, "giou": 0.1}, {"step": 40, "seconds": 9.0, "giou": 0.2}]
    for name in results.plan():
        giou = 0.1 * (1 + int(name[-1])) if name[-1].isdigit() else 0.5  # seeds 0, 1, 2 -> 0.1, 0.2, 0.3
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({
            "test": {"giou": giou, "ciou": giou, "box_acc": 0.0, "format_valid": 1.0}, "curve": curve,
            "timing": {"bto_seconds": 3.0, "rl_seconds_excluding_eval": 9.0}}))
    reference = {d: {"reference": {"giou": 0.05}, "oracle": {"giou": 0.9}} for d in DATASETS}
    summary = results.summarize(reference)
    rows = summary["datasets"]["cod"]["rows"]
    assert rows["grpo"]["giou"] == pytest.approx((0.2, 0.0816497), abs=1e-6)  # mean, population std
    assert results.GATED in rows and results.GATED not in summary["datasets"]["reasonseg"]["rows"]
    assert summary["bto_cost"]["cod"]["share_of_bgrto_time"][0] == pytest.approx(0.25)
    table = (tmp_path / "results" / "table.md").read_text()
    assert "| grpo | 0.200 ± 0.082 |" in table and "| b-grto, on_target | 0.200 ± 0.082 |" in table
    assert "control_grto_plus_bto_time | 0.500" in (tmp_path / "results" / "ablations.md").read_text()
    assert {p.name for p in (tmp_path / "results").iterdir()} >= {"table.md", "table.csv", "ablations.md",
                                                                   "bto_cost.md", "curves_cod.png"}
