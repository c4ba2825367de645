"""W&B for the stage subprocess: one run per stage, grouped by curriculum run, never fatal."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from urllib.parse import urlparse

from cl_trainer import private_api
from cl_trainer.config import TrainerConfig
from cl_trainer.overrides import wandb_group


def _reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_env(
    cfg: TrainerConfig,
    *,
    check_network: bool = False,
    warn: Callable[[str], None] = print,
) -> dict[str, str]:
    """Environment for the stage process: WANDB_MODE, WANDB_RUN_GROUP, WANDB_DIR.

    Online only with ``WANDB_API_KEY`` and (when ``check_network``) a reachable server, because
    veRL's tracker raises if ``wandb.init`` cannot connect and that would kill the stage.
    An explicit ``WANDB_MODE`` in the environment is respected.
    """
    if not cfg.wandb:
        return {}
    mode = os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline"
    )
    if mode == "online" and check_network and not _reachable():
        warn("W&B server unreachable: logging offline (upload later with `wandb sync`)")
        mode = "offline"
    return {
        "WANDB_MODE": mode,
        "WANDB_RUN_GROUP": wandb_group(cfg),
        "WANDB_DIR": str(cfg.run_dir),
    }


def secret_env(cfg: TrainerConfig, env: dict[str, str]) -> dict[str, str]:
    """The W&B key for a stage whose actors run on a Ray cluster (``--ray-address``).

    Such actors do not inherit this shell's environment, and anything in veRL's argv or its
    ``ray_init`` config ends up printed in the stage log. So the key travels in Ray's job config
    variable (what ``ray job submit`` sets): ``ray.init`` merges its runtime env into the job's
    without printing it. Only when W&B is online; never part of ``plan``'s output.
    """
    job_var = private_api.ray_job_config_env()
    key = os.environ.get("WANDB_API_KEY")
    if not (cfg.ray_address and key and env.get("WANDB_MODE") == "online"):
        return {}
    job = json.loads(os.environ.get(job_var) or "{}")
    job.setdefault("runtime_env", {}).setdefault("env_vars", {})["WANDB_API_KEY"] = key
    return {job_var: json.dumps(job)}
