"""The tiny policy's stand-in for pretrained weights: a supervised warm start on the ``shapes`` world.

No Qwen2.5-VL weights can be downloaded where this project is built and tested, so the tiny world makes its own
"pretrained" policy. STAND-IN: it has seen only explicit queries ("the red circle", "the blue shape",
"the star") over plain scenes; it knows the answer format and grounds explicit queries, and it is weak on the
reasoning queries of ``reasonseg`` (words it never saw), which is what reinforcement learning is left to teach.

Recipe (``pretrain_policy_standin``): a randomly initialised ``build_tiny_policy`` model learns, by next-token
cross-entropy on the completion tokens only (the prompt and the image tokens carry no loss),

    completion = format_answer(mask_to_box(mask), mask_to_points(mask), think=query) + "<|im_end|>"

for fresh ``shapes`` training samples; AdamW, linear warm-up then cosine decay. A plain torch loop rather than
TRL's ``SFTTrainer``: the loop is 30 readable lines, makes the completion-only mask explicit, draws batches
from a seeded generator (same seed, same weights on the CPU) and needs no TRL where it runs (the GPU machine
used to build the committed stand-in has none).

Command line (from the repository root; about 6 minutes on one H100, far longer on a laptop CPU)::

    python -m grto_lib.policy_standin --out data/standins/policy --device cuda
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .data import load_dataset, query_corpus
from .generation import generate_completions
from .geometry import box_iou, mask_to_box, mask_to_points
from .policy import MAX_NUMBER, build_tiny_policy
from .prompts import answer_to_image_pixels, build_messages, format_answer, policy_view
from .rewards import parse_answer

IMAGE_SIZE = 128
"""Side of the policy view the stand-in reads (and of the synthetic images it trains on)."""
TIMING_STEPS = 50
"""Steps timed before ``time_limit_s`` fixes the number of steps."""
UNK = "<|unk|>"


class UnknownWordQueries(torch.utils.data.Dataset):
    """``dataset`` with ``<|unk|>`` inserted into some queries, so the stand-in learns to keep the answer format
    (and ground the words it knows) when a query holds words it never saw, as every reasoning query does.

    Sample ``i``'s query gets, with probability ``rate``, 1-3 ``<|unk|>`` words at random positions; the draw is a
    pure function of ``(seed, i)``. The target stays the same object (the known words still name it).
    """

    def __init__(self, dataset, rate: float, seed: int = 0):
        self.dataset, self.rate, self.seed = dataset, rate, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        sample = self.dataset[i]
        rng = np.random.default_rng([self.seed, int(i)])
        if rng.random() >= self.rate:
            return sample
        words = sample.query.split()
        for _ in range(int(rng.integers(1, 4))):
            words.insert(int(rng.integers(0, len(words) + 1)), UNK)
        return dataclasses.replace(sample, query=" ".join(words))


def target_completion(sample, policy_image_size: int = IMAGE_SIZE) -> str:
    """The answer the stand-in learns for ``sample``: its query as the thought, the mask's box and two points
    in pixels of the policy view."""
    h, w = sample.mask.shape
    scale = np.array([policy_image_size / w, policy_image_size / h])
    box = mask_to_box(sample.mask).reshape(2, 2) * scale
    points = mask_to_points(sample.mask) * scale
    return format_answer(box.reshape(-1), points, think=sample.query)


def supervised_batch(processor, samples, policy_image_size: int = IMAGE_SIZE) -> dict:
    """Model inputs for ``samples`` with ``labels`` = the completion tokens (and the closing ``<|im_end|>``),
    -100 elsewhere. Sequences are left-padded, so each completion sits at the end of its row."""
    tokenizer = processor.tokenizer
    prompt = {}
    texts, images, completion_lengths = [], [], []
    for sample in samples:
        if sample.query not in prompt:
            prompt[sample.query] = processor.apply_chat_template(build_messages(sample.query), add_generation_prompt=True)
        completion = target_completion(sample, policy_image_size) + tokenizer.eos_token
        completion_lengths.append(len(tokenizer(completion, add_special_tokens=False)["input_ids"]))
        texts.append(prompt[sample.query] + completion)
        images.append(policy_view(sample.image, policy_image_size))
    tokenizer.padding_side = "left"
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    labels = torch.full_like(batch["input_ids"], -100)
    for row, n in enumerate(completion_lengths):
        labels[row, -n:] = batch["input_ids"][row, -n:]
    batch["labels"] = labels
    return batch


@torch.no_grad()
def evaluate_boxes(model, processor, dataset, policy_image_size: int = IMAGE_SIZE, batch_size: int = 64) -> dict:
    """Greedy answers on ``dataset``: ``format_valid`` (share that ``parse_answer`` accepts), ``box_iou`` (mean,
    an invalid answer counts 0), ``box_acc`` (share with IoU > 0.5), ``distinct_boxes`` (how many different
    boxes were written: a policy that ignores the image writes one), ``n``."""
    samples = [dataset[i] for i in range(len(dataset))]
    texts = [group[0] for group in generate_completions(model, processor, samples, policy_image_size,
                                                        max_new_tokens=64, batch_size=batch_size)]
    ious, boxes = [], set()
    for sample, text in zip(samples, texts):
        answer = parse_answer(text)
        if answer is None:
            ious.append(0.0)
            continue
        boxes.add(tuple(answer.bbox))
        box, _ = answer_to_image_pixels(answer.bbox, answer.points, sample.mask.shape, policy_image_size)
        ious.append(box_iou(box, mask_to_box(sample.mask)))
    ious = np.array(ious)
    valid = sum(parse_answer(t) is not None for t in texts)
    return {"format_valid": valid / len(texts), "box_iou": float(ious.mean()), "box_acc": float((ious > 0.5).mean()),
            "distinct_boxes": len(boxes), "n": len(texts), "example": texts[0]}


def pretrain_policy_standin(out_dir, seed: int = 0, steps: int = 4000, batch_size: int = 64, lr: float = 1e-3,
                            warmup: int = 200, weight_decay: float = 0.01, train_size: int = 100_000,
                            unknown_word_rate: float = 0.5, device: str = "cpu", num_workers: int = 0,
                            log_every: int = 100, eval_size: int = 200, time_limit_s: float | None = None) -> dict:
    """Train the tiny policy stand-in from scratch on ``shapes`` and save it (``save_pretrained``) to ``out_dir``.

    Args:
        out_dir: folder for ``model.safetensors``, ``config.json``, ``generation_config.json`` and the processor
            files; nothing else is written there.
        seed: initialisation and batch order (the ``shapes`` samples themselves are the data set's seed-0 draw).
        steps: optimizer steps; each sees ``batch_size`` samples drawn with replacement from ``train_size``
            ``shapes`` training samples.
        lr, warmup, weight_decay: AdamW, linear warm-up over ``warmup`` steps, then cosine decay to 0.
        unknown_word_rate: share of training queries given ``<|unk|>`` words (``UnknownWordQueries``). After
            training, every token that never occurred in a training input (the words only reasoning queries
            use) gets ``<|unk|>``'s input embedding: the stand-in reads them as the unknown words it learned to
            tolerate, and reinforcement learning starts them from one shared point.
        device: "cpu" or "cuda".
        num_workers: processes that draw and tokenize batches (0: in the training process). The batches and
            their order do not depend on it.
        log_every: print the running loss every this many steps.
        eval_size: ``shapes`` and ``reasonseg`` test samples for the final greedy evaluation (0: skip).
        time_limit_s: after the first ``TIMING_STEPS`` steps (still in the warm-up), shorten ``steps`` to what fits
            in this many seconds at the measured rate; the cosine schedule then ends on time. The report's
            ``steps`` rebuilds the same run without a time limit (batches are a prefix of the same draw).

    Returns: ``{"steps", "train_seconds", "final_loss", "params", "shapes_test": {...}, "reasonseg_test": {...}}``
    (the evaluations as ``evaluate_boxes`` gives them).
    """
    torch.manual_seed(seed)
    model, processor = build_tiny_policy(query_corpus(), image_size=IMAGE_SIZE, seed=seed)
    model.to(device).train()
    train = UnknownWordQueries(load_dataset("shapes", "train", size=train_size, image_size=IMAGE_SIZE),
                               unknown_word_rate, seed)
    order = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(train, replacement=True, num_samples=steps * batch_size, generator=order)
    batches = torch.utils.data.DataLoader(
        train, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=functools.partial(supervised_batch, processor), pin_memory=device != "cpu",
    )
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))

    total = steps  # may be shortened once, by time_limit_s, before the warm-up ends

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    seen = torch.zeros(len(processor.tokenizer), dtype=torch.bool, device=device)
    start, running, step, waiting = time.perf_counter(), None, 0, 0.0
    ready = time.perf_counter()
    for step, batch in enumerate(batches, start=1):
        waiting += time.perf_counter() - ready
        if step > total:
            break
        if time_limit_s is not None and step == TIMING_STEPS + 1:
            per_step = (time.perf_counter() - start) / TIMING_STEPS
            total = max(TIMING_STEPS + 1, min(steps, int(time_limit_s / per_step)))
            print(f"{per_step * 1e3:.0f} ms/step: training {total} steps to fit {time_limit_s:.0f}s", flush=True)
        batch = batch.to(device, non_blocking=True)
        seen[batch["input_ids"].flatten()] = True
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % log_every == 0 or step == total:
            print(f"step {step:5d}  loss {running:.4f}  lr {scheduler.get_last_lr()[0]:.2e}  "
                  f"{time.perf_counter() - start:.0f}s (waiting for data {waiting:.0f}s)", flush=True)
        ready = time.perf_counter()
    step = min(step, total)
    train_seconds = time.perf_counter() - start
    model.eval()
    seen[processor.tokenizer.convert_tokens_to_ids([str(n) for n in range(MAX_NUMBER + 1)])] = True  # keep their order
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[~seen] = embeddings[processor.tokenizer.unk_token_id].clone()
    report = {"steps": step, "train_seconds": round(train_seconds, 1), "data_wait_seconds": round(waiting, 1),
              "final_loss": running, "params": sum(p.numel() for p in model.parameters()),
              "tokens_never_seen": int((~seen).sum())}
    if eval_size:
        for name in ("shapes", "reasonseg"):
            test = load_dataset(name, "test", size=eval_size, image_size=IMAGE_SIZE)
            report[f"{name}_test"] = evaluate_boxes(model, processor, test)
    out_dir = Path(out_dir)
    model.to("cpu").float().save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/standins/policy", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--unknown-word-rate", type=float, default=0.5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=None, help="stop training after this many seconds")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the data-loading workers are forked
    report = pretrain_policy_standin(args.out, seed=args.seed, steps=args.steps, batch_size=args.batch_size,
                                     lr=args.lr, unknown_word_rate=args.unknown_word_rate, device=args.device, num_workers=args.workers, eval_size=args.eval_size,
                                     time_limit_s=args.time_limit)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
