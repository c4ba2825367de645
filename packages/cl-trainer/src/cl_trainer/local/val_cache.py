"""Greedy validation generations kept for the next stage's first validation.

A curriculum validates twice on the same weights at every boundary: stage k's last validation
and stage k+1's first (``val_before_train``), which starts from stage k's final export. Greedy
decoding draws no random numbers and the CPU kernels are deterministic for a given thread count,
so the second would regenerate the first's answers token for token (measured on the testbed: the
1,600 answers of ``R1_plus/15.jsonl`` and ``R1_plus_minus/0.jsonl`` are equal). The generations
are therefore kept with a hash of everything that decides them (the weights, the prompts, the
sampling and length settings, the thread count, torch's version), and reused only on an exact
match; the reward, the dump and the metrics are computed again as before. Sampled validation
(``val_kwargs.temperature`` > 0) is never reused: its two draws are the noise floor cl-eval reads.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cl_rundir.atomic import writing
from cl_trainer.local.data import Example
from cl_trainer.local.rollout import is_greedy

KEPT = ("responses", "response_mask")
"""The generation's tensors the validation reads (``prompts`` are rebuilt from the examples)."""


def key(model: torch.nn.Module, examples: list[Example], cfg: DictConfig) -> str | None:
    """The hash of what decides a greedy validation's answers; None when it samples."""
    sampling = cfg.actor_rollout_ref.rollout.val_kwargs
    if not is_greedy(sampling, do_sample=True):  # validation samples as its temperature says
        return None
    h = hashlib.blake2b(digest_size=32)
    settings = {
        "val_kwargs": OmegaConf.to_container(sampling, resolve=True),
        "max_prompt_length": int(cfg.data.max_prompt_length),
        "max_response_length": int(cfg.data.max_response_length),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "prompts": [ex.prompt_ids for ex in examples],
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load(path: Path, digest: str) -> dict[str, torch.Tensor] | None:
    """The generations kept under ``digest``, or None (none kept, other ones, or unreadable)."""
    try:
        kept = torch.load(path, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None  # damaged: generate again (and replace it)
    if not isinstance(kept, dict) or kept.get("key") != digest:
        return None
    if not all(isinstance(kept.get(k), torch.Tensor) for k in KEPT):
        return None
    return {k: kept[k] for k in KEPT}


def save(path: Path, digest: str, batch: dict[str, Any]) -> None:
    """Keep this validation's generations (replacing the last ones: only a boundary reuses)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with writing(path) as tmp:
        torch.save({"key": digest, **{k: batch[k] for k in KEPT}}, tmp)
