"""Model-size presets as data: each lists only the settings (``cl_trainer.config``) that differ
from the defaults, which are the original experiments' 0.5b settings. ``tiny`` is the README's
CPU demo (one round), ``testbed`` the CPU curriculum in which every group is learned (the
original's 3 rounds)."""

from __future__ import annotations

from typing import Any

TINY_MODEL_SENTINEL = "tiny:built-locally"
"""The ``tiny`` preset's model: built into the run directory by ``cl_trainer.local.tiny``."""

_BUILT_LOCALLY: dict[str, Any] = {
    "model": TINY_MODEL_SENTINEL,
    "backend": "local",
    "device": "cpu",
    "algo": "grpo",
    "max_prompt_length": 96,
    "max_response_length": 48,
    "epochs": 1,
    "rollout_n": 8,
    # Validation at the end only, veRL's default way: greedy, on every test puzzle the data has
    # (400 per group from their data commands: an accuracy's 95 % interval is at most ±0.05).
    "test_freq": 1000,
}
"""What the CPU presets share: a character-level Qwen2 built in the run directory, one process."""

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
        **_BUILT_LOCALLY,
        "rounds": 1,  # a demo of minutes
        "train_batch_size": 8,
        "ppo_mini_batch_size": 8,
        "save_freq": 12,
        # A clear rise on ``plus`` within a stage; higher rates dip first, lower ones move less.
        "actor_lr": 1e-4,
        "critic_lr": 1e-4,
        "preset_overrides": ["data.train_max_samples=96", "data.dataloader_num_workers=0"],
    },
    "testbed": {
        **_BUILT_LOCALLY,
        # 3 rounds (12 stages), the original design: does a return to a group gain less?
        # 32 prompts x 8 rollouts per step in 4 updates of 8 prompts: with 8 prompts per step no
        # group but plus moved within a stage.
        "train_batch_size": 32,
        "ppo_mini_batch_size": 8,
        "save_freq": 15,
        "actor_lr": 2e-4,
        "critic_lr": 2e-4,
        "preset_overrides": ["data.train_max_samples=480", "data.dataloader_num_workers=0"],
    },
}

DATA_COMMANDS: dict[str, str] = {
    "tiny": "countdown-data gen --quick --template compact",
    "testbed": "countdown-data gen --profile small",
}
"""What writes each preset's data (any other: ``countdown-data gen``)."""

APPROX_PARAMS: dict[str, int] = {
    "0.5b": 494_000_000,
    "1.5b": 1_540_000_000,
    "tiny": 2_000_000,
    "testbed": 2_000_000,
}
"""Parameter counts, for the disk estimate while the model is still a hub ID (not on disk)."""
