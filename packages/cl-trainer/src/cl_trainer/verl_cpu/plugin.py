"""veRL plugin for GPU-less hosts; ``verl/__init__.py`` imports it (``VERL_USE_EXTERNAL_MODULES``).

Every process that imports veRL (the driver, the TaskRunner and each Ray worker, which inherit the
driver's environment) imports this module. If veRL's own probes find an accelerator
(``is_platform_available(use_smi_check=True)`` of its built-in platforms, the check veRL uses for
auto-detection), it does nothing. Otherwise it:

1. registers ``PlatformCPU`` as veRL platform ``cpu`` (selected by ``VERL_PLATFORM=cpu``);
2. registers the transformers rollout as ``actor_rollout_ref.rollout.name=hf_cpu`` in both of veRL's
   rollout registries (``workers/rollout/base.py`` ``_ROLLOUT_REGISTRY`` for the adapter built in
   the actor process, ``workers/rollout/replica.py`` ``RolloutReplicaRegistry`` for the servers);
3. loads the PPO critic with the configured attention (veRL's value-model loader hard-codes
   FlashAttention-2);
4. applies two torch workarounds that only matter without CUDA (dropping the repeated entry of
   the ``"cpu:gloo,cpu:gloo"`` backend veRL builds, and unpinned CPU offload policies).

Every veRL, Ray or torch internal touched here goes through ``cl_trainer.private_api``.
"""

from __future__ import annotations

from verl.plugin.platform import PlatformRegistry

from cl_trainer import private_api
from cl_trainer.verl_cpu import PLATFORM_NAME, ROLLOUT_NAME
from cl_trainer.verl_cpu.platform import PlatformCPU, accelerator_present


def _load_replica() -> type:
    from cl_trainer.verl_cpu.rollout import HFReplica

    return HFReplica


def install() -> bool:
    """Register the CPU platform and rollout, apply the workarounds; False on an accelerator."""
    if accelerator_present():
        return False
    PlatformRegistry.register(PLATFORM_NAME)(PlatformCPU)
    private_api.register_rollout(
        ROLLOUT_NAME, "cl_trainer.verl_cpu.rollout.HFServerAdapter", _load_replica
    )
    private_api.use_configured_attention_for_value_models()
    private_api.dedupe_process_group_backend()
    private_api.unpin_offload_policies()
    return True


INSTALLED = install()
