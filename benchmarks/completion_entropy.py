"""Where a tiny stand-in's sampling noise lands: the entropy of its next-token distribution along its own greedy
completions, summed per part of the completion (docs/benchmark_history.md, section 7).

    OMP_NUM_THREADS=1 python benchmarks/completion_entropy.py --policy data/standins/policy \
        --out benchmarks/results/cpu_completion_entropy.json

GRPO gives every token of a rollout the rollout's advantage. Tokens whose choice does not change the reward but
varies from rollout to rollout (a listed object's coordinates, an ambiguous point) add noise to the policy
gradient; the tokens where the policy chooses the object are the signal. The parts: the listed objects' names
and numbers, the restated query, the reading (after "means"), the picked object's name and numbers (after "="),
the answer's box and its points. Entropies are reported at sampling temperatures 1 and 0.5.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from grto_lib.data import load_dataset
from grto_lib.generation import generate_completions
from grto_lib.policy import PolicyConfig, load_policy
from grto_lib.prompts import build_messages, policy_view, system_prompt_for


def parts(tokens: list[str]) -> list[str]:
    """The part of the completion each token belongs to."""
    out, part = [], "listing"
    for token in tokens:
        if token == ":" and part == "listing":
            part = "query"
        elif token == "means" and part == "query":
            part = "reading"
        elif token == "=" and part in ("query", "reading"):
            part = "pick"
        elif token == "</think>":
            part = "answer"
        elif token == '"points"':
            part = "points"
        number = token.isdigit()
        out.append(f"{part} numbers" if number and part in ("listing", "pick", "points") else
                   "answer box" if number and part == "answer" else f"{part} words")
    return out


@torch.no_grad()
def entropies(model, processor, world: str, samples: int, temperatures) -> dict:
    tokenizer = processor.tokenizer
    dataset = load_dataset(world, "test", size=samples)
    texts = [g[0] for g in generate_completions(model, processor, [dataset[i] for i in range(samples)], 128)]
    totals = {t: {} for t in temperatures}
    for i, text in enumerate(texts):
        sample = dataset[i]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        prompt = processor.apply_chat_template(build_messages(sample.query, system_prompt_for(processor)),
                                               add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[prompt], images=[policy_view(sample.image, 128)], return_tensors="pt")
        full = torch.cat([inputs["input_ids"], torch.tensor([ids])], 1)
        token_types = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(ids), dtype=torch.long)], 1)
        logits = model(input_ids=full, attention_mask=torch.ones_like(full), mm_token_type_ids=token_types,
                       pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"]).logits
        logits = logits[0, -len(ids) - 1:-1].float()
        labels = parts(tokenizer.convert_ids_to_tokens(ids))
        for temperature in temperatures:
            logp = torch.log_softmax(logits / temperature, -1)
            entropy = (-(logp.exp() * logp).sum(-1)).tolist()
            for label, value in zip(labels, entropy):
                totals[temperature][label] = totals[temperature].get(label, 0.0) + value
    return {f"T={t}": {label: round(value / samples, 3) for label, value in sorted(totals[t].items())}
            | {"all": round(sum(totals[t].values()) / samples, 3)} for t in temperatures}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", action="append", required=True, help="a policy folder (repeatable)")
    parser.add_argument("--worlds", nargs="+", default=["reasonseg", "cod", "earthreason"])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"unit": "nats per completion (mean over the samples), summed over the tokens of each part",
              "samples": args.samples, "policies": {}}
    for folder in args.policy:
        model, processor = load_policy(PolicyConfig(model_name_or_path=folder))
        model.eval()
        result["policies"][folder] = {w: entropies(model, processor, w, args.samples, (1.0, 0.5)) for w in args.worlds}
        print(folder, json.dumps(result["policies"][folder], indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
