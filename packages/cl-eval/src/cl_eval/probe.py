"""Activation-based plasticity diagnostics: forward passes of each stage's checkpoint on a fixed
probe set. Needs torch and transformers (``cl-eval[probe]``); the rest of cl-eval does not.

On prompts of every group's test split:
- τ-dormant MLP units per layer (Sokar et al. 2023): a unit of ``act(gate(x)) * up(x)`` whose mean
  |activation| over the probe tokens is at most τ times its layer's average, τ ∈ {0, 0.025, 0.1};
- the feature rank (srank, Kumar et al. 2021) of the final hidden state at each prompt's last
  token: the fewest singular values holding 99 % of their sum.
On the reference solutions of those puzzles (countdown-data's SFT export, written in the style the
base model was warm-started on when its record says so, else as worked solutions), teacher-forced:
- soft accuracy: the mean per-token log-likelihood, per group — deterministic, no sampling noise;
- the KL a stage moved, per group, per reference-solution token, between the next-token
  distributions of the stage's start (p_before) and its end (p_after), in both directions:
  ``kl_moved`` = KL(p_after ‖ p_before), and ``kl_forward`` = KL(p_before ‖ p_after), the direction
  of "RL's Razor" (Shenfeld et al. 2025: forgetting tracks the forward KL from the policy before
  fine-tuning to the one after, on the new task's prompts);
- and ``kl_base`` = KL(p_base ‖ p_after), the forward KL from the base model (the first checkpoint
  probed) rather than from the stage's start: RL's Razor's own reference policy.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cl_eval.weights import CheckpointError, open_checkpoint, read_float32
from cl_rundir.dormant import UnitSums, dormant_mask
from cl_rundir.layout import completion_style

TAUS = (0.0, 0.025, 0.1)
SRANK_DELTA = 0.01
SMALL_MODEL_PARAMS = 20_000_000
PROBE_PUZZLES = 16
"""Test puzzles per group in the probe set (a forward pass of each, per checkpoint)."""
LOGIT_CHUNK_BYTES = 64 << 20
"""float32 logits formed at a time (110 solution tokens of Qwen's 151,936-token vocabulary)."""


def available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


@dataclass
class ProbeSet:
    """Per group: (prompt as the model gets it, reference solution) pairs."""

    solutions: dict[str, list[tuple[str, str]]]


@dataclass
class CheckpointProbe:
    """One checkpoint's diagnostics."""

    dormant: dict[float, list[float]] = field(default_factory=dict)
    """τ -> fraction of dormant units per layer."""
    dormant_overall: dict[float, float] = field(default_factory=dict)
    srank: int = 0
    soft_accuracy: dict[str, float] = field(default_factory=dict)
    kl_moved: dict[str, float] = field(default_factory=dict)
    """Per group: KL(this ‖ stage start) per reference token (empty for the first)."""
    kl_forward: dict[str, float] = field(default_factory=dict)
    """Per group: KL(stage start ‖ this) per reference token, RL's Razor's direction."""
    kl_base: dict[str, float] = field(default_factory=dict)
    """Per group: KL(base ‖ this) per reference token, RL's Razor's measure (empty for the base)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "dormant": {str(t): v for t, v in self.dormant.items()},
            "dormant_overall": {str(t): v for t, v in self.dormant_overall.items()},
            "srank": self.srank,
            "soft_accuracy": self.soft_accuracy,
            "kl_moved": self.kl_moved,
            "kl_forward": self.kl_forward,
            "kl_base": self.kl_base,
        }


def build_probe_set(
    data_dir: Path, groups: Sequence[str], tokenizer: Any, k: int, style: str = "worked"
) -> ProbeSet:
    """The first ``k`` test puzzles of each group, rendered as the trainer renders them, with
    their reference solutions written in ``style`` (``countdown_data.sft.COMPLETION_STYLES``)."""
    from countdown_data.dataset import load_rows, read_manifest
    from countdown_data.sft import sft_examples
    from countdown_data.templates import model_input

    template = read_manifest(data_dir)["params"]["template"]
    solutions = {}
    for g in groups:
        rows = load_rows(data_dir, g, "test")[:k]
        texts = [model_input(r["prompt"], template, tokenizer) for r in rows]
        refs = sft_examples(rows, style=style)
        solutions[g] = [(t, ex["completion"]) for t, ex in zip(texts, refs, strict=True)]
    return ProbeSet(solutions)


def load_model(path: Path) -> tuple[Any, Any]:
    """An HF checkpoint in fp32 (veRL's exports are fp32 despite their config's dtype)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per load would flood the console of `cl-eval report`
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def dormant_fractions(scores: list[np.ndarray], taus: Sequence[float] = TAUS) -> dict:
    """τ -> (per-layer fraction of τ-dormant units, overall fraction)."""
    out = {}
    for tau in taus:
        masks = [dormant_mask(s, tau) for s in scores]
        per_layer = [float(m.mean()) for m in masks]
        total = sum(len(m) for m in masks)
        out[tau] = (per_layer, sum(int(m.sum()) for m in masks) / max(total, 1))
    return out


def srank(features: np.ndarray, delta: float = SRANK_DELTA) -> int:
    """Fewest singular values of the (samples × hidden) features holding 1 − δ of their sum."""
    s = np.linalg.svd(features, compute_uv=False)
    if s.sum() == 0:
        return 0
    return int(np.searchsorted(np.cumsum(s) / s.sum(), 1 - delta) + 1)


def _solution_batch(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> tuple[Any, Any]:
    """Token ids of prompt + solution + EOS (right-padded) and the mask of the solution tokens."""
    import torch

    seqs, masks = [], []
    for prompt, completion in pairs:
        p = tokenizer.encode(prompt, add_special_tokens=False)
        c = [*tokenizer.encode(completion, add_special_tokens=False), tokenizer.eos_token_id]
        seqs.append(p + c)
        masks.append([0] * len(p) + [1] * len(c))
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad)
    target = torch.zeros((len(seqs), width))
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        target[i, : len(m)] = torch.tensor(m, dtype=torch.float)
        attention[i, : len(s)] = 1
    return (ids, attention), target


@dataclass
class SolutionStates:
    """All that the soft accuracy and the KL need of a model on one group's reference solutions:
    the final hidden states at the positions that predict a solution token, those tokens, and the
    model's output layer. A checkpoint's states stand in for the whole model when the next
    checkpoint's KL is measured against it."""

    hidden: Any
    """(solution tokens × hidden size), float32."""
    tokens: Any
    head: Any
    """The output layer (hidden -> vocabulary logits)."""


def solution_states(
    model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], units: UnitSums | None = None
) -> tuple[SolutionStates, Any]:
    """Teacher-force prompt + solution and keep the hidden states that count: the logits of a
    prompt token are never needed, so the output layer never sees them. Also the final hidden
    state at each prompt's last token, and, into ``units``, the MLP activations over the prompt
    tokens: a causal model computes the prompt's positions exactly as it would alone, so the
    dormant units and the feature rank need no forward pass of their own."""
    import torch

    (ids, attention), target = _solution_batch(tokenizer, pairs)
    prompt = attention - target.long()
    if units is not None:
        units.select(prompt)
    with torch.inference_mode():
        hidden = model.model(input_ids=ids, attention_mask=attention).last_hidden_state
    keep = target[:, 1:].bool()
    finals = hidden[torch.arange(len(ids)), prompt.sum(1) - 1].double()
    head = model.get_output_embeddings()
    return SolutionStates(hidden[:, :-1][keep], ids[:, 1:][keep], head), finals


def _log_probs(states: SolutionStates, lo: int, hi: int) -> Any:
    import torch

    return torch.log_softmax(states.head(states.hidden[lo:hi]).float(), dim=-1)


def _kl_sum(p_log: Any, q_log: Any) -> float:
    """Σ over the rows of KL(p ‖ q), from log-probabilities (neither is modified)."""
    import torch

    return float((p_log.exp() * (p_log - q_log)).sum(-1).sum(dtype=torch.float64))


def soft_and_kl(
    states: SolutionStates, previous: SolutionStates | None, base: SolutionStates | None = None
) -> tuple[float, float | None, float | None, float | None]:
    """Mean log-likelihood per solution token, and KL(model ‖ previous), KL(previous ‖ model) and
    KL(base ‖ model) per solution token (None without ``previous`` or ``base``): the model's
    log-probabilities of a chunk serve all three.

    In float32, ``LOGIT_CHUNK_BYTES`` of logits at a time, summed in float64: the whole
    (tokens × vocabulary) matrix in float64 was 3 GB per group for Qwen's vocabulary. float32
    log-probabilities are within ~1e-6·|log p| of float64 ones (``tests/test_plasticity.py``
    compares both), far below the differences the report shows."""
    import torch

    for other in (previous, base):
        if other is not None and not torch.equal(other.tokens, states.tokens):
            raise ValueError("the two checkpoints tokenize the probe's solutions differently")
    n = len(states.tokens)
    vocab = states.head.weight.shape[0]
    rows = max(1, LOGIT_CHUNK_BYTES // (4 * vocab))
    log_lik = kl = forward = from_base = 0.0
    with torch.inference_mode():
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            logp = _log_probs(states, lo, hi)
            picked = logp.gather(-1, states.tokens[lo:hi, None])
            log_lik += float(picked.sum(dtype=torch.float64))
            if base is not None:
                from_base += _kl_sum(_log_probs(base, lo, hi), logp)
            if previous is not None:
                before = _log_probs(previous, lo, hi)
                diff = logp - before
                kl += float((logp.exp_() * diff).sum(-1).sum(dtype=torch.float64))
                forward -= float((before.exp_() * diff).sum(-1).sum(dtype=torch.float64))
    per = max(n, 1)
    based = None if base is None else from_base / per
    if previous is None:
        return log_lik / per, None, None, based
    return log_lik / per, kl / per, forward / per, based


def soft_accuracy_and_kl(
    model: Any, previous: Any | None, tokenizer: Any, pairs: Sequence[tuple[str, str]]
) -> tuple[float, float | None, float | None]:
    """Mean log-likelihood per solution token, and KL(model ‖ previous) and KL(previous ‖ model)
    per solution token."""
    before = None if previous is None else solution_states(previous, tokenizer, pairs)[0]
    return soft_and_kl(solution_states(model, tokenizer, pairs)[0], before)[:3]


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _same(a: Path | None, b: Path | None) -> bool:
    """The same model: one directory, or weight files that are the same files (cl-trainer
    hard-links a stage's initial model to the previous stage's final one)."""
    if a is None or b is None:
        return False
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        files = [{r.file for r in open_checkpoint(p).tensors.values()} for p in (a, b)]
    except CheckpointError:
        return False
    ids = [{(st.st_dev, st.st_ino) for st in map(os.stat, f)} for f in files]
    return bool(ids[0]) and ids[0] == ids[1]


def _output_layer(path: Path, model: Any) -> Any:
    """``model``'s output layer as stored in the checkpoint at ``path``, read alone (without the
    rest of that model, and without a memory map that would hold the file's pages)."""
    import torch

    head = model.get_output_embeddings()
    ck = open_checkpoint(path)
    tensors = []
    for param in (head.weight, head.bias):
        if param is None:
            tensors.append(None)
            continue
        names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is param]
        ref = next((ck.tensors[n] for n in names if n in ck.tensors), None)
        if ref is None:
            raise CheckpointError(f"{path}: no {' or '.join(names)} (the output layer)")
        tensors.append(torch.from_numpy(read_float32(ref)))
    with torch.device("meta"):  # no weights allocated (and initialised) only to be replaced
        layer = torch.nn.Linear(*reversed(tensors[0].shape), bias=tensors[1] is not None)
    layer.weight = torch.nn.Parameter(tensors[0], requires_grad=False)
    if tensors[1] is not None:
        layer.bias = torch.nn.Parameter(tensors[1], requires_grad=False)
    return layer


def probe_checkpoints(
    checkpoints: Sequence[Path],
    starts: Sequence[Path | None],
    data_dir: Path,
    groups: Sequence[str],
    k: int = PROBE_PUZZLES,
    notes: list[str] | None = None,
    *,
    progress: Callable[[float], None] | None = None,
) -> list[CheckpointProbe | None]:
    """Every diagnostic for each checkpoint in order; the KL a checkpoint moved is measured
    against its stage's start (``starts[i]``; None for the base model), and against the base
    model, ``checkpoints[0]``. One model is in memory at a time: a checkpoint's ``SolutionStates``
    stand in for it when the next one's KL is measured, and the base's, kept throughout, when
    every later one's is (an output layer read again after the next model is loaded, so that
    loading a model, whose bf16 file is mapped while float32 weights fill, never has a second
    output layer beside it). Torch's thread count and grad mode are as before on return.
    A checkpoint that does not load (a damaged header, no config.json) is None, with a note in
    ``notes``, as the weight diff and the spectra skip theirs."""
    import torch
    from transformers import AutoTokenizer

    threads = torch.get_num_threads()
    notes = notes if notes is not None else []
    results: list[CheckpointProbe | None] = []
    probe: ProbeSet | None = None
    previous: tuple[Path, dict[str, SolutionStates]] | None = None
    base: tuple[Path, dict[str, SolutionStates]] | None = None
    try:
        with torch.inference_mode():
            for i, (path, start) in enumerate(zip(checkpoints, starts, strict=True)):
                if probe is None:  # the reference text: what the base model was taught, if known
                    try:
                        tokenizer = AutoTokenizer.from_pretrained(path)
                    except Exception as exc:  # what transformers raises varies by fault
                        notes.append(f"activation diagnostics of {path} skipped ({_reason(exc)})")
                        results.append(None)
                        continue
                    probe = build_probe_set(data_dir, groups, tokenizer, k, completion_style(path))
                reference = None
                if start is not None and previous is not None and _same(previous[0], start):
                    reference = previous
                elif start is not None:
                    try:
                        start_model, start_tokenizer = load_model(start)
                        reference = (
                            Path(start),
                            _states(start_model, start_tokenizer, probe, groups)[0],
                        )
                        del start_model
                    except Exception as exc:  # the KL it moved is left out, not guessed
                        notes.append(f"KL moved from {start} skipped ({_reason(exc)})")
                previous = None
                gc.collect()  # a model's reference cycles would keep its weights past `del`
                _return_freed_memory()
                try:
                    model, tokenizer = load_model(path)
                except Exception as exc:  # as the weight diff and the spectra skip theirs
                    notes.append(f"activation diagnostics of {path} skipped ({_reason(exc)})")
                    results.append(None)
                    continue
                # A small model's matrices are too small to share among threads: spinning OpenMP
                # threads made the tiny model's probe 3x slower on 2 busy cores.
                small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
                torch.set_num_threads(1 if small else threads)
                res, states = _probe_one(model, tokenizer, probe, groups, reference, base)
                results.append(res)
                previous, reference = (Path(path), states), None
                if i == 0:  # the base model: every later KL from the base is measured from it
                    base = previous
                del model
                if progress:
                    progress(1 / len(checkpoints))
    finally:
        torch.set_num_threads(threads)
    return results


def _return_freed_memory() -> None:
    """Hand freed heap back to the system: glibc keeps what the activations of the forward passes
    used (~0.4 GB for a 0.5B model), which the next output layer or model would add to."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _probe_one(
    model: Any,
    tokenizer: Any,
    probe: ProbeSet,
    groups: Sequence[str],
    reference: tuple[Path, dict[str, SolutionStates]] | None,
    base: tuple[Path, dict[str, SolutionStates]] | None = None,
) -> tuple[CheckpointProbe, dict[str, SolutionStates]]:
    """One checkpoint's diagnostics, its KL against ``reference`` and from ``base`` (a
    checkpoint's path and states); and its own states, to stand in for it later. The base's output
    layer is read beside the start's (one more, 0.54 GB in float32 for Qwen2.5-0.5B's, 0.93 GB for
    1.5B's), so that the model's log-probabilities of a chunk serve both KLs; a stage that
    started from the base (the first) reuses its stage-start KL."""
    states, scores, finals = _states(model, tokenizer, probe, groups)
    _return_freed_memory()  # before the reference's output layer is read
    res = CheckpointProbe()
    for tau, (per_layer, overall) in dormant_fractions(scores).items():
        res.dormant[tau], res.dormant_overall[tau] = per_layer, overall
    res.srank = srank(finals)
    before, anchor = {}, {}
    if reference is not None:
        head = _output_layer(reference[0], model)
        before = {g: replace(st, head=head) for g, st in reference[1].items()}
    start_is_base = base is not None and reference is not None and _same(base[0], reference[0])
    if base is not None and not start_is_base:
        head = _output_layer(base[0], model)
        anchor = {g: replace(st, head=head) for g, st in base[1].items()}
    own = model.get_output_embeddings()
    for g in groups:
        soft, kl, forward, from_base = soft_and_kl(
            replace(states[g], head=own), before.get(g), anchor.get(g)
        )
        if start_is_base:
            from_base = forward
        res.soft_accuracy[g] = soft
        for out, value in ((res.kl_moved, kl), (res.kl_forward, forward), (res.kl_base, from_base)):
            if value is not None and math.isfinite(value):
                out[g] = value
    return res, states


def _states(
    model: Any, tokenizer: Any, probe: ProbeSet, groups: Sequence[str]
) -> tuple[dict[str, SolutionStates], list[np.ndarray], np.ndarray]:
    """One forward pass per group's reference solutions: their states (without the output
    layer, which would keep the model's largest matrix alive), and the MLP unit means and final
    prompt states the dormant units and the feature rank are computed from."""
    import torch

    states, finals = {}, []
    with UnitSums(model) as units:
        for g in groups:
            st, last = solution_states(model, tokenizer, probe.solutions[g], units)
            states[g] = replace(st, head=None)
            finals.append(last)
    return states, units.means(), torch.cat(finals).numpy()
