"""The KL penalty's reference policy (``--reference``), as both backends are told it.

veRL's KL penalty (in the reward for PPO, in the loss for GRPO) compares the actor with a frozen
reference policy, which veRL loads from the actor's own ``actor_rollout_ref.model.path``: the
stage's starting model (``--reference stage``). ``--reference base`` names the curriculum's base
model in ``$CL_TRAINER_REFERENCE_MODEL`` for every stage; the local backend loads its reference
from there, and veRL does through ``cl_trainer.verl_reference``, which the same environment makes
every veRL process import. Nothing here imports veRL or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cl_trainer.private_api import EXTERNAL_MODULES_ENV

if TYPE_CHECKING:
    from cl_trainer.config import TrainerConfig

REFERENCE_MODEL_ENV = "CL_TRAINER_REFERENCE_MODEL"
"""The reference policy's weights (an HF model directory or hub ID); unset: the actor's start."""
VERL_PLUGIN = "cl_trainer.verl_reference"


def reference_env(cfg: TrainerConfig, base: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` plus what a stage needs for ``cfg.reference`` (nothing for ``stage``); ``base``:
    the base model as passed to the backend."""
    if cfg.reference != "base":
        return env
    modules = [m for m in env.get(EXTERNAL_MODULES_ENV, "").split(",") if m]
    if cfg.backend == "verl" and VERL_PLUGIN not in modules:
        env = {**env, EXTERNAL_MODULES_ENV: ",".join([*modules, VERL_PLUGIN])}
    return {**env, REFERENCE_MODEL_ENV: base}
