"""The continual curriculum on veRL: settings, presets and the stage plan that the engine runs."""

from cl_trainer.config import TrainerConfig, resolve_config
from cl_trainer.errors import TrainerError
from cl_trainer.presets import PRESETS
from cl_trainer.stages import StagePlan, stage_plan

__all__ = [
    "PRESETS",
    "StagePlan",
    "TrainerConfig",
    "TrainerError",
    "resolve_config",
    "stage_plan",
]
