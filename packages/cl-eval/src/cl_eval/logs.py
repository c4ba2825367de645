"""Parse veRL console logs (``step:N - key:value - ...``) into per-step metric records.

veRL 0.9.1 writes metric lines with ``verl.utils.logger.aggregate_logger.concat_dict_to_str``:
``f"step:{step}"`` followed by ``f"{key}:{pprint.pformat(value)}"`` for every ``numbers.Number``
value, joined by ``" - "``. With numpy>=2, ``pprint.pformat`` of a numpy scalar is its repr, e.g.
``np.float64(0.5)``; Python floats give ``0.5``, ``nan``, ``inf``; bools give ``True``. Under
Ray the line is prefixed (``(TaskRunner pid=123) step:3 - ...``), possibly with ANSI colours.
Everything else in a stage log (Ray/vLLM noise, tqdm bars, tracebacks) is ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STEP = re.compile(r"(?:^|[\s)\]])step:(\d+)(?= - |$)")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)")
_NP_SCALAR = re.compile(r"np\.(?:float|int|uint)\d*\((.*)\)")
_SPECIAL = {"True": 1.0, "False": 0.0}

VAL_PREFIXES = ("val-core/", "val-aux/")


def parse_value(text: str) -> float | None:
    """Turn one pformat'ed number (``0.5``, ``nan``, ``np.float64(0.5)``, ``True``) into a float."""
    text = text.strip()
    if text in _SPECIAL:
        return _SPECIAL[text]
    m = _NP_SCALAR.fullmatch(text)
    if m:
        text = m.group(1)
    if not _NUMBER.fullmatch(text):
        return None
    return float(text)


def parse_line(line: str) -> tuple[int, dict[str, float]] | None:
    """Return ``(step, metrics)`` for a veRL metric line, or None for any other line.

    Fields whose value does not parse (e.g. cut off by a crash) are dropped, not guessed.
    """
    line = _ANSI.sub("", line).rstrip("\r\n")
    m = _STEP.search(line)
    if not m:
        return None
    step = int(m.group(1))
    metrics: dict[str, float] = {}
    rest = line[m.end() :]
    for part in rest.split(" - ")[1:] if rest else []:
        key, sep, raw = part.partition(":")
        if not sep or not key or " " in key:
            continue
        value = parse_value(raw)
        if value is not None:
            metrics[key] = value
    return step, metrics


@dataclass
class ParsedLog:
    """The metric records of one stage log, merged by step, plus what looked wrong."""

    records: dict[int, dict[str, float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    restarts: int = 0

    @property
    def steps(self) -> list[int]:
        return sorted(self.records)

    def train_steps(self) -> list[int]:
        """Steps that carry training metrics (not only a validation)."""
        return [s for s in self.steps if any(not _is_val(k) for k in self.records[s])]

    def val_steps(self) -> list[int]:
        return [s for s in self.steps if any(_is_val(k) for k in self.records[s])]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        steps = [s for s in self.steps if key in self.records[s]]
        return steps, [self.records[s][key] for s in steps]


def _is_val(key: str) -> bool:
    return key.startswith(VAL_PREFIXES)


def parse_log_text(text: str, name: str = "log") -> ParsedLog:
    """Parse a whole log; a repeated step (a resumed stage re-logging it) overrides the earlier."""
    out = ParsedLog()
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    truncated = bool(text) and not text.endswith("\n")
    last_step = -1
    for i, line in enumerate(lines):
        cut = truncated and i == len(lines) - 1
        if cut and not line.rstrip().endswith(")") and " - " in line:
            # No final newline: the last field may be cut mid-number, so it is not trusted.
            line = line.rsplit(" - ", 1)[0]
        parsed = parse_line(line)
        if parsed is None:
            continue
        step, metrics = parsed
        if cut:
            out.warnings.append(
                f"{name}: last line is truncated (step {step}); kept its complete fields"
            )
        if step < last_step:
            out.restarts += 1
        last_step = step
        out.records.setdefault(step, {}).update(metrics)
    if out.restarts:
        out.warnings.append(
            f"{name}: step counter went back {out.restarts}x (resumed); later lines win"
        )
    return out


def parse_log(path: Path) -> ParsedLog:
    """Parse a log file; undecodable bytes (binary noise) are replaced, never fatal."""
    return parse_log_text(path.read_text(encoding="utf-8", errors="replace"), name=path.name)


_VAL_KEY = re.compile(r"val-(core|aux)/(.+)/(acc|reward)/mean@(\d+)$")


def group_accuracy(metrics: dict[str, float], data_source: str) -> tuple[float, str] | None:
    """Accuracy of one data source from a validation record, with the key it came from.

    Preference: ``acc`` (fraction fully correct) over ``reward`` (mean reward, includes format
    credit), ``val-core`` over ``val-aux``, and the smallest N of ``mean@N``.
    """
    best: tuple[tuple[int, int, int], float, str] | None = None
    for key, value in metrics.items():
        m = _VAL_KEY.match(key)
        if not m or m.group(2) != data_source or math.isnan(value):
            continue
        rank = (m.group(3) != "acc", m.group(1) != "core", int(m.group(4)))
        if best is None or rank < best[0]:
            best = (rank, value, key)
    return None if best is None else (best[1], best[2])


def data_sources(metrics: dict[str, float]) -> list[str]:
    """The data sources named by validation keys, in order of appearance."""
    seen: dict[str, None] = {}
    for key in metrics:
        m = _VAL_KEY.match(key)
        if m:
            seen.setdefault(m.group(2), None)
    return list(seen)
