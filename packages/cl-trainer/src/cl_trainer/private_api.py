"""Everything veRL 0.9.1, Ray and torch do not promise that cl-trainer relies on, in one place.

A private symbol, an undocumented behaviour or a number read off the installed source: each is
used only through this module, and ``packages/cl-trainer/tests/test_private_api.py`` checks each
one against the installed versions, so a patch release that changes one fails a test by name
instead of hanging, ignoring a setting or quietly doing something else. Imports are lazy: the
constants are read by code that must stay cheap (``cl_trainer.verl_cpu.cpu_overlay``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

# ------------------------------------------------------------------ constants read off the source

BUNDLE_CPUS = 3
"""Ray CPUs each GPU's placement bundle reserves for the whole run: the default
``max_colocate_count`` of ``ResourcePoolManager`` (``single_controller/ray/base.py``), which the
v1 trainer constructs without one (``trainer/ppo/v1/trainer_base.py``)."""

TQ_ACTOR_CPUS = 1
"""Ray CPUs the TransferQueue controller and each SimpleStorage unit hold for the whole run
(``@ray.remote(num_cpus=1)``: ``transfer_queue/controller.py``, ``storage/simple_storage.py``)."""

PLACEMENT_CPUS = 1
"""A free CPU every other actor (TaskRunner, workers of the agent loop and reward, rollout servers)
needs to be placed: Ray actors without ``num_cpus`` take 1 CPU to schedule and 0 to run."""

TQ_STORAGE_UNITS_KEY = "transfer_queue.backend.SimpleStorage.num_data_storage_units"
"""The number of TransferQueue storage units in veRL's configuration (8 by default)."""

EXTERNAL_MODULES_ENV = "VERL_USE_EXTERNAL_MODULES"
"""Modules ``verl/__init__.py`` imports in every process: how our CPU plugin gets loaded."""
PLATFORM_ENV = "VERL_PLATFORM"
"""Selects a registered platform by name (``plugin/platform/platform_manager.py``)."""
ENGINE_DEVICE_ENV = "VERL_ENGINE_DEVICE"
ENGINE_VENDOR_ENV = "VERL_ENGINE_VENDOR"
"""Override the device and vendor ``EngineRegistry.get_engine_cls`` looks up
(``workers/engine/base.py``); its FSDP engines are registered for cuda and npu only."""
VERL_ENV_VARS = (EXTERNAL_MODULES_ENV, PLATFORM_ENV, ENGINE_DEVICE_ENV, ENGINE_VENDOR_ENV)


# ------------------------------------------------------------------------------- veRL's trainer


def val_metrics(
    data_sources: list[str], sample_uids: list[str], infos: dict[str, list[Any]]
) -> dict[str, Any]:
    """veRL's own naming of the ``val-core``/``val-aux`` metrics of one validation.

    ``RayPPOTrainer._val_metrics_update`` reads nothing of its instance, so it is called unbound.
    """
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    return RayPPOTrainer._val_metrics_update(None, data_sources, sample_uids, infos, [])


def write_generations(
    *,
    inputs: list[str],
    outputs: list[str],
    gts: list[Any],
    scores: list[float],
    reward_extra_infos_dict: dict[str, list[Any]],
    dump_path: str,
    global_steps: int,
) -> None:
    """veRL's writer of ``<dump_path>/<step>.jsonl`` (validation and rollout dumps alike):
    the v1 trainer's static ``_write_generations``."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    PPOTrainer._write_generations(
        inputs=inputs,
        outputs=outputs,
        gts=gts,
        scores=scores,
        reward_extra_infos_dict=reward_extra_infos_dict,
        dump_path=dump_path,
        global_steps=global_steps,
    )


# --------------------------------------------------------------------------------- the rollout


def register_rollout(name: str, adapter_fqn: str, load_replica: Callable[[], type]) -> None:
    """Make ``actor_rollout_ref.rollout.name=<name>`` resolve in both of veRL's registries.

    The adapter (built in the actor process by ``get_rollout_class``) has no registration API:
    ``workers/rollout/base.py`` keeps a module dict keyed by ``(name, "async")``. The replica
    registry (``workers/rollout/replica.py``) has one.
    """
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    _ROLLOUT_REGISTRY[(name, "async")] = adapter_fqn
    RolloutReplicaRegistry.register(name, load_replica)


def set_replica_server(replica: Any, server: Any, address: str) -> None:
    """Record a replica's one server the way ``RolloutReplica`` subclasses must: the
    ``server_handle``/``server_address`` properties read private attributes, and every
    wake/sleep/abort call iterates ``servers``."""
    replica.servers = [server]
    replica._server_handle = server
    replica._server_address = address


def update_weights_keywords() -> frozenset[str]:
    """The keywords our rollout adapter's ``update_weights`` takes: exactly those
    ``ActorRolloutRefWorker.update_weights`` passes (``workers/engine_workers.py``), so an
    argument added there is a TypeError here instead of being dropped."""
    return frozenset({"peft_config", "base_sync_done", "global_steps"})


# ------------------------------------------------------------------------------ model loading


def load_value_model(local_path: str, torch_dtype: Any, model_config: Any, trust_remote_code: bool):
    """``verl.utils.model.load_valuehead_model`` with the configured attention.

    veRL's loader hard-codes ``attn_implementation="flash_attention_2"`` and falls back to ``trl``
    (``utils/model.py``); this one honours ``critic.model.override_config.attn_implementation``
    (already in ``model_config``, veRL's ``HFModelConfig.hf_config``) and has no fallback.
    """
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(
        pretrained_model_name_or_path=local_path,
        dtype=torch_dtype,
        config=model_config,
        attn_implementation=model_config._attn_implementation,
        trust_remote_code=trust_remote_code,
    )


def use_configured_attention_for_value_models() -> None:
    """Swap ``load_value_model`` in for veRL's: the FSDP engine's ``_build_module``
    (``workers/engine/fsdp/transformer_impl.py``) imports the loader from ``verl.utils.model``
    each time it builds a critic, so replacing the module attribute reaches it."""
    import verl.utils.model

    verl.utils.model.load_valuehead_model = load_value_model


# -------------------------------------------------------------------------- torch without CUDA


def _wrap_once(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    original = getattr(owner, name)
    if getattr(original, "_cl_trainer_wrapped", False):
        return
    wrapped = functools.wraps(original)(make(original))
    wrapped._cl_trainer_wrapped = True
    setattr(owner, name, wrapped)


def dedupe_backend(backend: Any) -> Any:
    """``"cpu:gloo,cpu:gloo"`` -> ``"cpu:gloo"``; anything else unchanged."""
    if not isinstance(backend, str) or "," not in backend:
        return backend
    return ",".join(dict.fromkeys(part.strip() for part in backend.split(",")))


def dedupe_process_group_backend() -> None:
    """veRL builds ``f"cpu:gloo,{device}:{backend}"`` (``utils/distributed.py``), i.e.
    ``"cpu:gloo,cpu:gloo"`` on the CPU, which ``torch.distributed.init_process_group`` rejects;
    repeated entries are dropped before torch sees them."""
    import torch.distributed as dist

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def init_process_group(*args: Any, **kwargs: Any) -> Any:
            if args:
                args = (dedupe_backend(args[0]), *args[1:])
            if "backend" in kwargs:
                kwargs["backend"] = dedupe_backend(kwargs["backend"])
            return original(*args, **kwargs)

        return init_process_group

    _wrap_once(dist, "init_process_group", make)


def unpin_offload_policies() -> None:
    """veRL builds FSDP2's reference model with ``CPUOffloadPolicy(pin_memory=True)``
    (``transformer_impl.py``, ``_build_fsdp_module``); pinning host memory needs a CUDA driver.
    ``CPUOffloadPolicy`` is a dataclass whose only field is ``pin_memory``."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def __init__(self: Any, pin_memory: bool = True) -> None:
            original(self, pin_memory=False)

        return __init__

    _wrap_once(CPUOffloadPolicy, "__init__", make)


# ------------------------------------------------------------------------------------------ Ray


def ray_node_cpus() -> float:
    """The logical CPUs ``ray.init()`` gives a node it starts without ``num_cpus``: Ray's own
    count (``ray._private.utils.get_num_cpus``: the cgroup's CPU quota in a container, else the
    machine's CPUs), which ``ResourceAndLabelSpec`` uses."""
    from ray._private.utils import get_num_cpus

    return float(get_num_cpus(override_docker_cpu_warning=True))
