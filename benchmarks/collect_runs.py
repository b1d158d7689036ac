"""Collect the learning curve, training log, test scores and timing of every run folder under RUNS into one JSON file.

    python3 benchmarks/collect_runs.py RUNS OUT.json

A run that was stopped early (no ``metrics.json``) keeps its curve with ``test`` and ``timing`` null.
"""
import json
import sys
from pathlib import Path

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
collected = {}
for folder in sorted(p for p in runs.iterdir() if p.is_dir()):
    curve_file, metrics_file = folder / "curve.jsonl", folder / "metrics.json"
    curve = [json.loads(line) for line in curve_file.read_text().splitlines()] if curve_file.exists() else []
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    log_file = folder / "log.jsonl"
    keys = ("step", "reward", "reward_std", "rewards/box/mean", "rewards/mask/mean", "entropy", "kl", "tool/loss",
            "completions/mean_length")
    log = [{k: e[k] for k in keys if k in e} for e in map(json.loads, log_file.read_text().splitlines())
           if "reward" in e] if log_file.exists() else []
    collected[folder.name] = {"curve": curve, "log": log, "test": metrics.get("test"), "timing": metrics.get("timing")}
    print(folder.name, metrics.get("test"), [(p["step"], round(p["giou"], 3), round(p["box_acc"], 3)) for p in curve])
out.write_text(json.dumps(collected, indent=1))
