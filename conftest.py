"""Settings and fixtures shared by every package's tests."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests check behaviour; speed is measured by bench/ scripts, and a per-example deadline
# only turns a loaded machine into a failure.
settings.register_profile("project", deadline=None)
settings.load_profile("project")


@pytest.fixture(scope="session")
def verl_line() -> Callable[[dict, int], str]:
    """veRL's own ``concat_dict_to_str`` (cl-rundir reads its lines, cl-eval's tests write
    them), loaded from its file: importing ``verl`` takes ~30 s."""
    spec = importlib.util.find_spec("verl")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "utils/logger/aggregate_logger.py"
    mod_spec = importlib.util.spec_from_file_location("_verl_aggregate_logger", path)
    assert mod_spec and mod_spec.loader
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.concat_dict_to_str
