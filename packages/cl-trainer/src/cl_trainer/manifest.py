"""run.json: the run's manifest and the contract with cl-eval (schema in the package README)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from cl_trainer.config import NOT_COMPARED, TrainerConfig
from cl_trainer.errors import TrainerError
from cl_trainer.stages import uses_cpu_overlay
from cl_trainer.verl_cpu import cpu_overlay
from countdown_data.atomic import write_atomic
from countdown_data.runs import MANIFEST, Stage

SCHEMA_VERSION = 1


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


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


def stage_record(stage: Stage) -> dict[str, Any]:
    return {
        "index": stage.index,
        "round": stage.round,
        "group": stage.group,
        "name": stage.name,
        "status": "pending",
        "log": stage.log,
        "initial_model": stage.initial_model,
        "final_model": stage.final_model,
        "checkpoint_dir": stage.checkpoint_dir,
        "validation_dir": stage.validation_dir,
        "started_at": None,
        "finished_at": None,
        "duration_s": None,
        "exit_code": None,
        "signal": None,
        "error_tail": None,
        "global_steps": None,
        "remedies": [],
    }


def new_manifest(cfg: TrainerConfig, stages: list[Stage], base_model: str) -> dict[str, Any]:
    stamp = now()
    return {
        "schema_version": SCHEMA_VERSION,
        "name": cfg.run_name,
        "size": cfg.size,
        "backend": cfg.backend,
        "created_at": stamp,
        "updated_at": stamp,
        "git_sha": git_sha(),
        "versions": versions(),
        "base_model": base_model,
        "groups": list(cfg.groups),
        "config": cfg.to_dict(),
        "cpu_overlay": (
            dict(zip(("overrides", "env"), cpu_overlay(cfg), strict=True))
            if uses_cpu_overlay(cfg)
            else None
        ),
        "stages": [stage_record(s) for s in stages],
    }


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    """Atomic: a reader sees the old or the new file, never half of one."""
    manifest["updated_at"] = now()
    write_atomic(run_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """run.json, or None when there is none yet; a damaged one is an error naming the fix."""
    path = run_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict) or not isinstance(manifest.get("stages"), list):
            raise ValueError("not a run manifest")
    except (OSError, ValueError) as exc:
        raise TrainerError(
            f"{path} is unreadable ({exc}); move it away to start the run afresh, "
            "or pass a new --out"
        ) from None
    return manifest


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every compared key that differs."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in NOT_COMPARED:
            continue
        if old.get(key) != new.get(key):
            lines.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return lines
