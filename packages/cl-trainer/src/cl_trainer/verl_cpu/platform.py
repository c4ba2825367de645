"""veRL's platform for a machine without accelerators: device ``cpu``, collectives over gloo.

veRL 0.9.1 resolves its device through ``verl.plugin.platform.get_platform()``; with no
CUDA/NPU/ROCm it falls back to ``nvidia`` (``plugin/platform/platform_manager.py``,
``_detect_platform_name``) and the first ``torch.cuda`` call fails. This platform is registered
as ``cpu`` and chosen with ``VERL_PLATFORM=cpu``. Choices that are not obvious:

- ``current_device()`` returns the string ``"cpu"``, not an index: veRL passes it straight to
  ``.to(get_device_id())`` (``workers/engine/fsdp/transformer_impl.py``, ``utils/fsdp_utils.py``),
  where an integer would mean ``cuda:<i>``.
- ``ray_resource_name()`` stays ``"GPU"``: veRL's placement groups and its resource check
  (``single_controller/ray/base.py``, ``RayResourcePool.get_placement_groups`` and
  ``ResourcePoolManager._check_resource_available``) only know GPU/NPU slots, so the overlay
  declares logical GPUs to Ray (one per training process) and nothing ever touches CUDA.
- ``device_module`` is a small module of no-ops and host-memory figures over ``torch.cpu``, which
  lacks what veRL calls on every step (``empty_cache``, ``memory_allocated``, ``mem_get_info``,
  ``get_device_name`` for ``utils/flops_counter.py``, ...).
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry


def _host_memory() -> tuple[int, int]:
    """(available, total) bytes of host memory, what ``mem_get_info`` means for this device."""
    page = os.sysconf("SC_PAGE_SIZE")
    return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


def _zero(*_args: Any, **_kwargs: Any) -> int:
    return 0


class _CPUDeviceModule(types.ModuleType):
    """``torch.cpu`` plus the ``torch.cuda`` functions veRL calls through ``get_torch_device()``."""

    def __init__(self) -> None:
        super().__init__("cl_trainer.verl_cpu.device")
        self.empty_cache = _noop
        self.ipc_collect = _noop
        self.set_per_process_memory_fraction = _noop
        self.reset_peak_memory_stats = _noop
        self.memory_allocated = _zero
        self.memory_reserved = _zero
        self.max_memory_allocated = _zero
        self.max_memory_reserved = _zero
        self.mem_get_info = lambda *_a: _host_memory()
        self.get_device_name = lambda *_a: "CPU"
        self.get_rng_state = lambda *_a: torch.get_rng_state()
        self.set_rng_state = lambda state, *_a: torch.set_rng_state(state)
        self.manual_seed = torch.manual_seed
        self.manual_seed_all = torch.manual_seed

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)


class PlatformCPU(PlatformBase):
    """Host CPU as veRL's device; registered as ``cpu`` by ``cl_trainer.verl_cpu.plugin``."""

    _device_module = _CPUDeviceModule()

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        return self._device_module

    def is_available(self) -> bool:
        return True

    def current_device(self) -> str:  # veRL annotates int; see the module docstring
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> None:
        return None


def accelerator_present() -> bool:
    """Whether any platform veRL ships with (CUDA, ROCm, Ascend NPU) is usable on this host.

    veRL's probes answer False when their device is absent; one that raises is a broken install,
    which should stop the run here rather than be taken for "no accelerator".
    """
    for name in PlatformRegistry.registered_names():
        platform_cls = PlatformRegistry.get(name)
        if platform_cls is PlatformCPU or platform_cls is None:
            continue
        if platform_cls().is_platform_available(use_smi_check=True):
            return True
    return False
