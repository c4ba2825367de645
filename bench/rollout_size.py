"""Disk taken by one stage's training samples: veRL's raw rollout dumps vs the compacted file.

Run: uv run python bench/rollout_size.py [--size 0.5b] [--algo grpo] [--response-chars 1000]
A stage has (train rows // batch) x epochs steps of batch x rollout.n samples (the preset's
settings and countdown-data's default 100,000 training puzzles per group). The compacted file is
written as ``cl_trainer.rollouts`` writes it, from synthetic samples of high entropy (a coin
flip's correctness, scores over all three reward values, lengths uniform up to twice the mean), so
the figure is an upper estimate; the raw dumps are extrapolated from 2,000 samples written by
veRL's own writer with the preset's real prompts and responses of the given mean length.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cl_trainer import private_api
from cl_trainer.checks import human_bytes
from cl_trainer.config import resolve_config
from cl_trainer.rollouts import COMPRESSION, ROW_GROUP_ROWS, schema
from countdown_data.dataset import build_table
from countdown_data.generate import GenConfig, generate
from countdown_reward.scoring import FORMAT_SCORE

SAMPLE = 2_000


def stage_shape(size: str, algo: str | None, train_rows: int) -> tuple[int, int, int]:
    """(steps per stage, samples per step, answers per prompt) of a preset."""
    cfg = resolve_config(size, **({"algo": algo} if algo else {}))
    limit = [o for o in cfg.preset_overrides if o.startswith("data.train_max_samples=")]
    rows = min(train_rows, int(limit[-1].split("=")[1])) if limit else train_rows
    steps = rows // cfg.train_batch_size * cfg.epochs
    return steps, cfg.train_batch_size * cfg.rollout_n, cfg.rollout_n


def compact_bytes(
    steps: int, per_step: int, n_per_prompt: int, mean_chars: int, seed: int = 0
) -> int:
    rng = np.random.default_rng(seed)
    n = steps * per_step
    correct = rng.random(n) < 0.5
    score = np.where(correct, 1.0, rng.choice([0.0, FORMAT_SCORE], size=n)).astype(np.float32)
    table = pa.table(
        {
            "step": np.repeat(np.arange(1, steps + 1, dtype=np.int32), per_step),
            "prompt": np.tile(np.arange(per_step, dtype=np.int32) // n_per_prompt, steps),
            "score": score,
            "correct": correct,
            "response_chars": rng.integers(1, 2 * mean_chars, size=n, dtype=np.int32),
        },
        schema=schema(keep_text=False),
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rollouts.parquet"
        pq.write_table(table, path, compression=COMPRESSION, row_group_size=ROW_GROUP_ROWS)
        return path.stat().st_size


def raw_bytes_per_sample(mean_chars: int, seed: int = 0) -> float:
    """veRL's JSONL bytes per sample, prompts of the default template and data."""
    rng = np.random.default_rng(seed)
    cfg = GenConfig(train_size=SAMPLE, test_size=1, groups=("plus",), seed=seed)
    rows = build_table("plus", "train", generate(cfg)[("plus", "train")], cfg.template).to_pylist()
    alphabet = np.array(list("0123456789 +-*/()=<>abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(1, 2 * mean_chars, SAMPLE)
    outputs = ["".join(rng.choice(alphabet, size=int(k))) for k in lengths]
    with tempfile.TemporaryDirectory() as tmp:
        private_api.write_generations(
            inputs=[r["prompt"][0]["content"] for r in rows],
            outputs=outputs,
            gts=[r["reward_model"]["ground_truth"] for r in rows],
            scores=[1.0] * SAMPLE,
            reward_extra_infos_dict={"uid": [f"{i:032x}_0_0" for i in range(SAMPLE)]},
            dump_path=tmp,
            global_steps=1,
        )
        return (Path(tmp) / "1.jsonl").stat().st_size / SAMPLE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="0.5b")
    ap.add_argument("--algo", default=None, help="ppo or grpo (default: the preset's)")
    ap.add_argument("--response-chars", type=int, default=1000, help="mean response length")
    ap.add_argument("--train-rows", type=int, default=GenConfig().train_size)
    args = ap.parse_args()
    steps, per_step, n_per_prompt = stage_shape(args.size, args.algo, args.train_rows)
    n = steps * per_step
    compact = compact_bytes(steps, per_step, n_per_prompt, args.response_chars)
    raw = raw_bytes_per_sample(args.response_chars) * n
    print(f"{args.size}: {steps} steps x {per_step} samples = {n:,} samples per stage")
    print(f"  raw rollout dumps (until the stage ends): {human_bytes(raw)}")
    print(f"  compacted rollouts/<stage>.parquet:       {human_bytes(compact)} (upper estimate)")
    print(f"  ratio raw / compacted: {raw / compact:,.0f}")


if __name__ == "__main__":
    main()
