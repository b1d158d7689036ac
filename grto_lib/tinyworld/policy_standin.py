"""The tiny policy's stand-in for pretrained weights: a Qwen2.5-VL that perceives, then selects.

No Qwen2.5-VL weights can be downloaded where this project is built and tested, so the tiny world makes its own
"pretrained" policy. STAND-IN for a capable but unreliable pretrained VLM: it reads explicit queries ("the red
circle") reliably, and on reasoning queries ("the shape left of the blue one", "the building nearest the river",
"the camouflaged object") it hesitates between the right object and one it confuses it with. Greedy decoding then
often picks the wrong one, while a few samples nearly always contain the right one: reward has something to select.

Every completion perceives, reads, then selects (``target_completion``)::

    <think>purple triangle 38 46 75 79 ; blue cross 105 35 121 52 : the shape left of the blue one means
    left of blue = purple triangle 38 46 75 79</think><answer>{"bbox": [38, 46, 75, 79], "points": [[56, 62]]}</answer>

1. **perceive**: the candidate objects (``candidates``: every object of the scene, or on ``earthreason`` those of the
   kinds the query names), left to right, each as its name (``object_name``) and its box in pixels of the policy
   view;
2. **read**: restate the query, then after ``means`` what it asks for in explicit words (``readings``);
3. **select**: after ``=``, the chosen object's name and box; the answer is that box and one point inside the
   object (``interior_point``).

A thought that only restated the query did not teach a tiny model to read it (it boxed the same object whatever
the name); listing what it sees first made the choice a lookup in its own words.

Training data (``WeakLabelMixture``): scenes of every synthetic world, drawn with ``PRETRAIN_DATA_SEED`` (never a
scene that reinforcement learning or evaluation uses). Explicit queries are labelled with their target. Every
other query (``reasonseg``'s reasoning queries, ``cod``, ``earthreason``) is read right with probability
``label_accuracy`` and otherwise misread in a consistent way (``readings``: a relation's reference object, the
opposite superlative, a neighbour for an implicit attribute), a stand-in for the systematic mistakes a pretrained
model brings to a new task. The perception part is always right.

Recipe (``pretrain_policy_standin``): next-token cross-entropy on the completion tokens only (the prompt and the
image tokens carry no loss), from a random ``build_tiny_policy`` model (number tokens start with ordered Fourier
embeddings, ``tiny_qwen.init_number_embeddings``); ``scenes`` training examples are built once (``build_batches``)
and cycled in a new order every pass; AdamW, linear warm-up then cosine decay. The tokenizer holds one token per
word of every synthetic query, and no embedding is tied to another, so no two query words read alike.

A plain torch loop rather than TRL's ``SFTTrainer``: the loop is short and readable, makes the completion-only
mask explicit and needs no TRL where it runs. ``python -m grto_lib.tinyworld.standins --only policy --force`` rebuilds the
committed stand-in (``data/standins/policy``) on a GPU; ``data/standins/manifest.json`` records the machine, the
time and what the stand-in scores.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from grto_lib.data import NAMES, load_dataset
from grto_lib.geometry import mask_to_box
from grto_lib.tinyworld.tiny_qwen import build_tiny_policy
from grto_lib.prompts import TINY_SYSTEM_PROMPT, build_messages, format_answer, policy_view
from grto_lib.tinyworld.drawing import SHAPES
from grto_lib.tinyworld.worlds import RELATIONS, query_corpus

IMAGE_SIZE = 128
"""Side of the policy view the stand-in reads (and of the synthetic images it trains on)."""
PRETRAIN_DATA_SEED = 1
"""Data seed of the pretraining scenes; reinforcement learning and every evaluation use seed 0, so the stand-in
never saw a scene it is trained or tested on later."""
EARTH_KINDS = ("field", "building", "river", "lake", "road")
"""The object kinds of ``earthreason``; its thoughts list the objects of the kinds a query names."""
WORLD_SHARES = {"shapes": 0.3, "reasonseg": 0.3, "cod": 0.15, "earthreason": 0.25}
"""Share of each synthetic world in the pretraining scenes."""
MODEL_SIZES = {"hidden_size": 192, "num_layers": 6}
"""``tiny_model_config`` overrides of the stand-in (2.6M parameters)."""


# --------------------------------------------------------------------------------------------------------------
# What the stand-in writes


def object_name(obj) -> str:
    """How a thought names an object: "red circle", "green field", or its kind ("building", "river", "blob")."""
    return f"{obj.colour} {obj.kind}" if obj.kind in SHAPES or obj.kind == "field" else obj.kind


def candidates(scene) -> list[int]:
    """Indices of the objects a thought lists, left to right (box centre x, then y).

    ``earthreason`` scenes hold up to 16 objects; their thoughts list only the objects of the kinds the query
    names ("the building nearest the river": the buildings and the river), which always include the target.
    """
    words = scene.sample.query.split()
    earth = any(o.kind in EARTH_KINDS for o in scene.objects)
    listed = [k for k, o in enumerate(scene.objects) if o.area > 0 and (not earth or o.kind in words)]
    boxes = {k: mask_to_box(scene.objects[k].mask) for k in listed}
    return sorted(listed, key=lambda k: ((boxes[k][0] + boxes[k][2]) / 2, (boxes[k][1] + boxes[k][3]) / 2))


def _family(kind: str) -> str:
    return "shape" if kind in SHAPES else kind


def confusion(scene) -> int | None:
    """An object to put in the target's place: of the listed objects of the target's family (any shape for a shape;
    another building for a building; for the camouflaged blob, any other object), the one listed right after the
    target, or right before it when the target comes last. None when there is no such object."""
    target = scene.objects[scene.target]
    listed = candidates(scene)
    same = [k for k in listed if k == scene.target or target.kind == "blob"
            or _family(scene.objects[k].kind) == _family(target.kind)]
    if len(same) < 2:
        return None
    j = same.index(scene.target)
    return same[j + 1] if j + 1 < len(same) else same[j - 1]


OPPOSITE = {"largest": "smallest", "smallest": "largest", "leftmost": "rightmost", "rightmost": "leftmost",
            "topmost": "lowest", "lowest": "topmost"}
"""The superlative a misreading puts in a superlative's place."""


def _extreme(scene, word: str, among: list[int]) -> int:
    """The object of ``among`` that is ``word`` ("largest", "leftmost", ...), by area or box centre."""
    def value(k):
        x1, y1, x2, y2 = mask_to_box(scene.objects[k].mask)
        return {"largest": scene.objects[k].area, "smallest": -scene.objects[k].area, "leftmost": -(x1 + x2),
                "rightmost": x1 + x2, "topmost": -(y1 + y2), "lowest": y1 + y2}[word]
    return max(among, key=value)


def _named(scene, words: list[str]) -> int:
    """The object a reference phrase's words name ("blue", "blue circle", "circle", "river")."""
    for k, o in enumerate(scene.objects):
        if all(w in (o.colour, o.kind) for w in words):
            return k
    raise ValueError(f"no object of {scene.sample.id} is {' '.join(words)!r}")


def readings(scene) -> tuple[str, str | None, int | None]:
    """``(reading, misreading, misread_pick)``: what the query asks for in explicit words, and how the stand-in
    misreads it, with the object the misreading leads to (None, None: no misreading for this query).

    ========================  ================================  =========================================
    query                     reading                           misreading (and the object it picks)
    ========================  ================================  =========================================
    the red circle            red circle                        none: explicit queries are read right
    the shape like a coin     circle                            a neighbour's name (``confusion``)
    the shape the colour of   green                             a neighbour's colour
    grass
    the largest shape         largest                           smallest (the smallest shape)
    the shape left of the     left of blue                      blue (the reference itself)
    blue one
    the camouflaged object    blob                              a neighbour's name
    the building nearest the  building nearest river            river (the reference)
    river
    the largest building      largest building                  smallest building
    the green field           green field                       brown field (a neighbouring one)
    the river                 river                             none
    ========================  ================================  =========================================
    """
    query, kind, objects = scene.sample.query, scene.query_kind, scene.objects
    words = [w for w in query.split() if w != "the"]
    shapes = [k for k, o in enumerate(objects) if o.kind in SHAPES]
    neighbour = confusion(scene)

    def named(k):
        return object_name(objects[k])

    if kind == "explicit":
        return " ".join(w for w in words if w != "shape"), None, None
    if kind in ("implicit_shape", "implicit_colour", "camouflage"):
        right = {"implicit_shape": objects[scene.target].kind, "implicit_colour": objects[scene.target].colour,
                 "camouflage": "blob"}[kind]
        if neighbour is None:
            return right, None, None
        wrong = objects[neighbour].colour if kind == "implicit_colour" else named(neighbour)
        return right, wrong, neighbour
    if kind == "superlative":
        word = words[0]
        return word, OPPOSITE[word], _extreme(scene, OPPOSITE[word], shapes)
    if kind == "relation":
        rel = next(r for r in RELATIONS if f" {r} " in f" {query} ")
        reference = [w for w in query.split(rel, 1)[1].split() if w not in ("the", "one")]
        return f"{rel} {' '.join(reference)}", " ".join(reference), _named(scene, reference)
    # earthreason
    what = words[0] if words[0] in EARTH_KINDS else words[1]
    same_kind = [k for k, o in enumerate(objects) if o.kind == what]
    if kind in ("building_size", "field_size"):
        word = words[0]
        return " ".join(words), f"{OPPOSITE[word]} {what}", _extreme(scene, OPPOSITE[word], same_kind)
    if kind == "field_colour":
        if neighbour is None:
            return " ".join(words), None, None
        return " ".join(words), named(neighbour), neighbour
    landmark = next((w for w in reversed(words) if w in ("river", "lake", "road")), None)
    if kind == "landmark" or landmark is None:
        return " ".join(words), None, None
    return " ".join(words), landmark, _named(scene, [landmark])


def _view_box(mask, scale: float) -> list[int]:
    return [int(round(v * scale)) for v in mask_to_box(mask)]


def interior_point(mask, scale: float = 1.0) -> list[int]:
    """The one point the stand-in answers with, ``[x, y]`` in pixels of the policy view (``scale`` = view / image):
    the centre of its box, ``((x1 + x2) // 2, (y1 + y2) // 2)``, when that pixel is at least half as deep in the
    mask as its deepest pixel (distance transform); otherwise the deep-enough pixel nearest it, ties in raster
    order. For most shapes that is plain arithmetic on the box, which the policy can do; ``geometry.mask_to_points``
    (the deepest pixel, then the deepest outside a disc around it) is ambiguous on symmetric shapes, and a stand-in
    trained on it wrote its points with more entropy than anything else in its rollouts
    (docs/benchmark_history.md, 7.3)."""
    x1, y1, x2, y2 = _view_box(mask, scale)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    depth = ndimage.distance_transform_edt(mask)
    deep = depth >= depth.max() / 2
    h, w = mask.shape
    row, col = min(int(cy / scale), h - 1), min(int(cx / scale), w - 1)
    if deep[row, col]:
        return [cx, cy]
    ys, xs = np.nonzero(deep)
    k = np.argmin((xs - col) ** 2 + (ys - row) ** 2)
    return [int((xs[k] + 0.5) * scale), int((ys[k] + 0.5) * scale)]


def target_completion(scene, misread: bool = False, policy_image_size: int = IMAGE_SIZE) -> str:
    """The completion the stand-in learns for ``scene``: list the candidates, restate the query, write what it
    reads in it (``readings``; its misreading when ``misread`` and there is one), name the object that reading
    picks with its box, and answer with that box and a point inside it."""
    reading, misreading, misread_pick = readings(scene)
    pick = scene.target
    if misread and misreading is not None:
        reading, pick = misreading, misread_pick
    scale = policy_image_size / scene.sample.mask.shape[1]

    def entry(k):
        return f"{object_name(scene.objects[k])} " + " ".join(map(str, _view_box(scene.objects[k].mask, scale)))

    listing = " ; ".join(entry(k) for k in candidates(scene))
    think = f"{listing} : {scene.sample.query} means {reading} = {entry(pick)}"
    mask = scene.objects[pick].mask
    return format_answer(_view_box(mask, scale), [interior_point(mask, scale)], think=think)


# --------------------------------------------------------------------------------------------------------------
# Training data


class WeakLabelMixture(torch.utils.data.Dataset):
    """``size`` pretraining examples ``(sample, completion)`` from several synthetic worlds.

    Example ``i`` comes from world ``w`` with probability ``shares[w]`` (a pure function of ``(seed, i)``): scene
    ``i`` of ``w``'s train split drawn with data seed ``PRETRAIN_DATA_SEED``. Its completion (``target_completion``)
    reads the query right when it is explicit; otherwise right with probability ``label_accuracy`` and with its
    misreading (``readings``, when there is one) the rest of the time. ``sample.mask`` stays the true target.
    """

    def __init__(self, shares: dict, label_accuracy: float, size: int, image_size: int = IMAGE_SIZE, seed: int = 0):
        unknown = set(shares) - set(NAMES)
        if unknown:
            raise ValueError(f"WeakLabelMixture: unknown worlds {sorted(unknown)}; choose among {NAMES}")
        self.names, self.shares = list(shares), np.array(list(shares.values()), dtype=float)
        self.shares /= self.shares.sum()
        self.worlds = {name: load_dataset(name, "train", size=size, image_size=image_size, seed=PRETRAIN_DATA_SEED)
                       for name in self.names}
        self.label_accuracy, self.size, self.seed = label_accuracy, size, seed

    def __len__(self) -> int:
        return self.size

    def draw(self, i) -> tuple[str, object, bool]:
        """``(world, scene, misread)`` of example ``i``."""
        rng = np.random.default_rng([self.seed, int(i), 2])
        name = self.names[int(rng.choice(len(self.names), p=self.shares))]
        scene = self.worlds[name].scene(i)
        return name, scene, bool(rng.random() >= self.label_accuracy)

    def __getitem__(self, i):
        _, scene, misread = self.draw(i)
        return scene.sample, target_completion(scene, misread)


def supervised_batch(processor, examples, policy_image_size: int = IMAGE_SIZE) -> dict:
    """Model inputs for ``(sample, completion)`` pairs with ``labels`` = the completion tokens (and the closing
    ``<|im_end|>``), -100 elsewhere. Sequences are left-padded, so each completion sits at the end of its row."""
    tokenizer = processor.tokenizer
    prompt = {}
    texts, images, completion_lengths = [], [], []
    for sample, completion in examples:
        if sample.query not in prompt:
            messages = build_messages(sample.query, TINY_SYSTEM_PROMPT)
            prompt[sample.query] = processor.apply_chat_template(messages, add_generation_prompt=True)
        completion = completion + tokenizer.eos_token
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


def build_batches(model, processor, dataset, batch_size: int, num_workers: int = 0, device: str = "cpu") -> list[dict]:
    """``len(dataset) // batch_size`` batches of consecutive examples (``supervised_batch``), built once by
    ``num_workers`` processes, each with the multimodal rotary ``position_ids`` the model would otherwise compute
    at every forward (``get_rope_index``: a Python loop over the batch), moved to ``device``."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(len(dataset) // batch_size * batch_size)), batch_size=batch_size,
        num_workers=num_workers, collate_fn=functools.partial(supervised_batch, processor),
    )
    batches = []
    for batch in loader:
        batch["position_ids"], _ = model.model.get_rope_index(
            batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
            attention_mask=batch["attention_mask"])
        batches.append(batch.to(device))
    return batches


def standin_corpus() -> list[str]:
    """Every text whose words the stand-in's tokenizer must know: the synthetic queries and the object names."""
    names = [f"{c} {k}" for c in ("red", "green", "blue", "yellow", "purple", "orange") for k in SHAPES]
    return query_corpus() + names + ["green field", "brown field", "blob", "means", *EARTH_KINDS]


# --------------------------------------------------------------------------------------------------------------
# Training


def pretrain_policy_standin(out_dir, seed: int = 0, steps: int = 4000, batch_size: int = 128, lr: float = 1e-3,
                            warmup: int = 200, weight_decay: float = 0.01, scenes: int = 61_440,
                            worlds: dict | None = None, label_accuracy: float = 0.4, sizes: dict | None = None,
                            device: str = "cpu", num_workers: int = 0, log_every: int = 100,
                            eval_size: int = 200) -> dict:
    """Train the tiny policy stand-in from a random initialisation and save it to ``out_dir``.

    Args:
        out_dir: folder for ``model.safetensors``, ``config.json``, ``generation_config.json`` and the processor
            files; nothing else is written there.
        seed: initialisation, the mixture's draws and the order of the batches.
        steps: optimizer steps of ``batch_size`` examples, cycling over ``scenes`` examples built once.
        lr, warmup, weight_decay: AdamW, linear warm-up over ``warmup`` steps, then cosine decay to 0.
        worlds: ``{world: share}`` of the ``WeakLabelMixture`` (None: ``WORLD_SHARES``).
        label_accuracy: share of non-explicit examples labelled with their true target.
        sizes: ``tiny_model_config`` overrides (None: ``MODEL_SIZES``).
        device: "cpu" or "cuda".
        num_workers: processes that build the batches (their content does not depend on it).
        log_every: print the running loss every this many steps.
        eval_size: test samples per world for the report (``standin_report``; 0: skip).

    Returns: ``{"steps", "params", "build_batches_seconds", "train_seconds", "final_loss", ...}`` plus, with
    ``eval_size``, ``standin_report``'s scores.
    """
    torch.manual_seed(seed)
    model, processor = build_tiny_policy(standin_corpus(), image_size=IMAGE_SIZE, seed=seed,
                                         **(MODEL_SIZES if sizes is None else sizes))
    start = time.perf_counter()
    mixture = WeakLabelMixture(WORLD_SHARES if worlds is None else worlds, label_accuracy, scenes, IMAGE_SIZE, seed)
    batches = build_batches(model, processor, mixture, batch_size, num_workers, device)
    model.to(device).train()
    built = time.perf_counter() - start
    print(f"{len(batches)} batches of {batch_size} built in {built:.0f}s", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    order = torch.Generator().manual_seed(seed)
    start, sequence, window, logged = time.perf_counter(), [], 0.0, 0
    for step in range(1, steps + 1):
        if not sequence:
            sequence = torch.randperm(len(batches), generator=order).tolist()
        loss = model(**batches[sequence.pop()]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        window = window + loss.detach()  # read only when logged: reading waits for the GPU
        if step % log_every == 0 or step == steps:
            running, window, logged = (window / (step - logged)).item(), 0.0, step
            print(f"step {step:5d}  loss {running:.4f}  lr {scheduler.get_last_lr()[0]:.2e}  "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
    train_seconds = time.perf_counter() - start
    model.eval()
    report = {"steps": steps, "params": sum(p.numel() for p in model.parameters()),
              "build_batches_seconds": round(built, 1), "train_seconds": round(train_seconds, 1),
              "final_loss": round(running, 4)}
    if eval_size:
        from grto_lib.tinyworld.diagnostics import standin_report
        start = time.perf_counter()
        batch = 256 if device == "cuda" else 32
        report.update(standin_report(model, processor, IMAGE_SIZE, eval_size, batch_size=batch))
        report["eval_seconds"] = round(time.perf_counter() - start, 1)
    out_dir = Path(out_dir)
    model.to("cpu").float().save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/standins/policy", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="processes that build the batches")
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--report", default=None, help="also write the report (JSON) to this file")
    overrides = (("steps", int), ("batch_size", int), ("lr", float), ("warmup", int), ("scenes", int),
                 ("label_accuracy", float), ("worlds", json.loads), ("sizes", json.loads))
    for name, kind in overrides:  # worlds / sizes: JSON, e.g. '{"shapes": 0.4, "cod": 0.6}', '{"hidden_size": 192}'
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            help=f"override pretrain_policy_standin's {name}")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the batch-building workers are forked
    recipe = {k: v for k, _ in overrides if (v := getattr(args, k)) is not None}
    report = pretrain_policy_standin(args.out, seed=args.seed, device=args.device, num_workers=args.workers,
                                     eval_size=args.eval_size, **recipe)
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text + "\n")


if __name__ == "__main__":
    main()
