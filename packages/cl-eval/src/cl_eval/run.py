"""Find the stages of a run directory: from run.json (schema 1) or from the original file layout.

Everything is optional: a missing log, checkpoint or stage becomes a warning naming it, so a run
still in progress gives a partial report. Only a directory with no stage at all is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from countdown_data.groups import GROUPS
from countdown_data.runs import LOG_FILE, MANIFEST, MODEL_DIR, PROJECT, stage_name
from countdown_data.runs import Stage as Layout


class RunError(Exception):
    """A run directory with nothing usable in it."""


@dataclass
class Stage:
    index: int
    round: int
    group: str
    status: str = "unknown"
    log: Path | None = None
    initial_model: Path | None = None
    final_model: Path | None = None
    validation_dir: Path | None = None
    rollouts: Path | None = None
    global_steps: int | None = None

    @property
    def name(self) -> str:
        return stage_name(self.round, self.group)


@dataclass
class Run:
    path: Path
    size: str
    name: str
    groups: list[str]
    stages: list[Stage]
    base_model: str | None = None
    manifest: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def base_checkpoint(self) -> Path | None:
        """The model the curriculum started from: stage 1's initial model, else base_model."""
        if self.stages and self.stages[0].initial_model is not None:
            return self.stages[0].initial_model
        if self.base_model and Path(self.base_model).is_dir():
            return Path(self.base_model)
        return None


def _existing(root: Path, rel: str) -> Path | None:
    p = root / rel
    return p if p.exists() else None


def _order_groups(found: list[str]) -> list[str]:
    known = [g for g in GROUPS if g in found]
    return known + [g for g in dict.fromkeys(found) if g not in known]


def _manifest_problem(m: Any) -> str | None:
    """What makes a parsed run.json unusable (wrong types anywhere we read), or None."""
    if not isinstance(m, dict) or not isinstance(m.get("stages"), list):
        return "no stages list"
    if not isinstance(m.get("groups", []), list):
        return "groups is not a list"
    for i, st in enumerate(m["stages"]):
        if not isinstance(st, dict):
            return f"stage #{i} is not an object"
        if not isinstance(st.get("group"), str) or not isinstance(st.get("round", 1), int):
            return f"stage #{i} has no group/round"
        for key in ("log", "initial_model", "final_model", "validation_dir", "status", "name"):
            if st.get(key) is not None and not isinstance(st[key], str):
                return f"stage #{i} {key} is {type(st[key]).__name__}, not a path or name"
    return None


def load_run(path: Path, size: str | None = None) -> Run:
    """Load a run directory; raise RunError only when no stage can be found at all."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run directory {path} does not exist; pass --run DIR of a cl-trainer run")
    warnings: list[str] = []
    manifest = None
    mpath = path / MANIFEST
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
            problem = _manifest_problem(manifest)
            if problem:
                raise ValueError(problem)
        except (OSError, ValueError) as exc:
            warnings.append(f"run.json unreadable ({exc}); discovering stages from file names")
            manifest = None
    size = size or (manifest or {}).get("size") or path.name
    if manifest is not None:
        run = _from_manifest(path, manifest, size, warnings)
    else:
        run = _from_layout(path, size, warnings)
    if not run.stages:
        raise RunError(
            f"no stages in {path}: expected {MANIFEST} or logs/{PROJECT}_R<round>_<group>.log"
        )
    for st in run.stages:
        if st.log is not None and not st.log.is_file():
            warnings.append(f"stage {st.name}: log {st.log} is not a file; ignored")
            st.log = None
        if st.log is None:
            warnings.append(f"stage {st.name}: no log ({st.status})")
        if st.final_model is None and st.status not in ("pending", "running"):
            warnings.append(f"stage {st.name}: no final checkpoint")
    return run


def _from_manifest(path: Path, m: dict, size: str, warnings: list[str]) -> Run:
    stages: list[Stage] = []
    for i, raw in enumerate(m["stages"]):
        layout = Layout(i, int(raw.get("round") or 1), raw["group"])
        st = Stage(
            index=i,
            round=layout.round,
            group=layout.group,
            status=raw.get("status") or "unknown",
            log=_existing(path, raw.get("log") or layout.log),
            initial_model=_existing(path, raw.get("initial_model") or layout.initial_model),
            final_model=_existing(path, raw.get("final_model") or layout.final_model),
            validation_dir=_existing(path, raw.get("validation_dir") or layout.validation_dir),
            rollouts=_existing(path, layout.rollouts),
            global_steps=steps if isinstance(steps := raw.get("global_steps"), int) else None,
        )
        stages.append(st)
    groups = [str(g) for g in m.get("groups") or []] or _order_groups([s.group for s in stages])
    for st in stages:
        if st.group not in groups:
            groups.append(st.group)
    return Run(
        path=path,
        size=size,
        name=str(m.get("name") or f"{PROJECT}_{size}"),
        groups=groups,
        stages=stages,
        base_model=m.get("base_model"),
        manifest=m,
        warnings=warnings,
    )


def _from_layout(path: Path, size: str, warnings: list[str]) -> Run:
    found: dict[tuple[int, str], Stage] = {}
    logs = path / "logs"
    for f in sorted(logs.glob(f"{PROJECT}_R*_*.log")) if logs.is_dir() else []:
        m = LOG_FILE.match(f.name)
        if m:
            key = (int(m.group(1)), m.group(2))
            found.setdefault(key, Stage(0, key[0], key[1])).log = f
    metrics = path / "metrics"
    for d in sorted(metrics.iterdir()) if metrics.is_dir() else []:
        m = MODEL_DIR.match(d.name)
        if m and d.is_dir():
            key = (int(m.group(2)), m.group(3))
            st = found.setdefault(key, Stage(0, key[0], key[1]))
            setattr(st, f"{m.group(1)}_model", d)
    groups = _order_groups([g for _, g in found])
    stages = sorted(found.values(), key=lambda s: (s.round, groups.index(s.group)))
    for i, st in enumerate(stages):
        st.index = i
        st.status = "done" if st.final_model is not None else "unknown"
        layout = Layout(i, st.round, st.group)
        st.validation_dir = _existing(path, layout.validation_dir)
        st.rollouts = _existing(path, layout.rollouts)
    if stages:
        warnings.append("no run.json; stages discovered from logs/ and metrics/ file names")
        _note_gaps(stages, groups, warnings)
    return Run(path, size, f"{PROJECT}_{size}", groups, stages, warnings=warnings)


def _note_gaps(stages: list[Stage], groups: list[str], warnings: list[str]) -> None:
    """Name the stages a full round-robin curriculum would have before the last one found."""
    have = {(s.round, s.group) for s in stages}
    last = (stages[-1].round, groups.index(stages[-1].group))
    for r in range(1, last[0] + 1):
        for gi, g in enumerate(groups):
            if (r, gi) <= last and (r, g) not in have:
                warnings.append(f"stage {stage_name(r, g)}: missing (no log, no checkpoint)")
