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
    probes: list[probe_mod.CheckpointProbe] | None = None
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
            [[p.soft_accuracy.get(g, np.nan) for g in groups] for p in self.probes], dtype=float
        )

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
            "dormant_final": last.dormant_overall.get(SUMMARY_TAU),
            "srank_final": float(last.srank),
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
            "probes": None if self.probes is None else [p.as_dict() for p in self.probes],
            "notes": self.notes,
        }


def measure(
    run: Run, results: list[StageResult], *, probe: bool = True, probe_puzzles: int | None = None
) -> Plasticity:
    """Every diagnostic the run's files allow; what they do not allow becomes a note."""
    rows = ["base"] + [r.stage.name for r in results]
    checkpoints: list[Path | None] = [run.base_checkpoint] + [r.stage.final_model for r in results]
    out = Plasticity(rows)
    for path in checkpoints:
        if path is None:
            out.layer_module.append(None)
            continue
        try:
            out.layer_module.append(checkpoint_spectra(path).by_layer_module())
        except CheckpointError as exc:
            out.notes.append(f"spectra of {path} skipped ({exc})")
            out.layer_module.append(None)
    stages = [r.stage for r in results]
    for a, b in pairwise(stages):
        ends = (a.initial_model, a.final_model, b.initial_model, b.final_model)
        if any(p is None for p in ends):
            out.geometry.append(None)
            continue
        try:
            out.geometry.append(update_geometry(*ends))  # type: ignore[arg-type]
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
) -> list[probe_mod.CheckpointProbe] | None:
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
    return probe_mod.probe_checkpoints(
        checkpoints,  # type: ignore[arg-type]
        starts,
        data,
        run.groups,
        k or probe_mod.PROBE_PUZZLES,
    )


def kl_forgetting_points(
    plast: Plasticity, R: np.ndarray, stage_cols: list[int], groups: list[str]
) -> list[tuple[str, str, float, float]]:
    """(stage, earlier group, KL the stage moved on its own group, change of the earlier group's
    accuracy in that stage): forgetting against the KL moved on the new task."""
    points = []
    if plast.probes is None:
        return points
    for k in range(1, len(plast.probes)):
        own = groups[stage_cols[k - 1]]
        kl = plast.probes[k].kl_moved.get(own)
        if kl is None:
            continue
        seen = {stage_cols[i] for i in range(k - 1)}
        for j in sorted(seen - {stage_cols[k - 1]}):
            change = float(R[k, j] - R[k - 1, j])
            if math.isfinite(change):
                points.append((plast.rows[k], groups[j], kl, change))
    return points
