"""Rollouts outside the trainer: sampled (BTO buffer) or greedy (evaluation) completions of the policy.

Inside training, TRL generates; here the same processor and chat template are used, so what the policy sees
is identical. Each prompt is repeated ``n`` times in the batch rather than using ``num_return_sequences``, which
keeps vision inputs aligned for every vision-language model.
"""
from __future__ import annotations

import torch

from .config import COMPLETION_TOKENS
from .prompts import build_messages, policy_view, system_prompt_for


def max_new_tokens_for(processor) -> int:
    """The completion limit a policy runs with when a caller gives none: its processor's ``max_new_tokens`` (the
    tiny stand-in's processor declares 128: its completions take 55-100 tokens), else the paper preset's
    ``config.COMPLETION_TOKENS["paper"]`` (512, room for a real model's reasoning). Training uses
    ``TrainConfig.max_completion_length``, which defaults to the same numbers."""
    return getattr(processor, "max_new_tokens", COMPLETION_TOKENS["paper"])


def progress_bar(items, description: str):
    """``items`` (a sized iterable), with a progress bar labelled ``description``: in a notebook's kernel an HTML
    bar updated in place (transformers' ``NotebookProgressBar``, the look of the trainer's own progress, which a
    saved notebook keeps as it ended; no widget, no stderr), elsewhere tqdm's, on stderr."""
    from transformers.utils import is_in_notebook

    if not is_in_notebook():
        from tqdm import tqdm

        yield from tqdm(items, desc=description)
        return
    from transformers.utils.notebook import NotebookProgressBar

    bar = NotebookProgressBar(len(items), prefix=description)
    bar.update(0)
    for done, item in enumerate(items, 1):
        yield item
        bar.update(done)


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


@torch.no_grad()
def generate_completions(model, processor, samples, policy_image_size: int, *, n: int = 1, do_sample: bool = False,
                         temperature: float = 1.0, max_new_tokens: int | None = None,
                         batch_size: int = 32, progress: str | None = None) -> list[list[str]]:
    """``n`` completions for each sample (a list of ``n`` strings per sample, in order), generated ``batch_size``
    at a time, at most ``max_new_tokens`` tokens each (None: ``max_new_tokens_for(processor)``); ``progress``: the
    label of a progress bar over the batches (None: no bar)."""
    max_new_tokens = max_new_tokens or max_new_tokens_for(processor)
    tokenizer = _tokenizer(processor)
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    prompt_text = {}
    requests = [(i, s) for i, s in enumerate(samples) for _ in range(n)]
    outputs: list[list[str]] = [[] for _ in samples]
    starts = range(0, len(requests), batch_size)
    for start in starts if progress is None else progress_bar(starts, progress):
        chunk = requests[start:start + batch_size]
        texts, images = [], []
        for i, sample in chunk:
            if sample.query not in prompt_text:
                prompt_text[sample.query] = processor.apply_chat_template(
                    build_messages(sample.query, system_prompt_for(processor)), add_generation_prompt=True,
                    tokenize=False)
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


def completion_logprobs(model, processor, sample, completions: list[str], policy_image_size: int):
    """Per-token log-probabilities of ``completions`` (re-tokenized) given ``sample``'s prompt.

    Each completion's tokens are followed by the end-of-turn token (the tokenizer's ``eos_token``) that ended
    it, which TRL counts as a completion token too; a completion cut at the length limit had none, so this
    assumes every completion ended on its own (the tiny stand-in's stop far below the limit).
    Returns ``(logps [G, T], mask [G, T])``, right-padded, differentiable w.r.t. the policy: the quantities
    TRL's GRPO loss is built from (``losses.clipped_policy_loss``).
    """
    tokenizer = _tokenizer(processor)
    device = next(model.parameters()).device
    prompt = processor.apply_chat_template(build_messages(sample.query, system_prompt_for(processor)),
                                           add_generation_prompt=True, tokenize=False)
    image = policy_view(sample.image, policy_image_size)
    prompt_inputs = processor(text=[prompt] * len(completions), images=[image] * len(completions),
                              return_tensors="pt", padding=True).to(device)
    completion_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                      for c in completions]
    length = max(len(ids) for ids in completion_ids)
    ids = torch.full((len(completions), length), tokenizer.pad_token_id, device=device)
    mask = torch.zeros((len(completions), length), device=device)
    for i, c in enumerate(completion_ids):
        ids[i, :len(c)] = torch.tensor(c, device=device)
        mask[i, :len(c)] = 1
    input_ids = torch.cat([prompt_inputs["input_ids"], ids], 1)
    attention = torch.cat([prompt_inputs["attention_mask"], mask.long()], 1)
    extra = {k: v for k, v in prompt_inputs.items() if k not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in extra:
        extra["mm_token_type_ids"] = torch.cat([extra["mm_token_type_ids"], torch.zeros_like(ids)], 1)
    logits = model(input_ids=input_ids, attention_mask=attention, **extra).logits[:, -length - 1:-1]
    logps = torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return logps, mask
