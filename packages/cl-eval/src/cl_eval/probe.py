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
- the KL moved by a stage: per token, KL(p_after ‖ p_before) of the next-token distributions,
  averaged per group ("RL's Razor", Shenfeld et al. 2025: forgetting tracks the KL moved on the
  new task).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cl_rundir.dormant import dormant_mask, unit_scores
from cl_rundir.layout import completion_style

TAUS = (0.0, 0.025, 0.1)
SRANK_DELTA = 0.01
SMALL_MODEL_PARAMS = 20_000_000
PROBE_PUZZLES = 16
"""Test puzzles per group in the probe set (a forward pass of each, per checkpoint)."""


def available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


@dataclass
class ProbeSet:
    """Per group: the model inputs (prompt texts) and (prompt, reference solution) pairs."""

    prompts: dict[str, list[str]]
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
    """Per group: KL(this ‖ previous checkpoint) per reference token (empty for the first)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "dormant": {str(t): v for t, v in self.dormant.items()},
            "dormant_overall": {str(t): v for t, v in self.dormant_overall.items()},
            "srank": self.srank,
            "soft_accuracy": self.soft_accuracy,
            "kl_moved": self.kl_moved,
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
    prompts, solutions = {}, {}
    for g in groups:
        rows = load_rows(data_dir, g, "test")[:k]
        texts = [model_input(r["prompt"], template, tokenizer) for r in rows]
        refs = sft_examples(rows, style=style)
        prompts[g] = texts
        solutions[g] = [(t, ex["completion"]) for t, ex in zip(texts, refs, strict=True)]
    return ProbeSet(prompts, solutions)


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


def solution_logprobs(model: Any, batch: tuple[Any, Any]) -> Any:
    """Next-token log-probabilities (batch × positions × vocab) predicting each token."""
    import torch

    ids, attention = batch
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].double()
    return torch.log_softmax(logits, dim=-1)


def soft_accuracy_and_kl(
    model: Any, previous: Any | None, tokenizer: Any, pairs: Sequence[tuple[str, str]]
) -> tuple[float, float | None]:
    """Mean log-likelihood per solution token, and KL(model ‖ previous) per solution token."""
    batch, target = _solution_batch(tokenizer, pairs)
    ids = batch[0]
    mask = target[:, 1:]
    logp = solution_logprobs(model, batch)
    token_lp = logp.gather(-1, ids[:, 1:, None])[..., 0]
    soft = float((token_lp * mask).sum() / mask.sum())
    if previous is None:
        return soft, None
    prev = solution_logprobs(previous, batch)
    kl = (logp.exp() * (logp - prev)).sum(-1)
    return soft, float((kl * mask).sum() / mask.sum())


def _same(a: Path | None, b: Path | None) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def probe_checkpoints(
    checkpoints: Sequence[Path],
    starts: Sequence[Path | None],
    data_dir: Path,
    groups: Sequence[str],
    k: int = PROBE_PUZZLES,
) -> list[CheckpointProbe]:
    """Every diagnostic for each checkpoint in order; the KL a checkpoint moved is measured
    against its stage's start (``starts[i]``; None for the base model). At most two models are in
    memory at a time, and the start is the previous checkpoint unless a remedy changed it."""
    import torch

    torch.set_grad_enabled(False)
    threads = torch.get_num_threads()
    results: list[CheckpointProbe] = []
    previous: tuple[Path, Any] | None = None
    probe: ProbeSet | None = None
    for path, start in zip(checkpoints, starts, strict=True):
        model, tokenizer = load_model(path)
        # A small model's matrices are too small to share among threads: spinning OpenMP
        # threads made the tiny model's probe 3x slower on 2 busy cores.
        small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
        torch.set_num_threads(1 if small else threads)
        if probe is None:  # the reference text: what the first (base) model was taught, if known
            probe = build_probe_set(data_dir, groups, tokenizer, k, completion_style(path))
        reference = None
        if start is not None:
            reuse = previous is not None and _same(previous[0], start)
            reference = previous[1] if reuse and previous else load_model(start)[0]
        texts = [t for g in groups for t in probe.prompts[g]]
        scores, finals = unit_scores(model, tokenizer, texts)
        res = CheckpointProbe()
        for tau, (per_layer, overall) in dormant_fractions(scores).items():
            res.dormant[tau], res.dormant_overall[tau] = per_layer, overall
        res.srank = srank(finals)
        for g in groups:
            soft, kl = soft_accuracy_and_kl(model, reference, tokenizer, probe.solutions[g])
            res.soft_accuracy[g] = soft
            if kl is not None and math.isfinite(kl):
                res.kl_moved[g] = kl
        results.append(res)
        previous = (Path(path), model)
    torch.set_num_threads(threads)
    return results
