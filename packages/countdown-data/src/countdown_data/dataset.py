"""Parquet layout, atomic writes and the manifest.

Files are written under temporary names in their final directory and renamed only after every
file of the run is complete (manifest last), so an interrupted ``gen`` never leaves a truncated
parquet, and never replaces part of an older data set.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from countdown_data.generate import SplitData
from countdown_data.groups import GROUPS, data_source
from countdown_data.templates import render_prompt

MANIFEST = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1
ROW_GROUP_SIZE = 16_384

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("ability", pa.string()),
        (
            "reward_model",
            pa.struct(
                [
                    ("style", pa.string()),
                    (
                        "ground_truth",
                        pa.struct([("target", pa.int64()), ("numbers", pa.list_(pa.int64()))]),
                    ),
                ]
            ),
        ),
        (
            "extra_info",
            pa.struct(
                [
                    ("split", pa.string()),
                    ("index", pa.int64()),
                    ("group", pa.string()),
                    ("solution", pa.string()),
                ]
            ),
        ),
        ("target", pa.int64()),
        ("nums", pa.list_(pa.int64())),
    ]
)
"""The row schema veRL's RLHFDataset reads (TinyZero's layout) plus top-level target/nums."""


def split_path(root: Path, group: str, split: str) -> Path:
    return Path(root) / group / f"{split}.parquet"


def build_table(group: str, split: str, data: SplitData, template: str) -> pa.Table:
    """The parquet table for one split, built column-wise (fast for 100k rows)."""
    n = len(data)
    prompts = [
        render_prompt(template, nums, t, group)
        for nums, t in zip(data.nums, data.targets, strict=True)
    ]
    nums = pa.array(data.nums, type=pa.list_(pa.int64()))
    targets = pa.array(data.targets, type=pa.int64())
    columns = {
        "data_source": pa.array([data_source(group)] * n, type=pa.string()),
        "prompt": pa.array(prompts, type=pa.list_(MESSAGE)),
        "ability": pa.array(["math"] * n, type=pa.string()),
        "reward_model": pa.StructArray.from_arrays(
            [
                pa.array(["rule"] * n, type=pa.string()),
                pa.StructArray.from_arrays([targets, nums], names=["target", "numbers"]),
            ],
            names=["style", "ground_truth"],
        ),
        "extra_info": pa.StructArray.from_arrays(
            [
                pa.array([split] * n, type=pa.string()),
                pa.array(range(n), type=pa.int64()),
                pa.array([group] * n, type=pa.string()),
                pa.array(data.solutions, type=pa.string()),
            ],
            names=["split", "index", "group", "solution"],
        ),
        "target": targets,
        "nums": nums,
    }
    return pa.Table.from_arrays(list(columns.values()), schema=SCHEMA)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class StagedWrites:
    """Write files under temporary names now; rename them all into place on :meth:`commit`.

    Leaving the ``with`` block without committing (an error, Ctrl-C) deletes the temporaries,
    so existing files stay exactly as they were.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def write(self, path: Path, writer: Callable[[Path], None]) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self._staged.append((Path(tmp), path))
        writer(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        return Path(tmp)

    def commit(self) -> None:
        for tmp, final in self._staged:
            os.replace(tmp, final)
        self._staged.clear()

    def __enter__(self) -> StagedWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()


def write_table(table: pa.Table, path: Path) -> None:
    """Deterministic parquet bytes: fixed row groups, compression and no pandas metadata."""
    pq.write_table(
        table,
        path,
        row_group_size=ROW_GROUP_SIZE,
        compression="zstd",
        use_dictionary=["data_source", "ability"],
    )


def write_json(obj: Any, path: Path) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def make_manifest(
    params: dict, counts: dict[str, dict[str, int]], files: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Everything needed to reproduce and to check a data set (no timestamps: byte-stable)."""
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "generator": "countdown-data",
        "version": version("countdown-data"),
        "pyarrow": pa.__version__,
        "params": params,
        "groups": list(params["groups"]),
        "counts": counts,
        "files": files,
    }


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `countdown-data gen --out {root}` first")
    return json.loads(path.read_text())


def existing_outputs(root: Path) -> list[Path]:
    """Files a new ``gen`` into ``root`` would replace."""
    root = Path(root)
    found = [root / MANIFEST] if (root / MANIFEST).exists() else []
    for group in GROUPS:
        found += [
            split_path(root, group, s)
            for s in ("train", "test")
            if split_path(root, group, s).exists()
        ]
    return found


def read_split(root: Path, group: str, split: str) -> pa.Table:
    return pq.ParquetFile(split_path(root, group, split)).read()


def load_rows(root: Path, group: str, split: str) -> list[dict[str, Any]]:
    """One split as Python dicts (the form veRL hands to the reward function)."""
    return read_split(root, group, split).to_pylist()
