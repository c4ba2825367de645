"""veRL's own ``ppo_trainer`` Hydra config, composed with the veRL backend's overrides."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

CRITIC_ESTIMATORS = frozenset({"gae"})
"""Estimators that need a value model; the local backend trains no critic."""


THREADS_ENV = "CL_LOCAL_THREADS"
MAX_DEFAULT_THREADS = 2


class LocalConfigError(ValueError):
    """A configuration the local backend cannot run (one line, naming the fix)."""


def cpu_threads() -> int:
    """Torch threads on the CPU: ``CL_LOCAL_THREADS``, else 2 when this process may use 3 or more
    cores, else 1.

    Measured side by side on a 2-core machine: 2 threads made a testbed stage 1.4-1.7x faster
    than 1 while nothing else ran, but OpenMP threads spin while they wait for each other, so
    with one other busy process on the machine 2 threads made steps several (up to 20) times
    slower. One core is therefore left to the rest of the machine by default (set
    ``CL_LOCAL_THREADS=2`` on an otherwise idle 2-core machine); more than 2 threads were not
    measured to help a model this small.
    """
    value = os.environ.get(THREADS_ENV)
    if value:
        if not value.isdigit() or int(value) < 1:
            raise LocalConfigError(f"{THREADS_ENV}={value}: use a whole number of threads, >= 1")
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(MAX_DEFAULT_THREADS, (cores or 1) - 1))


def verl_config_dir() -> Path:
    """veRL's Hydra configs, found without importing veRL (which imports torch)."""
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        raise LocalConfigError("veRL is not installed: run `uv sync --locked`")
    return Path(spec.submodule_search_locations[0]) / "trainer" / "config"


def compose(overrides: Sequence[str]) -> DictConfig:
    """Compose ``ppo_trainer.yaml`` from the installed veRL, exactly as ``main_ppo`` would.

    An override naming a key veRL does not have fails here, as it would under veRL.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        cfg = hydra_compose(config_name="ppo_trainer", overrides=list(overrides))
    _migrate_custom_reward(cfg)
    check(cfg)
    return cfg


def _migrate_custom_reward(cfg: DictConfig) -> None:
    """veRL 0.9.1 moves the legacy top-level ``custom_reward_function`` under ``reward``."""
    legacy = cfg.get("custom_reward_function")
    if legacy is not None and legacy.get("path"):
        with open_dict(cfg):
            cfg.reward.custom_reward_function = OmegaConf.to_container(legacy, resolve=True)


def check(cfg: DictConfig) -> None:
    """Reject what the local loop would silently get wrong, with the fix in the message."""
    estimator = str(cfg.algorithm.adv_estimator)
    if estimator in CRITIC_ESTIMATORS:
        raise LocalConfigError(
            f"the local backend trains no critic, so algorithm.adv_estimator={estimator} is not "
            "supported; use algorithm.adv_estimator=grpo (cl-trainer --algo grpo) or --backend verl"
        )
    from verl.trainer.ppo import core_algos

    core_algos.get_adv_estimator_fn(estimator)
    if not cfg.actor_rollout_ref.model.path:
        raise LocalConfigError("actor_rollout_ref.model.path is required")
    if not cfg.data.train_files or not cfg.data.val_files:
        raise LocalConfigError("data.train_files and data.val_files are required")
    if cfg.actor_rollout_ref.rollout.n < 1:
        raise LocalConfigError("actor_rollout_ref.rollout.n must be >= 1")
    if cfg.data.train_batch_size % cfg.actor_rollout_ref.actor.ppo_mini_batch_size:
        raise LocalConfigError(
            f"data.train_batch_size={cfg.data.train_batch_size} must be a multiple of "
            f"actor_rollout_ref.actor.ppo_mini_batch_size={cfg.actor_rollout_ref.actor.ppo_mini_batch_size}"
        )
    if cfg.trainer.resume_mode not in ("auto", "disable", "resume_path"):
        raise LocalConfigError(
            f"trainer.resume_mode={cfg.trainer.resume_mode}: use auto, disable or resume_path"
        )


def as_list(files: str | Sequence[str]) -> list[str]:
    return [files] if isinstance(files, str) else [str(f) for f in files]
