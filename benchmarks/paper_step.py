"""The paper preset's RL step on one GPU, built as ``grto_lib`` builds it, with its time and memory split up.

Models and data as in ``bench_paper.py`` (no weights offline: Qwen2.5-VL-3B's architecture with random weights,
bf16, LoRA r 16; SAM ViT-H with random weights; synthetic 1024 px ``reasonseg`` images; 2 prompts x 8
completions x 256 tokens, every special token suppressed so every completion runs to the limit, and
``ForcedValidScorer`` with ``tool_weighting="uniform"`` so the tool trains on every rollout). The policy goes through
``grto_lib.policy.prepare_policy`` and the trainer through ``grto_lib.train.build_trainer``: what
``load_models`` and ``train`` build. ``stock_*`` variants switch ``grto_lib.fast_qwen``'s fast paths off, the
path the earlier benchmarks measured; the others run what users run.

Variants (``--variants``, run in order in one process, each for ``--steps`` optimizer steps):

* ``stock_grpo``, ``stock_grto``, ``fast_grpo``, ``fast_grto``: generation every step (``generate_every=1``);
* ``fast_grto_every8``: ``generate_every=8`` (one generation call of 128 completions serves 8 steps);
* ``fast_grto_compiled``, ``fast_grpo_compiled``: ``compile_generation=True`` (static cache, transformers'
  torch.compile of decoding); ``fast_grto_compiled_every8`` with ``generate_every=8`` too;
* ``fast_grto_embedding_copies``: the tool's image embedding copied into TRL's batch once per rollout and
  shuffled with it (how the scorer handed it on before embeddings were shared per image), for memory;
* ``fast_grto_merged``, ``fast_grto_merged_compiled``: generation from LoRA-merged weights (``MergedLoRA``: plain
  linear layers while decoding, base weights restored exactly, sampling without LoRA dropout), uncompiled and
  compiled; ``merge_seconds`` per call, ``base_weights_restored`` from a fingerprint before and after the run.

Per optimizer step it records wall time and its parts, each timed with the GPU synchronised: ``vision`` (the
policy's vision tower in generation), ``prefill`` and ``decode`` (the language model's forward passes in
``generate``: the first, then one token at a time), ``sampling`` (the rest of ``generate``: logits processing,
sampling, cache bookkeeping), ``scoring`` (the tool's masks and the rewards), ``old_logps`` (TRL's pass over the
completions when they serve later steps), ``policy_forward`` (the loss step's vision and language forward),
``tool_forward`` (the decoder in the loss), ``optimizer`` (both optimizers' steps) and ``backward_and_rest``
(what remains: the backward passes, gradient clipping, TRL's bookkeeping). Generation tokens/s and the share of
the weight-read bound (``--bandwidth`` / the policy's bf16 weight bytes, in decoding steps/s; 3.35e12 for an
H100) come with it. With ``compile_generation`` no hook runs inside the compiled decoding step: ``prefill`` lasts
until the first token's logits (TRL's padding included, the vision tower apart) and ``decode`` is the rest, sampling
included; the first generation's extra time, compiling, is ``compile_seconds``. Also
``bto_memory``: the tool's peak memory in BTO on ``--bto-images`` images, every embedding on the GPU at once (how
``bootstrap_tool`` held them before) against ``bootstrap_tool`` now.

One JSON object per line goes to ``OUT/results.jsonl`` as soon as it is measured. ``--size tiny`` runs every code
path on a CPU in about a minute::

    python benchmarks/paper_step.py --size tiny --out /tmp/step --max-new-tokens 8 --steps 2 --bto-images 4
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_paper import (SIZES, Recorder, build_data, build_policy, build_processor, build_tool, cleanup,  # noqa: E402
                         cuda, environment, forced_valid_scorer_class, gib, param_stats, reset_peak, special_ids,
                         sync)

VARIANTS = {  # name: (fast paths, method, TrainConfig overrides)
    "stock_grpo": (False, "grpo", {}),
    "stock_grto": (False, "grto", {}),
    "fast_grpo": (True, "grpo", {}),
    "fast_grto": (True, "grto", {}),
    "fast_grto_every8": (True, "grto", {"generate_every": 8}),
    "fast_grpo_compiled": (True, "grpo", {"compile_generation": True}),
    "fast_grto_compiled": (True, "grto", {"compile_generation": True}),
    "fast_grto_compiled_every8": (True, "grto", {"compile_generation": True, "generate_every": 8}),
    "fast_grto_compiled_unpadded": (True, "grto", {"compile_generation": True}),
    "fast_grto_embedding_copies": (True, "grto", {}),
    "fast_grto_merged": (True, "grto", {}),
    "fast_grto_merged_compiled": (True, "grto", {"compile_generation": True}),
}


class MergedLoRA:
    """Generation from LoRA-merged weights, the frozen base weights restored exactly (the issue's fallback).

    For each generation call, every LoRA-wrapped linear layer's weight is pointed at a buffer holding
    ``W + scale * B @ A`` (computed in float32, rounded once to the weight's dtype) and the adapters are disabled,
    so decoding runs plain linear layers; afterwards the weight points at its own tensor again, which nothing has
    written (no bf16 unmerge). The buffers (one more copy of the adapted weights: 5.6 GB for the 3B) are allocated
    once, so that a compiled decoding step sees the same addresses at every call. Sampling then runs without LoRA
    dropout (TRL samples in train mode, with it)."""

    def __init__(self, policy):
        from peft.tuners.lora import LoraLayer

        self.policy = policy
        self.layers = [m for m in policy.modules() if isinstance(m, LoraLayer) and hasattr(m, "base_layer")]
        self.buffers: dict = {}
        self.seconds: list[float] = []

    def fingerprint(self) -> float:
        with torch.no_grad():
            return float(sum(layer.base_layer.weight.double().sum() for layer in self.layers))

    @contextlib.contextmanager
    def applied(self):
        sync()
        start = time.perf_counter()
        originals = []
        with torch.no_grad():
            for layer in self.layers:
                weight, (name,) = layer.base_layer.weight, layer.active_adapters
                delta = layer.lora_B[name].weight.float() @ layer.lora_A[name].weight.float()
                if layer not in self.buffers:
                    self.buffers[layer] = torch.empty_like(weight)
                buffer = self.buffers[layer]
                buffer.copy_(torch.add(weight.float(), delta, alpha=layer.scaling[name]))  # never into weight
                originals.append((weight, weight.data))
                weight.data = buffer
        sync()
        self.seconds.append(time.perf_counter() - start)
        try:
            with self.policy.disable_adapter():
                yield
        finally:
            for weight, original in originals:
                weight.data = original


class Clock:
    """Synchronised seconds of named parts, summed until ``take``."""

    def __init__(self):
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def part(self, name: str):
        """An error inside propagates as raised (no synchronisation after it that could replace it)."""
        sync()
        start = time.perf_counter()
        yield
        sync()
        self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    def take(self) -> dict:
        parts, self.parts = self.parts, {}
        return {k: round(v, 4) for k, v in parts.items()}


def _timed_forward(module, clock: Clock, name_of) -> list:
    """Time ``module``'s forward passes into ``clock``, under the part ``name_of(args, kwargs)`` names (None: not
    timed, the pass belongs to a part timed as a whole). Returns the hooks' handles."""
    state = {}

    def before(mod, args, kwargs):
        state["name"] = name_of(args, kwargs)
        if state["name"] is not None:
            sync()
            state["start"] = time.perf_counter()

    def after(mod, args, kwargs, output):
        if state["name"] is not None:
            sync()
            clock.add(state["name"], time.perf_counter() - state["start"])

    return [module.register_forward_pre_hook(before, with_kwargs=True),
            module.register_forward_hook(after, with_kwargs=True)]


@contextlib.contextmanager
def first_logits(base):
    """``seconds``: from entering to the first token's logits (synchronised), read by a logits processor that runs
    outside the compiled decoding step (``base._get_logits_processor`` returns it first)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    found = {"seconds": None}
    start = time.perf_counter()

    class First(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if found["seconds"] is None:
                sync()
                found["seconds"] = time.perf_counter() - start
            return scores

    original = base._get_logits_processor
    base._get_logits_processor = lambda *args, **kwargs: LogitsProcessorList([First(), *original(*args, **kwargs)])
    try:
        yield found
    finally:
        del base._get_logits_processor


def instrument(trainer, policy, clock: Clock, bound: float):
    """Hooks that split each step's time into ``clock`` (see the module docstring); returns the per-step record,
    the per-call record of generation (completions, tokens, seconds, tokens/s, share of the weight-read bound) and
    a function that removes the hooks from the policy."""
    from transformers import TrainerCallback

    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    phase = {"now": "loss"}  # generate | old_logps | loss

    def language_part(args, kwargs):
        if phase["now"] != "generate":
            return "policy_forward" if phase["now"] == "loss" else None
        embeds = kwargs.get("inputs_embeds")
        tokens = embeds if embeds is not None else kwargs.get("input_ids", args[0] if args else None)
        return "prefill" if tokens.shape[1] > 1 else "decode"

    vision_part = {"generate": "vision", "loss": "policy_forward"}
    vision = _timed_forward(base.model.visual, clock, lambda a, k: vision_part.get(phase["now"]))  # prefill only
    language = {"hooks": _timed_forward(base.model.language_model, clock, language_part)}
    # A compiled decoding step must not call hooks that synchronise and read the clock: they would break its graph
    # (and recompile it). Its language model runs unhooked; the prefill ends at the first token's logits.
    compiled = getattr(trainer, "compiled_generation", False)
    calls = []
    generate = trainer._generate_single_turn

    def timed_generation(prompt_ids, *args, **kwargs):
        before = dict(clock.parts)
        phase["now"] = "generate"
        if compiled:
            for handle in language["hooks"]:
                handle.remove()
        try:
            with clock.part("generation"), (first_logits(base) if compiled else contextlib.nullcontext()) as first:
                completion_ids, logprobs = generate(prompt_ids, *args, **kwargs)
        finally:
            phase["now"] = "loss"
            if compiled:
                language["hooks"] = _timed_forward(base.model.language_model, clock, language_part)
        spent = {k: clock.parts.get(k, 0.0) - before.get(k, 0.0) for k in ("generation", "vision", "prefill", "decode")}
        if compiled:  # prefill: TRL's padding and the first forward (vision apart); decode: the rest, sampling included
            clock.add("prefill", first["seconds"] - spent["vision"])
            clock.add("decode", spent["generation"] - first["seconds"])
        else:
            clock.add("sampling", spent["generation"] - spent["vision"] - spent["prefill"] - spent["decode"])
        lengths = [len(c) for c in completion_ids]
        steps_per_s = max(lengths) / spent["generation"]
        calls.append({"completions": len(lengths), "tokens": sum(lengths), "seconds": round(spent["generation"], 3),
                      "tokens_per_s": round(sum(lengths) / spent["generation"], 1),
                      "decode_steps_per_s": round(steps_per_s, 2),
                      "share_of_weight_read_bound": round(steps_per_s / bound, 4)})
        return completion_ids, logprobs

    trainer._generate_single_turn = timed_generation
    tool_loss = trainer.batch_tool_loss

    def timed_tool_loss(inputs):
        with clock.part("tool_forward"):
            return tool_loss(inputs)

    trainer.batch_tool_loss = timed_tool_loss
    score = trainer.scorer.score

    def timed_score(*args, **kwargs):
        with clock.part("scoring"):
            return score(*args, **kwargs)

    trainer.scorer.score = timed_score
    logps = trainer._get_per_token_logps_and_entropies

    def timed_logps(*args, **kwargs):
        if torch.is_grad_enabled():
            return logps(*args, **kwargs)
        with clock.part("old_logps"):  # no gradient: the old log-probabilities of completions that serve later steps
            phase["now"] = "old_logps"
            try:
                return logps(*args, **kwargs)
            finally:
                phase["now"] = "loss"

    trainer._get_per_token_logps_and_entropies = timed_logps

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            reset_peak()
            clock.take()
            self.start = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            sync()
            self.optimizer_start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            end = time.perf_counter()
            clock.add("optimizer", end - self.optimizer_start)  # the policy's and the tool's (on_optimizer_step)
            parts = clock.take()
            total = end - self.start
            named = sum(v for k, v in parts.items() if k not in ("generation",))
            parts["backward_and_rest"] = round(total - named, 4)
            peak = torch.cuda.max_memory_allocated() if cuda() else 0
            self.steps.append({"step": state.global_step, "seconds": round(total, 3), "parts": parts,
                               "peak_allocated_gib": gib(peak)})

    steps = Steps()
    steps.steps = []
    trainer.add_callback(steps)

    def remove() -> None:  # the policy outlives this trainer: a later variant must not run these hooks
        for handle in vision + language["hooks"]:
            handle.remove()

    return steps, calls, remove


def embedding_copies_scorer_class():
    """``ForcedValidScorer`` whose ``ToolBatch`` holds one embedding per rollout, a copy of its image's, as the
    scorer handed it on before (that copy also rode in TRL's batch and was copied again by TRL's shuffle)."""
    base = forced_valid_scorer_class()

    class EmbeddingCopiesScorer(base):
        def score(self, texts, sample_indices):
            scored = super().score(texts, sample_indices)
            batch = scored.tool_batch
            batch.embeddings = batch.embeddings[batch.image_row]  # one copy per rollout
            batch.samples = [batch.samples[r] for r in batch.image_row.tolist()]
            batch.image_row = torch.arange(len(batch.image_row), device=batch.image_row.device)
            self.copies = batch.embeddings
            return scored

    return EmbeddingCopiesScorer


def compile_config(backend: str | None):
    """transformers' default ``CompileConfig`` (inductor, reduce-overhead, on accelerators only), or one for
    ``backend`` that compiles on a CPU too (e.g. eager)."""
    from transformers import CompileConfig

    if backend is None:
        return CompileConfig()
    config = CompileConfig(backend=backend, mode="reduce-overhead" if backend == "inductor" else None)
    config._compile_all_devices = True
    return config


def run_variant(record, name, policy, processor, tool, dataset, size, opts, bound):
    from grto_lib.config import TrainConfig
    from grto_lib.fast_qwen import disable_fast_paths, enable_fast_paths
    from grto_lib.train import build_trainer

    fast, method, overrides = VARIANTS[name]
    (enable_fast_paths if fast else disable_fast_paths)(policy)
    every = overrides.get("generate_every", 1)
    steps = max(opts.steps, every + 1) if every > 1 else opts.steps
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(method=method, preset="paper", random_tool=True, prompts_per_step=opts.prompts,
                             num_generations=opts.group, steps=steps, max_completion_length=opts.max_new_tokens,
                             logging_steps=1, curve_every=0, warmup_steps=0, output_dir=out,
                             tool_weighting="uniform",  # random boxes are rarely on target
                             **{"compile_generation": False, **overrides})  # the paper preset's default: on
        copies = name.endswith("embedding_copies")
        scorer = (embedding_copies_scorer_class() if copies else forced_valid_scorer_class())(dataset, tool,
                                                                                             size["policy_px"])
        tool.set_trainable("decoder")  # a grpo trainer froze it
        unpadded = {"pad_to_multiple_of": None} if name.endswith("unpadded") else {}  # prompts as long as they are
        trainer = build_trainer(config, policy, processor, tool, dataset, size["policy_px"], scorer=scorer,
                                report_to=[], disable_tqdm=True, save_strategy="no", **unpadded,
                                generation_kwargs={"suppress_tokens": special_ids(processor.tokenizer)})
        if copies:
            generate_and_score = trainer._generate_and_score_completions

            def with_copies(inputs):
                output = generate_and_score(inputs)
                output["tool_embeddings"] = scorer.copies  # in TRL's batch, shuffled (copied) with the rest
                return output

            trainer._generate_and_score_completions = with_copies
        merged = MergedLoRA(policy) if "_merged" in name else None
        if merged:
            fingerprint = merged.fingerprint()
            generate_single_turn = trainer._generate_single_turn

            def from_merged_weights(*args, **kwargs):
                with merged.applied():
                    return generate_single_turn(*args, **kwargs)

            trainer._generate_single_turn = from_merged_weights
        from transformers.trainer_callback import PrinterCallback
        trainer.remove_callback(PrinterCallback)
        clock = Clock()
        probe, calls, remove_hooks = instrument(trainer, policy, clock, bound)
        if trainer.compiled_generation:
            trainer.generation_config.compile_config = compile_config(opts.compile_backend)
        cleanup()
        reset_peak()
        from torch._dynamo.utils import counters
        graphs_before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        try:
            trainer.train()
        finally:
            remove_hooks()
        seconds = time.perf_counter() - start
        steady = probe.steps[1:] if every == 1 else probe.steps  # step 1 of an every-step run warms kernels up
        mean_parts = {k: round(float(np.mean([s["parts"].get(k, 0.0) for s in steady])), 4)
                      for k in sorted({k for s in steady for k in s["parts"]})}
        logs = [e for e in trainer.state.log_history if "reward" in e]
        generation = [c["seconds"] for c in calls]
        steady_generation = float(np.mean(generation[1:])) if len(generation) > 1 else None
        result = record(
            f"step/{name}", fast_paths=fast, method=method, generate_every=every, steps=steps,
            completions_per_step=opts.prompts * opts.group, train_seconds=round(seconds, 2),
            steady_step_seconds=round(float(np.mean([s["seconds"] for s in steady])), 3),
            steady_parts=mean_parts, peak_allocated_gib_max=max(s["peak_allocated_gib"] for s in probe.steps),
            compiled_generation=trainer.compiled_generation, generation_cache_len=trainer.generation_cache_len,
            cudnn_sdp=torch.backends.cuda.cudnn_sdp_enabled(),
            first_generation_seconds=generation[0],
            steady_generation_seconds=None if steady_generation is None else round(steady_generation, 3),
            compile_seconds=None if steady_generation is None else round(generation[0] - steady_generation, 2),
            dynamo_graphs=counters["stats"]["unique_graphs"] - graphs_before,
            generation_calls=calls, per_step=probe.steps, loss=[e.get("loss") for e in logs],
            reward=[e.get("reward") for e in logs], clip_ratio=[e.get("clip_ratio/region_mean") for e in logs],
            tool_loss=[e.get("tool/loss") for e in logs],
            note="compile_seconds: the first generation less the mean of the others (compiling and capturing "
                 "the decoding step when compiled_generation); dynamo_graphs: graphs compiled during the run",
            **({"merge_seconds": [round(t, 4) for t in merged.seconds],
                "base_weights_restored": merged.fingerprint() == fingerprint} if merged else {}))
        del trainer, scorer
        cleanup()
        return result


def bto_memory(record, tool, dataset, n_images: int) -> None:
    """Peak memory of BTO's embeddings on ``n_images`` images: all on the GPU at once against ``bootstrap_tool``."""
    from grto_lib.bootstrap import bootstrap_tool
    from grto_lib.geometry import mask_to_box, mask_to_points

    dataset = build_data(SIZES["paper" if cuda() else "tiny"], n_images)
    samples = [dataset[i] for i in range(n_images)]
    records = [{"sample_index": i, "valid": True, "bbox": mask_to_box(s.mask).tolist(),
                "points": mask_to_points(s.mask).tolist()} for i, s in enumerate(samples)]
    cleanup()
    resident = torch.cuda.memory_allocated() if cuda() else 0
    reset_peak()
    with torch.no_grad():
        every = torch.cat([tool.embed([s.image for s in samples[i:i + 8]]) for i in range(0, n_images, 8)])
    peak_all = (torch.cuda.max_memory_allocated() if cuda() else 0) - resident
    del every
    cleanup()
    tool.set_trainable("decoder")
    reset_peak()
    result = bootstrap_tool(tool, dataset, records, steps=5, batch_size=64, weighting="uniform")
    peak_now = (torch.cuda.max_memory_allocated() if cuda() else 0) - resident
    record("bto_memory", images=n_images, embeddings_on_gpu_peak_gib=gib(peak_all),
           bootstrap_tool_peak_gib=gib(peak_now), bootstrap_tool_seconds=round(result["seconds"], 2),
           embedding_mib_each=round(peak_all / n_images / 2**20, 2) if n_images else None,
           note="peaks above the memory resident before (policy, tool); the first figure is how BTO held its "
                "embeddings before (all on the GPU for the whole bootstrap)")


def equivalence(record, policy, processor, dataset, size, compiled, new_tokens: int = 32) -> None:
    """The speed-ups keep the numbers: log-probabilities of one batch (2 views x 4 copies) with the fast paths
    against transformers' own classes, and greedy completions of ``generate`` with a compiled static cache against
    the dynamic cache (same prompts, suppressed special tokens, as in the steps): identical tokens, and the
    log-probability differences before each row's first divergence (``compile_decode.greedy_difference``)."""
    from bench_paper import generation_config, prompt_inputs
    from compile_decode import greedy_difference
    from grto_lib.fast_qwen import disable_fast_paths, enable_fast_paths

    device = next(policy.parameters()).device
    policy.eval()  # no LoRA dropout
    inputs = prompt_inputs(processor, dataset, 2, 4, size["policy_px"], device)
    logps = {}
    with torch.no_grad():
        for name, switch in (("stock", disable_fast_paths), ("fast", enable_fast_paths)):
            switch(policy)
            logits = policy(**inputs).logits[:, -64:].float()
            logps[name] = torch.log_softmax(logits, -1)
    top = logps["stock"].argmax(-1, keepdim=True)  # compare the log-probability of each position's likeliest token
    diff = (logps["fast"].gather(-1, top) - logps["stock"].gather(-1, top)).abs()
    greedy = {}
    with torch.no_grad():
        for name, extra in (("dynamic", {}), ("static_compiled", dict(
                cache_implementation="static", disable_compile=False, compile_config=compiled))):
            config = generation_config(processor.tokenizer, new_tokens, do_sample=False, temperature=None,
                                       top_p=None, top_k=None, return_dict_in_generate=True, output_logits=True,
                                       **extra)
            seconds = []
            for _ in range(2):  # the first compiles
                sync()
                start = time.perf_counter()
                greedy[name] = policy.generate(**inputs, generation_config=config)
                sync()
                seconds.append(round(time.perf_counter() - start, 2))
            greedy[name + "_seconds"] = seconds
    compared = greedy_difference(greedy["dynamic"], greedy["static_compiled"], inputs["input_ids"].shape[1])
    record("equivalence", fast_vs_stock_logprob_abs_diff_max=round(diff.max().item(), 5),
           fast_vs_stock_logprob_abs_diff_mean=round(diff.mean().item(), 6),
           fast_vs_stock_same_argmax=round((logps["fast"].argmax(-1) == logps["stock"].argmax(-1)).float().mean().item(), 4),
           greedy_compiled_vs_dynamic={k: v for k, v in compared.items() if k != "ok"},
           greedy_seconds={k: greedy[k + "_seconds"] for k in ("dynamic", "static_compiled")},
           note="bf16; log-probabilities of the last 64 prompt positions; greedy: first call (compiles), second")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=tuple(SIZES), default="paper")
    parser.add_argument("--out", type=Path, default=Path("outputs/paper_step"))
    parser.add_argument("--variants", type=lambda s: s.split(","),
                        default=["stock_grpo", "stock_grto", "fast_grpo", "fast_grto"])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per variant (the first warms up)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--bto-images", type=int, default=0, help="images for bto_memory (0: skip)")
    parser.add_argument("--equivalence", action="store_true", help="check that the speed-ups keep the numbers")
    parser.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes/s of the GPU's memory (H200: 4.8e12)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend of compiled generation (default: transformers' choice, which "
                             "compiles on a GPU only; given, it compiles on a CPU too, e.g. eager)")
    parser.add_argument("--threads", type=int, default=None)
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    from grto_lib.policy import PolicyConfig, prepare_policy

    record = Recorder(opts.out, "paper_step")
    size = SIZES[opts.size]
    device = "cuda" if cuda() else "cpu"
    dtype = torch.bfloat16 if cuda() else torch.float32
    record("environment", **environment(), size=opts.size)
    dataset = build_data(size, 32)
    processor = build_processor(dataset, size["policy_px"])
    policy = build_policy(size["arch"], processor.tokenizer, device, dtype)
    stats = param_stats(policy)
    bound = opts.bandwidth / stats["weight_bytes"]
    policy = prepare_policy(policy, PolicyConfig(preset="paper", lora=True))  # what load_models builds
    tool = build_tool(size["tool"], device)
    record("models", **stats, weight_read_bound_steps_per_s=round(bound, 1), bandwidth=opts.bandwidth,
           trainable_policy_parameters=sum(p.numel() for p in policy.parameters() if p.requires_grad))
    if opts.equivalence:
        with record.guard("equivalence"):
            equivalence(record, policy, processor, dataset, size, compile_config(opts.compile_backend))
    if opts.bto_images:
        with record.guard("bto_memory"):
            bto_memory(record, tool, dataset, opts.bto_images)
    for name in opts.variants:
        with record.guard(f"step/{name}"):
            run_variant(record, name, policy, processor, tool, dataset, size, opts, bound)
    record("done")


if __name__ == "__main__":
    main()
