"""Interval estimates for accuracies and everything computed from them.

A cell of the accuracy matrix is a proportion of answers. With only its logged mean and the number
of answers, its 95 % interval is Wilson's. With per-sample records (``cl_eval.samples``), the test
puzzles are resampled: with replacement, all samples of a puzzle together (they are correlated),
and the same resample for every row of the matrix, because every stage is validated on the same
puzzles. A metric (BWT, forgetting, a stage's gain) is recomputed on each resampled matrix; the
2.5/97.5 percentiles are its interval. Paired this way, a difference between two stages is far
tighter than two independent intervals would suggest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000
SEED = 0
"""Resampling is seeded: the same run gives the same report."""


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``p`` of ``n`` trials (sound at p = 0 or 1)."""
    if n <= 0 or not math.isfinite(p):
        return math.nan, math.nan
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(p1: float, n1: float, p2: float, n2: float) -> tuple[float, float]:
    """Interval of p1 - p2 for independent proportions (Newcombe's hybrid of two Wilsons)."""
    l1, u1 = wilson(p1, n1)
    l2, u2 = wilson(p2, n2)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def percentile(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The central 95 % of bootstrap replicates (NaN replicates ignored)."""
    with np.errstate(all="ignore"):
        return np.nanpercentile(values, 2.5, axis=axis), np.nanpercentile(values, 97.5, axis=axis)


@dataclass
class Cell:
    """What is known about one accuracy: per-puzzle accuracies (aligned with its group's puzzle
    order) when records exist, else only the number of answers behind the logged mean."""

    mean: float
    puzzles: np.ndarray | None = None
    answers: int | None = None

    @property
    def n(self) -> int | None:
        return len(self.puzzles) if self.puzzles is not None else self.answers

    def interval(self) -> tuple[float, float]:
        if self.puzzles is not None and len(self.puzzles) and np.ptp(self.puzzles) > 0:
            lo, hi = percentile(resample_means(self.puzzles, BOOTSTRAP_RESAMPLES, rng()))
            return float(lo), float(hi)
        # All puzzles alike (all solved, or none): a bootstrap has nothing to resample; Wilson
        # over the puzzles is the conservative bound.
        return wilson(self.mean, self.n or 0)

    @property
    def method(self) -> str | None:
        if self.puzzles is not None:
            return "bootstrap" if len(self.puzzles) and np.ptp(self.puzzles) > 0 else "wilson"
        return "wilson" if self.answers else None


def rng() -> np.random.Generator:
    return np.random.default_rng(SEED)


def resample_means(
    values: np.ndarray, resamples: int, generator: np.random.Generator
) -> np.ndarray:
    idx = generator.integers(0, len(values), size=(resamples, len(values)))
    return values[idx].mean(axis=1)


def replicate_matrices(
    cells: list[list[Cell | None]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    parametric_seed: int = SEED,
) -> np.ndarray:
    """Resampled accuracy matrices, shape (resamples, rows, groups).

    Per group, one resample of its puzzles is shared by every row with records (the pairing); it
    depends only on the group's position and puzzle count, so two runs on the same test set are
    resampled alike and can be compared puzzle by puzzle. A cell known only by its mean is drawn
    as a binomial proportion of its answers, from ``parametric_seed`` (distinct per run, so two
    runs' draws are independent).
    """
    binomial = np.random.default_rng(parametric_seed)
    rows, groups = len(cells), len(cells[0]) if cells else 0
    out = np.full((resamples, rows, groups), np.nan)
    for j in range(groups):
        column = [cells[i][j] for i in range(rows)]
        sizes = {len(c.puzzles) for c in column if c is not None and c.puzzles is not None}
        idx = None
        if sizes:
            (size,) = sizes  # aligned by the caller
            idx = np.random.default_rng([SEED, j]).integers(0, size, size=(resamples, size))
        for i, c in enumerate(column):
            if c is None or not math.isfinite(c.mean):
                continue
            if c.puzzles is not None and idx is not None:
                out[:, i, j] = c.puzzles[idx].mean(axis=1)
            elif c.answers:
                out[:, i, j] = binomial.binomial(c.answers, c.mean, size=resamples) / c.answers
    return out


class MetricKey(NamedTuple):
    """One scalar of a metrics dict: a metric's name and, for a per-stage or per-group list, the
    1-based position in it. JSON spells it ``name`` or ``name[index]``."""

    name: str
    index: int | None = None

    def __str__(self) -> str:
        return self.name if self.index is None else f"{self.name}[{self.index}]"


@dataclass(frozen=True)
class Estimate:
    """A number with its 95 % interval (None where there is none), how many observations it
    rests on and how the interval was made."""

    value: float | None
    lo: float | None = None
    hi: float | None = None
    n: int | None = None
    method: str = ""

    @property
    def excludes_zero(self) -> bool | None:
        return excludes_zero((self.lo, self.hi))


def flatten(metrics: dict[str, object]) -> dict[MetricKey, float | None]:
    """Scalar view of a metrics dict: a list's entries get their position (from 1)."""
    out: dict[MetricKey, float | None] = {}
    for key, value in metrics.items():
        if isinstance(value, list | tuple):
            for k, v in enumerate(value, start=1):
                out[MetricKey(key, k)] = _num(v)
        elif isinstance(value, int | float) or value is None:
            out[MetricKey(key)] = _num(value)
    return out


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def metric_replicates(
    replicates: np.ndarray, compute: Callable[[np.ndarray], dict[str, object]]
) -> dict[MetricKey, np.ndarray]:
    """Each metric of ``compute`` recomputed on every replicate matrix (NaN where undefined)."""
    values: dict[MetricKey, list[float]] = {}
    for R in replicates:
        for key, v in flatten(compute(R)).items():
            values.setdefault(key, []).append(math.nan if v is None else v)
    return {key: np.asarray(vs) for key, vs in values.items()}


def interval(values: np.ndarray) -> tuple[float | None, float | None]:
    """The percentile interval of bootstrap replicates; none when most are undefined."""
    if np.isfinite(values).sum() < len(values) / 2:
        return None, None
    lo, hi = percentile(values)
    return float(lo), float(hi)


def excludes_zero(interval: tuple[float | None, float | None]) -> bool | None:
    lo, hi = interval
    if lo is None or hi is None:
        return None
    return lo > 0 or hi < 0


T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
"""Student's t 97.5 % quantiles for 1..30 degrees of freedom (beyond: the normal's 1.96)."""


def t_interval(values: Iterable[float | None]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of a few values (one per seed); NaN bounds for fewer than two."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(arr) == 0:
        return math.nan, math.nan, math.nan
    mean = float(arr.mean())
    if len(arr) < 2:
        return mean, math.nan, math.nan
    q = T975[len(arr) - 2] if len(arr) - 1 <= len(T975) else Z95
    half = float(q * arr.std(ddof=1) / math.sqrt(len(arr)))
    return mean, mean - half, mean + half
