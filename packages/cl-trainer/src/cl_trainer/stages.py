"""The curriculum plan: every (round, group) stage in order, the models it starts from, its command.

:func:`stage_plan` is the one place that decides what each stage runs; ``cl-trainer plan`` prints
it and the engine executes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_rundir.layout import Stage
from cl_trainer.config import TrainerConfig, base_model_path
from cl_trainer.overrides import backend_prefix, stage_overrides
from cl_trainer.remedies import acting_on
from cl_trainer.verl_cpu import cpu_overlay


def uses_cpu_overlay(cfg: TrainerConfig) -> bool:
    """veRL's own trainer on the CPU: the stage command gets ``cl_trainer.verl_cpu``'s overlay."""
    return cfg.backend == "verl" and cfg.device == "cpu"


def plan_stages(cfg: TrainerConfig) -> list[Stage]:
    """Round-major order: every group of round 1, then every group of round 2, ..."""
    order = [(r, g) for r in range(1, cfg.rounds + 1) for g in cfg.groups]
    return [Stage(index=i, round=r, group=g) for i, (r, g) in enumerate(order)]


@dataclass(frozen=True)
class StagePlan:
    """What one stage runs: its start models (as passed to the backend) and its command."""

    stage: Stage
    actor: str
    critic: str | None
    argv: list[str]
    env: dict[str, str]


def stage_plan(
    cfg: TrainerConfig,
    *,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
) -> list[StagePlan]:
    """Every stage with its start models and exact command.

    The first stage starts from the base model; every later one from the previous stage's final
    export. PPO's critic starts from the stage's starting actor (``critic_init=actor``: a fresh
    value head, as the original experiments did) or from the previous stage's critic export
    (``chain``). ``env`` is the stage processes' environment (W&B); ``prefix`` replaces
    ``<python> -m <backend>``. With a weight remedy between stages, a stage starts from its
    ``metrics/initial_*``, where the engine writes the transformed model.
    """
    env = dict(env or {})
    head = prefix if prefix is not None else backend_prefix(cfg)
    overlay: list[str] = []
    if uses_cpu_overlay(cfg):
        overlay, overlay_env = cpu_overlay()
        env |= overlay_env
    plans: list[StagePlan] = []
    actor = base_model_path(cfg)
    transformed = bool(acting_on(cfg.between_stages, "weights"))
    for stage in plan_stages(cfg):
        if transformed and stage.index:
            actor = str(cfg.run_dir / stage.initial_model)
        critic = None
        if cfg.uses_critic:
            chained = cfg.critic_init == "chain" and plans
            critic = str(cfg.run_dir / plans[-1].stage.final_critic) if chained else actor
        argv = [
            *head,
            *stage_overrides(cfg, stage, actor_path=actor, critic_path=critic, wandb_env=env),
            *overlay,
        ]
        plans.append(StagePlan(stage, actor, critic, argv, env))
        actor = str(cfg.run_dir / stage.final_model)
    return plans
