"""veRL plugin for GPU-less hosts; ``verl/__init__.py`` imports it (``VERL_USE_EXTERNAL_MODULES``).

Every process that imports veRL (the driver, the TaskRunner and each Ray worker, which inherit the
driver's environment) imports this module. If veRL's own probes find an accelerator
(``is_platform_available(use_smi_check=True)`` of its built-in platforms, the check veRL uses for
auto-detection), it does nothing. Otherwise it:

1. registers ``PlatformCPU`` as veRL platform ``cpu`` (selected by ``VERL_PLATFORM=cpu``);
2. registers the transformers rollout as ``actor_rollout_ref.rollout.name=hf_cpu`` in both of veRL's
   rollout registries (``workers/rollout/base.py`` ``_ROLLOUT_REGISTRY`` for the adapter built in
   the actor process, ``workers/rollout/replica.py`` ``RolloutReplicaRegistry`` for the servers);
3. applies two torch workarounds that only matter without CUDA:
   - ``utils/distributed.py`` (``initialize_global_process_group_ray``) builds the backend string
     ``f"cpu:gloo,{device}:{backend}"``, i.e. ``"cpu:gloo,cpu:gloo"`` here, which
     ``torch.distributed.init_process_group`` rejects as a duplicate device; repeated entries are
     dropped before torch sees them;
   - the FSDP2 reference model is always built with ``CPUOffloadPolicy(pin_memory=True)``
     (``workers/engine/fsdp/transformer_impl.py``, ``_build_fsdp_module``) and pinning host memory
     needs a CUDA driver; with none, offload policies are created unpinned.
"""

from __future__ import annotations

import functools
from typing import Any

from verl.plugin.platform import PlatformRegistry

from cl_trainer.verl_cpu import PLATFORM_NAME, ROLLOUT_NAME
from cl_trainer.verl_cpu.platform import PlatformCPU


def accelerator_present() -> bool:
    """Whether any platform veRL ships with (CUDA, ROCm, Ascend NPU) is usable on this host."""
    for name in PlatformRegistry.registered_names():
        platform_cls = PlatformRegistry.get(name)
        if platform_cls is PlatformCPU or platform_cls is None:
            continue
        try:
            if platform_cls().is_platform_available(use_smi_check=True):
                return True
        except Exception:
            continue
    return False


def dedupe_backend(backend: Any) -> Any:
    """``"cpu:gloo,cpu:gloo"`` -> ``"cpu:gloo"``; anything else unchanged."""
    if not isinstance(backend, str) or "," not in backend:
        return backend
    return ",".join(dict.fromkeys(part.strip() for part in backend.split(",")))


def _patch_init_process_group() -> None:
    import torch.distributed as dist

    original = dist.init_process_group
    if getattr(original, "_cl_trainer_dedupes_backend", False):
        return

    @functools.wraps(original)
    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        if args:
            args = (dedupe_backend(args[0]), *args[1:])
        if "backend" in kwargs:
            kwargs["backend"] = dedupe_backend(kwargs["backend"])
        return original(*args, **kwargs)

    init_process_group._cl_trainer_dedupes_backend = True  # type: ignore[attr-defined]
    dist.init_process_group = init_process_group


def _patch_offload_pinning() -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy

    original = CPUOffloadPolicy.__init__
    if getattr(original, "_cl_trainer_unpinned", False):
        return

    @functools.wraps(original)
    def __init__(self: Any, pin_memory: bool = True) -> None:
        original(self, pin_memory=False)

    __init__._cl_trainer_unpinned = True  # type: ignore[attr-defined]
    CPUOffloadPolicy.__init__ = __init__  # type: ignore[method-assign]


def _load_replica() -> type:
    from cl_trainer.verl_cpu.rollout import HFReplica

    return HFReplica


def install() -> bool:
    """Register the CPU platform and rollout, apply the workarounds; False on an accelerator."""
    if accelerator_present():
        return False
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    PlatformRegistry.register(PLATFORM_NAME)(PlatformCPU)
    _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "cl_trainer.verl_cpu.rollout.HFServerAdapter"
    RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)
    _patch_init_process_group()
    _patch_offload_pinning()
    return True


INSTALLED = install()
