"""The tool: a Segment Anything model that turns the policy's box and points into a mask, differentiably.

The model is ``segment_anything``'s own ``Sam`` (image encoder, prompt encoder, mask decoder). The paper presets
``vit_b`` / ``vit_l`` / ``vit_h`` are the exact architectures of ``segment_anything.sam_model_registry``;
``tiny`` is the same classes with small sizes (see ``ToolConfig``), the CPU default of the tutorial.

One rollout batch goes through the tool in two steps::

    emb = tool.embed(images)                                   # image encoder, once per distinct image
    logits = tool.decode(emb, image_index, boxes, points, image_hw)   # prompt encoder + mask decoder, once

``decode`` runs the mask decoder **once over all N rollouts**, each rollout reading the embedding of its
image (``emb[image_index[i]]``), and returns mask logits at each image's original resolution. It is
differentiable with respect to the mask decoder (GRTO's tool loss backpropagates through it). ``Sam.forward``
and ``SamPredictor`` are not used: they run under ``torch.no_grad`` and loop over images.

Coordinates are pixels of the original image, ``x`` to the right and ``y`` down, boxes ``[x1, y1, x2, y2]``.
They are mapped to the encoder's input frame exactly as SAM's ``ResizeLongestSide`` does (scale the longest
side to ``image_size``, pad bottom/right), so a box means the same object whatever the image size.

Make-or-break detail: the prompt encoder's random Fourier matrix (``pe_layer.positional_encoding_gaussian_matrix``,
a buffer, never a parameter) must be N(0, 1) as in SAM; with a much larger scale, box prompts cannot be
localised. It is never trained here.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from .files import atomic_write, write_text

PRESETS = ("tiny", "vit_b", "vit_l", "vit_h")
TRAINABLE = ("decoder", "decoder+prompt", "all")
WEIGHTS_FILE = "tool.safetensors"
CONFIG_FILE = "tool_config.json"
FOURIER_MATRIX = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
ENCODER_BATCH = {"tiny": 8, "vit_b": 2, "vit_l": 2, "vit_h": 2}
"""Images per image-encoder forward in ``SegmentationTool.embed``, by preset. SAM's global-attention blocks hold a
1024 px image's 4,096 x 4,096 attention matrices: ViT-H peaked 25.9 GiB above what was resident for a batch of 8
images on an H200 (about 3.2 GiB an image; 32 at once ran out of memory on an 80 GB H100), while 2 images encode
at 0.17 s each against 0.19 s for one (docs/benchmarks.md). The tiny tool's batch is small either way."""
# The image encoders of segment_anything's build_sam_vit_{b,l,h}: (embed dim, depth, heads, global-attention blocks).
_VIT_ENCODERS = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
# The rest of SAM's architecture, shared by the three ViT presets (segment_anything.build_sam._build_sam).
_SAM_SIZES = dict(
    image_size=1024, patch_size=16, prompt_embed_dim=256, decoder_depth=2, decoder_mlp_dim=2048,
    decoder_num_heads=8, mask_in_chans=16,
)
_ARCHITECTURE_FIELDS = (
    "preset", "image_size", "patch_size", "encoder_embed_dim", "encoder_depth", "encoder_num_heads",
    "prompt_embed_dim", "decoder_depth", "decoder_mlp_dim", "decoder_num_heads", "mask_in_chans",
)


@dataclass
class ToolConfig:
    """How to build the tool. The size fields describe ``tiny`` only; the ``vit_*`` presets use SAM's sizes."""

    preset: str = "tiny"
    """Architecture: "tiny" (segment_anything's classes with the small sizes below), or SAM's "vit_b", "vit_l",
    "vit_h" (exactly ``sam_model_registry``'s architectures, 93.7M / 312M / 636M parameters)."""
    checkpoint: str | None = None
    """Weights to load: a SAM checkpoint file (``sam_vit_b_01ec64.pth``, loaded with ``weights_only=True``), a
    ``.safetensors`` file, or a folder written by ``save_tool``. None: random initialisation."""
    trainable: str = "decoder"
    """Which parts receive gradients: "decoder" (the mask decoder, GRTO's default), "decoder+prompt" (also the
    prompt encoder's learned embeddings), "all" (also the image encoder; used to pretrain the tiny stand-in).
    The prompt encoder's Fourier matrix is a buffer and is never trained."""
    image_size: int | None = None
    """Side of the square the image encoder reads (longest side resized to it, then padded). None: the preset's
    own (tiny 128, the synthetic images' size: at 64 the 4x-upsampled masks cap gIoU near 0.88 on shapes and
    0.77 on earthreason; SAM 1024, the only size its checkpoints work at)."""
    patch_size: int = 8
    """Tiny: ViT patch side in pixels; the image embedding is ``image_size / patch_size`` on a side (SAM: 16)."""
    encoder_embed_dim: int = 64
    """Tiny: ViT width (SAM vit_b: 768)."""
    encoder_depth: int = 2
    """Tiny: ViT blocks, all with global attention (SAM vit_b: 12, windowed except four)."""
    encoder_num_heads: int = 2
    """Tiny: ViT attention heads (SAM vit_b: 12)."""
    prompt_embed_dim: int = 32
    """Tiny: channels of the image embedding, the prompt tokens and the mask decoder; a multiple of 8 (SAM: 256)."""
    decoder_depth: int = 2
    """Tiny: two-way transformer blocks of the mask decoder (SAM: 2)."""
    decoder_mlp_dim: int = 128
    """Tiny: hidden width of the mask decoder's MLPs (SAM: 2048)."""
    decoder_num_heads: int = 2
    """Tiny: mask decoder attention heads; must divide prompt_embed_dim / 2 (SAM: 8)."""
    mask_in_chans: int = 4
    """Tiny: hidden channels of the (unused here) mask-prompt encoder; a multiple of 4 (SAM: 16)."""

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"ToolConfig.preset={self.preset!r}: allowed values are {PRESETS}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"ToolConfig.trainable={self.trainable!r}: allowed values are {TRAINABLE}")
        if self.preset != "tiny":
            if self.image_size not in (None, _SAM_SIZES["image_size"]):
                raise ValueError(
                    f"ToolConfig.image_size={self.image_size} with preset {self.preset!r}: SAM's architecture "
                    f"(and its checkpoints) work at image_size 1024 only"
                )
            return
        size = self.resolved_image_size()
        if size % self.patch_size or size < self.patch_size:
            raise ValueError(
                f"ToolConfig.image_size={size} must be a positive multiple of patch_size={self.patch_size}")
        if self.prompt_embed_dim % 8:
            raise ValueError(f"ToolConfig.prompt_embed_dim={self.prompt_embed_dim} must be a multiple of 8")
        if (self.prompt_embed_dim // 2) % self.decoder_num_heads:
            raise ValueError(
                f"ToolConfig.decoder_num_heads={self.decoder_num_heads} must divide prompt_embed_dim / 2 = "
                f"{self.prompt_embed_dim // 2}"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError(
                f"ToolConfig.encoder_num_heads={self.encoder_num_heads} must divide "
                f"encoder_embed_dim={self.encoder_embed_dim}"
            )
        if self.mask_in_chans % 4:
            raise ValueError(f"ToolConfig.mask_in_chans={self.mask_in_chans} must be a multiple of 4")

    def resolved_image_size(self) -> int:
        """The encoder's input side: ``image_size``, or the preset's default when it is None."""
        if self.image_size is not None:
            return self.image_size
        return 128 if self.preset == "tiny" else _SAM_SIZES["image_size"]

    def architecture(self) -> dict:
        """Every size the weights depend on, with the preset's fixed values filled in (comparable across files)."""
        if self.preset == "tiny":
            sizes = {name: getattr(self, name) for name in _ARCHITECTURE_FIELDS}
        else:
            dim, depth, heads, _ = _VIT_ENCODERS[self.preset]
            sizes = dict(_SAM_SIZES, preset=self.preset, encoder_embed_dim=dim, encoder_depth=depth,
                         encoder_num_heads=heads)
        sizes["image_size"] = self.resolved_image_size()
        return sizes


def build_sam(config: ToolConfig) -> Sam:
    """A randomly initialised ``Sam`` of ``config``'s architecture (the ``sam_model_registry`` builders' code path)."""
    a = config.architecture()
    if config.preset == "tiny":
        window_size, global_attn = 0, tuple(range(a["encoder_depth"]))  # tiny grids: global attention everywhere
    else:
        window_size, global_attn = 14, _VIT_ENCODERS[config.preset][3]
    grid = a["image_size"] // a["patch_size"]
    dim = a["prompt_embed_dim"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=a["encoder_depth"], embed_dim=a["encoder_embed_dim"], img_size=a["image_size"], mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=a["encoder_num_heads"],
            patch_size=a["patch_size"], qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn,
            window_size=window_size, out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(a["image_size"], a["image_size"]),
            mask_in_chans=a["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=a["decoder_depth"], embedding_dim=dim, mlp_dim=a["decoder_mlp_dim"],
                num_heads=a["decoder_num_heads"],
            ),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a PyTorch checkpoint, loaded without unpickling code."""
    if not path.is_file():
        raise FileNotFoundError(f"tool checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"tool checkpoint {path} cannot be read as tensors with weights_only=True: {error}") from error
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"tool checkpoint {path} holds a {type(state).__name__}, expected a state dict")
    return state


def _load_weights(sam: Sam, path: Path, config: ToolConfig) -> None:
    """Load ``path`` into ``sam`` strictly; a clear error names missing, unexpected and mis-shaped keys."""
    state = _read_state_dict(path)
    own = sam.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def head(items):
            return ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
        raise ValueError(
            f"tool checkpoint {path} does not fit preset {config.preset!r} {config.architecture()}: "
            f"{len(missing)} missing keys [{head(missing)}]; {len(unexpected)} unexpected keys [{head(unexpected)}]; "
            f"{len(shapes)} shape mismatches [{head(shapes)}]"
        )
    sam.load_state_dict(state, strict=True)
    std = float(sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.std())
    if not 0.5 < std < 2.0:
        warnings.warn(f"{path}: the prompt encoder's Fourier matrix has std {std:.2f}; SAM's is N(0, 1) and box "
                      "prompts are hard to localise at other scales")


class SegmentationTool(nn.Module):
    """A ``Sam`` with a batched, differentiable prompt-to-mask path. ``forward`` is ``decode``."""

    def __init__(self, config: ToolConfig, sam: Sam):
        super().__init__()
        self.config = config
        self.sam = sam
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self.set_trainable(config.trainable)

    @property
    def device(self) -> torch.device:
        return self.sam.pixel_mean.device

    @property
    def encoder_batch(self) -> int:
        """Images the image encoder reads at once (``ENCODER_BATCH`` of the preset)."""
        return ENCODER_BATCH[self.config.preset]

    @property
    def image_size(self) -> int:
        """Side of the square the image encoder reads."""
        return self.sam.image_encoder.img_size

    def set_trainable(self, trainable: str) -> None:
        """Set ``requires_grad`` per part: "decoder", "decoder+prompt" or "all" (see ``ToolConfig.trainable``)."""
        if trainable not in TRAINABLE:
            raise ValueError(f"trainable={trainable!r}: allowed values are {TRAINABLE}")
        parts = {"decoder": ("mask_decoder",), "decoder+prompt": ("mask_decoder", "prompt_encoder"),
                 "all": ("mask_decoder", "prompt_encoder", "image_encoder")}[trainable]
        for name, module in self.sam.named_children():
            module.requires_grad_(name in parts)
        self.config = dataclasses.replace(self.config, trainable=trainable)

    def embed(self, images: list[np.ndarray], batch_size: int | None = None) -> torch.Tensor:
        """Image embeddings ``[n, C, g, g]`` of ``n`` distinct H x W x 3 uint8 images (sizes may differ).

        Each image is resized so its longest side is ``image_size`` (SAM's ``ResizeLongestSide``), normalised
        with SAM's pixel mean and std, padded bottom/right to a square and encoded; ``g = image_size / patch``.
        Runs under ``no_grad`` unless the image encoder is trainable. ``batch_size`` bounds the encoder's batch
        (None: ``ENCODER_BATCH`` of the preset).
        """
        batch_size = batch_size or self.encoder_batch
        if len(images) == 0:
            raise ValueError("embed() needs at least one image")
        inputs = []
        for i, image in enumerate(images):
            ok = isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
            if not (ok and image.shape[2] == 3):
                desc = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
                raise ValueError(f"embed(): image {i} must be an H x W x 3 uint8 numpy array, got {desc}")
            resized = torch.from_numpy(self.transform.apply_image(image)).to(self.device)
            inputs.append(self.sam.preprocess(resized.permute(2, 0, 1).float()))
        batch = torch.stack(inputs)
        encoder = self.sam.image_encoder
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
        with torch.set_grad_enabled(grad):
            return torch.cat([encoder(batch[i:i + batch_size]) for i in range(0, len(batch), batch_size)])

    def _to_input_frame(self, coords: torch.Tensor, image_index: torch.Tensor, image_hw) -> torch.Tensor:
        """Pixels ``(..., 2)`` (x, y) of each sample's original image -> pixels of the encoder's padded input."""
        scales = []
        for h, w in image_hw:
            new_h, new_w = ResizeLongestSide.get_preprocess_shape(h, w, self.image_size)
            scales.append((new_w / w, new_h / h))
        scale = torch.tensor(scales, dtype=torch.float32, device=coords.device)[image_index]
        return coords * scale.view(len(image_index), *([1] * (coords.dim() - 2)), 2)

    def low_res_logits(self, embeddings, image_index, boxes, points, image_hw, point_labels=None) -> torch.Tensor:
        """Mask logits ``[N, 4g, 4g]`` in the encoder's padded input frame (before upsampling); see ``decode``."""
        n_images = embeddings.shape[0]
        if len(image_hw) != n_images:
            raise ValueError(f"image_hw has {len(image_hw)} sizes for {n_images} image embeddings")
        device = embeddings.device
        image_index = torch.as_tensor(image_index, device=device).long()
        if image_index.dim() != 1 or len(image_index) == 0:
            raise ValueError(f"image_index must be a non-empty 1-D LongTensor, got shape {tuple(image_index.shape)}")
        if int(image_index.min()) < 0 or int(image_index.max()) >= n_images:
            raise ValueError(f"image_index values must lie in [0, {n_images}), got {image_index.tolist()}")
        n = len(image_index)
        if boxes is None and points is None:
            raise ValueError("decode() needs boxes, points or both")
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=device)
            if boxes.shape != (n, 4):
                raise ValueError(f"boxes must have shape ({n}, 4), got {tuple(boxes.shape)}")
            boxes = self._to_input_frame(boxes.view(n, 2, 2), image_index, image_hw).view(n, 4)
        point_prompt = None
        if points is not None:
            points = torch.as_tensor(points, dtype=torch.float32, device=device)
            if points.dim() != 3 or points.shape[0] != n or points.shape[2] != 2:
                raise ValueError(f"points must have shape ({n}, K, 2), got {tuple(points.shape)}")
            if point_labels is None:
                point_labels = torch.ones(points.shape[:2], device=device)
            point_labels = torch.as_tensor(point_labels, device=device)
            if point_labels.shape != points.shape[:2]:
                raise ValueError(
                    f"point_labels must have shape {tuple(points.shape[:2])}, got {tuple(point_labels.shape)}")
            point_prompt = (self._to_input_frame(points, image_index, image_hw), point_labels)

        prompt_encoder, decoder = self.sam.prompt_encoder, self.sam.mask_decoder
        sparse, dense = prompt_encoder(points=point_prompt, boxes=boxes, masks=None)
        # MaskDecoder.predict_masks repeats ONE image embedding for every prompt; here each prompt reads its own
        # image's embedding. The rest is predict_masks line for line, keeping only mask token 0
        # (multimask_output=False) and skipping the IoU head, which no loss here uses.
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat([tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        src = embeddings[image_index] + dense
        pos_src = prompt_encoder.get_dense_pe().expand(n, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = decoder.transformer(src, pos_src, tokens)
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = decoder.output_hypernetworks_mlps[0](hs[:, 1, :])
        return torch.einsum("nc,nchw->nhw", hyper, upscaled)

    def decode(self, embeddings, image_index, boxes, points, image_hw, point_labels=None):
        """Mask logits of N prompts, each at its image's original resolution; differentiable w.r.t. the decoder.

        embeddings: ``[n, C, g, g]`` from ``embed``. image_index: ``[N]`` longs, rollout i prompts image
        ``image_index[i]``. boxes: ``[N, 4]`` ``[x1, y1, x2, y2]`` in original image pixels, or None. points:
        ``[N, K, 2]`` ``(x, y)`` in original image pixels, or None (at least one of boxes/points). image_hw: the
        ``(H, W)`` of each of the ``n`` images. point_labels: ``[N, K]``, 1 foreground (default), 0 background,
        -1 padding (SAM's "not a point").

        Returns ``[N, H, W]`` logits when all N prompted images have one size (the tiny world), else a list of N
        ``[H_i, W_i]`` tensors. The upsampling is SAM's ``postprocess_masks``: bilinear to the input square, crop
        the padding, bilinear to ``(H, W)``. ``multimask_output=False``: SAM's single-mask output token.
        """
        low = self.low_res_logits(embeddings, image_index, boxes, points, image_hw, point_labels).unsqueeze(1)
        index = torch.as_tensor(image_index).long().tolist()
        sizes = [tuple(int(v) for v in image_hw[j]) for j in index]
        out: list = [None] * len(index)
        for size in dict.fromkeys(sizes):
            rows = [i for i, s in enumerate(sizes) if s == size]
            input_hw = ResizeLongestSide.get_preprocess_shape(size[0], size[1], self.image_size)
            masks = self.sam.postprocess_masks(low[rows], input_hw, size)[:, 0]
            if len(rows) == len(index):
                return masks
            for row, mask in zip(rows, masks):
                out[row] = mask
        return out

    forward = decode

    @torch.no_grad()
    def predict(self, embeddings, image_index, boxes, points, image_hw, point_labels=None):
        """Boolean masks (``decode``'s logits > 0), same shapes as ``decode``."""
        logits = self.decode(embeddings, image_index, boxes, points, image_hw, point_labels)
        return logits > 0 if torch.is_tensor(logits) else [m > 0 for m in logits]


def load_tool_config(folder: str | os.PathLike) -> ToolConfig:
    """The ``ToolConfig`` saved in ``folder`` by ``save_tool``, with ``checkpoint`` pointing at that folder."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {folder} a folder written by save_tool?")
    fields = json.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(ToolConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{path}: unknown ToolConfig fields {unknown}; allowed: {sorted(known)}")
    return ToolConfig(**dict(fields, checkpoint=str(folder)))


def load_tool(config: ToolConfig) -> SegmentationTool:
    """Build the tool of ``config`` and load ``config.checkpoint`` (file or ``save_tool`` folder) if given.

    A folder's saved architecture must equal ``config``'s (``load_tool(load_tool_config(folder))`` always fits).
    """
    sam = build_sam(config)
    if config.checkpoint is not None:
        path = Path(config.checkpoint)
        if path.is_dir():
            saved = load_tool_config(path).architecture()
            wanted = config.architecture()
            diff = {k: (saved[k], wanted[k]) for k in saved if saved[k] != wanted[k]}
            if diff:
                raise ValueError(
                    f"tool folder {path} was saved with another architecture; differing fields (saved, requested): "
                    f"{diff}. Use load_tool(load_tool_config({str(path)!r}))"
                )
            path = path / WEIGHTS_FILE
        _load_weights(sam, path, config)
    return SegmentationTool(config, sam)


def save_tool(tool: SegmentationTool, folder: str | os.PathLike) -> None:
    """Write ``folder/tool.safetensors`` and ``folder/tool_config.json`` atomically (temp file, then rename)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tool.sam.state_dict().items()}
    fields = dataclasses.asdict(dataclasses.replace(tool.config, checkpoint=None,
                                                    image_size=tool.config.resolved_image_size()))

    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    write_text(folder / CONFIG_FILE, json.dumps(fields, indent=2) + "\n")


def trainable_parameters(tool: SegmentationTool) -> list[nn.Parameter]:
    """The parameters with ``requires_grad`` (what an optimizer of the tool should hold)."""
    return [p for p in tool.parameters() if p.requires_grad]
