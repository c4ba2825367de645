"""W&B for the stage subprocess: one run per stage, grouped by curriculum run, never fatal."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from urllib.parse import urlparse

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
    An explicit ``WANDB_MODE`` in the environment is respected. ``WANDB_DIR`` is the run
    directory, so offline runs land in ``<run>/wandb/offline-run-*``, beside everything else of
    the run.

    The key itself is never passed on: a stage inherits this environment, and on a Ray cluster
    (``--ray-address``) every actor inherits its node's ``ray start`` environment, which carries
    the key (``deploy/compose.cluster.yaml``). So the key is in no job's runtime environment,
    which Ray's dashboard and state API show.
    """
    if not cfg.wandb:
        return {}
    mode = os.environ.get("WANDB_MODE") or (
        "online" if os.environ.get("WANDB_API_KEY") else "offline"
    )
    if mode == "online" and check_network and not _reachable():
        warn(
            "W&B server unreachable: logging offline (upload later with "
            f"`wandb sync {cfg.run_dir}/wandb/offline-run-*`)"
        )
        mode = "offline"
    return {
        "WANDB_MODE": mode,
        "WANDB_RUN_GROUP": wandb_group(cfg),
        "WANDB_DIR": str(cfg.run_dir),
    }
