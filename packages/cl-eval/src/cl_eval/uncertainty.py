"""How sure each number of a run is: an interval for every cell of the accuracy matrix and every
metric computed from it, and the run's own noise floor.

Cells come from per-sample validation records when the run has them (``cl_eval.samples``): then
every interval comes from the paired bootstrap over puzzles of ``cl_eval.stats``. A run with logs
only (older runs) falls back to the logged means and the number of answers behind them: Wilson per
cell, and metrics from independent binomial draws (wider, as nothing is paired).

The noise floor: stage k's last validation and stage k+1's first validate the same weights, so
their difference is sampling noise alone. A difference whose interval excludes zero means
something else changed between them (non-determinism, or a chaining bug).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cl_eval.matrix import Curriculum, compute_metrics
from cl_eval.run import Run
from cl_eval.samples import (
    PuzzleKey,
    PuzzleRecords,
    Validation,
    read_validation,
    validation_files,
)
from cl_eval.stats import (
    BOOTSTRAP_RESAMPLES,
    Cell,
    MetricKey,
    excludes_zero,
    interval,
    metric_replicates,
    newcombe,
    percentile,
    replicate_matrices,
    rng,
)
from countdown_data.dataset import load_manifest

if TYPE_CHECKING:
    from cl_eval.analysis import LoggedValidation, StageResult

_SAMPLES = re.compile(r"mean@(\d+)$")


@dataclass
class Uncertainty:
    lo: np.ndarray
    hi: np.ndarray
    n: list[list[int | None]]
    method: list[list[str | None]]
    metrics: dict[MetricKey, tuple[float | None, float | None]] = field(default_factory=dict)
    noise_floor: list[dict] = field(default_factory=list)
    replicates: dict[MetricKey, np.ndarray] = field(default_factory=dict)
    """Every metric on every resampled matrix: what ``cl-eval compare`` pairs across runs."""
    records: dict[str, PuzzleRecords] = field(default_factory=dict)
    """Per group, the per-puzzle outcomes the resampling is over (empty without records)."""

    @property
    def puzzles(self) -> dict[str, tuple[PuzzleKey, ...]]:
        """Per group, the puzzles the resampling is over."""
        return {g: r.puzzles for g, r in self.records.items()}

    @property
    def source(self) -> str:
        methods = {m for row in self.method for m in row if m}
        if (
            methods
            and methods <= {"bootstrap", "wilson"}
            and any(m == "bootstrap" for row in self.method for m in row)
        ):
            return "per-sample validation records: paired bootstrap over puzzles"
        return "logged means: Wilson per cell, metrics from independent binomial draws"


class Records:
    """Per-sample validations of a run, read once each."""

    def __init__(self, warnings: list[str]) -> None:
        self.cache: dict[tuple[Path, int], Validation | None] = {}
        self.warnings = warnings

    def get(self, res: StageResult, step: int) -> Validation | None:
        directory = res.stage.validation_dir
        if directory is None:
            return None
        key = (directory, step)
        if key not in self.cache:
            path = validation_files(directory).get(step)
            val = read_validation(path) if path is not None else None
            if val is not None and (warning := val.warning()):
                self.warnings.append(warning)
            self.cache[key] = val
        return self.cache[key]


def puzzles_per_group(run: Run) -> dict[str, int]:
    """Test puzzles per group from the run's data manifest (when the data set is still there)."""
    if run.record is None or run.record.data_dir is None:
        return {}
    try:
        data = load_manifest(run.record.data_dir)  # only its counts are needed
        counts = {g: int(data["counts"][g]["test"]) for g in run.groups}
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    cap, total = run.record.val_max_samples, sum(counts.values())
    if cap is not None and cap < total:  # veRL draws that many over all groups: each one's share
        counts = {g: round(cap * c / total) for g, c in counts.items()}
    return counts


def _cells(
    run: Run,
    sources: list[tuple[StageResult, LoggedValidation] | None],
    R: np.ndarray,
    records: Records,
) -> tuple[list[list[Cell | None]], dict[str, PuzzleRecords]]:
    rows, groups = R.shape
    per_puzzle: list[list[dict[PuzzleKey, list[float]] | None]] = [
        [None] * groups for _ in range(rows)
    ]
    for i, src in enumerate(sources):
        if src is None:
            continue
        val = records.get(src[0], src[1].step)
        for j, g in enumerate(run.groups):
            if val is not None and g in val.outcomes:
                per_puzzle[i][j] = val.outcomes[g]
    counts = puzzles_per_group(run)
    cells: list[list[Cell | None]] = [[None] * groups for _ in range(rows)]
    by_group: dict[str, PuzzleRecords] = {}
    for j, g in enumerate(run.groups):
        known = [p for i in range(rows) if (p := per_puzzle[i][j]) is not None]
        shared = sorted(set.intersection(*(set(p) for p in known))) if known else []
        if shared:
            correct, samples = np.zeros((rows, len(shared))), np.zeros((rows, len(shared)))
            for i in range(rows):
                if (p := per_puzzle[i][j]) is not None:
                    correct[i] = [sum(p[k]) for k in shared]
                    samples[i] = [len(p[k]) for k in shared]
            by_group[g] = PuzzleRecords(tuple(shared), correct, samples)
        if known and any(len(p) != len(shared) for p in known):
            records.warnings.append(
                f"group {g}: validations differ in their puzzles; paired over the "
                f"{len(shared)} they share"
            )
        for i in range(rows):
            src, mean = sources[i], float(R[i, j])
            if src is None or not math.isfinite(mean):
                continue
            if per_puzzle[i][j] is not None and shared:
                cells[i][j] = Cell(mean, puzzles=by_group[g].accuracy(i))
                continue
            key = src[1].keys.get(g) or ""
            m = _SAMPLES.search(key)
            answers = counts.get(g, 0) * (int(m.group(1)) if m else 1)
            cells[i][j] = Cell(mean, answers=answers or None)
    return cells, by_group


def _noise_floor(
    run: Run, results: list[StageResult], records: Records, counts: dict[str, int]
) -> list[dict]:
    out = []
    for prev, nxt in pairwise(results):
        if not (prev.after and nxt.before):
            continue
        a = records.get(prev, prev.after.step)
        b = records.get(nxt, nxt.before.step)
        for g in run.groups:
            if g not in prev.after.accuracy or g not in nxt.before.accuracy:
                continue
            pa, pb = prev.after.accuracy[g], nxt.before.accuracy[g]
            entry = {"boundary": f"{prev.stage.name} → {nxt.stage.name}", "group": g}
            if a is not None and b is not None and g in a.outcomes and g in b.outcomes:
                xa, xb = a.puzzle_accuracy(g), b.puzzle_accuracy(g)
                shared = sorted(set(xa) & set(xb))
                if not shared:
                    records.warnings.append(
                        f"noise floor: {g} at {entry['boundary']}: the two validations share no "
                        "test puzzle (the data set changed between the stages?); not measured"
                    )
                    continue
                d = np.array([xb[k] - xa[k] for k in shared])
                idx = rng().integers(0, len(d), size=(BOOTSTRAP_RESAMPLES, len(d)))
                lo, hi = percentile(d[idx].mean(axis=1))
                entry |= {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi)}
                entry |= {"n": len(shared), "method": "paired bootstrap"}
            elif counts.get(g):
                lo, hi = newcombe(pb, counts[g], pa, counts[g])
                entry |= {"diff": pb - pa, "lo": lo, "hi": hi, "n": counts[g]}
                entry |= {"method": "Newcombe (independent)"}
            else:
                continue
            entry["flag"] = bool(excludes_zero((entry["lo"], entry["hi"])))
            out.append(entry)
    return out


def estimate(
    run: Run,
    results: list[StageResult],
    R: np.ndarray,
    sources: list[tuple[StageResult, LoggedValidation] | None],
    cur: Curriculum,
    stages_used: int,
    warnings: list[str],
) -> Uncertainty:
    """Intervals for every cell and metric of the run, and its noise floor."""
    records = Records(warnings)
    cells, by_group = _cells(run, sources, R, records)
    lo, hi = np.full(R.shape, np.nan), np.full(R.shape, np.nan)
    for (i, j), _ in np.ndenumerate(R):
        if cells[i][j] is not None:
            lo[i, j], hi[i, j] = cells[i][j].interval()
    n = [[c.n if c else None for c in row] for row in cells]
    method = [[c.method if c else None for c in row] for row in cells]
    out = Uncertainty(lo, hi, n, method, records=by_group)
    if stages_used:
        seed = zlib.crc32(str(run.path).encode())  # independent parametric draws per run
        matrices = replicate_matrices(cells[: stages_used + 1], parametric_seed=seed)
        out.replicates = metric_replicates(matrices, lambda M: compute_metrics(M, cur))
        out.metrics = {k: interval(v) for k, v in out.replicates.items()}
    out.noise_floor = _noise_floor(run, results, records, puzzles_per_group(run))
    for entry in out.noise_floor:
        if entry["flag"]:
            warnings.append(
                f"noise floor: {entry['group']} at {entry['boundary']} moved "
                f"{entry['diff']:+.3f} [{entry['lo']:+.3f}, {entry['hi']:+.3f}] between two "
                "validations of the same weights: more than sampling explains"
            )
    return out
