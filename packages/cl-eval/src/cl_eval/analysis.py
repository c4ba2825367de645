"""The analysis of a run directory that ``cl-eval report`` and ``cl-eval matrix`` share.

Load the run, parse every stage log, build the accuracy matrix and its metrics, and (optionally,
the slow part) diff the checkpoints; the writers in ``cl_eval.report`` only render the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cl_eval.logs import Entry, ParsedLog, parse_log
from cl_eval.matrix import Curriculum, compute_metrics, forgetting_matrix, per_round_metrics
from cl_eval.plasticity import Plasticity, measure
from cl_eval.run import Run, RunError, StageFiles, load_run
from cl_eval.stats import Estimate, MetricKey
from cl_eval.uncertainty import Uncertainty, estimate
from cl_eval.weights import CheckpointError, WeightDiff, diff_checkpoints
from cl_rundir.metric_lines import group_accuracy
from countdown_data.groups import data_source

TRAIN_KEYS: dict[str, tuple[str, ...]] = {
    "score": ("critic/score/mean",),
    "reward": ("critic/rewards/mean",),
    "pg_loss": ("actor/pg_loss",),
    "vf_loss": ("critic/vf_loss",),
    "grad_norm": ("actor/grad_norm",),
    "critic_grad_norm": ("critic/grad_norm",),
    "response_length": ("response_length/mean",),
    "clip_ratio": ("response_length/clip_ratio",),
    "entropy": ("actor/entropy",),
    "kl_loss": ("actor/kl_loss",),
    "ppo_kl": ("actor/ppo_kl",),
    "kl_penalty": ("actor/reward_kl_penalty",),
    "pg_clipfrac": ("actor/pg_clipfrac",),
    "step_time": ("timing_s/step", "perf/time_per_step"),
}
"""Short name -> veRL keys (first present wins). ppo_kl is the k1 estimate of KL(π_old‖π) per
update; kl_loss is the configured estimator (e.g. k3 low_var_kl) of KL(π‖π_ref)."""


@dataclass(frozen=True)
class LoggedValidation:
    """One validation in a stage log: its step and line, each group's accuracy and the log key
    it was read from."""

    step: int
    line: int
    accuracy: dict[str, float]
    keys: dict[str, str]


@dataclass(frozen=True)
class Series:
    """One training metric over a stage's steps (the log key it was read from), summarised."""

    key: str
    steps: list[int]
    values: list[float]
    first: float
    last: float
    mean: float | None
    min: float | None
    max: float | None


@dataclass
class StageResult:
    """What one stage's log and checkpoints say: its validations before and after training (and
    every one between), its training curves, and its weight change (the stage's own, and from
    the base model)."""

    stage: StageFiles
    log: ParsedLog | None
    before: LoggedValidation | None = None
    after: LoggedValidation | None = None
    history: list[LoggedValidation] = field(default_factory=list)
    train: dict[str, Series] = field(default_factory=dict)
    weights_stage: WeightDiff | None = None
    weights_cumulative: WeightDiff | None = None

    @property
    def train_steps(self) -> list[int]:
        return self.log.train_steps() if self.log else []


def _validation(entry: Entry, groups: list[str]) -> LoggedValidation:
    acc, keys = {}, {}
    for g in groups:
        got = group_accuracy(entry.metrics, data_source(g))
        if got is not None:
            acc[g], keys[g] = got
    return LoggedValidation(entry.step, entry.line, acc, keys)


def analyse_stage(stage: StageFiles, groups: list[str], warnings: list[str]) -> StageResult:
    """LoggedValidation before/after and per-step training series of one stage log."""
    if stage.log is None:
        return StageResult(stage, None)
    log = parse_log(stage.log)
    warnings.extend(f"stage {stage.name}: {w}" for w in log.warnings)
    res = StageResult(stage, log)
    vals = [_validation(e, groups) for e in log.validations()]
    vals = [v for v in vals if v.accuracy]
    res.history = vals
    train_steps = log.train_steps()
    if not log.entries:
        warnings.append(f"stage {stage.name}: log has no metric lines")
    if vals:
        res.before = vals[0]
        if vals[0].step != 0:
            warnings.append(
                f"stage {stage.name}: first validation is at step {vals[0].step}, not 0 "
                "(val_before_train off or resumed); used as the before-stage accuracy"
            )
        last_train = train_steps[-1] if train_steps else 0
        if len(vals) > 1 or (vals[-1].step > 0 and vals[-1].step >= last_train):
            res.after = vals[-1]
            if vals[-1].step < last_train:
                warnings.append(
                    f"stage {stage.name}: last validation at step {vals[-1].step} but training "
                    f"reached step {last_train} (stage unfinished?)"
                )
        else:
            warnings.append(f"stage {stage.name}: no validation after training")
    elif stage.log is not None:
        warnings.append(f"stage {stage.name}: no per-group validation metrics in the log")
    for short, keys in TRAIN_KEYS.items():
        for key in keys:
            steps, values = log.series(key)
            steps_v = [(s, v) for s, v in zip(steps, values, strict=True) if s in set(train_steps)]
            if steps_v:
                xs, ys = [s for s, _ in steps_v], [v for _, v in steps_v]
                finite = [v for v in ys if math.isfinite(v)]
                res.train[short] = Series(
                    key=key,
                    steps=xs,
                    values=ys,
                    first=ys[0],
                    last=ys[-1],
                    mean=float(np.mean(finite)) if finite else None,
                    min=min(finite) if finite else None,
                    max=max(finite) if finite else None,
                )
                break
    return res


@dataclass
class Matrix:
    """R (T+1 × groups), the log key behind each cell, and where each row was measured: a label
    and the (stage result, validation) it came from."""

    R: np.ndarray
    keys: list[list[str | None]]
    origin: list[str]
    sources: list[tuple[StageResult, LoggedValidation] | None]


def build_matrix(run: Run, results: list[StageResult], warnings: list[str]) -> Matrix:
    """The accuracy matrix from the stages' before/after validations."""
    T, G = len(results), len(run.groups)
    R = np.full((T + 1, G), np.nan)
    keys: list[list[str | None]] = [[None] * G for _ in range(T + 1)]
    origin = ["missing"] * (T + 1)
    sources: list[tuple[StageResult, LoggedValidation] | None] = [None] * (T + 1)

    def fill(row: int, res: StageResult, val: LoggedValidation | None) -> bool:
        if not val:
            return False
        for j, g in enumerate(run.groups):
            if g in val.accuracy:
                R[row, j] = val.accuracy[g]
                keys[row][j] = val.keys[g]
        origin[row] = f"{res.stage.name} step {val.step}"
        sources[row] = (res, val)
        return True

    if results and not fill(0, results[0], results[0].before):
        warnings.append("row 0 (base model): first stage has no before-training validation")
    for k, res in enumerate(results, start=1):
        name = res.stage.name
        if fill(k, res, res.after):
            continue
        if k < T and fill(k, results[k], results[k].before):
            warnings.append(f"row {name}: taken from {results[k].stage.name}'s before-validation")
        elif res.stage.status not in ("pending",):
            warnings.append(f"row {name}: no accuracy after this stage")
    rows = ["base"] + [r.stage.name for r in results]
    for i, row in enumerate(keys):
        for j, key in enumerate(row):
            if key and "/reward/" in key:
                warnings.append(
                    f"cell {rows[i]} × {run.groups[j]} is the mean reward ({key}), not accuracy: "
                    f"no acc key in {origin[i]}" + _truncation_note(results, origin[i])
                )
    return Matrix(R, keys, origin, sources)


def _truncation_note(results: list[StageResult], origin: str) -> str:
    """Why a cell may lack its acc key: the log's last line, where it was read, is cut off."""
    cut = {
        f"{res.stage.name} step {res.log.truncated_step}"
        for res in results
        if res.log is not None and res.log.truncated_step is not None
    }
    return " (the log's last line is truncated)" if origin in cut else ""


def _weights(res: StageResult, run: Run, warnings: list[str], workers: int | None) -> None:
    st = res.stage
    if st.final_model is None:
        return
    for attr, start in (("stage", st.initial_model), ("cumulative", run.base_checkpoint)):
        if start is None:
            warnings.append(
                f"stage {st.name}: no {'initial' if attr == 'stage' else 'base'} "
                "checkpoint, weight change skipped"
            )
            continue
        same = attr == "cumulative" and st.initial_model is not None
        if same and start.resolve() == st.initial_model.resolve() and res.weights_stage is not None:
            d = res.weights_stage
        else:
            try:
                d = diff_checkpoints(start, st.final_model, workers=workers)
            except CheckpointError as exc:
                warnings.append(f"stage {st.name}: weight change skipped ({exc})")
                continue
            warnings.extend(f"stage {st.name} ({attr} weight change): {w}" for w in d.warnings)
        setattr(res, f"weights_{attr}", d)


@dataclass
class Analysis:
    """Everything known about a run: stage results, the accuracy matrix R (row 0 = before any
    training, row k = after stage k) with its intervals, its metrics over the measured stages,
    the plasticity diagnostics (when the checkpoints were read), and warnings."""

    run: Run
    results: list[StageResult]
    matrix: Matrix
    curriculum: Curriculum
    stages_used: int
    """The last stage with a measured row: metrics are over stages 1..stages_used."""
    metrics: dict | None
    per_round: dict | None
    F: np.ndarray
    """The forgetting matrix (``cl_eval.matrix.forgetting_matrix``)."""
    uncertainty: Uncertainty
    plasticity: Plasticity | None
    warnings: list[str]

    @property
    def R(self) -> np.ndarray:
        return self.matrix.R

    @property
    def row_names(self) -> list[str]:
        return ["base"] + [st.name for st in self.run.stages]

    def metric(self, name: str, index: int | None = None) -> Estimate:
        """One metric (``index``: 1-based position in a per-stage or per-group list) with its
        95 % interval; a value of None where it is not defined."""
        value = (self.metrics or {}).get(name)
        if index is not None:
            value = value[index - 1] if isinstance(value, list) and index <= len(value) else None
        lo, hi = self.uncertainty.metrics.get(MetricKey(name, index), (None, None))
        finite = isinstance(value, int | float) and math.isfinite(value)
        return Estimate(float(value) if finite else None, lo, hi)

    def matrix_payload(self) -> dict:
        """The accuracy matrix with every cell's interval, the metrics with theirs, and the noise
        floor: what ``cl-eval matrix --json`` prints and ``consolidated_metrics_*.json`` holds."""
        unc = self.uncertainty
        return {
            "accuracy_matrix": {
                "rows": self.row_names,
                "columns": self.run.groups,
                "values": self.R,
                "lo": unc.lo,
                "hi": unc.hi,
                "n": unc.n,
                "interval_method": unc.method,
                "keys": self.matrix.keys,
                "row_source": self.matrix.origin,
                "stages_used": self.stages_used,
            },
            "interval_source": unc.source,
            "metrics": self.metrics,
            "metric_intervals": unc.metrics,
            "noise_floor": unc.noise_floor,
        }


def analyse(
    run_dir: Path,
    size: str | None = None,
    *,
    weights: bool = False,
    workers: int | None = None,
    probe: bool = True,
) -> Analysis:
    """Analyse ``run_dir``. ``weights`` also reads every stage's checkpoints (the slow part):
    weight change and plasticity diagnostics, with forward passes on a probe set if ``probe``."""
    run = load_run(run_dir, size)
    warnings = list(run.warnings)
    results = [analyse_stage(st, run.groups, warnings) for st in run.stages]
    if not any(r.log and r.log.entries for r in results) and not any(
        st.final_model for st in run.stages
    ):
        raise RunError(
            f"{run.path}: no stage has metric lines or a final checkpoint; nothing to report"
        )
    if weights:
        for res in results:
            _weights(res, run, warnings, workers)
    m = build_matrix(run, results, warnings)
    R = m.R
    cur = Curriculum(tuple(run.groups), tuple(run.groups.index(st.group) for st in run.stages))
    measured = [k for k in range(1, R.shape[0]) if np.isfinite(R[k]).any()]
    t_used = measured[-1] if measured else 0
    metrics = per_round = None
    F = np.full(R.shape, np.nan)
    if t_used:
        Ru = R[: t_used + 1]
        metrics = compute_metrics(Ru, cur)
        per_round = per_round_metrics(Ru, cur, [st.round for st in run.stages])
        F[: t_used + 1] = forgetting_matrix(Ru, cur)
        if t_used < len(run.stages):
            warnings.append(
                f"metrics use stages 1..{t_used} of {len(run.stages)} (later stages not measured)"
            )
    else:
        warnings.append("no stage has validation accuracy after training: no CL metrics")
    return Analysis(
        run=run,
        results=results,
        matrix=m,
        curriculum=cur,
        stages_used=t_used,
        metrics=metrics,
        per_round=per_round,
        F=F,
        uncertainty=estimate(run, results, R, m.sources, cur, t_used, warnings),
        plasticity=measure(run, results, probe=probe) if weights else None,
        warnings=warnings,
    )
