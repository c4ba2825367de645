"""Faults a real cluster throws at a run, on the real command lines: kill -9 while data is being
written, two trainers on one run directory, and SIGTERM (docker stop, Slurm, Kubernetes) during a
stage of the real local backend.

Covered here: gen killed at 5 random instants; a second trainer while the first runs; a trainer
whose engine was killed -9 while its stage process lives on; a rerun once every holder is gone
(stale lock); SIGTERM to the trainer mid-stage.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cl_rundir.atomic import stale_temps
from cl_trainer.local.tiny import ensure_tiny_model
from countdown_data.dataset import MANIFEST, output_files

BIN = Path(sys.executable).parent
ENV = {**os.environ, "WANDB_MODE": "disabled"}
GROUPS = "plus,plus_minus"


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_gen_killed_at_random_instants_leaves_all_or_nothing(tmp_path: Path) -> None:
    args = [str(BIN / "countdown-data"), "gen", "--train-size", "3000", "--test-size", "150"]
    args += ["--workers", "1", "--force"]
    started = time.monotonic()
    subprocess.run([*args, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    whole = time.monotonic() - started
    rng = random.Random(2026)
    for i in range(5):
        out = tmp_path / f"killed{i}"
        proc = subprocess.Popen([*args, "--out", str(out)], stdout=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * whole)
        proc.kill()
        proc.wait()
        if (out / MANIFEST).exists():  # finished before the kill: must be whole and valid
            check = subprocess.run([str(BIN / "countdown-data"), "validate", str(out)])
            assert check.returncode == 0, f"instant {i}: a manifest over an incomplete data set"
        rerun = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        assert not stale_temps(output_files(out)), f"instant {i}: temp files left after a rerun"
        assert not list(out.rglob("*.tmp"))


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("faults")
    data = work / "data"
    subprocess.run(
        [
            str(BIN / "countdown-data"),
            "gen",
            "--quick",
            "--template",
            "compact",
            "--out",
            str(data),
            "--groups",
            GROUPS,
        ],
        check=True,
        capture_output=True,
    )
    model = ensure_tiny_model(work / "base_model", data, seed=0, sft_steps=10, eval_samples=4)
    return data, model


def _trainer(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "cl-trainer"),
        "--size",
        "tiny",
        "--groups",
        GROUPS,
        "--data-dir",
        str(data),
        "--out",
        str(out),
        "--model",
        str(model),
        "--no-wandb",
        *extra,
    ]


def _stage_processes(trainer: psutil.Process) -> list[psutil.Process]:
    return trainer.children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _stage_started(run: Path) -> bool:
    log = run / "logs" / "ContinualCountdown_R1_plus.log"
    return log.is_file() and "step:0 - " in log.read_text(errors="replace")


@pytest.mark.slow
def test_one_trainer_per_run_directory(tiny_setup, tmp_path: Path) -> None:
    data, model = tiny_setup
    run = tmp_path / "run"
    cmd = _trainer(data, model, run)
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage: list[psutil.Process] = []
    try:
        _wait_for(lambda: _stage_started(run), 240, "the first trainer's stage")
        second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        message = second.stderr.strip()
        assert f"pid {first.pid} on {socket.gethostname()}" in message and "\n" not in message

        # The engine dies (kill -9) but its stage process trains on: the run is still taken.
        stage = _stage_processes(psutil.Process(first.pid))
        first.kill()
        first.wait()
        assert _alive(stage)
        third = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=60)
        assert third.returncode == 1 and "in use by another cl-trainer" in third.stderr
    finally:
        first.kill()
        for p in _alive(stage):
            p.kill()
    _wait_for(lambda: not _alive(stage), 15, "the orphaned stage process to die")
    # Every holder is gone: the lock file left behind does not block the rerun, which resumes.
    assert (run / ".cl-trainer.lock").exists()
    rerun = subprocess.run(
        [*cmd, "--groups", "plus", "--force"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "resuming" in rerun.stdout
    assert json.loads((run / "run.json").read_text())["stages"][0]["status"] == "done"


def test_sigterm_stops_the_stage_and_records_it(tiny_setup, tmp_path: Path) -> None:
    data, model = tiny_setup
    run = tmp_path / "run"
    trainer = subprocess.Popen(
        _trainer(data, model, run),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: _stage_started(run), 240, "the stage's first validation")
        stage = _stage_processes(psutil.Process(trainer.pid))
        assert stage
        trainer.send_signal(signal.SIGTERM)
        out, _ = trainer.communicate(timeout=15)
    finally:
        trainer.kill()
    assert trainer.returncode == 128 + signal.SIGTERM, out
    _wait_for(lambda: not _alive(stage), 15, "every process of the stage to exit")
    record = json.loads((run / "run.json").read_text())["stages"][0]
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
    assert record["exit_code"] == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in out
