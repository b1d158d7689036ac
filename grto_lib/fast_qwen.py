"""Fast paths for Qwen2.5-VL on batches of same-size images: the same numbers with fewer, larger operations.

On a GPU, transformers' Qwen2.5-VL spends most of a tiny model's step in Python: its vision attention calls
the attention function once per image and layer, its vision position and window indices are rebuilt image by
image at every forward, and GRPO's G copies of every prompt image are each encoded again (docs/benchmark_history.md,
7.1: 5x on an H200's supervised step; 6 % on a CPU GRPO step, which generation dominates).
``enable_fast_paths(model)`` switches a loaded model to two subclasses that avoid this when the images of a batch
share one size (always in the tiny world; the paper preset's 840 px views too) and fall back to the stock code
otherwise:

* ``SameSizeImagesVisionAttention``: one attention call over an ``(images, heads, L, d)`` batch;
* ``RepeatedImagesModel``: each distinct image encoded once (its features copied to every repeat), and the
  vision tower's position and window indices computed once per batch shape and reused.

Weights, saved checkpoints and outputs are unchanged (``tests/test_policy.py`` checks the outputs and gradients
against the stock classes to 1e-5); ``disable_fast_paths`` switches back, for benchmarks.
"""
from __future__ import annotations

import torch
from transformers import vision_utils
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    ALL_ATTENTION_FUNCTIONS,
    Qwen2_5_VLModel,
    Qwen2_5_VLVisionAttention,
    apply_rotary_pos_emb_vision,
    eager_attention_forward,
)
from transformers.utils.generic import is_flash_attention_requested


class SameSizeImagesVisionAttention(Qwen2_5_VLVisionAttention):
    """Qwen2.5-VL's vision attention with one attention call for images of one size.

    The stock module packs every image's patches into one sequence, splits it at ``cu_seqlens`` and calls the
    attention function once per image: 256 calls forward and as many backward for 128 images and two layers.
    When every segment has the same length L, the packed ``(N * L, heads, d)`` tensors are an ``(N, L, heads, d)``
    batch, and one call computes the same numbers. Segments of different lengths, or flash attention (which takes
    ``cu_seqlens`` itself), run the stock code.
    """

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
        if len(lengths) < 2 or len(set(lengths)) > 1 or is_flash_attention_requested(self.config):
            return super().forward(hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
        seq_length, images = hidden_states.shape[0], len(lengths)
        qkv = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3)
        query, key, value = qkv.unbind(0)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
        # (N * L, heads, d) -> (N, heads, L, d): one batch entry per image
        query, key, value = (t.reshape(images, lengths[0], self.num_heads, -1).transpose(1, 2)
                             for t in (query, key, value))
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, _ = attention(self, query, key, value, attention_mask=None, scaling=self.scaling,
                              dropout=0.0 if not self.training else self.attention_dropout, is_causal=False, **kwargs)
        return self.proj(output.reshape(seq_length, -1).contiguous())


class RepeatedImagesModel(Qwen2_5_VLModel):
    """Qwen2.5-VL that encodes each distinct image of a batch once and caches the vision tower's indices.

    GRPO repeats every prompt, image included, G times. When the images of a batch share one size, identical
    images are found (a random projection of each image's pixels, then an exact comparison with the first image of
    the same projection), one of each is encoded and its features are copied to every repeat: the same numbers,
    and the gradients of the copies add up in the one encoding as they would over separate ones. The vision
    tower's rotary position ids, window index and sequence boundaries depend only on the number and size of the
    images; they are computed once per ``(count, size, device)`` and passed to the tower, which takes them as
    precomputed (transformers' ``vision_utils``).
    """

    def get_image_features(self, pixel_values, image_grid_thw=None, **kwargs):
        if image_grid_thw is None or len(image_grid_thw) < 2 or (image_grid_thw != image_grid_thw[0]).any():
            return super().get_image_features(pixel_values, image_grid_thw, **kwargs)
        first, repeat_of = distinct_images(pixel_values.view(len(image_grid_thw), -1))
        if len(first) == len(repeat_of):
            return super().get_image_features(pixel_values, image_grid_thw, **self._vision_indices(image_grid_thw),
                                              **kwargs)
        per_image = pixel_values.view(len(image_grid_thw), -1, pixel_values.shape[-1])
        grid = image_grid_thw[first]
        output = super().get_image_features(per_image[first].flatten(0, 1), grid, **self._vision_indices(grid),
                                            **kwargs)
        output.pooler_output = tuple(output.pooler_output[k] for k in repeat_of)
        hidden = output.last_hidden_state
        output.last_hidden_state = hidden.view(len(first), -1, hidden.shape[-1])[repeat_of].flatten(0, 1)
        return output

    def _vision_indices(self, grid_thw) -> dict:
        key = (len(grid_thw), tuple(grid_thw[0].tolist()), grid_thw.device)
        cache = self.__dict__.setdefault("_vision_index_cache", {})
        if key not in cache:
            visual = self.visual
            cache[key] = {
                "position_ids": vision_utils.get_vision_position_ids(grid_thw, visual.spatial_merge_size),
                "cu_seqlens": vision_utils.get_vision_attention_seqlens(grid_thw, visual.config)[0],
            }
            cache[key]["window_index"], cache[key]["cu_window_seqlens"] = vision_utils.get_vision_window_index(
                grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
                patch_size=visual.patch_size)
        return dict(cache[key])


def distinct_images(images: torch.Tensor) -> tuple[list[int], list[int]]:
    """``(first, repeat_of)`` for ``images`` (one flattened image per row): the rows of the distinct images, and for
    every row the position in ``first`` of the image it repeats. Rows are grouped by a random projection of every
    61st value, then compared exactly."""
    sampled = images[:, ::61].float()
    generator = torch.Generator(device="cpu").manual_seed(0)
    keys = (sampled @ torch.randn(sampled.shape[1], generator=generator).to(images.device)).tolist()
    first, repeat_of, seen = [], [], {}
    for i, key in enumerate(keys):
        k = seen.get(key)
        if k is None or not torch.equal(images[first[k]], images[i]):
            k = seen[key] = len(first)  # a new image (or a different one with the same key)
            first.append(i)
        repeat_of.append(k)
    return first, repeat_of


_FAST = {Qwen2_5_VLVisionAttention: SameSizeImagesVisionAttention, Qwen2_5_VLModel: RepeatedImagesModel}


def enable_fast_paths(model) -> None:
    """Switch a Qwen2.5-VL (possibly inside a peft wrapper) to the fast subclasses; weights are untouched."""
    for module in model.modules():
        if type(module) in _FAST:
            module.__class__ = _FAST[type(module)]


def disable_fast_paths(model) -> None:
    """Switch back to transformers' own classes."""
    stock = {fast: original for original, fast in _FAST.items()}
    for module in model.modules():
        if type(module) in stock:
            module.__class__ = stock[type(module)]
