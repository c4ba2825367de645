"""A stage log as metric records, in file order.

Lines are veRL's console metric lines (``cl_rundir.metric_lines.parse_metric_line``); everything
else in a stage log (Ray/vLLM noise, tqdm bars, tracebacks) is ignored. Validation records are
picked by their position in the file, never by their step number: a resumed stage's later lines
win, and a stray line with a huge step cannot pose as the final validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cl_rundir.metric_lines import VAL_KEY, is_validation_key, parse_metric_line


@dataclass(frozen=True)
class Entry:
    """One metric line: its 1-based line number, step and values."""

    line: int
    step: int
    metrics: dict[str, float]

    @property
    def is_validation(self) -> bool:
        return any(is_validation_key(k) for k in self.metrics)

    @property
    def is_training(self) -> bool:
        return any(not is_validation_key(k) for k in self.metrics)


@dataclass
class ParsedLog:
    """The metric lines of one stage log, plus what looked wrong."""

    entries: list[Entry] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    restarts: int = 0
    truncated_step: int | None = None
    """The step of the last line when the file ends mid-line (its last field was dropped)."""

    @property
    def records(self) -> dict[int, dict[str, float]]:
        """Metrics merged by step, later lines winning (a resumed stage re-logs its steps)."""
        out: dict[int, dict[str, float]] = {}
        for e in self.entries:
            out.setdefault(e.step, {}).update(e.metrics)
        return dict(sorted(out.items()))

    @property
    def steps(self) -> list[int]:
        return sorted({e.step for e in self.entries})

    def train_steps(self) -> list[int]:
        """Steps that carry training metrics (not only a validation)."""
        return sorted({e.step for e in self.entries if e.is_training})

    def val_steps(self) -> list[int]:
        return sorted({e.step for e in self.entries if e.is_validation})

    def validations(self) -> list[Entry]:
        """Validation entries in file order (only their validation keys)."""
        out = []
        for e in self.entries:
            vals = {k: v for k, v in e.metrics.items() if is_validation_key(k)}
            if vals:
                out.append(Entry(e.line, e.step, vals))
        return out

    def series(self, key: str) -> tuple[list[int], list[float]]:
        records = self.records
        steps = [s for s in records if key in records[s]]
        return steps, [records[s][key] for s in steps]


def _check_accuracies(entry: Entry, name: str, warnings: list[str]) -> Entry:
    """Drop validation accuracies outside [0, 1] (a damaged or foreign line), naming the line."""
    bad = [
        k
        for k, v in entry.metrics.items()
        if (m := VAL_KEY.match(k)) and m.group(3) == "acc" and not 0.0 <= v <= 1.0
    ]
    for key in bad:
        warnings.append(
            f"{name} line {entry.line}: {key}={entry.metrics[key]} is not an accuracy; ignored"
        )
    if not bad:
        return entry
    return Entry(entry.line, entry.step, {k: v for k, v in entry.metrics.items() if k not in bad})


def parse_log_text(text: str, name: str = "log") -> ParsedLog:
    """Parse a whole log (see the module docstring)."""
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
        parsed = parse_metric_line(line)
        if parsed is None:
            continue
        step, metrics = parsed
        if cut:
            out.warnings.append(
                f"{name}: last line is truncated (step {step}); kept its complete fields"
            )
            out.truncated_step = step
        if step < last_step:
            out.restarts += 1
        last_step = step
        out.entries.append(_check_accuracies(Entry(i + 1, step, metrics), name, out.warnings))
    if out.restarts:
        out.warnings.append(
            f"{name}: step counter went back {out.restarts}x (resumed); later lines win"
        )
    return out


def parse_log(path: Path) -> ParsedLog:
    """Parse a log file; undecodable bytes (binary noise) are replaced, never fatal."""
    return parse_log_text(path.read_text(encoding="utf-8", errors="replace"), name=path.name)
