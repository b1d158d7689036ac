"""Benchmark of the paper-size setup on one GPU: GRPO vs GRTO step times, generation throughput, memory.

What it builds (no weights can be downloaded on the benchmark machine, so everything is random-init):

* policy: ``Qwen2_5_VLForConditionalGeneration`` with Qwen2.5-VL-3B-Instruct's architecture
  (``QWEN25_VL_3B`` below, copied from the model's published ``config.json``), bf16, 840 px square views
  (30 x 30 = 900 merged image tokens), LoRA r=16 via ``grto_lib.policy.wrap_lora``;
* processor: ``grto_lib.tinyworld.tiny_qwen.TinyQwenProcessor`` around transformers' ``Qwen2VLImageProcessor``
  (Qwen's real image pipeline: 14 px patches, 2 x 2 merge) and the tiny world's word-level tokenizer (Qwen's
  tokenizer files are not available offline). The model keeps Qwen's 151,936-entry vocabulary, so the output
  layer costs what it costs in the real model; sampled ids outside the small tokenizer decode to nothing;
* tool: ``grto_lib.tool.load_tool(ToolConfig(preset="vit_h"))`` (SAM ViT-H, random init, 1024 px, fp32);
* data: synthetic ``reasonseg`` images at 1024 px (``grto_lib.data.load_dataset``).

Benchmark-only choices (say so wherever the numbers are quoted):

* every special token, the end-of-turn token included, is suppressed while sampling, so every completion is
  exactly ``--max-new-tokens`` long (the issue's "8 completions of 256 tokens");
* a random policy writes no parseable answer, which would leave the tool loss empty. ``ForcedValidScorer``
  gives every unparseable completion a random box and points inside the image, so the tool scores and trains
  on every rollout, as it would for a trained policy.

Sections (each is meant to run in its own process; see ``docs/benchmarks.md`` for the command):

* ``core``: plain ``generate`` (8, 32 and 64 completions; static cache without compile), the SAM pieces
  timed alone, and a few ``GRTOTrainer`` steps of ``grpo`` and ``grto`` (plus a lower-memory ``grto``).
* ``compile``: ``generate`` with a static cache and ``torch.compile`` (transformers' auto-compile).
* ``cb``: transformers' continuous batching (``generate_batch``, paged attention) on the language model alone
  with text-only prompts of the same length (TRL refuses continuous batching for vision-language models).

Every measurement is appended as one JSON line to ``OUT/results.jsonl`` as soon as it is taken.
``--size tiny`` runs the same code paths with tiny models on CPU in seconds (for development and CI-free checks).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

H100_BANDWIDTH = 3.35e12
"""Bytes/s, H100 SXM HBM3 datasheet figure used by issue 6 for the weight-read bound."""

# Qwen/Qwen2.5-VL-3B-Instruct config.json (architecture fields; token ids are replaced by the tokenizer's).
QWEN25_VL_3B = {
    "text": dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128000,
        rms_norm_eps=1e-6, use_sliding_window=False, sliding_window=32768, max_window_layers=70,
        attention_dropout=0.0,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    ),
    "vision": dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
        out_hidden_size=2048, tokens_per_second=2, hidden_act="silu",
    ),
    "tie_word_embeddings": True,
}
# The same structure at toy sizes, for --size tiny (CPU development of this script).
QWEN25_VL_TINY = {
    "text": dict(QWEN25_VL_3B["text"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
    "vision": dict(QWEN25_VL_3B["vision"], depth=2, hidden_size=64, intermediate_size=128, num_heads=2,
                   fullatt_block_indexes=[1], out_hidden_size=64),
    "tie_word_embeddings": True,
}
SIZES = {
    # policy architecture, policy view px, dataset image px, SAM preset
    "paper": dict(arch=QWEN25_VL_3B, policy_px=840, image_px=1024, tool="vit_h"),
    "tiny": dict(arch=QWEN25_VL_TINY, policy_px=112, image_px=128, tool="tiny"),
}


# ----------------------------------------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------------------------------------

class Recorder:
    """Appends one JSON object per measurement to ``out/results.jsonl`` (flushed at once) and prints it."""

    def __init__(self, out: Path, section: str, write: bool = True):
        self.path = out / "results.jsonl"
        self.section, self.write = section, write
        out.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, **data) -> dict:
        row = {"section": self.section, "name": name, **data}
        if not self.write:  # another process of a distributed run: process 0 records
            return row
        line = json.dumps(row, default=_plain)
        with open(self.path, "a") as f:
            f.write(line + "\n")
        print("RESULT", line, flush=True)
        return row

    @contextlib.contextmanager
    def guard(self, name: str):
        """Record an exception as a result row instead of ending the section."""
        try:
            yield
        except SkipSection:
            pass
        except Exception as error:  # noqa: BLE001 - a benchmark reports every failure and goes on
            self(name + ":error", error=f"{type(error).__name__}: {error}",
                 traceback=traceback.format_exc()[-3000:])
            cleanup()


class SkipSection(Exception):
    """Leave a guarded block early on purpose (a part switched off on the command line)."""


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if torch.is_tensor(value):
        return value.tolist()
    return str(value)


def cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


def cleanup() -> None:
    gc.collect()
    if cuda():
        torch.cuda.empty_cache()


def gib(nbytes: float) -> float:
    return round(nbytes / 2**30, 3)


def memory() -> dict:
    if not cuda():
        return {}
    return {"peak_allocated_gib": gib(torch.cuda.max_memory_allocated()),
            "peak_reserved_gib": gib(torch.cuda.max_memory_reserved()),
            "allocated_gib": gib(torch.cuda.memory_allocated())}


def reset_peak() -> None:
    if cuda():
        torch.cuda.reset_peak_memory_stats()


def timed(fn):
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start


class Deadline:
    """Seconds left of this section's budget; optional pieces are skipped when too little is left."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


# ----------------------------------------------------------------------------------------------------------------
# Building the models
# ----------------------------------------------------------------------------------------------------------------

def build_data(size: dict, n: int):
    from grto_lib.data import load_dataset
    return load_dataset("reasonseg", "train", size=n, seed=0, image_size=size["image_px"])


def build_processor(dataset, policy_px: int):
    """Qwen's image processor (840 px -> 60 x 60 patches of 14 px) + the tiny world's tokenizer."""
    from transformers import Qwen2VLImageProcessor

    from grto_lib.tinyworld.tiny_qwen import CHAT_TEMPLATE, TinyQwenProcessor, build_tokenizer

    pixels = policy_px * policy_px
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2,
                                            temporal_patch_size=2)
    tokenizer = build_tokenizer([dataset[i].query for i in range(len(dataset))])
    return TinyQwenProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def special_ids(tokenizer) -> list[int]:
    from grto_lib.tinyworld.tiny_qwen import SPECIAL_TOKENS
    return sorted(set(tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))))


def policy_config(arch: dict, tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config=dict(arch["text"], bos_token_id=None, eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(arch["vision"]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=arch["tie_word_embeddings"],
    )


def build_policy(arch: dict, tokenizer, device: str, dtype):
    """Random-init Qwen2.5-VL built directly on ``device`` (no CPU copy of the 3B weights). Callers pass it through
    ``grto_lib.policy.prepare_policy``, as ``load_policy`` does, so the benchmark runs the model users train."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    config = policy_config(arch, tokenizer)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.to(device)  # a no-op when the device context was honoured
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model.eval()


def param_stats(model) -> dict:
    total, nbytes, lm_bytes = 0, 0, 0
    for name, p in model.named_parameters(remove_duplicate=True):  # tied embeddings counted once
        total += p.numel()
        nbytes += p.numel() * p.element_size()
        if "visual" not in name:
            lm_bytes += p.numel() * p.element_size()
    return {"parameters": total, "weight_bytes": nbytes, "language_model_weight_bytes": lm_bytes}


def build_tool(preset: str, device: str):
    from grto_lib.tool import ToolConfig, load_tool

    torch.manual_seed(0)
    return load_tool(ToolConfig(preset=preset)).to(device)


def environment() -> dict:
    import transformers
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda}
    for name in ("trl", "peft", "accelerate", "datasets", "segment_anything"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception as error:  # noqa: BLE001
            info[name] = f"missing: {error}"
    if cuda():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=gib(props.total_memory), sms=props.multi_processor_count)
    return info


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------

def generation_config(tokenizer, max_new_tokens: int, **extra):
    """TRL's sampling settings (temperature 1, top_p 1, top_k 0) with every special token suppressed."""
    from transformers import GenerationConfig

    settings = dict(max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                    suppress_tokens=special_ids(tokenizer), disable_compile=True)
    settings.update(extra)
    return GenerationConfig(**settings)


def prompt_inputs(processor, dataset, n_images: int, group: int, policy_px: int, device):
    """``n_images`` distinct samples, each repeated ``group`` times (TRL's layout), as model inputs."""
    from grto_lib.prompts import build_messages, policy_view

    texts, images = [], []
    for i in range(n_images):
        sample = dataset[i]
        text = processor.apply_chat_template(build_messages(sample.query), add_generation_prompt=True,
                                             tokenize=False)
        view = policy_view(sample.image, policy_px)
        texts += [text] * group
        images += [view] * group
    return processor(text=texts, images=images, return_tensors="pt", padding=True).to(device)


def bench_generate(record, name, model, inputs, config, bound_steps_per_s, reps: int = 1, prefill: bool = True,
                   **info):
    """Time ``model.generate`` (synchronised wall clock); a prefill-only call separates prefill from decode."""
    prefill_seconds = 0.0
    with torch.no_grad():
        if prefill:
            prefill_config = copy.deepcopy(config)
            prefill_config.max_new_tokens = 1
            _, prefill_seconds = timed(lambda: model.generate(**inputs, generation_config=prefill_config))
        times, lengths = [], []
        reset_peak()
        for _ in range(reps):
            out, seconds = timed(lambda: model.generate(**inputs, generation_config=config))
            times.append(seconds)
            lengths.append(out.shape[1] - inputs["input_ids"].shape[1])
    batch = inputs["input_ids"].shape[0]
    seconds = float(np.median(times))
    new = int(np.median(lengths))
    decode = max(seconds - prefill_seconds, 1e-9)
    steps_per_s = (new - 1) / decode if new > 1 else float("nan")
    return record(
        name, batch=batch, prompt_tokens=int(inputs["input_ids"].shape[1]), new_tokens=new, seconds=round(seconds, 3),
        all_seconds=[round(t, 3) for t in times], prefill_seconds=round(prefill_seconds, 3) if prefill else None,
        tokens_per_s=round(batch * new / seconds, 1), decode_tokens_per_s=round(batch * (new - 1) / decode, 1),
        decode_steps_per_s=round(steps_per_s, 2), share_of_weight_read_bound=round(steps_per_s / bound_steps_per_s, 4),
        **memory(), **info,
    )


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------

def forced_valid_scorer_class():
    from grto_lib import rewards
    from grto_lib.scorer import RolloutScorer

    class ForcedValidScorer(RolloutScorer):
        """Benchmark only: an unparseable completion gets a random box and points inside the image."""

        def parse(self, texts, samples):
            answers, boxes, points, valid = super().parse(texts, samples)
            rng = np.random.default_rng(len(texts))
            self.forced = int((~valid).sum())
            for i in np.flatnonzero(~valid):
                h, w = samples[i].mask.shape
                x1, y1 = rng.uniform(0, 0.6) * w, rng.uniform(0, 0.6) * h
                x2, y2 = x1 + rng.uniform(0.1, 0.4) * w, y1 + rng.uniform(0.1, 0.4) * h
                boxes[i] = [x1, y1, x2, y2]
                points[i] = [[(x1 + x2) / 2, (y1 + y2) / 2]] * points.shape[1]  # K = scorer.PROMPT_POINTS
                answers[i] = rewards.Answer(bbox=(x1, y1, x2, y2), points=[tuple(p) for p in points[i]])
                valid[i] = True
            return answers, boxes, points, valid

    return ForcedValidScorer


class EncoderCounter:
    """Counts SAM image-encoder calls and the images they encode (a forward hook on ``image_encoder``)."""

    def __init__(self, tool):
        self.calls = self.images = 0
        self.handle = tool.sam.image_encoder.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.calls += 1
        self.images += int(args[0].shape[0])

    def reset(self):
        self.calls = self.images = 0


def step_probe(counter):
    from transformers import TrainerCallback

    class StepProbe(TrainerCallback):
        """Per optimizer step: synchronised wall time, peak GPU memory, SAM encoder calls and images."""

        def __init__(self):
            self.steps = []

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            reset_peak()
            counter.reset()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.steps.append({"step": state.global_step, "seconds": round(time.perf_counter() - self.start, 3),
                               "encoder_calls": counter.calls, "encoder_images": counter.images, **memory()})

    return StepProbe()


class GenerationTimer:
    """Wraps a trainer's ``_generate_single_turn`` (TRL's call of ``model.generate``): completions, tokens and
    synchronised seconds of every generation call made inside the RL step."""

    def __init__(self, trainer, bound_steps_per_s: float | None = None):
        self.calls, self.bound = [], bound_steps_per_s
        self.inner = trainer._generate_single_turn
        trainer._generate_single_turn = self

    def __call__(self, prompt_ids, *args, **kwargs):
        (completion_ids, logprobs), seconds = timed(lambda: self.inner(prompt_ids, *args, **kwargs))
        lengths = [len(c) for c in completion_ids]
        steps_per_s = max(lengths) / seconds
        self.calls.append({
            "completions": len(lengths), "tokens": sum(lengths), "longest": max(lengths), "seconds": round(seconds, 3),
            "tokens_per_s": round(sum(lengths) / seconds, 1), "decode_steps_per_s": round(steps_per_s, 2),
            "share_of_weight_read_bound": round(steps_per_s / self.bound, 4) if self.bound else None})
        return completion_ids, logprobs


def run_trainer(record, label, method, policy, processor, tool, dataset, policy_px, counter, *, prompts, group,
                steps, max_new_tokens, micro_batch, generate_every=1, bound_steps_per_s=None, after_train=None):
    """A few steps of the trainer ``grto_lib.train.build_trainer`` builds for the paper preset (random tool), with
    the benchmark's scorer, every special token suppressed, no logging or saving, no warm-up."""
    from grto_lib.config import TrainConfig
    from grto_lib.train import build_trainer

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(method=method, preset="paper", random_tool=True, prompts_per_step=prompts,
                             num_generations=group, steps=steps, max_completion_length=max_new_tokens,
                             logging_steps=1, curve_every=0, output_dir=tmp, loss_type="grpo",
                             generate_every=generate_every, micro_batch=micro_batch, warmup_steps=0,
                             tool_weighting="uniform",  # ForcedValidScorer's random boxes are rarely on target
                             compile_generation=False)  # the stock path these sections measure
        tool.set_trainable("decoder")  # a previous grpo trainer froze it
        scorer = forced_valid_scorer_class()(dataset, tool, policy_px)
        trainer = build_trainer(config, policy, processor, tool, dataset, policy_px, scorer=scorer, report_to=[],
                                disable_tqdm=True, save_strategy="no",
                                generation_kwargs={"suppress_tokens": special_ids(processor.tokenizer)})
        args = trainer.args
        probe = step_probe(counter)
        trainer.add_callback(probe)
        generation = GenerationTimer(trainer, bound_steps_per_s)
        from transformers.trainer_callback import PrinterCallback
        trainer.remove_callback(PrinterCallback)  # results.jsonl holds the logs
        cleanup()
        reset_peak()
        _, seconds = timed(trainer.train)
        extra = after_train(trainer) if after_train else {}
        logs = [row for row in trainer.state.log_history if "step" in row and "train_runtime" not in row]
        keys = ("time/generate_and_score", "time/tool_scoring", "time/policy_loss", "time/tool_loss",
                "step_time", "tool/loss", "tool/valid_rollouts", "loss", "completions/mean_length")
        per_step = []
        for row, probed in zip(logs, probe.steps):
            per_step.append({**probed, **{k: row[k] for k in keys if k in row}})
        accumulation = args.gradient_accumulation_steps
        for step in per_step:  # TRL logs the mean over micro-batches; a step runs `accumulation` of them
            for k in ("time/policy_loss", "time/tool_loss"):
                if k in step:
                    step[k + "_per_step"] = step[k] * accumulation
        steady = per_step[1:] or per_step  # step 1 warms up kernels and allocator
        summary = {k: round(float(np.mean([s[k] for s in steady if k in s])), 4)
                   for k in ("seconds", "time/generate_and_score", "time/tool_scoring", "time/policy_loss_per_step",
                             "time/tool_loss_per_step", "step_time") if any(k in s for s in steady)}
        if "time/generate_and_score" in summary:
            summary["policy_update_and_rest"] = round(
                summary["seconds"] - summary["time/generate_and_score"] - summary.get("time/tool_loss_per_step", 0), 4)
        settings = {k: getattr(args, k) for k in (
            "per_device_train_batch_size", "gradient_accumulation_steps", "generation_batch_size",
            "steps_per_generation", "num_generations", "max_completion_length", "bf16", "gradient_checkpointing",
            "gradient_checkpointing_kwargs", "loss_type", "beta", "learning_rate")}
        result = record(
            label, method=method, prompts_per_step=prompts, completions_per_step=prompts * group,
            train_seconds=round(seconds, 2), steady_mean=summary,
            peak_allocated_gib_max=max((s.get("peak_allocated_gib", 0) for s in per_step), default=None),
            encoder_images_per_step=[s["encoder_images"] for s in per_step],
            encoder_calls_per_step=[s["encoder_calls"] for s in per_step],
            distinct_images_per_step=prompts, forced_valid_last_batch=getattr(scorer, "forced", None),
            generate_every=generate_every, generation_calls=generation.calls, settings=settings, per_step=per_step,
            **extra,
        )
        del trainer, scorer
        cleanup()
        return result


# ----------------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------------

def section_core(record, size, opts, deadline):
    device = "cuda" if cuda() else "cpu"
    dtype = torch.bfloat16 if cuda() else torch.float32
    record("environment", **environment(), size=opts.size)
    dataset = build_data(size, 32)  # grto_generate_every_16 samples 32 distinct prompts
    processor = build_processor(dataset, size["policy_px"])
    from grto_lib.fast_qwen import disable_fast_paths
    from grto_lib.policy import PolicyConfig, prepare_policy

    policy, built = timed(lambda: build_policy(size["arch"], processor.tokenizer, device, dtype))
    policy = prepare_policy(policy, PolicyConfig(preset="paper", lora=False))  # the fast paths, as load_policy
    if opts.stock_paths:
        disable_fast_paths(policy)
    stats = param_stats(policy)
    bound = H100_BANDWIDTH / stats["weight_bytes"]
    record("policy", build_seconds=round(built, 2), dtype=str(dtype), weight_read_bound_steps_per_s=round(bound, 1),
           language_model_bound_steps_per_s=round(H100_BANDWIDTH / stats["language_model_weight_bytes"], 1),
           **stats, **memory())
    tokenizer = processor.tokenizer
    group, new = opts.group, opts.max_new_tokens

    # --- generation: plain generate (TRL's path), larger batches, static cache -------------------------------
    plain = generation_config(tokenizer, new)
    warm = prompt_inputs(processor, dataset, 1, group, size["policy_px"], device)
    with record.guard("generate"):
        if opts.generate == "none":
            raise SkipSection
        with torch.no_grad():
            timed(lambda: policy.generate(**warm, generation_config=generation_config(tokenizer, 8)))
        bench_generate(record, "generate/plain_8", policy, warm, plain, bound, reps=opts.plain_reps, images=1,
                       lora=False)
        if opts.generate == "plain8":
            raise SkipSection
        for images in opts.big_batches:
            if deadline.left() < opts.reserve_for_trainer + 30:
                record(f"generate/plain_{images * group}:skipped", reason="section deadline")
                continue
            inputs = prompt_inputs(processor, dataset, images, group, size["policy_px"], device)
            bench_generate(record, f"generate/plain_{images * group}", policy, inputs, plain, bound,
                           images=images, lora=False)
            del inputs
            cleanup()
        if deadline.left() > opts.reserve_for_trainer + 30:
            static = generation_config(tokenizer, new, cache_implementation="static")
            bench_generate(record, "generate/static_cache_8", policy, warm, static, bound, images=1, lora=False,
                           note="TRL cache_implementation='static' (TRL sets disable_compile=True)")

    # --- LoRA (the paper preset trains an adapter) ---------------------------------------------------------
    policy = prepare_policy(policy, PolicyConfig(preset="paper", lora=True))
    if opts.stock_paths:
        disable_fast_paths(policy)
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    record("lora", trainable_parameters=trainable, r=16, alpha=32, targets="language model q,k,v,o,gate,up,down")
    with record.guard("generate_lora"):
        if opts.generate != "full":
            raise SkipSection
        bench_generate(record, "generate/plain_8_lora", policy, warm, plain, bound, images=1, lora=True,
                       note="what TRL runs during training: adapter not merged")

    # --- the tool alone --------------------------------------------------------------------------------------
    tool, tool_built = timed(lambda: build_tool(size["tool"], device))
    record("tool", preset=size["tool"], build_seconds=round(tool_built, 2),
           parameters=sum(p.numel() for p in tool.parameters()),
           decoder_parameters=sum(p.numel() for p in tool.sam.mask_decoder.parameters()), **memory())
    with record.guard("tool_alone"):
        bench_tool(record, tool, dataset, group)

    # --- trainer steps ---------------------------------------------------------------------------------------
    counter = EncoderCounter(tool)
    known = {"grpo": ("grpo", group * opts.prompts), "grto": ("grto", group * opts.prompts),
             "grto_microbatch8": ("grto", group)}
    for run in opts.runs:  # in the order given
        if run.startswith("grto_generate_every_"):  # one step whose generation call serves k steps
            every = int(run.rsplit("_", 1)[1])
            with record.guard("trainer/" + run):
                run_trainer(record, "trainer/" + run, "grto", policy, processor, tool, dataset, size["policy_px"],
                            counter, prompts=opts.prompts, group=group, steps=1, max_new_tokens=new,
                            micro_batch=group * opts.prompts, generate_every=every, bound_steps_per_s=bound)
            continue
        label, (method, micro) = "trainer/" + run, known[run]
        if label.endswith("microbatch8") and opts.prompts * group == group:
            continue
        if deadline.left() < opts.min_trainer_seconds:
            record(label + ":skipped", reason="section deadline", seconds_left=round(deadline.left(), 1))
            continue
        with record.guard(label):
            steps = opts.steps if micro == group * opts.prompts else opts.memory_steps
            run_trainer(record, label, method, policy, processor, tool, dataset, size["policy_px"], counter,
                        prompts=opts.prompts, group=group, steps=steps, max_new_tokens=new, micro_batch=micro,
                        bound_steps_per_s=bound)
    summarise(record, opts.out)


def bench_tool(record, tool, dataset, group):
    """SAM ViT encoder per image; mask decoder forward + backward + Adam step for 8 and 16 prompts."""
    from grto_lib import losses

    samples = [dataset[i] for i in range(2)]
    with torch.no_grad():
        tool.embed([samples[0].image])  # warm-up
        for n_images in (1, 2):
            times = [timed(lambda: tool.embed([s.image for s in samples[:n_images]]))[1] for _ in range(3)]
            record(f"tool/encoder_{n_images}_images", seconds=round(float(np.median(times)), 4),
                   all_seconds=[round(t, 4) for t in times], dtype=str(next(tool.parameters()).dtype))
        embeddings = tool.embed([s.image for s in samples])
    params = [p for p in tool.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    rng = np.random.default_rng(0)
    for n in (group, 2 * group):
        index = torch.arange(n, device=embeddings.device) % 2
        h, w = samples[0].mask.shape
        xy = rng.uniform(0, 0.5, (n, 2)) * [w, h]
        boxes = torch.tensor(np.concatenate([xy, xy + 0.3 * np.array([w, h])], 1), dtype=torch.float32)
        points = ((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None, :]

        def step():
            logits = tool.decode(embeddings, index, boxes, points, [s.mask.shape for s in samples])
            loss = losses.rollout_tool_losses(logits, [samples[i % 2] for i in range(n)]).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        step()  # warm-up
        times = [timed(step)[1] for _ in range(3)]
        record(f"tool/decoder_fwd_bwd_step_{n}_prompts", seconds=round(float(np.median(times)), 4),
               all_seconds=[round(t, 4) for t in times])
    del optimizer
    cleanup()


def section_compile(record, size, opts, deadline):
    """Static cache + torch.compile (transformers' auto-compile of the decoding step)."""
    from transformers import CompileConfig

    device = "cuda" if cuda() else "cpu"
    dtype = torch.bfloat16 if cuda() else torch.float32
    dataset = build_data(size, 8)
    processor = build_processor(dataset, size["policy_px"])
    policy = build_policy(size["arch"], processor.tokenizer, device, dtype)
    bound = H100_BANDWIDTH / param_stats(policy)["weight_bytes"]
    tokenizer = processor.tokenizer
    compile_config = CompileConfig(backend=opts.compile_backend)
    config = generation_config(tokenizer, opts.max_new_tokens, cache_implementation="static",
                               compile_config=compile_config, disable_compile=False)
    for images in [1] + [b for b in opts.big_batches if b == max(opts.big_batches)]:
        if deadline.left() < 40:
            record(f"compile/static_compiled_{images * opts.group}:skipped", reason="section deadline")
            continue
        with record.guard(f"compile/static_compiled_{images * opts.group}"):
            inputs = prompt_inputs(processor, dataset, images, opts.group, size["policy_px"], device)
            with torch.no_grad():
                _, first = timed(lambda: policy.generate(**inputs, generation_config=config))
            record(f"compile/first_call_{images * opts.group}", seconds=round(first, 2),
                   note="includes torch.compile and CUDA-graph capture")
            bench_generate(record, f"generate/static_compiled_{images * opts.group}", policy, inputs, config,
                           bound, reps=2, prefill=False, images=images, lora=False, backend=opts.compile_backend,
                           note="decode rates include prefill (a prefill-only call would recompile)")


def section_cb(record, size, opts, deadline):
    """Continuous batching (paged attention) on the language model alone, text-only prompts of equal length."""
    from transformers import ContinuousBatchingConfig, Qwen2Config, Qwen2ForCausalLM

    device = "cuda" if cuda() else "cpu"
    dtype = torch.bfloat16 if cuda() else torch.float32
    dataset = build_data(size, 8)
    processor = build_processor(dataset, size["policy_px"])
    tokenizer = processor.tokenizer
    prompt_len = int(prompt_inputs(processor, dataset, 1, 1, size["policy_px"], "cpu")["input_ids"].shape[1])
    text = {k: v for k, v in size["arch"]["text"].items()}
    rope = dict(text.pop("rope_parameters"))
    rope.pop("mrope_section")
    config = Qwen2Config(**text, rope_parameters=rope, tie_word_embeddings=size["arch"]["tie_word_embeddings"],
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(config, dtype=dtype).eval()
    stats = param_stats(model)
    vl_bytes = opts.policy_weight_bytes or stats["weight_bytes"]
    bound = H100_BANDWIDTH / vl_bytes
    record("cb/model", prompt_tokens=prompt_len, **stats, bound_uses_weight_bytes=vl_bytes)
    gen = generation_config(tokenizer, opts.max_new_tokens)
    rng = np.random.default_rng(0)
    low, high = len(special_ids(tokenizer)), len(tokenizer)
    for images in [1] + [b for b in opts.big_batches if b == max(opts.big_batches)]:
        n = images * opts.group
        if deadline.left() < 30:
            record(f"generate/cb_{n}:skipped", reason="section deadline")
            continue
        with record.guard(f"generate/cb_{n}"):
            prompts = [rng.integers(low, high, prompt_len).tolist() for _ in range(images)]
            inputs = [p for p in prompts for _ in range(opts.group)]
            reset_peak()
            outputs, seconds = timed(lambda: model.generate_batch(
                inputs, generation_config=gen, continuous_batching_config=ContinuousBatchingConfig(),
                progress_bar=False))
            lengths = [len(o.generated_tokens) for o in outputs.values()]
            spans = [o.lifespan for o in outputs.values() if o.lifespan[0] > 0]
            busy = (max(s[1] for s in spans) - min(s[0] for s in spans)) if spans else float("nan")
            new = int(np.median(lengths))
            steps_per_s = new / busy if busy == busy else float("nan")
            record(f"generate/cb_{n}", batch=n, prompt_tokens=prompt_len, new_tokens=new,
                   tokens=int(sum(lengths)), seconds_with_setup=round(seconds, 3), seconds_requests=round(busy, 3),
                   tokens_per_s=round(sum(lengths) / busy, 1), steps_per_s=round(steps_per_s, 2),
                   share_of_weight_read_bound=round(steps_per_s / bound, 4),
                   errors=[o.error for o in outputs.values() if o.error][:3], **memory(),
                   note="language model alone, text-only prompts; TRL refuses continuous batching for VLMs")


def section_distributed(record, size, opts, deadline):
    """A short GRTO run under ``accelerate launch`` (or torchrun): every process builds the same random-init
    models and generates and scores its own prompts; DDP averages the policy's gradients, and
    ``GRTOTrainer._before_optimizer_step`` sums the tool's over processes (each process's tool loss is weighted
    against the whole optimizer step's normaliser, so the sum is the one-process update). After the last step,
    every process's policy and tool parameters are compared through fingerprints
    (``grto_lib.train.parameters_in_sync``); throughput is completions per second of all processes."""
    from grto_lib.policy import PolicyConfig, prepare_policy
    from grto_lib.train import parameters_in_sync

    processes = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda() else torch.device("cpu")
    if cuda():
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if cuda() else torch.float32
    record("environment", **environment(), size=opts.size, processes=processes)
    dataset = build_data(size, 16)
    processor = build_processor(dataset, size["policy_px"])
    policy = build_policy(size["arch"], processor.tokenizer, device, dtype)
    policy = prepare_policy(policy, PolicyConfig(preset="paper", lora=True))
    tool = build_tool(size["tool"], device)
    bound = H100_BANDWIDTH / param_stats(policy)["weight_bytes"]
    group = opts.group
    row = run_trainer(record, f"distributed/grto_{processes}_processes", "grto", policy, processor, tool,
                      dataset, size["policy_px"], EncoderCounter(tool), prompts=opts.prompts, group=group,
                      steps=opts.steps, max_new_tokens=opts.max_new_tokens, micro_batch=group * opts.prompts,
                      bound_steps_per_s=bound,
                      after_train=lambda trainer: {"in_sync": parameters_in_sync({"policy": policy, "tool": tool},
                                                                                       trainer.accelerator.device)})
    steady = [s["seconds"] for s in row["per_step"][1:]] or [row["per_step"][0]["seconds"]]
    completions = processes * opts.prompts * group
    record("distributed/summary", processes=processes, completions_per_step=completions,
           steady_step_seconds=round(float(np.mean(steady)), 3),
           completions_per_s=round(completions / float(np.mean(steady)), 3), in_sync=row["in_sync"])


def summarise(record, out: Path):
    """One row that puts the headline numbers side by side (from this file's earlier rows)."""
    rows = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["name"]] = row
    summary = {}
    grpo, grto = rows.get("trainer/grpo"), rows.get("trainer/grto")
    if grpo and grto:
        g, t = grpo["steady_mean"], grto["steady_mean"]
        summary["grpo_step_seconds"] = g.get("seconds")
        summary["grto_step_seconds"] = t.get("seconds")
        summary["grto_over_grpo_step"] = round(t["seconds"] / g["seconds"] - 1, 4)
    dec = max((r for n, r in rows.items() if n.startswith("tool/decoder_fwd_bwd_step_")),
              key=lambda r: int(r["name"].split("_")[-2]), default=None)
    if grpo and dec:
        summary["tool_update_over_grpo_step"] = round(dec["seconds"] / grpo["steady_mean"]["seconds"], 4)
    plain = rows.get("generate/plain_8")
    if plain:
        for name, row in rows.items():
            if name.startswith("generate/") and "tokens_per_s" in row:
                summary[f"speedup_vs_plain_8/{name}"] = round(row["tokens_per_s"] / plain["tokens_per_s"], 2)
    record("summary", **summary)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=("core", "compile", "cb", "distributed"))
    parser.add_argument("--size", choices=tuple(SIZES), default="paper")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    parser.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--prompts", type=int, default=2, help="distinct images per trainer step")
    parser.add_argument("--steps", type=int, default=3, help="trainer steps per run (the first is warm-up)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--big-batches", type=lambda s: [int(v) for v in s.split(",") if v], default=[4, 8],
                        help="images per larger generate call (x G completions each)")
    parser.add_argument("--generate", choices=("full", "plain8", "none"), default="full",
                        help="core: which generate benchmarks to run")
    parser.add_argument("--plain-reps", type=int, default=2, help="timed repetitions of generate/plain_8")
    parser.add_argument("--runs", type=lambda s: s.split(","), default=["grpo", "grto", "grto_microbatch8"],
                        help="core: trainer runs (grpo, grto, grto_microbatch8, grto_generate_every_K)")
    parser.add_argument("--memory-steps", type=int, default=2, help="steps of the grto_microbatch8 run")
    parser.add_argument("--budget", type=float, default=300, help="seconds this section may take")
    parser.add_argument("--reserve-for-trainer", type=float, default=150)
    parser.add_argument("--min-trainer-seconds", type=float, default=45)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--policy-weight-bytes", type=int, default=None,
                        help="cb: weight bytes of the whole VLM for the bound (default: the LM's own)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--stock-paths", action="store_true",
                        help="core: transformers' own Qwen2.5-VL classes (grto_lib.fast_qwen off), for comparisons")
    opts = parser.parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    record = Recorder(opts.out, opts.section, write=int(os.environ.get("RANK", "0")) == 0)
    deadline = Deadline(opts.budget)
    start = time.perf_counter()
    section = {"core": section_core, "compile": section_compile, "cb": section_cb,
               "distributed": section_distributed}[opts.section]
    try:
        section(record, SIZES[opts.size], opts, deadline)
    except Exception as error:  # noqa: BLE001
        record(f"{opts.section}:error", error=f"{type(error).__name__}: {error}",
               traceback=traceback.format_exc()[-3000:])
        raise
    finally:
        record(f"{opts.section}:done", seconds=round(time.perf_counter() - start, 1))


if __name__ == "__main__":
    main()
