"""The trainer's side of run.json (``cl_rundir.record``): a new record for a configuration, the
record a rerun resumes, and what a changed configuration changed."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from cl_rundir.layout import RUN_JSON, Stage
from cl_rundir.record import RecordError, RunRecord, StageRecord, now, read_record
from cl_trainer.config import NOT_COMPARED, SETTINGS, TrainerConfig, default_of
from cl_trainer.errors import TrainerError
from cl_trainer.stages import uses_cpu_overlay
from cl_trainer.verl_cpu import cpu_overlay


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {d: _version(d) for d in ("cl-trainer", "verl", "torch", "transformers")}


def git_sha(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def new_record(cfg: TrainerConfig, stages: list[Stage], base_model: str) -> RunRecord:
    stamp = now()
    return RunRecord(
        name=cfg.run_name,
        size=cfg.size,
        backend=cfg.backend,
        created_at=stamp,
        updated_at=stamp,
        git_sha=git_sha(),
        versions=versions(),
        base_model=base_model,
        groups=list(cfg.groups),
        config=cfg.to_dict(),
        cpu_overlay=(
            dict(zip(("overrides", "env"), cpu_overlay(), strict=True))
            if uses_cpu_overlay(cfg)
            else None
        ),
        stages=[StageRecord.planned(s) for s in stages],
    )


def read_run(run_dir: Path) -> RunRecord | None:
    """run.json, or None when there is none yet; a damaged one is an error naming the fix."""
    try:
        return read_record(run_dir)
    except RecordError as exc:
        raise TrainerError(
            f"{run_dir / RUN_JSON} is unreadable ({exc}); move it away to start the run afresh, "
            "or pass a new --out"
        ) from None


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every compared key that differs. A setting added since the run
    was made, at its default, is no change: the run trained with that default."""
    defaults = {f.name: default_of(f) for f in SETTINGS}  # plain values (no remedy by default)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in NOT_COMPARED or (key not in old and new.get(key) == defaults.get(key)):
            continue
        if old.get(key) != new.get(key):
            lines.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return lines
