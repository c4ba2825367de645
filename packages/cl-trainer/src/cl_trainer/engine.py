"""The stage engine: runs every stage as a backend subprocess, keeps run.json current, resumes.

A stage's subprocess (veRL or the local backend) does the training and writes veRL's checkpoint
layout; the engine chains stages through HF model directories, links each stage's initial and
final model into ``metrics/`` (hard links: never a second copy of the weights) and prunes the
resumable checkpoints once a stage is done. One engine at a time holds a run directory
(:class:`RunLock`); SIGINT, SIGTERM and SIGHUP all stop the stage's whole process group and leave
the stage ``interrupted``, to be resumed by the next invocation.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from cl_rundir.atomic import TEMP_SUFFIX, building_dir, remove_stale_temps
from cl_rundir.layout import RUN_JSON, Stage
from cl_rundir.oserrors import describe, is_disk_full
from cl_rundir.record import RemedyRecord, RunRecord, StageRecord, now, write_record
from cl_trainer import checkpoints, rollouts
from cl_trainer.checks import check_disk
from cl_trainer.config import TrainerConfig, looks_like_hub_id, tiny_model_dir
from cl_trainer.errors import TrainerError
from cl_trainer.joint import write_joint_file
from cl_trainer.overrides import data_template, replayed_groups
from cl_trainer.presets import TINY_MODEL_SENTINEL
from cl_trainer.record import config_diff, data_diff, new_record, read_run
from cl_trainer.remedies import REDO_PROBE_PROMPTS, DataInputs, acting_on, apply_weight_remedies
from cl_trainer.stages import StagePlan, stage_plan
from cl_trainer.tracking import wandb_env
from countdown_data.dataset import load_rows, split_path

ERROR_TAIL_LINES = 40
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
LOCK_FILE = ".cl-trainer.lock"
RESERVE_FILE = ".cl-trainer.reserve"
RESERVE_BYTES = 1 << 20
"""Disk space the engine holds while it runs, and gives up when a disk fills: room for run.json's
last write (the stage's state and why it stopped)."""
DISK_FULL_MARKS = ("No space left on device", "[Errno 28]", "Disk quota exceeded", "[Errno 122]")
"""How a stage's output says that it ran out of disk."""
STOP_GRACE_S = {signal.SIGINT: 10.0, signal.SIGTERM: 5.0, signal.SIGHUP: 5.0}
"""How long a stage's process group gets to exit after the signal we received, before SIGKILL."""
GONE_WAIT_S = 10.0
"""How long, after the grace period, the engine waits for every process of the group to die."""


class Reporter(Protocol):
    """What the engine tells its user; ``cl_trainer.console`` draws it."""

    def stage_started(self, plan: StagePlan, total: int, resumed: bool, log: Path) -> None: ...

    def output(self, line: str) -> None: ...

    def stage_finished(self, record: StageRecord) -> None: ...

    def note(self, text: str) -> None: ...


class Stopped(BaseException):
    """A termination signal arrived; raised in the main thread like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP (docker stop, Slurm, systemd, a closed terminal) into
    :class:`Stopped`, so they take the same path as Ctrl-C."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Stopped(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class RunLock:
    """An exclusive lock on a run directory for the whole curriculum.

    ``flock`` on ``.cl-trainer.lock`` in the run directory: released by the kernel when its holder
    dies, so a stale file never blocks a rerun. The stage process inherits the locked descriptor,
    so a stage that outlives a killed engine still holds the run.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise TrainerError(
                f"{self.path.parent} is in use by another cl-trainer{holder}, then rerun"
            ) from None
        self.fd = fd
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
        self._write_info()
        self._reserve()
        return self

    def _write_info(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(self.info) + "\n").encode(), 0)

    def stage_started(self, name: str, pid: int) -> None:
        """The stage process shares the lock: a refusal names it when it outlives this engine."""
        self.info |= {"stage": name, "stage_pid": pid}
        self._write_info()

    def _reserve(self) -> None:
        """Hold :data:`RESERVE_BYTES` of real disk blocks (none where the filesystem cannot)."""
        path = self.path.parent / RESERVE_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError:
            path.unlink(missing_ok=True)

    def free_reserve(self) -> bool:
        """Give the reserved space back to the disk; True when there was some."""
        path = self.path.parent / RESERVE_FILE
        try:
            path.unlink()
        except OSError:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            self.free_reserve()
            os.close(self.fd)
            self.fd = None


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, TypeError):
        return True  # another user's process, or a pid we cannot check: assume it runs
    return True


def _read_holder(fd: int) -> str:
    """`` (pid N on HOST since T); wait for it to finish or stop it``, naming the process that
    holds the lock now: the stage process when its engine is gone (killed -9)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid, host, since = info["pid"], info["host"], info["since"]
    except (OSError, ValueError, KeyError, TypeError):
        return " (holder unknown); wait for it to finish or stop it"
    stage_pid = info.get("stage_pid")
    if host == socket.gethostname() and stage_pid and not _alive(pid) and _alive(stage_pid):
        return (
            f": its stage {info.get('stage')} (pid {stage_pid} on {host}) outlived its engine "
            f"(pid {pid}, since {since}); stop it with `kill -- -{stage_pid}`"
        )
    return f" (pid {pid} on {host} since {since}); wait for it to finish or stop it"


def link_model_dir(src: Path, dst: Path, *, fallback: str) -> str:
    """Make ``dst`` a directory of hard links to ``src``'s files; returns how it was made.

    Built beside ``dst`` and swapped in, so ``dst`` is never half-made. Where hard links are
    impossible (another filesystem), ``fallback`` decides: ``symlink`` (the source stays, e.g. the
    base model) or ``copy`` (the source is pruned later, e.g. a checkpoint).
    """
    src = src.resolve()
    try:
        with building_dir(dst) as tmp:
            for file in sorted(p for p in src.rglob("*") if not p.is_dir()):
                target = tmp / file.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(file.resolve(), target)
        return "hardlink"
    except OSError:
        if fallback == "copy":
            with building_dir(dst) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True)
            return "copy"
    link = dst.parent / f".{dst.name}.link{TEMP_SUFFIX}"
    link.unlink(missing_ok=True)
    link.symlink_to(src, target_is_directory=True)
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(link, dst)
    return "symlink"


def ensure_tokenizer(model_dir: Path, source: Path) -> None:
    """veRL exports the tokenizer with the HF model; fill in any file it left out."""
    if not source.is_dir():
        return
    for name in TOKENIZER_FILES:
        src, dst = source / name, model_dir / name
        if src.is_file() and not dst.exists():
            try:
                os.link(src.resolve(), dst)
            except OSError:
                shutil.copy2(src, dst)


def tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    if not path.exists():
        return ""
    with path.open(errors="replace") as f:
        return "".join(deque(f, maxlen=lines))


def run_teed(
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    reporter: Reporter,
    *,
    cwd: Path,
    keep_fds: tuple[int, ...] = (),
    lock: RunLock | None = None,
    name: str = "",
) -> int:
    """Run ``argv`` in ``cwd``; every output line goes to ``log_path`` (appended) and ``reporter``.

    The child gets its own process group so a stop reaches it and everything it spawned (Ray,
    vLLM workers); on any exception here (Ctrl-C, :class:`Stopped`, a log write that fails) the
    group is stopped first, and any signal meanwhile hastens that stop (:class:`StageSignals`).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log, StageSignals() as signals:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            pass_fds=keep_fds,
        )
        try:
            signals.pgid = proc.pid
            if lock is not None:
                lock.stage_started(name, proc.pid)
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                reporter.output(raw.decode(errors="replace").rstrip("\n"))
            return proc.wait()
        except BaseException as exc:
            # First, before any call: from here on a signal hastens the stop, never raises.
            signals.stopping = True
            first = signal.Signals(exc.signum) if isinstance(exc, Stopped) else signal.SIGINT
            grace = STOP_GRACE_S.get(first, 5.0)
            reporter.note(
                f"stopping the stage ({first.name}; SIGKILL in {grace:.0f} s; Ctrl-C again: now)"
            )
            stop_group(proc, first)
            raise


class StageSignals:
    """SIGINT, SIGTERM and SIGHUP while a stage runs: the first raises (KeyboardInterrupt or
    :class:`Stopped`) so the engine stops the stage; any later one SIGKILLs the stage's process
    group and returns. A second exception would break out of the stop half-way, leaving the stage
    running and holding the run's lock (a second Ctrl-C while the first one's note was printed
    did). ``stopping`` is set by the handler itself before it raises: no Python code runs
    between the two, so no signal can slip in between."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.stopping = False
        self.previous: dict[int, Any] = {}

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt if signum == signal.SIGINT else Stopped(signum)
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)

    def __enter__(self) -> StageSignals:
        if threading.current_thread() is threading.main_thread():  # where handlers can be set
            self.previous = {s: signal.signal(s, self) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def stop_group(proc: subprocess.Popen[bytes], first: signal.Signals) -> None:
    """Send ``first`` to the child's process group, SIGKILL it after a bounded grace period, and
    return once every process of the group is gone (or after :data:`GONE_WAIT_S` more).

    The leader's exit is not enough: its children (vLLM and Ray workers) may still run, and a
    process that holds the run lock's descriptor keeps the run taken after this engine exits."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, first)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S.get(first, 5.0))
    end = time.monotonic() + GONE_WAIT_S
    while True:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # the stragglers go with the group
        proc.poll()  # reap the leader, so that it no longer counts as a member
        if not group_alive(pgid) or time.monotonic() > end:
            return  # past the bound: unkillable (uninterruptible I/O), nothing a signal can do
        time.sleep(0.02)


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs. A zombie does not count: it holds no
    descriptor (nor the run's lock) and its reaper may be an init that never reaps."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        pids = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return True  # no /proc to tell zombies apart: a member remains
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def hub_snapshot(model: str) -> Path:
    """Local directory of a hub model (downloaded once into the HF cache, which veRL reuses)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model))
    except Exception as exc:
        raise TrainerError(
            f"cannot fetch {model} from the Hugging Face Hub ({type(exc).__name__}); "
            "pass --model with a local HF model directory"
        ) from exc


class Engine:
    """Runs a curriculum; ``backend_cmd`` replaces ``python -m <backend>`` (tests: a stand-in)."""

    def __init__(
        self,
        cfg: TrainerConfig,
        reporter: Reporter,
        *,
        force: bool = False,
        backend_cmd: list[str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.force = force
        self.backend_cmd = backend_cmd
        self.reporter = reporter
        self.run_dir = cfg.run_dir
        self.record = RunRecord()
        self.lock: RunLock | None = None

    # -- run.json -----------------------------------------------------------------------------

    def _open_record(self, plans: list[StagePlan]) -> None:
        old = read_run(self.run_dir)
        fresh = new_record(self.cfg, [p.stage for p in plans], self.cfg.model)
        if old is not None:
            diff = config_diff(old.config, fresh.config)
            if diff and not self.force:
                raise TrainerError(
                    f"{self.run_dir / RUN_JSON} was made with a different configuration ("
                    + "; ".join(diff)
                    + "); rerun with the same options, pass --force to continue anyway, "
                    "or pass a new --out"
                )
            changed = data_diff(old.data, fresh.data)
            if changed and not self.force:
                raise TrainerError(
                    f"the data in {self.cfg.data_dir} is not what {self.run_dir} was started on "
                    f"({'; '.join(changed)}); pass a new --out to start a new run on it, "
                    "regenerate the run's data set (same options and seed) to resume, or pass "
                    "--force to continue on this data"
                )
            # Keep what finished; a changed plan (e.g. more rounds) gets fresh pending stages.
            kept = {s.name: s for s in old.stages}
            for i, rec in enumerate(fresh.stages):
                prev = kept.get(rec.name)
                if prev is not None and prev.index == rec.index:
                    fresh.stages[i] = prev
            fresh.created_at = old.created_at or fresh.created_at
            fresh.git_sha = old.git_sha or fresh.git_sha
        self.record = fresh
        self._save()

    def _save(self) -> None:
        """Write run.json. When the disk is full, the reserve is given back and the stages' error
        tails are cut to their last line, so the state gets recorded whenever anything can be;
        then, or when nothing can, a one-line error (run.json is never half-written)."""
        try:
            write_record(self.run_dir, self.record)
            return
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            full = exc
        if self.lock is not None:
            self.lock.free_reserve()
        for shorten in (False, True):
            if shorten:
                for rec in self.record.stages:
                    lines = (rec.error_tail or "").strip().splitlines()
                    rec.error_tail = lines[-1] + "\n" if lines else rec.error_tail
            try:
                write_record(self.run_dir, self.record)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                continue
            raise TrainerError(
                f"{describe(full, 'writing run.json')}; {self._state()} is recorded in "
                f"{self.run_dir / RUN_JSON}, rerun the same command to resume"
            )
        raise TrainerError(
            f"{describe(full, 'writing run.json')}; {self.run_dir / RUN_JSON} keeps its previous "
            "state, rerun the same command to resume"
        )

    def _state(self) -> str:
        """``R1_plus failed``: the latest stage that is not pending, and its status."""
        started = [s for s in self.record.stages if s.status != "pending"]
        return f"{started[-1].name} {started[-1].status}" if started else "the run's plan"

    def _stage_record(self, stage: Stage) -> StageRecord:
        return self.record.stages[stage.index]

    # -- models -------------------------------------------------------------------------------

    def base_model_dir(self) -> Path:
        """The first stage's model as a local directory (built or downloaded when needed)."""
        if self.cfg.model == TINY_MODEL_SENTINEL:
            from cl_trainer.local.tiny import WARM_STARTS, ensure_tiny_model, is_built

            out = tiny_model_dir(self.cfg)
            if not is_built(out):
                self.reporter.note(f"building the tiny base model (SFT warm start) in {out}")
            warm = WARM_STARTS.get(self.cfg.size, WARM_STARTS["tiny"])
            return Path(
                ensure_tiny_model(out, Path(self.cfg.data_dir), self.cfg.seed, warm_start=warm)
            )
        if looks_like_hub_id(self.cfg.model):
            return hub_snapshot(self.cfg.model)
        return Path(self.cfg.model)

    def _prepare(self, plan: StagePlan, base: Path) -> Path:
        """The stage's inputs: its initial model (linked, or transformed by a remedy) and its
        replay file. Returns the model the stage's initial model comes from."""
        stage, cfg = plan.stage, self.cfg
        rec = self._stage_record(stage)
        previous = [p.stage for p in self.plans() if p.stage.index == stage.index - 1]
        source = base if not previous else self.run_dir / previous[0].final_model
        self._check_start(plan, source)
        initial = self.run_dir / stage.initial_model
        on_weights = acting_on(cfg.between_stages, "weights")
        if on_weights and stage.index:
            if not (rec.remedies and checkpoints.has_weights(initial)):  # not on resume
                names = ", ".join(r.spec for r in on_weights)
                self.reporter.note(f"[{stage.name}] applying {names} to {source}")
                rows = load_rows(Path(cfg.data_dir), stage.group, "train")[:REDO_PROBE_PROMPTS]
                rec.remedies = apply_weight_remedies(
                    on_weights,
                    source,
                    initial,
                    base=base,
                    probe=[list(r["prompt"]) for r in rows],
                    template=data_template(cfg.data_dir),
                    seed=cfg.seed + stage.index,
                )
        else:
            link_model_dir(source, initial, fallback="symlink")
        if cfg.curriculum == "joint":
            write_joint_file(cfg, stage)  # again on a resume: cheap, and the same file
        self._apply_data_remedies(stage, rec)
        self._save()
        return source

    def _apply_data_remedies(self, stage: Stage, rec: StageRecord) -> None:
        """Rewrite the stage's training file (``Stage.replay_file``) from its own and the earlier
        groups' training files, remedy after remedy; done again on every resume (cheap, and the
        same seed gives the same file)."""
        cfg, data = self.cfg, Path(self.cfg.data_dir)
        earlier = replayed_groups(cfg, stage)
        if not earlier:
            return
        own = split_path(data, stage.group, "train")
        out = self.run_dir / stage.replay_file
        for remedy in acting_on(cfg.between_stages, "data"):
            inputs = DataInputs(
                own, [split_path(data, g, "train") for g in earlier], out, cfg.seed + stage.index
            )
            changed = remedy.declaration.fn(remedy.params, inputs) | {"from": earlier}
            rec.remedies = [r for r in rec.remedies if r.name != remedy.name]
            rec.remedies.append(RemedyRecord(remedy.name, dict(remedy.params), changed))
            own = out

    def _check_start(self, plan: StagePlan, source: Path) -> None:
        """The previous stage's exports this stage starts from must be there."""
        if plan.stage.index == 0:
            return
        critic = plan.critic if self.cfg.critic_init == "chain" else None
        for path, what in ((str(source), "actor"), (critic, "critic")):
            if path is not None and not checkpoints.has_weights(Path(path)):
                raise TrainerError(
                    f"{path} (the {what} this stage starts from) has no weights although the "
                    "previous stage is done; delete run.json's stages from that one on and rerun "
                    "with --force, or use a new --out"
                    + (" (or --critic-init actor)" if what == "critic" else "")
                )

    # -- the loop -----------------------------------------------------------------------------

    def plans(self, *, check_network: bool = False) -> list[StagePlan]:
        env = wandb_env(self.cfg, check_network=check_network, warn=self.reporter.note)
        return stage_plan(self.cfg, env=env, prefix=self.backend_cmd)

    def run(self) -> int:
        """Run every stage not yet done; returns the exit code for the CLI."""
        with RunLock(self.run_dir) as lock, stop_on_signals():
            self.lock = lock
            plans = self.plans(check_network=True)
            self._remove_stale_temps(plans)
            self._open_record(plans)
            self._prune_done(plans)
            todo = [p for p in plans if self._stage_record(p.stage).status != "done"]
            if not todo:
                self.reporter.note(f"all {len(plans)} stages are done: {self.run_dir / RUN_JSON}")
                return 0
            base = self.base_model_dir()
            self.record.base_model = (
                str(base) if self.cfg.model == TINY_MODEL_SENTINEL else self.cfg.model
            )
            for plan in todo:
                code = self._run_stage(plan, base, plans)
                if code != 0:
                    return code
            self.reporter.note(f"curriculum finished: {self.run_dir / RUN_JSON}")
            return 0

    def _remove_stale_temps(self, plans: list[StagePlan]) -> None:
        """What a killed engine or stage process left half-written (only we write here now)."""
        targets = [self.run_dir / RUN_JSON, tiny_model_dir(self.cfg)]
        for p in plans:
            ckpt = self.run_dir / p.stage.checkpoint_dir
            targets += [ckpt / checkpoints.TRACKER, ckpt / "global_step_*"]
            targets.append(self.run_dir / p.stage.rollouts)
        remove_stale_temps(targets)

    def _prune_done(self, plans: list[StagePlan]) -> None:
        """Checkpoints a done stage still holds beyond ``keep_checkpoints`` (an engine stopped
        between recording a stage done and pruning it, or a run made with more kept)."""
        for p in plans:
            if self._stage_record(p.stage).status == "done" and (gone := self._prune(p.stage)):
                ckpt = self.run_dir / p.stage.checkpoint_dir
                shown = ", ".join(map(str, gone))
                self.reporter.note(
                    f"[{p.stage.name}] removed the checkpoints of step {shown} ({ckpt})"
                )

    def _prune(self, stage: Stage) -> list[int]:
        """Delete a done stage's checkpoints beyond ``keep_checkpoints``, once its exports (all
        that later stages and cl-eval read) are complete. Returns the steps deleted."""
        ckpt = self.run_dir / stage.checkpoint_dir
        keep = self.cfg.keep_checkpoints
        if len(checkpoints.steps(ckpt)) <= keep:
            return []
        exports = [stage.final_model] + ([stage.final_critic] if self.cfg.uses_critic else [])
        missing = [e for e in exports if not checkpoints.has_weights(self.run_dir / e)]
        if missing:
            self.reporter.note(
                f"[{stage.name}] keeping its checkpoints in {ckpt}: {', '.join(missing)} has no "
                "weights"
            )
            return []
        return checkpoints.prune(ckpt, keep)

    def _run_stage(self, plan: StagePlan, base: Path, plans: list[StagePlan]) -> int:
        stage = plan.stage
        rec = self._stage_record(stage)
        start = self._prepare(plan, base)
        ckpt = self.run_dir / stage.checkpoint_dir
        resumed = rec.status in ("running", "failed", "interrupted")
        if resumed and (gone := checkpoints.keep_resume_point(ckpt)):
            shown = ", ".join(map(str, gone))
            self.reporter.note(
                f"[{stage.name}] removed the checkpoints of step {shown}: veRL resumes from step "
                f"{checkpoints.read_tracker(ckpt)} and would never rotate them out"
            )
        check_disk(self.cfg, [p.stage for p in plans], str(start), first=stage.index)
        rec.status, rec.exit_code, rec.signal, rec.error_tail = "running", None, None, None
        rec.finished_at = None
        rec.started_at = rec.started_at or now()
        self._save()
        log_path = self.run_dir / stage.log
        self.reporter.stage_started(plan, len(plans), resumed, log_path)
        t0 = time.monotonic()
        try:
            code = run_teed(
                plan.argv,
                plan.env,
                log_path,
                self.reporter,
                cwd=self.run_dir,
                keep_fds=(self.lock.fd,) if self.lock and self.lock.fd is not None else (),
                lock=self.lock,
                name=stage.name,
            )
        except OSError as exc:  # its log could not be written: the stage was stopped
            reason = describe(exc, f"writing {log_path}")
            self._finish(stage, t0, status="failed", exit_code=1, error_tail=reason + "\n")
            raise TrainerError(f"[{stage.name}] failed: {reason}") from None
        except (KeyboardInterrupt, Stopped) as exc:
            signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
            self._finish(
                stage,
                t0,
                status="interrupted",
                exit_code=128 + signum,
                signal=signal.Signals(signum).name,
                error_tail=tail(log_path) + "\ninterrupted; rerun the same command to resume\n",
            )
            raise
        if code != 0:
            error_tail = tail(log_path)
            self._finish(stage, t0, status="failed", exit_code=code, error_tail=error_tail)
            if any(mark in error_tail for mark in DISK_FULL_MARKS):
                raise TrainerError(
                    f"[{stage.name}] failed: no space left on device (see {log_path}); free "
                    "space, then rerun the same command to resume"
                )
            return code
        step = checkpoints.latest_export(ckpt)
        if step is None:
            self._finish(
                stage,
                t0,
                status="failed",
                exit_code=1,
                error_tail=tail(log_path) + f"\nno global_step_N/actor/huggingface in {ckpt}"
                " (is trainer.save_freq > 0 and checkpoint.save_contents with hf_model?)\n",
            )
            return 1
        doing = f"exporting {stage.final_model}"
        try:
            self._link_finals(stage, checkpoints.step_dir(ckpt, step), start)
            # Compacted before the stage is recorded done: a stop in between reruns the
            # compaction (it loses nothing when cut short), where a done stage would keep its
            # raw dumps.
            doing = f"compacting the training samples into {stage.rollouts}"
            rollouts.compact(
                self.run_dir / stage.rollout_dir,
                self.run_dir / stage.rollouts,
                keep_text=self.cfg.keep_rollout_text,
            )
        except (OSError, TrainerError) as exc:
            reason = describe(exc, doing) if isinstance(exc, OSError) else str(exc)
            self._finish(stage, t0, status="failed", exit_code=1, error_tail=reason + "\n")
            raise TrainerError(f"[{stage.name}] failed: {reason}") from None
        # Recorded done before anything is deleted: a stop in between leaves extra checkpoints
        # (pruned at the next start), never a done stage's exports without a way back.
        self._finish(stage, t0, status="done", exit_code=0, global_steps=step)
        self._prune(stage)
        return 0

    def _link_finals(self, stage: Stage, step_dir: Path, actor: Path) -> None:
        final = self.run_dir / stage.final_model
        link_model_dir(step_dir / "actor" / "huggingface", final, fallback="copy")
        ensure_tokenizer(final, actor)
        critic_hf = step_dir / "critic" / "huggingface"
        if self.cfg.uses_critic and checkpoints.has_weights(critic_hf):
            checkpoints.label_value_model(critic_hf)
            link_model_dir(critic_hf, self.run_dir / stage.final_critic, fallback="copy")

    def _finish(self, stage: Stage, t0: float, **fields: Any) -> None:
        rec = self._stage_record(stage)
        for name, value in fields.items():
            setattr(rec, name, value)
        rec.finished_at = now()
        rec.duration_s = round((rec.duration_s or 0.0) + time.monotonic() - t0, 3)
        self._save()
        self.reporter.stage_finished(rec)
