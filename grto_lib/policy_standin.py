"""The tiny policy's stand-in for pretrained weights: a supervised warm start on the ``shapes`` world.

No Qwen2.5-VL weights can be downloaded where this project is built and tested, so the tiny world makes its own
"pretrained" policy. STAND-IN: it has seen only explicit queries ("the red circle", "the blue shape",
"the star") about solid shapes. It writes the answer format on every synthetic world and boxes *a* shape of the
scene, often precisely (not one box for every image). It does **not** follow its query: asked in turn for each
object of a multi-object ``shapes`` scene by its name, it boxes the same object for every name in 85 % of scenes,
and the named one no more often than a blind guess (``benchmarks/policy_headroom_tiny.py``, docs/benchmarks.md
section 6). Reasoning words it never saw (``reasonseg``) are unreadable to it, and camouflaged or aerial targets
are hard for it.

Recipe (``pretrain_policy_standin``): next-token cross-entropy on the completion tokens only (the prompt and the
image tokens carry no loss),

    completion = format_answer(mask_to_box(mask), mask_to_points(mask), think=query) + "<|im_end|>"

on ``shapes`` training samples, half of whose queries hold 1-3 inserted ``<|unk|>`` words
(``UnknownWordQueries``); AdamW, linear warm-up then cosine decay. Afterwards every word that never occurred in
training gets ``<|unk|>``'s input embedding, so a reasoning query reads as known words among unknown ones and
the answer format survives it. Two stages (``build_standin``):

1. ``STAGE_1``: from a random ``build_tiny_policy`` model (number tokens start with ordered Fourier embeddings,
   ``policy.init_number_embeddings``), 886 steps of 128 plain-background scenes; one H100, 168 s.
2. ``STAGE_2``: 300 more steps of 16 scenes, half of them on random textured backgrounds
   (``TexturedBackgrounds``); one CPU thread, 142 s. Without it the stand-in lost the answer format on the
   textured ``cod`` and ``earthreason`` scenes (format validity 0.23 and 0.01).

A plain torch loop rather than TRL's ``SFTTrainer``: the loop is short and readable, makes the completion-only
mask explicit, draws its batches from one seeded generator (the same seed gives the same weights on the CPU;
on a GPU, up to the usual non-determinism of CUDA kernels) and needs no TRL where it runs (the GPU machine
that built stage 1 has none).

The committed stand-in (``data/standins/policy``: 1.14M parameters, fp32 safetensors, 4.4 MB) rebuilds with::

    python -m grto_lib.policy_standin --out data/standins/policy --device cuda --workers 14

Greedy decoding, 200 test samples each (mean box IoU, an unparseable answer counting 0):

    world        format valid   box IoU   box IoU > 0.5
    shapes           1.00         0.33        37.5 %
    reasonseg        0.965        0.14        14.5 %
    cod              1.00         0.04         1.0 %
    earthreason      1.00         0.07         6.0 %

Stage 1 alone on one CPU thread would take about an hour (0.9 s a step of 32).

A stronger stand-in, not committed (docs/benchmarks.md section 5, ``benchmarks/stronger_standin_tiny.sh``):
three more stages of 128-sample batches from ``WeakLabelMixture`` (every world, 70 % correct labels) raise greedy
box accuracy to 0.545 on shapes and 0.32 on reasonseg. GRPO did not raise it further either.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .data import NAMES, SHAPES, load_dataset, query_corpus
from .generation import generate_completions
from .geometry import box_iou, mask_to_box, mask_to_points
from .policy import MAX_NUMBER, PolicyConfig, build_tiny_policy, load_policy
from .prompts import answer_to_image_pixels, build_messages, format_answer, policy_view
from .rewards import parse_answer

IMAGE_SIZE = 128
"""Side of the policy view the stand-in reads (and of the synthetic images it trains on)."""
TIMING_STEPS = (10, 50)
"""Steps 11..50 are timed to fix the number of steps that fit ``time_limit_s`` (still inside the warm-up)."""
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


class TexturedBackgrounds(torch.utils.data.Dataset):
    """``shapes`` scenes whose plain background is, for a share ``rate`` of samples, replaced by a random texture.

    A pretrained VLM has seen many kinds of images; a stand-in that saw only plain backgrounds loses even the
    answer format on textured scenes (the ``cod`` and ``earthreason`` worlds). The textures are generic, drawn
    from a per-sample generator seeded with ``(seed, i)``: blocks of 4-16 px from a random 4-colour palette,
    a two-colour gradient, or random rectangles. The shapes, the query and the target are unchanged.
    """

    def __init__(self, dataset, rate: float, seed: int = 0):
        self.dataset, self.rate, self.seed = dataset, rate, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        scene = self.dataset.scene(i)
        sample = scene.sample
        rng = np.random.default_rng([self.seed, int(i), 1])
        if rng.random() >= self.rate:
            return sample
        h, w = sample.mask.shape
        background = ~np.any([o.mask for o in scene.objects], axis=0)
        image = sample.image.astype(np.float32)
        texture = _random_texture(rng, h, w) + rng.normal(0, 5, (h, w, 3))
        image[background] = texture[background]
        return dataclasses.replace(sample, image=np.clip(np.rint(image), 0, 255).astype(np.uint8))


PRETRAIN_DATA_SEED = 1
"""Data seed of the pretraining scenes; reinforcement learning and every evaluation use seed 0, so the stand-in
never saw a scene it is trained or tested on later."""


def _family(kind: str) -> str:
    return "shape" if kind in SHAPES else kind


class WeakLabelMixture(torch.utils.data.Dataset):
    """Pretraining scenes from several synthetic worlds; every world but ``shapes`` carries weak labels.

    Sample ``i`` comes from world ``w`` with probability ``shares[w]`` (a pure function of ``(seed, i)``): scene ``i``
    of ``w``'s train split drawn with data seed ``PRETRAIN_DATA_SEED``. Its label is the query's target with
    probability ``label_accuracy`` and otherwise a wrong object of the same scene: another object of the target's
    family (any shape for a shape; another building for a building) if the scene has one, else any other object
    (a salient distractor for a camouflaged target); a scene with no other object keeps its target.

    A stand-in for what a pretrained VLM brings to a new task: it has met such queries and scenes, and its answers
    land on the right object more often than on any other (for ``label_accuracy > 1/2``), but not reliably. The
    hope was that sampling then finds the right object often and reward teaches the policy to prefer it; in the
    tiny world it did not (docs/benchmarks.md section 5). ``shapes`` (explicit queries, clean labels) keeps the
    answer format and the boxes precise.
    """

    def __init__(self, shares: dict, label_accuracy: float, size: int, image_size: int, seed: int = 0):
        self.names, self.shares = list(shares), np.array(list(shares.values()), dtype=float)
        self.shares /= self.shares.sum()
        self.worlds = {name: load_dataset(name, "train", size=size, image_size=image_size, seed=PRETRAIN_DATA_SEED)
                       for name in self.names}
        self.label_accuracy, self.size, self.seed = label_accuracy, size, seed

    def __len__(self) -> int:
        return self.size

    def _draw(self, i):
        rng = np.random.default_rng([self.seed, int(i), 2])
        return self.names[int(rng.choice(len(self.names), p=self.shares))], rng

    def world_of(self, i) -> str:
        """The world sample ``i`` is drawn from."""
        return self._draw(i)[0]

    def __getitem__(self, i):
        name, rng = self._draw(i)
        scene = self.worlds[name].scene(i)
        if name == "shapes" or rng.random() < self.label_accuracy:
            return scene.sample
        target = scene.objects[scene.target]
        others = [o for k, o in enumerate(scene.objects) if k != scene.target and o.area >= 4]
        family = [o for o in others if _family(o.kind) == _family(target.kind)]
        if not (family or others):
            return scene.sample
        wrong = (family or others)[int(rng.integers(len(family or others)))]
        return dataclasses.replace(scene.sample, mask=wrong.mask.copy())


def _random_texture(rng, h: int, w: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # blocks of a palette around one base colour
        block = int(rng.choice([4, 8, 16]))
        palette = np.clip(rng.uniform(30, 220, 3) + rng.normal(0, 25, (4, 3)), 0, 255)
        grid = palette[rng.integers(0, 4, (-(-h // block), -(-w // block)))]
        return np.repeat(np.repeat(grid, block, 0), block, 1)[:h, :w]
    if kind == 1:  # linear gradient between two colours
        a, b = rng.uniform(0, 255, (2, 3))
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[:h, :w] / max(h, w)
        t = (xx * math.cos(angle) + yy * math.sin(angle))
        t = (t - t.min()) / max(np.ptp(t), 1e-6)
        return a + t[..., None] * (b - a)
    base = rng.uniform(30, 220, 3)  # muted rectangles over a base colour
    texture = np.empty((h, w, 3))
    texture[:] = base
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        colour = np.clip(base + rng.normal(0, 30, 3), 0, 255)
        texture[y0:y0 + int(rng.integers(8, h // 2)), x0:x0 + int(rng.integers(8, w // 2))] = colour
    return texture


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
            messages = build_messages(sample.query)
            prompt[sample.query] = processor.apply_chat_template(messages, add_generation_prompt=True)
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
    boxes were written: a policy that ignores the image writes one), ``n``, and the first completion as
    ``example``."""
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


def pretrain_policy_standin(out_dir, seed: int = 0, steps: int = 886, batch_size: int = 128, lr: float = 1e-3,
                            warmup: int = 200, weight_decay: float = 0.01, train_size: int = 100_000,
                            unknown_word_rate: float = 0.5, texture_rate: float = 0.0, worlds: dict | None = None,
                            label_accuracy: float = 1.0, init_from=None,
                            device: str = "cpu", num_workers: int = 0, log_every: int = 100, eval_size: int = 200,
                            time_limit_s: float | None = None) -> dict:
    """Train the tiny policy stand-in (from scratch, or on from ``init_from``) and save it to ``out_dir``.

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
        texture_rate: share of training scenes drawn on a random textured background (``TexturedBackgrounds``).
        worlds: None (``shapes`` only, as the committed recipe) or ``{world: share}`` to train on
            ``WeakLabelMixture`` instead (``texture_rate`` then does not apply).
        label_accuracy: with ``worlds``, the share of non-``shapes`` samples labelled with their true target.
        init_from: None (random initialisation) or a policy folder to continue training (the second stage of the
            committed recipe, see the module docstring).
        device: "cpu" or "cuda".
        num_workers: processes that draw and tokenize batches (0: in the training process). The batches and
            their order do not depend on it.
        log_every: print the running loss every this many steps.
        eval_size: test samples of every synthetic world for the final greedy evaluation (0: skip).
        time_limit_s: after ``TIMING_STEPS`` (still in the warm-up), shorten ``steps`` to what fits
            in this many seconds at the measured rate; the cosine schedule then ends on time. The report's
            ``steps`` rebuilds the same run without a time limit (batches are a prefix of the same draw).

    Returns: ``{"steps", "train_seconds", "data_wait_seconds", "final_loss", "params", "tokens_never_seen",
    "<world>_test": {...}}`` for every synthetic world (``evaluate_boxes`` on ``eval_size`` test samples).
    """
    torch.manual_seed(seed)
    if init_from is None:
        model, processor = build_tiny_policy(query_corpus(), image_size=IMAGE_SIZE, seed=seed)
    else:
        model, processor = load_policy(PolicyConfig(model_name_or_path=str(init_from), policy_image_size=IMAGE_SIZE))
    model.to(device).train()
    if worlds is None:
        scenes = TexturedBackgrounds(load_dataset("shapes", "train", size=train_size, image_size=IMAGE_SIZE),
                                     texture_rate, seed)
    else:
        scenes = WeakLabelMixture(worlds, label_accuracy, train_size, IMAGE_SIZE, seed)
    train = UnknownWordQueries(scenes, unknown_word_rate, seed)
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
        if step == TIMING_STEPS[0] + 1:
            timed_from = time.perf_counter()  # the first steps also wait for the data workers to start
        if time_limit_s is not None and step == TIMING_STEPS[1] + 1:
            per_step = (time.perf_counter() - timed_from) / (TIMING_STEPS[1] - TIMING_STEPS[0])
            total = max(step, min(steps, int((time_limit_s - (time.perf_counter() - start)) / per_step) + step))
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
        for name in NAMES:
            test = load_dataset(name, "test", size=eval_size, image_size=IMAGE_SIZE)
            report[f"{name}_test"] = evaluate_boxes(model, processor, test)
    out_dir = Path(out_dir)
    model.to("cpu").float().save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return report


STAGE_1 = dict(steps=886, batch_size=128, lr=1e-3, warmup=200, unknown_word_rate=0.5, texture_rate=0.0)
"""From scratch on plain ``shapes`` scenes (the committed run: one H100, 168 s)."""
STAGE_2 = dict(steps=300, batch_size=16, lr=3e-4, warmup=10, unknown_word_rate=0.5, texture_rate=0.5)
"""Continued from stage 1 with half the scenes on textured backgrounds (the committed run: one CPU thread, 142 s)."""


def build_standin(out_dir, seed: int = 0, device: str = "cuda", num_workers: int = 14, eval_size: int = 200) -> dict:
    """The committed recipe: ``STAGE_1`` on ``device``, then ``STAGE_2`` on the CPU (as it was run), into ``out_dir``.

    Returns ``{"stage_1": report, "stage_2": report}`` (``pretrain_policy_standin``'s reports; stage 1 is not
    evaluated).
    """
    with tempfile.TemporaryDirectory() as stage_1_dir:
        first = pretrain_policy_standin(stage_1_dir, seed=seed, device=device, num_workers=num_workers, eval_size=0,
                                        **STAGE_1)
        second = pretrain_policy_standin(out_dir, seed=seed, init_from=stage_1_dir, device="cpu",
                                         eval_size=eval_size, **STAGE_2)
    return {"stage_1": first, "stage_2": second}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/standins/policy", help="output folder")
    parser.add_argument("--stage", choices=("both", "1", "2"), default="both",
                        help="both: the committed two-stage recipe (stage 2 on the CPU); 1 or 2: one stage")
    parser.add_argument("--init-from", default=None, help="stage 2 alone: the stage-1 policy folder to continue")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--time-limit", type=float, default=None,
                        help="one stage: fit its steps into this many seconds (see pretrain_policy_standin)")
    overrides = (("steps", int), ("batch_size", int), ("lr", float), ("warmup", int), ("unknown_word_rate", float),
                 ("texture_rate", float), ("label_accuracy", float), ("worlds", json.loads))
    for name, kind in overrides:  # worlds: JSON shares, e.g. '{"shapes": 0.4, "cod": 0.6}'
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=f"one stage: override the stage's {name} (STAGE_1 / STAGE_2)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the data-loading workers are forked
    if args.stage == "both":
        report = build_standin(args.out, seed=args.seed, device=args.device, num_workers=args.workers,
                               eval_size=args.eval_size)
    else:
        if args.stage == "2" and args.init_from is None:
            parser.error("--stage 2 needs --init-from (the stage-1 policy folder)")
        recipe = dict(STAGE_1 if args.stage == "1" else STAGE_2)
        recipe.update({k: v for k, _ in overrides if (v := getattr(args, k)) is not None})
        report = pretrain_policy_standin(
            args.out, seed=args.seed, init_from=args.init_from if args.stage == "2" else None, device=args.device,
            num_workers=args.workers, eval_size=args.eval_size, time_limit_s=args.time_limit, **recipe,
        )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
