"""Rollouts outside the trainer: sampled (BTO buffer) or greedy (evaluation) completions of the policy.

Inside training, TRL generates; here the same processor and chat template are used, so what the policy sees
is identical. Each prompt is repeated ``n`` times in the batch rather than using ``num_return_sequences``, which
keeps vision inputs aligned for every vision-language model.
"""
from __future__ import annotations

import torch

from .prompts import build_messages, policy_view


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


@torch.no_grad()
def generate_completions(model, processor, samples, policy_image_size: int, *, n: int = 1, do_sample: bool = False,
                         temperature: float = 1.0, max_new_tokens: int = 48, batch_size: int = 32) -> list[list[str]]:
    """``n`` completions for each sample (a list of ``n`` strings per sample, in order)."""
    tokenizer = _tokenizer(processor)
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompt_text = {}
    requests = [(i, s) for i, s in enumerate(samples) for _ in range(n)]
    outputs: list[list[str]] = [[] for _ in samples]
    for start in range(0, len(requests), batch_size):
        chunk = requests[start:start + batch_size]
        texts, images = [], []
        for i, sample in chunk:
            if sample.query not in prompt_text:
                prompt_text[sample.query] = processor.apply_chat_template(
                    build_messages(sample.query), add_generation_prompt=True, tokenize=False)
            texts.append(prompt_text[sample.query])
            images.append(policy_view(sample.image, policy_image_size))
        inputs = processor(text=texts, images=images, return_tensors="pt", padding=True).to(device)
        generated = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature if do_sample else None, top_p=None, top_k=None,
            pad_token_id=tokenizer.pad_token_id,
        )
        completions = tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for (i, _), text in zip(chunk, completions):
            outputs[i].append(text)
    model.train(was_training)
    return outputs
