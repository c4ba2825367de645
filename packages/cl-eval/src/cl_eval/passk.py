"""pass@k from validations with several samples per puzzle: did a stage take away the model's
ability to solve a group, or only its first choice? (Yue et al. 2025 find RL raises pass@1 while
the base model catches up at large k.)

Per puzzle with n samples of which c are right, the unbiased estimate of pass@k (Chen et al. 2021)
is 1 − C(n−c, k) / C(n, k); a cell is its mean over the group's puzzles. Intervals resample the
puzzles exactly as the accuracy's do (``cl_eval.stats``): all samples of a puzzle together, one
resample shared by every row, so forgetting at pass@k is paired like forgetting at pass@1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cl_eval.matrix import Curriculum, compute_metrics
from cl_eval.samples import PuzzleRecords
from cl_eval.stats import Cell, MetricKey, interval, metric_replicates, replicate_matrices


def pass_at_k_table(n_max: int) -> np.ndarray:
    """``T[n, c, k]`` = unbiased pass@k for c right of n samples (NaN where k > n), as a running
    product: C(n−c, k) / C(n, k) = ∏_{i=n−c+1..n} (1 − k/i)."""
    T = np.full((n_max + 1, n_max + 1, n_max + 1), np.nan)
    for n in range(1, n_max + 1):
        for c in range(n + 1):
            for k in range(1, n + 1):
                if n - c < k:
                    T[n, c, k] = 1.0
                else:
                    T[n, c, k] = 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
    return T


@dataclass
class PassAtK:
    """The pass@k matrix for k = 1..n (``values[k-1]`` shaped like R), each cell's 95 % interval,
    and the accuracy-matrix metrics computed on it, with intervals, for ``metric_ks``."""

    n: int
    """Samples per puzzle (the fewest any recorded cell has)."""
    values: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    metrics: dict[int, dict[str, object]] = field(default_factory=dict)
    intervals: dict[int, dict[MetricKey, tuple[float | None, float | None]]] = field(
        default_factory=dict
    )

    @property
    def ks(self) -> list[int]:
        return list(range(1, self.n + 1))

    @property
    def metric_ks(self) -> list[int]:
        """The ks whose forgetting is reported: pass@1 (the first choice) and pass@n."""
        return sorted(self.metrics)


def samples_per_puzzle(records: dict[str, PuzzleRecords]) -> int:
    """The fewest samples any recorded puzzle has (0 without records)."""
    counts = [int(r.samples[i].min()) for r in records.values() for i in r.rows]
    return min(counts) if counts else 0


def pass_at_k(
    records: dict[str, PuzzleRecords],
    groups: list[str],
    rows: int,
    cur: Curriculum,
    stages_used: int,
) -> PassAtK | None:
    """The pass@k matrices of a run whose validations drew more than one sample per puzzle;
    None when they drew one (pass@1 is then the accuracy matrix)."""
    n = samples_per_puzzle(records)
    if n < 2:
        return None
    table = pass_at_k_table(int(max(r.samples.max() for r in records.values())))
    out = PassAtK(n, *(np.full((n, rows, len(groups)), np.nan) for _ in range(3)))
    for k in range(1, n + 1):
        cells: list[list[Cell | None]] = [[None] * len(groups) for _ in range(rows)]
        for j, g in enumerate(groups):
            rec = records.get(g)
            for i in rec.rows if rec is not None else []:
                n_i, c_i = rec.samples[i].astype(int), rec.correct[i].round().astype(int)
                per_puzzle = table[n_i, c_i, k]
                cell = Cell(float(per_puzzle.mean()), puzzles=per_puzzle)
                cells[i][j] = cell
                out.values[k - 1, i, j] = cell.mean
                out.lo[k - 1, i, j], out.hi[k - 1, i, j] = cell.interval()
        if k in (1, n) and stages_used:
            used = stages_used + 1
            out.metrics[k] = compute_metrics(out.values[k - 1, :used], cur)
            reps = metric_replicates(
                replicate_matrices(cells[:used]), lambda M: compute_metrics(M, cur)
            )
            out.intervals[k] = {key: interval(v) for key, v in reps.items()}
    return out
