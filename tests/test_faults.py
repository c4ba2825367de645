"""Faults a real cluster throws at a run, on the real command lines: kill -9 while data is being
written, two trainers on one run directory, SIGTERM (docker stop, Slurm, Kubernetes) and Ctrl-C
twice during a stage of the real local backend, a disk that fills up mid-stage, the data set
regenerated under a run, and damaged or hostile inputs to every command line.

Covered here: gen killed at 5 random instants; a second trainer while the first runs; a trainer
whose engine was killed -9 while its stage process lives on (the refusal names the stage); a
rerun once every holder is gone (stale lock); SIGTERM to the trainer mid-stage; Ctrl-C twice; the
disk full mid-stage (with room in the trainer's reserve, and with none); the data set regenerated
with another seed under a run; a no-op gen rerun after a killed one; and a table of damaged inputs
(run.json, manifests, parquet, safetensors headers, non-finite settings, --out in the way, a file
size limit), each of which must end in one ``Error:`` line and no traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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
        holder = min(stage, key=lambda p: p.create_time())  # the stage's process group leader
        assert f"stage R1_plus (pid {holder.pid}" in third.stderr, third.stderr
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


@contextlib.contextmanager
def _trainer_in_its_stage(
    data: Path, model: Path, run: Path
) -> Iterator[tuple[subprocess.Popen[str], list[psutil.Process]]]:
    """A trainer on ``run`` (stdout and stderr in one pipe) once its first stage has validated,
    with that stage's processes; killed on the way out, whatever happened."""
    trainer = subprocess.Popen(
        _trainer(data, model, run), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: _stage_started(run), 240, "the stage's first validation")
        stage = _stage_processes(psutil.Process(trainer.pid))
        assert stage
        yield trainer, stage
    finally:
        trainer.kill()


def _read_until(trainer: subprocess.Popen[str], text: str, timeout: float) -> str:
    """The trainer's output up to and including the first line holding ``text``."""
    lines: list[str] = []

    def read() -> None:
        assert trainer.stdout is not None
        for line in trainer.stdout:
            lines.append(line)
            if text in line:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    out = "".join(lines)
    assert not reader.is_alive() and text in out, f"no {text!r} in {timeout} s: {out[-2000:]}"
    return out


def test_sigterm_stops_the_stage_and_records_it(tiny_setup, tmp_path: Path) -> None:
    data, model = tiny_setup
    run = tmp_path / "run"
    with _trainer_in_its_stage(data, model, run) as (trainer, stage):
        trainer.send_signal(signal.SIGTERM)
        out, _ = trainer.communicate(timeout=15)
    assert trainer.returncode == 128 + signal.SIGTERM, out
    _wait_for(lambda: not _alive(stage), 15, "every process of the stage to exit")
    record = json.loads((run / "run.json").read_text())["stages"][0]
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
    assert record["exit_code"] == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in out


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The command failed with one ``Error:`` line on stderr and no traceback anywhere."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("room", ["reserve", "hopeless"])
def test_disk_full_mid_stage_records_the_stage_and_keeps_run_json_whole(
    tiny_setup, tmp_path: Path, room: str
) -> None:
    """The disk fills as the stage logs its first step: the trainer stops the stage and says
    "no space left on device" in one line; run.json records the stage failed with the reason (the
    trainer's reserve gives the room), or, with no room at all, keeps its last state whole."""
    data, model = tiny_setup
    run = tmp_path / "run"
    cmd = [sys.executable, str(Path(__file__).parent / "full_disk.py"), room]
    proc = subprocess.run(
        [*cmd, *_trainer(data, model, run)[1:]],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "no space left on device" in _one_error_line(proc)
    stage = json.loads((run / "run.json").read_text())["stages"][0]
    if room == "reserve":
        assert stage["status"] == "failed" and stage["exit_code"] == 1
        assert "no space left on device" in stage["error_tail"]
    else:
        assert stage["status"] == "running"  # as before the stage: the rerun resumes it
    assert not stale_temps([run / "run.json"])
    assert not (run / ".cl-trainer.reserve").exists()


def test_ctrl_c_twice_hastens_the_stop_and_never_abandons_it(tiny_setup, tmp_path: Path) -> None:
    """The second Ctrl-C once the trainer says it is stopping the stage (two sent before its
    handler runs, as on a loaded machine, are one pending signal): the trainer exits only once
    every process of the stage is gone, records the stage interrupted and frees the run."""
    data, model = tiny_setup
    run = tmp_path / "run"
    with _trainer_in_its_stage(data, model, run) as (trainer, stage):
        trainer.send_signal(signal.SIGINT)
        out = _read_until(trainer, "stopping the stage", 60)
        trainer.send_signal(signal.SIGINT)
        rest, _ = trainer.communicate(timeout=30)
        alive_at_exit = _alive(stage)  # the moment the trainer is gone
    out += rest
    assert trainer.returncode == 128 + signal.SIGINT, out
    assert not alive_at_exit, "the trainer exited while its stage ran on"
    record = json.loads((run / "run.json").read_text())["stages"][0]
    assert record["status"] == "interrupted" and record["signal"] == "SIGINT"
    with (run / ".cl-trainer.lock").open("rb") as lock:  # free for the rerun
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_data_regenerated_under_a_run_is_refused(tiny_setup, tmp_path: Path) -> None:
    """Another seed into the same data directory, then a rerun: refused in one line that names
    what changed and how to start a new run, not trained and validated on other puzzles."""
    import shutil

    data, model = tiny_setup
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    run = tmp_path / "run"
    trainer = subprocess.Popen(
        _trainer(mine, model, run), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for(lambda: _stage_started(run), 240, "the stage's first validation")
        trainer.send_signal(signal.SIGTERM)
        trainer.wait(timeout=30)
    finally:
        trainer.kill()
    manifest = json.loads((data / MANIFEST).read_text())
    gen = [str(BIN / "countdown-data"), "gen", "--out", str(mine), "--force", "--seed", "1"]
    gen += ["--groups", GROUPS, "--template", manifest["params"]["template"]]
    gen += ["--train-size", str(manifest["counts"]["plus"]["train"])]
    gen += ["--test-size", str(manifest["counts"]["plus"]["test"])]
    subprocess.run(gen, check=True, capture_output=True)
    before = (run / "run.json").read_text()
    rerun = subprocess.run(
        _trainer(mine, model, run), env=ENV, capture_output=True, text=True, timeout=120
    )
    line = _one_error_line(rerun)
    assert "plus/train.parquet changed" in line and "new --out" in line
    assert (run / "run.json").read_text() == before


def test_a_no_op_gen_rerun_removes_a_killed_writers_temps(tmp_path: Path) -> None:
    args = [str(BIN / "countdown-data"), "gen", "--quick", "--groups", "plus", "--out"]
    subprocess.run([*args, str(tmp_path)], check=True, capture_output=True)
    left = tmp_path / "plus" / ".train.parquet.x1y2z3.tmp"  # what a killed writer leaves
    left.write_bytes(b"half a parquet")
    rerun = subprocess.run([*args, str(tmp_path)], capture_output=True, text=True)
    assert rerun.returncode == 0 and "already holds this data set" in rerun.stdout
    assert not left.exists()


def _damaged(tmp_path: Path, data: Path, what: str) -> Path:
    """A copy of ``data`` with one damage (a damaged manifest or parquet file)."""
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    target = {"parquet": copy / "plus" / "test.parquet"}.get(what, copy / MANIFEST)
    target.write_text({"parquet": "PAR1 not a parquet file", "list": "[]", "groups5":
                       '{"schema_version": 1, "groups": 5}', "json": "{"}[what])  # fmt: skip
    return copy


def _header(tmp_path: Path, header: object) -> list[str]:
    import struct

    blob = json.dumps(header).encode()
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "model.safetensors").write_bytes(
            struct.pack("<Q", len(blob)) + blob + bytes(8)
        )
    return ["cl-eval", "diff", str(tmp_path / "a"), str(tmp_path / "b")]


def _run_json(tmp_path: Path, text: str, data: Path, model: Path) -> list[str]:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(text)
    return _trainer(data, model, tmp_path / "run")


def _cd(*argv: str) -> list[str]:
    return ["countdown-data", *argv]


def _setting(t: Path, d: Path, m: Path, *extra: str) -> list[str]:
    return _trainer(d, m, t / "run", *extra)


HOSTILE = {
    # data sets: the checks `validate` makes, in every reader
    "stats, manifest a list": lambda t, d, m: _cd("stats", str(_damaged(t, d, "list"))),
    "stats, groups: 5": lambda t, d, m: _cd("stats", str(_damaged(t, d, "groups5"))),
    "stats, damaged parquet": lambda t, d, m: _cd("stats", str(_damaged(t, d, "parquet"))),
    "sft, manifest not JSON": lambda t, d, m: _cd("sft", str(_damaged(t, d, "json"))),
    "sft, manifest a list": lambda t, d, m: _cd("sft", str(_damaged(t, d, "list"))),
    "trainer, manifest a list": lambda t, d, m: _trainer(_damaged(t, d, "list"), m, t / "run"),
    # --out in the way
    "sft --out a directory": lambda t, d, m: _cd("sft", str(d), "--out", str(t), "--force"),
    "trainer --out a file": lambda t, d, m: _trainer(d, m, Path(__file__)),
    # safetensors headers of the wrong shape
    "diff, tensor without offsets": lambda t, d, m: _header(t, {"w": {"dtype": "F32"}}),
    "diff, header a list": lambda t, d, m: _header(t, [1, 2]),
    "diff, header a string": lambda t, d, m: _header(t, "s"),
    # non-finite settings
    "sigma=inf": lambda t, d, m: _setting(t, d, m, "--between-stages", "shrink-perturb:sigma=inf"),
    "sigma=nan": lambda t, d, m: _setting(t, d, m, "--between-stages", "shrink-perturb:sigma=nan"),
    "--entropy-coeff inf": lambda t, d, m: _setting(t, d, m, "--entropy-coeff", "inf"),
    "--actor-lr nan": lambda t, d, m: _setting(t, d, m, "--actor-lr", "nan"),
    # run.json of the wrong shape, read by the trainer
    'run.json "stages": ["oops"]': lambda t, d, m: _run_json(t, '{"stages": ["oops"]}', d, m),
    'run.json "config": []': lambda t, d, m: _run_json(t, '{"stages": [], "config": []}', d, m),
    "run.json, a nameless stage": lambda t, d, m: _run_json(t, '{"stages": [{"round": 1}]}', d, m),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_input_is_one_error_line(tiny_setup, tmp_path: Path, case: str) -> None:
    data, model = tiny_setup
    argv = HOSTILE[case](tmp_path, data, model)
    argv[0] = str(BIN / Path(argv[0]).name)
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=120)
    _one_error_line(proc)


@pytest.mark.parametrize("command", ["gen", "sft"])
def test_a_write_that_finds_no_room_is_one_error_line_and_leaves_nothing_half_written(
    tiny_setup, tmp_path: Path, command: str
) -> None:
    """A file size limit (``ulimit -f``) makes every write past it fail, at the real write calls:
    the stand-in for a full disk that needs no root."""
    import resource

    data, _ = tiny_setup

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG), no kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "out"
    argv = {
        "gen": ["gen", "--quick", "--workers", "1", "--out", str(out)],
        "sft": ["sft", str(data), "--out", str(out)],
    }[command]
    proc = subprocess.run(
        [str(BIN / "countdown-data"), *argv],
        capture_output=True,
        text=True,
        preexec_fn=limited,
        timeout=300,
    )
    assert "file size limit" in _one_error_line(proc)
    assert not out.exists() or (out.is_dir() and not any(out.rglob("*.parquet")))
    assert not [p for p in tmp_path.rglob("*.tmp")]
