"""Compiled static-cache decoding outside and inside ``GRTOTrainer``, one piece of TRL's call at a time (issue 33).

Outside the trainer, ``generate`` with a static cache whose decoding step transformers compiles samples the paper
policy (random 3B, fast paths + LoRA, bf16) on left-padded prompts of two lengths without NaN; inside,
``paper_step.py --variants fast_grto_compiled`` failed in the first RL step's sampling ("probability tensor
contains either inf, nan or element < 0"). The variants below start from that working call and add TRL's pieces
one at a time (each of the chain keeps the ones before it; ``VARIANTS`` runs the decisive ones first):

* ``probe_eval``: the working call: eval mode, prompts padded by the processor (to a multiple of 64), the
  benchmark's sampling settings (``bench_paper.generation_config``) with ``cache_implementation="static"`` and an
  explicit ``CompileConfig``;
* ``probe_train_ckpt``: train mode (LoRA dropout on) and gradient checkpointing switched on (its hook on the input
  embeddings included);
* ``trainer_built``: a ``GRTOTrainer`` built on the policy (``grto_lib.train.build_trainer``, as ``paper_step.py``
  builds it): TRL wraps the base model's ``forward`` (fused LM head), the Trainer sets ``config.use_cache=False``,
  TRL adds its input-embedding hook;
* ``trl_config``: TRL's ``GenerationConfig`` as the trainer built it (``disable_compile`` lifted);
* ``trl_inputs``: the prompts as TRL tokenizes and pads them (captured from ``_generate``, padded with TRL's code);
* ``trl_unwrap``: inside TRL's ``unwrap_model_for_generation`` (gradient checkpointing switched off and on around
  the call, one more embedding hook each time);
* ``trl_call``: TRL's whole ``_generate_single_turn``;
* ``fixed_call``: ``GRTOTrainer._generate_single_turn`` with ``compiled_generation`` (the fix: one static-cache
  length for the run, transformers' own forward in the compiled graph, the embedding hooks set aside), over three
  generation batches (prompts of other lengths);
* ``trainer_steps``: ``trainer.train()`` for ``--steps`` steps on a fresh policy with TRL's generation call (the
  accelerator's bf16 wrapper, the backward between generations); ``trainer_steps_hooks`` the same with
  ``paper_step.py``'s former timing hooks on the language model (a device synchronisation inside the compiled
  region), i.e. the failing run; ``trainer_steps_fixed`` with the fix;
* ``greedy``: greedy completions of the fixed compiled path against the eager dynamic cache (eval mode), the
  fraction of identical tokens and the log-probability differences up to each row's first divergence;
* ``trl_call_eval``, ``trl_call_cudnn_off``: TRL's call in eval mode, and with cuDNN attention off.

Every generation runs with two logits processors around transformers' own: the first counts rows whose raw logits
hold NaN or inf (the first is the prefill's), the last rows that sampling could not draw from; such a row's scores
are replaced by zeros (a uniform draw) so that the process goes on instead of dying on a device-side assert, and the
row is reported. A one-shot hook on the prefill counts non-finite hidden states at real and pad positions and reads
the model's state there (autocast, training, checkpointing). Each variant writes one JSON row to
``OUT/results.jsonl`` as soon as it is measured: ``ok``, the seconds of each call (the first compiles), the
diagnostics, the sampled tokens' validity, dynamo's graph and graph-break counts and the model's state; an error
is recorded with its chained cause and the next variant runs.

With ``--isolate`` (the default on a GPU) the variants run in child processes: a child that dies (a device-side
assert ends its CUDA context) is recorded and a new child continues with the next variant. ``--layers N`` builds
the 3B with N text layers (each compile takes seconds instead of about 100 s); confirm on the full depth.

On a CPU, transformers never compiles on its own; ``CompileConfig._compile_all_devices`` makes it compile there
too, with ``--compile-backend eager`` (dynamo only: the same graphs, guards and recompilations) by default::

    python benchmarks/compile_decode.py --size tiny --out /tmp/cd
    PYTHONUNBUFFERED=1 python3 benchmarks/compile_decode.py --size paper --layers 4 --out $OUT/l4
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_paper import (SIZES, Recorder, build_data, build_policy, build_processor, build_tool, cleanup,  # noqa: E402
                         cuda, environment, forced_valid_scorer_class, generation_config, memory, special_ids, sync)

VARIANTS = ("probe_eval", "trainer_steps_hooks", "trainer_steps", "trainer_steps_fixed", "trl_call", "fixed_call",
            "probe_train_ckpt", "trainer_built", "trl_config", "trl_inputs", "trl_unwrap", "greedy", "trl_call_eval",
            "trl_call_cudnn_off")
"""The default order: the decisive runs first (the working call, the failing run, TRL's run without the timing
hooks, the fix, TRL's call and the fixed call alone), then the chain from the working call to TRL's call."""


# ----------------------------------------------------------------------------------------------------------------
# Diagnostics around one generate call
# ----------------------------------------------------------------------------------------------------------------

class Watch:
    """Counts, on the device, the rows whose raw logits are not finite (``raw``) and the rows sampling cannot draw
    from (``final``: a NaN or +inf score, or every score -inf), with the first step of each; a bad row's final
    scores become zeros (a uniform draw) so that sampling goes on. Read once, after ``generate``."""

    def __init__(self):
        self.step, self.state = 0, {}

    def _note(self, kind: str, bad: torch.Tensor) -> None:
        if kind not in self.state:
            self.state[kind] = (torch.zeros_like(bad), torch.full(bad.shape, -1, device=bad.device))
        seen, first = self.state[kind]
        self.state[kind] = (seen | bad, torch.where(bad & (first < 0), torch.full_like(first, self.step), first))

    def processors(self):
        from transformers import LogitsProcessor

        watch = self

        class Raw(LogitsProcessor):
            def __call__(self, input_ids, scores):
                bad = ~torch.isfinite(scores).all(-1)
                if watch.step == 0:
                    watch._note("prefill", bad)
                watch._note("raw", bad)
                return scores

        class Final(LogitsProcessor):
            def __call__(self, input_ids, scores):
                bad = torch.isnan(scores).any(-1) | torch.isposinf(scores).any(-1) | torch.isneginf(scores).all(-1)
                watch._note("final", bad)
                watch.step += 1
                return torch.where(bad[:, None], torch.zeros_like(scores), scores)

        return Raw(), Final()

    @contextlib.contextmanager
    def installed(self, base):
        """``base._get_logits_processor`` returns transformers' processors between this watch's two."""
        from transformers import LogitsProcessorList

        original = base._get_logits_processor

        def with_watch(*args, **kwargs):
            raw, final = self.processors()
            return LogitsProcessorList([raw, *original(*args, **kwargs), final])

        base._get_logits_processor = with_watch
        try:
            yield self
        finally:
            del base._get_logits_processor

    def summary(self) -> dict:
        out = {"steps": self.step}
        for kind, (seen, first) in self.state.items():
            rows = torch.nonzero(seen).flatten().tolist()
            out[f"{kind}_bad_rows"] = rows
            if rows and kind != "prefill":
                out[f"{kind}_first_bad_step"] = int(first[seen].min())
        return out


class Prefill:
    """One-shot hooks on the prefill (removed inside it, so the compiled decoding step never sees them): the model's
    state there, and non-finite hidden states of the language model at real and pad positions."""

    def __init__(self, pad_id: int):
        self.pad_id, self.result, self.handles = pad_id, {}, []

    @contextlib.contextmanager
    def installed(self, base):
        state = {}

        def before(module, args, kwargs):
            ids = kwargs.get("input_ids")
            state["pad"] = None if ids is None else ids == self.pad_id
            device = "cuda" if cuda() else "cpu"
            layers = [m for m in base.modules() if hasattr(m, "gradient_checkpointing")]
            self.result.update(
                training=base.training, autocast=torch.is_autocast_enabled(device), grad=torch.is_grad_enabled(),
                checkpointing=any(m.gradient_checkpointing for m in layers),
                config_use_cache=base.config.get_text_config().use_cache,
                trl_forward_wrapper="forward" in base.__dict__,
                embedding_hooks=len(base.get_input_embeddings()._forward_hooks),
                prompt_tokens=None if ids is None else int(ids.shape[1]),
                pads_per_row=None if ids is None else state["pad"].sum(1).tolist())
            self.handles[0].remove()

        def after(module, args, kwargs, output):
            hidden, pad = output.last_hidden_state, state.get("pad")
            bad = ~torch.isfinite(hidden).all(-1)
            if pad is not None and pad.shape == bad.shape:
                finite = hidden.float().nan_to_num(0.0, 0.0, 0.0).abs().amax(-1)
                self.result.update(hidden_nonfinite_real=int(bad[~pad].sum()), hidden_nonfinite_pad=int(bad[pad].sum()),
                                   hidden_absmax_real=round(float(finite[~pad].max()), 2))
            else:
                self.result.update(hidden_nonfinite=int(bad.sum()))
            self.handles[1].remove()

        self.handles = [base.register_forward_pre_hook(before, with_kwargs=True),
                        base.model.language_model.register_forward_hook(after, with_kwargs=True)]
        try:
            yield self
        finally:
            for handle in self.handles:
                handle.remove()


def token_check(completions, vocab: int, suppressed: list[int]) -> dict:
    """Validity of sampled completions (a tensor of ids or TRL's lists of ids)."""
    rows = completions.tolist() if torch.is_tensor(completions) else completions
    flat = [t for row in rows for t in row]
    banned = set(suppressed)
    return {"completions": len(rows), "tokens": len(flat), "out_of_vocab": sum(not 0 <= t < vocab for t in flat),
            "suppressed_sampled": sum(t in banned for t in flat)}


def dynamo_stats() -> dict:
    from torch._dynamo.utils import counters
    return {"unique_graphs": counters["stats"]["unique_graphs"], "graph_breaks": dict(counters["graph_break"]),
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}


def delta(before: dict, after: dict) -> dict:
    """What dynamo did between two ``dynamo_stats``: graphs compiled, graph breaks (with the first line of each
    new reason), CUDA graphs skipped."""
    breaks = {reason.splitlines()[0][:160]: n - before["graph_breaks"].get(reason, 0)
              for reason, n in after["graph_breaks"].items() if n > before["graph_breaks"].get(reason, 0)}
    return {"unique_graphs": after["unique_graphs"] - before["unique_graphs"],
            "graph_breaks": sum(breaks.values()), "graph_break_reasons": breaks,
            "cudagraph_skips": after["cudagraph_skips"] - before["cudagraph_skips"]}


def reset_compiled(base) -> None:
    """Forget compiled graphs and the static cache's remembered length, so a variant's first call compiles."""
    torch._dynamo.reset()
    for name in ("_compiled_call", "_last_compile_config", "_previous_max_cache_length"):
        base.__dict__.pop(name, None)


def describe(error: BaseException) -> str:
    """The error and its chained causes (a failing synchronisation must not hide the error it interrupted)."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        parts.append(f"{type(error).__name__}: {str(error)[:600]}")
        error = error.__cause__ or error.__context__
    return " <- ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# TRL's pieces
# ----------------------------------------------------------------------------------------------------------------

def trl_generate_inputs(trainer, prompt_ids, multimodal_fields) -> dict:
    """The tensors TRL 1.16's ``_generate_single_turn`` hands to ``generate`` (regular transformers path, no tool
    images): prompts left padded to ``pad_to_multiple_of``, per-token fields padded alike, moved to the device."""
    import numpy as np
    from transformers import Trainer
    from trl.trainer.utils import pad

    tensors = [torch.tensor(ids) for ids in prompt_ids]
    multiple = trainer.pad_to_multiple_of
    inputs = {"input_ids": pad(tensors, padding_value=trainer._tokenizer.pad_token_id, padding_side="left",
                               pad_to_multiple_of=multiple),
              "attention_mask": pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left",
                                    pad_to_multiple_of=multiple)}
    for key, value in multimodal_fields.items():
        if isinstance(value, torch.Tensor):
            inputs[key] = value
        elif isinstance(value, list) and value and isinstance(value[0], list):
            inputs[key] = pad([torch.tensor(x) for x in value], padding_value=0, padding_side="left",
                              pad_to_multiple_of=multiple)
        else:
            inputs[key] = torch.tensor(np.array(value))
    return Trainer._prepare_inputs(trainer, inputs)


def trl_batches(trainer, n: int) -> list[tuple]:
    """The arguments of TRL's ``_generate_single_turn`` for the first ``n`` generation batches of the trainer's
    data loader (TRL's prompt order, images and tokenization), captured without generating."""
    captured = []

    class Captured(Exception):
        pass

    def capture(*args, **kwargs):
        captured.append(args)
        raise Captured

    trainer.model.train()  # TRL asks for num_generations completions in train mode
    loader = iter(trainer.get_train_dataloader())
    trainer._generate_single_turn = capture
    try:
        for _ in range(n):
            with contextlib.suppress(Captured):
                trainer._generate_and_score_completions(next(loader))
    finally:
        del trainer._generate_single_turn
    return captured


def timing_hooks(base):
    """``paper_step.py``'s former timing of the language model and the vision tower: forward hooks that synchronise
    the device and read the clock, on modules the compiled decoding step calls."""
    handles = []
    for module in (base.model.language_model, base.model.visual):
        def before(mod, args, kwargs):
            sync()
            mod._timing_start = time.perf_counter()

        def after(mod, args, kwargs, output):
            sync()
            mod._timing_seconds = time.perf_counter() - mod._timing_start

        handles += [module.register_forward_pre_hook(before, with_kwargs=True),
                    module.register_forward_hook(after, with_kwargs=True)]
    return handles


# ----------------------------------------------------------------------------------------------------------------
# The lab: models, trainers and inputs, built when a variant first needs them
# ----------------------------------------------------------------------------------------------------------------

class Lab:
    def __init__(self, opts, record):
        from transformers import CompileConfig

        self.opts, self.record = opts, record
        self.device = "cuda" if cuda() else "cpu"
        self.dtype = torch.bfloat16 if cuda() else torch.float32
        size = copy.deepcopy(SIZES[opts.size])
        if opts.layers:
            size["arch"]["text"]["num_hidden_layers"] = opts.layers
        self.size = size
        self.dataset = build_data(size, 32)
        self.processor = build_processor(self.dataset, size["policy_px"])
        self.processor.tokenizer.padding_side = "left"
        self.tokenizer = self.processor.tokenizer
        self.pad_id = self.tokenizer.pad_token_id
        self.suppressed = special_ids(self.tokenizer)
        self.vocab = size["arch"]["text"]["vocab_size"]
        self.compile_config = CompileConfig(backend=opts.compile_backend, mode=opts.compile_mode)
        if not cuda():
            self.compile_config._compile_all_devices = True  # transformers compiles only on accelerators otherwise
        self._policy = self._tool = self._trainer = None
        self._batches = []
        self.policy_touched = False  # a trainer has trained (or wrapped) the current policy

    # --- models ---------------------------------------------------------------------------------------------
    def policy(self, fresh: bool = False):
        from grto_lib.policy import PolicyConfig, prepare_policy

        if fresh or self._policy is None:
            self.drop_trainer()
            if self._policy is not None:
                reset_compiled(self.base())
                self._policy = None
                cleanup()
            torch.manual_seed(0)
            model = build_policy(self.size["arch"], self.tokenizer, self.device, self.dtype)
            self._policy = prepare_policy(model, PolicyConfig(preset="paper", lora=True))
            self.policy_touched = False
        return self._policy

    def base(self):
        return self.policy().get_base_model()

    def tool(self):
        if self._tool is None:
            self._tool = build_tool(self.size["tool"], self.device)
        return self._tool

    def trainer(self, fresh: bool = False, steps: int = 1):
        """A ``GRTOTrainer`` with ``compile_generation`` on the current policy, built as ``paper_step.py`` builds
        its ``fast_grto_compiled`` variant."""
        from grto_lib.config import TrainConfig
        from grto_lib.train import build_trainer

        if fresh or self._trainer is None:
            self.drop_trainer()
            out = tempfile.mkdtemp()
            config = TrainConfig(method="grto", preset="paper", random_tool=True, prompts_per_step=self.opts.prompts,
                                 num_generations=self.opts.group, steps=steps,
                                 max_completion_length=self.opts.max_new_tokens, logging_steps=1, curve_every=0,
                                 warmup_steps=0, output_dir=out, tool_weighting="uniform", compile_generation=True)
            tool = self.tool()
            tool.set_trainable("decoder")
            scorer = forced_valid_scorer_class()(self.dataset, tool, self.size["policy_px"])
            trainer = build_trainer(config, self.policy(), self.processor, tool, self.dataset,
                                    self.size["policy_px"], scorer=scorer, report_to=[], disable_tqdm=True,
                                    save_strategy="no", generation_kwargs={"suppress_tokens": self.suppressed})
            trainer.generation_config.compile_config = self.compile_config
            from transformers.trainer_callback import PrinterCallback
            trainer.remove_callback(PrinterCallback)
            self._trainer, self.policy_touched = trainer, True
        return self._trainer

    def drop_trainer(self) -> None:
        self._trainer, self._batches = None, []
        cleanup()

    def batches(self, n: int) -> list[tuple]:
        if len(self._batches) < n:
            self._batches = trl_batches(self.trainer(), n)
        return self._batches[:n]

    # --- inputs and configurations --------------------------------------------------------------------------
    def probe_inputs(self) -> dict:
        """The probe's batch: the shortest and the longest prompt of the data, ``group`` copies each, padded by
        the processor on the left to a multiple of 64."""
        from grto_lib.prompts import build_messages, policy_view

        lengths = {}
        for i in range(len(self.dataset)):
            text = self.processor.apply_chat_template(build_messages(self.dataset[i].query),
                                                      add_generation_prompt=True, tokenize=False)
            lengths.setdefault(len(self.tokenizer(text)["input_ids"]), i)
        chosen = [i for _, i in sorted(lengths.items())]
        chosen = (chosen[:1] + chosen[-1:] + chosen[1:-1])[:self.opts.prompts]
        texts, images = [], []
        for i in chosen:
            text = self.processor.apply_chat_template(build_messages(self.dataset[i].query),
                                                      add_generation_prompt=True, tokenize=False)
            texts += [text] * self.opts.group
            images += [policy_view(self.dataset[i].image, self.size["policy_px"])] * self.opts.group
        return self.processor(text=texts, images=images, return_tensors="pt", padding=True,
                              pad_to_multiple_of=64).to(self.device)

    def probe_config(self):
        return generation_config(self.tokenizer, self.opts.max_new_tokens, cache_implementation="static",
                                 disable_compile=False, compile_config=self.compile_config)

    def trl_config(self):
        config = copy.deepcopy(self.trainer().generation_config)
        config.disable_compile, config.compile_config = False, self.compile_config
        return config

    def ensure(self, train: bool = False, checkpointing: bool = False) -> None:
        policy = self.policy()
        policy.train(train)
        layers = [m for m in policy.modules() if hasattr(m, "gradient_checkpointing")]
        if checkpointing and not any(m.gradient_checkpointing for m in layers):
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # --- measuring --------------------------------------------------------------------------------------------
    def measure(self, name: str, call, reps: int = 2, **info) -> dict:
        """``call()`` (one generation, returning its completions) ``reps`` times, each watched; stops at the first
        call with a bad row. The first call compiles."""
        base = self.base()
        reset_compiled(base)
        before = dynamo_stats()
        calls = []
        for rep in range(reps):
            watch, prefill = Watch(), Prefill(self.pad_id)
            torch.manual_seed(rep)
            with watch.installed(base), prefill.installed(base):
                sync()
                start = time.perf_counter()
                completions = call()
                sync()
                seconds = time.perf_counter() - start
            calls.append({"seconds": round(seconds, 3), **watch.summary(), **prefill.result,
                          **token_check(completions, self.vocab, self.suppressed),
                          "graphs_so_far": dynamo_stats()["unique_graphs"] - before["unique_graphs"]})
            if not call_ok(calls[-1]):
                break
        info = {k: v() if callable(v) else v for k, v in info.items()}
        return self.record(f"variant/{name}", ok=all(call_ok(c) for c in calls),
                           first_call_seconds=calls[0]["seconds"],
                           second_call_seconds=calls[1]["seconds"] if len(calls) > 1 else None,
                           calls=calls, dynamo=delta(before, dynamo_stats()), sdpa=sdpa_flags(), **memory(), **info)

    def measure_training(self, name: str, fixed: bool, hooks: bool = False) -> dict:
        """``trainer.train()`` for ``--steps`` steps on a fresh policy, every generation call watched."""
        from transformers import TrainerCallback

        self.policy(fresh=True)
        trainer = self.trainer(fresh=True, steps=self.opts.steps)
        trainer.compiled_generation = fixed
        base = self.base()
        reset_compiled(base)
        handles = timing_hooks(base) if hooks else []
        calls, steps = [], []
        inner = trainer._generate_single_turn

        def watched(*args, **kwargs):
            watch, prefill = Watch(), Prefill(self.pad_id)
            with watch.installed(base), prefill.installed(base):
                sync()
                start = time.perf_counter()
                completion_ids, logprobs = inner(*args, **kwargs)
                sync()
            calls.append({"seconds": round(time.perf_counter() - start, 3), **watch.summary(), **prefill.result,
                          **token_check(completion_ids, self.vocab, self.suppressed),
                          "dynamo_so_far": delta(before, dynamo_stats())})
            return completion_ids, logprobs

        class Steps(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                sync()
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                sync()
                steps.append(round(time.perf_counter() - self.start, 3))

        trainer._generate_single_turn = watched
        trainer.add_callback(Steps())
        before = dynamo_stats()
        try:
            trainer.train()
        finally:
            for handle in handles:
                handle.remove()
            logs = [e for e in trainer.state.log_history if "loss" in e and "train_loss" not in e]
            row = self.record(f"variant/{name}", ok=bool(calls) and all(call_ok(c) for c in calls),
                              generation_seconds=[c["seconds"] for c in calls], step_seconds=steps, calls=calls,
                              losses=[e["loss"] for e in logs], rewards=[e.get("reward") for e in logs],
                              dynamo=delta(before, dynamo_stats()), fixed=fixed, timing_hooks=hooks,
                              generation_cache_len=trainer.generation_cache_len, sdpa=sdpa_flags(), **memory())
            self.drop_trainer()
        return row


def call_ok(call: dict) -> bool:
    return (not call.get("raw_bad_rows") and not call.get("final_bad_rows") and not call.get("out_of_vocab")
            and not call.get("suppressed_sampled") and not call.get("hidden_nonfinite_real")
            and not call.get("hidden_nonfinite"))


def sdpa_flags() -> dict:
    if not cuda():
        return {}
    b = torch.backends.cuda
    return {"cudnn": b.cudnn_sdp_enabled(), "flash": b.flash_sdp_enabled(),
            "mem_efficient": b.mem_efficient_sdp_enabled(), "math": b.math_sdp_enabled()}


# ----------------------------------------------------------------------------------------------------------------
# The variants
# ----------------------------------------------------------------------------------------------------------------

def generate_with(lab, inputs, config):
    policy = lab.policy()
    prompt = inputs["input_ids"].shape[1]
    return lambda: policy.generate(**inputs, generation_config=config)[:, prompt:]


def run_variant(lab, name: str) -> None:
    if name.startswith("probe_") and lab.policy_touched:  # a policy no trainer has wrapped
        lab.policy(fresh=True)
    if name == "probe_eval":
        lab.ensure(train=False)
        lab.measure(name, generate_with(lab, lab.probe_inputs(), lab.probe_config()))
    elif name == "probe_train_ckpt":
        lab.ensure(train=True, checkpointing=True)
        lab.measure(name, generate_with(lab, lab.probe_inputs(), lab.probe_config()))
    elif name == "trainer_built":
        if lab.policy_touched and lab._trainer is None:
            lab.policy(fresh=True)
        lab.ensure(train=True, checkpointing=True)
        lab.trainer()
        lab.ensure(train=True)
        lab.measure(name, generate_with(lab, lab.probe_inputs(), lab.probe_config()))
    elif name == "trl_config":
        lab.trainer()
        lab.ensure(train=True, checkpointing=True)
        lab.measure(name, generate_with(lab, lab.probe_inputs(), lab.trl_config()))
    elif name == "trl_inputs":
        trainer = lab.trainer()
        lab.ensure(train=True, checkpointing=True)
        args = lab.batches(1)[0]
        inputs = trl_generate_inputs(trainer, args[0], args[2])
        lab.measure(name, generate_with(lab, inputs, lab.trl_config()), pads_trl=True)
    elif name == "trl_unwrap":
        from trl.models import unwrap_model_for_generation

        trainer = lab.trainer()
        lab.ensure(train=True, checkpointing=True)
        args = lab.batches(1)[0]
        inputs = trl_generate_inputs(trainer, args[0], args[2])
        config = lab.trl_config()
        prompt = inputs["input_ids"].shape[1]

        def call():
            with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                             gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                                             generation_kwargs=trainer.generation_kwargs,
                                             gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs
                                             ) as unwrapped, torch.no_grad():
                return unwrapped.generate(**inputs, generation_config=config)[:, prompt:]

        lab.measure(name, call)
    elif name in ("trl_call", "trl_call_eval", "trl_call_cudnn_off", "fixed_call"):
        trainer = lab.trainer()
        lab.ensure(train=name != "trl_call_eval", checkpointing=True)
        fixed = name == "fixed_call"
        batches = lab.batches(3 if fixed else 1)
        trainer.compiled_generation = fixed
        trainer.generation_cache_len = trainer.generation_config.max_cache_len = None
        calls = iter(batches * 2)  # fixed_call: three prompt lengths, twice; the others: one batch, twice
        cudnn = torch.backends.cuda.cudnn_sdp_enabled() if cuda() else None
        if name == "trl_call_cudnn_off" and cuda():
            torch.backends.cuda.enable_cudnn_sdp(False)
        try:
            lab.measure(name, lambda: trainer._generate_single_turn(*next(calls))[0], reps=len(batches) * 2,
                        longest_prompt_per_batch=[max(len(p) for p in b[0]) for b in batches],
                        generation_cache_len=lambda: trainer.generation_cache_len)
        finally:
            if cudnn is not None:
                torch.backends.cuda.enable_cudnn_sdp(cudnn)
            trainer.compiled_generation = True
    elif name in ("trainer_steps", "trainer_steps_hooks", "trainer_steps_fixed"):
        lab.measure_training(name, fixed=name == "trainer_steps_fixed", hooks=name == "trainer_steps_hooks")
    elif name == "greedy":
        greedy(lab)
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def greedy_difference(reference, other, prompt: int) -> dict:
    """Two greedy ``generate`` outputs of the same prompts (``return_dict_in_generate``, ``output_logits``): the
    fraction of identical tokens, each row's first divergence, and the differences of the log-probabilities both
    give the reference's tokens before it (after it the two condition on different tokens)."""
    new = min(len(reference.logits), len(other.logits))
    tokens = {k: out.sequences[:, prompt:prompt + new] for k, out in (("reference", reference), ("other", other))}
    same = tokens["reference"] == tokens["other"]
    diverge = torch.where(same.all(1), same.shape[1], (~same).int().argmax(1))
    chosen = [torch.stack([torch.log_softmax(logits.float(), -1).gather(-1, tokens["reference"][:, t, None])[:, 0]
                           for t, logits in enumerate(out.logits[:new])], 1) for out in (reference, other)]
    before = torch.arange(new, device=same.device)[None] < diverge[:, None]
    diff = (chosen[1] - chosen[0]).abs()[before]
    return {"ok": bool(torch.isfinite(diff).all()), "tokens_identical": round(same.float().mean().item(), 4),
            "sequences_identical": int(same.all(1).sum()), "sequences": len(same), "first_divergence": diverge.tolist(),
            "logprob_abs_diff_max": round(diff.max().item(), 5) if diff.numel() else None,
            "logprob_abs_diff_mean": round(diff.mean().item(), 6) if diff.numel() else None,
            "logprob_note": "log-probabilities of the reference's tokens, before each row's first divergence"}


def greedy(lab) -> dict:
    """Greedy completions, eval mode, TRL's inputs: the fixed compiled path (``_compiled_generation_model``, static
    cache) against the eager dynamic cache. Identical tokens, and the log-probability differences of the chosen
    tokens up to each row's first divergence (a random model's near-ties flip greedy choices)."""
    trainer = lab.trainer()
    policy = lab.policy()
    policy.eval()
    args = lab.batches(1)[0]
    inputs = trl_generate_inputs(trainer, args[0], args[2])
    prompt = inputs["input_ids"].shape[1]
    settings = dict(do_sample=False, temperature=None, top_p=None, top_k=None, return_dict_in_generate=True,
                    output_logits=True)
    eager = copy.deepcopy(trainer.generation_config)
    eager.update(cache_implementation=None, disable_compile=True, **settings)
    compiled = lab.trl_config()
    compiled.update(max_cache_len=prompt + lab.opts.max_new_tokens + trainer.GENERATION_CACHE_HEADROOM, **settings)
    reset_compiled(lab.base())
    out = {}
    with torch.no_grad():
        out["eager"] = policy.generate(**inputs, generation_config=eager)
        seconds = []
        for _ in range(2):
            with trainer._compiled_generation_model(trainer.model_wrapped, trainer.accelerator) as unwrapped:
                sync()
                start = time.perf_counter()
                out["compiled"] = unwrapped.generate(**inputs, generation_config=compiled)
                sync()
                seconds.append(round(time.perf_counter() - start, 3))
    return lab.record("variant/greedy", **greedy_difference(out["eager"], out["compiled"], prompt),
                      compiled_seconds=seconds, note="eval mode")


# ----------------------------------------------------------------------------------------------------------------
# Running: in this process, or in children that a device-side assert may end
# ----------------------------------------------------------------------------------------------------------------

def run_here(opts, names: list[str]) -> None:
    record = Recorder(opts.out, "compile_decode")
    deadline = time.perf_counter() + opts.budget
    if not opts.child:
        record("environment", **environment(), size=opts.size, layers=opts.layers or "all",
               compile_backend=opts.compile_backend, compile_mode=opts.compile_mode)
    if opts.log_compiles:
        torch._logging.set_logs(recompiles=True, graph_breaks=True)
    lab = Lab(opts, record)
    for name in names:
        if deadline - time.perf_counter() < opts.min_variant_seconds:
            record(f"variant/{name}:skipped", reason="budget", seconds_left=round(deadline - time.perf_counter(), 1))
            continue
        record(f"start/{name}")
        start = time.perf_counter()
        try:
            run_variant(lab, name)
        except Exception as error:  # noqa: BLE001 - every failure is a result; the next variant runs
            record(f"variant/{name}:error", error=describe(error), traceback=traceback.format_exc()[-2500:])
            if cuda():
                try:
                    torch.cuda.synchronize()
                except Exception as dead:  # noqa: BLE001
                    record("cuda_context_lost", after=name, error=describe(dead))
                    raise SystemExit(3)
            cleanup()
        record(f"done/{name}", seconds=round(time.perf_counter() - start, 1))


def run_isolated(opts, names: list[str]) -> None:
    """Children run the variants in order; a child that dies is recorded and the next one starts after the variant
    it was running."""
    record = Recorder(opts.out, "compile_decode")
    end = time.perf_counter() + opts.budget
    record("environment", **environment(), size=opts.size, layers=opts.layers or "all",
           compile_backend=opts.compile_backend, compile_mode=opts.compile_mode, isolated=True)
    results = opts.out / "results.jsonl"
    k, child = 0, 0
    while k < len(names) and end - time.perf_counter() > opts.min_variant_seconds:
        left = end - time.perf_counter()
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", "--size", opts.size, "--out", str(opts.out),
                "--variants", ",".join(names[k:]), "--budget", str(int(left)), "--layers", str(opts.layers),
                "--compile-backend", opts.compile_backend, "--steps", str(opts.steps), "--prompts", str(opts.prompts),
                "--group", str(opts.group), "--max-new-tokens", str(opts.max_new_tokens),
                "--min-variant-seconds", str(opts.min_variant_seconds)]
        argv += ["--compile-mode", opts.compile_mode] if opts.compile_mode else []
        argv += ["--log-compiles"] if opts.log_compiles else []
        log = opts.out / f"child_{child}.log"
        with open(log, "w") as stderr:
            try:
                code = subprocess.run(argv, stderr=stderr, timeout=left + 20).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        started = [json.loads(line)["name"] for line in results.read_text().splitlines()]
        begun = [n[len("start/"):] for n in started if n.startswith("start/")]
        finished = {n[len("done/"):] for n in started if n.startswith("done/")}
        if code == 0 or not begun:
            break
        crashed = next((n for n in reversed(begun) if n not in finished), None)
        tail = log.read_text()[-2500:]
        record(f"variant/{crashed}:crashed", returncode=code, stderr_tail=tail)
        if crashed is None or crashed not in names[k:]:
            break
        k = names.index(crashed) + 1
        child += 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="paper")
    parser.add_argument("--out", type=Path, default=Path("outputs/compile_decode"))
    parser.add_argument("--variants", type=lambda s: [v for v in s.split(",") if v], default=list(VARIANTS))
    parser.add_argument("--layers", type=int, default=0, help="text layers of the policy (0: the architecture's)")
    parser.add_argument("--prompts", type=int, default=2, help="distinct prompts per generation batch")
    parser.add_argument("--group", type=int, default=None, help="completions per prompt (default: 8 paper, 4 tiny)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 256 (paper), 8 (tiny)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps of the trainer_steps variants (default: 3 paper, 2 tiny)")
    parser.add_argument("--compile-backend", default=None, help="default: inductor on a GPU, eager on a CPU")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode (default: transformers' reduce-overhead for inductor)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all variants")
    parser.add_argument("--min-variant-seconds", type=float, default=20)
    parser.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                        help="run the variants in child processes (default: on a GPU)")
    parser.add_argument("--log-compiles", action="store_true", help="log dynamo's recompilations and graph breaks")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None)
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    paper = opts.size == "paper"
    opts.max_new_tokens = opts.max_new_tokens or (256 if paper else 8)
    opts.group = opts.group or (8 if paper else 4)
    opts.steps = opts.steps or (3 if paper else 2)
    opts.compile_backend = opts.compile_backend or ("inductor" if cuda() else "eager")
    if opts.compile_mode is None and opts.compile_backend == "inductor":
        opts.compile_mode = "reduce-overhead"
    unknown = [v for v in opts.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    isolate = cuda() if opts.isolate is None else opts.isolate
    if isolate and not opts.child:
        run_isolated(opts, opts.variants)
    else:
        run_here(opts, opts.variants)


if __name__ == "__main__":
    main()
