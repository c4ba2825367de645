"""Continual-learning analysis of a cl-trainer run: accuracy matrix, transfer and forgetting,
weight change, plots and the report. Reads files only; never imports the trainer."""

from cl_eval.analysis import Analysis, analyse
from cl_eval.matrix import DEFINITIONS, Curriculum, compute_metrics
from cl_eval.report import build_report
from cl_eval.run import Run, RunError, load_run
from cl_eval.weights import CheckpointError, diff_checkpoints

__all__ = [
    "DEFINITIONS",
    "Analysis",
    "CheckpointError",
    "Curriculum",
    "Run",
    "RunError",
    "analyse",
    "build_report",
    "compute_metrics",
    "diff_checkpoints",
    "load_run",
]
