"""A data set on disk: the parquet layout, the manifest, and :func:`write_dataset` that owns both.

Files are written under temporary names in their final directory and renamed only after every
file of the run is complete (manifest last), so an interrupted ``gen`` never leaves a truncated
parquet, and never replaces part of an older data set.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cl_rundir.atomic import StagedWrites, new_temp_file, remove_stale_temps
from countdown_data.generate import SPLITS, GenConfig, ProgressFn, SplitData, generate_iter
from countdown_data.groups import GROUPS, data_source
from countdown_data.templates import render_prompt

DEFAULT_DATA_DIR = Path("data/continual")
"""Where ``countdown-data gen`` writes and ``cl-trainer`` reads, unless told otherwise."""
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


def split_file(group: str, split: str) -> str:
    """A split's file relative to its data set (how the manifest names it)."""
    return f"{group}/{split}.parquet"


def split_path(root: Path, group: str, split: str) -> Path:
    return Path(root) / split_file(group, split)


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


class OutputError(OSError):
    """The output location cannot take the data set (one line, naming the directory)."""


def check_writable(out: Path) -> None:
    """Fail before any generation work when ``out`` cannot be written (read-only, a file, ...)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        new_temp_file(out / MANIFEST).unlink()
    except OSError as exc:
        raise OutputError(f"cannot write to {out} ({exc.strerror or exc})") from None


def output_files(root: Path, groups: tuple[str, ...] | list[str] = GROUPS) -> list[Path]:
    """Every file a data set of ``groups`` consists of, manifest last."""
    splits = [split_path(root, g, s) for g in groups for s in SPLITS]
    return [*splits, Path(root) / MANIFEST]


def write_dataset(
    cfg: GenConfig, out: Path, workers: int = 1, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Generate ``cfg``'s splits into ``out`` with checksums and the manifest; all or nothing.

    Every file is staged under a temporary name and renamed into place only when all of them are
    complete (manifest last); temp files a killed earlier run left behind are removed first.
    Returns the manifest. ``progress(group, split, done, needed)`` follows generation.
    """
    out = Path(out)
    check_writable(out)
    remove_stale_temps(output_files(out))
    files: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {g: {} for g in cfg.groups}
    with StagedWrites() as staged:
        for group, split, data in generate_iter(cfg, workers, progress):
            table = build_table(group, split, data, cfg.template)
            tmp = staged.write(split_path(out, group, split), lambda p, t=table: write_table(t, p))
            files[split_file(group, split)] = {
                "rows": table.num_rows,
                "bytes": tmp.stat().st_size,
                "sha256": sha256(tmp),
            }
            counts[group][split] = table.num_rows
        files = {split_file(g, s): files[split_file(g, s)] for g in cfg.groups for s in SPLITS}
        manifest = make_manifest(cfg.params(), counts, files)
        staged.write(out / MANIFEST, lambda p: write_json(manifest, p))
        staged.commit()
    return manifest


def up_to_date(out: Path, cfg: GenConfig) -> bool:
    """True when ``out`` already holds exactly this data set, unmodified."""
    try:
        manifest = read_manifest(out)
    except (FileNotFoundError, ValueError):
        return False
    if manifest.get("params") != cfg.params():
        return False
    for rel, entry in manifest.get("files", {}).items():
        path = Path(out) / rel
        if not path.is_file() or sha256(path) != entry.get("sha256"):
            return False
    return True


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
    return [p for p in output_files(root) if p.exists()]


def read_split(root: Path, group: str, split: str) -> pa.Table:
    return pq.ParquetFile(split_path(root, group, split)).read()


def load_rows(root: Path, group: str, split: str) -> list[dict[str, Any]]:
    """One split as Python dicts (the form veRL hands to the reward function)."""
    return read_split(root, group, split).to_pylist()
