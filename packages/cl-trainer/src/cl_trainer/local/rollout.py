"""Generation with transformers and log-probs, in veRL's tensor layout.

veRL's rollout returns prompts left-padded to ``data.max_prompt_length`` and responses right-padded
to ``data.max_response_length``, the response mask covering tokens up to and including EOS; the
metric helpers read those widths (e.g. ``response_length/clip_ratio``), so the same layout is kept.
"""

from __future__ import annotations

from typing import Any

import torch


def _sampling_kwargs(sampling: Any, do_sample: bool) -> dict[str, Any]:
    """veRL's rollout sampling fields as ``generate`` kwargs (``top_k=-1`` means no top-k)."""
    temperature = float(sampling.get("temperature", 1.0))
    if not do_sample or temperature <= 0:
        return {"do_sample": False}
    top_k = int(sampling.get("top_k", -1))
    return {
        "do_sample": True,
        "temperature": temperature,
        "top_k": top_k if top_k > 0 else 0,
        "top_p": float(sampling.get("top_p", 1.0)),
    }


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    sampling: Any,
    do_sample: bool,
    prompt_length: int,
    response_length: int,
    chunk: int = 256,
) -> dict[str, torch.Tensor]:
    """One response per prompt (repeat prompts for ``n``); returns veRL's batch tensors."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    device = next(model.parameters()).device
    out_prompts, out_responses = [], []
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        width = max(len(p) for p in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(part):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=response_length,
            eos_token_id=eos,
            pad_token_id=pad,
            **_sampling_kwargs(sampling, do_sample),
        ).cpu()
        resp = torch.full((len(part), response_length), pad, dtype=torch.long)
        resp[:, : gen.shape[1] - width] = gen[:, width:]
        left = torch.full((len(part), prompt_length), pad, dtype=torch.long)
        left[:, prompt_length - width :] = ids
        out_prompts.append(left)
        out_responses.append(resp)
    prompts_t = torch.cat(out_prompts)
    responses = torch.cat(out_responses)
    prompt_mask = (
        torch.arange(prompt_length)
        >= prompt_length - torch.tensor([len(p) for p in prompts])[:, None]
    )
    response_mask = _mask_through_eos(responses, eos)
    attention_mask = torch.cat([prompt_mask.long(), response_mask], dim=1)
    return {
        "prompts": prompts_t,
        "responses": responses,
        "input_ids": torch.cat([prompts_t, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids(attention_mask),
        "response_mask": response_mask,
    }


def _mask_through_eos(responses: torch.Tensor, eos: int) -> torch.Tensor:
    """1 up to and including the first EOS, 0 after (veRL's ``get_response_mask``)."""
    is_eos = (responses == eos).long()
    after_eos = (torch.cumsum(is_eos, dim=1) - is_eos) > 0
    return (~after_eos).long()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.cumsum(attention_mask, dim=-1) - 1, min=0)


def log_probs(
    model: Any, batch: dict[str, torch.Tensor], temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and entropy) of the responses under ``model``, logits / temperature.

    Columns of left padding shared by every row are dropped first: same result, less compute.
    """
    from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

    device = next(model.parameters()).device
    mask = batch["attention_mask"]
    first = int((mask.sum(0) > 0).nonzero()[0])
    input_ids = batch["input_ids"][:, first:].to(device)
    attn = mask[:, first:].to(device)
    responses = batch["responses"].to(device)
    length = responses.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids(attn)).logits
    logits = logits[:, -length - 1 : -1].float() / temperature
    logp = logprobs_from_logits(logits, responses)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logp, entropy
