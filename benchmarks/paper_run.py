"""The researcher's run, whole: ``python -m grto_lib.train --preset paper`` as a user types it, on one GPU.

1. Writes a Qwen2.5-VL model folder in Hugging Face's layout (``config.json``, safetensors weights,
   ``generation_config.json`` and the stock ``Qwen2_5_VLProcessor``'s files), as a researcher passes it in
   ``--policy-path``: random weights of Qwen2.5-VL-3B's architecture (``--size paper``) or of a toy one (``--size
   tiny``, with an output layer the size of the tokenizer). No weights or tokenizer can be downloaded here, so the
   tokenizer is the tiny world's word-level one; the paper size keeps Qwen's 151,936-entry output layer, whose ids
   beyond that vocabulary decode to nothing. A random policy never writes a parseable answer, and BTO would have no
   rollout to train the tool on: the folder's ``generation_config.json`` carries a ``sequence_bias`` that steers
   ``generate`` to one fixed parseable answer (``FORCED_ANSWER``, 29 tokens with the end of turn). Every phase
   generates it: BTO's rollouts, the evaluation, and RL's rollouts too (TRL lays its own sampling settings over the
   model's generation config, which keeps the bias). So every rollout is valid and the tool trains in BTO and RL,
   but completions are 29 tokens long: the RL steps here are not the 256-token steps of ``paper_step.py``.
2. Runs the user's command in a subprocess: ``python -m grto_lib.train --preset paper --policy-path <folder>
   --random-tool true --method b-grto`` (``--size tiny``: the tiny tool stand-in instead of a random ViT-H, which
   would take minutes an image on a CPU) with small counts: BTO on ``--bto-prompts`` prompts, ``--steps`` RL
   steps of 2 prompts x 8 completions, a checkpoint at the last step, one evaluation. Then the same command with
   one more step, which resumes from that checkpoint.
3. Appends one JSON line per run to ``OUT/results.jsonl`` as soon as it ends: the command, its wall time, and from
   the run's ``metrics.json`` the seconds of each phase (load, BTO buffer, BTO tool, each RL step, each checkpoint,
   final save, evaluation), the peak GPU memory per phase and the device of each model in each phase.

On the lent GPU (after the wheels of docs/benchmarks.md, "Commands", and ``pip install`` of grto_lib's wheel)::

    python3 benchmarks/paper_run.py --size paper --out $OUT --work /tmp/paper_run

On a CPU, the same command and code paths in about two minutes (``tests/test_paper_run.py`` runs it)::

    python benchmarks/paper_run.py --size tiny --out /tmp/paper_run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_paper import SIZES, Recorder, build_data, environment, policy_config  # noqa: E402

FORCED_ANSWER = '<think> the </think><answer>{"bbox": [40, 40, 200, 200], "points": [[120, 120]]}</answer>'
"""What the random policy's folder steers ``generate`` to write (outside TRL): one parseable answer."""
COUNTS = {  # what each size runs; the command line can override the common ones
    "paper": dict(train_size=64, eval_size=8, image_size=1024, bto_prompts=32, bto_steps=20, bto_batch=16, steps=3,
                  max_completion_length=256),
    "tiny": dict(train_size=16, eval_size=4, image_size=128, bto_prompts=8, bto_steps=5, bto_batch=8, steps=2,
                 max_completion_length=32),
}


def forced_answer_bias(tokenizer, text: str = FORCED_ANSWER) -> list:
    """``sequence_bias`` that makes ``generate`` write ``text`` then end the turn: for every prefix of its tokens,
    a bias on the prefix's last token given the rest, larger for longer prefixes, so the longest prefix matching
    what has been generated (the answer so far) always outweighs the shorter ones (and a random model's logits)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return [[ids[:n], 50.0 + 20.0 * n] for n in range(1, len(ids) + 1)]


def write_policy_folder(folder: Path, size: str, queries: list[str]) -> dict:
    """A random-weight Qwen2.5-VL of ``size``'s architecture in Hugging Face's layout, built on the GPU when there is
    one (no CPU copy of the 3B), saved in bf16 (paper) or fp32 (tiny). Returns what was written."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from grto_lib.prompts import SYSTEM_PROMPT
    from grto_lib.tinyworld.tiny_qwen import CHAT_TEMPLATE, build_tokenizer

    tokenizer = build_tokenizer([*queries, SYSTEM_PROMPT, FORCED_ANSWER])
    arch = SIZES[size]["arch"]
    if size == "tiny":  # Qwen's 151,936 logits at each of ~1,000 prompt positions would dominate a CPU step
        arch = dict(arch, text=dict(arch["text"], vocab_size=len(tokenizer)))
    torch.manual_seed(0)
    dtype = torch.bfloat16 if size == "paper" else torch.float32
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(policy_config(arch, tokenizer), dtype=dtype)
    generation = model.generation_config
    generation.eos_token_id, generation.pad_token_id, generation.bos_token_id = (
        tokenizer.eos_token_id, tokenizer.pad_token_id, None)
    generation.sequence_bias = forced_answer_bias(tokenizer)
    model.save_pretrained(folder)
    Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                        video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"parameters": parameters, "dtype": str(dtype), "tokenizer_vocabulary": len(tokenizer),
            "bytes": sum(f.stat().st_size for f in folder.iterdir())}


def train_command(folder: Path, run_dir: Path, size: str, counts: dict) -> list[str]:
    """The user's command line for this run."""
    tool = ["--random-tool", "true"] if size == "paper" else [
        "--tool-checkpoint", str(Path(__file__).resolve().parent.parent / "data" / "standins" / "tool")]
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in counts.items()]
    return [sys.executable, "-m", "grto_lib.train", "--preset", "paper", "--policy-path", str(folder), *tool,
            "--method", "b-grto", "--dataset", "reasonseg", *flags, "--prompts-per-step", "2",
            "--num-generations", "8", "--tool-weighting", "uniform", "--curve-every", "0", "--logging-steps", "1",
            f"--save-steps={counts['steps']}", "--output-dir", str(run_dir)]


def run(record, name: str, command: list[str], run_dir: Path, log: Path) -> dict:
    """Run ``command``, keep its output in ``log``, and record the phases of the run's ``metrics.json``."""
    start = time.perf_counter()
    with log.open("w") as output:
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, text=True)
    wall = round(time.perf_counter() - start, 2)
    metrics_path = run_dir / "metrics.json"
    if result.returncode != 0 or not metrics_path.is_file():
        return record(f"{name}:error", command=command[1:], wall_seconds=wall, returncode=result.returncode,
                      log_tail=log.read_text()[-3000:])
    metrics = json.loads(metrics_path.read_text())
    steps = [e for e in metrics["log_history"] if "reward" in e]
    return record(name, command=command[1:], wall_seconds=wall, resumed_from=metrics["resumed_from"],
                  timing={k: v for k, v in metrics["timing"].items() if k != "bto_losses"},
                  bto=json.loads((run_dir / "bto.json").read_text()) if (run_dir / "bto.json").is_file() else None,
                  devices=metrics["devices"], peak_gib=metrics["memory"], test=metrics["test"],
                  rl_steps=[{k: e.get(k) for k in ("step", "reward", "completions/mean_length", "step_time")}
                            for e in steps])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(COUNTS), default="paper")
    parser.add_argument("--out", type=Path, default=Path("outputs/paper_run"), help="results.jsonl and the logs")
    parser.add_argument("--work", type=Path, default=None,
                        help="the model folder and the run folder (default: OUT/work; 7.5 GB at --size paper)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps before the resume (then one more)")
    parser.add_argument("--bto-prompts", type=int, default=None)
    parser.add_argument("--max-completion-length", type=int, default=None)
    opts = parser.parse_args(argv)
    counts = dict(COUNTS[opts.size])
    counts.update({k: v for k, v in vars(opts).items() if k in counts and v is not None})

    record = Recorder(opts.out, "paper_run")
    record("environment", **environment(), size=opts.size, counts=counts,
           grto_lib=str(Path(__import__("grto_lib").__file__).parent))
    work = opts.work or opts.out / "work"
    folder, run_dir = work / "policy", work / "run"
    start = time.perf_counter()
    queries = [s.query for s in build_data(SIZES[opts.size], 32)]
    written = write_policy_folder(folder, opts.size, queries)
    record("policy_folder", seconds=round(time.perf_counter() - start, 2), **written)
    first = run(record, "run", train_command(folder, run_dir, opts.size, counts), run_dir, opts.out / "run.log")
    if first["name"] == "run":
        resumed = dict(counts, steps=counts["steps"] + 1)
        run(record, "resume", train_command(folder, run_dir, opts.size, resumed), run_dir, opts.out / "resume.log")
    record("done")


if __name__ == "__main__":
    main()
