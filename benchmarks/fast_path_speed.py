"""The tiny policy's step with transformers' stock Qwen2.5-VL classes and with ``grto_lib.fast_qwen``'s fast paths.

    # the stand-in's supervised step (batches of 128 built once, as pretrain_policy_standin trains), on a GPU:
    python benchmarks/fast_path_speed.py supervised --device cuda --out benchmarks/results/h200_fast_path_step.json
    # a GRPO step of the committed stand-in (8 prompts x 8 rollouts, TRL), on the CPU with one thread:
    OMP_NUM_THREADS=1 python benchmarks/fast_path_speed.py grpo --out benchmarks/results/cpu_fast_path_grpo_step.json

"stock" runs the model as transformers builds it (``disable_fast_paths``; in the supervised step the rotary
position ids are also recomputed at every forward, as the model does when it is not given them); "fast" uses
``enable_fast_paths`` (and, supervised, the position ids ``build_batches`` stores with each batch). The two
variants alternate in rounds, so a machine that slows down over time slows both alike; each number is the median
over rounds of the mean seconds per step.
"""
import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from grto_lib.fast_qwen import disable_fast_paths, enable_fast_paths


def supervised(device: str, batch_size: int, batches: int, steps: int, rounds: int) -> dict:
    from grto_lib.tinyworld.tiny_qwen import build_tiny_policy
    from grto_lib.tinyworld.policy_standin import MODEL_SIZES, WORLD_SHARES, WeakLabelMixture, build_batches, standin_corpus

    model, processor = build_tiny_policy(standin_corpus(), **MODEL_SIZES)
    mixture = WeakLabelMixture(WORLD_SHARES, 0.5, batch_size * batches)
    cached = build_batches(model, processor, mixture, batch_size, num_workers=4, device=device)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run(variant: str) -> float:
        (enable_fast_paths if variant == "fast" else disable_fast_paths)(model)
        drop = () if variant == "fast" else ("position_ids",)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for step in range(steps):
            batch = {k: v for k, v in cached[step % len(cached)].items() if k not in drop}
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    run("stock"), run("fast")  # warm-up: kernels, allocator, caches
    seconds = {"stock": [], "fast": []}
    for _ in range(rounds):
        for variant in seconds:
            seconds[variant].append(run(variant))
    return {"batch_size": batch_size, "steps_per_round": steps, "rounds": rounds,
            "sequence_length": int(cached[0]["input_ids"].shape[1]), "seconds_per_step": seconds}


def grpo(steps: int, rounds: int) -> dict:
    import tempfile

    from grto_lib.config import TrainConfig
    from grto_lib.train import build_trainer
    from grto_lib.runs import load_models, load_splits

    config = TrainConfig(dataset="reasonseg", method="grpo", steps=steps * (2 * rounds + 1), logging_steps=1,
                         save_steps=10_000, output_dir=tempfile.mkdtemp())
    train_set, _ = load_splits(config)
    policy, processor, tool, size = load_models(config)
    trainer = build_trainer(config, policy, processor, tool, train_set, size)
    seconds = {"stock": [], "fast": []}

    class Switch:  # a TRL callback: switches the variant every ``steps`` steps, times each block
        def __init__(self):
            self.block, self.start = -1, None

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step % steps == 0:
                self.block += 1
                variant = "fast" if self.block % 2 else "stock"  # block 0 (warm-up, stock) is not recorded
                (enable_fast_paths if variant == "fast" else disable_fast_paths)(policy)
                self.variant, self.start = variant, time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % steps == 0 and self.block > 0:
                seconds[self.variant].append((time.perf_counter() - self.start) / steps)

    trainer.add_callback(Switch())
    trainer.train()
    lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e]
    return {"prompts_per_step": config.prompts_per_step, "num_generations": config.num_generations,
            "steps_per_round": steps, "rounds": rounds, "mean_completion_tokens": statistics.mean(lengths),
            "seconds_per_step": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("supervised", "grpo"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per round and variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.mode == "supervised":
        result = supervised(args.device, args.batch_size, 8, args.steps, args.rounds)
    else:
        result = grpo(args.steps, args.rounds)
    medians = {k: statistics.median(v) for k, v in result["seconds_per_step"].items()}
    result.update(mode=args.mode, median_seconds_per_step=medians, speedup=medians["stock"] / medians["fast"],
                  machine=(torch.cuda.get_device_name() if args.device == "cuda"
                           else f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)"),
                  torch=torch.__version__)
    text = json.dumps(result, indent=1)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
