"""The curriculum plan: every (round, group) stage in order, and the paths each one owns."""

from __future__ import annotations

from dataclasses import dataclass

from cl_trainer.config import PROJECT_NAME, TrainerConfig


@dataclass(frozen=True)
class Stage:
    """One stage; all paths are relative to the run directory, as in run.json."""

    index: int
    round: int
    group: str

    @property
    def name(self) -> str:
        return f"R{self.round}_{self.group}"

    @property
    def experiment_name(self) -> str:
        return f"{PROJECT_NAME}_{self.name}"

    @property
    def log(self) -> str:
        return f"logs/{self.experiment_name}.log"

    @property
    def initial_model(self) -> str:
        return f"metrics/initial_{self.round}_{self.group}"

    @property
    def final_model(self) -> str:
        return f"metrics/final_{self.round}_{self.group}"

    @property
    def final_critic(self) -> str:
        """The critic's HF export (PPO), kept so the next stage's critic starts from it."""
        return f"critics/final_{self.round}_{self.group}"

    @property
    def checkpoint_dir(self) -> str:
        return f"checkpoints/{self.name}"


def plan_stages(cfg: TrainerConfig) -> list[Stage]:
    """Round-major order: every group of round 1, then every group of round 2, ..."""
    order = [(r, g) for r in range(1, cfg.rounds + 1) for g in cfg.groups]
    return [Stage(index=i, round=r, group=g) for i, (r, g) in enumerate(order)]
