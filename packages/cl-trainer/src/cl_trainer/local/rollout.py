"""Generation with transformers and log-probs, in veRL's tensor layout.

veRL's rollout returns prompts left-padded to ``data.max_prompt_length`` and responses right-padded
to ``data.max_response_length``, the response mask covering tokens up to and including EOS; the
metric helpers read those widths (e.g. ``response_length/clip_ratio``), so the same layout is kept.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def is_greedy(sampling: Any, do_sample: bool) -> bool:
    """Whether veRL's sampling fields decode greedily: ``do_sample`` off, or a temperature <= 0."""
    return not do_sample or float(sampling.get("temperature", 1.0)) <= 0


def _warpers(sampling: Any, do_sample: bool) -> Any:
    """veRL's rollout sampling fields as transformers' own logits warpers, in the order and with
    the no-op rules of ``generate`` (``top_k=-1`` means no top-k); ``None`` means greedy."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    if is_greedy(sampling, do_sample):
        return None
    temperature = float(sampling.get("temperature", 1.0))
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    top_k = int(sampling.get("top_k", -1))
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k=top_k))
    top_p = float(sampling.get("top_p", 1.0))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p))
    return warpers


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
    log_prob_temperature: float | None = None,
) -> dict[str, torch.Tensor]:
    """One response per prompt (repeat prompts for ``n``); returns veRL's batch tensors.

    ``generate``'s sampling loop without its per-step machinery: each distinct prompt is encoded
    once (``shared_prefix``: the ``rollout.n`` copies of a prompt share its keys and values), then
    one token per step is drawn for every unfinished row, greedily or from
    ``softmax(warpers(logits))`` with transformers' own warpers, and rows that have emitted EOS
    leave the batch (their cache rows are dropped once an eighth of the rows have finished), so a
    step runs only the rows still writing. More prompts than ``chunk`` run shortest first, a chunk
    at a time, and come back in their given order.

    With ``log_prob_temperature``, also returns ``rollout_log_probs`` and ``rollout_entropy``:
    each response token's log-prob and the entropy under ``logits / log_prob_temperature``, from
    the logits the tokens were drawn from, computed as veRL's actor computes old log-probs (its
    ``logprobs_from_logits`` and ``entropy_from_logits``); 0 beyond each response.
    """
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    warpers = _warpers(sampling, do_sample)
    order = list(range(len(prompts)))
    if len(prompts) > chunk:
        order.sort(key=lambda i: len(prompts[i]))
    parts = [
        _decode(
            model,
            [prompts[i] for i in order[start : start + chunk]],
            warpers,
            pad,
            eos,
            response_length,
            log_prob_temperature,
        )
        for start in range(0, len(order), chunk)
    ]
    restore = torch.empty(len(order), dtype=torch.long)
    restore[torch.tensor(order)] = torch.arange(len(order))
    responses = torch.cat([p["responses"] for p in parts])[restore]
    lengths = torch.tensor([len(p) for p in prompts])
    prompt_mask = torch.arange(prompt_length) >= prompt_length - lengths[:, None]
    prompts_t = torch.full((len(prompts), prompt_length), pad, dtype=torch.long)
    prompts_t[prompt_mask] = torch.tensor([t for p in prompts for t in p], dtype=torch.long)
    response_mask = _mask_through_eos(responses, eos)
    attention_mask = torch.cat([prompt_mask.long(), response_mask], dim=1)
    out = {
        "prompts": prompts_t,
        "responses": responses,
        "input_ids": torch.cat([prompts_t, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": position_ids(attention_mask),
        "response_mask": response_mask,
    }
    if log_prob_temperature is not None:
        for key in ("rollout_log_probs", "rollout_entropy"):
            out[key] = torch.cat([p[key] for p in parts])[restore]
    return out


def _decode(
    model: Any,
    prompts: list[list[int]],
    warpers: Any,
    pad: int,
    eos: int,
    response_length: int,
    log_prob_temperature: float | None,
) -> dict[str, torch.Tensor]:
    """The sampling loop of :func:`generate` over one chunk of prompts (tensors on the CPU)."""
    from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

    device = next(model.parameters()).device
    size, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((size, width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    logits, cache = shared_prefix(model, ids, mask)
    mask = mask.to(device)
    position = mask.sum(-1)
    rows = torch.arange(size, device=device)  # the output row of each row still in the batch
    live = torch.ones(size, dtype=torch.bool, device=device)  # not yet past its EOS
    responses = torch.full((size, response_length), pad, dtype=torch.long, device=device)
    with_log_probs = log_prob_temperature is not None
    if with_log_probs:
        log_probs = torch.zeros(size, response_length, device=device)
        entropy = torch.zeros(size, response_length, device=device)
    for t in range(response_length):
        scores = logits.float()
        if warpers is None:
            tokens = scores.argmax(-1)
        else:
            probs = torch.softmax(warpers(None, scores), dim=-1)
            tokens = torch.multinomial(probs, num_samples=1)[:, 0]
        tokens = torch.where(live, tokens, pad)
        responses[rows, t] = tokens
        if with_log_probs:
            # As one sequence of tokens: veRL's helper loops over the leading dimension.
            scaled = (scores / log_prob_temperature)[None]
            logp = logprobs_from_logits(scaled, tokens[None])[0]
            log_probs[rows, t] = torch.where(live, logp, 0.0)
            entropy[rows, t] = torch.where(live, entropy_from_logits(scaled)[0], 0.0)
        live = live & (tokens != eos)
        if t == response_length - 1 or not bool(live.any()):
            break
        if int((~live).sum()) * 8 >= len(live):
            keep = live.nonzero()[:, 0]
            cache.batch_select_indices(keep)
            rows, live, tokens = rows[keep], live[keep], tokens[keep]
            mask, position = mask[keep], position[keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=position[:, None],
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
        position = position + 1
    out = {"responses": responses.cpu()}
    if with_log_probs:
        out["rollout_log_probs"], out["rollout_entropy"] = log_probs.cpu(), entropy.cpu()
    return out


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
