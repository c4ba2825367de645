"""Checkpoints in veRL's layout (``cl_trainer.checkpoints``), so the stage engine and cl-eval
treat both backends alike.

``global_step_N/actor/huggingface/`` holds the HF model + tokenizer, ``actor/optim.pt`` the
optimizer and LR scheduler, ``actor/extra_state.pt`` RNG states and the KL controller,
``global_step_N/data.pt`` the sampler position (veRL's dataloader state file), and the tracker file
is replaced atomically last, so a crash mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cl_rundir.atomic import building_dir, write_atomic
from cl_trainer.checkpoints import STEP_DIR, TRACKER, prune, read_tracker, step_dir


@dataclass
class Restored:
    step: int
    optim: dict[str, Any]
    extra: dict[str, Any]
    data: dict[str, Any] | None
    model_dir: Path


def latest(root: Path) -> Path | None:
    """The checkpoint the tracker file names, or None (veRL's ``find_latest_ckpt_path``)."""
    step = read_tracker(root)
    if step is None:
        return None
    path = step_dir(root, step)
    return path if path.is_dir() else None


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    root: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    optim: dict[str, Any],
    extra: dict[str, Any],
    data: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Write ``global_step_<step>`` (built in a temp dir, then renamed), then the tracker."""
    final = step_dir(root, step)
    with building_dir(final) as tmp:
        actor = tmp / "actor"
        model.save_pretrained(actor / "huggingface", safe_serialization=True)
        tokenizer.save_pretrained(actor / "huggingface")
        torch.save(optim, actor / "optim.pt")
        torch.save({**extra, "rng": rng_state(), "global_step": step}, actor / "extra_state.pt")
        torch.save(data, tmp / "data.pt")
    write_atomic(root / TRACKER, str(step))
    if keep is not None and keep > 0:
        prune(root, keep)  # veRL's max_actor_ckpt_to_keep
    return final


def load(path: Path) -> Restored:
    """Read a ``global_step_N`` directory written by :func:`save`."""
    match = STEP_DIR.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not a global_step_N checkpoint directory")
    actor = path / "actor"
    data = path / "data.pt"
    return Restored(
        step=int(match.group(1)),
        optim=torch.load(actor / "optim.pt", weights_only=False),
        extra=torch.load(actor / "extra_state.pt", weights_only=False),
        data=torch.load(data, weights_only=False) if data.is_file() else None,
        model_dir=actor / "huggingface",
    )
