"""``cl-eval compare``: conditions made of runs (one per seed), aggregated and set against each
other, every number with its 95 % interval.

Within a condition, each metric's seeds give a mean and a t-interval (seed-to-seed variation
includes each run's own sampling noise). Between two conditions with at least two runs each, the
difference of means gets Welch's interval. With one run per condition, the difference comes from
the runs' bootstrap replicates: paired puzzle by puzzle when both runs kept per-sample records of
the same test puzzles (the resamples line up), independent otherwise.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cl_eval.analysis import Analysis
from cl_eval.matrix import DEFINITIONS
from cl_eval.plasticity import DEFINITIONS as PLASTICITY_DEFINITIONS
from cl_eval.report import yes_no
from cl_eval.stats import T975, Z95, Estimate, MetricKey, flatten, interval, t_interval

HEADLINE = (
    "final_accuracy",
    "learning_accuracy",
    "plasticity_gain",
    "bwt",
    "fwt",
    "forgetting_max",
)
"""Metrics shown first in the table and the plot (all of ``DEFINITIONS`` are in the JSON)."""


class CellKey(NamedTuple):
    """One cell of the accuracy matrix: its row (``base`` or a stage) and its group. JSON spells
    it ``R[row][group]``."""

    row: str
    group: str

    def __str__(self) -> str:
        return f"R[{self.row}][{self.group}]"


Values = dict[MetricKey | CellKey, float | None]
"""One run's scalar results: its metrics and its accuracy cells."""


def as_json(e: Estimate) -> dict:
    """compare.json's form of an estimate (over runs: its value is their mean)."""
    return {"mean": e.value, "lo": e.lo, "hi": e.hi, "n": e.n, "method": e.method}


@dataclass
class Condition:
    """A condition's runs (their analyses, or only their values) and its aggregates."""

    label: str
    analyses: list[Analysis]
    values: list[Values]
    metrics: dict[MetricKey, Estimate] = field(default_factory=dict)
    cells: dict[CellKey, Estimate] = field(default_factory=dict)


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def run_values(a: Analysis) -> Values:
    """A run's scalar results: every metric (with the plasticity summary when its checkpoints
    were read), and every accuracy cell."""
    out: Values = dict(flatten(a.metrics or {}))
    if a.plasticity is not None:
        summary = a.plasticity.summary(a.curriculum, a.stages_used)
        out.update({MetricKey(k): v for k, v in summary.items()})
    for i, row in enumerate(a.row_names):
        for j, g in enumerate(a.run.groups):
            out[CellKey(row, g)] = _finite(float(a.R[i, j]))
    return out


def seed_estimate(values: list[float | None]) -> Estimate:
    mean, lo, hi = t_interval(values)
    n = sum(v is not None and math.isfinite(v) for v in values)
    return Estimate(_finite(mean), _finite(lo), _finite(hi), n, "t over runs")


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """b − a with Welch's 95 % interval (unequal variances; df by Welch-Satterthwaite)."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    d = float(np.mean(b) - np.mean(a))
    se = math.sqrt(va + vb)
    if se == 0:
        return d, d, d
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    q = T975[max(0, math.floor(df) - 1)] if math.floor(df) <= len(T975) else Z95
    return d, d - q * se, d + q * se


def _paired(ref: Analysis, other: Analysis) -> bool:
    u, v = ref.uncertainty, other.uncertainty
    return bool(u.puzzles) and u.puzzles == v.puzzles and ref.run.groups == other.run.groups


def difference(ref: Condition, other: Condition, key: MetricKey) -> Estimate:
    """``other − ref`` for one metric (or cell), by the method the runs allow."""
    a = [v for x in ref.values if (v := x.get(key)) is not None]
    b = [v for x in other.values if (v := x.get(key)) is not None]
    if len(a) >= 2 and len(b) >= 2:
        d, lo, hi = welch(a, b)
        return Estimate(d, lo, hi, len(a) + len(b), "Welch over runs")
    if len(ref.analyses) == len(other.analyses) == 1 and a and b:
        ra = ref.analyses[0].uncertainty.replicates.get(key)
        rb = other.analyses[0].uncertainty.replicates.get(key)
        if ra is not None and rb is not None:
            paired = _paired(ref.analyses[0], other.analyses[0])
            lo, hi = interval(rb - ra)
            method = "bootstrap, paired by puzzle" if paired else "bootstrap, independent"
            return Estimate(b[0] - a[0], lo, hi, 2, method)
    mean = (float(np.mean(b)) - float(np.mean(a))) if a and b else None
    return Estimate(mean, None, None, len(a) + len(b), "too few runs for an interval")


def aggregate(
    label: str, analyses: list[Analysis], values: list[Values] | None = None
) -> Condition:
    """A condition's mean and interval of every metric and cell over its runs."""
    values = values if values is not None else [run_values(a) for a in analyses]
    cond = Condition(label, analyses, values)
    keys = list(dict.fromkeys(k for v in values for k in v))
    for key in keys:
        est = seed_estimate([v.get(key) for v in values])
        if isinstance(key, CellKey):  # an accuracy: a t-interval over few seeds can leave [0, 1]
            cond.cells[key] = replace(est, lo=_clip01(est.lo), hi=_clip01(est.hi))
        else:
            cond.metrics[key] = est
    return cond


def _clip01(x: float | None) -> float | None:
    return None if x is None else min(1.0, max(0.0, x))


@dataclass
class Comparison:
    conditions: list[Condition]
    differences: dict[str, dict[MetricKey, Estimate]]
    """``"<label> − <reference>"`` -> metric -> estimate (the first condition is the reference)."""

    def as_dict(self) -> dict:
        return {
            "conditions": {
                c.label: {
                    "runs": [str(a.run.path) for a in c.analyses] or len(c.values),
                    "metrics": {str(k): as_json(e) for k, e in c.metrics.items()},
                    "cells": {str(k): as_json(e) for k, e in c.cells.items()},
                }
                for c in self.conditions
            },
            "differences": {
                name: {str(k): as_json(e) for k, e in diffs.items()}
                for name, diffs in self.differences.items()
            },
            "definitions": {**DEFINITIONS, **PLASTICITY_DEFINITIONS},
        }


def compare(conditions: dict[str, list[Analysis]]) -> Comparison:
    """Aggregate each condition; set every later condition against the first."""
    return contrast([aggregate(label, runs) for label, runs in conditions.items()])


def contrast(conds: list[Condition]) -> Comparison:
    """Every later condition against the first, metric by metric."""
    ref = conds[0]
    diffs = {}
    for other in conds[1:]:
        keys = [k for k in ref.metrics if k in other.metrics]
        diffs[f"{other.label} − {ref.label}"] = {k: difference(ref, other, k) for k in keys}
    return Comparison(conds, diffs)


def expand(patterns: list[str]) -> list[Path]:
    """Run directories named by paths or glob patterns, in a stable order."""
    out: list[Path] = []
    for pattern in patterns:
        matched = sorted(Path(p) for p in glob.glob(pattern)) or [Path(pattern)]
        out += [p for p in matched if p not in out]
    return out


def _fmt(e: Estimate, signed: bool = False) -> str:
    if e.value is None:
        return "–"
    spec = "+.3f" if signed else ".3f"
    if e.lo is None or e.hi is None:
        return f"{e.value:{spec}}"
    return f"{e.value:{spec}} [{e.lo:{spec}}, {e.hi:{spec}}]"


def metric_keys(c: Comparison) -> list[MetricKey]:
    """Headline metrics first, then the rest of the definitions, the plasticity summary, then
    per-stage/group entries."""
    present = list(c.conditions[0].metrics)
    named = [MetricKey(k) for k in [*HEADLINE, *DEFINITIONS, *PLASTICITY_DEFINITIONS]]
    return [k for k in dict.fromkeys(named) if k in present] + [
        k for k in present if k.index is not None
    ]


def tables(c: Comparison) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the comparison: metrics per condition, differences, matrices."""
    out = []
    labels = [f"{x.label} ({len(x.analyses)} runs)" for x in c.conditions]
    keys = metric_keys(c)
    out.append(
        (
            "Metrics: mean over runs [95 % t-interval]",
            ["metric", *labels],
            [[str(k), *(_fmt(x.metrics.get(k, Estimate(None))) for x in c.conditions)]
             for k in keys],
        )
    )  # fmt: skip
    for name, diffs in c.differences.items():
        out.append(
            (
                f"Difference {name} [95 % interval]",
                ["metric", "difference", "excludes 0", "method"],
                [
                    [str(k), _fmt(e, signed=True), yes_no(e.excludes_zero), e.method]
                    for k in keys
                    if (e := diffs.get(k)) is not None
                ],
            )
        )
    for x in c.conditions:
        a = x.analyses[0]
        rows = []
        for row in a.row_names:
            cells = [x.cells.get(CellKey(row, g)) for g in a.run.groups]
            rows.append([row, *(_fmt(e) if e else "–" for e in cells)])
        out.append(
            (
                f"Accuracy matrix of {x.label}: mean over runs [95 %]",
                ["after stage", *a.run.groups],
                rows,
            )
        )
    return out


def write_outputs(c: Comparison, out: Path) -> list[Path]:
    """compare.md, compare.json and plots/compare_metrics.png under ``out``."""
    from cl_eval import plots
    from cl_eval.report import Doc, write_json
    from cl_rundir.atomic import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    written = []
    data = out / "compare.json"
    write_json(data, c.as_dict())
    written.append(data)
    keys = [MetricKey(k) for k in HEADLINE if MetricKey(k) in c.conditions[0].metrics]
    figure = plots.compare_metrics(
        [str(k) for k in keys],
        {x.label: [x.metrics[k] for k in keys] for x in c.conditions},
        out / "plots" / "compare_metrics.png",
        "Metrics per condition (bars: mean over runs; whiskers: 95 % t-interval)",
    )
    written.append(figure)
    doc = Doc()
    doc.h(1, "Comparison of conditions")
    doc.ul([f"**{x.label}**: " + ", ".join(f"`{a.run.path}`" for a in x.analyses)
            for x in c.conditions])  # fmt: skip
    doc.p(
        "Within a condition: mean over runs and a t-interval. Differences: Welch's interval "
        "with at least two runs per condition, else the runs' bootstrap replicates (paired by "
        "puzzle when both kept records of the same test puzzles). A difference is supported "
        "only where its interval excludes 0."
    )
    for title, header, rows in tables(c):
        doc.h(2, title)
        doc.table(header, rows)
    doc.img(str(figure.relative_to(out)), "metrics per condition")
    md = out / "compare.md"
    write_atomic(md, doc.markdown())
    written.append(md)
    return written
