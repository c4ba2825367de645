"""Per-group summaries of a generated data set (what ``countdown-data stats`` prints)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from countdown_data.dataset import read_manifest, read_split
from countdown_data.generate import SPLITS


def split_stats(root: Path, group: str, split: str) -> dict[str, Any]:
    """Counts and distributions of one split: numbers, targets and solution lengths."""
    table = read_split(root, group, split)
    lengths = pc.list_value_length(table.column("nums")).to_numpy()
    numbers = pc.list_flatten(table.column("nums")).to_numpy()
    targets = table.column("target").to_numpy()
    solutions = pc.struct_field(table.column("extra_info"), "solution")
    sol_len = pc.utf8_length(solutions).to_numpy()
    ops = Counter(c for s in solutions.to_pylist() for c in s if c in "+-*/")
    total_ops = sum(ops.values()) or 1
    return {
        "rows": table.num_rows,
        "numbers_per_puzzle": dict(sorted(Counter(lengths.tolist()).items())),
        "number": _summary(numbers),
        "target": _summary(targets),
        "solution_chars": _summary(sol_len),
        "operator_share": {op: ops[op] / total_ops for op in "+-*/" if ops[op]},
    }


def _summary(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    q = np.percentile(values, [0, 10, 50, 90, 100])
    return {
        "min": float(q[0]),
        "p10": float(q[1]),
        "median": float(q[2]),
        "p90": float(q[3]),
        "max": float(q[4]),
        "mean": float(values.mean()),
    }


def dataset_stats(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{group: {split: split_stats}}`` for every group the manifest lists."""
    manifest = read_manifest(root)
    return {g: {s: split_stats(root, g, s) for s in SPLITS} for g in manifest["groups"]}
