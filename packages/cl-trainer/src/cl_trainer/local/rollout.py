"""Generation with transformers and log-probs, in veRL's tensor layout.

veRL's rollout returns prompts left-padded to ``data.max_prompt_length`` and responses right-padded
to ``data.max_response_length``, the response mask covering tokens up to and including EOS; the
metric helpers read those widths (e.g. ``response_length/clip_ratio``), so the same layout is kept.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


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
    """One response per prompt (repeat prompts for ``n``); returns veRL's batch tensors.

    Prompts more than one chunk holds (validation) are generated shortest first, so that a chunk
    holds prompts of about one length: less left padding to run, and rows that finish together
    (``generate`` runs every row of a chunk until its last one stops); the rows are returned in
    their given order. A prompt repeated within a chunk (its ``rollout.n`` samples) is encoded
    once: its keys and values, but for its last token, are computed for one copy and handed to
    ``generate`` as the cache of every copy, which then decodes exactly as from its own prefill.
    """
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    device = next(model.parameters()).device
    order = list(range(len(prompts)))
    if len(prompts) > chunk:
        order.sort(key=lambda i: len(prompts[i]))
    out_prompts, out_responses = [], []
    for start in range(0, len(order), chunk):
        part = [prompts[i] for i in order[start : start + chunk]]
        width = max(len(p) for p in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(part):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        cache = None
        if width > 1 and len({tuple(p) for p in part}) < len(part):
            cache = shared_prefix(model, ids[:, :-1], mask[:, :-1])[1]
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            past_key_values=cache,
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
    restore = torch.empty(len(order), dtype=torch.long)
    restore[torch.tensor(order)] = torch.arange(len(order))
    prompts_t = torch.cat(out_prompts)[restore]
    responses = torch.cat(out_responses)[restore]
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


def shared_prefix(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Run each distinct left-padded row of ``ids`` once; per row, the logits of its last column
    and the key/value cache, both gathered back to every row (differentiably)."""
    device = next(model.parameters()).device
    unique, inverse = torch.unique(torch.cat([ids, mask], dim=1), dim=0, return_inverse=True)
    width = ids.shape[1]
    unique_mask = unique[:, width:]
    out = model(
        input_ids=unique[:, :width].to(device),
        attention_mask=unique_mask.to(device),
        position_ids=position_ids(unique_mask).to(device),
        use_cache=True,
        logits_to_keep=1,
    )
    inverse = inverse.to(device)
    out.past_key_values.reorder_cache(inverse)
    return out.logits[inverse, -1], out.past_key_values


def log_probs(
    model: Any, batch: dict[str, torch.Tensor], temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (and entropy) of the responses under ``model``, logits / temperature.

    The same numbers as one forward over the padded batch (to float rounding), for less compute:
    only the columns some row uses are run (leading prompt padding and the response columns after
    the longest response are dropped; their outputs are masked everywhere downstream, so they are
    returned as 0), and each distinct prompt is encoded once, its keys and values shared by the
    rows that continue it (the ``rollout.n`` responses of a prompt): causal attention makes a
    prompt's states independent of what follows it. Gradients flow through the shared prompt
    states as through separate copies.
    """
    from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

    device = next(model.parameters()).device
    prompt_width = batch["prompts"].shape[1]
    mask = batch["attention_mask"]
    responses = batch["responses"]
    first = int((mask[:, :prompt_width].sum(0) > 0).nonzero()[0])
    width = int(mask[:, prompt_width:].sum(-1).max().clamp(min=1))
    head = prompt_width - first
    logits, cache = shared_prefix(model, batch["prompts"][:, first:], mask[:, first:prompt_width])
    logits = logits[:, None]  # the last prompt column predicts the first response token
    if width > 1:
        attn = mask[:, first : prompt_width + width - 1]
        rest = model(
            input_ids=responses[:, : width - 1].to(device),
            attention_mask=attn.to(device),
            position_ids=position_ids(attn)[:, head:].to(device),
            past_key_values=cache,
        ).logits
        logits = torch.cat([logits, rest], dim=1)
    logits = logits.float() / temperature
    logp = logprobs_from_logits(logits, responses[:, :width].to(device))
    entropy = entropy_from_logits(logits) if with_entropy else None
    pad = (0, responses.shape[1] - width)
    return F.pad(logp, pad), None if entropy is None else F.pad(entropy, pad)
