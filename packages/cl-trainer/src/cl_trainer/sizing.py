"""How long and how large a curriculum run is: steps, validations, checkpoints and disk per stage.

Counted the way veRL 0.9.1 counts (``trainer/ppo/v1/trainer_base.py``): an epoch is
``rows // train_batch_size`` steps (the dataloader drops the last partial batch),
``trainer.total_training_steps`` replaces ``epochs x steps per epoch``, veRL validates before the
first step, every ``test_freq`` steps and at the last, and checkpoints every ``save_freq`` steps and
at the last. Rows come from the data that is there, else from ``countdown-data gen``'s defaults.
``cl-trainer plan`` prints these figures and the disk check before each stage asks for them.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from cl_rundir.layout import Stage
from cl_trainer.config import SETTINGS, TrainerConfig
from cl_trainer.presets import APPROX_PARAMS
from cl_trainer.remedies import acting_on
from countdown_data.dataset import split_path
from countdown_data.generate import GenConfig

CHECKPOINT_BYTES_PER_PARAM = 4 + 4 + 8
"""One checkpoint of one trained model: its HF export (fp32: veRL saves the fp32 training copy),
its fp32 FSDP shards and Adam's two fp32 moments."""
EXPORT_BYTES_PER_PARAM = 4
"""One fp32 HF export: what a finished stage keeps of each trained model (``metrics/final_*``,
``critics/final_*``), and a weight remedy's ``metrics/initial_*``."""
VALIDATION_BYTES_PER_TOKEN = 4
"""A validation record's JSON line per prompt-plus-response token, at most (a token is a few
characters of text): the records are bounded by every answer reaching the response length."""


def override_value(cfg: TrainerConfig, key: str) -> str | None:
    """The value veRL gets for ``key``: a setting declared with it (``val_max_samples``), then
    the preset's and the user's overrides, which come after it in the stage's command (the last
    wins, as in Hydra)."""
    found = next((str(getattr(cfg, f.name)) for f in SETTINGS if key in f.metadata["verl"]), None)
    for item in [*cfg.preset_overrides, *cfg.overrides]:
        name, sep, value = item.lstrip("+").partition("=")
        if sep and name == key:
            found = value
    return found


def _capped(rows: int, cap: str | None) -> int:
    """veRL's ``data.{train,val}_max_samples``: a positive cap takes that many rows."""
    try:
        limit = int(cap) if cap is not None else -1
    except ValueError:
        return rows
    return min(rows, limit) if limit > 0 else rows


def split_rows(data_dir: Path | str, group: str, split: str) -> int | None:
    """Rows of one generated split (its parquet footer), or None when it is not there."""
    try:
        return pq.read_metadata(split_path(Path(data_dir), group, split)).num_rows
    except (OSError, ValueError):  # missing or unreadable: preflight names it before a stage
        return None


def data_found(cfg: TrainerConfig) -> bool:
    """Whether every split the run reads is there (else the figures use the defaults)."""
    return all(
        split_rows(cfg.data_dir, g, s) is not None for g in cfg.groups for s in ("train", "test")
    )


def train_rows(cfg: TrainerConfig, group: str) -> int:
    """Training prompts of a stage of ``group`` (a replay mix has as many as the group's file)."""
    rows = split_rows(cfg.data_dir, group, "train")
    rows = GenConfig().size("train") if rows is None else rows
    return _capped(rows, override_value(cfg, "data.train_max_samples"))


def val_prompts(cfg: TrainerConfig) -> int:
    """Prompts of one validation: every group's test split (veRL concatenates them)."""
    default = GenConfig().size("test")
    rows = sum(
        default if (n := split_rows(cfg.data_dir, g, "test")) is None else n for g in cfg.groups
    )
    return _capped(rows, override_value(cfg, "data.val_max_samples"))


def epoch_steps(cfg: TrainerConfig, group: str) -> int:
    """Steps of all the stage's epochs."""
    return train_rows(cfg, group) // cfg.train_batch_size * cfg.epochs


def stage_steps(cfg: TrainerConfig, group: str) -> int:
    """Steps a stage of ``group`` trains: its epochs, or ``max_steps`` when that is fewer."""
    steps = epoch_steps(cfg, group)
    return steps if cfg.max_steps is None else min(steps, cfg.max_steps)


def every(steps: int, freq: int) -> int:
    """How often an action runs that veRL takes every ``freq`` steps and at the last."""
    if freq <= 0 or steps <= 0:
        return 0
    return math.ceil(steps / freq)


def model_params(model: str, fallback: int) -> int:
    """Parameters of a local model, counted from its safetensors headers (so fp32 and bf16 files
    count alike); the preset's figure for a hub ID not yet on disk."""
    files = sorted(Path(model).glob("*.safetensors")) if Path(model).is_dir() else []
    if not files:
        return fallback
    total = 0
    try:
        for file in files:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > file.stat().st_size:
                    raise ValueError("not a safetensors header")
                header = json.loads(f.read(n))
            total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return fallback  # not readable here; loading it will say what is wrong
    return total


@dataclass(frozen=True)
class StageSize:
    """One stage's length and the disk it takes (bytes)."""

    stage: Stage
    rows: int
    steps: int
    validations: int
    val_prompts: int
    checkpoints: int
    checkpoint_bytes: int
    """One checkpoint of every trained model (actor, and critic for PPO)."""
    export_bytes: int
    """One HF export of every trained model."""
    at_peak: int
    """What the stage itself holds at its peak: veRL's checkpoints, a weight remedy's initial
    model, its validation records."""
    kept: int
    """What it holds once done: its exports, the checkpoints kept, the rest as at its peak."""


def peak_checkpoints(cfg: TrainerConfig, written: int) -> int:
    """Checkpoints a stage holds at once, at most.

    veRL keeps ``max(1, keep_checkpoints)`` (``trainer.max_*_ckpt_to_keep``) and writes the next
    before deleting the oldest (``checkpoint_manager.py``: with 1 kept, nothing is deleted before
    the save); its list of what it wrote lives in memory only, so a resumed stage also holds the
    checkpoint it resumed from until the stage ends (the engine removes every other one first).
    """
    keep = max(1, cfg.keep_checkpoints)
    return min(max(2, keep) + 1, written)


def run_size(cfg: TrainerConfig, stages: list[Stage], params: int | None = None) -> list[StageSize]:
    """The size of every stage in ``stages`` (the plan's order); ``params``: the trained model's
    parameter count (else counted from ``cfg.model``, or the preset's figure for a hub ID)."""
    n = params if params is not None else model_params(cfg.model, APPROX_PARAMS[cfg.size])
    roles = 2 if cfg.uses_critic else 1
    ckpt = n * CHECKPOINT_BYTES_PER_PARAM * roles
    export = n * EXPORT_BYTES_PER_PARAM * roles
    transformed = bool(acting_on(cfg.between_stages, "weights"))
    prompts = val_prompts(cfg)
    record = prompts * (cfg.max_prompt_length + cfg.max_response_length)
    record *= VALIDATION_BYTES_PER_TOKEN
    sizes = []
    for stage in stages:
        steps = stage_steps(cfg, stage.group)
        written = every(steps, cfg.save_freq)
        validations = 1 + every(steps, cfg.test_freq)  # trainer.val_before_train=True
        own = validations * record
        if transformed and stage.index:
            own += n * EXPORT_BYTES_PER_PARAM
        kept_ckpts = min(cfg.keep_checkpoints, written)
        sizes.append(
            StageSize(
                stage=stage,
                rows=train_rows(cfg, stage.group),
                steps=steps,
                validations=validations,
                val_prompts=prompts,
                checkpoints=written,
                checkpoint_bytes=ckpt,
                export_bytes=export,
                at_peak=own + peak_checkpoints(cfg, written) * ckpt,
                # The newest checkpoint kept holds the exports (hard links): counted once.
                kept=own + (kept_ckpts * ckpt if kept_ckpts else export),
            )
        )
    return sizes


def disk_peaks(sizes: list[StageSize]) -> list[int]:
    """The run's disk use at each stage's peak: what every earlier stage kept, plus its own."""
    peaks, held = [], 0
    for s in sizes:
        peaks.append(held + s.at_peak)
        held += s.kept
    return peaks


def disk_needed(sizes: list[StageSize], first: int = 0) -> int:
    """Free disk the stages from index ``first`` on need (what earlier ones hold is on disk)."""
    rest = sizes[first:]
    return max(disk_peaks(rest), default=0)
