from __future__ import annotations

from pathlib import Path

import pytest

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
    """A small data set written by the CLI (read-only for tests: copy before corrupting)."""
    from click.testing import CliRunner

    from countdown_data.cli import main

    out = tmp_path_factory.mktemp("data") / "continual"
    res = CliRunner().invoke(
        main,
        [
            "gen",
            "--out",
            str(out),
            "--train-size",
            "300",
            "--test-size",
            "60",
            "--seed",
            "7",
            "--workers",
            "1",
        ],
    )
    assert res.exit_code == 0, res.output
    return out
