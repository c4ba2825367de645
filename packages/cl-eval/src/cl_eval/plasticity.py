"""Plasticity of a run, stage by stage, from the checkpoints it keeps: what a stage could still
learn, beside what it forgot (the accuracy matrix).

Weight-only (``cl_eval.geometry``, always): norms and effective ranks of every matrix after each
stage, and how consecutive stages' updates line up. Activation-based (``cl_eval.probe``, when
torch and transformers are installed and the run's data set is still there): dormant MLP units,
feature rank, the soft-accuracy matrix and the KL each stage moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cl_eval import probe as probe_mod
from cl_eval.geometry import UpdateGeometry, checkpoint_spectra, update_geometry
from cl_eval.matrix import Curriculum, compute_metrics
from cl_eval.progress import phase
from cl_eval.stats import BOOTSTRAP_RESAMPLES, Estimate, interval, rng
from cl_eval.weights import CheckpointError, LayerModule
from countdown_data.dataset import MANIFEST

if TYPE_CHECKING:
    from cl_eval.analysis import StageResult
    from cl_eval.run import Run

MLP_MODULES = ("gate", "up", "down")

SUMMARY_TAU = 0.025
"""The τ of the dormant ratio a run is summarised by (ReDo's default threshold)."""

SOFT_METRICS = ("final_accuracy", "learning_accuracy", "plasticity_gain", "bwt")
"""Accuracy-matrix metrics also computed on the soft-accuracy matrix (prefixed ``soft_``)."""

DEFINITIONS: dict[str, str] = {
    **{
        f"soft_{k}": f"{k} computed on the soft-accuracy matrix (mean per-token log-likelihood of "
        "the reference solutions) instead of R: deterministic, no sampling noise."
        for k in SOFT_METRICS
    },
    "dormant_final": f"Fraction of τ-dormant MLP units (τ = {SUMMARY_TAU}) after the last stage.",
    "srank_final": "Feature rank (srank) of the last hidden states after the last stage.",
}


@dataclass
class Plasticity:
    """Per row of the accuracy matrix (0 = base, k = after stage k) and per stage boundary."""

    rows: list[str]
    layer_module: list[dict[LayerModule, dict[str, float]] | None] = field(default_factory=list)
    geometry: list[UpdateGeometry | None] = field(default_factory=list)
    """Entry k-1: stage k's update against stage k+1's."""
    probes: list[probe_mod.CheckpointProbe | None] | None = None
    notes: list[str] = field(default_factory=list)

    def mean_rank(self, row: int, modules: tuple[str, ...] = MLP_MODULES) -> float | None:
        lm = self.layer_module[row] if row < len(self.layer_module) else None
        vals = [v["effective_rank"] for k, v in (lm or {}).items() if k.module in modules]
        return float(np.mean(vals)) if vals else None

    def total_norm(self, row: int) -> float | None:
        lm = self.layer_module[row] if row < len(self.layer_module) else None
        return math.sqrt(sum(v["fro"] ** 2 for v in lm.values())) if lm else None

    def rank_matrix(self, modules: tuple[str, ...] = MLP_MODULES) -> tuple[list[int], np.ndarray]:
        """Layers × rows of the mean effective rank of ``modules`` (NaN where unknown)."""
        layers = sorted(
            {k.layer for lm in self.layer_module if lm for k in lm if k.layer is not None}
        )
        M = np.full((len(layers), len(self.rows)), np.nan)
        for r, lm in enumerate(self.layer_module):
            for i, layer in enumerate(layers):
                vals = [
                    v["effective_rank"]
                    for k, v in (lm or {}).items()
                    if k.layer == layer and k.module in modules
                ]
                if vals:
                    M[i, r] = float(np.mean(vals))
        return layers, M

    def soft_matrix(self, groups: list[str]) -> np.ndarray | None:
        """Rows × groups of soft accuracy, shaped like R; None without probes."""
        if not self.probes:
            return None
        return np.array(
            [[p.soft_accuracy.get(g, np.nan) if p else np.nan for g in groups]
             for p in self.probes],
            dtype=float,
        )  # fmt: skip

    def summary(self, cur: Curriculum, t_used: int) -> dict[str, float | None]:
        """A run's plasticity in the scalars of ``DEFINITIONS`` (what ``cl-eval compare`` sets
        against other conditions); None where the probes did not run."""
        S = self.soft_matrix(list(cur.groups))
        if S is None or t_used < 1:
            return dict.fromkeys(DEFINITIONS)
        metrics = compute_metrics(S[: t_used + 1], cur)
        last = self.probes[t_used]  # type: ignore[index]
        return {
            **{f"soft_{k}": metrics[k] for k in SOFT_METRICS},  # type: ignore[misc]
            "dormant_final": last.dormant_overall.get(SUMMARY_TAU) if last else None,
            "srank_final": float(last.srank) if last else None,
        }

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "layer_module": [
                None if lm is None else {str(k): v for k, v in lm.items()}
                for lm in self.layer_module
            ],
            "geometry": [
                None
                if g is None
                else {"cosine": g.cosine, "top1pct_overlap": g.overlap, "selected": g.selected}
                for g in self.geometry
            ],
            "probes": None
            if self.probes is None
            else [p.as_dict() if p else None for p in self.probes],
            "notes": self.notes,
        }


def measure(
    run: Run, results: list[StageResult], *, probe: bool = True, probe_puzzles: int | None = None
) -> Plasticity:
    """Every diagnostic the run's files allow; what they do not allow becomes a note."""
    rows = ["base"] + [r.stage.name for r in results]
    checkpoints: list[Path | None] = [run.base_checkpoint] + [r.stage.final_model for r in results]
    out = Plasticity(rows)
    with phase("spectra", len(checkpoints)) as advance:
        for path in checkpoints:
            if path is None:
                out.layer_module.append(None)
            else:
                try:
                    spectra = checkpoint_spectra(path, progress=advance)
                    out.layer_module.append(spectra.by_layer_module())
                except CheckpointError as exc:
                    out.notes.append(f"spectra of {path} skipped ({exc})")
                    out.layer_module.append(None)
    stages = [r.stage for r in results]
    with phase("update geometry", max(len(stages) - 1, 0)) as advance:
        for a, b in pairwise(stages):
            ends = (a.initial_model, a.final_model, b.initial_model, b.final_model)
            if any(p is None for p in ends):
                out.geometry.append(None)
                continue
            try:
                out.geometry.append(update_geometry(*ends, progress=advance))  # type: ignore[misc]
            except CheckpointError as exc:
                out.notes.append(f"update geometry {a.name} → {b.name} skipped ({exc})")
                out.geometry.append(None)
    if probe:
        out.probes = _probes(run, results, checkpoints, probe_puzzles, out.notes)
    return out


def _probes(
    run: Run,
    results: list[StageResult],
    checkpoints: list[Path | None],
    k: int | None,
    notes: list[str],
) -> list[probe_mod.CheckpointProbe | None] | None:
    if not probe_mod.available():
        notes.append("activation diagnostics need torch and transformers: cl-eval[probe]")
        return None
    data = run.record.data_dir if run.record else None
    if data is None or not (data / MANIFEST).is_file():
        notes.append(f"activation diagnostics need the run's data set ({data or 'unknown'})")
        return None
    if any(c is None for c in checkpoints):
        notes.append("activation diagnostics need every stage's final checkpoint")
        return None
    starts = [None] + [r.stage.initial_model for r in results]
    with phase("activation probes", 1) as advance:
        return probe_mod.probe_checkpoints(
            checkpoints,  # type: ignore[arg-type]
            starts,
            data,
            run.groups,
            k or probe_mod.PROBE_PUZZLES,
            notes,
            progress=advance,
        )


@dataclass(frozen=True)
class KLPairing:
    """One way of setting the KL a stage moved against the forgetting it caused: the policy the
    KL is measured from, and the accuracy change it is paired with."""

    name: str
    """Its key in the consolidated JSON and compare.json."""
    title: str
    kl_label: str
    change_label: str
    definition: str


KL_PAIRINGS = (
    KLPairing(
        "base",
        "RL's Razor: KL from the base model",
        "KL(p_0 ‖ p_k) on stage k's own group, per token",
        "accuracy change from the base, R[k][j] − R[0][j],\nof every group j but stage k's own",
        "From the base (RL's Razor's pairing): x = KL(p_0 ‖ p_k), from the base model p_0 (the "
        "run's base_model, stage 1's initial model) to the policy after stage k; y = every other "
        "group's accuracy change from the base, R[k][j] - R[0][j] (its forgetting when negative; "
        "a stage's points are cumulative, so a run's stages are not independent).",
    ),
    KLPairing(
        "stage_start",
        "KL from the stage's start",
        "KL(p_start ‖ p_k) on stage k's own group, per token",
        "accuracy change in stage k, R[k][j] − R[k−1][j],\nof each group j trained before it",
        "From the stage's start: x = KL(p_start ‖ p_k), from the policy stage k started from "
        "(after a remedy, the transformed model) to the one after it; y = each earlier-trained "
        "group's accuracy change in that stage, R[k][j] - R[k-1][j].",
    ),
)
"""RL's Razor's pairing first: the report's and compare's scatter and tables follow this order."""

KL_DEFINITION = (
    "Forgetting vs KL on the new task (RL's Razor, Shenfeld et al. 2025: forgetting tracks the "
    "forward KL from the base policy to the fine-tuned one, on the new task's prompts). The KL "
    "is per token of the next-token distributions along teacher-forced reference solutions of "
    f"the first {probe_mod.PROBE_PUZZLES} test puzzles of the group stage k trains, averaged "
    "over those tokens, in two pairings. "
    + " ".join(p.definition for p in KL_PAIRINGS)
    + " Pearson's r of each, with a 95 % percentile interval from a bootstrap over stages."
)


@dataclass(frozen=True)
class KLPoint:
    """One other group's accuracy change beside the KL a stage moved on its own (new) group;
    ``run`` tells runs apart when points of several seeds are pooled."""

    stage: str
    group: str
    kl: float
    change: float
    run: int = 0


def kl_forgetting_points(
    plast: Plasticity,
    R: np.ndarray,
    stage_cols: list[int],
    groups: list[str],
    pairing: str = "base",
    run: int = 0,
) -> list[KLPoint]:
    """Every (stage, other group) of a run whose KL and accuracy change were measured, in
    ``pairing`` (a name of ``KL_PAIRINGS``)."""
    if pairing not in {p.name for p in KL_PAIRINGS}:
        raise ValueError(f"unknown KL pairing {pairing!r}: one of {[p.name for p in KL_PAIRINGS]}")
    points: list[KLPoint] = []
    if plast.probes is None:
        return points
    for k in range(1, min(len(plast.probes), R.shape[0])):
        own, probe = stage_cols[k - 1], plast.probes[k]
        if probe is None:  # a checkpoint that did not load
            continue
        if pairing == "base":
            kl = probe.kl_base.get(groups[own])
            others, anchor = set(range(len(groups))), 0
        else:
            kl = probe.kl_forward.get(groups[own])
            others, anchor = {stage_cols[i] for i in range(k - 1)}, k - 1
        if kl is None:
            continue
        for j in sorted(others - {own}):
            change = float(R[k, j] - R[anchor, j])
            if math.isfinite(change):
                points.append(KLPoint(plast.rows[k], groups[j], kl, change, run))
    return points


def kl_forgetting(
    plast: Plasticity, R: np.ndarray, stage_cols: list[int], groups: list[str], run: int = 0
) -> dict[str, list[KLPoint]]:
    """Pairing name -> its points, for every pairing of ``KL_PAIRINGS``."""
    return {
        p.name: kl_forgetting_points(plast, R, stage_cols, groups, p.name, run) for p in KL_PAIRINGS
    }


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def kl_correlation(points: list[KLPoint], resamples: int = BOOTSTRAP_RESAMPLES) -> Estimate:
    """Pearson's r between the KL a stage moved and the accuracy changes of other groups, with a
    95 % percentile interval from a bootstrap over stages (a stage's points share its KL, so
    they are resampled together; stages of different runs are distinct clusters)."""
    x = np.array([p.kl for p in points])
    y = np.array([p.change for p in points])
    r = pearson(x, y)
    clusters = sorted({(p.run, p.stage) for p in points})
    if not math.isfinite(r) or len(clusters) < 3:
        return Estimate(None if not math.isfinite(r) else r, n=len(points), method="Pearson")
    members = [
        np.array([i for i, p in enumerate(points) if (p.run, p.stage) == c]) for c in clusters
    ]
    draws = rng().integers(0, len(clusters), size=(resamples, len(clusters)))
    samples = (np.concatenate([members[c] for c in d]) for d in draws)
    reps = np.array([pearson(x[idx], y[idx]) for idx in samples])
    lo, hi = interval(reps)
    return Estimate(r, lo, hi, len(points), "Pearson, bootstrap over stages")
