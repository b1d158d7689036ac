"""One entry point for a GRPO / GRTO / B-GRTO run: ``train(TrainConfig)`` in Python, or the command line::

    python -m grto_lib.train --dataset reasonseg --method b-grto --steps 100 --output-dir runs/rs
    python -m grto_lib.train --config my_run.json

What it does, in order: validate the config; load data, the policy and the tool (the preset's stand-ins
unless paths are given); for ``b-grto`` build or reuse the BTO buffer and bootstrap the tool; run
``GRTOTrainer`` (resuming from the last complete checkpoint in ``output_dir``); evaluate on the test split;
write ``output_dir/metrics.json``. Learning-curve points (test gIoU against steps and wall time) are written
to ``output_dir/curve.jsonl`` while it trains.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import time
import typing
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from transformers import TrainerCallback

from .bootstrap import bootstrap_tool, bto_buffer
from .config import TrainConfig, repo_path
from .data import query_kinds, training_order
from .evaluate import evaluate_policy
from .files import json_default, write_json, write_text
from .policy import no_transformers_progress_bars
from .prompts import system_prompt_for, to_trl_rows
from .rewards import RewardWeights
from .runs import load_models, load_splits
from .scorer import TERMS, RolloutScorer
from .tool import WEIGHTS_FILE
from .trainer import SAVE_TOTAL_LIMIT, GRTOTrainer, last_complete_checkpoint, load_tool_state, save_tool_state

RESUMABLE_CHANGES = ("steps", "output_dir", "save_steps", "logging_steps", "report_to", "curve_every", "curve_size",
                     "eval_size", "micro_batch")
"""The only ``TrainConfig`` fields a resumed run may change (length, bookkeeping, evaluation, memory); every other
field determines the training numbers and must equal the run folder's saved config."""
BTO_TOOL_DIR = "bto_tool"
"""Where ``run_bto`` saves the bootstrapped tool, in the run folder."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_run_folder(config: TrainConfig) -> None:
    """A run folder belongs to one configuration: raise ValueError if ``config.output_dir`` holds checkpoints of
    another (``train`` calls it before anything is written; a notebook that writes into the folder first calls it
    too)."""
    out = repo_path(config.output_dir)
    if not (out / "config.json").is_file() or last_complete_checkpoint(out) is None:
        return
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = json.loads((out / "config.json").read_text())  # a field newer than the saved config had its default then
    saved = _run_settings(TrainConfig(**{k: v for k, v in saved.items() if k in known}))
    requested = _run_settings(config)
    differ = {k: (saved[k], requested[k]) for k in requested if saved[k] != requested[k]}
    if differ:
        raise ValueError(f"{out} holds checkpoints of another configuration (saved vs requested: {differ}); "
                         f"choose another output_dir or delete that folder")


def _run_settings(config: TrainConfig) -> dict:
    """The fields that determine a run's numbers (all but ``RESUMABLE_CHANGES``), derived values resolved."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)
                if f.name not in RESUMABLE_CHANGES}
    settings["max_completion_length"] = config.completion_tokens
    settings["compile_generation"] = config.compiles_generation
    return settings


class _LearningCurve(TrainerCallback):
    """Test gIoU every ``every`` steps on a fixed test subset, against steps and training wall time."""

    def __init__(self, evaluate, every: int, path: Path, time_offset: float):
        self.evaluate, self.every, self.path = evaluate, every, path
        self.time_offset = time_offset  # seconds spent before RL (the BTO bootstrap)
        self.points = [json.loads(l) for l in path.read_text().splitlines()] if path.is_file() else []
        self.train_seconds, self._last = 0.0, None

    def _record(self, step: int, model) -> None:
        if any(p["step"] == step for p in self.points):
            return
        scores = self.evaluate(model)
        self.points.append({"step": step, "seconds": round(self.time_offset + self.train_seconds, 2), **scores})
        write_text(self.path, "".join(json.dumps(p) + "\n" for p in self.points))

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.points = [p for p in self.points if p["step"] <= state.global_step]
        if self.points:
            self.train_seconds = self.points[-1]["seconds"] - self.time_offset
        self._record(state.global_step, model)
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.train_seconds += time.perf_counter() - self._last
        if self.every and state.global_step % self.every == 0:
            self._record(state.global_step, model)
        self._last = time.perf_counter()


class _LogFile(TrainerCallback):
    """Appends every logged entry (training reward, losses, timings) to ``path`` as it is logged, so a run cut short
    keeps its training curve (``metrics.json`` holds the same entries, written at the end)."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.is_file():  # resumed: drop what came after the checkpoint
            kept = [l for l in self.path.read_text().splitlines() if json.loads(l)["step"] <= state.global_step]
            write_text(self.path, "".join(l + "\n" for l in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}, default=json_default) + "\n")


def grpo_args(config: TrainConfig, out: Path, **overrides):
    """TRL's GRPOConfig for ``config``; everything version-sensitive is set explicitly. ``overrides`` are further
    GRPOConfig fields that replace these (e.g. ``report_to=[]`` in a benchmark). Raises ImportError when
    ``config.report_to``'s package is not installed (``TrainConfig.check_report_to``)."""
    from trl import GRPOConfig

    if "report_to" not in overrides:
        config.check_report_to()
    on_gpu = torch.cuda.is_available()
    completions = config.prompts_per_step * config.num_generations
    micro_batch = config.micro_batch or completions
    accumulation = completions // micro_batch
    return GRPOConfig(**{**dict(
        output_dir=str(out),
        max_steps=config.steps,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation * config.generate_every,
        num_generations=config.num_generations,
        learning_rate=config.policy_lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(config.warmup_steps, config.steps),
        max_grad_norm=config.policy_max_grad_norm,
        beta=config.beta,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        epsilon=config.clip_epsilon,
        temperature=config.temperature,
        top_p=1.0,
        cache_implementation="static" if config.compiles_generation else None,
        pad_to_multiple_of=64 if config.compiles_generation else None,
        max_completion_length=config.completion_tokens,
        reward_weights=[getattr(RewardWeights(**config.reward_weights), term) for term in TERMS],
        bf16=on_gpu and config.preset == "paper",
        use_cpu=not on_gpu,
        activation_checkpointing=config.preset == "paper",  # TRL 1.16's gradient_checkpointing defaults to True
        remove_unused_columns=False,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=SAVE_TOTAL_LIMIT,
        report_to=config.report_to,
        seed=config.seed,
        data_seed=config.seed,
        shuffle_dataset=False,  # build_trainer orders the prompts (data.training_order)
        disable_tqdm=False,
        dataloader_num_workers=0,
    ), **overrides})


def _training_rows(train_set, policy_image_size: int, system_prompt: str, seed: int, rl_prompts: int = 0):
    """TRL's training dataset: ``to_trl_rows`` of the samples training visits, in its order
    (``data.training_order``); each row is built, its image read, when TRL reads it."""
    order = training_order(query_kinds(train_set), seed, rl_prompts)
    return to_trl_rows(train_set, policy_image_size, system_prompt, order)


def build_trainer(config: TrainConfig, policy, processor, tool, train_set, policy_image_size: int, *,
                  scorer: RolloutScorer | None = None, args=None, **grpo_overrides) -> GRTOTrainer:
    """The GRTOTrainer of ``config`` over ``train_set`` (what ``train`` runs; handy in notebooks and tests).
    ``args``: the GRPOConfig, when the caller built it already (``train`` does, to place the models first);
    otherwise ``grpo_args(config, ...)`` with ``grpo_overrides``. Benchmarks may pass their own ``scorer``."""
    if args is not None and grpo_overrides:
        raise ValueError("build_trainer takes either args or GRPOConfig overrides, not both")
    scorer = scorer or RolloutScorer(train_set, tool, policy_image_size, box_threshold=config.box_threshold,
                                     on_target_iou=config.on_target_iou)
    return GRTOTrainer(
        model=policy, processing_class=processor,
        args=args or grpo_args(config, repo_path(config.output_dir), **grpo_overrides),
        train_dataset=_training_rows(train_set, policy_image_size, system_prompt_for(processor), config.seed,
                                     config.rl_prompts),
        scorer=scorer,
        train_tool=config.trains_tool,
        tool_lr=config.tool_lr, tool_loss_weight=config.tool_loss_weight, tool_loss=config.tool_loss,
        tool_weighting=config.tool_weighting, tool_max_grad_norm=config.tool_max_grad_norm,
    )


def train(config: TrainConfig, *, resume: bool = True, extra_callbacks=()) -> dict:
    """Run ``config`` end to end; returns (and writes to ``metrics.json``) the results.

    The models go to this process's device (TRL's accelerator's: ``cuda:<local rank>`` on GPUs, else the CPU)
    as they are loaded, before any work: BTO, RL and evaluation all run there. ``metrics.json`` records, per phase,
    the seconds, where each model was (``devices``) and the peak GPU memory (``memory``, GiB; None on a CPU).

    Under ``torchrun`` / ``accelerate launch`` with several processes, every process trains, and the main process
    alone does the rest: it writes every file of the run folder, builds the BTO buffer and bootstraps the tool
    (the others wait, then load that tool, and all check that their tools are identical before RL starts), records
    the learning curve and evaluates. It returns the metrics (with ``distributed``: whether all processes ended
    with identical policy and tool parameters); the others return ``{}``.
    """
    config.validate()  # again: fields may have been changed since the config was built
    config.check_paths()
    check_run_folder(config)
    out = repo_path(config.output_dir)
    args = grpo_args(config, out)
    device = args.device  # with several processes, asking for it starts their process group
    main = args.process_index == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        config.to_json(out / "config.json")
    seed_everything(config.seed)
    clock = time.perf_counter()
    train_set, test_set = load_splits(config)
    policy, processor, tool, policy_image_size = load_models(config, device)
    timing = {"load_seconds": time.perf_counter() - clock, "bto_seconds": 0.0}
    devices, memory = {}, {"load": _peak_gib(device)}

    if config.method == "b-grto":
        devices["bto"] = model_devices(policy, tool)
        if main:
            timing.update(run_bto(config, policy, processor, tool, train_set, policy_image_size, out))
        if args.world_size > 1:
            PartialState().wait_for_everyone()
            if not main:
                load_tool_state(tool, None, out / BTO_TOOL_DIR)
            in_sync = parameters_in_sync({"tool": tool}, device)
            if not in_sync["tool"]:
                raise RuntimeError(f"the bootstrapped tool differs between processes ({in_sync})")
        memory["bto"] = _peak_gib(device)

    trainer = build_trainer(config, policy, processor, tool, train_set, policy_image_size, args=args)
    curve_indices = list(range(min(config.curve_size, len(test_set))))
    curve = _LearningCurve(
        lambda model: _curve_scores(model, processor, tool, test_set, policy_image_size, curve_indices, config),
        config.curve_every, out / "curve.jsonl", timing["bto_seconds"])
    steps = _StepRecord(trainer, devices)
    for callback in ([curve] if config.curve_every and main else []) + [_LogFile(out / "log.jsonl"), steps,
                                                                         *extra_callbacks]:
        trainer.add_callback(callback)

    checkpoint = last_complete_checkpoint(out) if resume else None
    clock = time.perf_counter()
    final = out / "final"
    with no_transformers_progress_bars():  # checkpoints save in moments; TRL's own progress bar stays
        trainer.train(resume_from_checkpoint=checkpoint)
        timing["train_seconds"] = time.perf_counter() - clock
        clock = time.perf_counter()
        trainer.save_model(str(final / "policy"))
    timing["rl_seconds_excluding_eval"] = curve.train_seconds if config.curve_every else timing["train_seconds"]
    timing["rl_step_seconds"] = steps.seconds
    timing["checkpoint_seconds"] = trainer.checkpoint_seconds
    memory["rl"] = _peak_gib(device)

    in_sync = None
    if args.world_size > 1:
        in_sync = {"processes": args.world_size, **parameters_in_sync({"policy": policy, "tool": tool}, device)}
        PartialState().wait_for_everyone()
        torch.distributed.destroy_process_group()  # before the other processes exit; the rest is the main's
    if not main:
        # Free the DDP-wrapped trainer (and the gloo work objects it holds) now: left to interpreter shutdown, their
        # C++ threads can abort the process ("terminate called without an active exception").
        del trainer
        gc.collect()
        return {}
    processor.save_pretrained(str(final / "policy"))
    save_tool_state(tool, None, final / "tool")
    timing["final_save_seconds"] = time.perf_counter() - clock
    clock = time.perf_counter()
    devices["evaluation"] = model_devices(policy, tool)
    test_scores = evaluate_policy(policy, processor, tool, test_set, policy_image_size,
                                  max_new_tokens=config.completion_tokens)
    timing["evaluation_seconds"] = time.perf_counter() - clock
    memory["evaluation"] = _peak_gib(device)
    metrics = {
        "config": dataclasses.asdict(config),
        "test": test_scores,
        "curve": curve.points if config.curve_every else [],
        "timing": timing,
        "devices": devices,
        "memory": memory,
        "resumed_from": checkpoint,
        "distributed": in_sync,
        "log_history": trainer.state.log_history,
    }
    write_json(out / "metrics.json", metrics)
    return metrics


class _StepRecord(TrainerCallback):
    """Each optimizer step's wall seconds (``seconds``; checkpoint saving and learning-curve evaluation excluded),
    and where the policy and the tool are when RL starts (``devices["rl"]``)."""

    def __init__(self, trainer: GRTOTrainer, devices: dict):
        self.trainer, self.devices, self.seconds = trainer, devices, []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.devices["rl"] = model_devices(model, self.trainer.tool)

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(round(time.perf_counter() - self._start, 3))


def model_devices(policy, tool) -> dict:
    """Where each model's parameters are, e.g. ``{"policy": "cuda:0", "tool": "cuda:0"}`` (a model spread over
    several devices lists them all, comma-separated)."""
    return {name: ",".join(sorted({str(p.device) for p in module.parameters()}))
            for name, module in (("policy", policy), ("tool", tool))}


def _peak_gib(device) -> float | None:
    """Peak GPU memory allocated on ``device`` since the last call, in GiB (then reset); None on a CPU."""
    if torch.device(device).type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 3)


def parameters_in_sync(modules: dict, device) -> dict:
    """Whether every process holds the same parameters, per module of ``modules`` (name: module): a fingerprint
    (sum, sum of squares and a fixed random projection, in float64, one parameter at a time so a 3B model needs
    no copy) is gathered from every process and compared exactly."""
    from accelerate.utils import gather

    result = {}
    for name, module in modules.items():
        fingerprint = torch.zeros(3, dtype=torch.float64, device=device)
        generator = torch.Generator(device=device).manual_seed(0)
        for p in module.parameters():
            x = p.detach().to(device, torch.float64).flatten()
            weights = torch.rand(x.numel(), generator=generator, device=device, dtype=torch.float64)
            fingerprint += torch.stack([x.sum(), (x * x).sum(), (x * weights).sum()])
        gathered = gather(fingerprint.unsqueeze(0)).cpu()
        result[name] = bool((gathered == gathered[0]).all())
    return result


def _curve_scores(model, processor, tool, test_set, policy_image_size, indices, config) -> dict:
    scores = evaluate_policy(model, processor, tool, test_set, policy_image_size, indices=indices,
                             with_cod=False, max_new_tokens=config.completion_tokens)
    return {k: scores[k] for k in ("giou", "ciou", "box_acc", "format_valid")}


def run_bto(config: TrainConfig, policy, processor, tool, train_set, policy_image_size, out: Path) -> dict:
    """Build (or reuse, when its fingerprint matches) the BTO buffer, bootstrap the tool on it, save that tool in
    ``out / BTO_TOOL_DIR``. The models run where they are (``train`` placed them on its device)."""
    start = time.perf_counter()
    records, _ = bto_buffer(policy, processor, tool, train_set, out / "bto_buffer", n_prompts=config.bto_prompts,
                            generations=config.bto_generations, policy_image_size=policy_image_size,
                            temperature=config.temperature, max_new_tokens=config.completion_tokens,
                            seed=config.seed)
    buffer_seconds = time.perf_counter() - start
    tool_dir = out / BTO_TOOL_DIR
    if last_complete_checkpoint(out) is not None and (tool_dir / WEIGHTS_FILE).is_file():
        load_tool_state(tool, None, tool_dir)  # resumed: BTO was done (the checkpoint's tool replaces it in RL)
        return {"bto_seconds": json.loads((out / "bto.json").read_text())["bto_seconds"]}
    result = bootstrap_tool(tool, train_set, records, steps=config.bto_steps, lr=config.bto_lr,
                            batch_size=config.bto_batch, loss_kind=config.tool_loss, seed=config.seed,
                            weighting=config.bto_weighting, max_grad_norm=config.tool_max_grad_norm,
                            on_target_iou=config.on_target_iou)
    save_tool_state(tool, None, tool_dir)
    summary = {"bto_seconds": buffer_seconds + result["seconds"], "bto_buffer_seconds": buffer_seconds,
               "bto_tool_seconds": result["seconds"], "bto_trained_rollouts": result["trained_rollouts"],
               "bto_losses": result["losses"]}
    write_json(out / "bto.json", summary)
    return {k: v for k, v in summary.items() if k != "bto_losses"}


@dataclasses.dataclass
class CommandLine:
    """The command line's own flags, beside one flag per ``TrainConfig`` field."""

    config: str | None = dataclasses.field(default=None, metadata={"help":
        "A JSON file of TrainConfig fields; the other flags override it."})
    threads: int = dataclasses.field(default=1, metadata={"help":
        "torch CPU threads (1: what 2-core machines need)."})


def parse_bool(text: str) -> bool:
    """A boolean flag's value: true/false, yes/no, 1/0 (any case)."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean: give true or false")
    return value


def _parser_of(parse):
    """``parse`` as an argparse ``type``, its ValueError's message shown as the flag's error (argparse shows only
    the function's name for a ValueError)."""
    def convert(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    convert.__name__ = parse.__name__
    return convert


def add_field_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of the dataclass ``cls``: ``--micro-batch`` or ``--micro_batch``, its help the field's
    ``metadata["help"]``, its default the field's. The value is read by the field's ``metadata["type"]`` when it has
    one (``TrainConfig.reward_weights``: ``config.parse_reward_weights``), else by its type, None aside
    (``int | None`` reads an int); a boolean flag alone means true (``--lora``), or takes a value (``--lora false``).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kinds = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)]
        options = {"type": parse_bool, "nargs": "?", "const": True} if kinds == [bool] else {"type": kinds[0]}
        if "type" in f.metadata:
            options["type"] = _parser_of(f.metadata["type"])
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        parser.add_argument(*dict.fromkeys([f"--{f.name.replace('_', '-')}", f"--{f.name}"]), dest=f.name,
                            default=default, help=f.metadata["help"].replace("%", "%%"), **options)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as it is written, and each flag's default after its help."""


def parse_args(argv=None) -> tuple[TrainConfig, int]:
    """``(config, threads)`` from the command line: one flag per field of ``TrainConfig`` and ``CommandLine``
    (``add_field_flags``: each field's ``metadata["help"]`` is its ``--help``), with the fields of ``--config`` as
    defaults. Every value is checked by ``TrainConfig`` itself."""
    parser = argparse.ArgumentParser(prog="python -m grto_lib.train", description=__doc__,
                                     usage="%(prog)s [--config FILE] [--FIELD VALUE ...] (--help lists the fields)",
                                     formatter_class=_HelpFormatter)
    add_field_flags(parser, TrainConfig)
    add_field_flags(parser, CommandLine)
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**dataclasses.asdict(TrainConfig.from_json(known.config)))
    values = vars(parser.parse_args(argv))
    options = CommandLine(**{f.name: values.pop(f.name) for f in dataclasses.fields(CommandLine)})
    return TrainConfig(**values), options.threads


def main(argv=None) -> None:
    config, threads = parse_args(argv)
    torch.set_num_threads(threads)
    metrics = train(config)
    if metrics:  # the main process (others return {})
        print(json.dumps({"test": metrics["test"], "timing": metrics["timing"]}, indent=2, default=json_default))


if __name__ == "__main__":
    main()
