"""The accuracy matrix and the continual-learning metrics derived from it.

R has T+1 rows and one column per group: row 0 is the model before any training, row k the model
after stage k. With several rounds a group is trained more than once, so each *stage* is a task
occurrence, and a group's metrics refer to the occurrence that matters for the formula: the most
recent one at or before the evaluated stage for BWT and forgetting, the first one for FWT. With a
single round (each group trained once, in column order) every formula reduces to the paper's.
Missing cells are NaN and are skipped by the averages (the count used is reported).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFINITIONS: dict[str, str] = {
    "final_accuracy": "ACC (GEM): mean over all groups j of R[T][j] (after the last stage).",
    "average_accuracy": "A_k: mean of R[k][j] over the groups trained at or before stage k.",
    "average_incremental_accuracy": "Mean over stages k=1..T of A_k (iCaRL).",
    "learning_accuracy": "LA (Riemer et al. 2019): mean over stages k of R[k][g(k)], the accuracy "
    "on the stage's own group right after training it (the diagonal).",
    "plasticity_gain": "Mean over stages k of R[k][g(k)] - R[k-1][g(k)]: what each stage added "
    "on its own group.",
    "bwt": "BWT (GEM, Lopez-Paz & Ranzato 2017): mean over groups j trained before the last stage, "
    "j != g(T), of R[T][j] - R[last(j)][j], last(j) = the most recent stage that trained j. "
    "Negative = forgetting.",
    "fwt": "FWT (GEM, base model as reference b_j = R[0][j]): mean over groups j first trained at "
    "stage first(j) > 1 of R[first(j)-1][j] - R[0][j]: what earlier stages did for j before "
    "j was trained.",
    "forgetting_avalanche": "Forgetting (Avalanche, relative to right after training): mean "
    "over the BWT groups of R[last(j)][j] - R[T][j] (= -BWT).",
    "forgetting_max": "Forgetting (Chaudhry et al. 2018, RWalk, relative to the best earlier "
    "accuracy): mean over the BWT groups of max_{first(j) <= l < T} R[l][j] - R[T][j].",
}


@dataclass(frozen=True)
class Curriculum:
    """Which column each stage trains: ``stage_cols[k-1]`` is g(k) for stage k = 1..T."""

    groups: tuple[str, ...]
    stage_cols: tuple[int, ...]

    def first(self, j: int, upto: int) -> int | None:
        """First stage <= ``upto`` that trained column j."""
        return next((k for k in range(1, upto + 1) if self.stage_cols[k - 1] == j), None)

    def last(self, j: int, upto: int) -> int | None:
        """Most recent stage <= ``upto`` that trained column j."""
        return next((k for k in range(upto, 0, -1) if self.stage_cols[k - 1] == j), None)


def _mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _cell(R: np.ndarray, k: int, j: int) -> float:
    return float(R[k, j])


def _old_groups(cur: Curriculum, k: int) -> list[int]:
    """Groups trained before stage k, except the group stage k trains."""
    return [
        j
        for j in range(len(cur.groups))
        if j != cur.stage_cols[k - 1] and cur.first(j, k - 1) is not None
    ]


def bwt_at(R: np.ndarray, cur: Curriculum, k: int) -> float | None:
    return _mean([_cell(R, k, j) - _cell(R, cur.last(j, k), j) for j in _old_groups(cur, k)])


def forgetting_at(R: np.ndarray, cur: Curriculum, k: int) -> dict[int, float]:
    """Per group j trained before stage k (not by it): max_{first(j) <= l < k} R[l][j] - R[k][j]
    (NaN without an earlier measurement)."""
    out = {}
    for j in _old_groups(cur, k):
        earlier = [v for v in R[cur.first(j, k) : k, j] if not math.isnan(v)]
        out[j] = max(earlier) - _cell(R, k, j) if earlier else math.nan
    return out


def forgetting_max_at(R: np.ndarray, cur: Curriculum, k: int) -> float | None:
    return _mean(list(forgetting_at(R, cur, k).values()))


def forgetting_matrix(R: np.ndarray, cur: Curriculum) -> np.ndarray:
    """F[k][j] = :func:`forgetting_at`'s value for stage k and group j; NaN elsewhere."""
    F = np.full(R.shape, np.nan)
    for k in range(1, R.shape[0]):
        for j, v in forgetting_at(R, cur, k).items():
            F[k, j] = v
    return F


def compute_metrics(
    R: np.ndarray, cur: Curriculum, reference: np.ndarray | None = None
) -> dict[str, object]:
    """All metrics of ``DEFINITIONS`` for matrix R (rows 0..T); ``reference`` defaults to R[0]."""
    R = np.asarray(R, dtype=float)
    T = R.shape[0] - 1
    if T < 1 or len(cur.stage_cols) < T:
        raise ValueError("the matrix needs row 0 and one row per stage")
    ref = R[0] if reference is None else np.asarray(reference, dtype=float)
    diag = [_cell(R, k, cur.stage_cols[k - 1]) for k in range(1, T + 1)]
    gains = [diag[k - 1] - _cell(R, k - 1, cur.stage_cols[k - 1]) for k in range(1, T + 1)]
    avg_acc = []
    for k in range(1, T + 1):
        seen = [j for j in range(len(cur.groups)) if cur.first(j, k) is not None]
        avg_acc.append(_mean([_cell(R, k, j) for j in seen]))
    bwt = bwt_at(R, cur, T)
    old = _old_groups(cur, T)
    bwt_terms: list[float | None] = [
        _cell(R, T, j) - _cell(R, cur.last(j, T), j) if j in old else None
        for j in range(len(cur.groups))
    ]
    fwt_terms: list[float | None] = []
    for j in range(len(cur.groups)):
        f = cur.first(j, T)
        fwt_terms.append(_cell(R, f - 1, j) - float(ref[j]) if f is not None and f > 1 else None)
    return {
        "stages": T,
        "final_accuracy": _mean(list(R[T])),
        "average_accuracy": avg_acc[-1],
        "average_accuracy_per_stage": avg_acc,
        "average_incremental_accuracy": _mean([a for a in avg_acc if a is not None]),
        "learning_accuracy": _mean(diag),
        "learning_accuracy_per_stage": diag,
        "plasticity_gain": _mean(gains),
        "plasticity_gain_per_stage": gains,
        "bwt": bwt,
        "bwt_per_stage": [None] + [bwt_at(R, cur, k) for k in range(2, T + 1)],
        "fwt": _mean([t for t in fwt_terms if t is not None]),
        "bwt_per_group": bwt_terms,
        "fwt_per_group": fwt_terms,
        "forgetting_avalanche": None if bwt is None else -bwt,
        "forgetting_max": forgetting_max_at(R, cur, T),
        "forgetting_max_per_stage": [None]
        + [forgetting_max_at(R, cur, k) for k in range(2, T + 1)],
    }


def per_round_metrics(
    R: np.ndarray, cur: Curriculum, stage_rounds: Sequence[int]
) -> dict[int, dict[str, object]]:
    """GEM metrics of each round on its own: rows = before the round .. end of the round.

    FWT keeps the base model (R[0]) as reference, so it says what the curriculum so far did for a
    group before this round trained it.
    """
    out: dict[int, dict[str, object]] = {}
    T = R.shape[0] - 1
    for r in sorted(set(stage_rounds[:T])):
        ks = [k for k in range(1, T + 1) if stage_rounds[k - 1] == r]
        start, end = ks[0], ks[-1]
        sub = Curriculum(cur.groups, tuple(cur.stage_cols[start - 1 : end]))
        out[r] = compute_metrics(R[start - 1 : end + 1], sub, reference=R[0])
    return out
