"""``cl-trainer``: run the continual curriculum (default command) or print its plan.

``cl-trainer --size 1.5b`` is ``cl-trainer run --size 1.5b``; ``cl-trainer plan --size 1.5b``
prints every stage's exact command and the resolved configuration without touching a GPU.
Arguments after ``--`` are veRL Hydra overrides, appended to every stage's command. The options
are built from the settings' declarations (``cl_trainer.config``); this is the only module that
turns a :class:`TrainerError` into a click error.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cl_trainer.checks import human_bytes, preflight
from cl_trainer.config import (
    SETTING_TYPES,
    SETTINGS,
    TrainerConfig,
    default_of,
    default_out,
    preset_value,
    resolve_config,
    seed_out,
)
from cl_trainer.console import Console
from cl_trainer.engine import Engine, Stopped
from cl_trainer.errors import TrainerError, UsageError
from cl_trainer.overrides import format_command
from cl_trainer.presets import DATA_COMMANDS, PRESETS, TINY_MODEL_SENTINEL
from cl_trainer.record import read_run
from cl_trainer.sizing import data_found, disk_needed, disk_peaks, peak_checkpoints, run_size
from cl_trainer.stages import stage_plan
from cl_trainer.tracking import wandb_env
from countdown_data.generate import GenConfig
from countdown_data.groups import check_group

CONTEXT = {"help_option_names": ["-h", "--help"]}


class DefaultRunGroup(click.Group):
    """A group whose first word may be omitted: anything that is not a command means ``run``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["run", *args]
        return super().parse_args(ctx, args)


def _groups(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str] | None:
    if not value:
        return None
    try:
        return [check_group(g.strip()) for g in value.split(",") if g.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _seeds(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if len(set(seeds)) != len(seeds):
        raise click.BadParameter("a seed is listed twice")
    return seeds


def _shown(value: Any) -> str:
    if value == TINY_MODEL_SENTINEL:
        return "built locally"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def preset_note(f: dataclasses.Field) -> str:
    """``[default; preset: value, ...]`` with the presets whose value differs from the default."""
    default = default_of(f)
    if default is None:
        return ""
    differ = [
        f"{size}: {_shown(v)}" for size in PRESETS if (v := preset_value(size, f.name)) != default
    ]
    return "[" + "; ".join([_shown(default), *differ]) + "]"


def _option(f: dataclasses.Field) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The click option of one setting; every default is None, meaning "the preset's value"."""
    meta = f.metadata
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    help_text = f"{meta['help']} {preset_note(f)}".strip()
    kind = SETTING_TYPES[f.name]
    if type(None) in typing.get_args(kind):  # an optional setting: None means "not given"
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if f.name == "size":
        return click.option(
            flag, "size", required=True, type=click.Choice(list(PRESETS)), help=meta["help"]
        )
    if kind is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text)
    if f.name == "groups":
        return click.option(flag, f.name, callback=_groups, help=help_text)
    if typing.get_origin(kind) is list:  # repeatable; an empty tuple means "the preset's"
        return click.option(
            flag, f.name, multiple=True, callback=lambda _c, _p, v: list(v) or None,
            help=help_text,
        )  # fmt: skip
    if meta["choices"]:
        typ: Any = click.Choice(list(meta["choices"]))
    elif kind is int:
        typ = click.IntRange(min=meta["minimum"]) if meta["minimum"] is not None else int
    elif kind is float:
        typ = float
    else:
        typ = str
    return click.option(flag, f.name, type=typ, default=None, help=help_text)


def curriculum_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every setting as an option (shared by ``run`` and ``plan``), then the veRL overrides."""
    fn = click.argument("overrides", nargs=-1, type=click.UNPROCESSED)(fn)
    for f in reversed([f for f in SETTINGS if f.metadata["cli"]]):
        fn = _option(f)(fn)
    return fn


def _config(params: dict[str, Any]) -> TrainerConfig:
    try:
        return resolve_config(**params)
    except TrainerError as exc:
        raise _click_error(exc) from None


def _click_error(exc: TrainerError) -> click.ClickException:
    if isinstance(exc, UsageError):
        return click.UsageError(str(exc))
    return click.ClickException(str(exc))


@click.group(cls=DefaultRunGroup, context_settings=CONTEXT)
def main() -> None:
    """Continual RL on Countdown: plus -> plus_minus -> plus_minus_mul -> plus_minus_mul_div.

    `cl-trainer --size 1.5b` runs the curriculum (same as `cl-trainer run ...`); running the same
    command again resumes it. `cl-trainer plan --size 1.5b` prints every stage's command.
    """


@main.command(context_settings=CONTEXT)
@curriculum_options
@click.option(
    "--force", is_flag=True, help="Continue a run whose run.json has another configuration."
)
@click.option("-v", "--verbose", is_flag=True, help="Also show the backend's whole output.")
@click.option(
    "--seeds",
    callback=_seeds,
    help="Comma-separated seeds: one curriculum per seed, one after the other, each in "
    "<out>-s<seed> (runs/<size>-s<seed>); compare them with `cl-eval compare`.",
)
def run(force: bool, verbose: bool, seeds: list[int] | None, **params: Any) -> None:
    """Train every stage in order, resuming where a previous invocation stopped."""
    if seeds and params["seed"] is not None:
        raise click.UsageError("give --seed or --seeds, not both")
    configs = [_config(params)]
    if seeds:
        out = params["out"] or default_out(params["size"])
        configs = [_config({**params, "seed": s, "out": seed_out(out, s)}) for s in seeds]
    console = Console(verbose=verbose)
    for cfg in configs:
        if len(configs) > 1:
            console.note(f"seed {cfg.seed}: {cfg.run_dir}")
        code = _train(cfg, console, force)
        if code:
            sys.exit(code)
    sys.exit(0)


def _train(cfg: TrainerConfig, console: Console, force: bool) -> int:
    try:
        for note in preflight(cfg):
            console.note(note)
        return Engine(cfg, console, force=force).run()
    except TrainerError as exc:
        raise _click_error(exc) from None
    except (KeyboardInterrupt, Stopped) as exc:
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        console.note(f"stopped by {signal.Signals(signum).name}; rerun the same command to resume")
        sys.exit(128 + signum)


def plan_data(cfg: TrainerConfig) -> dict[str, Any]:
    """The plan as data: the resolved config, the run's size and, per stage, its start models,
    its size and its exact command."""
    record = read_run(cfg.run_dir)
    status = {s.name: s.status for s in record.stages} if record else {}
    plans = stage_plan(cfg, env=wandb_env(cfg))
    sizes = run_size(cfg, [p.stage for p in plans])
    peaks = disk_peaks(sizes)
    stages = [
        {
            "index": p.stage.index,
            "name": p.stage.name,
            "round": p.stage.round,
            "group": p.stage.group,
            "status": status.get(p.stage.name, "pending"),
            "model": p.actor,
            "critic": p.critic,
            "log": str(cfg.run_dir / p.stage.log),
            "final_model": str(cfg.run_dir / p.stage.final_model),
            "train_prompts": size.rows,
            "steps": size.steps,
            "validations": size.validations,
            "checkpoints": size.checkpoints,
            "disk_peak_bytes": peak,
            "env": p.env,
            "argv": p.argv,
            "command": format_command(p.argv, p.env),
        }
        for p, size, peak in zip(plans, sizes, peaks, strict=True)
    ]
    first = sizes[0]
    return {
        "run_dir": str(cfg.run_dir),
        "name": cfg.run_name,
        "config": cfg.to_dict(),
        "size": {
            "data_found": data_found(cfg),
            "steps": sum(s.steps for s in sizes),
            "validations": sum(s.validations for s in sizes),
            "val_prompts": first.val_prompts,
            "checkpoints": sum(s.checkpoints for s in sizes),
            "checkpoint_bytes": first.checkpoint_bytes,
            "peak_checkpoints": peak_checkpoints(cfg, max(s.checkpoints for s in sizes)),
            "export_bytes": first.export_bytes,
            "disk_needed_bytes": disk_needed(sizes),
            "disk_free_bytes": shutil.disk_usage(existing_parent(cfg.run_dir)).free,
        },
        "stages": stages,
    }


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (``plan`` creates nothing)."""
    return next(p for p in (path, *path.parents) if p.exists())


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def size_lines(data: dict[str, Any]) -> list[str]:
    """The run's size as ``plan`` prints it: a table of the stages, then the disk it needs."""
    cfg, size, stages = data["config"], data["size"], data["stages"]
    if size["data_found"]:
        source = f"from the data in {cfg['data_dir']}"
    else:
        gen = GenConfig()
        command = DATA_COMMANDS.get(cfg["size"], "countdown-data gen")
        source = (
            f"no data in {cfg['data_dir']} yet, `uv run {command}` writes it; counted with "
            f"countdown-data gen's defaults, {gen.train_size:,} training and {gen.test_size:,} "
            "test puzzles per group"
        )
    rows = [
        (s["name"], s["steps"], s["validations"], s["checkpoints"], s["disk_peak_bytes"])
        for s in stages
    ]
    total = (
        "total",
        size["steps"],
        size["validations"],
        size["checkpoints"],
        size["disk_needed_bytes"],
    )
    head = f"{'stage':<28}{'steps':>9}{'validations':>13}{'checkpoints':>13}{'disk peak':>12}"
    lines = [f"# run size ({source}):", f"#   {head}"]
    for name, steps, vals, ckpts, peak in [*rows, total]:
        lines.append(f"#   {name:<28}{steps:>9,}{vals:>13,}{ckpts:>13,}{human_bytes(peak):>12}")
    n = cfg["rollout_n"]
    kept = cfg["keep_checkpoints"]
    lines += [
        f"#   a step: {cfg['train_batch_size']} prompts x {plural(n, 'rollout')}; "
        f"a validation: {size['val_prompts']:,} prompts (the test puzzles of the run's groups); "
        f"a checkpoint: {human_bytes(size['checkpoint_bytes'])}",
        f"# disk: about {human_bytes(size['disk_needed_bytes'])} free needed under "
        f"{data['run_dir']} ({human_bytes(size['disk_free_bytes'])} free now): a stage holds up "
        f"to {plural(size['peak_checkpoints'], 'checkpoint')} at once (veRL writes the next before "
        "deleting the last; a resumed stage keeps the one it resumed from to its end), then "
        f"keeps its HF exports ({human_bytes(size['export_bytes'])})"
        + (f" and {plural(kept, 'checkpoint')}" if kept else "")
        + "; validation records are counted at their longest",
    ]
    return lines


@main.command(context_settings=CONTEXT)
@curriculum_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(as_json: bool, **params: Any) -> None:
    """Print every stage with its exact, copy-pasteable command; needs no GPU."""
    try:
        data = plan_data(_config(params))
    except TrainerError as exc:
        raise _click_error(exc) from None
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    cfg = data["config"]
    click.echo(
        f"# {data['name']}: {plural(len(data['stages']), 'stage')}, backend {cfg['backend']}, "
        f"algo {cfg['algo']}, run dir {data['run_dir']}"
    )
    for line in size_lines(data):
        click.echo(line)
    click.echo("# resolved configuration:")
    for key, value in cfg.items():
        click.echo(f"#   {key}: {value}")
    for st in data["stages"]:
        click.echo(
            f"\n# stage {st['index'] + 1}/{len(data['stages'])} {st['name']} "
            f"[{st['status']}]: starts from {st['model']}; log {st['log']}; {st['steps']:,} "
            f"steps, {st['validations']:,} validations, {st['checkpoints']:,} checkpoints"
        )
        click.echo(st["command"])
