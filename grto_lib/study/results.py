"""The paper's claims in miniature: ``python -m grto_lib.study.results`` (or ``make results``).

Trains ``grpo``, ``grto`` and ``b-grto`` on the three synthetic settings with three seeds each at equal
compute (same steps, prompts per step and group size); adds the rows before RL (the reference, and the untrained
tool from ground-truth boxes), two single-seed ablations (the tool loss over every valid rollout,
``tool_weighting="uniform"``, instead of the default ``on_target``: B-GRTO on ``reasonseg``, GRTO on ``cod``) and,
on every setting and seed, a compute-matched control: GRTO given B-GRTO's bootstrap time as extra RL steps
(``control_config``); checks the stand-in policy (``evaluate.follows_query``), and writes to ``results/``:

* ``table.md`` / ``table.csv``: test metrics, mean and standard deviation over seeds;
* ``targets.md``: each claim the study is meant to show, the measured numbers and whether it holds;
* ``ablations.md``, ``bto_cost.md`` (with the controls' extra steps);
* ``curves_<dataset>.png``: test gIoU (fixed subset) against RL steps and against wall time (BTO included), and
  the training reward against RL steps;
* ``summary.json``: every number the tables and figures show.

Runs execute as separate processes, one torch thread each, ``--jobs`` at a time (2 on 2-core machines), in
``outputs/results_runs/`` (ignored by git); a finished run is not trained again, so the command resumes.
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
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path

import numpy as np

from grto_lib.config import DATASETS, REPO_ROOT, TrainConfig
from grto_lib.evaluate import TRUE_BOXES_ROW

RESULTS_DIR = REPO_ROOT / "results"
RUNS_DIR = REPO_ROOT / "outputs" / "results_runs"
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


def control_config(dataset: str, seed: int) -> TrainConfig | None:
    """GRTO given the time B-GRTO spent bootstrapping, as extra RL steps; None until those times are measured.

    ``extra = round(bto_seconds / grto_step_seconds)``: the bootstrap's seconds in the B-GRTO run of the same
    setting and seed (its ``bto.json``) over the seconds per RL step of the GRTO run (``metrics.json``: RL time
    without evaluation, over its steps), both measured in this study on this machine. The control trains
    ``COMMON["steps"] + extra`` steps and draws its prompts from the whole training split (``rl_prompts=0``), so
    the extra time can show its tool new images, as BTO's 1,024 prompts show the bootstrapped tool."""
    bto_file = RUNS_DIR / f"{dataset}_b-grto_s{seed}" / "bto.json"
    grto_file = RUNS_DIR / f"{dataset}_grto_s{seed}" / "metrics.json"
    if not (bto_file.is_file() and grto_file.is_file()):
        return None
    grto = json.loads(grto_file.read_text())
    step_seconds = grto["timing"]["rl_seconds_excluding_eval"] / grto["config"]["steps"]
    extra = max(1, round(json.loads(bto_file.read_text())["bto_seconds"] / step_seconds))
    return _config(control_name(dataset, seed), dataset=dataset, method="grto", seed=seed, rl_prompts=0,
                   steps=COMMON["steps"] + extra)


def run_one(name: str, config: TrainConfig) -> tuple[str, float]:
    """Train ``config`` in its own process with one torch thread (log: ``output_dir/log.txt``); ``(name, seconds)``.
    A folder that already holds ``metrics.json`` is not trained again (0 seconds)."""
    folder = Path(config.output_dir)
    if (folder / "metrics.json").is_file():
        return name, 0.0
    folder.mkdir(parents=True, exist_ok=True)
    config.to_json(folder / "request.json")
    start = time.perf_counter()
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(folder / "log.txt", "w") as log:
        subprocess.run([sys.executable, "-m", "grto_lib.train", "--config", str(folder / "request.json"),
                        "--threads", "1"], stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
    return name, time.perf_counter() - start


def _priority(name: str) -> int:
    """B-GRTO first (the longest, and the controls wait for their bootstrap), then GRTO (the controls wait for it
    too), then the rest; a control starts as soon as its times are measured (``run_all``)."""
    return 0 if "_b-grto_s" in name else 1 if "_grto_s" in name else 2


def run_all(jobs: int = 2) -> dict:
    """Train every run of ``plan()`` and every control not finished yet, and compute ``reference_rows`` (last, in
    this process), ``jobs`` at a time; returns the reference rows."""
    reference = {}

    def rows_before_rl():
        start = time.perf_counter()
        reference.update(reference_rows(COMMON["eval_size"]))
        return "rows before RL", time.perf_counter() - start

    pending = [partial(run_one, name, config) for name, config in sorted(plan().items(), key=lambda i: _priority(i[0]))]
    pending.append(rows_before_rl)
    waiting = [(d, s) for d in DATASETS for s in SEEDS]
    with ThreadPoolExecutor(jobs) as pool:
        running = set()
        while pending or waiting or running:
            for dataset, seed in list(waiting):
                config = control_config(dataset, seed)
                if config is not None:
                    waiting.remove((dataset, seed))
                    pending.insert(0, partial(run_one, control_name(dataset, seed), config))
            while pending and len(running) < jobs:
                running.add(pool.submit(pending.pop(0)))
            if not running:
                raise RuntimeError(f"controls {waiting} wait for runs that are not planned")
            done, running = wait(running, timeout=10, return_when=FIRST_COMPLETED)
            for future in done:
                name, seconds = future.result()
                print(f"{name}: {'done earlier' if not seconds else f'{seconds:.0f} s'}", flush=True)
    return reference


def _metrics(name: str) -> dict:
    return json.loads((RUNS_DIR / name / "metrics.json").read_text())


def _mean_std(values) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def training_rewards(metrics: dict) -> list[float]:
    """The mean training reward of every logged step of a run (``metrics.json``'s ``log_history``)."""
    return [entry["reward"] for entry in metrics["log_history"] if "reward" in entry]


def summarize(reference: dict) -> dict:
    """Aggregate the finished runs and ``reference`` (``reference_rows``) into results/."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grto_lib.evaluate import TABLE_COLUMNS

    RESULTS_DIR.mkdir(exist_ok=True)
    summary = {"standin": reference["standin"], "datasets": {}, "ablations": {}, "bto_cost": {}, "controls": {},
               "rewards": {}}
    table_rows = []
    for dataset in DATASETS:
        rows = {name: {k: (v, 0.0) for k, v in reference[dataset][name].items()}
                for name in ("reference", TRUE_BOXES_ROW)}
        curves, rewards, finished = {}, {}, {}
        for method in (*METHODS, CONTROL):
            names = [control_name(dataset, s) if method == CONTROL else f"{dataset}_{method}_s{s}" for s in SEEDS]
            runs = finished[method] = [_metrics(name) for name in names]
            rows[method] = {k: _mean_std([r["test"][k] for r in runs]) for k in runs[0]["test"]}
            curves[method] = [r["curve"] for r in runs]
            if method != CONTROL:  # the controls draw new prompts every step: their rewards are not compared
                rewards[method] = [training_rewards(r) for r in runs]
        bgrto = [r["timing"] for r in finished["b-grto"]]
        bto = [t["bto_seconds"] for t in bgrto]
        total = [t["bto_seconds"] + t["rl_seconds_excluding_eval"] for t in bgrto]
        summary["bto_cost"][dataset] = {"bto_seconds": _mean_std(bto),
                                        "share_of_bgrto_time": _mean_std(np.divide(bto, total))}
        controls = finished[CONTROL]
        summary["controls"][dataset] = {
            "extra_steps": [c["config"]["steps"] - COMMON["steps"] for c in controls],
            "rl_seconds": [c["timing"]["rl_seconds_excluding_eval"] for c in controls],
            "b-grto_seconds": total}
        summary["datasets"][dataset] = {"rows": rows, "curves": curves, "rewards": rewards}
        for name, row in rows.items():
            table_rows.append({"dataset": dataset, "run": name, **{k: row[k] for k in TABLE_COLUMNS if k in row}})
        _plot_curves(plt, dataset, curves, rewards, rows)
    for name in [n for n in plan() if n.startswith("ablation_")]:
        m = _metrics(name)
        summary["ablations"][name] = {"test": m["test"], "curve": m["curve"], "timing": m["timing"],
                                      "steps": m["config"]["steps"], "rewards": training_rewards(m)}
    for name in plan():  # every run on 40 prompts: the first and the last 5 steps score the same prompts
        r = training_rewards(_metrics(name))
        summary["rewards"][name] = {"first_5": float(np.mean(r[:5])), "last_5": float(np.mean(r[-5:]))}
    summary["targets"] = check_targets(summary)
    _write_tables(table_rows, summary)
    (RESULTS_DIR / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def check_targets(summary: dict) -> list[dict]:
    """Each claim of the study, with the measured numbers and whether it holds (``targets.md``)."""
    rows = {d: summary["datasets"][d]["rows"] for d in DATASETS}
    giou = {d: {m: rows[d][m]["giou"][0] for m in ("reference", *METHODS, CONTROL)} for d in DATASETS}
    box = rows["reasonseg"]["grpo"]["box_acc"][0] - rows["reasonseg"]["reference"]["box_acc"][0]
    follows = summary["standin"]["follows_query"]["right_object"]
    falling = [n for n, r in summary["rewards"].items() if not r["last_5"] > r["first_5"]]
    gain = float(np.mean([giou[d]["b-grto"] - giou[d]["grpo"] for d in DATASETS]))
    targets = [
        ("the stand-in follows its query: right object >= 0.9 (follows_query)", f"{follows:.3f}", follows >= 0.9),
        ("GRPO on reasonseg: test box accuracy >= reference + 0.10", f"{box:+.3f}", box >= 0.10),
        ("GRPO on reasonseg: test gIoU >= reference + 0.05",
         f"{giou['reasonseg']['grpo'] - giou['reasonseg']['reference']:+.3f}",
         giou["reasonseg"]["grpo"] - giou["reasonseg"]["reference"] >= 0.05),
        ("training reward: mean of the last 5 logged steps above the first 5 (the same prompts), in every run",
         f"{len(summary['rewards']) - len(falling)} of {len(summary['rewards'])} runs"
         + (f" (not: {', '.join(falling)})" if falling else ""), not falling),
    ]
    for d in DATASETS:
        g = giou[d]
        order = g["b-grto"] >= g["grto"] >= g["grpo"]
        targets.append((f"{d}: B-GRTO >= GRTO >= GRPO in test gIoU",
                        f"{g['b-grto']:.3f} / {g['grto']:.3f} / {g['grpo']:.3f}", order))
    targets.append(("B-GRTO - GRPO >= +0.10 test gIoU, averaged over the three settings", f"{gain:+.3f}", gain >= 0.10))
    for d in ("cod", "earthreason"):
        g = giou[d]
        targets.append((f"{d}: GRTO >= GRPO in test gIoU (default tool weighting)",
                        f"{g['grto']:.3f} vs {g['grpo']:.3f}", g["grto"] >= g["grpo"]))
    for d in DATASETS:
        g, extra = giou[d], summary["controls"][d]["extra_steps"]
        targets.append((f"{d}: B-GRTO >= GRTO given BTO's time as extra RL steps, in test gIoU",
                        f"{g['b-grto']:.3f} vs {g[CONTROL]:.3f} (+{min(extra)} to +{max(extra)} steps)",
                        g["b-grto"] >= g[CONTROL]))
    return [{"target": t, "measured": m, "holds": bool(ok)} for t, m, ok in targets]


def agreement(summary: dict, other: dict) -> list[dict]:
    """Whether two studies (e.g. CPU and GPU) agree: per setting and method, the test gIoU means differ by at most
    twice the spread of a difference of one seed of each, ``|m - m'| <= 2 sqrt(sd^2 + sd'^2)``. The controls are
    left out: their extra steps come from each machine's own times, so the two studies ran different controls."""
    out = []
    for dataset in DATASETS:
        for run in METHODS:
            (m, sd), (m2, sd2) = (s["datasets"][dataset]["rows"][run]["giou"] for s in (summary, other))
            limit = 2 * float(np.hypot(sd, sd2))
            out.append({"dataset": dataset, "run": run, "giou": (m, sd), "other": (m2, sd2),
                        "difference": m2 - m, "limit": limit, "agree": abs(m2 - m) <= limit})
    return out


def _plot_curves(plt, dataset, curves, rewards, rows) -> None:
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
        for name in ("reference", TRUE_BOXES_ROW):
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
    columns = [c for c in ("giou", "ciou", "box_acc", "format_valid", "S", "E_mean", "E_adp", "wF", "MAE")
               if any(c in r for r in table_rows)]
    with open(RESULTS_DIR / "table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "run"] + [f"{c}_{s}" for c in columns for s in ("mean", "std")])
        for r in table_rows:
            cells = [f"{v:.4f}" if c in r else "" for c in columns for v in r.get(c, (0.0, 0.0))]
            writer.writerow([r["dataset"], r["run"]] + cells)
    lines = []
    for dataset in DATASETS:
        rows = [r for r in table_rows if r["dataset"] == dataset]
        cols = [c for c in columns if any(c in r for r in rows)]
        lines += [f"### {dataset}", "", "| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += ["| " + r["run"] + " | " + " | ".join(_cell(r[c]) if c in r else "" for c in cols) + " |"
                  for r in rows]
        lines.append("")
    (RESULTS_DIR / "table.md").write_text("\n".join(lines))
    ablation = ["| run | test gIoU | box acc | RL steps |", "|---|---|---|---|"]
    for name, entry in summary["ablations"].items():
        ablation.append(f"| {name} | {entry['test']['giou']:.3f} | {entry['test']['box_acc']:.3f} | {entry['steps']} |")
    (RESULTS_DIR / "ablations.md").write_text("\n".join(ablation) + "\n")
    cost = ["| dataset | BTO seconds | BTO share of B-GRTO's training time | control: extra RL steps (seeds 0, 1, 2) "
            "| control's RL seconds | B-GRTO's seconds (BTO + RL) |", "|---|---|---|---|---|---|"]
    for d, v in summary["bto_cost"].items():
        c = summary["controls"][d]
        cost.append(f"| {d} | {_cell(v['bto_seconds'])} | {_cell(v['share_of_bgrto_time'])} | "
                    f"{', '.join(map(str, c['extra_steps']))} | {_cell(_mean_std(c['rl_seconds']))} | "
                    f"{_cell(_mean_std(c['b-grto_seconds']))} |")
    (RESULTS_DIR / "bto_cost.md").write_text("\n".join(cost) + "\n")
    targets = ["| target | measured | holds |", "|---|---|---|"]
    targets += [f"| {t['target']} | {t['measured']} | {'yes' if t['holds'] else '**no**'} |"
                for t in summary["targets"]]
    (RESULTS_DIR / "targets.md").write_text("\n".join(targets) + "\n")


def reference_rows(eval_size: int) -> dict:
    """Per setting, the rows before RL (``evaluate.reference_rows``); and the stand-in policy's ``follows_query``
    (``standin``)."""
    import torch

    from grto_lib.evaluate import follows_query, reference_rows as rows_before_rl
    from grto_lib.runs import load_models

    torch.set_num_threads(1)
    out = {dataset: rows_before_rl(TrainConfig(dataset=dataset, eval_size=eval_size)) for dataset in DATASETS}
    policy, processor, _, size = load_models(TrainConfig())
    out["standin"] = {"follows_query": follows_query(policy, processor, size)}
    return out


def main(argv=None) -> None:
    global RESULTS_DIR
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--summarize-only", action="store_true", help="only rebuild results/ from finished runs")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where to write (default: results/)")
    parser.add_argument("--compare", type=Path, metavar="SUMMARY",
                        help="print whether this summary.json agrees with the results folder's, and stop")
    args = parser.parse_args(argv)
    RESULTS_DIR = args.results_dir
    if args.compare:
        rows = agreement(json.loads((RESULTS_DIR / "summary.json").read_text()), json.loads(args.compare.read_text()))
        print(f"| setting | run | test gIoU, {RESULTS_DIR} | {args.compare} | difference | limit | agree |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['dataset']} | {r['run']} | {_cell(r['giou'])} | {_cell(r['other'])} | "
                  f"{r['difference']:+.3f} | {r['limit']:.3f} | {'yes' if r['agree'] else '**no**'} |")
        return
    start = time.perf_counter()
    reference = reference_rows(COMMON["eval_size"]) if args.summarize_only else run_all(args.jobs)
    summary = summarize(reference)
    summary["wall_seconds"] = time.perf_counter() - start
    summary["plan"] = {name: dataclasses.asdict(c) for name, c in plan().items()}
    summary["plan"].update({control_name(d, s): dataclasses.asdict(control_config(d, s))
                            for d in DATASETS for s in SEEDS})
    (RESULTS_DIR / "summary.json").write_text(json.dumps(summary, indent=1))
    print((RESULTS_DIR / "table.md").read_text())
    print((RESULTS_DIR / "targets.md").read_text())


if __name__ == "__main__":
    main()
