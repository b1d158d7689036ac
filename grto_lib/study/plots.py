"""Figures and widgets for the notebooks: samples with prompts and masks, loss and learning curves, a live
training plot and an explorer of rollout groups. Every figure function returns its matplotlib Figure.
"""
from __future__ import annotations

import base64
import io
import textwrap

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
from transformers import TrainerCallback

from grto_lib.geometry import box_on_target

PRED_RGB = (1.0, 0.0, 0.85)
"""The tool's mask: magenta, a colour none of the synthetic scenes uses."""
BOX_RGB = (0.2, 1.0, 0.2)
"""The policy's box: lime."""


def show_sample(ax, image, *, mask=None, pred=None, box=None, points=None, title=None):
    """One image with, optionally, the target's outline (white on black), the tool's mask (magenta), the
    policy's box (lime) and points (white stars)."""
    ax.imshow(image)
    if pred is not None and pred.any():
        overlay = np.zeros((*pred.shape, 4))
        overlay[pred] = (*PRED_RGB, 0.35)
        ax.imshow(overlay)
        ax.contour(pred.astype(float), levels=[0.5], colors=[PRED_RGB], linewidths=1.2)
    # outlines are drawn twice, a black line under a light one, to show on light and dark scenes alike
    if mask is not None and mask.any():
        for colour, width, style in (("black", 2.6, "solid"), ("white", 1.0, "dashed")):
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=width, linestyles=style)
    if box is not None:
        x1, y1, x2, y2 = box
        for colour, width in (("black", 3.0), (BOX_RGB, 1.4)):
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=width))
    if points is not None and len(points):
        pts = np.asarray(points)
        ax.scatter(pts[:, 0], pts[:, 1], s=60, c="white", marker="*", edgecolors="black", linewidths=0.8, zorder=3)
    if title:
        ax.set_title(title, fontsize=9)
    h, w = np.asarray(image).shape[:2]
    ax.set_xlim(-0.5, w - 0.5)  # a box drawn past the border does not resize the panel
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()


def _legend(fig, *, pred: bool, box: bool, points: bool) -> None:
    """What the marks drawn mean, below the panels."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color="black", linewidth=2.6, linestyle="dashed", label="target (white dashed outline)")]
    if pred:
        handles.append(Patch(facecolor=(*PRED_RGB, 0.35), edgecolor=PRED_RGB, label="the tool's mask"))
    if box:
        handles.append(Line2D([], [], color=BOX_RGB, linewidth=2, label="the policy's box"))
    if points:
        handles.append(Line2D([], [], color="white", marker="*", markersize=11, markeredgecolor="black",
                              linestyle="none", label="the policy's points"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)


def sample_grid(samples, *, preds=None, boxes=None, points=None, titles=None, columns: int = 4, title=None,
                panel=(3.2, 3.9)):
    """A grid of samples (targets outlined), with optional predicted masks, boxes, points, panel titles, a
    figure title and a legend; ``panel``: each panel's (width, height) in inches, its title included."""
    rows = int(np.ceil(len(samples) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(panel[0] * columns, panel[1] * rows + 0.6), squeeze=False,
                             layout="constrained")
    for k, ax in enumerate(axes.flat):
        if k >= len(samples):
            ax.set_axis_off()
            continue
        pick = lambda seq: None if seq is None else seq[k]  # noqa: E731
        show_sample(ax, samples[k].image, mask=samples[k].mask, pred=pick(preds), box=pick(boxes),
                    points=pick(points), title=pick(titles) or samples[k].query)
    if title:
        fig.suptitle(title, fontsize=11)
    _legend(fig, pred=preds is not None, box=boxes is not None, points=points is not None)
    return fig


def qualitative_grid(samples, records, columns: int = 4, title=None):
    """Evaluation records (``evaluate_policy(..., return_records=True)``): query, reasoning, box, mask, IoU."""
    titles = [f"{r['query']}\n{_reasoning(r['completion'], 40)}\nIoU {r['iou']:.2f}" for r in records]
    return sample_grid(samples, preds=[r["mask"] for r in records],
                       boxes=[r["box"] if r["valid"] else None for r in records],
                       points=[r["points"] if r["valid"] else None for r in records], titles=titles, columns=columns,
                       title=title)


def _reasoning(completion: str, width: int) -> str:
    """The end of the thought, where the stand-in reads the query and picks (``... means X = pick``), whole,
    wrapped to lines of at most ``width`` characters."""
    text = completion.split("</think>")[0].replace("<think>", "").strip().split(" means ")[-1]
    return textwrap.fill(text, width, break_long_words=False)


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
            ax.text(ax.get_xlim()[0], value, f" {name}", va="bottom", fontsize=9, color="grey")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


class LivePlot(TrainerCallback):
    """Reward, mask IoU and tool loss, redrawn at every log in one figure of the notebook (when the backend is
    Jupyter's inline one), updated in place below TRL's progress bar, which stays visible; ``save`` writes it."""

    KEYS = (("reward", "total reward"), ("rewards/mask/mean", "mask IoU reward"), ("tool/loss", "tool loss"))

    def __init__(self, live: bool | None = None):
        self.history = {key: [] for key, _ in self.KEYS}
        self.live = matplotlib.get_backend().lower().endswith("inline") if live is None else live
        self._display = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, _ in self.KEYS:
            if logs and key in logs:
                self.history[key].append((state.global_step, float(logs[key])))
        if self.live:
            from IPython.display import display
            figure = self.draw()
            if self._display is None:
                self._display = display(figure, display_id=True)
            else:
                self._display.update(figure)
            plt.close(figure)  # shown once, in place; not again when the cell ends

    def draw(self):
        """The figure of the curves so far (the caller closes it)."""
        figure, axes = plt.subplots(1, 3, figsize=(12, 3))
        for ax, (key, title) in zip(axes, self.KEYS):
            if self.history[key]:
                steps, values = zip(*self.history[key])
                ax.plot(steps, values, marker="o", markersize=3)
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        figure.tight_layout()
        return figure

    def save(self, path, dpi: int = 80) -> None:
        """Write the figure to ``path`` without showing it again."""
        figure = self.draw()
        figure.savefig(path, dpi=dpi)
        plt.close(figure)


def rollout_group_figure(sample, group, columns: int = 4):
    """One test prompt's G sampled rollouts, scored as training scores them: each panel shows the box, points and
    the tool's mask, the reward terms (weighted by ``RewardWeights``), their total r, the group advantage A,
    whether the box is on target (box IoU > 0.5: the rollouts the tool trains on, ``on_target``) and the
    policy's reading, whole."""
    boxes = [np.zeros(4) if r["box"] is None else r["box"] for r in group]
    on_target = box_on_target(boxes, [sample.mask] * len(group))
    titles = [f"r = {sum(r['rewards'].values()):.2f}   A = {r['advantage']:+.2f}   "
              f"{'invalid' if not r['valid'] else 'on target' if hit else 'off target'}\n"
              + textwrap.fill("  ".join(f"{k} {v:.2f}" for k, v in r["rewards"].items()), 34) + "\n"
              + _reasoning(r["completion"], 34) for r, hit in zip(group, on_target)]
    return sample_grid([sample] * len(group), preds=[r["mask"] for r in group], boxes=[r["box"] for r in group],
                       points=[r["points"] for r in group], columns=columns, titles=titles, panel=(2.4, 3.6),
                       title=f"{sample.query}: {len(group)} rollouts (weighted reward terms, total r, advantage A)")


def rollout_explorer(samples, groups, dpi: int = 100):
    """ipywidgets browser of rollout groups: a slider over the samples, the figure of each one's G rollouts
    (``rollout_group_figure``) in an ``Image`` widget (no ``Output`` capture: papermill-safe).

    ``groups[i]``: the rollouts of ``samples[i]``, dicts with ``completion``, ``valid``, ``box``, ``points``,
    ``mask`` (or None), ``rewards`` (term -> weighted value) and ``advantage``, as ``evaluate.rollout_groups``
    makes them. The slider redraws only while the notebook's kernel runs; the output also carries the first
    figure as a plain PNG, which a notebook viewer without the widget (or an untrusted notebook) shows instead.
    """
    import ipywidgets as widgets
    from IPython.display import display

    def png(i: int) -> bytes:
        fig = rollout_group_figure(samples[i], groups[i])
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        plt.close(fig)
        return buffer.getvalue()

    first = png(0)
    slider = widgets.IntSlider(min=0, max=len(samples) - 1, description="sample")
    image = widgets.Image(value=first, format="png")
    slider.observe(lambda change: setattr(image, "value", png(change["new"])), names="value")
    box = widgets.VBox([slider, image])
    display({**box._repr_mimebundle_(), "image/png": base64.b64encode(first).decode()}, raw=True)
    return box
