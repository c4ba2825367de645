"""run.json: the run's record. cl-trainer writes it on every change of state; cl-eval reads it.

One typed declaration (:class:`RunRecord`, :class:`StageRecord`, :class:`RemedyRecord`) is the
schema: reading checks every key against its field's type, fills what an older or hand-written
file leaves out with the field's default, and ignores keys it does not know. The on-disk format is
``schema_version`` 1 (field order = key order of the file).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_rundir.atomic import write_atomic
from cl_rundir.layout import RUN_JSON, Stage, stage_name

SCHEMA_VERSION = 1


class RecordError(ValueError):
    """A run.json that is not a run record: what is wrong with it, in one line."""


def now() -> str:
    """The timestamps of run.json: ISO-8601, UTC, to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass
class RemedyRecord:
    """One remedy applied before a stage: its name, parameters and what it changed."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    changed: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageRecord:
    """One stage's entry: where it sits in the curriculum, its state, and its files (relative to
    the run directory; None in a file that leaves them out means the layout's)."""

    index: int
    round: int
    group: str
    name: str
    status: str = "pending"
    """pending → running → done, or failed / interrupted (then running again on a resume)."""
    log: str | None = None
    initial_model: str | None = None
    final_model: str | None = None
    checkpoint_dir: str | None = None
    validation_dir: str | None = None
    started_at: str | None = None
    """The first attempt's start."""
    finished_at: str | None = None
    duration_s: float | None = None
    """Summed over attempts."""
    exit_code: int | None = None
    signal: str | None = None
    """E.g. ``SIGTERM`` for a stage stopped by that signal."""
    error_tail: str | None = None
    global_steps: int | None = None
    """The step of the exported final model."""
    remedies: list[RemedyRecord] = field(default_factory=list)

    @classmethod
    def planned(cls, stage: Stage) -> StageRecord:
        """A pending stage with its layout's paths."""
        return cls(
            index=stage.index,
            round=stage.round,
            group=stage.group,
            name=stage.name,
            log=stage.log,
            initial_model=stage.initial_model,
            final_model=stage.final_model,
            checkpoint_dir=stage.checkpoint_dir,
            validation_dir=stage.validation_dir,
        )

    @property
    def stage(self) -> Stage:
        return Stage(self.index, self.round, self.group)


@dataclass
class RunRecord:
    """The whole run.json. ``config`` is cl-trainer's resolved configuration (``TrainerConfig``);
    the evaluator reads only the keys named by the properties below."""

    schema_version: int = SCHEMA_VERSION
    name: str | None = None
    size: str | None = None
    backend: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    git_sha: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    base_model: str | None = None
    groups: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    cpu_overlay: dict[str, Any] | None = None
    """``{overrides, env}`` added to every stage of veRL's trainer on the CPU."""
    stages: list[StageRecord] = field(default_factory=list)

    @property
    def data_dir(self) -> Path | None:
        """The data set the run trained and validated on (``countdown-data gen``'s output)."""
        value = self.config.get("data_dir")
        return Path(value) if isinstance(value, str) else None

    @property
    def val_max_samples(self) -> int | None:
        """veRL's ``data.val_max_samples``: validation puzzles drawn over all groups (None: all)."""
        value = self.config.get("val_max_samples")
        return value if isinstance(value, int) and value > 0 else None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, obj: Any) -> RunRecord:
        """A record from parsed JSON; :class:`RecordError` names the first key of the wrong type."""
        if not isinstance(obj, dict) or not isinstance(obj.get("stages"), list):
            raise RecordError("no stages list")
        version = obj.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise RecordError(f"schema_version {version} is newer than this reader's")
        # A hand-written stage may leave out its index: its position.
        stages = [
            {"index": i, **s} if isinstance(s, dict) else s for i, s in enumerate(obj["stages"])
        ]
        return _build(cls, {**obj, "stages": stages}, "")


def _build(cls: type, obj: dict[str, Any], where: str) -> Any:
    """``cls`` from ``obj``: every known key checked against its field's type."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in obj:
            values[f.name] = _value(hints[f.name], obj[f.name], f"{where}{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            values[f.name] = _missing(cls, f.name, values, where)
    return cls(**values)


def _missing(cls: type, name: str, values: dict[str, Any], where: str) -> Any:
    """What a hand-written or older stage entry may leave out: its round (1) and name."""
    if cls is StageRecord and name == "round":
        return 1
    if cls is StageRecord and name == "name" and "group" in values:
        return stage_name(values["round"], values["group"])
    raise RecordError(f"{where}{name} is missing")


_EXPECTED = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _kind(value: Any) -> str:
    """A JSON value's kind, as an error names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), "unknown")


def _value(hint: Any, value: Any, where: str) -> Any:
    """``value`` if it has type ``hint`` (lists and dicts element by element, records built)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _value(hint, value, where)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise RecordError(f"{where} is {_kind(value)}, not an object")
        return _build(hint, value, f"{where}.")
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{where} is {_kind(value)}, not a list")
        return [_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where} is {_kind(value)}, not an object")
        return {k: _value(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    ok = isinstance(value, hint) and not isinstance(value, bool)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise RecordError(f"{where} is {_kind(value)}, not {_EXPECTED[hint]}")
    return value


def read_record(run_dir: Path) -> RunRecord | None:
    """The run's record, or None when it has none; :class:`RecordError` when it is unreadable or
    not a run record (the caller decides: the trainer stops, the evaluator falls back)."""
    path = Path(run_dir) / RUN_JSON
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecordError(str(exc)) from None
    return RunRecord.from_dict(obj)


def write_record(run_dir: Path, record: RunRecord) -> None:
    """Stamp ``updated_at`` and replace run.json atomically (a reader sees the old file or the
    new one, never half of one)."""
    record.updated_at = now()
    write_atomic(Path(run_dir) / RUN_JSON, record.to_json())
