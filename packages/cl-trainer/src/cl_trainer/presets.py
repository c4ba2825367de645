"""Model-size presets as data: each lists only the settings (``cl_trainer.config``) that differ
from the defaults, which are the original experiments' 0.5b settings."""

from __future__ import annotations

from typing import Any

TINY_MODEL_SENTINEL = "tiny:built-locally"
"""The ``tiny`` preset's model: built into the run directory by ``cl_trainer.local.tiny``."""

PRESETS: dict[str, dict[str, Any]] = {
    "0.5b": {
        "n_gpus_per_node": 2,
        "tp": 2,
    },
    "1.5b": {
        "model": "Qwen/Qwen2.5-1.5B",
        "n_gpus_per_node": 4,
        "tp": 4,
        "train_batch_size": 128,
        "ppo_mini_batch_size": 8,
        "ppo_micro_batch_size_per_gpu": 4,
    },
    "tiny": {
        "model": TINY_MODEL_SENTINEL,
        "backend": "local",
        "device": "cpu",
        "algo": "grpo",
        "train_batch_size": 8,
        "ppo_mini_batch_size": 8,
        "max_prompt_length": 96,
        "max_response_length": 48,
        "rounds": 1,
        "epochs": 1,
        "rollout_n": 8,
        "save_freq": 12,
        "test_freq": 1000,
        # A clear rise on ``plus`` within a stage; higher rates dip first, lower ones move less.
        "actor_lr": 1e-4,
        "critic_lr": 1e-4,
        # Validation: veRL's default, greedy, on all 400 test puzzles of every group that
        # `countdown-data gen --quick` writes: deterministic, and every accuracy's 95 % interval
        # is at most ±0.05.
        "preset_overrides": [
            "data.train_max_samples=96",
            "data.dataloader_num_workers=0",
        ],
    },
}

APPROX_PARAMS: dict[str, int] = {"0.5b": 494_000_000, "1.5b": 1_540_000_000, "tiny": 2_000_000}
"""Parameter counts, for the disk estimate while the model is still a hub ID (not on disk)."""
