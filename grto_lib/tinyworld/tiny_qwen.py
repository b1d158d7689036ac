"""The tiny world's Qwen2.5-VL: the processor and the model configuration of the stand-in policy.

The model is transformers' own ``Qwen2_5_VLForConditionalGeneration`` with a tiny configuration
(``tiny_model_config``); the processor is made of two small parts written here:

* ``CoordImageProcessor``: resizes to ``policy_image_size`` (128), normalises RGB to [-1, 1] and appends two
  channels holding each pixel's absolute position, ``x = 2 (c + 0.5) / W - 1`` and ``y = 2 (r + 0.5) / H - 1``
  (the vision tower's patch embedding takes ``in_channels = 5``). Rotary positions alone were not enough for a
  briefly trained tiny model to ground (it wrote the same box for every image); with
  the coordinates in the pixels, "where is the red circle" becomes "read the coordinates of the red patches".
  Pixels are laid out exactly as ``Qwen2VLImageProcessor`` lays them out: ``pixel_values`` has one row per
  8 x 8 patch, ``(grid_h * grid_w, C * temporal_patch_size * 8 * 8)``, rows ordered in 2 x 2 merge blocks,
  and ``image_grid_thw = [[1, grid_h, grid_w]]``; a 128 px image gives 16 x 16 patches, 64 image tokens.
* a word-level tokenizer (``tokenizers``): one token per word of the queries and the system prompt, per
  integer 0..255, per punctuation character, per answer tag and per quoted key (``"bbox"``, ``"points"``),
  plus Qwen's special tokens. It decodes with single spaces between tokens, e.g.
  ``<think> the red circle </think> <answer> { "bbox" : [ 12 , 30 , 50 , 70 ] , ... } </answer>``, which
  ``json.loads`` reads back between the answer tags.
* ``TinyQwenProcessor``: ``Qwen2_5_VLProcessor`` with an image processor and a tokenizer only (the stock class
  insists on a video processor, which needs torchvision); ``from_pretrained`` is explicit because
  ``AutoProcessor`` would return only the tokenizer for such a folder.
"""
from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    BatchFeature,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.image_processing_base import ImageProcessingMixin

from grto_lib import prompts
from grto_lib.config import COMPLETION_TOKENS
from grto_lib.fast_qwen import enable_fast_paths

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>", "<|unk|>",
)
"""Qwen's control tokens (dropped by ``decode(skip_special_tokens=True)``, as TRL decodes completions)."""
ANSWER_TOKENS = (
    prompts.THINK_OPEN, prompts.THINK_CLOSE, prompts.ANSWER_OPEN, prompts.ANSWER_CLOSE, '"bbox"', '"points"',
)
"""Kept whole and *not* special: the completions TRL decodes must still contain them."""
MAX_NUMBER = 255
"""Integers 0..MAX_NUMBER are single tokens; coordinates of a policy view up to 256 px fit."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + prompts.TINY_SYSTEM_PROMPT + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2.5-VL's chat layout (system turn, user turn with ``<|vision_start|><|image_pad|><|vision_end|>``,
``<|im_start|>assistant`` as the generation prompt); the word-level tokenizer ignores the newlines."""




# --------------------------------------------------------------------------------------------------------------
# The tiny processor: coordinate-channel images, a word-level tokenizer, and the Qwen2.5-VL processor around them
# --------------------------------------------------------------------------------------------------------------


class CoordImageProcessor(ImageProcessingMixin):
    """PIL / numpy images -> ``pixel_values`` (normalised RGB + x, y channels) and ``image_grid_thw``, in numpy.

    Each image is converted to RGB, resized (bilinear) to ``image_size`` squared, scaled to [-1, 1]
    (``(v / 255 - 0.5) / 0.5``) and given two more channels, x and y in [-1, 1] at pixel centres. The
    ``C x S x S`` array is cut into ``patch_size`` patches and flattened in ``Qwen2VLImageProcessor``'s order:
    rows grouped in ``merge_size x merge_size`` blocks, each row ``(C, temporal_patch_size, p, p)`` with the
    still image repeated over the temporal axis.
    """

    model_input_names = ["pixel_values", "image_grid_thw"]

    def __init__(self, image_size: int = 128, patch_size: int = 8, temporal_patch_size: int = 2,
                 merge_size: int = 2, **kwargs):
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        if image_size % (patch_size * merge_size):
            raise ValueError(
                f"CoordImageProcessor: image_size={image_size} must be a multiple of patch_size * merge_size = "
                f"{patch_size * merge_size}"
            )
        self.image_size = image_size
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.merge_size = merge_size

    @property
    def num_channels(self) -> int:
        """RGB plus x and y."""
        return 5

    def __call__(self, images, return_tensors=None, **kwargs) -> BatchFeature:
        # The processor forwards its generic image kwargs (all None unless a caller sets them); nothing to tune here.
        flat = _flatten_images(images)
        if not flat:
            raise ValueError("CoordImageProcessor: no images given")
        patches = [self.patchify(self.to_channels(image)) for image in flat]
        grid = self.image_size // self.patch_size
        data = {
            "pixel_values": np.concatenate(patches, axis=0),
            "image_grid_thw": np.array([[1, grid, grid]] * len(flat), dtype=np.int64),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)

    preprocess = __call__

    def to_channels(self, image) -> np.ndarray:
        """One image -> float32 ``(5, S, S)``: RGB in [-1, 1], then x, then y in [-1, 1]."""
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
                raise ValueError(
                    f"CoordImageProcessor: a numpy image must be H x W x 3 uint8, got shape {image.shape} and "
                    f"dtype {image.dtype}"
                )
            image = Image.fromarray(image)
        elif isinstance(image, torch.Tensor):
            raise ValueError("CoordImageProcessor: pass PIL images or H x W x 3 uint8 numpy arrays, not tensors")
        size = self.image_size
        pil = image.convert("RGB")
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.BILINEAR)
        rgb = np.asarray(pil, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        centres = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
        x = np.broadcast_to(centres[None, :], (size, size))
        y = np.broadcast_to(centres[:, None], (size, size))
        return np.concatenate([rgb, x[None], y[None]], axis=0)

    def patchify(self, channels: np.ndarray) -> np.ndarray:
        """``(C, S, S)`` -> ``(grid * grid, C * T * p * p)`` in Qwen2-VL's row order (see ``Qwen2VLImageProcessor``)."""
        c, h, w = channels.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        blocks = channels.reshape(c, gh // m, m, p, gw // m, m, p)
        blocks = blocks.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, c, p, p)
        blocks = np.broadcast_to(blocks[:, :, :, :, :, None], blocks.shape[:5] + (t, p, p))
        return np.ascontiguousarray(blocks).reshape(gh * gw, c * t * p * p)

    def get_number_of_image_patches(self, height: int, width: int, images_kwargs=None) -> int:
        """Patches per image (every image is resized to ``image_size`` squared)."""
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return {
            "image_processor_type": type(self).__name__, "image_size": self.image_size,
            "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
        }


def _flatten_images(images) -> list:
    """A single image, a list of images, or a list of per-prompt lists (as TRL passes them) -> a flat list."""
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flatten_images(item)]
    return [images]


def corpus_words(texts) -> list[str]:
    """The distinct lower-case words and punctuation marks of ``texts``, split as the tokenizer splits them."""
    splitter = _pre_tokenizer()
    words = set()
    for text in texts:
        words.update(piece for piece, _ in splitter.pre_tokenize_str(text.lower()))
    return sorted(words)


def _pre_tokenizer():
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])


def build_tokenizer(corpus) -> PreTrainedTokenizerFast:
    """A word-level tokenizer for the tiny policy, built (not trained: every word is kept) from ``corpus``.

    Vocabulary, in id order: ``SPECIAL_TOKENS``, ``ANSWER_TOKENS``, the integers 0..255, every ASCII punctuation
    mark, the role names, then the words of ``corpus`` and of the system prompt, sorted. Text is lower-cased,
    split on whitespace and around each punctuation mark; the special and answer tokens are matched first, so
    ``"bbox"`` and ``</answer>`` stay whole. An unseen word becomes ``<|unk|>``. Decoding joins tokens with a
    space. pad = ``<|endoftext|>``, eos = ``<|im_end|>`` (the end of an assistant turn).
    """
    fixed = [*SPECIAL_TOKENS, *ANSWER_TOKENS, *map(str, range(MAX_NUMBER + 1)), *string.punctuation,
             "system", "user", "assistant"]
    vocab: dict[str, int] = {}
    for token in fixed + corpus_words([*corpus, prompts.TINY_SYSTEM_PROMPT]):
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = _pre_tokenizer()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in ANSWER_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|unk|>",
        clean_up_tokenization_spaces=False, padding_side="left", chat_template=CHAT_TEMPLATE,
    )


class TinyQwenProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without a video processor: image processor + tokenizer + chat template.

    Called like the stock processor (``processor(images=..., text=..., padding=True, return_tensors="pt")``,
    ``apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)``), it
    returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` (1 on image tokens; the model needs it for
    its 3-D rotary positions), ``pixel_values`` and ``image_grid_thw``.
    """

    system_prompt = prompts.TINY_SYSTEM_PROMPT
    """The system prompt the stand-in was trained with (``prompts.system_prompt_for`` reads it)."""
    max_new_tokens = COMPLETION_TOKENS["tiny"]
    """The stand-in's completion limit when none is given (``generation.max_new_tokens_for`` reads it)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "TinyQwenProcessor":
        """Load from a folder written by ``save_pretrained`` (``AutoProcessor`` cannot: it finds only the tokenizer)."""
        path = Path(path)
        config_file = path / "processor_config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: not a tiny policy processor folder")
        image_processor = CoordImageProcessor(**json.loads(config_file.read_text())["image_processor"])
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
        template_file = path / "chat_template.jinja"
        chat_template = template_file.read_text() if template_file.is_file() else CHAT_TEMPLATE
        return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def build_tiny_processor(corpus, image_size: int = 128) -> TinyQwenProcessor:
    """The tiny policy's processor: ``CoordImageProcessor(image_size)`` + ``build_tokenizer(corpus)``."""
    return TinyQwenProcessor(
        image_processor=CoordImageProcessor(image_size=image_size), tokenizer=build_tokenizer(corpus),
        chat_template=CHAT_TEMPLATE,
    )


# --------------------------------------------------------------------------------------------------------------
# The tiny model
# --------------------------------------------------------------------------------------------------------------


def tiny_model_config(tokenizer, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                      vision_hidden_size: int = 96, vision_depth: int = 2, vision_heads: int = 4) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL at tiny sizes (about 1.2M parameters with these defaults and a ~400-token vocabulary; the stand-in
    uses ``hidden_size=192, num_layers=6``: 2.6M).

    Vision: 8 px patches over 5 channels (RGB + x, y), 2 x 2 merge (a 128 px image -> 64 tokens), every block
    with full attention (``fullatt_block_indexes`` = all, window 256 px), merged into the text width.
    Text: ``num_layers`` decoder layers, grouped-query attention (2 key/value heads), multimodal rotary positions
    with ``mrope_section`` splitting the head_dim / 2 frequencies over (time, height, width).
    """
    head_dim = hidden_size // num_heads
    half = head_dim // 2
    mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # head_dim 32 -> [4, 6, 6]
    assert sum(mrope_section) == half
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=max(1, num_heads // 2),
            max_position_embeddings=1024, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                           "mrope_section": mrope_section},
            bos_token_id=None, eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
            num_heads=vision_heads, in_channels=5, patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
            window_size=256, fullatt_block_indexes=list(range(vision_depth)), out_hidden_size=hidden_size,
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def build_tiny_policy(corpus, image_size: int = 128, seed: int = 0, **sizes):
    """A randomly initialised tiny policy and its processor (the starting point of ``pretrain_policy_standin``).

    ``corpus``: the query texts whose words the tokenizer must know; ``sizes``: ``tiny_model_config`` overrides.
    """
    processor = build_tiny_processor(corpus, image_size=image_size)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_model_config(processor.tokenizer, **sizes))
    enable_fast_paths(model)
    init_number_embeddings(model, processor.tokenizer)
    set_generation_tokens(model, processor.tokenizer)
    return model, processor


@torch.no_grad()
def init_number_embeddings(model, tokenizer, max_period: float = 4.0 * (MAX_NUMBER + 1)) -> None:
    """Give the tokens "0".."255" ordered input embeddings and output rows: Fourier features of their value.

    Row ``n`` becomes ``s * [cos(w_k n), sin(w_k n)]_k`` with ``hidden / 2`` frequencies ``w_k = 2 pi / T_k``,
    periods ``T_k`` geometric from 4 to ``max_period``, and ``s`` matching the random rows' norm. Then the logit of
    ``n`` for a hidden state ``s * [cos(w_k v), sin(w_k v)]`` is ``s^2 sum_k cos(w_k (n - v))``, a bump centred on
    ``v``: nearby numbers start out similar, so a wrong coordinate by one pixel is a small error from the first
    step (a random init treats "41" and "42" as unrelated words). A stand-in initialisation trick; the rows
    remain ordinary trainable weights.
    """
    ids = torch.tensor(tokenizer.convert_tokens_to_ids([str(n) for n in range(MAX_NUMBER + 1)]))
    for matrix in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        hidden = matrix.shape[1]
        periods = torch.logspace(math.log10(4.0), math.log10(max_period), hidden // 2, dtype=torch.float64)
        angles = torch.arange(MAX_NUMBER + 1, dtype=torch.float64)[:, None] * (2 * math.pi / periods)[None, :]
        features = torch.cat([angles.cos(), angles.sin()], dim=1)
        scale = matrix.norm(dim=1).mean() / features.norm(dim=1).mean()
        matrix[ids, : features.shape[1]] = (features * scale).to(matrix.dtype)


def set_generation_tokens(model, tokenizer) -> None:
    """Generation stops at ``<|im_end|>`` and pads with ``<|endoftext|>``; no BOS (as Qwen)."""
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
