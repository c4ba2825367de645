"""Per-sample validation records: what veRL's ``trainer.validation_data_dir`` dumps (and the local
backend writes through the same veRL function): ``<dir>/<step>.jsonl``, one line per answer with
its prompt (``input``), ``output``, ``gts`` (the puzzle), ``score`` and the reward's extra keys
(``acc``). They turn a logged mean into the outcome of every puzzle, which is what the intervals
of ``cl_eval.stats`` resample.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from countdown_data.templates import group_of_prompt

PuzzleKey = tuple[int, tuple[int, ...]]
"""A puzzle's identity across stages: its target and its numbers as the prompt shows them."""


@dataclass
class Validation:
    """One validation's outcomes: group -> puzzle -> correctness of each sample (1.0 or 0.0)."""

    step: int
    path: Path
    outcomes: dict[str, dict[PuzzleKey, list[float]]] = field(default_factory=dict)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    """``line N: why`` for every skipped line, in file order."""

    def puzzle_accuracy(self, group: str) -> dict[PuzzleKey, float]:
        """Per puzzle, the fraction of its samples that were correct."""
        return {k: sum(v) / len(v) for k, v in self.outcomes.get(group, {}).items()}

    def answers(self, group: str) -> int:
        return sum(len(v) for v in self.outcomes.get(group, {}).values())

    def warning(self, shown: int = 3) -> str | None:
        """``<file>: 2 line(s) skipped (line 4: acc 7.5 is not in [0, 1]; ...)``, or None."""
        if not self.skipped:
            return None
        more = f"; {len(self.problems) - shown} more" if len(self.problems) > shown else ""
        return (
            f"{self.path}: {self.skipped} line(s) skipped ({'; '.join(self.problems[:shown])}"
            f"{more})"
        )


class BadRecord(ValueError):
    """A line that is not a usable record: why, in a few words."""


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRecord(f"{what} is {value!r}, not a number")
    if not math.isfinite(value):
        raise BadRecord(f"{what} is {value!r}, not finite")
    return float(value)


def _whole(value: object, what: str) -> int:
    number = _number(value, what)
    if not number.is_integer() or number < 0:
        raise BadRecord(f"{what} is {value!r}, not a whole number >= 0")
    return int(number)


@dataclass
class PuzzleRecords:
    """One group's per-puzzle outcomes at every row of the accuracy matrix (row 0 = base):
    ``correct[i, p]`` of ``samples[i, p]`` answers to puzzle ``p`` were right (0 samples: the row
    has no record). The puzzles are those every recorded row shares, in ``puzzles`` order."""

    puzzles: tuple[PuzzleKey, ...]
    correct: np.ndarray
    samples: np.ndarray

    @property
    def rows(self) -> list[int]:
        """The rows with a record of every puzzle."""
        return [i for i in range(len(self.samples)) if (self.samples[i] > 0).all()]

    def accuracy(self, row: int) -> np.ndarray:
        """Per puzzle, the fraction of its answers that were right (the unbiased pass@1)."""
        return self.correct[row] / self.samples[row]


def _correct(record: dict) -> float:
    """``acc`` (the reward's 0/1 correctness), else whether ``score`` is 1; each checked."""
    if "acc" in record:
        acc = _number(record["acc"], "acc")
        if not 0.0 <= acc <= 1.0:
            raise BadRecord(f"acc {acc} is not in [0, 1]")
        return acc
    return 1.0 if _number(record.get("score"), "score") == 1.0 else 0.0


def _parse(line: str) -> tuple[str, PuzzleKey, float]:
    """One line's (group, puzzle, correctness); :class:`BadRecord` says what is wrong."""
    try:
        record = json.loads(line)
    except ValueError:
        raise BadRecord("not a JSON record (cut off?)") from None
    if not isinstance(record, dict):
        raise BadRecord(f"a {type(record).__name__}, not a record")
    gts, prompt = record.get("gts"), record.get("input")
    if not isinstance(gts, dict) or not isinstance(gts.get("numbers"), list):
        raise BadRecord("gts is not a puzzle (target and numbers)")
    target = _whole(gts.get("target"), "gts.target")
    numbers = tuple(_whole(n, "gts.numbers") for n in gts["numbers"])
    if not isinstance(prompt, str):
        raise BadRecord("input is not a prompt")
    group = group_of_prompt(prompt)
    if group is None:
        raise BadRecord("input names no operator group")
    return group, (target, numbers), _correct(record)


def read_validation(path: Path) -> Validation:
    """Read one dump; a line that is not a whole, well-typed record (a crash mid-write, a value out
    of range or not finite) is skipped and named, never used."""
    out = Validation(int(path.stem), path)
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            try:
                group, key, correct = _parse(line)
            except BadRecord as exc:
                out.skipped += 1
                out.problems.append(f"line {i}: {exc}")
                continue
            out.outcomes.setdefault(group, {}).setdefault(key, []).append(correct)
    return out


def validation_files(directory: Path) -> dict[int, Path]:
    """``<step>.jsonl`` files of a stage's validation directory, by step."""
    if not directory.is_dir():
        return {}
    return {int(p.stem): p for p in directory.glob("*.jsonl") if p.stem.isdigit()}
