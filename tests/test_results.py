"""The results study: its plan is compute-matched, its tables aggregate the runs it plans, its parallel runs fit
the machine, and a failed run is reported without stopping the others."""
import json
import sys
import time
from pathlib import Path

import pytest

from grto_lib.study import results
from grto_lib.config import DATASETS, TrainConfig


def test_plan_runs_every_method_on_every_setting_at_equal_compute():
    plan = results.plan()
    main = [f"{d}_{m}_s{s}" for d in DATASETS for m in results.METHODS for s in results.SEEDS]
    assert set(main) <= set(plan) and len(plan) == len(main) + 2  # 2 ablations; the controls come later
    for name in main:
        config = plan[name]
        assert (config.steps, config.prompts_per_step, config.num_generations) == (20, 8, 8)
        assert config.logging_steps == 1  # the training reward of every step
        assert config.rl_prompts == 5 * config.prompts_per_step  # first and last 5 steps: the same prompts


def _finish(folder, steps=20, rl_seconds=None, bto_seconds=None):
    folder.mkdir(parents=True, exist_ok=True)
    if bto_seconds is not None:
        (folder / "bto.json").write_text(json.dumps({"bto_seconds": bto_seconds}))
    if rl_seconds is not None:
        (folder / "metrics.json").write_text(json.dumps({"config": {"steps": steps},
                                                         "timing": {"rl_seconds_excluding_eval": rl_seconds}}))


def test_the_control_gets_btos_measured_time_as_extra_rl_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RUNS_DIR", tmp_path)
    assert results.control_config("cod", 1) is None  # nothing measured yet
    _finish(tmp_path / "cod_b-grto_s1", bto_seconds=131.0)
    assert results.control_config("cod", 1) is None  # GRTO's step time not measured yet
    _finish(tmp_path / "cod_grto_s1", rl_seconds=240.0)  # 12 s a step
    config = results.control_config("cod", 1)
    assert (config.method, config.dataset, config.seed) == ("grto", "cod", 1)
    assert config.steps == 20 + 11  # round(131 / 12)
    assert config.rl_prompts == 0  # new prompts for the extra time, as BTO sees new images
    assert (config.prompts_per_step, config.num_generations, config.eval_size) == (8, 8, 200)
    assert config.output_dir == str(tmp_path / "cod_grto_given_bto_time_s1")


def test_run_all_starts_each_control_once_its_times_are_measured(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RUNS_DIR", tmp_path)
    started = []

    def fake_run(name, config):  # B-GRTO's bootstrap takes 3 steps of GRTO's time
        started.append((name, config.steps))
        _finish(Path(config.output_dir), config.steps, rl_seconds=2.0 * config.steps,
                bto_seconds=6.0 if config.method == "b-grto" else None)
        return 1.0

    monkeypatch.setattr(results, "run_one", fake_run)
    monkeypatch.setattr(results, "reference_rows", lambda eval_size: started.append(("rows before RL", 0)) or {"x": 1})
    assert results.run_all(jobs=1) == ({"x": 1}, {})  # the rows before RL, and no failures
    names = [n for n, _ in started]
    controls = [results.control_name(d, s) for d in DATASETS for s in results.SEEDS]
    assert sorted(names) == sorted([*results.plan(), *controls, "rows before RL"])
    assert names[-1] == "rows before RL"
    assert all("b-grto" in n for n in names[:9])  # the longest first
    for dataset in DATASETS:
        for seed in results.SEEDS:
            control = names.index(results.control_name(dataset, seed))
            assert control > names.index(f"{dataset}_grto_s{seed}") > names.index(f"{dataset}_b-grto_s{seed}")
    assert {steps for n, steps in started if n in controls} == {23}


def _fake_metrics(name, steps=20):
    """A finished run's metrics.json: test gIoU 0.1, 0.2, 0.3 for seeds 0, 1, 2, plus 0.1 for GRTO and 0.2 for
    B-GRTO; every run's training reward rises but cod_grto_s1's; 3 s of BTO and 9 s of RL."""
    seed = int(name[-1]) if name[-1].isdigit() else 0
    bonus = next((v for m, v in {"_grto_": 0.1, "_b-grto_": 0.2}.items() if m in name), 0.0)
    giou = 0.1 * (1 + seed) + bonus
    rewards = [1.0] * 10 + [2.0] * 10 if name != "cod_grto_s1" else [2.0] * 10 + [1.0] * 10
    curve = [{"step": 0, "seconds": 0.0, "giou": 0.1}, {"step": 20, "seconds": 9.0, "giou": 0.2}]
    return {"config": {"steps": steps},
            "test": {"giou": giou, "ciou": giou, "box_acc": giou, "format_valid": 1.0},
            "curve": curve + [{"step": 25, "seconds": 11.0, "giou": 0.3}] * (results.CONTROL in name and seed > 0),
            "timing": {"bto_seconds": 3.0, "rl_seconds_excluding_eval": 9.0},
            "log_history": [{"reward": r, "step": k + 1} for k, r in enumerate(rewards)] + [{"train_loss": 0.1}]}


def test_summarize_reports_mean_and_spread_over_seeds_and_checks_the_targets(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(results, "RESULTS_DIR", tmp_path / "results")
    controls = [results.control_name(d, s) for d in DATASETS for s in results.SEEDS]
    for name in [*results.plan(), *controls]:
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        steps = 20 + (int(name[-1]) + 3 if name in controls else 0)
        (folder / "metrics.json").write_text(json.dumps(_fake_metrics(name, steps)))
    reference = {d: {"reference": {"giou": 0.05, "box_acc": 0.05}, results.TRUE_BOXES_ROW: {"giou": 0.9}}
                 for d in DATASETS}
    reference["standin"] = {"follows_query": {"right_object": 0.95}}
    summary = results.summarize(reference)
    assert summary["missing_runs"] == []
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
    assert "28 of 29 runs (not: cod_grto_s1) | **no** |" in targets  # the controls draw new prompts: not counted
    assert "| cod: B-GRTO >= GRTO given BTO's time as extra RL steps, in test gIoU | 0.400 vs 0.300 (+3 to +5 steps) | yes |" in targets
    assert summary["controls"]["cod"]["extra_steps"] == [3, 4, 5]
    assert "| cod | 3.000 | 0.250 | 3, 4, 5 | 9.000 | 12.000 |" in (tmp_path / "results" / "bto_cost.md").read_text()
    assert (tmp_path / "results" / "curves_cod.png").stat().st_size > 10_000


def test_agreement_allows_twice_the_spread_of_one_seed_of_each():
    def study(giou, sd):
        return {"datasets": {d: {"rows": {r: {"giou": (giou, sd)} for r in (*results.METHODS, results.CONTROL)}}
                             for d in DATASETS}}

    rows = results.agreement(study(0.40, 0.03), study(0.47, 0.04))  # limit 2 * 0.05 = 0.10
    assert len(rows) == 9 and all(r["agree"] for r in rows)  # the controls differ by design: not compared
    assert rows[0]["difference"] == pytest.approx(0.07) and rows[0]["limit"] == pytest.approx(0.10)
    assert not any(r["agree"] for r in results.agreement(study(0.40, 0.03), study(0.52, 0.04)))
    other = study(0.47, 0.04)
    del other["datasets"]["reasonseg"]["rows"]["grto"]  # its runs are missing: not compared
    assert [r["agree"] for r in results.agreement(study(0.40, 0.03), other)][:3] == [True, None, True]


def test_jobs_fit_the_cpu_cores_and_the_gpus_free_memory():
    assert results.choose_jobs(2, None) == (2, "one per CPU core (2), no GPU")
    jobs, why = results.choose_jobs(16, 78.5, 3.0)  # one H100: 26 runs fit, 16 cores
    assert jobs == 16 and why == "min(16 CPU cores, 78.5 GiB free on the GPU / 3 GiB per run = 26 runs)"
    assert results.choose_jobs(64, 78.5, 3.0)[0] == 26  # not the 36 that died of out-of-memory on 80 GB
    assert results.choose_jobs(64, 78.5, 2.0)[0] == 39  # runs made to hold less
    assert results.choose_jobs(16, 2.5, 3.0)[0] == 1  # one run even where none seems to fit


def test_run_one_reports_a_failed_process_with_its_logs_end(tmp_path, monkeypatch):
    config = TrainConfig(output_dir=str(tmp_path / "x"))
    crash = "print('step 1'); raise SystemExit('CUDA out of memory')"  # exit status 1, the message on stderr
    monkeypatch.setattr(results, "TRAIN_COMMAND", [sys.executable, "-c", crash])
    with pytest.raises(results.RunFailed) as failure:
        results.run_one("x", config)
    assert str(failure.value) == f"exit status 1: CUDA out of memory (log: {tmp_path / 'x' / 'log.txt'})"
    assert failure.value.tail == "step 1\nCUDA out of memory"
    monkeypatch.setattr(results, "TRAIN_COMMAND", [sys.executable, "-c", "pass"])
    assert results.run_one("x", config) > 0  # trained now
    (tmp_path / "x" / "metrics.json").write_text("{}")
    assert results.run_one("x", config) == 0.0  # finished: not trained again


def test_a_failed_run_stops_neither_the_others_nor_the_tables(tmp_path, monkeypatch, capsys):
    """cod_b-grto_s1's process fails and so do the rows before RL: every other run trains, the control that
    needs cod_b-grto_s1's bootstrap time does not, results/ is written with the gaps marked, the targets that need a
    missing run are not evaluated, and the command exits with status 1."""
    monkeypatch.setattr(results, "RUNS_DIR", tmp_path / "runs")
    trained = []

    def fake_run(name, config):
        if name == "cod_b-grto_s1":
            raise results.RunFailed("exit status 1: CUDA out of memory (log: log.txt)", "step 1\nCUDA out of memory")
        folder = Path(config.output_dir)
        folder.mkdir(parents=True)
        (folder / "metrics.json").touch()  # half-written while the other job ends: the study must not read it yet
        time.sleep(0.05)
        (folder / "metrics.json").write_text(json.dumps(_fake_metrics(name, config.steps)))
        if config.method == "b-grto":
            (folder / "bto.json").write_text(json.dumps({"bto_seconds": 3.0}))
        trained.append(name)
        return 1.0

    def no_rows(eval_size):
        raise FileNotFoundError("no stand-in")

    monkeypatch.setattr(results, "run_one", fake_run)
    monkeypatch.setattr(results, "reference_rows", no_rows)
    with pytest.raises(SystemExit) as exit_:
        results.main(["--jobs", "2", "--results-dir", str(tmp_path / "results")])
    assert exit_.value.code != 0 and "3 runs missing" in str(exit_.value.code)
    control = results.control_name("cod", 1)
    planned = [*results.plan(), *(results.control_name(d, s) for d in DATASETS for s in results.SEEDS)]
    assert sorted(trained) == sorted(set(planned) - {"cod_b-grto_s1", control})
    assert "cod_b-grto_s1: FAILED, exit status 1: CUDA out of memory" in capsys.readouterr().out

    out = tmp_path / "results"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing_runs"] == [
        {"run": "cod_b-grto_s1", "why": "exit status 1: CUDA out of memory (log: log.txt)"},
        {"run": control, "why": "not run: cod_b-grto_s1/bto.json missing"},
        {"run": "rows before RL", "why": "FileNotFoundError: no stand-in"}]
    log = (out / "failed_runs.log").read_text()
    assert "## cod_b-grto_s1: exit status 1" in log and "step 1\nCUDA out of memory" in log
    assert "## rows before RL: FileNotFoundError: no stand-in" in log and "Traceback" in log
    assert control not in summary["plan"] and "cod_grto_given_bto_time_s0" in summary["plan"]

    table = (out / "table.md").read_text()
    assert "| b-grto | missing: cod_b-grto_s1 | | | |" in table
    assert f"| {results.CONTROL} | missing: {control} | | | |" in table
    assert "| reference | missing: rows before RL | | | |" in table
    assert "| b-grto | 0.400 ± 0.082 |" in table  # reasonseg and earthreason
    assert "| cod | missing | missing | missing | missing | missing |" in (out / "bto_cost.md").read_text()
    assert (out / "curves_cod.png").is_file()

    targets = {t["target"]: t for t in summary["targets"]}
    assert targets["cod: B-GRTO >= GRTO >= GRPO in test gIoU"] == {
        "target": "cod: B-GRTO >= GRTO >= GRPO in test gIoU", "measured": "not evaluated, missing: cod_b-grto_s1",
        "holds": None}
    assert targets["the stand-in follows its query: right object >= 0.9 (follows_query)"]["holds"] is None
    assert targets["cod: B-GRTO >= GRTO given BTO's time as extra RL steps, in test gIoU"]["measured"] == (
        f"not evaluated, missing: cod_b-grto_s1, {control}")
    assert targets["reasonseg: B-GRTO >= GRTO >= GRPO in test gIoU"]["holds"] is True
    assert targets["cod: GRTO >= GRPO in test gIoU (default tool weighting)"]["holds"] is True
    assert targets["earthreason: B-GRTO >= GRTO given BTO's time as extra RL steps, in test gIoU"]["holds"] is True
    assert "| not evaluated, missing: cod_b-grto_s1 | **not evaluated** |" in (out / "targets.md").read_text()
