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

    def puzzle_accuracy(self, group: str) -> dict[PuzzleKey, float]:
        """Per puzzle, the fraction of its samples that were correct."""
        return {k: sum(v) / len(v) for k, v in self.outcomes.get(group, {}).items()}

    def answers(self, group: str) -> int:
        return sum(len(v) for v in self.outcomes.get(group, {}).values())


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
    acc = record.get("acc")
    if isinstance(acc, int | float) and not isinstance(acc, bool) and math.isfinite(acc):
        return float(acc)
    return 1.0 if record.get("score") == 1.0 else 0.0


def read_validation(path: Path) -> Validation:
    """Read one dump; lines that are not whole records (a crash mid-write) are counted, not used."""
    out = Validation(int(path.stem), path)
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
                gts = record["gts"]
                key = (int(gts["target"]), tuple(int(n) for n in gts["numbers"]))
                group = group_of_prompt(str(record["input"]))
            except (ValueError, KeyError, TypeError):
                out.skipped += 1
                continue
            if group is None:
                out.skipped += 1
                continue
            out.outcomes.setdefault(group, {}).setdefault(key, []).append(_correct(record))
    return out


def validation_files(directory: Path) -> dict[int, Path]:
    """``<step>.jsonl`` files of a stage's validation directory, by step."""
    if not directory.is_dir():
        return {}
    return {int(p.stem): p for p in directory.glob("*.jsonl") if p.stem.isdigit()}
