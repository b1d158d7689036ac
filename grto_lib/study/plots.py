"""Figures for the notebooks: samples with prompts and masks, the same samples answered by several policies, loss
and learning curves, a live training plot and an explorer of rollout groups (plain HTML). Every figure function
returns its matplotlib Figure.
"""
from __future__ import annotations

import base64
import io
import textwrap

import matplotlib

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
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


def on_target(samples, records) -> np.ndarray:
    """[N] bool: whether each evaluation record's box is on target (box IoU > 0.5 with the target's tight box, the
    box-accuracy criterion); an answer that does not parse never is."""
    boxes = [r["box"] if r["valid"] else np.zeros(4) for r in records]
    return box_on_target(boxes, [s.mask for s in samples]) & np.array([r["valid"] for r in records], dtype=bool)


def what_rl_changed(samples, before, after, shown: int = 4) -> dict:
    """Where two policies' boxes differ, as evaluation records on the same ``samples``: ``fixed``, the indices
    whose box is on target ``after`` but not ``before``, and ``broken``, the reverse, both in sample order;
    ``shown``, the samples a figure shows, by a fixed rule: the first ``shown // 2`` fixed and the first broken
    ones up to ``shown``, topped up with more fixed, then more broken, then unchanged samples, all in sample
    order (sorted)."""
    hit_before, hit_after = on_target(samples, before), on_target(samples, after)
    fixed = np.flatnonzero(hit_after & ~hit_before).tolist()
    broken = np.flatnonzero(hit_before & ~hit_after).tolist()
    picked = fixed[:shown // 2]
    picked += broken[:shown - len(picked)]
    for more in (fixed, broken, range(len(samples))):
        picked += [i for i in more if i not in picked][:shown - len(picked)]
    return {"fixed": fixed, "broken": broken, "shown": sorted(picked)}


def comparison_grid(samples, records: dict, indices, title=None):
    """The same samples (columns: ``indices`` into ``samples``) answered by several policies (rows: ``records``,
    name -> evaluation records on ``samples``): each panel shows the box, points and mask, and says whether the
    box is on target, the mask's IoU and the policy's reading; the top row also gives the query."""
    chosen = [samples[i] for i in indices]
    panels, titles = [], []
    for row, (name, model_records) in enumerate(records.items()):
        rows = [model_records[i] for i in indices]
        for sample, record, hit in zip(chosen, rows, on_target(chosen, rows)):
            status = "does not parse" if not record["valid"] else "on target" if hit else "off target"
            query = textwrap.fill(sample.query, 40) + "\n" if row == 0 else ""
            titles.append(f"{query}{name}: {status}, IoU {record['iou']:.2f}\n{_reasoning(record['completion'], 40)}")
            panels.append(record)
    return sample_grid(chosen * len(records), preds=[r["mask"] for r in panels],
                       boxes=[r["box"] if r["valid"] else None for r in panels],
                       points=[r["points"] if r["valid"] else None for r in panels], titles=titles,
                       columns=len(chosen), title=title)


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
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


class LivePlot(TrainerCallback):
    """Reward, mask IoU and tool loss, redrawn at every log in one figure of the notebook (when the backend is
    Jupyter's inline one), updated in place below TRL's progress bar, which stays visible; ``save`` writes it.
    ``frozen_tool``: the run trains no tool (GRPO), so its tool-loss panel says so instead of staying empty."""

    KEYS = (("reward", "total reward"), ("rewards/mask/mean", "mask IoU reward"), ("tool/loss", "tool loss"))

    def __init__(self, live: bool | None = None, frozen_tool: bool = False):
        self.history = {key: [] for key, _ in self.KEYS}
        self.live = matplotlib.get_backend().lower().endswith("inline") if live is None else live
        self.frozen_tool = frozen_tool
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
            ax.set_title(title)
            if key == "tool/loss" and self.frozen_tool:
                ax.text(0.5, 0.5, "no tool loss:\nthe tool is frozen under GRPO", ha="center", va="center",
                        transform=ax.transAxes, color="grey")
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            if self.history[key]:
                steps, values = zip(*self.history[key])
                ax.plot(steps, values, marker="o", markersize=3)
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
    whether the box is on target (box IoU > 0.5: the rollouts the tool trains on, ``on_target``) or the answer
    does not parse, and the policy's reading, whole."""
    titles = [f"r = {sum(r['rewards'].values()):.2f}   A = {r['advantage']:+.2f}   "
              f"{'does not parse' if not r['valid'] else 'on target' if hit else 'off target'}\n"
              + textwrap.fill("  ".join(f"{k} {v:.2f}" for k, v in r["rewards"].items()), 34) + "\n"
              + _reasoning(r["completion"], 34) for r, hit in zip(group, on_target([sample] * len(group), group))]
    return sample_grid([sample] * len(group), preds=[r["mask"] for r in group], boxes=[r["box"] for r in group],
                       points=[r["points"] for r in group], columns=columns, titles=titles, panel=(2.4, 3.6),
                       title=f"{sample.query}: {len(group)} rollouts (weighted reward terms, total r, advantage A)")


def rollout_explorer(samples, groups, dpi: int = 100):
    """A browser of rollout groups: one collapsible section per sample (the first open, the others a click away),
    titled with the query and how many rollouts are on target, holding the figure of its G rollouts
    (``rollout_group_figure``) as an embedded PNG. Plain HTML, no widget and no script: a saved notebook shows it
    as it ran, with or without a kernel, trusted or not.

    ``groups[i]``: the rollouts of ``samples[i]``, dicts with ``completion``, ``valid``, ``box``, ``points``,
    ``mask`` (or None), ``rewards`` (term -> weighted value) and ``advantage``, as ``evaluate.rollout_groups``
    makes them. Returns an ``IPython.display.HTML`` (a cell shows it).
    """
    from html import escape

    from IPython.display import HTML

    sections = []
    for k, (sample, group) in enumerate(zip(samples, groups)):
        fig = rollout_group_figure(sample, group)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        plt.close(fig)
        summary = (f"{escape(sample.id)}, {escape(sample.query)}: {on_target([sample] * len(group), group).sum()} "
                   f"of {len(group)} rollouts on target")
        sections.append(f"<details{' open' if k == 0 else ''}><summary>{summary}</summary>"
                        f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}' "
                        f"style='max-width: 100%'></details>")
    return HTML("".join(sections))
