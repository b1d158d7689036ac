"""Compiled generation inside ``GRTOTrainer`` (``TrainConfig.compile_generation``): a static key-value cache whose
decoding step transformers compiles. On a CPU transformers compiles only when told to, so these tests compile with
dynamo's ``eager`` backend: the graphs, guards and recompilations that a GPU compiles with inductor, through the
trainer's own generation call."""
import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig

from grto_lib.config import TrainConfig
from grto_lib.runs import load_models, load_splits
from grto_lib.train import build_trainer

RUN = dict(method="grto", steps=3, prompts_per_step=2, num_generations=2, train_size=16, eval_size=8, curve_every=0,
           logging_steps=1, max_completion_length=12, lora=True, compile_generation=True)


def _run(tmp_path, compiled: bool) -> dict:
    """Three steps of the paper preset's generation settings on the tiny stand-ins (LoRA, its dropout active while
    sampling, gradient checkpointing, which TRL switches off and on around generation), greedy so that sampling
    draws nothing, prompts padded only to their batch's longest so that the steps' prompt lengths differ.
    ``compiled``: the trainer's call with the decoding step compiled; otherwise TRL's own call, uncompiled, on the
    same static cache."""
    config = TrainConfig(output_dir=str(tmp_path), **RUN)
    policy, processor, tool, size = load_models(config)
    trainer = build_trainer(config, policy, processor, tool, load_splits(config)[0], size, pad_to_multiple_of=None,
                            activation_checkpointing=True, generation_kwargs={"do_sample": False})
    if compiled:
        compile_config = CompileConfig(backend="eager", mode=None)
        compile_config._compile_all_devices = True  # a CPU: transformers would not compile otherwise
        trainer.generation_config.compile_config = compile_config
    else:
        trainer.compiled_generation = False
        trainer.generation_config.disable_compile = True
    base = policy.get_base_model()
    seen = {"completions": [], "prompt_lengths": []}
    generate = trainer._generate_single_turn

    def spy(prompt_ids, *args, **kwargs):
        completions, logprobs = generate(prompt_ids, *args, **kwargs)
        seen["completions"].append(completions)
        seen["prompt_lengths"].append(max(len(p) for p in prompt_ids))
        seen.setdefault("trl_forward_after", []).append("forward" in base.__dict__)
        return completions, logprobs

    trainer._generate_single_turn = spy
    torch._dynamo.reset()
    counters.clear()
    trainer.train()
    seen.update(graphs=counters["stats"]["unique_graphs"], cache_len=trainer.generation_cache_len,
                rewards=[entry["reward"] for entry in trainer.state.log_history if "reward" in entry],
                hooks_after=len(base.get_input_embeddings()._forward_hooks))
    return seen


def test_the_compiled_call_generates_what_trl_generates_with_one_graph_for_the_run(tmp_path):
    compiled, trl = _run(tmp_path / "compiled", True), _run(tmp_path / "trl", False)
    assert len(set(compiled["prompt_lengths"])) > 1  # the steps' prompts differ in length
    assert compiled["completions"] == trl["completions"]  # the same tokens, step by step
    assert compiled["graphs"] == 1 and trl["graphs"] == 0  # one compiled decoding step served the three steps
    assert compiled["cache_len"] >= max(compiled["prompt_lengths"]) + RUN["max_completion_length"]
    assert all(r == r for r in compiled["rewards"]) and len(compiled["rewards"]) == 3
    # TRL's fused-LM-head forward and the embedding hooks are back after every generation
    assert all(compiled["trl_forward_after"]) and compiled["hooks_after"] > 0
