"""TRL's GRPOTrainer trains with countdown-reward exactly as the package README shows it, and the
rewards TRL logs are what ``verify()`` says of the completions TRL generated.

TRL runs in an overlay environment: a virtual environment holding only the trl wheel that uv.lock
pins (the ``trl`` dependency group), whose Python also sees the workspace's packages. So TRL runs
with the workspace's torch and transformers, and the workspace itself never holds trl (veRL 0.9.1
changes its model loading when trl is importable; see pyproject.toml). Installing the wheel needs
PyPI, as the README's install does.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pytest

from countdown_reward import verify

ROOT = Path(__file__).resolve().parents[1]
CLIENT = Path(__file__).with_name("trl_client.py")


def _locked_trl() -> str:
    """``trl==<version> --hash=sha256:...`` as uv.lock pins it."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (package,) = (p for p in lock["package"] if p["name"] == "trl")
    (wheel,) = package["wheels"]
    return f"trl=={package['version']} --hash={wheel['hash']}"


def _overlay(path: Path) -> Path:
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is not on PATH (the README installs it: pip install uv)"
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(path)], check=True)
    python = path / "bin" / "python"
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run([python, "-c", query], capture_output=True, text=True, check=True)
    workspace = sysconfig.get_paths()["purelib"]
    # addsitedir, not a bare path: the workspace's own .pth files (editable members) must apply
    pth = Path(purelib.stdout.strip(), "workspace.pth")
    pth.write_text(f"import site; site.addsitedir({workspace!r})\n")
    requirement = path / "trl.txt"
    requirement.write_text(_locked_trl() + "\n")
    install = [uv, "pip", "install", "--quiet", "--no-deps", "--require-hashes"]
    subprocess.run([*install, "--python", str(python), "-r", str(requirement)], check=True)
    return python


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("trl")
    python = _overlay(tmp / "overlay")
    out = tmp / "run"
    out.mkdir()
    done = subprocess.run(
        [python, str(CLIENT), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},  # no hub: the model is built locally
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out, json.loads((out / "result.json").read_text())


def test_trl_runs_beside_the_workspace_never_in_it(run: tuple[Path, dict]) -> None:
    _, result = run
    assert importlib.util.find_spec("trl") is None  # the workspace environment holds no trl
    versions = result["versions"]
    assert _locked_trl().startswith(f"trl=={versions['trl']} ")
    for package in ("torch", "transformers", "accelerate"):
        assert versions[package] == version(package)  # the workspace's pins, unmoved
    print(f"TRL client ran with {versions}")


def _verified_score(text: str, numbers: list[int], target: int) -> float:
    verdict = verify(text, target, numbers)
    return 1.0 if verdict.correct else 0.1 if verdict.has_answer else 0.0


def test_grpo_trainer_logs_the_rewards_verify_gives_its_completions(
    run: tuple[Path, dict],
) -> None:
    out, result = run
    key = "rewards/countdown_reward/mean"
    logged = [entry[key] for entry in result["log_history"] if key in entry]
    assert len(logged) == result["steps"]
    seen: set[float] = set()
    for step, mean in enumerate(logged, start=1):
        table = pd.read_parquet(out / "grpo" / "completions" / f"completions_{step:05d}.parquet")
        assert len(table) == result["completions_per_step"]
        expected = []
        for prompt, completion in zip(table["prompt"], table["completion"], strict=True):
            (message,) = completion
            puzzle = result["puzzles"][prompt[0]["content"]]
            expected.append(
                _verified_score(message["content"], puzzle["numbers"], puzzle["target"])
            )
        assert table["countdown_reward"].tolist() == pytest.approx(expected)  # float32 in TRL
        assert mean == pytest.approx(sum(expected) / len(expected))
        seen.update(expected)
    assert len(seen) >= 2, f"every completion scored {seen}: the comparison would prove nothing"


def test_a_score_column_stops_grpo_at_the_first_step(run: tuple[Path, dict]) -> None:
    _, result = run
    refused = result["score_column"]
    assert refused["global_step"] == 0
    assert refused["error"].startswith("ValueError: dataset column(s) 'score' share a name")
