"""The local backend's rollout arithmetic: its shortcuts give what the plain computation gives.

``rollout.log_probs`` runs only the columns some row uses and encodes each distinct prompt once;
``rollout.generate`` shares a repeated prompt's prefill, drops finished rows and returns the old
log-probs. Each is checked against the plain computation (one forward over the padded batch,
transformers' ``generate``, the old-log-prob pass, the model's own distribution).
"""

from __future__ import annotations

import copy

import pytest
import torch

from cl_trainer.local import rollout, tiny

PROMPT_LENGTH, RESPONSE_LENGTH = 12, 7


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = tiny.build_tokenizer()
    return tiny.build_model(tokenizer, seed=3).eval(), tokenizer


def batch_of(tokenizer, prompts: list[list[int]], responses: list[list[int]]) -> dict:
    """veRL's layout by hand: prompts left-padded, responses right-padded, mask through EOS."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    p = torch.full((len(prompts), PROMPT_LENGTH), pad)
    r = torch.full((len(prompts), RESPONSE_LENGTH), pad)
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        p[i, PROMPT_LENGTH - len(prompt) :] = torch.tensor(prompt)
        r[i, : len(response)] = torch.tensor(response)
    prompt_mask = (p != pad).long()
    response_mask = rollout._mask_through_eos(r, eos)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    return {
        "prompts": p,
        "responses": r,
        "input_ids": torch.cat([p, r], dim=1),
        "attention_mask": attention_mask,
        "position_ids": rollout.position_ids(attention_mask),
        "response_mask": response_mask,
    }


def plain_log_probs(model, batch: dict, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over the padded batch; the logits one column left of each response token."""
    from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    ).logits
    logits = logits[:, PROMPT_LENGTH - 1 : -1].float() / temperature
    return logprobs_from_logits(logits, batch["responses"]), entropy_from_logits(logits)


@pytest.fixture
def batch(model_and_tokenizer) -> dict:
    """Prompts of different lengths, some repeated (rollout.n), responses of different lengths
    (some ending in EOS, one running to the length limit), as a GRPO step has them."""
    _, tokenizer = model_and_tokenizer
    eos = tokenizer.eos_token_id
    a, b, c = [7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18, 19], [20, 21, 22]
    prompts = [a, a, a, b, b, c]
    responses = [
        [30, 31, eos],
        [32, eos],
        [33, 34, 35, 36, eos],
        [40, 41, 42, 43, 44, 45, 46],
        [47, eos],
        [50, 51, 52, eos],
    ]
    return batch_of(tokenizer, prompts, responses)


def test_log_probs_equal_one_forward_over_the_padded_batch(model_and_tokenizer, batch) -> None:
    model, _ = model_and_tokenizer
    mask = batch["response_mask"].bool()
    with torch.no_grad():
        want_logp, want_entropy = plain_log_probs(model, batch, temperature=0.7)
        logp, entropy = rollout.log_probs(model, batch, 0.7, with_entropy=True)
    assert logp.shape == entropy.shape == batch["responses"].shape
    torch.testing.assert_close(logp[mask], want_logp[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy[mask], want_entropy[mask], rtol=1e-5, atol=1e-5)
    assert logp.std() > 0.1, "the log-probs differ between tokens: a shifted column would show"


def test_log_probs_beyond_every_response_are_zero(model_and_tokenizer, batch) -> None:
    model, tokenizer = model_and_tokenizer
    eos = tokenizer.eos_token_id
    short = batch_of(tokenizer, [[7, 8, 9]] * 2, [[30, eos], [eos]])
    with torch.no_grad():
        logp, entropy = rollout.log_probs(model, short, 1.0, with_entropy=True)
    assert (logp[:, 2:] == 0).all() and (entropy[:, 2:] == 0).all()
    assert (logp[:, :2] < 0).all()


def test_log_prob_gradients_equal_the_padded_computation(model_and_tokenizer, batch) -> None:
    model, _ = model_and_tokenizer
    mask = batch["response_mask"]
    advantages = torch.linspace(-1.0, 1.0, mask.numel()).reshape(mask.shape)

    def grads(fn) -> torch.Tensor:
        model.zero_grad()
        logp = fn()
        (logp * advantages * mask).sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    want = grads(lambda: plain_log_probs(model, batch, 1.0)[0])
    got = grads(lambda: rollout.log_probs(model, batch, 1.0, with_entropy=False)[0])
    model.zero_grad()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_generate_with_a_shared_prefill_equals_generate_alone(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    prompts = [[7, 8, 9, 10, 11]] * 3 + [[12, 13, 14]] * 2 + [[15, 16, 17, 18]]
    got = rollout.generate(
        model, tokenizer, prompts, {"temperature": 0.0}, False, PROMPT_LENGTH, RESPONSE_LENGTH
    )
    width = 5
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
    want = model.generate(
        input_ids=ids,
        attention_mask=(ids != tokenizer.pad_token_id).long(),
        max_new_tokens=RESPONSE_LENGTH,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )[:, width:]
    assert torch.equal(got["responses"][:, : want.shape[1]], want)
    assert torch.equal(got["prompts"][:, -width:], ids)


def test_generate_in_chunks_returns_rows_in_the_given_order(model_and_tokenizer) -> None:
    """More prompts than a chunk: generated shortest first, returned as given."""
    model, tokenizer = model_and_tokenizer
    prompts = [[7, 8, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18], [19, 20, 21], [22, 23, 24, 25]]
    greedy = {"temperature": 0.0}
    got = rollout.generate(
        model, tokenizer, prompts, greedy, False, PROMPT_LENGTH, RESPONSE_LENGTH, chunk=2
    )
    for i, prompt in enumerate(prompts):
        alone = rollout.generate(
            model, tokenizer, [prompt], greedy, False, PROMPT_LENGTH, RESPONSE_LENGTH
        )
        for key in ("prompts", "responses", "attention_mask", "response_mask"):
            assert torch.equal(got[key][i], alone[key][0]), (i, key)


def test_generation_log_probs_are_the_old_log_probs(model_and_tokenizer) -> None:
    """The log-probs and entropies generation returns are those the old-log-prob pass computes on
    its responses, also for rows that stop early and leave the batch (EOS made likely by a high
    temperature) and with transformers' top-k warper in the sampling."""
    model, tokenizer = model_and_tokenizer
    prompts = [[7, 8, 9, 10, 11]] * 8 + [[12, 13, 14]] * 8 + [[15, 16, 17, 18]] * 8
    torch.manual_seed(0)
    sampling = {"temperature": 4.0, "top_k": 200, "top_p": 1.0}
    got = rollout.generate(
        model, tokenizer, prompts, sampling, True, PROMPT_LENGTH, 40, log_prob_temperature=4.0
    )
    lengths = got["response_mask"].sum(-1)
    assert lengths.min() < 40 and lengths.max() > lengths.min(), "rows end at different steps"
    with torch.no_grad():
        want_logp, want_entropy = rollout.log_probs(model, got, 4.0, with_entropy=True)
    mask = got["response_mask"].bool()
    torch.testing.assert_close(
        got["rollout_log_probs"][mask], want_logp[mask], rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        got["rollout_entropy"][mask], want_entropy[mask], rtol=1e-5, atol=1e-5
    )
    assert (got["responses"][~mask] == tokenizer.pad_token_id).all()
    assert (got["rollout_log_probs"][~mask] == 0).all() and (
        got["rollout_entropy"][~mask] == 0
    ).all()


def test_sampled_first_tokens_follow_the_model_distribution(model_and_tokenizer) -> None:
    """Sampling draws from softmax(logits / temperature): the first response token's frequencies
    over 4,000 rollouts of one prompt match the model's probabilities within sampling noise (total
    variation), and the test tells temperature 1.5 from 1 (the final norm is sharpened so that
    the two distributions differ)."""
    base, tokenizer = model_and_tokenizer
    model = copy.deepcopy(base)
    with torch.no_grad():
        model.model.norm.weight.mul_(20.0)
    prompt = [7, 8, 9, 10, 11]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    want = torch.softmax(logits / 1.5, -1)
    torch.manual_seed(1)
    got = rollout.generate(
        model, tokenizer, [prompt] * 4000, {"temperature": 1.5}, True, PROMPT_LENGTH, 1
    )["responses"][:, 0]
    freq = torch.bincount(got, minlength=want.numel()).float() / got.numel()
    # Sampling noise: the expected total variation is about 0.4 x the sum of the frequencies'
    # standard deviations; ``bound`` is 2.5 times that, and temperature 1 is farther still.
    bound = (want * (1 - want) / got.numel()).sqrt().sum()
    assert 0.5 * (freq - want).abs().sum() < bound
    assert 0.5 * (want - torch.softmax(logits, -1)).abs().sum() > 2 * bound
