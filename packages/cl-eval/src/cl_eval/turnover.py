"""Per-puzzle turnover: a stage's net change on a group hides how many puzzles it lost and how
many it gained. From the per-sample records, per stage and group, the puzzles that went solved →
unsolved and unsolved → solved, and, of those a group had solved right after its last training
and no longer solves at the end, the stage that lost each one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cl_eval.samples import PuzzleRecords

SOLVED = 0.5
"""A puzzle counts as solved when at least this fraction of its samples is right (with one sample
per puzzle: when that answer is right)."""


@dataclass(frozen=True)
class Flips:
    """One stage's turnover on one group: rows ``k−1 → k`` of the accuracy matrix."""

    stage: int
    group: str
    puzzles: int
    solved_before: int
    lost: int
    """Solved before the stage, unsolved after it."""
    gained: int
    """Unsolved before the stage, solved after it."""

    @property
    def net(self) -> int:
        return self.gained - self.lost


@dataclass(frozen=True)
class Losses:
    """Of group ``group``'s puzzles solved right after its last training (stage ``last``) and
    unsolved at the end (stage ``end``): how many each later stage lost for good (``by_stage``:
    stage -> count; a puzzle is charged to the stage of its last solved → unsolved flip)."""

    group: str
    last: int
    end: int
    solved_then: int
    unsolved_now: int
    by_stage: dict[int, int]


def solved(rec: PuzzleRecords, row: int) -> np.ndarray:
    return rec.accuracy(row) >= SOLVED


def flips(records: dict[str, PuzzleRecords], groups: list[str], stages: int) -> list[Flips]:
    """Every stage 1..``stages`` × group whose rows before and after both have records."""
    out = []
    for k in range(1, stages + 1):
        for g in groups:
            rec = records.get(g)
            if rec is None or not {k - 1, k} <= set(rec.rows):
                continue
            a, b = solved(rec, k - 1), solved(rec, k)
            out.append(
                Flips(k, g, len(a), int(a.sum()), int((a & ~b).sum()), int((~a & b).sum()))
            )
    return out


def losses(
    records: dict[str, PuzzleRecords], groups: list[str], stage_cols: list[int], stages: int
) -> list[Losses]:
    """Per group trained before the last stage (and not by it): which stages lost the puzzles it
    no longer solves. Needs records at every row from the group's last training to the end."""
    out = []
    for j, g in enumerate(groups):
        rec = records.get(g)
        last = next((k for k in range(stages - 1, 0, -1) if stage_cols[k - 1] == j), None)
        if rec is None or last is None or stage_cols[stages - 1] == j:
            continue
        if not set(range(last, stages + 1)) <= set(rec.rows):
            continue
        S = {k: solved(rec, k) for k in range(last, stages + 1)}
        lost_for_good = S[last] & ~S[stages]
        by_stage: dict[int, int] = {}
        for p in np.flatnonzero(lost_for_good):
            k = max(k for k in range(last + 1, stages + 1) if S[k - 1][p] and not S[k][p])
            by_stage[k] = by_stage.get(k, 0) + 1
        out.append(
            Losses(g, last, stages, int(S[last].sum()), int(lost_for_good.sum()),
                   dict(sorted(by_stage.items())))
        )  # fmt: skip
    return out
