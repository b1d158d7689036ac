"""BTO, the bootstrap of B-GRTO: train the tool off-policy on rollouts of the reference policy.

At the start of GRTO the policy *is* the reference policy, so the tool update GRTO would make on its first
rollouts is ``grad_phi E_{o ~ pi_ref}[L_tool(D_phi(I, p(o)), y)]``. BTO makes that update early and many times:

1. ``build_bto_buffer``: sample ``G`` completions per prompt from pi_ref once (inference only), parse them to
   tool prompts and store them on disk;
2. ``bootstrap_tool``: minimise ``E_B[L_tool]`` over the buffer for K steps. No policy backward, and each
   image is encoded once for the whole bootstrap.

Buffer format (one folder): ``meta.json`` (what produced it, its ``fingerprint``, and counts) and
``rollouts.jsonl``, one line per rollout::

    {"sample_index": 17, "sample_id": "reasonseg/train/00017", "completion": "<think>...</think><answer>...",
     "valid": true, "bbox": [x1, y1, x2, y2], "points": [[x, y], [x, y]]}

``bbox`` and ``points`` are in image pixels (already mapped from the policy's view); invalid rollouts keep
their text with ``valid: false`` and are skipped by the bootstrap. ``bto_buffer`` reuses a folder's buffer only
when its fingerprint, everything that determines the rollouts (``buffer_fingerprint``: the policy's weights,
prompt and view size, the data, the sampling settings), equals the request's; otherwise it says what differs and
builds it again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import losses
from .files import write_json, write_text
from .generation import generate_completions, max_new_tokens_for, progress_bar
from .geometry import box_on_target
from .prompts import system_prompt_for
from .scorer import DEFAULT_ON_TARGET_IOU, RolloutScorer
from .tool import trainable_parameters

META_FILE, ROLLOUTS_FILE = "meta.json", "rollouts.jsonl"
logger = logging.getLogger(__name__)


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``module`` (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def buffer_fingerprint(policy, processor, dataset, *, n_prompts: int, generations: int, policy_image_size: int,
                       temperature: float = 1.0, max_new_tokens: int | None = None, seed: int = 0) -> dict:
    """Everything that determines a buffer's rollouts: the policy (its weights' SHA-256, its system prompt and the
    size of its view), the data (the dataset's description: its name, split, size, seed or folder) and the
    sampling (prompts, rollouts per prompt, temperature, completion limit, seed)."""
    max_new_tokens = max_new_tokens or max_new_tokens_for(processor)
    return {"policy_weights": weights_sha256(policy), "system_prompt": system_prompt_for(processor),
            "policy_image_size": policy_image_size, "data": repr(dataset),
            "n_prompts": min(n_prompts, len(dataset)), "generations": generations, "temperature": temperature,
            "max_new_tokens": max_new_tokens, "seed": seed}


def build_bto_buffer(policy, processor, tool, dataset, folder, *, n_prompts: int, generations: int,
                     policy_image_size: int, temperature: float = 1.0, max_new_tokens: int | None = None,
                     seed: int = 0, fingerprint: dict | None = None) -> list[dict]:
    """Sample ``generations`` rollouts for ``n_prompts`` random training prompts and write the buffer folder
    (``fingerprint``: ``buffer_fingerprint`` of these arguments, computed when not given)."""
    sampling = dict(n_prompts=n_prompts, generations=generations, policy_image_size=policy_image_size,
                    temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    fingerprint = fingerprint or buffer_fingerprint(policy, processor, dataset, **sampling)
    rng = np.random.default_rng(seed)
    indices = sorted(rng.choice(len(dataset), size=min(n_prompts, len(dataset)), replace=False).tolist())
    torch.manual_seed(seed)
    samples = [dataset[i] for i in indices]
    texts = generate_completions(policy, processor, samples, policy_image_size, n=generations, do_sample=True,
                                 temperature=temperature, max_new_tokens=max_new_tokens, batch_size=64,
                                 progress="BTO: reference rollouts")
    flat_text = [t for group in texts for t in group]
    flat_samples = [s for s, group in zip(samples, texts) for _ in group]
    flat_index = [i for i, group in zip(indices, texts) for _ in group]
    _, boxes, points, valid = RolloutScorer(dataset, tool, policy_image_size).parse(flat_text, flat_samples)
    records = [
        {"sample_index": int(i), "sample_id": sample.id, "completion": text, "valid": bool(v),
         "bbox": box.round(2).tolist(), "points": pts.round(2).tolist()}
        for i, sample, text, v, box, pts in zip(flat_index, flat_samples, flat_text, valid, boxes, points)
    ]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"fingerprint": fingerprint, "n_rollouts": len(records),
            "valid_rate": float(valid.mean()) if len(valid) else 0.0}
    write_text(folder / ROLLOUTS_FILE, "".join(json.dumps(r) + "\n" for r in records))
    write_json(folder / META_FILE, meta)  # written last: marks the buffer complete
    return records


def load_bto_buffer(folder, fingerprint: dict | None = None) -> list[dict] | None:
    """The buffer's records; None when the folder holds no complete buffer, or (with ``fingerprint``) one whose
    fingerprint differs: then a warning names every field that differs."""
    folder = Path(folder)
    if not (folder / META_FILE).is_file() or not (folder / ROLLOUTS_FILE).is_file():
        return None
    saved = json.loads((folder / META_FILE).read_text()).get("fingerprint", {})
    if fingerprint is not None and saved != fingerprint:
        differ = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
        shown = {k: ("(another policy)" if k == "policy_weights" else v) for k, v in differ.items()}
        logger.warning("the BTO buffer in %s was made by another request (saved, requested: %s): building it again",
                       folder, shown)
        return None
    records = []
    for line_no, line in enumerate((folder / ROLLOUTS_FILE).read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{folder / ROLLOUTS_FILE}:{line_no}: not a JSON record ({error})") from None
    return records


def bto_buffer(policy, processor, tool, dataset, folder, **sampling) -> tuple[list[dict], bool]:
    """``(records, reused)``: the buffer in ``folder`` if its fingerprint matches this request (``sampling``: the
    keyword arguments of ``build_bto_buffer``), else a new one built there."""
    fingerprint = buffer_fingerprint(policy, processor, dataset, **sampling)
    records = load_bto_buffer(folder, fingerprint)
    if records is not None:
        return records, True
    return build_bto_buffer(policy, processor, tool, dataset, folder, fingerprint=fingerprint, **sampling), False


def _embeddings_on(storage, tool, images) -> torch.Tensor:
    """The tool's embeddings of ``images``, encoded ``tool.encoder_batch`` at a time and kept on ``storage`` (the
    CPU when the tool is on a GPU: 1,024 SAM ViT-H embeddings are 4 GiB)."""
    step = tool.encoder_batch
    with torch.no_grad():
        return torch.cat([tool.embed(images[i:i + step]).to(storage) for i in range(0, len(images), step)])


def bootstrap_tool(tool, dataset, records: list[dict], *, steps: int, lr: float = 1e-3, batch_size: int = 64,
                   loss_kind: str = "bce_dice", seed: int = 0, weighting: str = losses.DEFAULT_TOOL_WEIGHTING,
                   max_grad_norm: float = 1.0, on_target_iou: float = DEFAULT_ON_TARGET_IOU) -> dict:
    """Minimise the mean tool loss over the buffer rollouts that ``losses.tool_loss_selection`` selects with
    ``weighting`` (uniform: every valid one; on_target: those whose box matches the target's, box IoU >
    ``on_target_iou``), for ``steps`` Adam steps of ``batch_size`` rollouts drawn uniformly, gradients clipped to
    ``max_grad_norm``. The reference policy's rollouts carry no advantages, so the advantage-based schemes do not
    apply here (``TrainConfig.bto_weighting`` maps them to uniform). Each image is encoded once, before the first
    step; the embeddings wait on the CPU when the tool is on a GPU, and each step moves only its batch's images there.

    Returns ``{"losses": [per-step loss], "seconds": wall time, "trained_rollouts": n}``, n being the buffer
    rollouts that ``weighting`` selects.
    """
    start = time.perf_counter()
    if weighting not in ("uniform", "on_target"):
        raise ValueError(f"weighting must be 'uniform' or 'on_target' (BTO has no advantages), got {weighting!r}")
    usable = [r for r in records if r["valid"]]
    by_index = {i: dataset[i] for i in sorted({r["sample_index"] for r in usable})}
    on_target = box_on_target([r["bbox"] for r in usable], [by_index[r["sample_index"]].mask for r in usable],
                              on_target_iou)
    n = len(usable)
    selected = losses.tool_loss_selection(torch.zeros(n), torch.ones(n, dtype=torch.bool), weighting,
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
    embeddings = _embeddings_on(torch.device("cpu"), tool, [s.image for s in samples])
    image_index = torch.tensor([row_of[r["sample_index"]] for r in usable])
    boxes = torch.tensor([r["bbox"] for r in usable], dtype=torch.float32)
    points = torch.tensor([r["points"] for r in usable], dtype=torch.float32)

    parameters = trainable_parameters(tool)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for _ in progress_bar(range(steps), "BTO: tool updates"):
        batch = torch.randint(len(usable), (min(batch_size, len(usable)),), generator=generator)
        images, rows = torch.unique(image_index[batch], return_inverse=True)  # this batch's images, and each row's
        logits = tool.decode(embeddings[images].to(device), rows.to(device), boxes[batch].to(device),
                             points[batch].to(device), [samples[i].mask.shape for i in images.tolist()])
        per = losses.rollout_tool_losses(logits, [samples[i] for i in image_index[batch].tolist()], kind=loss_kind)
        loss = per.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm or math.inf)  # 0: no clipping
        optimizer.step()
        history.append(loss.item())
    return {"losses": history, "seconds": time.perf_counter() - start, "trained_rollouts": len(usable)}
