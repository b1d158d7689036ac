"""The policy: a Qwen2.5-VL that reads an image and a query, reasons, and writes a box and points inside the object.

``load_policy(PolicyConfig) -> (model, processor)`` is the one entry point. Both presets give a
``transformers.Qwen2_5_VLForConditionalGeneration`` and a processor with the same call signature, so TRL's
``GRPOTrainer`` (``processing_class=processor``), peft's LoRA and the notebooks never ask which one they hold
(both run ``grto_lib.fast_qwen``'s fast paths, which compute the same numbers):

- ``paper``: ``Qwen/Qwen2.5-VL-3B-Instruct`` (or a local copy) with its own processor, images fixed to
  ``policy_image_size`` squared pixels (840 x 840 = 30 x 30 merged tokens of 28 px), optionally wrapped in LoRA.
- ``tiny``: the same model class with a tiny configuration (the stand-in: 2.6M parameters) and the tiny world's
  processor (``grto_lib.tinyworld.tiny_qwen``: coordinate-channel images and a word-level tokenizer), loaded from
  the stand-in folder that ``grto_lib.tinyworld.policy_standin`` builds.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from .config import IN_SOURCE_CHECKOUT, REPO_ROOT
from .fast_qwen import enable_fast_paths
from .tinyworld.tiny_qwen import TinyQwenProcessor, set_generation_tokens

PRESETS = ("tiny", "paper")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY_DEFAULT_PATH = "data/standins/policy"
"""The tiny stand-in's folder, relative to the repository root."""
PAPER_DEFAULT_PATH = "Qwen/Qwen2.5-VL-3B-Instruct"
LANGUAGE_MODEL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class PolicyConfig:
    """Which policy to load and how to wrap it. ``None`` fields take the preset's default in ``__post_init__``."""

    preset: str = "tiny"
    """tiny: the tiny-world stand-in (CPU, minutes) | paper: Qwen2.5-VL-3B-Instruct."""
    model_name_or_path: str | None = None
    """Hub id or folder. None: tiny -> ``data/standins/policy`` under the repository root; paper ->
    ``Qwen/Qwen2.5-VL-3B-Instruct`` (needs the weights in the local Hugging Face cache or network)."""
    policy_image_size: int | None = None
    """Side of the square view the policy sees, in pixels (answer coordinates are pixels of it). None: tiny 128
    (must equal the size the tiny folder was trained at), paper 840 (a multiple of 28)."""
    lora: bool | None = None
    """Wrap the language model's linear layers in a LoRA adapter (base weights frozen). None: paper True, tiny False."""
    lora_rank: int = 16
    """LoRA rank r (``TrainConfig.lora_rank``, which ``runs.load_models`` passes on, has the same default)."""
    lora_alpha: int = 32
    """LoRA scaling numerator: the update is scaled by lora_alpha / lora_rank (``TrainConfig.lora_alpha``)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch's input, in [0, 1) (``TrainConfig.lora_dropout``)."""
    lora_target_modules: tuple[str, ...] = LANGUAGE_MODEL_LINEAR
    """Linear layers of the *language model* that get adapters (the vision tower is never adapted)."""
    dtype: str | None = None
    """Weights' dtype: float32 | bfloat16 | float16. None: tiny float32, paper bfloat16."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (saves memory on the paper preset; TRL's GRPOConfig has its own
    switch, ``gradient_checkpointing``, which the trainer applies as well)."""

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"PolicyConfig.preset={self.preset!r} is not allowed; choose one of {', '.join(PRESETS)}")
        tiny = self.preset == "tiny"
        if self.model_name_or_path is None:
            self.model_name_or_path = str(REPO_ROOT / TINY_DEFAULT_PATH) if tiny else PAPER_DEFAULT_PATH
        if self.policy_image_size is None:
            self.policy_image_size = 128 if tiny else 840
        if self.lora is None:
            self.lora = not tiny
        if self.dtype is None:
            self.dtype = "float32" if tiny else "bfloat16"
        if self.dtype not in DTYPES:
            raise ValueError(f"PolicyConfig.dtype={self.dtype!r} is not allowed; choose one of {', '.join(DTYPES)}")
        self.lora_target_modules = tuple(self.lora_target_modules)
        for name in ("lora_rank", "lora_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PolicyConfig.{name}={value!r} must be a positive integer")
        dropout = self.lora_dropout
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"PolicyConfig.lora_dropout={dropout!r} must be a number in [0, 1)")
        size, multiple = self.policy_image_size, 16 if tiny else 28
        if isinstance(size, bool) or not isinstance(size, int) or size < multiple or size % multiple:
            raise ValueError(
                f"PolicyConfig.policy_image_size={size!r} must be a positive multiple of {multiple} for the "
                f"{self.preset} preset (patch size x merge size)"
            )


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def load_policy(config: PolicyConfig):
    """``(model, processor)`` for ``config``: a ``Qwen2_5_VLForConditionalGeneration`` (a peft ``PeftModel``
    around it when ``config.lora``) and a processor that TRL's ``GRPOTrainer`` accepts as ``processing_class``."""
    dtype = DTYPES[config.dtype]
    if config.preset == "tiny":
        model, processor = _load_tiny(config, dtype)
    else:
        model, processor = _load_paper(config, dtype)
    return prepare_policy(model, config), processor


def prepare_policy(model, config: PolicyConfig):
    """What ``load_policy`` does to a loaded Qwen2.5-VL: ``fast_qwen``'s fast paths, gradient checkpointing when
    ``config.gradient_checkpointing``, then LoRA when ``config.lora``. A model built another way (a benchmark's
    random-weight 3B) goes through this too, so it is the model that training runs."""
    enable_fast_paths(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if config.lora:
            model.enable_input_require_grads()
    if config.lora:
        model = wrap_lora(model, config)
    return model


def missing_standin(name: str, folder, option: str) -> FileNotFoundError:
    """The error for the tiny ``name`` stand-in ("policy" or "tool") missing from ``folder``: in a source
    checkout, how to build it; for an installed grto_lib, which comes without the stand-ins, which ``option``
    to point at a clone's stand-in instead."""
    if IN_SOURCE_CHECKOUT:
        return FileNotFoundError(
            f"No tiny {name} in {folder}. Build the stand-in first, from the repository root: "
            f"`python -m grto_lib.tinyworld.standins --only {name} --force`, or point {option} at another folder")
    return FileNotFoundError(
        f"No tiny {name} in {folder}: an installed grto_lib comes without the tiny stand-ins, which are in a clone "
        f"of the repository (data/standins/{name}). Point {option} at that folder, or run from the root of a clone")


@contextlib.contextmanager
def no_transformers_progress_bars():
    """transformers' own progress bars ("Loading weights", "Writing model shards") switched off for a moment: a
    loading or saving that takes milliseconds would leave a frozen bar in every notebook that runs it."""
    from transformers.utils import logging as transformers_logging

    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def _load_tiny(config: PolicyConfig, dtype):
    path = Path(config.model_name_or_path)
    if not (path / "config.json").is_file():
        raise missing_standin("policy", path, "policy_path (--policy-path, PolicyConfig.model_name_or_path)")
    processor = TinyQwenProcessor.from_pretrained(path)
    trained_size = processor.image_processor.image_size
    if trained_size != config.policy_image_size:
        raise ValueError(
            f"PolicyConfig.policy_image_size={config.policy_image_size} but the tiny policy in {path} reads "
            f"{trained_size} px images; set policy_image_size={trained_size} or build a policy for that size"
        )
    with no_transformers_progress_bars():  # the stand-in loads in milliseconds
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
    set_generation_tokens(model, processor.tokenizer)
    return model, processor


def _load_paper(config: PolicyConfig, dtype):
    from transformers import AutoProcessor

    pixels = config.policy_image_size**2
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(config.model_name_or_path, dtype=dtype)
    # Every policy view is a policy_image_size square, a multiple of 28: fixing min = max pixels keeps it
    # unresized, so answer coordinates are pixels of the view itself.
    processor = AutoProcessor.from_pretrained(
        config.model_name_or_path, size={"shortest_edge": pixels, "longest_edge": pixels}
    )
    processor.tokenizer.padding_side = "left"
    return model, processor


def wrap_lora(model, config: PolicyConfig):
    """peft LoRA on the language model's ``config.lora_target_modules``; every other weight is frozen."""
    from peft import LoraConfig, get_peft_model

    names = "|".join(config.lora_target_modules)
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=rf".*language_model.*\.({names})",
    )
    return get_peft_model(model, lora)
