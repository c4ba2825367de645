"""Find the stages of a run directory: from run.json (``cl_rundir.record``) or from the original
file layout (``cl_rundir.layout``'s file-name patterns).

Everything is optional: a missing log, checkpoint or stage becomes a warning naming it, so a run
still in progress gives a partial report. Only a directory with no stage at all is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cl_rundir.layout import (
    LOG_FILE,
    LOGS_DIR,
    MODEL_DIR,
    MODELS_DIR,
    PROJECT,
    RUN_JSON,
    Stage,
    stage_name,
)
from cl_rundir.record import RecordError, RunRecord, StageRecord, read_record
from countdown_data.groups import GROUPS


class RunError(Exception):
    """A run directory with nothing usable in it."""


@dataclass
class StageFiles:
    """A stage as the evaluator found it: its place in the curriculum, its status, and those of
    its files that exist (None: missing)."""

    index: int
    round: int
    group: str
    status: str = "unknown"
    log: Path | None = None
    initial_model: Path | None = None
    final_model: Path | None = None
    validation_dir: Path | None = None
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
    stages: list[StageFiles]
    base_model: str | None = None
    record: RunRecord | None = None
    """run.json, when the run has a readable one."""
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


def load_run(path: Path, size: str | None = None) -> Run:
    """Load a run directory; raise RunError only when no stage can be found at all."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"run directory {path} does not exist; pass --run DIR of a cl-trainer run")
    warnings: list[str] = []
    try:
        record = read_record(path)
    except RecordError as exc:
        warnings.append(f"{RUN_JSON} unreadable ({exc}); discovering stages from file names")
        record = None
    size = size or (record.size if record else None) or path.name
    if record is not None:
        run = _from_record(path, record, size, warnings)
    else:
        run = _from_layout(path, size, warnings)
    if not run.stages:
        raise RunError(
            f"no stages in {path}: expected {RUN_JSON} or "
            f"{LOGS_DIR}/{PROJECT}_R<round>_<group>.log"
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


def _files(path: Path, i: int, rec: StageRecord) -> StageFiles:
    """A recorded stage's files that exist; a path the record leaves out is the layout's."""
    layout = Stage(i, rec.round, rec.group)
    return StageFiles(
        index=i,
        round=rec.round,
        group=rec.group,
        status=rec.status or "unknown",
        log=_existing(path, rec.log or layout.log),
        initial_model=_existing(path, rec.initial_model or layout.initial_model),
        final_model=_existing(path, rec.final_model or layout.final_model),
        validation_dir=_existing(path, rec.validation_dir or layout.validation_dir),
        global_steps=rec.global_steps,
    )


def _from_record(path: Path, record: RunRecord, size: str, warnings: list[str]) -> Run:
    stages = [_files(path, i, rec) for i, rec in enumerate(record.stages)]
    groups = list(record.groups) or _order_groups([s.group for s in stages])
    for st in stages:
        if st.group not in groups:
            groups.append(st.group)
    return Run(
        path=path,
        size=size,
        name=record.name or f"{PROJECT}_{size}",
        groups=groups,
        stages=stages,
        base_model=record.base_model,
        record=record,
        warnings=warnings,
    )


def _from_layout(path: Path, size: str, warnings: list[str]) -> Run:
    found: dict[tuple[int, str], StageFiles] = {}
    logs = path / LOGS_DIR
    for f in sorted(logs.glob(f"{PROJECT}_R*_*.log")) if logs.is_dir() else []:
        m = LOG_FILE.match(f.name)
        if m:
            key = (int(m.group(1)), m.group(2))
            found.setdefault(key, StageFiles(0, key[0], key[1])).log = f
    metrics = path / MODELS_DIR
    for d in sorted(metrics.iterdir()) if metrics.is_dir() else []:
        m = MODEL_DIR.match(d.name)
        if m and d.is_dir():
            key = (int(m.group(2)), m.group(3))
            st = found.setdefault(key, StageFiles(0, key[0], key[1]))
            setattr(st, f"{m.group(1)}_model", d)
    groups = _order_groups([g for _, g in found])
    stages = sorted(found.values(), key=lambda s: (s.round, groups.index(s.group)))
    for i, st in enumerate(stages):
        st.index = i
        st.status = "done" if st.final_model is not None else "unknown"
        st.validation_dir = _existing(path, Stage(i, st.round, st.group).validation_dir)
    if stages:
        warnings.append("no run.json; stages discovered from logs/ and metrics/ file names")
        _note_gaps(stages, groups, warnings)
    return Run(path, size, f"{PROJECT}_{size}", groups, stages, warnings=warnings)


def _note_gaps(stages: list[StageFiles], groups: list[str], warnings: list[str]) -> None:
    """Name the stages a full round-robin curriculum would have before the last one found."""
    have = {(s.round, s.group) for s in stages}
    last = (stages[-1].round, groups.index(stages[-1].group))
    for r in range(1, last[0] + 1):
        for gi, g in enumerate(groups):
            if (r, gi) <= last and (r, g) not in have:
                warnings.append(f"stage {stage_name(r, g)}: missing (no log, no checkpoint)")
