"""The stage engine: runs every stage as a backend subprocess, keeps run.json current, resumes.

A stage's subprocess (veRL or the local backend) does the training and writes veRL's checkpoint
layout; the engine chains stages through HF model directories, links each stage's initial and
final model into ``metrics/`` (hard links: never a second copy of the weights) and prunes the
resumable checkpoints once a stage is done.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cl_trainer.checks import check_disk
from cl_trainer.config import (
    TrainerConfig,
    backend_prefix,
    looks_like_hub_id,
    stage_overrides,
    tiny_model_dir,
)
from cl_trainer.manifest import config_diff, new_manifest, now, read_manifest, write_manifest
from cl_trainer.presets import TINY_MODEL_SENTINEL
from cl_trainer.stages import Stage, plan_stages
from cl_trainer.tracking import wandb_env

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
_STEP_DIR = re.compile(r"^global_step_(\d+)$")

Echo = Callable[[str], None]


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def link_model_dir(src: Path, dst: Path, *, fallback: str) -> str:
    """Make ``dst`` a directory of hard links to ``src``'s files; returns how it was made.

    Built next to ``dst`` and swapped in with ``os.replace``, so ``dst`` is never half-made.
    Where hard links are impossible (another filesystem), ``fallback`` decides: ``symlink`` (the
    source stays, e.g. the base model) or ``copy`` (the source is pruned later, e.g. a checkpoint).
    """
    src = src.resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp"
    _remove(tmp)
    how = "hardlink"
    try:
        for file in sorted(src.rglob("*")):
            if file.is_dir():
                continue
            target = tmp / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(file.resolve(), target)
    except OSError:
        _remove(tmp)
        if fallback == "symlink":
            tmp.symlink_to(src, target_is_directory=True)
            how = "symlink"
        else:
            shutil.copytree(src, tmp, symlinks=False)
            how = "copy"
    _remove(dst)
    os.replace(tmp, dst)
    return how


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


def checkpointed_steps(ckpt_dir: Path) -> list[int]:
    """Steps with a complete actor HF export, ascending."""
    steps = []
    if ckpt_dir.is_dir():
        for child in ckpt_dir.iterdir():
            m = _STEP_DIR.match(child.name)
            if m and (child / "actor" / "huggingface" / "config.json").is_file():
                steps.append(int(m.group(1)))
    return sorted(steps)


def latest_step(ckpt_dir: Path) -> int | None:
    """veRL's tracker file when it points at a complete export, else the newest complete one."""
    steps = checkpointed_steps(ckpt_dir)
    tracker = ckpt_dir / "latest_checkpointed_iteration.txt"
    if tracker.is_file():
        with contextlib.suppress(ValueError):
            step = int(tracker.read_text().strip())
            if step in steps:
                return step
    return steps[-1] if steps else None


def prune_checkpoints(ckpt_dir: Path, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` global_step dirs (the final model is linked already)."""
    if not ckpt_dir.is_dir():
        return []
    steps = sorted(
        int(m.group(1)) for c in ckpt_dir.iterdir() if (m := _STEP_DIR.match(c.name)) and c.is_dir()
    )
    doomed = steps[: max(0, len(steps) - keep)]
    for step in doomed:
        shutil.rmtree(ckpt_dir / f"global_step_{step}")
    if keep == 0:
        (ckpt_dir / "latest_checkpointed_iteration.txt").unlink(missing_ok=True)
    return doomed


def tail(path: Path, lines: int = ERROR_TAIL_LINES) -> str:
    if not path.exists():
        return ""
    with path.open(errors="replace") as f:
        return "".join(deque(f, maxlen=lines))


def run_teed(argv: list[str], env: dict[str, str], log_path: Path, echo: Echo) -> int:
    """Run ``argv``; every output line goes to ``log_path`` (appended) and to ``echo``.

    The child gets its own process group so an interrupt stops it and everything it spawned
    (Ray, vLLM workers) before the engine records the stage as interrupted.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                echo(raw.decode(errors="replace").rstrip("\n"))
            return proc.wait()
        except BaseException:
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def hub_snapshot(model: str) -> Path:
    """Local directory of a hub model (downloaded once into the HF cache, which veRL reuses)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model))
    except Exception as exc:
        raise click.ClickException(
            f"cannot fetch {model} from the Hugging Face Hub ({type(exc).__name__}); "
            "pass --model with a local HF model directory"
        ) from exc


class Engine:
    """Runs a curriculum; ``backend_cmd`` replaces ``python -m <backend>`` (tests: a stand-in)."""

    def __init__(
        self,
        cfg: TrainerConfig,
        *,
        force: bool = False,
        backend_cmd: list[str] | None = None,
        echo: Echo = click.echo,
    ) -> None:
        self.cfg = cfg
        self.force = force
        self.backend_cmd = backend_cmd
        self.echo = echo
        self.run_dir = cfg.run_dir
        self.stages = plan_stages(cfg)
        self.manifest: dict[str, Any] = {}

    # -- manifest -----------------------------------------------------------------------------

    def _open_manifest(self) -> None:
        old = read_manifest(self.run_dir)
        fresh = new_manifest(self.cfg, self.stages, self.cfg.model)
        if old is None:
            self.manifest = fresh
        else:
            diff = config_diff(old.get("config", {}), fresh["config"])
            if diff and not self.force:
                raise click.ClickException(
                    f"{self.run_dir / 'run.json'} was made with a different configuration ("
                    + "; ".join(diff)
                    + "); rerun with the same options, pass --force to continue anyway, "
                    "or pass a new --out"
                )
            # Keep what finished; a changed plan (e.g. more rounds) gets fresh pending stages.
            kept = {s["name"]: s for s in old.get("stages", [])}
            for i, rec in enumerate(fresh["stages"]):
                prev = kept.get(rec["name"])
                if prev is not None and prev.get("index") == rec["index"]:
                    fresh["stages"][i] = prev
            for key in ("created_at", "git_sha"):
                fresh[key] = old.get(key, fresh[key])
            self.manifest = fresh
        self._save()

    def _save(self) -> None:
        write_manifest(self.run_dir, self.manifest)

    def _record(self, stage: Stage) -> dict[str, Any]:
        return self.manifest["stages"][stage.index]

    # -- models -------------------------------------------------------------------------------

    def base_model_dir(self) -> Path:
        """The first stage's model as a local directory (built or downloaded when needed)."""
        if self.cfg.model == TINY_MODEL_SENTINEL:
            from cl_trainer.tiny import ensure_tiny_model

            return Path(
                ensure_tiny_model(tiny_model_dir(self.cfg), Path(self.cfg.data_dir), self.cfg.seed)
            )
        if looks_like_hub_id(self.cfg.model):
            return hub_snapshot(self.cfg.model)
        return Path(self.cfg.model)

    def _start_models(self, stage: Stage, base: Path) -> tuple[Path, Path | None]:
        """(actor start, critic start): the previous stage's final exports, or the base model."""
        if stage.index == 0:
            return base, base if self.cfg.uses_critic else None
        prev = self.stages[stage.index - 1]
        actor = self.run_dir / prev.final_model
        if not (actor / "config.json").is_file():
            raise click.ClickException(
                f"{actor} is missing although stage {prev.name} is done; rerun with --force "
                "after deleting run.json's stages from that one on, or use a new --out"
            )
        critic = None
        if self.cfg.uses_critic:
            critic = self.run_dir / prev.final_critic
            if not (critic / "config.json").is_file():
                self.echo(
                    f"note: no critic export from {prev.name}; the critic restarts from {base}"
                )
                critic = base
        return actor, critic

    # -- the loop -----------------------------------------------------------------------------

    def command(
        self, stage: Stage, actor: str, critic: str | None
    ) -> tuple[list[str], dict[str, str]]:
        env = wandb_env(self.cfg, check_network=True, warn=self.echo)
        argv = [*(self.backend_cmd or backend_prefix(self.cfg))]
        argv += stage_overrides(
            self.cfg,
            round_=stage.round,
            group=stage.group,
            actor_path=actor,
            critic_path=critic,
            wandb_env=env,
        )
        return argv, env

    def run(self) -> int:
        """Run every stage not yet done; returns the exit code for the CLI."""
        self._open_manifest()
        todo = [s for s in self.stages if self._record(s)["status"] != "done"]
        if not todo:
            self.echo(f"all {len(self.stages)} stages are done: {self.run_dir / 'run.json'}")
            return 0
        base = self.base_model_dir()
        self.manifest["base_model"] = (
            str(base) if self.cfg.model == TINY_MODEL_SENTINEL else self.cfg.model
        )
        for stage in self.stages:
            rec = self._record(stage)
            if rec["status"] == "done":
                self.echo(f"[{stage.name}] done, skipping")
                continue
            code = self._run_stage(stage, base)
            if code != 0:
                return code
        self.echo(f"curriculum finished: {self.run_dir / 'run.json'}")
        return 0

    def _run_stage(self, stage: Stage, base: Path) -> int:
        rec = self._record(stage)
        actor, critic = self._start_models(stage, base)
        check_disk(self.cfg, str(actor))
        link_model_dir(actor, self.run_dir / stage.initial_model, fallback="symlink")
        # A hub ID goes to the backend as given (its HF cache copy is the same files).
        hub = stage.index == 0 and looks_like_hub_id(self.cfg.model)
        actor_arg = self.cfg.model if hub else str(actor)
        critic_arg = None if critic is None else (self.cfg.model if hub else str(critic))
        argv, env = self.command(stage, actor_arg, critic_arg)
        resumed = rec["status"] in ("running", "failed")
        rec.update(status="running", exit_code=None, error_tail=None, finished_at=None)
        rec["started_at"] = rec["started_at"] or now()
        self._save()
        log_path = self.run_dir / stage.log
        self.echo(
            f"[{stage.name}] {'resuming' if resumed else 'starting'} stage {stage.index + 1}/"
            f"{len(self.stages)} from {actor}; log: {log_path}"
        )
        t0 = time.monotonic()
        try:
            code = run_teed(argv, env, log_path, self.echo)
        except KeyboardInterrupt:
            self._finish(
                rec,
                t0,
                status="failed",
                exit_code=130,
                error_tail=tail(log_path) + "\ninterrupted; rerun the same command to resume\n",
            )
            raise
        if code != 0:
            self._finish(rec, t0, status="failed", exit_code=code, error_tail=tail(log_path))
            self.echo(f"[{stage.name}] failed with exit code {code}; see {log_path}")
            return code
        ckpt = self.run_dir / stage.checkpoint_dir
        step = latest_step(ckpt)
        if step is None:
            self._finish(
                rec,
                t0,
                status="failed",
                exit_code=code,
                error_tail=tail(log_path) + f"\nno global_step_N/actor/huggingface in {ckpt}"
                " (is trainer.save_freq > 0 and checkpoint.save_contents with hf_model?)\n",
            )
            self.echo(f"[{stage.name}] finished without a checkpoint in {ckpt}")
            return 1
        self._link_finals(stage, ckpt / f"global_step_{step}", actor)
        prune_checkpoints(ckpt, self.cfg.keep_checkpoints)
        self._finish(rec, t0, status="done", exit_code=0, global_steps=step)
        self.echo(f"[{stage.name}] done at step {step}: {self.run_dir / stage.final_model}")
        return 0

    def _link_finals(self, stage: Stage, step_dir: Path, actor: Path) -> None:
        final = self.run_dir / stage.final_model
        link_model_dir(step_dir / "actor" / "huggingface", final, fallback="copy")
        ensure_tokenizer(final, actor)
        critic_hf = step_dir / "critic" / "huggingface"
        if self.cfg.uses_critic and (critic_hf / "config.json").is_file():
            link_model_dir(critic_hf, self.run_dir / stage.final_critic, fallback="copy")

    def _finish(self, rec: dict[str, Any], t0: float, **fields: Any) -> None:
        rec.update(fields)
        rec["finished_at"] = now()
        rec["duration_s"] = round((rec.get("duration_s") or 0.0) + time.monotonic() - t0, 3)
        self._save()
