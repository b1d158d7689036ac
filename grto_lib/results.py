"""The paper's claims in miniature: ``python -m grto_lib.results`` (or ``make results``).

Trains ``grpo``, ``grto`` and ``b-grto`` on the three synthetic settings with three seeds each at equal
compute (same steps, prompts per step and group size), and on ``cod`` and ``earthreason`` also B-GRTO with the
tool loss gated on rollouts whose box covers the target (``GATED``); adds the reference and oracle rows, the
ablations on ``reasonseg`` (tool-loss weighting, lambda) and a compute-matched GRTO control (GRTO given
B-GRTO's BTO time as extra RL steps), and writes to ``results/``:

* ``table.md`` / ``table.csv``: test metrics, mean and standard deviation over seeds;
* ``ablations.md``: single-seed variants: tool-loss weighting and lambda on ``reasonseg``, and the
  compute-matched GRTO control;
* ``curves_<dataset>.png``: test gIoU (fixed subset) against RL steps and against wall time, BTO included;
* ``bto_cost.md`` and ``summary.json`` (every number the tables and figures show).

Runs execute as separate processes, one torch thread each, two at a time (2-core machines), in
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .config import DATASETS, REPO_ROOT, TrainConfig

RESULTS_DIR = REPO_ROOT / "results"
RUNS_DIR = REPO_ROOT / "outputs" / "results_runs"
METHODS = ("grpo", "grto", "b-grto")
SEEDS = (0, 1, 2)
GATED = "b-grto, on_target"
"""The row of B-GRTO with the tool loss gated on rollouts whose box covers the target (``tool_weighting=
"on_target"``), on the settings in ``GATED_DATASETS``: there the policy's boxes mostly miss."""
GATED_RUN = "b-grto-gated"
"""The ``GATED`` row's runs are named ``{dataset}_b-grto-gated_s{seed}``."""
COMMON = dict(steps=40, prompts_per_step=8, num_generations=8, train_size=2000, eval_size=200, curve_every=10,
              curve_size=64, save_steps=40, logging_steps=5)
"""Equal compute for every main run."""
GATED_DATASETS = ("cod", "earthreason")
"""Settings that also get the ``GATED`` row (three seeds)."""


def plan() -> dict[str, TrainConfig]:
    """Every run of the study, by name."""
    runs = {}
    for dataset in DATASETS:
        for method in METHODS:
            for seed in SEEDS:
                runs[f"{dataset}_{method}_s{seed}"] = dict(dataset=dataset, method=method, seed=seed)
    for weighting in ("advantage", "positive"):
        runs[f"ablation_weighting_{weighting}"] = dict(dataset="reasonseg", method="grto", tool_weighting=weighting)
    for weight in (0.3, 3.0):
        runs[f"ablation_lambda_{weight}"] = dict(dataset="reasonseg", method="grto", tool_loss_weight=weight)
    for dataset in GATED_DATASETS:
        for seed in SEEDS:
            runs[f"{dataset}_{GATED_RUN}_s{seed}"] = dict(dataset=dataset, method="b-grto", seed=seed,
                                                          tool_weighting="on_target")
    # GRTO given B-GRTO's extra time: BTO costs about 60 s, about 20 RL steps at ~3 s a step on 2 CPU cores.
    runs["control_grto_plus_bto_time"] = dict(dataset="reasonseg", method="grto", steps=COMMON["steps"] + 20)
    return {name: TrainConfig(**{**COMMON, **overrides, "output_dir": str(RUNS_DIR / name)})
            for name, overrides in runs.items()}


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


def run_all(jobs: int = 2) -> None:
    runs = plan()
    with ThreadPoolExecutor(jobs) as pool:
        for name, seconds in pool.map(lambda item: run_one(*item), runs.items()):
            print(f"{name}: {'done earlier' if not seconds else f'{seconds:.0f} s'}", flush=True)


def _metrics(name: str) -> dict:
    return json.loads((RUNS_DIR / name / "metrics.json").read_text())


def _mean_std(values) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def summarize(reference: dict) -> dict:
    """Aggregate the finished runs (and ``reference``: dataset -> {"reference", "oracle"} scores) into results/."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluate import TABLE_COLUMNS

    RESULTS_DIR.mkdir(exist_ok=True)
    summary = {"datasets": {}, "ablations": {}, "bto_cost": {}}
    table_rows = []
    for dataset in DATASETS:
        rows = {"reference": {k: (v, 0.0) for k, v in reference[dataset]["reference"].items()},
                "oracle": {k: (v, 0.0) for k, v in reference[dataset]["oracle"].items()}}
        curves = {}
        methods = {m: m for m in METHODS} | ({GATED: GATED_RUN} if dataset in GATED_DATASETS else {})
        for method, run_name in methods.items():
            runs = [_metrics(f"{dataset}_{run_name}_s{s}") for s in SEEDS]
            rows[method] = {k: _mean_std([r["test"][k] for r in runs]) for k in runs[0]["test"]}
            curves[method] = [r["curve"] for r in runs]
            if method == "b-grto":
                bto = [r["timing"]["bto_seconds"] for r in runs]
                total = [r["timing"]["bto_seconds"] + r["timing"]["rl_seconds_excluding_eval"] for r in runs]
                summary["bto_cost"][dataset] = {"bto_seconds": _mean_std(bto),
                                                "share_of_bgrto_time": _mean_std(np.divide(bto, total))}
        summary["datasets"][dataset] = {"rows": rows, "curves": curves}
        for name, row in rows.items():
            table_rows.append({"dataset": dataset, "run": name, **{k: row[k] for k in TABLE_COLUMNS if k in row}})
        _plot_curves(plt, dataset, curves, rows)
    for name in [n for n in plan() if n.startswith(("ablation_", "control_"))]:
        m = _metrics(name)
        summary["ablations"][name] = {"test": m["test"], "curve": m["curve"], "timing": m["timing"]}
    _write_tables(table_rows, summary)
    (RESULTS_DIR / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _plot_curves(plt, dataset, curves, rows) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for method, seeds in curves.items():
        steps = [p["step"] for p in seeds[0]]
        giou = np.array([[p["giou"] for p in c] for c in seeds])
        seconds = np.array([[p["seconds"] for p in c] for c in seeds]).mean(0)
        for ax, x in zip(axes, (steps, seconds)):
            ax.plot(x, giou.mean(0), marker="o", markersize=3, label=method)
            ax.fill_between(x, giou.min(0), giou.max(0), alpha=0.15)
    for ax, label in zip(axes, ("RL step", "wall time (s), BTO included")):
        for name in ("reference", "oracle"):
            ax.axhline(rows[name]["giou"][0], linestyle="--", linewidth=1, color="grey")
            ax.text(ax.get_xlim()[0], rows[name]["giou"][0], f" {name}", fontsize=7, color="grey", va="bottom")
        ax.set_xlabel(label)
        ax.set_ylabel("test gIoU (64 samples)")
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
        steps = entry["curve"][-1]["step"] if entry["curve"] else ""
        ablation.append(f"| {name} | {entry['test']['giou']:.3f} | {entry['test']['box_acc']:.3f} | {steps} |")
    (RESULTS_DIR / "ablations.md").write_text("\n".join(ablation) + "\n")
    cost = ["| dataset | BTO seconds | BTO share of B-GRTO's training time |", "|---|---|---|"]
    cost += [f"| {d} | {_cell(v['bto_seconds'])} | {_cell(v['share_of_bgrto_time'])} |"
             for d, v in summary["bto_cost"].items()]
    (RESULTS_DIR / "bto_cost.md").write_text("\n".join(cost) + "\n")


def reference_rows(eval_size: int) -> dict:
    import torch

    from .evaluate import evaluate_oracle, evaluate_policy
    from .train import load_models, load_splits

    torch.set_num_threads(1)
    out = {}
    for dataset in DATASETS:
        config = TrainConfig(dataset=dataset, eval_size=eval_size)
        _, test_set = load_splits(config)
        policy, processor, tool, size = load_models(config)
        out[dataset] = {"reference": evaluate_policy(policy, processor, tool, test_set, size),
                        "oracle": evaluate_oracle(tool, test_set)}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    parser.add_argument("--summarize-only", action="store_true", help="only rebuild results/ from finished runs")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    if not args.summarize_only:
        run_all(args.jobs)
    summary = summarize(reference_rows(COMMON["eval_size"]))
    summary["wall_seconds"] = time.perf_counter() - start
    summary["plan"] = {name: dataclasses.asdict(c) for name, c in plan().items()}
    (RESULTS_DIR / "summary.json").write_text(json.dumps(summary, indent=1))
    print((RESULTS_DIR / "table.md").read_text())


if __name__ == "__main__":
    main()
