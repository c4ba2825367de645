from __future__ import annotations

from pathlib import Path

import pytest

from countdown_data.dataset import write_dataset
from countdown_data.generate import GenConfig, generate

SMALL = GenConfig(train_size=300, test_size=60, seed=7)


@pytest.fixture(scope="session")
def small_cfg() -> GenConfig:
    return SMALL


@pytest.fixture(scope="session")
def small_data():
    """One small generated set shared by the guarantee tests."""
    return generate(SMALL, workers=1)


@pytest.fixture(scope="session")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small data set on disk, with its manifest (read-only for tests: copy before corrupting)."""
    out = tmp_path_factory.mktemp("data") / "continual"
    write_dataset(SMALL, out)
    return out
