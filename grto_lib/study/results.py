"""The paper's claims in miniature: ``python -m grto_lib.study.results`` (or ``make results``).

Trains ``grpo``, ``grto`` and ``b-grto`` on the three synthetic settings with three seeds each at equal
compute (same steps, prompts per step and group size); adds the rows before RL (the reference, and the untrained
tool from ground-truth boxes), two single-seed ablations (the tool loss over every valid rollout,
``tool_weighting="uniform"``, instead of the default ``on_target``: B-GRTO on ``reasonseg``, GRTO on ``cod``) and,
on every setting and seed, a compute-matched control: GRTO given B-GRTO's bootstrap time as extra RL steps
(``control_config``); checks the stand-in policy (``tinyworld.diagnostics.follows_query``), and writes to
``results/``:

* ``table.md`` / ``table.csv``: test metrics, mean and standard deviation over seeds;
* ``targets.md``: each claim the study is meant to show, the measured numbers and whether it holds;
* ``ablations.md``, ``bto_cost.md`` (with the controls' extra steps);
* ``curves_<dataset>.png``: test gIoU (fixed subset) against RL steps and against wall time (BTO included), and
  the training reward against RL steps;
* ``summary.json``: every number the tables and figures show, and ``missing_runs``: each run that did not finish
  and why.

Runs execute as separate processes, one torch thread each, ``--jobs`` at a time (``choose_jobs``: one per CPU core;
on a GPU no more than fit in its free memory at ``GPU_GIB_PER_RUN`` each), in ``outputs/results_runs/`` (ignored
by git); a finished run is not trained again, so the command resumes. A run that fails does not stop the others:
its log's end goes to ``results/failed_runs.log``, the controls that need its times are not run, the tables mark
what is missing, the targets that need it say they were not evaluated, and the command exits with status 1.
Running it again trains only what is missing.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path

import numpy as np

from grto_lib.config import DATASETS, REPO_ROOT, TrainConfig
from grto_lib.evaluate import TRUE_BOXES_ROW
from grto_lib.study.reference import reference_rows

RESULTS_DIR = REPO_ROOT / "results"
RUNS_DIR = REPO_ROOT / "outputs" / "results_runs"
FAILURE_LOG = "failed_runs.log"
"""In the results folder: the end of each failed run's log (``run_all``)."""
TRAIN_COMMAND = [sys.executable, "-m", "grto_lib.train"]
"""What each run executes, followed by ``--config <its request.json> --threads 1`` (``run_one``)."""
GPU_GIB_PER_RUN = 3.0
"""GPU memory one run holds, in GiB, for sizing ``--jobs`` on a GPU (``choose_jobs``; ``--gpu-gib-per-run``
overrides it): about 3 GB a run was measured on one H100 with 36 runs at once (issue 32), where 80 GB did not hold
them all and one died of CUDA out-of-memory."""
METHODS = ("grpo", "grto", "b-grto")
SEEDS = (0, 1, 2)
COMMON = dict(steps=20, prompts_per_step=8, num_generations=8, rl_prompts=40, train_size=2000, eval_size=200,
              curve_every=5, curve_size=32, save_steps=20, logging_steps=1)
"""Equal compute for every main run. RL cycles through 40 prompts (5 steps' worth), so the first and the last 5
logged steps score the same prompts and the training-reward target compares the policy, not the draw: over
2,000 prompts seen once, one seed's first 40 were easier for the reference policy than its last 40 by more than
RL's gain. BTO and the test split are unchanged."""
CONTROL = "grto_given_bto_time"
"""The compute-matched control's row name (``control_config``)."""
ROWS_BEFORE_RL = "rows before RL"
"""The name under which ``run_all`` computes (and reports missing) the rows before RL, ``reference_rows``."""


def plan() -> dict[str, TrainConfig]:
    """Every run of the study whose configuration is known in advance, by name (the controls' depend on
    measured times: ``control_config``)."""
    runs = {}
    for dataset in DATASETS:
        for method in METHODS:
            for seed in SEEDS:
                runs[f"{dataset}_{method}_s{seed}"] = dict(dataset=dataset, method=method, seed=seed)
    runs["ablation_reasonseg_b-grto_uniform_weighting"] = dict(dataset="reasonseg", method="b-grto",
                                                               tool_weighting="uniform")
    runs["ablation_cod_grto_uniform_weighting"] = dict(dataset="cod", method="grto", tool_weighting="uniform")
    return {name: _config(name, **overrides) for name, overrides in runs.items()}


def _config(name: str, **overrides) -> TrainConfig:
    return TrainConfig(**{**COMMON, **overrides, "output_dir": str(RUNS_DIR / name)})


def control_name(dataset: str, seed: int) -> str:
    return f"{dataset}_{CONTROL}_s{seed}"


def run_names(dataset: str, method: str) -> list[str]:
    """The runs of one row of the table: ``method`` (one of ``METHODS`` or ``CONTROL``) on ``dataset``, every seed."""
    return [control_name(dataset, s) if method == CONTROL else f"{dataset}_{method}_s{s}" for s in SEEDS]


def control_inputs(dataset: str, seed: int) -> tuple[Path, Path]:
    """The files a control's configuration is computed from (``control_config``): the B-GRTO run's ``bto.json``
    and the GRTO run's ``metrics.json``, same setting and seed."""
    return (RUNS_DIR / f"{dataset}_b-grto_s{seed}" / "bto.json", RUNS_DIR / f"{dataset}_grto_s{seed}" / "metrics.json")


def control_config(dataset: str, seed: int) -> TrainConfig | None:
    """GRTO given the time B-GRTO spent bootstrapping, as extra RL steps; None until those times are measured.

    ``extra = round(bto_seconds / grto_step_seconds)``: the bootstrap's seconds in the B-GRTO run of the same
    setting and seed (its ``bto.json``) over the seconds per RL step of the GRTO run (``metrics.json``: RL time
    without evaluation, over its steps), both measured in this study on this machine. The control trains
    ``COMMON["steps"] + extra`` steps and draws its prompts from the whole training split (``rl_prompts=0``), so
    the extra time can show its tool new images, as BTO's 1,024 prompts show the bootstrapped tool."""
    bto_file, grto_file = control_inputs(dataset, seed)
    if not (bto_file.is_file() and grto_file.is_file()):
        return None
    grto = json.loads(grto_file.read_text())
    step_seconds = grto["timing"]["rl_seconds_excluding_eval"] / grto["config"]["steps"]
    extra = max(1, round(json.loads(bto_file.read_text())["bto_seconds"] / step_seconds))
    return _config(control_name(dataset, seed), dataset=dataset, method="grto", seed=seed, rl_prompts=0,
                   steps=COMMON["steps"] + extra)


class RunFailed(Exception):
    """A run's process exited with a non-zero status; ``str()`` says how in one line, ``tail`` is its log's end."""

    def __init__(self, message: str, tail: str):
        super().__init__(message)
        self.tail = tail


def run_one(name: str, config: TrainConfig) -> float:
    """Train ``config`` in its own process with one torch thread (``TRAIN_COMMAND``; log: ``output_dir/log.txt``);
    returns its seconds, or raises ``RunFailed`` if the process exits with a non-zero status. A folder that already
    holds ``metrics.json`` is not trained again (0 seconds)."""
    folder = Path(config.output_dir)
    if (folder / "metrics.json").is_file():
        return 0.0
    folder.mkdir(parents=True, exist_ok=True)
    config.to_json(folder / "request.json")
    start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    log_path = folder / "log.txt"
    with open(log_path, "w") as log:
        status = subprocess.run([*TRAIN_COMMAND, "--config", str(folder / "request.json"), "--threads", "1"],
                                stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if status:
        lines = log_path.read_text(errors="replace").strip().splitlines() or ["(empty log)"]
        raise RunFailed(f"exit status {status}: {lines[-1].strip()} (log: {log_path})", "\n".join(lines[-40:]))
    return time.perf_counter() - start


def choose_jobs(cpu_cores: int, free_gpu_gib: float | None, gib_per_run: float = GPU_GIB_PER_RUN) -> tuple[int, str]:
    """How many runs to train at a time, and why, in words. Each run is a process of one torch thread: one per CPU
    core. On a GPU (``free_gpu_gib`` is its free memory; None without one) also no more than fit in that memory at
    ``gib_per_run`` each: ``min(cpu_cores, floor(free_gpu_gib / gib_per_run))``, and at least 1."""
    if free_gpu_gib is None:
        return cpu_cores, f"one per CPU core ({cpu_cores}), no GPU"
    fit = int(free_gpu_gib // gib_per_run)
    return max(1, min(cpu_cores, fit)), (f"min({cpu_cores} CPU cores, {free_gpu_gib:.1f} GiB free on the GPU / "
                                         f"{gib_per_run:g} GiB per run = {fit} runs)")


def this_machine() -> tuple[int, float | None]:
    """This process's usable CPU cores, and the free memory in GiB of the GPU the runs will use (torch's current
    CUDA device, as ``train`` picks it), or None without a GPU."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not torch.cuda.is_available():
        return cores, None
    return cores, torch.cuda.mem_get_info()[0] / 2**30


def _priority(name: str) -> int:
    """B-GRTO first (the longest, and the controls wait for their bootstrap), then GRTO (the controls wait for it
    too), then the rest; a control starts as soon as its times are measured (``run_all``)."""
    return 0 if "_b-grto_s" in name else 1 if "_grto_s" in name else 2


def _log_failure(name: str, error: Exception) -> str:
    """Print that ``name`` failed and append its log's end (a run) or its traceback (the rows before RL) to
    ``RESULTS_DIR / FAILURE_LOG``; returns why it failed, in one line."""
    if isinstance(error, RunFailed):
        why, details = str(error), error.tail
    else:
        why, details = f"{type(error).__name__}: {error}", "".join(traceback.format_exception(error))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / FAILURE_LOG, "a") as log:
        log.write(f"## {name}: {why}\n\n{details}\n\n")
    print(f"{name}: FAILED, {why}", flush=True)
    return why


def run_all(jobs: int = 2) -> tuple[dict, dict[str, str]]:
    """Train every run of ``plan()`` and every control not finished yet, and compute ``reference_rows`` (last, in
    this process), ``jobs`` at a time. Returns the reference rows (empty if they failed) and, by name, why each run
    that did not finish did not: a run that failed (``_log_failure``; the others go on), or a control whose times
    are missing because its B-GRTO or GRTO run failed."""
    reference, failed = {}, {}

    def rows_before_rl():
        start = time.perf_counter()
        reference.update(reference_rows(COMMON["eval_size"]))
        return time.perf_counter() - start

    (RESULTS_DIR / FAILURE_LOG).unlink(missing_ok=True)
    pending = [(name, partial(run_one, name, config))
               for name, config in sorted(plan().items(), key=lambda i: _priority(i[0]))]
    pending.append((ROWS_BEFORE_RL, rows_before_rl))
    waiting = [(d, s) for d in DATASETS for s in SEEDS]
    with ThreadPoolExecutor(jobs) as pool:
        running = {}  # future -> run name
        while pending or waiting or running:
            unfinished = {*running.values(), *(name for name, _ in pending)}
            for dataset, seed in list(waiting):
                if {path.parent.name for path in control_inputs(dataset, seed)} & unfinished:
                    continue  # its runs may still be writing the files it reads
                config = control_config(dataset, seed)
                if config is not None:
                    waiting.remove((dataset, seed))
                    name = control_name(dataset, seed)
                    pending.insert(0, (name, partial(run_one, name, config)))
            while pending and len(running) < jobs:
                name, task = pending.pop(0)
                running[pool.submit(task)] = name
            if not running:  # every run has ended: the controls still waiting lack their times
                for dataset, seed in waiting:
                    absent = [f"{p.parent.name}/{p.name}" for p in control_inputs(dataset, seed) if not p.is_file()]
                    name = control_name(dataset, seed)
                    failed[name] = f"not run: {' and '.join(absent)} missing"
                    print(f"{name}: {failed[name]}", flush=True)
                break
            done, _ = wait(running, timeout=10, return_when=FIRST_COMPLETED)
            for future in done:
                name = running.pop(future)
                try:
                    seconds = future.result()
                except Exception as error:
                    failed[name] = _log_failure(name, error)
                else:
                    print(f"{name}: {'done earlier' if not seconds else f'{seconds:.0f} s'}", flush=True)
    return reference, failed


def _metrics(name: str) -> dict:
    return json.loads((RUNS_DIR / name / "metrics.json").read_text())


def _mean_std(values) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def training_rewards(metrics: dict) -> list[float]:
    """The mean training reward of every logged step of a run (``metrics.json``'s ``log_history``)."""
    return [entry["reward"] for entry in metrics["log_history"] if "reward" in entry]


def missing_runs(reference: dict, failed: dict[str, str]) -> list[dict]:
    """Each run of the study (``plan()``, the controls, ``ROWS_BEFORE_RL``) that has not finished: its name and why
    (``failed``'s reason where ``run_all`` gave one)."""
    names = [*plan(), *(control_name(d, s) for d in DATASETS for s in SEEDS)]
    missing = [{"run": name, "why": failed.get(name, "not trained (no metrics.json)")}
               for name in names if not (RUNS_DIR / name / "metrics.json").is_file()]
    if not reference:
        missing.append({"run": ROWS_BEFORE_RL, "why": failed.get(ROWS_BEFORE_RL, "not computed")})
    return missing


def summarize(reference: dict, failed: dict[str, str] | None = None) -> dict:
    """Aggregate the finished runs and ``reference`` (``reference_rows``; empty if they failed) into results/.

    ``summary["missing_runs"]`` lists the runs that did not finish (``missing_runs``, with ``failed``'s reasons).
    A row of the tables, a setting's BTO cost or controls, or an ablation that needs one of them is marked missing
    instead of computed from fewer seeds, and a target that needs one is not evaluated (``check_targets``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grto_lib.evaluate import TABLE_COLUMNS

    RESULTS_DIR.mkdir(exist_ok=True)
    missing = missing_runs(reference, failed or {})
    lost = {m["run"] for m in missing}
    summary = {"standin": reference.get("standin"), "datasets": {}, "ablations": {}, "bto_cost": {}, "controls": {},
               "rewards": {}, "missing_runs": missing}
    table_rows = []
    for dataset in DATASETS:
        rows = {name: {k: (v, 0.0) for k, v in reference[dataset][name].items()}
                for name in ("reference", TRUE_BOXES_ROW) if reference}
        curves, rewards, finished, absent = {}, {}, {}, {}
        for method in (*METHODS, CONTROL):
            names = run_names(dataset, method)
            if lost & set(names):
                absent[method] = [n for n in names if n in lost]
                continue
            runs = finished[method] = [_metrics(name) for name in names]
            rows[method] = {k: _mean_std([r["test"][k] for r in runs]) for k in runs[0]["test"]}
            curves[method] = [r["curve"] for r in runs]
            if method != CONTROL:  # the controls draw new prompts every step: their rewards are not compared
                rewards[method] = [training_rewards(r) for r in runs]
        if "b-grto" in finished:
            bgrto = [r["timing"] for r in finished["b-grto"]]
            bto = [t["bto_seconds"] for t in bgrto]
            total = [t["bto_seconds"] + t["rl_seconds_excluding_eval"] for t in bgrto]
            summary["bto_cost"][dataset] = {"bto_seconds": _mean_std(bto),
                                            "share_of_bgrto_time": _mean_std(np.divide(bto, total))}
            if CONTROL in finished:
                controls = finished[CONTROL]
                summary["controls"][dataset] = {
                    "extra_steps": [c["config"]["steps"] - COMMON["steps"] for c in controls],
                    "rl_seconds": [c["timing"]["rl_seconds_excluding_eval"] for c in controls],
                    "b-grto_seconds": total}
        summary["datasets"][dataset] = {"rows": rows, "curves": curves, "rewards": rewards}
        for name in ("reference", TRUE_BOXES_ROW, *METHODS, CONTROL):  # the first two are absent if they failed
            row = ({k: rows[name][k] for k in TABLE_COLUMNS if k in rows[name]} if name in rows
                   else {"missing": absent.get(name, [ROWS_BEFORE_RL])})
            table_rows.append({"dataset": dataset, "run": name, **row})
        _plot_curves(plt, dataset, curves, rewards, rows)
    for name in [n for n in plan() if n.startswith("ablation_") and n not in lost]:
        m = _metrics(name)
        summary["ablations"][name] = {"test": m["test"], "curve": m["curve"], "timing": m["timing"],
                                      "steps": m["config"]["steps"], "rewards": training_rewards(m)}
    for name in [n for n in plan() if n not in lost]:  # every run on 40 prompts: the first and the last 5 steps
        r = training_rewards(_metrics(name))  # score the same prompts
        summary["rewards"][name] = {"first_5": float(np.mean(r[:5])), "last_5": float(np.mean(r[-5:]))}
    summary["targets"] = check_targets(summary)
    _write_tables(table_rows, summary)
    (RESULTS_DIR / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def check_targets(summary: dict) -> list[dict]:
    """Each claim of the study, with the measured numbers and whether it holds (``targets.md``). A claim that needs
    a run of ``summary["missing_runs"]`` is not evaluated: ``holds`` is None and ``measured`` names the runs."""
    lost = {m["run"] for m in summary.get("missing_runs", [])}
    rows = {d: summary["datasets"][d]["rows"] for d in DATASETS}

    def giou(d, run):
        return rows[d][run]["giou"][0]

    def runs(datasets, methods):
        return [n for d in datasets for m in methods for n in run_names(d, m)]

    targets = []

    def target(text, needs, measure):
        """``measure()`` gives ``(measured, holds)``; it runs only if no run of ``needs`` is missing."""
        gone = [n for n in needs if n in lost]
        if gone:
            targets.append({"target": text, "measured": "not evaluated, missing: " + ", ".join(gone), "holds": None})
            return
        measured, holds = measure()
        targets.append({"target": text, "measured": measured, "holds": bool(holds)})

    def standin():
        follows = summary["standin"]["follows_query"]["right_object"]
        return f"{follows:.3f}", follows >= 0.9

    def grpo_gain(column):  # on reasonseg, over the reference
        return rows["reasonseg"]["grpo"][column][0] - rows["reasonseg"]["reference"][column][0]

    def rewards_rise():
        falling = [n for n, r in summary["rewards"].items() if not r["last_5"] > r["first_5"]]
        return (f"{len(summary['rewards']) - len(falling)} of {len(summary['rewards'])} runs"
                + (f" (not: {', '.join(falling)})" if falling else ""), not falling)

    def mean_gain():
        gain = float(np.mean([giou(d, "b-grto") - giou(d, "grpo") for d in DATASETS]))
        return f"{gain:+.3f}", gain >= 0.10

    target("the stand-in follows its query: right object >= 0.9 (follows_query)", [ROWS_BEFORE_RL], standin)
    grpo = [ROWS_BEFORE_RL, *runs(["reasonseg"], ["grpo"])]
    target("GRPO on reasonseg: test box accuracy >= reference + 0.10", grpo,
           lambda: (f"{grpo_gain('box_acc'):+.3f}", grpo_gain("box_acc") >= 0.10))
    target("GRPO on reasonseg: test gIoU >= reference + 0.05", grpo,
           lambda: (f"{grpo_gain('giou'):+.3f}", grpo_gain("giou") >= 0.05))
    target("training reward: mean of the last 5 logged steps above the first 5 (the same prompts), in every run",
           list(plan()), rewards_rise)
    for d in DATASETS:
        target(f"{d}: B-GRTO >= GRTO >= GRPO in test gIoU", runs([d], METHODS),
               lambda: (f"{giou(d, 'b-grto'):.3f} / {giou(d, 'grto'):.3f} / {giou(d, 'grpo'):.3f}",
                        giou(d, "b-grto") >= giou(d, "grto") >= giou(d, "grpo")))
    target("B-GRTO - GRPO >= +0.10 test gIoU, averaged over the three settings", runs(DATASETS, ["grpo", "b-grto"]),
           mean_gain)
    for d in ("cod", "earthreason"):
        target(f"{d}: GRTO >= GRPO in test gIoU (default tool weighting)", runs([d], ["grto", "grpo"]),
               lambda: (f"{giou(d, 'grto'):.3f} vs {giou(d, 'grpo'):.3f}", giou(d, "grto") >= giou(d, "grpo")))
    for d in DATASETS:
        def beats_control():
            extra = summary["controls"][d]["extra_steps"]
            return (f"{giou(d, 'b-grto'):.3f} vs {giou(d, CONTROL):.3f} (+{min(extra)} to +{max(extra)} steps)",
                    giou(d, "b-grto") >= giou(d, CONTROL))
        target(f"{d}: B-GRTO >= GRTO given BTO's time as extra RL steps, in test gIoU", runs([d], ["b-grto", CONTROL]),
               beats_control)
    return targets


def agreement(summary: dict, other: dict) -> list[dict]:
    """Whether two studies (e.g. CPU and GPU) agree: per setting and method, the test gIoU means differ by at most
    twice the spread of a difference of one seed of each, ``|m - m'| <= 2 sqrt(sd^2 + sd'^2)``; ``agree`` is None
    where either study lacks the row (missing runs). The controls are left out: their extra steps come from each
    machine's own times, so the two studies ran different controls."""
    out = []
    for dataset in DATASETS:
        for run in METHODS:
            pair = [s["datasets"][dataset]["rows"].get(run) for s in (summary, other)]
            if None in pair:
                out.append({"dataset": dataset, "run": run, "agree": None})
                continue
            (m, sd), (m2, sd2) = (row["giou"] for row in pair)
            limit = 2 * float(np.hypot(sd, sd2))
            out.append({"dataset": dataset, "run": run, "giou": (m, sd), "other": (m2, sd2),
                        "difference": m2 - m, "limit": limit, "agree": abs(m2 - m) <= limit})
    return out


def _plot_curves(plt, dataset, curves, rewards, rows) -> None:
    """``curves_<dataset>.png``: the methods whose runs all finished, and the rows before RL as lines."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
    for method, seeds in curves.items():
        points = min(len(c) for c in seeds)  # the controls' seeds train different numbers of steps
        steps = [p["step"] for p in seeds[0][:points]]
        giou = np.array([[p["giou"] for p in c[:points]] for c in seeds])
        seconds = np.array([[p["seconds"] for p in c[:points]] for c in seeds]).mean(0)
        for ax, x in zip(axes, (steps, seconds)):
            line, = ax.plot(x, giou.mean(0), marker="o", markersize=3, label=method,
                            linestyle=":" if method == CONTROL else "-")
            ax.fill_between(x, giou.min(0), giou.max(0), alpha=0.15, color=line.get_color())
    for method, reward in rewards.items():
        reward = np.array(reward)
        axes[2].plot(np.arange(1, reward.shape[1] + 1), reward.mean(0), label=method)
    for ax, label in zip(axes, ("RL step", "wall time (s), BTO included")):
        for name in [n for n in ("reference", TRUE_BOXES_ROW) if n in rows]:  # absent if they failed
            ax.axhline(rows[name]["giou"][0], linestyle="--", linewidth=1, color="grey")
            ax.text(ax.get_xlim()[0], rows[name]["giou"][0], f" {name} ({COMMON['eval_size']} test samples)",
                    fontsize=7, color="grey", va="bottom")
        ax.set_xlabel(label)
        ax.set_ylabel(f"test gIoU ({COMMON['curve_size']} samples)")
    axes[2].set_xlabel("RL step")
    axes[2].set_ylabel("mean training reward (8 prompts)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{dataset}: mean over 3 seeds (band: min-max)", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS_DIR / f"curves_{dataset}.png", dpi=90)
    plt.close(fig)


def _cell(value) -> str:
    mean, std = value
    return f"{mean:.3f} ± {std:.3f}" if std else f"{mean:.3f}"


def _write_tables(table_rows, summary) -> None:
    """table.md / table.csv, ablations.md, bto_cost.md and targets.md; what is missing is marked in place."""
    columns = [c for c in ("giou", "ciou", "box_acc", "format_valid", "S", "E_mean", "E_adp", "wF", "MAE")
               if any(c in r for r in table_rows)]
    with open(RESULTS_DIR / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "run"] + [f"{c}_{s}" for c in columns for s in ("mean", "std")])
        for r in table_rows:
            cells = (["missing"] * 2 * len(columns) if "missing" in r else
                     [f"{v:.4f}" if c in r else "" for c in columns for v in r.get(c, (0.0, 0.0))])
            writer.writerow([r["dataset"], r["run"]] + cells)
    lines = []
    for dataset in DATASETS:
        rows = [r for r in table_rows if r["dataset"] == dataset]
        cols = [c for c in columns if any(c in r for r in rows)]
        lines += [f"### {dataset}", "", "| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += ["| " + r["run"] + " | " + (f"missing: {', '.join(r['missing'])}" + " |" * len(cols) if "missing" in r
                                             else " | ".join(_cell(r[c]) if c in r else "" for c in cols) + " |")
                  for r in rows]
        lines.append("")
    (RESULTS_DIR / "table.md").write_text("\n".join(lines))
    ablation = ["| run | test gIoU | box acc | RL steps |", "|---|---|---|---|"]
    for name in [n for n in plan() if n.startswith("ablation_")]:
        entry = summary["ablations"].get(name)
        ablation.append(f"| {name} | {entry['test']['giou']:.3f} | {entry['test']['box_acc']:.3f} | {entry['steps']} |"
                        if entry else f"| {name} | missing | | |")
    (RESULTS_DIR / "ablations.md").write_text("\n".join(ablation) + "\n")
    cost = ["| dataset | BTO seconds | BTO share of B-GRTO's training time | control: extra RL steps (seeds 0, 1, 2) "
            "| control's RL seconds | B-GRTO's seconds (BTO + RL) |", "|---|---|---|---|---|---|"]
    for d in DATASETS:
        v, c = summary["bto_cost"].get(d), summary["controls"].get(d)
        bto = f"{_cell(v['bto_seconds'])} | {_cell(v['share_of_bgrto_time'])}" if v else "missing | missing"
        control = (f"{', '.join(map(str, c['extra_steps']))} | {_cell(_mean_std(c['rl_seconds']))} | "
                   f"{_cell(_mean_std(c['b-grto_seconds']))}" if c else "missing | missing | missing")
        cost.append(f"| {d} | {bto} | {control} |")
    (RESULTS_DIR / "bto_cost.md").write_text("\n".join(cost) + "\n")
    targets = ["| target | measured | holds |", "|---|---|---|"]
    targets += [f"| {t['target']} | {t['measured']} | "
                f"{'**not evaluated**' if t['holds'] is None else 'yes' if t['holds'] else '**no**'} |"
                for t in summary["targets"]]
    (RESULTS_DIR / "targets.md").write_text("\n".join(targets) + "\n")


def main(argv=None) -> None:
    """The command line (``--help``). Exits with status 1, after writing everything it can, if a run is missing."""
    global RESULTS_DIR
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="auto", help="runs at a time (one torch thread each), or auto (default): "
                        "one per CPU core, and on a GPU no more than fit in its free memory (choose_jobs)")
    parser.add_argument("--gpu-gib-per-run", type=float, default=GPU_GIB_PER_RUN, metavar="GIB",
                        help=f"GPU memory of one run in GiB, for --jobs auto (default: {GPU_GIB_PER_RUN:g})")
    parser.add_argument("--summarize-only", action="store_true", help="only rebuild results/ from finished runs")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where to write (default: results/)")
    parser.add_argument("--compare", type=Path, metavar="SUMMARY",
                        help="print whether this summary.json agrees with the results folder's, and stop")
    args = parser.parse_args(argv)
    if args.jobs != "auto" and not (args.jobs.isdigit() and int(args.jobs) > 0):
        parser.error(f"--jobs: a positive number or auto, not {args.jobs!r}")
    RESULTS_DIR = args.results_dir
    if args.compare:
        rows = agreement(json.loads((RESULTS_DIR / "summary.json").read_text()), json.loads(args.compare.read_text()))
        print(f"| setting | run | test gIoU, {RESULTS_DIR} | {args.compare} | difference | limit | agree |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['dataset']} | {r['run']} | missing | | | | |" if r["agree"] is None else
                  f"| {r['dataset']} | {r['run']} | {_cell(r['giou'])} | {_cell(r['other'])} | "
                  f"{r['difference']:+.3f} | {r['limit']:.3f} | {'yes' if r['agree'] else '**no**'} |")
        return
    start = time.perf_counter()
    if args.summarize_only:
        reference, failed = reference_rows(COMMON["eval_size"]), {}
    else:
        jobs, why = ((int(args.jobs), "--jobs") if args.jobs != "auto"
                     else choose_jobs(*this_machine(), args.gpu_gib_per_run))
        print(f"jobs: {jobs} runs at a time: {why}", flush=True)
        reference, failed = run_all(jobs)
    summary = summarize(reference, failed)
    summary["wall_seconds"] = time.perf_counter() - start
    controls = {control_name(d, s): control_config(d, s) for d in DATASETS for s in SEEDS}
    summary["plan"] = {name: dataclasses.asdict(c) for name, c in {**plan(), **controls}.items() if c is not None}
    (RESULTS_DIR / "summary.json").write_text(json.dumps(summary, indent=1))
    print((RESULTS_DIR / "table.md").read_text())
    print((RESULTS_DIR / "targets.md").read_text())
    if summary["missing_runs"]:
        raise SystemExit(f"{len(summary['missing_runs'])} runs missing (summary.json's missing_runs; the failures' "
                         f"logs: {RESULTS_DIR / FAILURE_LOG}); run the command again to train only those:\n"
                         + "\n".join(f"  {m['run']}: {m['why']}" for m in summary["missing_runs"]))


if __name__ == "__main__":
    main()
