"""The tiny world's "pretrained" models: stand-ins, NOT the paper's Qwen2.5-VL or SAM.

No weights can be downloaded where this project is built and tested, so the tiny world trains its own:

* ``data/standins/tool``: a tiny SAM (segment_anything's classes) trained with jittered ground-truth box and
  point prompts on generic scenes of polygons and ellipses (``grto_lib.tinyworld.tool_standin``), none of the three
  settings: it segments what a box points at, roughly, everywhere, like a generic SAM facing a new domain;
* ``data/standins/policy``: a tiny Qwen2.5-VL warm-started by supervised learning (``grto_lib.tinyworld.policy_standin``):
  its thought lists the objects it sees, then picks one. It follows explicit queries ("the red circle") and
  hesitates on reasoning queries between the right object and one it confuses it with: the gap RL closes.

``python -m grto_lib.tinyworld.standins`` builds both (``--force`` rebuilds) and writes ``data/standins/manifest.json``
with, per model, the recipe, seed, wall time and the SHA-256 of every file. The committed stand-ins were
built by that command; ``verify_standins()`` checks the files against the manifest.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from grto_lib.config import REPO_ROOT

STANDINS_DIR = REPO_ROOT / "data" / "standins"
MANIFEST = STANDINS_DIR / "manifest.json"


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _build(name: str, recipe, kwargs: dict, force: bool) -> dict:
    folder = STANDINS_DIR / name
    if folder.is_dir() and not force:
        print(f"{folder} exists (use --force to rebuild)")
        return json.loads(MANIFEST.read_text())[name] if MANIFEST.is_file() else {}
    tmp = STANDINS_DIR / f".{name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    report = recipe(tmp, **kwargs) or {}
    seconds = time.perf_counter() - start
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return {
        "recipe": f"{recipe.__module__}.{recipe.__name__}", "kwargs": kwargs, "seconds": round(seconds, 1),
        "command": f"python -m grto_lib.tinyworld.standins --only {name} --force",
        "machine": (f"one {torch.cuda.get_device_name()}" if kwargs.get("device") == "cuda"
                    else f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)"),
        "torch": torch.__version__, "report": report, "files": _hashes(folder),
    }


def build_standins(force: bool = False, only: str | None = None) -> dict:
    """Build the tool and/or policy stand-ins and update the manifest."""
    from grto_lib.tinyworld.policy_standin import pretrain_policy_standin
    from grto_lib.tinyworld.tool_standin import pretrain_tool_standin

    STANDINS_DIR.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}
    # The policy is built on a GPU in a few minutes; on a 2-core CPU it would take hours.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    workers = min(14, (os.cpu_count() or 2) - 1)
    recipes = {"tool": (pretrain_tool_standin, {"seed": 0}),
               "policy": (pretrain_policy_standin, {"seed": 0, "device": device, "num_workers": workers})}
    for name, (recipe, kwargs) in recipes.items():
        if only in (None, name):
            manifest[name] = _build(name, recipe, kwargs, force)
            MANIFEST.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def verify_standins() -> list[str]:
    """Files whose SHA-256 differs from the manifest (empty: the stand-ins are the ones the manifest describes)."""
    manifest = json.loads(MANIFEST.read_text())
    bad = []
    for name, entry in manifest.items():
        actual = _hashes(STANDINS_DIR / name)
        bad += [f"{name}/{f}" for f, digest in entry["files"].items() if actual.get(f) != digest]
    return bad


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild even if the folders exist")
    parser.add_argument("--only", choices=("tool", "policy"), help="build one of the two")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(json.dumps(build_standins(args.force, args.only), indent=2, default=str))


if __name__ == "__main__":
    main()
