"""A stage's training samples: veRL's per-step rollout dumps, compacted into one small file.

With ``trainer.rollout_data_dir`` set, veRL 0.9.1's v1 trainer writes every training step's samples
to ``<dir>/<step>.jsonl`` (``PPOTrainer._log_rollout_data``: ``input``, ``output``, ``gts``,
``score``, ``step`` and ``uid``; the reward function's extra fields such as ``acc`` are not
dumped), and the local backend writes the same files with veRL's writer. Kept as text, a 0.5b
stage's dumps run to gigabytes; once the stage is done they become one parquet file of
``ROLLOUT_COLUMNS`` (kilobytes to a few megabytes), with the text only when the user keeps it.

``correct`` is recomputed by the reward's own verifier from the dumped response and ground truth:
the same decoded text the reward function scored (both decode with ``skip_special_tokens``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cl_rundir.atomic import writing
from cl_rundir.layout import ROLLOUT_COLUMNS
from cl_trainer.errors import TrainerError
from countdown_reward.verifier import parse_ground_truth, verify_puzzle

STEP_FILE = re.compile(r"^(\d+)\.jsonl$")
TEXT_COLUMNS = ("input", "output", "gts")
TYPES = {
    "step": pa.int32(),
    "prompt": pa.int32(),
    "score": pa.float32(),
    "correct": pa.bool_(),
    "response_chars": pa.int32(),
    "input": pa.string(),
    "output": pa.string(),
    "gts": pa.string(),
}
ROW_GROUP_ROWS = 1 << 16
"""Rows per parquet row group: one per step would cost more in metadata than the data."""
COMPRESSION = "zstd"


def schema(keep_text: bool) -> pa.Schema:
    names = ROLLOUT_COLUMNS + (TEXT_COLUMNS if keep_text else ())
    return pa.schema([(name, TYPES[name]) for name in names])


def step_files(dump_dir: Path) -> list[tuple[int, Path]]:
    """``(step, file)`` of every dumped step, ascending."""
    if not dump_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in dump_dir.iterdir() if (m := STEP_FILE.match(p.name))]
    return sorted(found)


def prompt_of(row: dict, line: int) -> str:
    """The prompt a dumped sample answers: veRL keys a sample ``{prompt uid}_{rollout}_{output}``
    (``trainer_base.py``, ``_log_rollout_data``); a line without a uid is a prompt of its own."""
    uid = row.get("uid")
    if uid is None:
        return f"line {line}"
    parts = str(uid).rsplit("_", 2)
    return parts[0] if len(parts) == 3 else str(uid)


def read_step(path: Path, step: int, keep_text: bool) -> pa.Table:
    """One ``<step>.jsonl`` dump as rows of :func:`schema`.

    veRL writes a dump in a background thread, one ``\n``-terminated line per sample, so a stage
    killed mid-write leaves a last line without its newline; that line is left out. Any other
    line that is not a record is damage, and stops the compaction naming the file.
    """
    columns: dict[str, list] = {name: [] for name in TYPES}
    prompts: dict[str, int] = {}
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except ValueError:
                if not line.endswith("\n"):
                    continue
                raise TrainerError(
                    f"{path}:{number} is not a veRL rollout record; delete the file to drop "
                    "that step's training samples"
                ) from None
            output = str(row["output"])
            verdict = verify_puzzle(output, *parse_ground_truth(row["gts"]))
            columns["step"].append(int(row.get("step", step)))
            columns["prompt"].append(prompts.setdefault(prompt_of(row, number), len(prompts)))
            columns["score"].append(float(row["score"]))
            columns["correct"].append(verdict.correct)
            columns["response_chars"].append(len(output))
            columns["input"].append(str(row["input"]))
            columns["output"].append(output)
            columns["gts"].append(json.dumps(row["gts"], sort_keys=True))
    target = schema(keep_text)
    return pa.table({name: columns[name] for name in target.names}, schema=target)


def compact(dump_dir: Path, out: Path, *, keep_text: bool = False) -> int:
    """Fold every ``<step>.jsonl`` under ``dump_dir`` into ``out`` and remove ``dump_dir``;
    returns the rows in ``out``.

    Streams step by step (the text of a 0.5b stage does not fit in memory twice). Rows already in
    ``out`` for steps no longer dumped come first, so a compaction that was cut short (file
    written, dumps half removed) loses nothing when it runs again.
    """
    files = step_files(dump_dir)
    if not files:
        return pq.read_metadata(out).num_rows if out.is_file() else 0
    target = schema(keep_text)
    pending: list[pa.Table] = []
    if out.is_file():
        dumped = pa.array([step for step, _ in files], pa.int32())
        old = pq.read_table(out)
        old = old.filter(pc.invert(pc.is_in(old["step"], value_set=dumped)))
        pending.append(
            pa.table(
                {
                    name: old[name] if name in old.column_names else pa.nulls(len(old), type_)
                    for name, type_ in zip(target.names, target.types, strict=True)
                },
                schema=target,
            )
        )
    rows = 0
    with writing(out) as tmp, pq.ParquetWriter(tmp, target, compression=COMPRESSION) as writer:
        for step, path in files:
            pending.append(read_step(path, step, keep_text))
            if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                rows += _flush(writer, pending)
        rows += _flush(writer, pending)
    shutil.rmtree(dump_dir)
    return rows


def _flush(writer: pq.ParquetWriter, pending: list[pa.Table]) -> int:
    if not pending:
        return 0
    table = pa.concat_tables(pending)
    pending.clear()
    writer.write_table(table, row_group_size=max(1, table.num_rows))
    return table.num_rows
