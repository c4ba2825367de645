"""The wheel a user installs alone: no dependencies, typed, and its bench runs from it."""

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import countdown_reward.bench

PACKAGE = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is not on PATH (the README installs it: pip install uv)"
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [uv, "build", "--wheel", "--quiet", "--out-dir", str(out), str(PACKAGE)], check=True
    )
    (built,) = out.glob("countdown_reward-*.whl")
    return built


def test_wheel_has_no_dependencies_and_ships_py_typed(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        fields = Parser().parsestr(zf.read(metadata).decode())
    assert fields.get_all("Requires-Dist") is None
    assert "countdown_reward/py.typed" in names
    assert "countdown_reward/bench.py" in names


def test_wheel_works_alone_in_a_bare_environment(wheel: Path, tmp_path: Path) -> None:
    uv = os.environ.get("UV") or shutil.which("uv")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    # --no-index: nothing but the wheel itself may be installed
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--no-index", "--python", str(python), str(wheel)],
        check=True,
    )
    bench = subprocess.run(
        [str(python), "-m", "countdown_reward.bench"], capture_output=True, text=True, cwd=tmp_path
    )
    # the exit status says whether this machine met the speed goal: a bench's verdict, not a test's
    assert bench.returncode in (0, 1), bench.stderr
    for name in countdown_reward.bench.ADVERSARIAL:
        assert name in bench.stdout
    assert "responses/s" in bench.stdout
