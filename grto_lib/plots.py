"""Figures and widgets for the notebooks: samples with prompts and masks, loss and learning curves, a live
training plot and an explorer of rollout groups. Every figure function returns its matplotlib Figure.
"""
from __future__ import annotations

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
from transformers import TrainerCallback

MASK_RGB = {"pred": (0.12, 0.56, 1.0), "gt": (1.0, 0.3, 0.1)}


def show_sample(ax, image, *, mask=None, pred=None, box=None, points=None, title=None):
    """One image with, optionally, the target outline (orange), a predicted mask (blue), a box and points."""
    ax.imshow(image)
    if pred is not None:
        overlay = np.zeros((*pred.shape, 4))
        overlay[pred] = (*MASK_RGB["pred"], 0.45)
        ax.imshow(overlay)
    if mask is not None:
        ax.contour(mask.astype(float), levels=[0.5], colors=[MASK_RGB["gt"]], linewidths=1.2)
    if box is not None:
        x1, y1, x2, y2 = box
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.5))
    if points is not None and len(points):
        pts = np.asarray(points)
        ax.scatter(pts[:, 0], pts[:, 1], s=30, c="yellow", marker="*", edgecolors="black", linewidths=0.5)
    if title:
        ax.set_title(title, fontsize=8, wrap=True)
    ax.set_axis_off()


def sample_grid(samples, *, preds=None, boxes=None, points=None, titles=None, columns: int = 4):
    """A grid of samples (targets outlined), with optional predicted masks, boxes, points and titles."""
    rows = int(np.ceil(len(samples) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(samples):
            ax.set_axis_off()
            continue
        pick = lambda seq: None if seq is None else seq[k]  # noqa: E731
        show_sample(ax, samples[k].image, mask=samples[k].mask, pred=pick(preds), box=pick(boxes),
                    points=pick(points), title=pick(titles) or samples[k].query)
    fig.tight_layout()
    return fig


def qualitative_grid(samples, records, columns: int = 4):
    """Evaluation records (``evaluate_policy(..., return_records=True)``): query, reasoning, box, mask, IoU."""
    titles = [f"{r['query']}\n{_reasoning(r['completion'])}\nIoU {r['iou']:.2f}" for r in records]
    return sample_grid(samples, preds=[r["mask"] for r in records],
                       boxes=[r["box"] if r["valid"] else None for r in records],
                       points=[r["points"] if r["valid"] else None for r in records], titles=titles, columns=columns)


def _reasoning(completion: str, limit: int = 40) -> str:
    text = completion.split("</think>")[0].replace("<think>", "").strip()
    return (text[:limit] + "...") if len(text) > limit else text


def plot_curve(values, *, label: str = "", xlabel: str = "step", ylabel: str = "", smooth: int = 1, ax=None):
    """A (moving-average smoothed) curve; returns the figure."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(5, 3))
    values = np.asarray(values, dtype=float)
    if smooth > 1 and len(values) >= smooth:
        values = np.convolve(values, np.ones(smooth) / smooth, mode="valid")
    ax.plot(np.arange(len(values)), values, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if label:
        ax.legend()
    return fig


def plot_learning_curves(curves: dict, *, metric: str = "giou", reference: dict | None = None):
    """Test ``metric`` against steps and against wall time, one line per run (``curves``: label -> points)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for label, points in curves.items():
        for ax, x in zip(axes, ("step", "seconds")):
            ax.plot([p[x] for p in points], [p[metric] for p in points], marker="o", markersize=3, label=label)
    for ax, xlabel in zip(axes, ("RL step", "wall time (s, BTO included)")):
        for name, value in (reference or {}).items():
            ax.axhline(value, linestyle="--", linewidth=1, color="grey")
            ax.text(ax.get_xlim()[0], value, f" {name}", va="bottom", fontsize=7, color="grey")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


class LivePlot(TrainerCallback):
    """Redraws reward, mask IoU and tool loss at every log (in Jupyter; a final figure under papermill)."""

    KEYS = (("reward", "total reward"), ("rewards/mask/mean", "mask IoU reward"), ("tool/loss", "tool loss"))

    def __init__(self, live: bool | None = None):
        self.history = {key: [] for key, _ in self.KEYS}
        self.live = matplotlib.get_backend().lower().endswith("inline") if live is None else live
        self.figure = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, _ in self.KEYS:
            if logs and key in logs:
                self.history[key].append((state.global_step, float(logs[key])))
        if self.live:
            from IPython.display import clear_output, display
            clear_output(wait=True)
            display(self.draw())
            plt.close(self.figure)

    def draw(self):
        self.figure, axes = plt.subplots(1, 3, figsize=(12, 3))
        for ax, (key, title) in zip(axes, self.KEYS):
            if self.history[key]:
                steps, values = zip(*self.history[key])
                ax.plot(steps, values)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        self.figure.tight_layout()
        return self.figure


def rollout_group_figure(sample, group):
    """One sample's G rollouts side by side: box, points, the tool's mask, total reward and the thought."""
    fig, axes = plt.subplots(1, len(group), figsize=(2.3 * len(group), 3), squeeze=False)
    for ax, rollout in zip(axes[0], group):
        total = sum(rollout["rewards"].values())
        show_sample(ax, sample.image, mask=sample.mask, pred=rollout["mask"], box=rollout["box"],
                    points=rollout["points"], title=f"r={total:.2f} A={rollout['advantage']:+.2f}\n"
                                                    f"{_reasoning(rollout['completion'], 24)}")
    fig.suptitle(sample.query, fontsize=9)
    fig.tight_layout()
    return fig


def rollout_explorer(samples, groups):
    """ipywidgets browser: a slider over samples, showing the G rollouts of each with their rewards.

    ``groups[i]``: list of dicts with ``completion``, ``box``, ``points``, ``mask`` (or None), ``rewards``
    (term -> weighted value) and ``advantage`` for sample i, e.g. from ``evaluate.rollout_groups``. Each
    figure is rendered to a PNG shown in an ``Image`` widget (no ``Output`` capture: papermill-safe).
    """
    import io

    import ipywidgets as widgets
    from IPython.display import display

    def png(i: int) -> bytes:
        fig = rollout_group_figure(samples[i], groups[i])
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=70)
        plt.close(fig)
        return buffer.getvalue()

    slider = widgets.IntSlider(min=0, max=len(samples) - 1, description="sample")
    image = widgets.Image(value=png(0), format="png")
    slider.observe(lambda change: setattr(image, "value", png(change["new"])), names="value")
    box = widgets.VBox([slider, image])
    display(box)
    return box
