"""A stand-in for pretrained SAM weights in the tiny world: supervised pretraining of the tiny tool.

No SAM checkpoint can be downloaded where this project is built and tested, and a randomly initialised SAM
cannot segment anything, so GRTO would have nothing to start from. This recipe gives the tiny ``Sam`` what
SAM's own pretraining gives the real one: the ability to segment the region a box (and points) point at, on
generic scenes that belong to none of the three settings (``generic_scene``: polygons and ellipses in random
colours on plain or textured backgrounds, the tiny world's SA-1B). It has never seen a ring, a star, a cross,
a camouflaged blob or an aerial scene, so on every setting it starts well below what it can learn there: the
gap GRTO's tool training closes, as in the paper, where SAM had never seen ReasonSeg's images or the policy's
prompts. (The first stand-in was pretrained on ``shapes`` scenes, the objects ``reasonseg`` is made of; on
``reasonseg`` it already sat at its optimum and tool training had nothing to add.)

Recipe (every part of the tiny SAM is trained except the prompt encoder's frozen N(0, 1) Fourier matrix):
each step draws ``batch_size`` training scenes and prompts up to ``prompts_per_image`` of their objects, each
with its ground-truth box jittered by N(0, (``box_noise`` x side)^2) per coordinate (SAM's recipe: 10 % of the
side, at most 20 px) plus 0, 1 or 2 ground-truth points (``geometry.mask_to_points``; unused slots are SAM's
"not a point" padding). Generic augmentations, none imitating an evaluation world: ``zoom`` (shrink the
scene, for smaller objects), ``clutter`` (a random texture behind the objects), ``fade`` (objects blended
with their background). Loss: per-pixel binary cross-entropy + Dice on the full-resolution logits; Adam with
a linear warm-up, cosine decay and gradient clipping. Deterministic given ``seed`` on one thread.

Rebuild: ``python -m grto_lib.tinyworld.tool_standin data/standins/tool`` (or ``python -m grto_lib.tinyworld.standins --only tool``).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from grto_lib.geometry import mask_to_box, mask_to_points
from grto_lib.losses import tool_loss
from grto_lib.tool import SegmentationTool, ToolConfig, load_tool, save_tool, trainable_parameters


def jittered_prompts(mask: np.ndarray, rng: np.random.Generator, box_noise: float = 0.1, max_noise_px: float = 20.0,
                     max_points: int = 2):
    """A training prompt for ``mask``: (box [4], points [max_points, 2], labels [max_points]).

    The box is the tight box plus N(0, (box_noise x side)^2) noise per coordinate, clipped to ``max_noise_px``
    and to the image, with ``x1 <= x2``; ``k ~ U{0..max_points}`` ground-truth points get label 1, the rest are
    padding (label -1).
    """
    h, w = mask.shape
    box = mask_to_box(mask)
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    box = box + np.clip(rng.normal(0.0, 1.0, 4) * box_noise * side, -max_noise_px, max_noise_px)
    box = np.clip(box, 0, [w, h, w, h])
    box[[0, 2]], box[[1, 3]] = np.sort(box[[0, 2]]), np.sort(box[[1, 3]])
    points = mask_to_points(mask, k=max_points)
    labels = np.full(max_points, -1.0)
    labels[: rng.integers(0, max_points + 1)] = 1.0
    return box, points, labels


def random_texture(hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A generic H x W x 3 float texture: smooth colour noise (random colours on a coarse grid, bilinearly
    upsampled) or random-colour blocks, around a random base colour, plus pixel noise."""
    h, w = hw
    base = rng.uniform(30, 225, 3)
    cells = int(rng.choice([4, 8, 16]))
    grid = base + rng.normal(0.0, rng.uniform(10, 45), (-(-h // cells) + 1, -(-w // cells) + 1, 3))
    if rng.random() < 0.5:
        grid_t = torch.from_numpy(grid.transpose(2, 0, 1)[None]).float()
        size = ((grid.shape[0] - 1) * cells, (grid.shape[1] - 1) * cells)
        texture = F.interpolate(grid_t, size=size, mode="bilinear", align_corners=True)[0].numpy().transpose(1, 2, 0)
    else:
        texture = np.repeat(np.repeat(grid, cells, 0), cells, 1)
    return texture[:h, :w] + rng.normal(0.0, 4.0, (h, w, 3))


def zoom_out(image: np.ndarray, masks: list[np.ndarray], scale: float, rng: np.random.Generator):
    """Shrink the scene by ``scale`` (nearest neighbour, so image and masks stay aligned) and paste it at a random
    place on a canvas of the same size filled with the scene's median border colour: smaller objects."""
    h, w = image.shape[:2]
    sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
    img = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    small = F.interpolate(img, size=(sh, sw), mode="nearest")[0]
    stack = torch.from_numpy(np.array(masks))[None].float()
    small_masks = F.interpolate(stack, size=(sh, sw), mode="nearest")[0].bool().numpy()
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    canvas = np.broadcast_to(np.median(border, axis=0), image.shape).astype(np.float32).copy()
    y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    canvas[y:y + sh, x:x + sw] = small.permute(1, 2, 0).numpy()
    out_masks = []
    for m in small_masks:
        full = np.zeros((h, w), dtype=bool)
        full[y:y + sh, x:x + sw] = m
        out_masks.append(full)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), out_masks


def augment_scene(image: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator, clutter: float,
                  fade: float) -> np.ndarray:
    """Generic appearance changes that keep the masks valid.

    With probability ``clutter`` the background (pixels outside every mask) becomes a ``random_texture``.
    Each object, with probability ``fade``, is blended with what lies behind it, ``a x object + (1 - a) x
    background`` with ``a ~ U(0.35, 0.8)``: low-contrast objects teach the tool to lean on the box when
    colour alone is ambiguous. Neither imitates any evaluation world.
    """
    foreground = np.any(masks, axis=0)
    if rng.random() < clutter:
        background = random_texture(foreground.shape, rng)
    else:  # the plain background, continued under the objects
        background = image.astype(np.float32)
        background[foreground] = np.median(background[~foreground], axis=0) if (~foreground).any() else 127.0
    out = np.where(foreground[..., None], image.astype(np.float32), background)
    for mask in masks:
        if rng.random() < fade:
            a = rng.uniform(0.35, 0.8)
            out[mask] = a * out[mask] + (1 - a) * background[mask]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _region_outline(rng: np.random.Generator, size: int) -> list[tuple[float, float]]:
    """The outline of one generic region: a convex-ish polygon of 3-7 vertices or a rotated ellipse, radius
    6-30 px (at 128 px), anywhere in the image (it may be cut by the border)."""
    r = rng.uniform(6, 30) * size / 128
    cx, cy = rng.uniform(0, size, 2)
    if rng.random() < 0.5:
        k = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * math.pi, k))
        radii = r * rng.uniform(0.7, 1.0, k)
    else:
        angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        aspect, tilt = rng.uniform(0.35, 1.0), rng.uniform(0, math.pi)
        ex, ey = r * np.cos(angles), aspect * r * np.sin(angles)
        angles = np.arctan2(ey, ex) + tilt
        radii = np.hypot(ex, ey)
    return [(float(cx + q * math.cos(a)), float(cy + q * math.sin(a))) for a, q in zip(angles, radii)]


def generic_scene(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, list[np.ndarray]]:
    """A scene from none of the evaluation worlds, the stand-in's "SA-1B": ``(image, masks)``.

    2-5 regions (``_region_outline``), each filled with a random colour or, one time in ten, a
    ``random_texture``, drawn in order so that later regions hide parts of earlier ones; the background is a
    plain random colour or a ``random_texture``. ``masks`` are the visible parts (regions left with fewer than
    20 pixels are dropped). No ring, star, cross, thin line, camouflage pattern or aerial layout: what the
    three settings look like is left for GRTO to learn.
    """
    from PIL import Image, ImageDraw

    plain = rng.uniform(0, 255, 3)
    image = random_texture((size, size), rng) if rng.random() < 0.5 else np.broadcast_to(plain, (size, size, 3))
    image = image.astype(np.float32).copy()
    masks = []
    for _ in range(int(rng.integers(2, 6))):
        canvas = Image.new("L", (size, size), 0)
        ImageDraw.Draw(canvas).polygon(_region_outline(rng, size), fill=1)
        mask = np.asarray(canvas, dtype=bool)
        fill = random_texture((size, size), rng) if rng.random() < 0.1 else rng.uniform(0, 255, 3)
        image[mask] = np.broadcast_to(fill, image.shape)[mask]
        masks = [m & ~mask for m in masks] + [mask]
    image = np.clip(np.rint(image + rng.normal(0.0, 4.0, image.shape)), 0, 255).astype(np.uint8)
    return image, [m for m in masks if m.sum() >= 20]


def _training_targets(dataset, i: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Image ``i`` and the masks to prompt for: every object of a synthetic scene, else the sample's mask."""
    if hasattr(dataset, "scene"):
        scene = dataset.scene(i)
        masks = [o.mask for o in scene.objects if o.mask.any()]
        return scene.sample.image, masks
    sample = dataset[i]
    return sample.image, [sample.mask]


def train_tool_standin(
    seed: int = 0,
    steps: int = 1200,
    batch_size: int = 8,
    prompts_per_image: int = 3,
    lr: float = 2e-3,
    warmup: int = 50,
    clip: float = 1.0,
    box_noise: float = 0.1,
    clutter: float = 0.5,
    fade: float = 0.3,
    zoom: float = 0.3,
    config: ToolConfig | None = None,
    dataset=None,
    log_every: int = 100,
) -> tuple[SegmentationTool, dict]:
    """Pretrain the tiny tool on ``generic_scene`` draws (or on ``dataset``'s scenes if given), see the module doc.

    ``steps`` Adam steps of ``batch_size`` scenes, up to ``prompts_per_image`` objects prompted per scene;
    learning rate ``lr`` (linear warm-up over ``warmup`` steps, then cosine to 0), gradients clipped to norm
    ``clip``; ``box_noise``, ``clutter``, ``fade``, ``zoom``: the prompt jitter and the augmentation
    probabilities; ``config``: the architecture (default ``ToolConfig()``, tiny at 128 px). The defaults are
    the committed stand-in's recipe (about 2.5 minutes on one CPU thread).

    Returns the tool (``trainable="decoder"``, ready for GRTO) and a log: ``losses`` (every step),
    ``parameters``, ``seconds``, ``seconds_per_step``.
    """
    if dataset is not None and len(dataset) == 0:
        raise ValueError("train_tool_standin: the dataset is empty")
    config = config or ToolConfig()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tool = load_tool(config)
    tool.set_trainable("all")
    params = trainable_parameters(tool)
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * s / steps)))

    losses, start = [], time.perf_counter()
    for step in range(steps):
        images, index, boxes, points, labels, targets = [], [], [], [], [], []
        for i in (range(batch_size) if dataset is None else rng.choice(len(dataset), batch_size, replace=False)):
            image, masks = generic_scene(rng) if dataset is None else _training_targets(dataset, int(i))
            if not masks:
                continue
            if rng.random() < zoom:
                small, small_masks = zoom_out(image, masks, rng.uniform(0.3, 0.9), rng)
                if all(m.any() for m in small_masks):
                    image, masks = small, small_masks
            image = augment_scene(image, masks, rng, clutter, fade)
            for k in rng.permutation(len(masks))[:prompts_per_image]:
                box, pts, lab = jittered_prompts(masks[k], rng, box_noise)
                index.append(len(images)), boxes.append(box), points.append(pts), labels.append(lab)
                targets.append(masks[k])
            images.append(image)
        embeddings = tool.embed(images)
        logits = tool.decode(
            embeddings, torch.tensor(index), torch.tensor(np.array(boxes), dtype=torch.float32),
            torch.tensor(np.array(points), dtype=torch.float32), [im.shape[:2] for im in images],
            point_labels=torch.tensor(np.array(labels), dtype=torch.float32),
        )
        loss = tool_loss(torch.stack(list(logits)) if isinstance(logits, list) else logits,
                         torch.from_numpy(np.array(targets))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step % log_every == 0 or step == steps - 1):
            elapsed = time.perf_counter() - start
            print(f"tool stand-in step {step:4d}  loss {loss.item():.4f}  {elapsed:.0f}s", flush=True)

    seconds = time.perf_counter() - start
    tool.set_trainable("decoder")
    log = dict(losses=losses, parameters=sum(p.numel() for p in tool.parameters()), seconds=seconds,
               seconds_per_step=seconds / max(steps, 1))
    return tool, log


def pretrain_tool_standin(out_dir: str | Path, seed: int = 0, **kwargs) -> dict:
    """Train the stand-in (``train_tool_standin(seed, **kwargs)``) and save it to ``out_dir`` with ``save_tool``.

    Returns a JSON-friendly report: ``parameters``, ``steps``, ``seconds``, ``seconds_per_step``, the mean
    training loss over the first and the last 20 steps, and ``true_boxes_giou_test``: the tool's gIoU from
    ground-truth boxes on the first 100 test samples of every synthetic world (``evaluate.evaluate_true_boxes``).
    """
    from grto_lib.data import NAMES, load_dataset
    from grto_lib.evaluate import evaluate_true_boxes

    tool, log = train_tool_standin(seed, **kwargs)
    save_tool(tool, out_dir)
    losses = log["losses"]
    true_boxes = {name: round(evaluate_true_boxes(tool, load_dataset(name, "test"), indices=range(100))["giou"], 3)
              for name in NAMES}
    return dict(parameters=log["parameters"], steps=len(losses), seconds=round(log["seconds"], 1),
                seconds_per_step=round(log["seconds_per_step"], 4), loss_first=round(float(np.mean(losses[:20])), 4),
                loss_last=round(float(np.mean(losses[-20:])), 4), true_boxes_giou_test=true_boxes)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Pretrain the tiny SAM stand-in (one CPU thread, ~2-3 minutes).")
    parser.add_argument("out_dir", help="folder for tool.safetensors and tool_config.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(pretrain_tool_standin(args.out_dir, seed=args.seed, steps=args.steps))
