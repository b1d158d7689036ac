"""One configuration object for a training run, every field documented where it is declared (TRL's style: the
help text in ``field(metadata={"help": ...})``, which is also the command line's ``--help``).

``TrainConfig`` is what ``python -m grto_lib.train``, the notebooks and your own scripts fill in. It is validated
before any model is built or any data is read, so a typo fails in milliseconds with the allowed values named.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from grto_lib.files import write_json
from grto_lib.losses import DEFAULT_TOOL_WEIGHTING, LOSS_TYPES, SCALES, TOOL_LOSS_KINDS, WEIGHT_SCHEMES
from grto_lib.scorer import DEFAULT_ON_TARGET_IOU

METHODS = ("grpo", "grto", "b-grto")
COMPLETION_TOKENS = {"tiny": 128, "paper": 512}
"""``max_completion_length`` by preset (see ``TrainConfig.max_completion_length``)."""
SAM_VIT_H_CHECKPOINT = "sam_vit_h_4b8939.pth"
SAM_VIT_H_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""A Hugging Face hub model id: ``owner/name``."""
DATASETS = ("reasonseg", "cod", "earthreason")
PRESETS = ("tiny", "paper")
POLICY_TRAIN = ("decoder", "all")
TOOL_TRAIN = ("decoder", "decoder+prompt")
"""The tool parts RL can train (``TrainConfig.tool_train``; ``tool.TRAINABLE``'s choices but "all"). The image
encoder is not among them: GRTO's scorer and BTO compute each image's embedding once, under ``no_grad``, and every
rollout's loss reuses it, so no gradient reaches the encoder ("all" would train nothing more than decoder+prompt,
silently). Only the tiny tool stand-in's pretraining trains it (``tinyworld.tool_standin``)."""
REPORTERS = {"none": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
"""``TrainConfig.report_to``'s values, transformers' integrations of that name, and the package each needs."""
CHOICES = {"method": METHODS, "loss_type": LOSS_TYPES, "scale_rewards": SCALES, "tool_loss": TOOL_LOSS_KINDS,
           "tool_weighting": WEIGHT_SCHEMES, "dataset": DATASETS, "preset": PRESETS, "policy_train": POLICY_TRAIN,
           "tool_train": TOOL_TRAIN, "report_to": tuple(REPORTERS)}
"""``TrainConfig``'s fields with a fixed set of values."""
TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False", dict: "a dict",
              type(None): "None"}
POSITIVE = ("steps", "prompts_per_step", "num_generations", "max_completion_length", "bto_prompts", "bto_steps",
            "bto_generations", "bto_batch", "train_size", "eval_size", "image_size", "generate_every", "save_steps",
            "curve_size", "logging_steps", "lora_rank", "lora_alpha")
NON_NEGATIVE = ("policy_lr", "warmup_steps", "policy_max_grad_norm", "clip_epsilon", "beta", "temperature", "tool_lr",
                "tool_loss_weight", "tool_max_grad_norm", "bto_lr", "rl_prompts", "curve_every")
BELOW_ONE = ("box_threshold", "on_target_iou", "lora_dropout")
"""Fields in [0, 1) (or None, where the field allows it)."""


def is_source_checkout(folder: Path) -> bool:
    """Whether ``folder`` is a clone of this project: ``grto_lib/`` beside a pyproject.toml naming grto_lib."""
    import tomllib

    try:
        project = tomllib.loads((folder / "pyproject.toml").read_text()).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return project.get("name") == "grto_lib" and (folder / "grto_lib" / "__init__.py").is_file()


_PACKAGE_PARENT = Path(__file__).resolve().parent.parent
IN_SOURCE_CHECKOUT = is_source_checkout(_PACKAGE_PARENT)
"""True when grto_lib runs from a clone (``make setup``'s editable install, or the clone on ``sys.path``);
False when it is installed from a wheel, e.g. into site-packages."""
REPO_ROOT = _PACKAGE_PARENT if IN_SOURCE_CHECKOUT else Path.cwd()
"""The folder that the default locations (``data/standins/``, ``results/``, ``outputs/``) are in: the repository
root in a source checkout; for an installed grto_lib, which has no repository, the working directory at import."""


def repo_path(path) -> Path:
    """``path`` by the one rule for relative paths (absolute paths are returned unchanged): in a source checkout
    they are relative to the repository root, wherever the caller runs (notebooks run by papermill from the root
    or from ``notebooks/`` find the same folders); for an installed grto_lib, relative to the current working
    directory."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    return (REPO_ROOT if IN_SOURCE_CHECKOUT else Path.cwd()) / path



def model_location(name_or_path: str, what: str = "policy_path") -> str:
    """A model's local folder (``repo_path``'s rule for relative paths) or its hub id, checked before any work:
    a folder must hold ``config.json``; anything else must be a hub id (``owner/name``), and while
    ``HF_HUB_OFFLINE`` is set it must be in the local Hugging Face cache. Raises ValueError naming the problem."""
    path = repo_path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{what}={name_or_path!r}: {path} is a folder without config.json, not a model folder "
                             f"(save_pretrained and a downloaded hub snapshot write one)")
        return str(path)
    if path.exists():
        raise ValueError(f"{what}={name_or_path!r}: {path} is a file; give a model folder (with config.json) or a "
                         f"hub id such as Qwen/Qwen2.5-VL-3B-Instruct")
    if not HUB_ID.fullmatch(str(name_or_path)):
        raise ValueError(f"{what}={name_or_path!r} is neither a model folder (there is no folder {path}) nor a hub "
                         f"id (owner/name, such as Qwen/Qwen2.5-VL-3B-Instruct)")
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(str(name_or_path), "config.json"), str):
        raise ValueError(f"{what}={name_or_path!r}: there is no folder {path}, and the hub model {name_or_path} is not "
                         f"in the local Hugging Face cache while HF_HUB_OFFLINE=1. Download it first "
                         f"(`huggingface-cli download {name_or_path}` where there is network) or give its folder")
    return str(name_or_path)


def field_help(cls) -> dict[str, str]:
    """Each field's help text (``field(metadata={"help": ...})``, as ``TrainConfig`` and TRL's configs declare it),
    by field name: what ``python -m grto_lib.train --help`` shows."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if "help" in f.metadata}


def check_reward_weights(weights) -> None:
    """Raise ValueError unless ``weights`` maps ``rewards.RewardWeights`` field names to numbers (the allowed keys are
    named)."""
    from .rewards import RewardWeights

    known = [f.name for f in dataclasses.fields(RewardWeights)]
    if not isinstance(weights, dict) or set(weights) - set(known):
        raise ValueError(f"TrainConfig.reward_weights={weights!r}: keys must be among {known}")
    for key, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"TrainConfig.reward_weights[{key!r}] must be a finite number, got {value!r}")


def parse_reward_weights(text: str) -> dict:
    """``--reward-weights``'s value as ``TrainConfig.reward_weights``: ``mask=2,format=0.5`` or the JSON object
    ``{"mask": 2, "format": 0.5}``. Raises ValueError naming the allowed keys (``check_reward_weights``)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            weights = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"TrainConfig.reward_weights={text!r} is not a JSON object: {error}") from None
    else:
        weights = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            try:
                weights[key.strip()] = float(value)
            except ValueError:
                raise ValueError(f"TrainConfig.reward_weights: {item!r} is not key=number (e.g. mask=2,format=0.5)"
                                 ) from None
    check_reward_weights(weights)
    return weights


@dataclass
class TrainConfig:
    """Everything that defines one GRPO / GRTO / B-GRTO run. The first three groups are the method; every field
    that changes the algorithm is here, nothing is hard-coded in ``train``: what must not change is a named constant
    that says why (``TOOL_TRAIN``, ``scorer.PROMPT_POINTS``, ``trainer.SAVE_TOTAL_LIMIT``). Each field's
    ``metadata["help"]`` documents it, and is its flag's ``--help``."""

    # --- the method: GRPO on the policy -----------------------------------------------------------------------
    method: str = field(default="b-grto", metadata={"help":
        "grpo: tool frozen | grto: tool trained on the rollouts | b-grto: BTO bootstrap, then GRTO."})
    steps: int = field(default=100, metadata={"help": "Optimizer steps."})
    prompts_per_step: int = field(default=8, metadata={"help":
        "Distinct prompts (images + queries) per step and per process; each gets ``num_generations`` rollouts "
        "(N processes make a step of N x prompts_per_step prompts)."})
    num_generations: int = field(default=8, metadata={"help":
        "G: rollouts per prompt, the group the advantages are relative to."})
    policy_lr: float = field(default=5e-5, metadata={"help":
        "Policy learning rate (AdamW, constant after warm-up)."})
    warmup_steps: int = field(default=5, metadata={"help":
        "Steps over which the policy's learning rate rises linearly from 0 (capped at ``steps``; the tool's is "
        "constant)."})
    policy_max_grad_norm: float = field(default=1.0, metadata={"help":
        "Largest norm of the policy's gradient per optimizer step (TRL's ``max_grad_norm``; larger ones are scaled "
        "down to it; 0: no clipping). The tool has its own, ``tool_max_grad_norm``."})
    clip_epsilon: float = field(default=0.2, metadata={"help":
        "epsilon of the clipped ratio, clip(rho, 1 - epsilon, 1 + epsilon)."})
    beta: float = field(default=0.0, metadata={"help":
        "KL coefficient towards the reference policy (0: no reference model is kept)."})
    loss_type: str = field(default="grpo", metadata={"help":
        "TRL loss aggregation: grpo | dapo | dr_grpo | bnpo (set explicitly: TRL's default changes)."})
    scale_rewards: str = field(default="group", metadata={"help":
        "Advantage scaling (TRL): group (divide by the group's reward std, as in GRPO) | batch | none (Dr. GRPO: "
        "the raw difference from the group mean)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})
    max_completion_length: int | None = field(default=None, metadata={"help":
        "Longest completion in tokens; a clipped answer fails the format. None: the preset's default (read through "
        "``completion_tokens``, which resolves it where it is used), tiny 128 (the stand-in's completions take "
        "55-100 tokens: its thought lists the objects it sees), paper 512 (room for a real model's reasoning, about "
        "100-300 tokens in Seg-Zero-style R1 training, plus a 30-40-token answer)."})
    reward_weights: dict = field(default_factory=dict, metadata={"help":
        "Overrides of grto_lib.rewards.RewardWeights fields (format, answer, box, points, mask), e.g. "
        "{\"mask\": 2.0}; on the command line mask=2,format=0.5 or that JSON object.",
        "type": parse_reward_weights})

    # --- the method: GRTO on the tool (grto, b-grto) ----------------------------------------------------------
    tool_lr: float = field(default=3e-4, metadata={"help":
        "Tool (mask decoder) learning rate, its own Adam optimizer."})
    tool_loss_weight: float = field(default=1.0, metadata={"help":
        "lambda: weight of the tool loss in the joint surrogate."})
    tool_loss: str = field(default="bce_dice", metadata={"help":
        "Differentiable surrogate of mask IoU: bce_dice | soft_iou."})
    tool_weighting: str = field(default=DEFAULT_TOOL_WEIGHTING, metadata={"help":
        "Which rollouts the tool loss (and BTO) trains on, see losses.tool_loss_weights: on_target (those whose box "
        "matches the target's, box IoU > ``on_target_iou``: the tool never sees the query, so it can only learn to "
        "follow prompts that point at the target) | uniform (every valid rollout: the unbiased estimate of "
        "grad_phi J, which with an unreliable policy teaches the tool to ignore its prompt) | advantage | positive "
        "(ablations)."})
    on_target_iou: float = field(default=DEFAULT_ON_TARGET_IOU, metadata={"help":
        "A rollout is on target (``tool_weighting`` on_target, in GRTO and BTO) when its box's IoU with the "
        "target's tight box exceeds this, in [0, 1). 0.5: the box-accuracy criterion; higher keeps fewer, tighter "
        "boxes."})
    tool_max_grad_norm: float = field(default=1.0, metadata={"help":
        "Largest norm of the tool's gradient per update, in GRTO and BTO (larger ones are scaled down to it; 0: no "
        "clipping)."})
    tool_train: str = field(default="decoder", metadata={"help":
        "Which tool parts GRTO and BTO train: decoder (the mask decoder) | decoder+prompt (also the prompt "
        "encoder's learned embeddings). Not all: the image embeddings are computed without gradients (see "
        "TOOL_TRAIN). It replaces the tool folder's own ``trainable`` (tool_config.json), which only records how "
        "that tool was last trained."})

    # --- the method: BTO, the bootstrap (b-grto only) ---------------------------------------------------------
    bto_prompts: int = field(default=1024, metadata={"help":
        "Prompts whose reference-policy rollouts fill the BTO buffer."})
    bto_steps: int = field(default=200, metadata={"help": "Off-policy tool updates on the buffer."})
    bto_batch: int = field(default=64, metadata={"help": "Rollouts per BTO update."})
    bto_lr: float = field(default=1e-3, metadata={"help": "Tool learning rate during BTO."})

    # --- variants of the method that docs/benchmarks.md measures (the defaults are the method) ----------------
    policy_train: str = field(default="decoder", metadata={"help":
        "Which policy weights RL updates (without LoRA): decoder (the language model's decoder layers, attention "
        "and MLP; the vision tower, token embeddings and output head keep their pretrained values, as under the "
        "paper preset's LoRA) | all."})
    box_threshold: float | None = field(default=None, metadata={"help":
        "None: the box reward is the box IoU. A number t: the indicator IoU > t (Seg-Zero uses 0.5), which pays "
        "nothing for a box that only grazes the target (the IoU pays an inflated box partial credit)."})
    bto_generations: int = field(default=1, metadata={"help":
        "Rollouts per prompt in the BTO buffer. The tool learns more from distinct images than from repeated "
        "rollouts of one: at 1,024 rollouts, 1,024 prompts x 1 gave B-GRTO +0.05 test gIoU over 128 x 8 (3 "
        "settings, 3 seeds each; docs/benchmarks.md 7.7), at the same cost."})

    # --- the setting: data and models -------------------------------------------------------------------------
    dataset: str = field(default="reasonseg", metadata={"help": "Setting: reasonseg | cod | earthreason."})
    data_root: str | None = field(default=None, metadata={"help":
        "None: the synthetic tiny-world generator. A folder: the real release (see grto_lib.data); a relative path "
        "follows ``repo_path``'s rule (the repository root in a clone, else the working directory)."})
    test_data_root: str | None = field(default=None, metadata={"help":
        "Real data only: a separate folder for the test split (COD releases ship train and test as separate "
        "folders, e.g. ``TrainDataset`` and ``TestDataset/COD10K``). None: ``data_root``."})
    preset: str = field(default="tiny", metadata={"help":
        "tiny: the tiny world's stand-ins (CPU, minutes) | paper: Qwen2.5-VL-3B + LoRA and SAM ViT-H."})
    policy_path: str | None = field(default=None, metadata={"help":
        "Policy weights: a hub id (``Qwen/Qwen2.5-VL-3B-Instruct``, ``Qwen/Qwen2.5-VL-7B-Instruct``) or a model "
        "folder (with ``config.json``). None: the preset's default (tiny: the stand-in; paper: the 3B's hub id)."})
    tool_checkpoint: str | None = field(default=None, metadata={"help":
        "SAM weights: a checkpoint file (``sam_vit_h_4b8939.pth``) or a ``save_tool`` folder. None: the tiny "
        "preset's stand-in; the paper preset refuses None unless ``random_tool``."})
    lora: bool = field(default=False, metadata={"help":
        "Train a LoRA adapter instead of all policy weights (the paper preset always does)."})
    lora_rank: int = field(default=16, metadata={"help":
        "LoRA rank r of the adapter on each linear layer of the language model (with ``lora`` or the paper "
        "preset)."})
    lora_alpha: int = field(default=32, metadata={"help":
        "LoRA scaling numerator: the adapter's update is scaled by lora_alpha / lora_rank."})
    lora_dropout: float = field(default=0.05, metadata={"help":
        "Dropout on the LoRA branch's input, in [0, 1)."})
    random_tool: bool = field(default=False, metadata={"help":
        "paper preset without ``tool_checkpoint``: build SAM ViT-H with random weights instead of refusing to run. "
        "For benchmarks of speed and memory only: a random tool makes every mask reward meaningless."})

    # --- the tiny world and the study (synthetic data sizes, the prompt pool) ---------------------------------
    train_size: int = field(default=2000, metadata={"help":
        "Synthetic training samples (ignored for real data)."})
    eval_size: int = field(default=200, metadata={"help":
        "Test samples used by the final evaluation (and the first ``curve_size`` for learning curves)."})
    image_size: int = field(default=128, metadata={"help": "Side of synthetic images in pixels."})
    rl_prompts: int = field(default=0, metadata={"help":
        "RL cycles through the first N prompts of the training order, epoch after epoch (0: all ``train_size``, "
        "each seen about once). N = 5 x ``prompts_per_step`` makes the first and the last 5 steps of a run see the "
        "same prompts, so their mean rewards compare the policy, not the draw (BTO still uses the whole set)."})

    # --- compute: memory and speed (micro_batch and compile_generation keep the numbers) ----------------------
    micro_batch: int | None = field(default=None, metadata={"help":
        "Completions per policy forward/backward (TRL's per_device_train_batch_size); a step still generates all "
        "prompts_per_step * num_generations completions at once and accumulates the loss over micro-batches. "
        "None: all at once (what fits where is in the README's GPU section)."})
    generate_every: int = field(default=1, metadata={"help":
        "Optimizer steps served by one generation call: k > 1 samples the rollouts of k steps in one batch k times "
        "larger, which keeps a GPU busier (measured in docs/benchmarks.md); the rollouts of the later k - 1 steps "
        "are slightly off-policy, which TRL's importance ratio and clipping correct (TRL's ``steps_per_generation`` "
        "= k x gradient-accumulation steps). 1: every step on-policy."})
    compile_generation: bool | None = field(default=None, metadata={"help":
        "Generate with a static key-value cache, whose decoding step transformers compiles with torch.compile on a "
        "GPU (on a CPU the static cache runs uncompiled). The trainer gives the cache one length for the whole "
        "run, so the decoding step compiles once, in the first step (about 100 s at 3B, then 2.7x faster decoding: "
        "a 3B GRTO step of 11.6 s against 31.8 s on one H100, docs/benchmarks.md section 11). None: the preset's "
        "default, read through ``compiles_generation``: paper on, tiny off (its decoding is not launch-bound)."})

    # --- bookkeeping ------------------------------------------------------------------------------------------
    seed: int = field(default=0, metadata={"help": "Seed for data order, sampling and initialisation."})
    output_dir: str = field(default="outputs/run", metadata={"help":
        "Where checkpoints, logs and metrics.json go (a relative path follows ``repo_path``'s rule)."})
    save_steps: int = field(default=50, metadata={"help":
        "Checkpoint every this many steps (and at the end); the run folder keeps the last two "
        "(trainer.SAVE_TOTAL_LIMIT)."})
    curve_every: int = field(default=25, metadata={"help":
        "Evaluate test gIoU every this many steps for the learning curve (0: never)."})
    curve_size: int = field(default=64, metadata={"help": "Test samples used for learning-curve points."})
    logging_steps: int = field(default=5, metadata={"help":
        "Log to the console, log.jsonl and ``report_to`` every this many steps."})
    report_to: str = field(default="none", metadata={"help":
        "Where transformers also sends the logs, beside log.jsonl and metrics.json: none | tensorboard (into "
        "output_dir) | wandb | mlflow | trackio. The integration's package must be installed (pip install "
        "tensorboard, or grto_lib[tensorboard]); a run checks before any work."})

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field and its allowed values (types, ranges, choices; no file is read:
        ``check_paths`` checks the paths)."""
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            allowed = typing.get_args(hint) or (hint,)  # int | None -> (int, NoneType)
            accepted = (*allowed, int) if float in allowed else allowed  # 1 is a fine learning rate
            if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in allowed):
                kinds = " or ".join(TYPE_NAMES.get(t, t.__name__) for t in allowed)
                raise ValueError(f"TrainConfig.{f.name} must be {kinds}, got {value!r}")
        if self.tool_train == "all":
            raise ValueError(f"TrainConfig.tool_train='all' is not allowed: RL computes the image embeddings without "
                             f"gradients, so the image encoder would not train; choose one of {', '.join(TOOL_TRAIN)}")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is not allowed; choose one of "
                                 f"{', '.join(allowed)}")
        for names, low, what in ((POSITIVE, 1, "a positive integer"), (NON_NEGATIVE, 0, "non-negative")):
            for name in names:
                if getattr(self, name) is not None and getattr(self, name) < low:
                    raise ValueError(f"TrainConfig.{name} must be {what}, got {getattr(self, name)!r}")
        total = self.prompts_per_step * self.num_generations
        if self.micro_batch is not None and (self.micro_batch < 1 or total % self.micro_batch):
            raise ValueError(f"TrainConfig.micro_batch={self.micro_batch!r} must be a positive divisor of "
                             f"prompts_per_step * num_generations = {total}")
        if self.num_generations < 2:
            raise ValueError("TrainConfig.num_generations must be >= 2: advantages are relative to the group")
        for name in BELOW_ONE:
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                none = "None or " if name == "box_threshold" else ""
                raise ValueError(f"TrainConfig.{name} must be {none}a number in [0, 1), got {value!r}")
        check_reward_weights(self.reward_weights)
        if self.test_data_root is not None and self.data_root is None:
            raise ValueError("TrainConfig.test_data_root needs data_root (synthetic data has its own test split)")
        if self.preset == "paper" and self.tool_checkpoint is None and not self.random_tool:
            raise ValueError(
                f"TrainConfig(preset='paper') needs tool_checkpoint: the path of SAM ViT-H's official checkpoint "
                f"{SAM_VIT_H_CHECKPOINT} (download it from {SAM_VIT_H_URL}) or of a folder written by save_tool. "
                f"random_tool=True runs a randomly initialised ViT-H instead, for speed and memory benchmarks only")

    def check_paths(self) -> None:
        """Raise ValueError naming the field when a path it gives does not hold what it should (run before any
        work: ``train``, ``runs.load_models`` and ``runs.load_splits`` call it; a config can be built and saved on
        a machine without the data)."""
        for name in ("data_root", "test_data_root"):
            value = getattr(self, name)
            if value is not None and not repo_path(value).is_dir():
                raise ValueError(f"TrainConfig.{name}={value!r} is not a folder (None = synthetic data)")
        if self.policy_path is not None:
            model_location(self.policy_path, "TrainConfig.policy_path")
        if self.tool_checkpoint is not None:
            checkpoint = repo_path(self.tool_checkpoint)
            if not (checkpoint.is_file() or (checkpoint / "tool_config.json").is_file()):
                raise ValueError(f"TrainConfig.tool_checkpoint={self.tool_checkpoint!r}: {checkpoint} is neither a "
                                 f"checkpoint file (.pth, .safetensors) nor a folder written by save_tool")

    def check_report_to(self) -> None:
        """Raise ImportError when ``report_to`` names an integration whose package is not installed (``train``'s
        ``grpo_args`` calls it, so a run fails before any work rather than when transformers builds its logger; a
        config can be built and saved where the package is missing)."""
        package = REPORTERS[self.report_to]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ImportError(f"TrainConfig.report_to={self.report_to!r} needs the {package} package, which is not "
                              f"installed: `pip install {package}`, or report_to='none'")

    @property
    def completion_tokens(self) -> int:
        """The completion limit this run uses: ``max_completion_length``, or when None the preset's
        (``COMPLETION_TOKENS``). Derived here, where it is read, and never stored: a config built any way
        (constructor, ``dataclasses.replace``, ``--config`` plus flags, a resumed run's ``config.json``) resolves the
        same fields to the same limit."""
        return self.max_completion_length or COMPLETION_TOKENS[self.preset]

    @property
    def compiles_generation(self) -> bool:
        """Whether generation runs on a compiled static cache: ``compile_generation``, or when None the preset's
        default (paper on, tiny off), derived where it is read like ``completion_tokens``."""
        return self.preset == "paper" if self.compile_generation is None else self.compile_generation

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
        """Write the fields as JSON, atomically (``files.write_json``)."""
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def from_json(cls, path) -> "TrainConfig":
        """Load a config file; unknown keys are an error naming them, missing ones take their defaults (a run folder
        saved before a field existed ran with what is now its default)."""
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)
