"""The joint multi-task baseline (``--curriculum joint``): the sequential curriculum's stages,
steps and puzzles, with every stage training on an equal mixture of all groups.

A stage keeps its sequential name, round and group (``R2_plus_minus``): the group names the slot
whose steps it takes, so the run directory has the sequential layout and cl-eval reads both alike
(run.json's ``curriculum`` says which it is). Its training file has as many prompts as the
sequential stage trains on (its group's split, capped by ``data.train_max_samples``), an equal share
from every group. Each group's share comes from the puzzles a sequential stage of that group
trains on (the subset ``data.train_max_samples`` keeps, drawn as veRL draws it), in one fixed order
per group, the k-th stage of a round taking the k-th block of it: over a round every one of those
puzzles is trained on once per epoch, as in the sequential curriculum. Only the order differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cl_rundir.atomic import writing
from cl_rundir.layout import Stage
from cl_trainer.config import TrainerConfig
from cl_trainer.local.data import subsample
from cl_trainer.sizing import override_value, train_rows
from countdown_data.dataset import split_path, write_table


def shares(total: int, parts: int, first: int) -> list[int]:
    """``total`` split into ``parts`` near-equal shares; the remainder goes to the shares from
    ``first`` on (so it rotates with the stage's place in the round)."""
    base, extra = divmod(total, parts)
    return [base + ((i - first) % parts < extra) for i in range(parts)]


def write_joint_file(cfg: TrainerConfig, stage: Stage) -> dict[str, Any]:
    """Write the stage's mixture to its ``joint_file`` (atomically; the same file on every
    resume); returns the prompts drawn from each group."""
    data, groups = Path(cfg.data_dir), cfg.groups
    place = stage.index % len(groups)
    cap = override_value(cfg, "data.train_max_samples")
    parts, drawn = [], {}
    for i, (group, k) in enumerate(
        zip(groups, shares(train_rows(cfg, stage.group), len(groups), place), strict=True)
    ):
        table = pq.read_table(split_path(data, group, "train"))
        pool = subsample(table.num_rows, int(cap) if cap and cap.isdigit() else -1, cfg.seed)
        pool = np.arange(table.num_rows) if pool is None else pool
        order = pool[np.random.default_rng([cfg.seed, i]).permutation(len(pool))]
        parts.append(table.take(order[(place * k + np.arange(k)) % len(order)]))
        drawn[group] = k
    mixed = pa.concat_tables(parts)
    mixed = mixed.take(np.random.default_rng([cfg.seed, stage.index]).permutation(len(mixed)))
    with writing(cfg.run_dir / stage.joint_file) as tmp:
        write_table(mixed, tmp)
    return drawn
