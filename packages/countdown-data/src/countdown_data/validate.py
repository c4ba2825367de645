"""Re-check a generated data set against every guarantee, independently of how it was made."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from countdown_data.dataset import (
    MANIFEST,
    MANIFEST_SCHEMA_VERSION,
    SCHEMA,
    read_manifest,
    sha256,
    split_file,
    split_path,
)
from countdown_data.generate import SPLITS, excluded_ops, puzzle_key
from countdown_data.groups import GROUPS, OPERATORS, data_source
from countdown_data.solver import equation_steps, evaluate_table, expression_table
from countdown_data.templates import TEMPLATES, render_prompt
from countdown_reward import check_equation


@dataclass(frozen=True)
class Violation:
    """One broken guarantee: where (file, row or None for the whole file) and what."""

    where: str
    row: int | None
    kind: str
    detail: str

    def __str__(self) -> str:
        at = self.where if self.row is None else f"{self.where} row {self.row}"
        return f"{at}: [{self.kind}] {self.detail}"


def _check_rows(
    root: str, group: str, split: str, params: dict[str, Any]
) -> tuple[list[Violation], list[tuple[int, ...]]]:
    """Row-level checks of one split; also returns its puzzle keys for cross-split checks."""
    rel = split_file(group, split)
    try:
        table = pq.ParquetFile(split_path(Path(root), group, split)).read()
    except Exception as exc:  # damaged data pages under an intact footer: report, don't crash
        return [Violation(rel, None, "corrupt", f"unreadable parquet: {exc}")], []
    if not table.schema.equals(SCHEMA):
        return [
            Violation(
                rel, None, "schema", f"columns/types differ from the contract: {table.schema.names}"
            )
        ], []
    col = {name: table.column(name).to_pylist() for name in table.schema.names}
    ops = OPERATORS[group]
    kmin, kmax = params["numbers_per_puzzle"]
    lo, hi = params["number_range"]
    tlo, thi = params["target_range"]
    out: list[Violation] = []
    keys: list[tuple[int, ...]] = []

    def bad(i: int, kind: str, detail: str) -> None:
        out.append(Violation(rel, i, kind, detail))

    for i in range(table.num_rows):
        nums, target = col["nums"][i], col["target"][i]
        rm, info = col["reward_model"][i], col["extra_info"][i]
        keys.append(puzzle_key(nums, target))
        if col["data_source"][i] != data_source(group) or col["ability"][i] != "math":
            bad(i, "schema", f"data_source/ability {col['data_source'][i]!r}/{col['ability'][i]!r}")
        if rm != {"style": "rule", "ground_truth": {"target": target, "numbers": nums}}:
            bad(i, "schema", f"reward_model {rm} disagrees with target/nums")
        if (info["split"], info["index"], info["group"]) != (split, i, group):
            bad(
                i, "schema", f"extra_info {info} should say split={split}, index={i}, group={group}"
            )
        if not (
            kmin <= len(nums) <= kmax and all(lo <= n <= hi for n in nums) and tlo <= target <= thi
        ):
            bad(i, "range", f"numbers {nums} / target {target} outside the manifest's ranges")
        if col["prompt"][i] != render_prompt(params["template"], nums, target, group):
            bad(i, "prompt", "prompt differs from the template for this group's operators")
        sol = info["solution"] or ""
        verdict = check_equation(sol, target, nums)
        if verdict.reason != "correct":
            bad(i, "unsolved", f"solution {sol!r} for {nums} -> {target}: {verdict.reason}")
            continue
        used = {c for c in sol if c in "+-*/"}
        if not used <= set(ops):
            bad(
                i,
                "operators",
                f"solution {sol!r} uses {''.join(sorted(used - set(ops)))}, "
                f"outside {group} ({ops})",
            )
        _, steps, _ = equation_steps(sol)
        if any(isinstance(s.result, Fraction) for s in steps):
            bad(i, "division", f"solution {sol!r} has a fractional intermediate")

    prev = excluded_ops(group, params["require_new_op"])
    if prev is not None:
        out += _check_new_op(rel, col["nums"], col["target"], prev)
    counts = Counter(keys)
    dups = [i for i, key in enumerate(keys) if counts[key] > 1]
    for i in dups:
        bad(
            i,
            "duplicate",
            f"puzzle {col['nums'][i]} -> {col['target'][i]} occurs "
            f"{counts[keys[i]]} times in this split",
        )
    return out, keys


def _check_new_op(
    rel: str, nums: list[list[int]], targets: list[int], prev: str
) -> list[Violation]:
    """Rows whose target is reachable with the previous group's (division-free) operators."""
    out = []
    by_k: dict[int, list[int]] = {}
    for i, n in enumerate(nums):
        by_k.setdefault(len(n), []).append(i)
    for k, rows in by_k.items():
        table = expression_table(k, prev)
        step = max(1, 1_500_000 // len(table.templates))
        for start in range(0, len(rows), step):
            idx = rows[start : start + step]
            snums = np.sort(np.array([nums[i] for i in idx], dtype=np.int64), axis=1)
            tgt = np.array([targets[i] for i in idx], dtype=np.int64)
            vals, ok = evaluate_table(table, snums)
            hit = ok & (vals == tgt[:, None])
            for j in np.flatnonzero(hit.any(axis=1)):
                eq = table.templates[int(hit[j].argmax())].format(*snums[j].tolist())
                out.append(
                    Violation(
                        rel,
                        idx[j],
                        "new-op",
                        f"target {tgt[j]} is reachable with {prev} only: {eq}",
                    )
                )
    return out


def _is_range(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def manifest_problems(manifest: Any) -> list[str]:
    """What makes a manifest unusable for validation (wrong shape or types), as messages."""
    if not isinstance(manifest, dict):
        return [f"is a {type(manifest).__name__}, not an object"]
    if manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        return [f"schema_version {manifest.get('schema_version')!r} is not supported"]
    problems = []
    params, groups = manifest.get("params"), manifest.get("groups")
    if not isinstance(params, dict):
        problems.append("params is missing or not an object")
    else:
        for key in ("numbers_per_puzzle", "number_range", "target_range"):
            if not _is_range(params.get(key)):
                problems.append(f"params.{key} is {params.get(key)!r}, not [low, high]")
        if params.get("template") not in TEMPLATES:
            problems.append(f"params.template {params.get('template')!r} is unknown")
        if not isinstance(params.get("require_new_op"), bool):
            problems.append("params.require_new_op is not true/false")
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return [*problems, "groups is missing or not a list of names"]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        problems.append(f"unknown groups {unknown}")
    counts, files = manifest.get("counts"), manifest.get("files")
    for g in groups:
        entry = counts.get(g) if isinstance(counts, dict) else None
        for s in SPLITS:
            if not isinstance(entry, dict) or not isinstance(entry.get(s), int):
                problems.append(f"counts.{g}.{s} is missing or not a number")
    if not isinstance(files, dict) or not all(isinstance(f, dict) for f in files.values()):
        problems.append("files is missing or not an object of file entries")
    return problems


def validate(root: Path, workers: int = 1) -> list[Violation]:
    """Every violation of the data set's guarantees (empty list: all hold)."""
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except (FileNotFoundError, ValueError) as exc:
        return [Violation(str(root), None, "manifest", str(exc))]
    problems = manifest_problems(manifest)
    if problems:
        return [Violation(MANIFEST, None, "manifest", p) for p in problems]
    params, groups = manifest["params"], manifest["groups"]
    out: list[Violation] = []
    splits = [(g, s) for g in groups for s in SPLITS]
    expected = {split_file(g, s) for g, s in splits}
    if set(manifest["files"]) != expected:
        out.append(
            Violation(
                MANIFEST,
                None,
                "manifest",
                f"files {sorted(manifest['files'])} != {sorted(expected)}",
            )
        )
    present = []
    for g, s in splits:
        rel = split_file(g, s)
        path = split_path(root, g, s)
        entry = manifest["files"].get(rel, {})
        if not path.is_file():
            out.append(Violation(rel, None, "missing", "file listed in the manifest is absent"))
            continue
        if sha256(path) != entry.get("sha256"):
            out.append(
                Violation(
                    rel,
                    None,
                    "checksum",
                    "sha256 differs from the manifest (file changed or corrupted since gen)",
                )
            )
        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as exc:  # corrupted footer: report, don't crash
            out.append(Violation(rel, None, "corrupt", f"unreadable parquet: {exc}"))
            continue
        if rows != manifest["counts"][g][s] or rows != entry.get("rows"):
            out.append(
                Violation(
                    rel, None, "count", f"{rows} rows, manifest says {manifest['counts'][g][s]}"
                )
            )
        present.append((g, s))

    if workers > 1 and len(present) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            results = list(
                pool.map(
                    _check_rows,
                    [str(root)] * len(present),
                    [g for g, _ in present],
                    [s for _, s in present],
                    [params] * len(present),
                )
            )
    else:
        results = [_check_rows(str(root), g, s, params) for g, s in present]

    test_keys: dict[tuple[int, ...], str] = {}
    for (g, s), (violations, keys) in zip(present, results, strict=True):
        out += violations
        if s == "test":
            test_keys.update((k, g) for k in keys)
    for (g, s), (_, keys) in zip(present, results, strict=True):
        if s != "train":
            continue
        for i, key in enumerate(keys):
            if key in test_keys:
                out.append(
                    Violation(
                        split_file(g, "train"),
                        i,
                        "leak",
                        f"puzzle {key[:-2]} -> {key[-1]} is in "
                        + split_file(test_keys[key], "test"),
                    )
                )
    return out
