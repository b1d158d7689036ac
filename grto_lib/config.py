"""One configuration object for a training run (cleanrl style: every field documented where it is declared).

``TrainConfig`` is what ``python -m grto_lib.train``, the notebooks and your own scripts fill in. It is validated
before any model is built or any data is read, so a typo fails in milliseconds with the allowed values named.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from grto_lib.losses import LOSS_TYPES, SCALES, TOOL_LOSS_KINDS, WEIGHT_SCHEMES

METHODS = ("grpo", "grto", "b-grto")
DATASETS = ("reasonseg", "cod", "earthreason")
PRESETS = ("tiny", "paper")
POLICY_TRAIN = ("decoder", "all")
REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_path(path) -> Path:
    """A path relative to the repository root (absolute paths unchanged), wherever the caller runs from:
    notebooks run by papermill from the root or from ``notebooks/`` find the same folders."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


@dataclass
class TrainConfig:
    """Everything that defines one GRPO / GRTO / B-GRTO run."""

    # --- the method -----------------------------------------------------------------------------------------------
    method: str = "b-grto"
    """grpo: tool frozen | grto: tool trained on the rollouts | b-grto: BTO bootstrap, then GRTO."""

    # --- GRPO: the policy -----------------------------------------------------------------------------------------
    steps: int = 100
    """Optimizer steps."""
    prompts_per_step: int = 8
    """Distinct prompts (images + queries) per step; each gets ``num_generations`` rollouts."""
    rl_prompts: int = 0
    """RL cycles through the first N prompts of the training order, epoch after epoch (0: all ``train_size``,
    each seen about once). N = 5 x ``prompts_per_step`` makes the first and the last 5 steps of a run see the
    same prompts, so their mean rewards compare the policy, not the draw (BTO still uses the whole set)."""
    num_generations: int = 8
    """G: rollouts per prompt, the group the advantages are relative to."""
    policy_lr: float = 5e-5
    """Policy learning rate (AdamW, constant after warm-up)."""
    policy_train: str = "decoder"
    """Which policy weights RL updates (without LoRA): decoder (the language model's decoder layers, attention
    and MLP; the vision tower, token embeddings and output head keep their pretrained values, as under the paper
    preset's LoRA) | all."""
    beta: float = 0.0
    """KL coefficient towards the reference policy (0: no reference model is kept)."""
    loss_type: str = "grpo"
    """TRL loss aggregation: grpo | dapo | dr_grpo | bnpo (set explicitly: TRL's default changes)."""
    scale_rewards: str = "group"
    """Advantage scaling (TRL): group (divide by the group's reward std, as in GRPO) | batch | none (Dr. GRPO:
    the raw difference from the group mean)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts."""
    max_completion_length: int = 128
    """Longest completion in tokens (the tiny stand-in's take 55-100: its thought lists the objects it sees; a
    clipped answer fails the format)."""
    reward_weights: dict = field(default_factory=dict)
    """Overrides of grto_lib.rewards.RewardWeights fields, e.g. {"mask": 2.0}."""
    box_threshold: float | None = None
    """None: the box reward is the box IoU. A number t: the indicator IoU > t (Seg-Zero uses 0.5), which pays
    nothing for a box that only grazes the target (the IoU pays an inflated box partial credit)."""

    # --- GRTO: the tool -------------------------------------------------------------------------------------------
    tool_lr: float = 3e-4
    """Tool (mask decoder) learning rate, its own Adam optimizer."""
    tool_loss_weight: float = 1.0
    """lambda: weight of the tool loss in the joint surrogate."""
    tool_loss: str = "bce_dice"
    """Differentiable surrogate of mask IoU: bce_dice | soft_iou."""
    tool_weighting: str = "on_target"
    """Which rollouts the tool loss (and BTO) trains on, see losses.tool_loss_weights: on_target (those whose box
    matches the target's, box IoU > 0.5: the tool never sees the query, so it can only learn to follow prompts
    that point at the target) | uniform (every valid rollout: the unbiased estimate of grad_phi J, which with an
    unreliable policy teaches the tool to ignore its prompt) | advantage | positive (ablations)."""

    # --- BTO: the bootstrap (b-grto only) -------------------------------------------------------------------------
    bto_prompts: int = 1024
    """Prompts whose reference-policy rollouts fill the BTO buffer."""
    bto_generations: int = 1
    """Rollouts per prompt in the BTO buffer. The tool learns more from distinct images than from repeated
    rollouts of one: at 1,024 rollouts, 1,024 prompts x 1 gave B-GRTO +0.05 test gIoU over 128 x 8 (3 settings,
    3 seeds each; docs/benchmarks.md 7.7), at the same cost."""
    bto_steps: int = 200
    """Off-policy tool updates on the buffer."""
    bto_batch: int = 64
    """Rollouts per BTO update."""
    bto_lr: float = 1e-3
    """Tool learning rate during BTO."""

    # --- data -----------------------------------------------------------------------------------------------------
    dataset: str = "reasonseg"
    """Setting: reasonseg | cod | earthreason."""
    data_root: str | None = None
    """None: the synthetic tiny-world generator. A folder: the real release (see grto_lib.data); relative
    paths are relative to the repository root."""
    test_data_root: str | None = None
    """Real data only: a separate folder for the test split (COD releases ship train and test as separate
    folders, e.g. ``TrainDataset`` and ``TestDataset/COD10K``). None: ``data_root``."""
    train_size: int = 2000
    """Synthetic training samples (ignored for real data)."""
    eval_size: int = 200
    """Test samples used by the final evaluation (and the first ``curve_size`` for learning curves)."""
    image_size: int = 128
    """Side of synthetic images in pixels."""

    # --- models ---------------------------------------------------------------------------------------------------
    preset: str = "tiny"
    """tiny: the tiny world's stand-ins (CPU, minutes) | paper: Qwen2.5-VL-3B + LoRA and SAM ViT-H."""
    policy_path: str | None = None
    """Policy weights (hub id or folder). None: the preset's default."""
    tool_checkpoint: str | None = None
    """SAM weights. None: the preset's default (tiny: the stand-in; paper: required for real use)."""
    lora: bool = False
    """Train a LoRA adapter instead of all policy weights (the paper preset always does)."""

    # --- compute (same numbers, other memory and speed) -----------------------------------------------------------
    micro_batch: int | None = None
    """Completions per policy forward/backward (TRL's per_device_train_batch_size); a step still generates all
    prompts_per_step * num_generations completions at once and accumulates the loss over micro-batches.
    None: all at once (what fits where is in the README's GPU section)."""
    generate_every: int = 1
    """Optimizer steps served by one generation call: k > 1 samples the rollouts of k steps in one batch k times
    larger, which keeps a GPU busier (measured in docs/benchmarks.md); the rollouts of the later k - 1 steps are
    slightly off-policy, which TRL's importance ratio and clipping correct (TRL's ``steps_per_generation`` = k x
    gradient-accumulation steps). 1: every step on-policy."""

    # --- bookkeeping ----------------------------------------------------------------------------------------------
    seed: int = 0
    """Seed for data order, sampling and initialisation."""
    output_dir: str = "outputs/run"
    """Where checkpoints, logs and metrics.json go (relative paths are relative to the repository root)."""
    save_steps: int = 50
    """Checkpoint every this many steps (and at the end)."""
    curve_every: int = 25
    """Evaluate test gIoU every this many steps for the learning curve (0: never)."""
    curve_size: int = 64
    """Test samples used for learning-curve points."""
    logging_steps: int = 5
    """Log to the console and TensorBoard every this many steps."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field and its allowed values."""
        choices = {
            "method": METHODS, "loss_type": LOSS_TYPES, "scale_rewards": SCALES, "tool_loss": TOOL_LOSS_KINDS,
            "tool_weighting": WEIGHT_SCHEMES, "dataset": DATASETS, "preset": PRESETS, "policy_train": POLICY_TRAIN,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"TrainConfig.{name}={value!r} is not allowed; choose one of {', '.join(allowed)}")
        positive_ints = ("train_size", "eval_size", "steps", "prompts_per_step", "num_generations",
                         "max_completion_length", "bto_prompts", "bto_generations", "bto_batch", "save_steps",
                         "curve_size", "logging_steps", "image_size", "generate_every")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        if isinstance(self.rl_prompts, bool) or not isinstance(self.rl_prompts, int) or self.rl_prompts < 0:
            raise ValueError(f"TrainConfig.rl_prompts must be 0 (all) or a positive integer, got {self.rl_prompts!r}")
        total = self.prompts_per_step * self.num_generations
        if self.micro_batch is not None and (isinstance(self.micro_batch, bool) or not isinstance(self.micro_batch, int)
                                             or self.micro_batch < 1 or total % self.micro_batch):
            raise ValueError(f"TrainConfig.micro_batch={self.micro_batch!r} must be a positive divisor of "
                             f"prompts_per_step * num_generations = {total}")
        if self.num_generations < 2:
            raise ValueError("TrainConfig.num_generations must be >= 2: advantages are relative to the group")
        for name in ("policy_lr", "tool_lr", "bto_lr", "beta", "tool_loss_weight", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a non-negative number, got {value!r}")
        threshold = self.box_threshold
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not 0 <= threshold < 1):
            raise ValueError(f"TrainConfig.box_threshold must be None or a number in [0, 1), got {threshold!r}")
        from .rewards import RewardWeights
        known = {f.name for f in dataclasses.fields(RewardWeights)}
        if not isinstance(self.reward_weights, dict) or set(self.reward_weights) - known:
            raise ValueError(f"TrainConfig.reward_weights={self.reward_weights!r}: keys must be among {sorted(known)}")
        for name in ("data_root", "test_data_root"):
            value = getattr(self, name)
            if value is not None and not repo_path(value).is_dir():
                raise ValueError(f"TrainConfig.{name}={value!r} is not a folder (None = synthetic data)")
        if self.test_data_root is not None and self.data_root is None:
            raise ValueError("TrainConfig.test_data_root needs data_root (synthetic data has its own test split)")

    @property
    def trains_tool(self) -> bool:
        """Whether the tool is updated during RL (grto and b-grto)."""
        return self.method in ("grto", "b-grto")

    @property
    def bto_weighting(self) -> str:
        """Which buffer rollouts BTO trains on: ``tool_weighting`` when it is uniform or on_target; the
        reference policy's rollouts carry no advantages, so the advantage-based ablations bootstrap uniformly."""
        return "on_target" if self.tool_weighting == "on_target" else "uniform"

    def to_json(self, path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def from_json(cls, path) -> "TrainConfig":
        """Load a config file; unknown keys are an error naming them."""
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)
