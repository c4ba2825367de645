"""``cl-eval compare``: conditions made of runs (one per seed), aggregated and set against each
other, every number with its 95 % interval.

Within a condition, each metric's seeds give a mean and a t-interval (seed-to-seed variation
includes each run's own sampling noise). Between two conditions that ran the same seeds (run.json's
``config.seed``: same warm start, same data order), the difference is taken seed by seed and gets
the t-interval of those paired differences: two identical conditions differ by exactly 0. Between
conditions with at least two runs each and no shared seeds, the difference of means gets Welch's
interval. With one run per condition, the difference comes from the runs' bootstrap replicates:
paired puzzle by puzzle when both runs kept per-sample records of the same test puzzles (the
resamples line up), independent otherwise.

A joint run (run.json's ``curriculum`` = ``joint``: every stage a mixture of all groups) is the
multi-task upper bound; its condition is set against the reference on the accuracies at the end
only, as the transfer and forgetting metrics of a curriculum do not apply to it.

Why not ``rliable`` (Agarwal et al. 2021): its stratified bootstrap and probability of improvement
resample each condition's runs independently, which throws away the seed pairing these arms have,
and its interquartile mean trims a quarter of the runs at each end, a robustness meant for many
runs and tasks, not 3-5 seeds of 4 groups. It also does not import in this workspace: rliable
1.2.0 pins ``arch<8``, and arch 7.2 fails against the locked pandas 3.
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
from cl_eval.plasticity import (
    KL_DEFINITION,
    KL_PAIRINGS,
    KLPoint,
    kl_correlation,
    kl_forgetting,
)
from cl_eval.report import yes_no
from cl_eval.stats import T975, Z95, Estimate, MetricKey, flatten, interval, t_interval
from cl_rundir.record import CURRICULA

FINAL = "final"
"""The row name of the accuracies after the last measured stage, whatever that stage is called."""

JOINT_KEYS = ("final_accuracy",)
"""The metrics a joint run is set against a curriculum on (besides the final accuracy cells)."""

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
    """A condition's runs (their analyses, or only their values, with their seeds) and its
    aggregates."""

    label: str
    analyses: list[Analysis]
    values: list[Values]
    seeds: list[int | None] = field(default_factory=list)
    curriculum: str = CURRICULA[0]
    metrics: dict[MetricKey, Estimate] = field(default_factory=dict)
    cells: dict[CellKey, Estimate] = field(default_factory=dict)

    @property
    def kl_points(self) -> dict[str, list[KLPoint]]:
        """Pairing name (``KL_PAIRINGS``) -> forgetting against the KL each stage moved, pooled
        over the runs whose checkpoints were probed (``--plasticity``); empty without any."""
        pooled: dict[str, list[KLPoint]] = {}
        for i, a in enumerate(self.analyses):
            if a.plasticity is None:
                continue
            run = kl_forgetting(
                a.plasticity, a.R[: a.stages_used + 1], list(a.curriculum.stage_cols),
                a.run.groups, run=i,
            )  # fmt: skip
            for name, points in run.items():
                pooled.setdefault(name, []).extend(points)
        return pooled if any(pooled.values()) else {}

    @property
    def joint(self) -> bool:
        return self.curriculum == "joint"

    @property
    def title(self) -> str:
        return f"{self.label} (upper bound)" if self.joint else self.label


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def complete(a: Analysis) -> bool:
    """Whether the run measured every stage of its curriculum (none failed or is to come)."""
    return a.stages_used == len(a.run.stages)


def run_values(a: Analysis) -> Values:
    """A run's scalar results: every metric (with the plasticity summary when its checkpoints
    were read), and every accuracy cell. A run that stopped early has the per-stage metrics and
    cells of the stages it measured, and none of the whole curriculum's (its "final accuracy" is
    an earlier stage's, not comparable with a finished run's)."""
    out: Values = dict(flatten(a.metrics or {}))
    if a.plasticity is not None:
        summary = a.plasticity.summary(a.curriculum, a.stages_used)
        out.update({MetricKey(k): v for k, v in summary.items()})
    whole = complete(a)
    if not whole:
        out = {k: v if k.index is not None else None for k, v in out.items()}
    for i, row in enumerate(a.row_names):
        for j, g in enumerate(a.run.groups):
            out[CellKey(row, g)] = _finite(float(a.R[i, j]))
    for j, g in enumerate(a.run.groups):
        out[CellKey(FINAL, g)] = _finite(float(a.R[a.stages_used, j])) if whole else None
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


def seed_pairs(ref: Condition, other: Condition, key: MetricKey | CellKey) -> list[tuple]:
    """(ref's value, other's value) of ``key`` for every seed both conditions ran; none unless
    every run of both names its seed and no seed repeats within a condition."""
    seeds = (ref.seeds, other.seeds)
    if any(None in s or len(set(s)) != len(s) or not s for s in seeds):
        return []
    a = {s: v.get(key) for s, v in zip(ref.seeds, ref.values, strict=True)}
    b = {s: v.get(key) for s, v in zip(other.seeds, other.values, strict=True)}
    return [(a[s], b[s]) for s in a if s in b and a[s] is not None and b[s] is not None]


def difference(ref: Condition, other: Condition, key: MetricKey | CellKey) -> Estimate:
    """``other − ref`` for one metric (or cell), by the method the runs allow."""
    a = [v for x in ref.values if (v := x.get(key)) is not None]
    b = [v for x in other.values if (v := x.get(key)) is not None]
    pairs = seed_pairs(ref, other, key)
    if len(pairs) >= 2:
        d, lo, hi = t_interval([y - x for x, y in pairs])
        return Estimate(d, lo, hi, len(pairs), "paired by seed")
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
    label: str,
    analyses: list[Analysis],
    values: list[Values] | None = None,
    seeds: list[int | None] | None = None,
) -> Condition:
    """A condition's mean and interval of every metric and cell over its runs; its seeds and
    curriculum from the runs' records unless given."""
    values = values if values is not None else [run_values(a) for a in analyses]
    records = [a.run.record for a in analyses]
    if seeds is None:
        seeds = [r.seed if r else None for r in records]
    curricula = {r.curriculum if r else CURRICULA[0] for r in records}
    if len(curricula) > 1:
        raise ValueError(f"{label}: runs of different curricula ({', '.join(sorted(curricula))})")
    cond = Condition(label, analyses, values, seeds, next(iter(curricula), CURRICULA[0]))
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
    differences: dict[str, dict[MetricKey | CellKey, Estimate]]
    """``"<label> − <reference>"`` -> metric -> estimate (the first condition is the reference)."""

    def as_dict(self) -> dict:
        return {
            "conditions": {
                c.label: {
                    "runs": [str(a.run.path) for a in c.analyses] or len(c.values),
                    "seeds": c.seeds,
                    "curriculum": c.curriculum,
                    "metrics": {str(k): as_json(e) for k, e in c.metrics.items()},
                    "cells": {str(k): as_json(e) for k, e in c.cells.items()},
                    "kl_forgetting_correlation": {
                        name: as_json(kl_correlation(points))
                        for name, points in c.kl_points.items()
                    }
                    or None,
                }
                for c in self.conditions
            },
            "differences": {
                name: {str(k): as_json(e) for k, e in diffs.items()}
                for name, diffs in self.differences.items()
            },
            "definitions": {
                **DEFINITIONS,
                **PLASTICITY_DEFINITIONS,
                "kl_forgetting_correlation": KL_DEFINITION,
            },
        }


def _curriculum(a: Analysis) -> str:
    return f"{len(a.run.stages)} stages over {', '.join(a.run.groups) or 'no groups'}"


def _preset(a: Analysis) -> str | None:
    """The run's preset (``--size``) as its run.json records it; None for a bare log directory
    (whose name is no preset)."""
    return a.run.record.size if a.run.record else None


def _kind(a: Analysis) -> str:
    record = a.run.record
    return record.curriculum if record else CURRICULA[0]


def comparability(conditions: dict[str, list[Analysis]]) -> tuple[str | None, list[str]]:
    """Whether the runs can be averaged and contrasted at all: (why not, in one line, or None;
    warnings). Every run must have the same curriculum (groups and stages in order), and the runs
    of one condition the same preset and kind (joint or sequential); conditions of different
    presets are contrasted with a warning (a model-size study means to), runs that validated on
    other test puzzles as independent samples, and a run that stopped early on the stages it
    measured."""
    runs = [a for analyses in conditions.values() for a in analyses]
    if not runs:
        return None, []
    first = runs[0]
    shape = (first.run.groups, [s.name for s in first.run.stages])
    for a in runs[1:]:
        if (a.run.groups, [s.name for s in a.run.stages]) != shape:
            return (
                f"{a.run.path} ran {_curriculum(a)} but {first.run.path} ran {_curriculum(first)}"
                "; compare runs of one curriculum (the same --groups and --rounds)"
            ), []
    for label, analyses in conditions.items():
        one = analyses[0]
        for a in analyses[1:]:
            if None not in (_preset(a), _preset(one)) and _preset(a) != _preset(one):
                return (
                    f"{label}: {a.run.path} ran preset {_preset(a)} but {one.run.path} ran "
                    f"preset {_preset(one)}; a condition's runs (its seeds) share one preset: "
                    "give each preset its own --label"
                ), []
            if _kind(a) != _kind(one):
                return (
                    f"{label}: {a.run.path} is a {_kind(a)} run but {one.run.path} a "
                    f"{_kind(one)} one; give the joint runs (the upper bound) their own --label"
                ), []
    warnings = []
    presets = {label: p for label, analyses in conditions.items() if (p := _preset(analyses[0]))}
    if len(set(presets.values())) > 1:
        warnings.append(
            "the conditions ran different presets ("
            + ", ".join(f"{label}: {p}" for label, p in presets.items())
            + "): their differences include the model's"
        )
    for a in runs[1:]:
        theirs, ours = a.uncertainty.puzzles, first.uncertainty.puzzles
        differ = [g for g in theirs if ours.get(g) and theirs[g] and theirs[g] != ours[g]]
        if differ:
            warnings.append(
                f"{a.run.path} validated on other test puzzles than {first.run.path} "
                f"({', '.join(differ)}): compared as independent samples, not paired"
            )
    for a in runs:
        if not complete(a):
            stopped = [s.name for s in a.run.stages[a.stages_used :]]
            warnings.append(
                f"{a.run.path} measured {a.stages_used} of its {len(a.run.stages)} stages (not "
                f"{', '.join(stopped)}): `–` for its whole-curriculum metrics and final accuracies"
            )
    return None, warnings


def compare(conditions: dict[str, list[Analysis]]) -> Comparison:
    """Aggregate each condition; set every later condition against the first."""
    return contrast([aggregate(label, runs) for label, runs in conditions.items()])


def contrast(conds: list[Condition]) -> Comparison:
    """Every later condition against the first, metric by metric, and on the accuracies at the
    end; a joint run (the upper bound) on those accuracies only."""
    ref = conds[0]
    diffs: dict[str, dict[MetricKey | CellKey, Estimate]] = {}
    for other in conds[1:]:
        keys: list[MetricKey | CellKey] = [k for k in ref.metrics if k in other.metrics]
        if ref.joint or other.joint:
            keys = [k for k in keys if k.name in JOINT_KEYS and k.index is None]
        keys += [k for k in ref.cells if k.row == FINAL and k in other.cells]
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
    present = list(dict.fromkeys(k for x in c.conditions for k in x.metrics))
    named = [MetricKey(k) for k in [*HEADLINE, *DEFINITIONS, *PLASTICITY_DEFINITIONS]]
    return [k for k in dict.fromkeys(named) if k in present] + [
        k for k in present if k.index is not None
    ]


def tables(c: Comparison) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the comparison: metrics per condition, differences, matrices."""
    out = []
    labels = [f"{x.title} ({len(x.values)} runs)" for x in c.conditions]
    keys = metric_keys(c)
    finals = [k for k in c.conditions[0].cells if k.row == FINAL]
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
                    for k in [*keys, *finals]
                    if (e := diffs.get(k)) is not None
                ],
            )
        )
    pooled = [(x, pts) for x in c.conditions if (pts := x.kl_points)]
    if pooled:
        out.append(
            (
                "Forgetting vs KL on the new task, pooled over runs (Pearson r [95 %, bootstrap "
                "over stages])",
                ["condition", *(f"{p.title}: {h}" for p in KL_PAIRINGS for h in ("r", "points"))],
                [[x.title, *_r_cells(pts)] for x, pts in pooled],
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
                f"Accuracy matrix of {x.title}: mean over runs [95 %]",
                ["after stage", *a.run.groups],
                rows,
            )
        )
    return out


def _r_cells(pooled: dict[str, list[KLPoint]]) -> list[str]:
    """Each pairing's r [95 %] and number of points, in ``KL_PAIRINGS``' order."""
    cells = []
    for pairing in KL_PAIRINGS:
        r = kl_correlation(pooled[pairing.name])
        cells += [_fmt(r, signed=True), str(r.n or 0)]
    return cells


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
    keys = [MetricKey(k) for k in HEADLINE if any(MetricKey(k) in x.metrics for x in c.conditions)]
    figure = plots.compare_metrics(
        [str(k) for k in keys],
        {x.title: [x.metrics.get(k, Estimate(None)) for k in keys] for x in c.conditions},
        out / "plots" / "compare_metrics.png",
        "Metrics per condition (bars: mean over runs; whiskers: 95 % t-interval)",
    )
    written.append(figure)
    scatters = []
    for i, x in enumerate(c.conditions):
        if pooled := x.kl_points:
            path = out / "plots" / f"kl_forgetting_{i + 1}.png"
            runs = f"{len(x.analyses)} run{'s' if len(x.analyses) != 1 else ''}"
            title = f"{x.title}: forgetting vs KL on the new task ({runs} pooled)"
            pairings = {name: (pts, kl_correlation(pts)) for name, pts in pooled.items()}
            scatters.append(plots.kl_forgetting(pairings, path, title))
    written.extend(scatters)
    doc = Doc()
    doc.h(1, "Comparison of conditions")
    doc.ul([f"**{x.title}**: " + ", ".join(f"`{a.run.path}`" for a in x.analyses)
            for x in c.conditions])  # fmt: skip
    doc.p(
        "Within a condition: mean over runs and a t-interval. Differences: paired by seed "
        "(t-interval of the per-seed differences) when the conditions ran the same seeds; "
        "else Welch's interval with at least two runs per condition; else the runs' bootstrap "
        "replicates (paired by puzzle when both kept records of the same test puzzles). A joint "
        "run (all groups mixed) is the upper bound, compared on the accuracies at the end "
        "(R[final][group]) only. A difference is supported only where its interval excludes 0."
    )
    for title, header, rows in tables(c):
        doc.h(2, title)
        doc.table(header, rows)
    doc.img(str(figure.relative_to(out)), "metrics per condition")
    if scatters:
        doc.p(KL_DEFINITION)
    for scatter in scatters:
        doc.img(str(scatter.relative_to(out)), "forgetting vs KL")
    md = out / "compare.md"
    write_atomic(md, doc.markdown())
    written.append(md)
    return written
