"""BTO, the bootstrap of B-GRTO: train the tool off-policy on rollouts of the reference policy.

At the start of GRTO the policy *is* the reference policy, so the tool update GRTO would make on its first
rollouts is ``grad_phi E_{o ~ pi_ref}[L_tool(D_phi(I, p(o)), y)]``. BTO makes that update early and many times:

1. ``build_bto_buffer``: sample ``G`` completions per prompt from pi_ref once (inference only), parse them to
   tool prompts and store them on disk;
2. ``bootstrap_tool``: minimise ``E_B[L_tool]`` over the buffer for K steps. No policy backward, and each
   image is encoded once for the whole bootstrap.

Buffer format (one folder): ``meta.json`` (what produced it) and ``rollouts.jsonl``, one line per rollout::

    {"sample_index": 17, "sample_id": "reasonseg/train/00017", "completion": "<think>...</think><answer>...",
     "valid": true, "bbox": [x1, y1, x2, y2], "points": [[x, y], [x, y]]}

``bbox`` and ``points`` are in image pixels (already mapped from the policy's view); invalid rollouts keep
their text with ``valid: false`` and are skipped by the bootstrap. Later runs reuse a buffer whose
``meta.json`` matches their request.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from . import losses
from .files import write_json, write_text
from .generation import MAX_NEW_TOKENS, generate_completions
from .geometry import box_on_target
from .scorer import RolloutScorer
from .tool import trainable_parameters

META_FILE, ROLLOUTS_FILE = "meta.json", "rollouts.jsonl"


def build_bto_buffer(policy, processor, tool, dataset, folder, *, n_prompts: int, generations: int,
                     policy_image_size: int, temperature: float = 1.0, max_new_tokens: int = MAX_NEW_TOKENS,
                     seed: int = 0, meta: dict | None = None) -> list[dict]:
    """Sample ``generations`` rollouts for ``n_prompts`` random training prompts and write the buffer folder."""
    rng = np.random.default_rng(seed)
    indices = sorted(rng.choice(len(dataset), size=min(n_prompts, len(dataset)), replace=False).tolist())
    torch.manual_seed(seed)
    texts = generate_completions(policy, processor, [dataset[i] for i in indices], policy_image_size, n=generations,
                                 do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens,
                                 batch_size=64)
    flat_index = [i for i, group in zip(indices, texts) for _ in group]
    flat_text = [t for group in texts for t in group]
    _, boxes, points, valid = RolloutScorer(dataset, tool, policy_image_size).parse(flat_text, flat_index)
    records = [
        {"sample_index": int(i), "sample_id": dataset[i].id, "completion": text, "valid": bool(v),
         "bbox": box.round(2).tolist(), "points": pts.round(2).tolist()}
        for i, text, v, box, pts in zip(flat_index, flat_text, valid, boxes, points)
    ]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header = dict(meta or {}, n_prompts=len(indices), generations=generations, temperature=temperature, seed=seed,
                  n_rollouts=len(records), valid_rate=float(valid.mean()) if len(valid) else 0.0)
    write_text(folder / ROLLOUTS_FILE, "".join(json.dumps(r) + "\n" for r in records))
    write_json(folder / META_FILE, header)  # written last: marks the buffer complete
    return records


def load_bto_buffer(folder, expect_meta: dict | None = None) -> list[dict] | None:
    """The buffer's records, or None when the folder holds no complete buffer or one made for another request."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file() or not (folder / ROLLOUTS_FILE).is_file():
        return None
    meta = json.loads((folder / META_FILE).read_text())
    if expect_meta and any(meta.get(k) != v for k, v in expect_meta.items()):
        return None
    records = []
    for line_no, line in enumerate((folder / ROLLOUTS_FILE).read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{folder / ROLLOUTS_FILE}:{line_no}: not a JSON record ({error})") from None
    return records


def bootstrap_tool(tool, dataset, records: list[dict], *, steps: int, lr: float = 1e-3, batch_size: int = 64,
                   loss_kind: str = "bce_dice", seed: int = 0, weighting: str = "uniform") -> dict:
    """Minimise the mean tool loss over the buffer rollouts that ``losses.tool_loss_weights`` selects with
    ``weighting`` (uniform: every valid one; on_target: those whose box matches the target's), for ``steps`` Adam
    steps of ``batch_size`` rollouts drawn uniformly. The reference policy's rollouts carry no advantages, so the
    advantage-based schemes do not apply here (``TrainConfig.bto_weighting`` maps them to uniform).

    Returns ``{"losses": [per-step loss], "seconds": wall time, "valid_rollouts": n}``.
    """
    start = time.perf_counter()
    if weighting not in ("uniform", "on_target"):
        raise ValueError(f"weighting must be 'uniform' or 'on_target' (BTO has no advantages), got {weighting!r}")
    usable = [r for r in records if r["valid"]]
    by_index = {i: dataset[i] for i in sorted({r["sample_index"] for r in usable})}
    on_target = box_on_target([r["bbox"] for r in usable], [by_index[r["sample_index"]].mask for r in usable])
    n = len(usable)
    selected = losses.tool_loss_weights(torch.zeros(n), torch.ones(n, dtype=torch.bool), weighting,
                                        torch.as_tensor(on_target, dtype=torch.bool)) > 0
    usable = [r for r, keep in zip(usable, selected.tolist()) if keep]
    if not usable:
        raise ValueError("the BTO buffer has no valid rollout: the reference policy never produced a parseable "
                         "answer" + (" whose box matches the target (tool_weighting='on_target')"
                                     if weighting == "on_target" else "")
                         + ", so there is nothing to bootstrap the tool on")
    distinct = sorted({r["sample_index"] for r in usable})
    row_of = {index: row for row, index in enumerate(distinct)}
    samples = [by_index[i] for i in distinct]
    device = next(tool.parameters()).device
    with torch.no_grad():
        embeddings = torch.cat([tool.embed([s.image for s in samples[i:i + 64]]) for i in range(0, len(samples), 64)])
    image_hw = [s.mask.shape for s in samples]
    image_index = torch.tensor([row_of[r["sample_index"]] for r in usable], device=device)
    boxes = torch.tensor([r["bbox"] for r in usable], dtype=torch.float32, device=device)
    points = torch.tensor([r["points"] for r in usable], dtype=torch.float32, device=device)

    parameters = trainable_parameters(tool)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for step in range(steps):
        batch = torch.randint(len(usable), (min(batch_size, len(usable)),), generator=generator).to(device)
        rows = image_index[batch]
        logits = tool.decode(embeddings, rows, boxes[batch], points[batch], image_hw)
        per = losses.rollout_tool_losses(logits, [samples[r] for r in rows.tolist()], kind=loss_kind)
        loss = per.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        history.append(loss.item())
    return {"losses": history, "seconds": time.perf_counter() - start, "valid_rollouts": len(usable)}
