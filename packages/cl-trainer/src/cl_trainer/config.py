"""The resolved trainer configuration and the veRL Hydra overrides built from it.

One function (`stage_overrides`) turns a stage into the override list that both backends receive
(`python -m verl.trainer.main_ppo ...` or `python -m cl_trainer.local ...`), so `cl-trainer plan`
prints exactly what `cl-trainer run` executes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cl_trainer.presets import PRESETS, TINY_MODEL_SENTINEL, Preset
from countdown_data.groups import GROUPS

BACKEND_MODULES = {"verl": "verl.trainer.main_ppo", "local": "cl_trainer.local"}
PROJECT_NAME = "ContinualCountdown"
REWARD_MODULE = "countdown_reward"
REWARD_FUNCTION = "compute_score_with_acc"
CHECKPOINT_SAVE_CONTENTS = "[model,optimizer,extra,hf_model]"
"""``hf_model`` makes veRL export ``global_step_N/<role>/huggingface``: the stage's final model."""
CHECKPOINT_LOAD_CONTENTS = "[model,optimizer,extra]"
BACKEND_CMD_ENV = "CL_TRAINER_BACKEND_CMD"
"""Replaces ``<python> -m <backend module>`` (shell words); the tests' stand-in for veRL uses it."""

NOT_COMPARED = ("out", "keep_checkpoints", "ray_address", "wandb")
"""Keys that may change between a run and its resume without changing what is trained."""


@dataclass
class TrainerConfig:
    """Everything that decides what a curriculum run trains; stored as run.json ``config``."""

    size: str
    backend: str
    algo: str
    rounds: int
    epochs: int
    groups: list[str]
    data_dir: str
    out: str
    model: str
    n_gpus_per_node: int
    nnodes: int
    ray_address: str | None
    tp: int
    train_batch_size: int
    ppo_mini_batch_size: int
    ppo_micro_batch_size_per_gpu: int
    max_prompt_length: int
    max_response_length: int
    rollout_n: int
    save_freq: int
    test_freq: int
    actor_lr: float
    critic_lr: float
    gpu_memory_utilization: float
    keep_checkpoints: int
    wandb: bool
    seed: int = 0
    preset_overrides: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    @property
    def n_gpus(self) -> int:
        return self.n_gpus_per_node * self.nnodes

    @property
    def uses_critic(self) -> bool:
        return self.algo == "ppo"

    @property
    def run_name(self) -> str:
        return f"{PROJECT_NAME}_{self.size}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def largest_divisor_at_most(n: int, cap: int) -> int:
    """Largest d <= cap with n % d == 0 (1 at worst)."""
    for d in range(min(n, cap), 0, -1):
        if n % d == 0:
            return d
    return 1


def resolve_config(
    size: str,
    *,
    backend: str | None = None,
    algo: str | None = None,
    rounds: int | None = None,
    epochs: int | None = None,
    groups: list[str] | None = None,
    data_dir: str | os.PathLike[str] = "data/continual",
    out: str | os.PathLike[str] | None = None,
    model: str | None = None,
    n_gpus_per_node: int | None = None,
    nnodes: int | None = None,
    ray_address: str | None = None,
    tp: int | None = None,
    train_batch_size: int | None = None,
    ppo_mini_batch_size: int | None = None,
    micro_batch_per_gpu: int | None = None,
    max_prompt_length: int | None = None,
    max_response_length: int | None = None,
    rollout_n: int | None = None,
    save_freq: int | None = None,
    test_freq: int | None = None,
    keep_checkpoints: int = 1,
    wandb: bool = True,
    seed: int = 0,
    overrides: list[str] | tuple[str, ...] = (),
) -> TrainerConfig:
    """Preset defaults, then options (``None``: the preset's); ``BASE_MODEL`` for the model."""
    preset: Preset = PRESETS[size]
    backend = backend or preset.backend
    algo = algo or preset.algo
    local = backend == "local"
    n_gpus_per_node = n_gpus_per_node or (1 if local else preset.n_gpus_per_node)
    nnodes = nnodes or 1
    tp = tp or (1 if local else preset.tp)
    rollout_n = 1 if algo == "ppo" else (rollout_n or preset.rollout_n)
    mini = ppo_mini_batch_size or preset.ppo_mini_batch_size
    if micro_batch_per_gpu is None:
        per_gpu_mini = max(1, mini * rollout_n // (n_gpus_per_node * nnodes))
        micro_batch_per_gpu = largest_divisor_at_most(per_gpu_mini, preset.micro_batch_per_gpu)
    model = model or os.environ.get("BASE_MODEL") or preset.model
    out_path = Path(out) if out is not None else Path("runs") / size
    return TrainerConfig(
        size=size,
        backend=backend,
        algo=algo,
        rounds=rounds or preset.rounds,
        epochs=epochs or preset.epochs,
        groups=list(groups) if groups else list(GROUPS),
        data_dir=str(Path(data_dir).expanduser().resolve()),
        out=str(out_path.expanduser().resolve()),
        model=_normalise_model(model),
        n_gpus_per_node=n_gpus_per_node,
        nnodes=nnodes,
        ray_address=ray_address,
        tp=tp,
        train_batch_size=train_batch_size or preset.train_batch_size,
        ppo_mini_batch_size=mini,
        ppo_micro_batch_size_per_gpu=micro_batch_per_gpu,
        max_prompt_length=max_prompt_length or preset.max_prompt_length,
        max_response_length=max_response_length or preset.max_response_length,
        rollout_n=rollout_n,
        save_freq=save_freq or preset.save_freq,
        test_freq=test_freq or preset.test_freq,
        actor_lr=preset.actor_lr,
        critic_lr=preset.critic_lr,
        gpu_memory_utilization=preset.gpu_memory_utilization,
        keep_checkpoints=keep_checkpoints,
        wandb=wandb,
        seed=seed,
        preset_overrides=list(preset.extra),
        overrides=list(overrides),
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(model: str) -> bool:
    """``owner/name`` that is not an existing local path: transformers downloads it."""
    return bool(_HUB_ID.match(model)) and not Path(model).exists()


def _normalise_model(model: str) -> str:
    """Local paths become absolute (stage commands run from anywhere); hub IDs stay as given."""
    if model == TINY_MODEL_SENTINEL or looks_like_hub_id(model):
        return model
    return str(Path(model).expanduser().resolve())


def tiny_model_dir(cfg: TrainerConfig) -> Path:
    """Where the tiny preset's base model is built (``cl_trainer.tiny.ensure_tiny_model``)."""
    return cfg.run_dir / "base_model"


def base_model_path(cfg: TrainerConfig) -> str:
    """The first stage's model as passed to the backend (the tiny model's dir for ``tiny``)."""
    return str(tiny_model_dir(cfg)) if cfg.model == TINY_MODEL_SENTINEL else cfg.model


def reward_module() -> str:
    """The reward as veRL's ``pkg://`` module reference.

    A ``pkg://`` path makes veRL ``importlib.import_module`` the installed package, so its relative
    imports work in every Ray worker; loading ``__init__.py`` by file path would break them.
    """
    if importlib.util.find_spec(REWARD_MODULE) is None:
        raise RuntimeError(f"{REWARD_MODULE} is not installed; run `uv sync` in the workspace")
    return f"pkg://{REWARD_MODULE}"


_PLAIN = re.compile(r"^[\w./@:+~-]+$")


def hydra_str(value: str) -> str:
    """Quote a string for a Hydra override value when it has characters Hydra's grammar reserves."""
    if _PLAIN.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def hydra_list(values: list[str]) -> str:
    return "[" + ",".join(hydra_str(v) for v in values) + "]"


def wandb_group(cfg: TrainerConfig) -> str:
    """One W&B group per curriculum run: its run name plus the run directory's name."""
    return f"{cfg.run_name}-{cfg.run_dir.name}" if cfg.run_dir.name != cfg.size else cfg.run_name


def stage_overrides(
    cfg: TrainerConfig,
    *,
    round_: int,
    group: str,
    actor_path: str,
    critic_path: str | None,
    wandb_env: dict[str, str] | None = None,
) -> list[str]:
    """The Hydra overrides for one stage, ending with the preset's and the user's own."""
    data = Path(cfg.data_dir)
    name = f"{round_}_{group}"
    micro = cfg.ppo_micro_batch_size_per_gpu
    ov = [
        f"data.train_files={hydra_str(str(data / group / 'train.parquet'))}",
        f"data.val_files={hydra_list([str(data / g / 'test.parquet') for g in cfg.groups])}",
        "data.prompt_key=prompt",
        f"data.max_prompt_length={cfg.max_prompt_length}",
        f"data.max_response_length={cfg.max_response_length}",
        f"data.train_batch_size={cfg.train_batch_size}",
        f"data.seed={cfg.seed}",
        f"actor_rollout_ref.model.path={hydra_str(actor_path)}",
        "actor_rollout_ref.model.use_remove_padding=True",
        f"actor_rollout_ref.actor.optim.lr={cfg.actor_lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={cfg.ppo_mini_batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.actor.checkpoint.save_contents={CHECKPOINT_SAVE_CONTENTS}",
        f"actor_rollout_ref.actor.checkpoint.load_contents={CHECKPOINT_LOAD_CONTENTS}",
        "actor_rollout_ref.rollout.name=vllm",
        f"actor_rollout_ref.rollout.tensor_model_parallel_size={cfg.tp}",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={cfg.gpu_memory_utilization}",
        f"actor_rollout_ref.rollout.n={cfg.rollout_n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro}",
    ]
    if cfg.algo == "ppo":
        # The original experiments' veRL applied the KL penalty in the reward (coef 0.001).
        ov += [
            "algorithm.adv_estimator=gae",
            "algorithm.use_kl_in_reward=True",
            "algorithm.kl_ctrl.kl_coef=0.001",
            "actor_rollout_ref.actor.use_kl_loss=False",
            f"critic.model.path={hydra_str(critic_path or actor_path)}",
            "critic.model.use_remove_padding=True",
            f"critic.optim.lr={cfg.critic_lr}",
            f"critic.ppo_micro_batch_size_per_gpu={micro}",
            f"critic.checkpoint.save_contents={CHECKPOINT_SAVE_CONTENTS}",
            f"critic.checkpoint.load_contents={CHECKPOINT_LOAD_CONTENTS}",
        ]
    else:
        ov += [
            "algorithm.adv_estimator=grpo",
            "algorithm.use_kl_in_reward=False",
            "actor_rollout_ref.actor.use_kl_loss=True",
            "actor_rollout_ref.actor.kl_loss_coef=0.001",
            "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        ]
    keep = max(1, cfg.keep_checkpoints)
    ov += [
        f"reward.custom_reward_function.path={reward_module()}",
        f"reward.custom_reward_function.name={REWARD_FUNCTION}",
        "trainer.val_before_train=True",
        f"trainer.test_freq={cfg.test_freq}",
        f"trainer.save_freq={cfg.save_freq}",
        f"trainer.total_epochs={cfg.epochs}",
        f"trainer.project_name={PROJECT_NAME}",
        f"trainer.experiment_name={PROJECT_NAME}_R{round_}_{group}",
        "trainer.logger=[console,wandb]" if cfg.wandb else "trainer.logger=[console]",
        f"trainer.default_local_dir={hydra_str(str(cfg.run_dir / 'checkpoints' / f'R{name}'))}",
        "trainer.resume_mode=auto",
        f"trainer.n_gpus_per_node={cfg.n_gpus_per_node}",
        f"trainer.nnodes={cfg.nnodes}",
        f"trainer.max_actor_ckpt_to_keep={keep}",
        f"trainer.max_critic_ckpt_to_keep={keep}",
    ]
    if cfg.ray_address:
        # A cluster started with `ray start` does not inherit this shell's environment.
        ov.append(f"+ray_kwargs.ray_init.address={hydra_str(cfg.ray_address)}")
        for key, value in sorted((wandb_env or {}).items()):
            ov.append(f"+ray_kwargs.ray_init.runtime_env.env_vars.{key}={hydra_str(value)}")
    return ov + cfg.preset_overrides + cfg.overrides


def backend_prefix(cfg: TrainerConfig) -> list[str]:
    """``<python> -m <module>`` for the backend, or the words of ``$CL_TRAINER_BACKEND_CMD``."""
    custom = os.environ.get(BACKEND_CMD_ENV)
    if custom:
        return shlex.split(custom)
    return [sys.executable, "-m", BACKEND_MODULES[cfg.backend]]


def format_command(argv: list[str], env: dict[str, str]) -> str:
    """A copy-pasteable shell command, one override per line."""
    head = [f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    words = [shlex.quote(w) for w in argv]
    first = " ".join([*head, *words[:3]])
    return " \\\n    ".join([first, *words[3:]])
