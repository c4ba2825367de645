"""A stage's veRL Hydra overrides, and the command that runs them.

Both backends receive the same list (``python -m verl.trainer.main_ppo ...`` or
``python -m cl_trainer.local ...``), so ``cl-trainer plan`` prints exactly what ``run`` executes.
Settings that carry veRL keys in their declaration (``cl_trainer.config``) are passed through
unchanged; everything else here is the curriculum's structure (files, names, paths, algorithm).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from cl_rundir.layout import PROJECT, Stage
from cl_trainer.config import SETTINGS, TrainerConfig
from cl_trainer.remedies import acting_on
from cl_trainer.sizing import stage_steps
from countdown_data.dataset import read_manifest, split_path
from countdown_data.generate import GenConfig
from countdown_data.templates import COMPLETION_TEMPLATES, PASS_THROUGH_CHAT_TEMPLATE

BACKEND_MODULES = {"verl": "verl.trainer.main_ppo", "local": "cl_trainer.local"}
REWARD_MODULE = "countdown_reward"
REWARD_FUNCTION = "compute_score_with_acc"
CHECKPOINT_SAVE_CONTENTS = "[model,optimizer,extra,hf_model]"
"""``hf_model`` makes veRL export ``global_step_N/<role>/huggingface``: the stage's final model."""
CHECKPOINT_LOAD_CONTENTS = "[model,optimizer,extra]"
BACKEND_CMD_ENV = "CL_TRAINER_BACKEND_CMD"
"""Replaces ``<python> -m <backend module>`` (shell words); the tests' stand-in for veRL uses it."""


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


def hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        return hydra_str(value)
    return str(value)


def setting_overrides(cfg: TrainerConfig) -> list[str]:
    """``key=value`` for every setting declared with veRL keys (``critic.*`` only with a critic)."""
    out = []
    for f in SETTINGS:
        for key in f.metadata["verl"]:
            if key.startswith("critic.") and not cfg.uses_critic:
                continue
            out.append(f"{key}={hydra_value(getattr(cfg, f.name))}")
    return out


def data_template(data_dir: str | Path) -> str:
    """The prompt template the data was generated with (its manifest), else ``gen``'s default."""
    try:
        return str(read_manifest(Path(data_dir))["params"]["template"])
    except (OSError, ValueError, KeyError, TypeError):
        return GenConfig().template


def replayed_groups(cfg: TrainerConfig, stage: Stage) -> list[str]:
    """The groups a stage's remedies that act on data draw from: every group trained before it
    but its own (none without such a remedy)."""
    if not acting_on(cfg.between_stages, "data"):
        return []
    order = [g for _ in range(cfg.rounds) for g in cfg.groups][: stage.index]
    return [g for g in dict.fromkeys(order) if g != stage.group]


def train_file(cfg: TrainerConfig, stage: Stage) -> Path:
    """The stage's group's training split, or its replay mix (built by the engine)."""
    if replayed_groups(cfg, stage):
        return cfg.run_dir / stage.replay_file
    return split_path(Path(cfg.data_dir), stage.group, "train")


def critic_token_budget(cfg: TrainerConfig) -> int:
    """Tokens per GPU per critic forward/backward: the micro-batch of full-length sequences.

    veRL 0.9.1's v1 trainer batches the critic dynamically by this budget
    (``ppo_infer_max_token_len_per_gpu``), so its ``ppo_micro_batch_size_per_gpu`` has no effect.
    """
    return cfg.ppo_micro_batch_size_per_gpu * max_model_len(cfg)


def max_model_len(cfg: TrainerConfig) -> int:
    """The longest sequence a stage generates: a prompt and its answer."""
    return cfg.max_prompt_length + cfg.max_response_length


def wandb_group(cfg: TrainerConfig) -> str:
    """One W&B group per curriculum run: its run name plus the run directory's name."""
    return f"{cfg.run_name}-{cfg.run_dir.name}" if cfg.run_dir.name != cfg.size else cfg.run_name


def stage_overrides(
    cfg: TrainerConfig,
    stage: Stage,
    *,
    actor_path: str,
    critic_path: str | None,
    wandb_env: dict[str, str] | None = None,
) -> list[str]:
    """The Hydra overrides for one stage, ending with the preset's and the user's own."""
    run = cfg.run_dir
    ov = [
        f"data.train_files={hydra_str(str(train_file(cfg, stage)))}",
        "data.val_files="
        + hydra_list([str(split_path(Path(cfg.data_dir), g, "test")) for g in cfg.groups]),
        "data.prompt_key=prompt",
        f"actor_rollout_ref.model.path={hydra_str(actor_path)}",
        "actor_rollout_ref.model.use_remove_padding=True",
        f"actor_rollout_ref.actor.checkpoint.save_contents={CHECKPOINT_SAVE_CONTENTS}",
        f"actor_rollout_ref.actor.checkpoint.load_contents={CHECKPOINT_LOAD_CONTENTS}",
        "actor_rollout_ref.rollout.name=vllm",
        # vLLM's context is a prompt and its answer; unset, veRL passes the model's
        # max_position_embeddings (32k for Qwen2.5), and vLLM sizes and checks its KV cache for it.
        f"actor_rollout_ref.rollout.max_model_len={max_model_len(cfg)}",
        *setting_overrides(cfg),
    ]
    if cfg.max_steps is not None:
        # Never more than the stage's epochs hold: with more, veRL's loop ends on the epoch count
        # before its last step, so the stage's final checkpoint and validation would be missing.
        ov.append(f"trainer.total_training_steps={stage_steps(cfg, stage.group)}")
    if data_template(cfg.data_dir) in COMPLETION_TEMPLATES:
        ov.append(
            "actor_rollout_ref.model.custom_chat_template=" + hydra_str(PASS_THROUGH_CHAT_TEMPLATE)
        )
    if cfg.uses_critic:
        # The original experiments' veRL applied the KL penalty in the reward (coef 0.001).
        ov += [
            "algorithm.adv_estimator=gae",
            "algorithm.use_kl_in_reward=True",
            "algorithm.kl_ctrl.kl_coef=0.001",
            "actor_rollout_ref.actor.use_kl_loss=False",
            f"critic.model.path={hydra_str(critic_path or actor_path)}",
            "critic.model.use_remove_padding=True",
            f"critic.checkpoint.save_contents={CHECKPOINT_SAVE_CONTENTS}",
            f"critic.checkpoint.load_contents={CHECKPOINT_LOAD_CONTENTS}",
            # Not in critic.yaml, only in veRL's CriticConfig: "++" adds or overrides it.
            f"++critic.ppo_infer_max_token_len_per_gpu={critic_token_budget(cfg)}",
            f"critic.ppo_max_token_len_per_gpu={critic_token_budget(cfg)}",
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
        f"trainer.project_name={PROJECT}",
        f"trainer.experiment_name={stage.experiment_name}",
        "trainer.logger=[console,wandb]" if cfg.wandb else "trainer.logger=[console]",
        f"trainer.default_local_dir={hydra_str(str(run / stage.checkpoint_dir))}",
        f"trainer.validation_data_dir={hydra_str(str(run / stage.validation_dir))}",
        "trainer.resume_mode=auto",
        f"trainer.max_actor_ckpt_to_keep={keep}",
        f"trainer.max_critic_ckpt_to_keep={keep}",
        # Hydra writes outputs/<date>/<time>/ under the working directory unless told otherwise.
        f"hydra.run.dir={hydra_str(str(run / stage.hydra_dir))}",
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
