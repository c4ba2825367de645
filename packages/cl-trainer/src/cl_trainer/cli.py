"""``cl-trainer``: run the continual curriculum (default command) or print its plan.

``cl-trainer --size 1.5b`` is ``cl-trainer run --size 1.5b``; ``cl-trainer plan --size 1.5b``
prints every stage's exact command and the resolved configuration without touching a GPU.
Arguments after ``--`` are veRL Hydra overrides, appended to every stage's command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cl_trainer.checks import preflight
from cl_trainer.config import (
    TrainerConfig,
    backend_prefix,
    base_model_path,
    format_command,
    resolve_config,
    stage_overrides,
)
from cl_trainer.engine import Engine
from cl_trainer.manifest import read_manifest
from cl_trainer.presets import PRESETS
from cl_trainer.stages import plan_stages
from cl_trainer.tracking import wandb_env
from countdown_data.groups import GROUPS, check_group

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


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


def curriculum_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by ``run`` and ``plan`` (``None`` defaults mean: the preset's value)."""
    opts = [
        click.option(
            "--size", required=True, type=click.Choice(list(PRESETS)), help="Model preset."
        ),
        click.option(
            "--algo", type=click.Choice(["ppo", "grpo"]), help="[default: ppo; grpo for tiny]"
        ),
        click.option(
            "--backend",
            type=click.Choice(["verl", "local"]),
            help="[default: verl; local for tiny]",
        ),
        click.option("--rounds", type=click.IntRange(min=1), help="Rounds through all groups [3]."),
        click.option("--epochs", type=click.IntRange(min=1), help="Epochs per stage [15]."),
        click.option(
            "--groups",
            callback=_groups,
            help=f"Comma-separated groups in curriculum order [{','.join(GROUPS)}].",
        ),
        click.option(
            "--data-dir",
            default="data/continual",
            type=click.Path(path_type=Path),
            help="Output of `countdown-data gen`.",
        ),
        click.option("--out", type=click.Path(path_type=Path), help="Run directory [runs/<size>]."),
        click.option(
            "--model", help="Base model: HF directory or hub ID [env BASE_MODEL, preset]."
        ),
        click.option("--n-gpus-per-node", type=int, help="[preset: 2 for 0.5b, 4 for 1.5b]"),
        click.option("--nnodes", type=int, help="Nodes in the Ray cluster [1]."),
        click.option(
            "--ray-address", help="Join an existing Ray cluster (`ray start`), e.g. HEAD:6379."
        ),
        click.option("--tp", type=int, help="Rollout tensor-parallel size [preset]."),
        click.option("--train-batch-size", type=int, help="Prompts per step [preset]."),
        click.option("--ppo-mini-batch-size", type=int, help="[preset]"),
        click.option(
            "--micro-batch-per-gpu",
            type=int,
            help="[largest divisor of the per-GPU mini-batch up to the preset's]",
        ),
        click.option("--max-prompt-length", type=int, help="[preset]"),
        click.option("--max-response-length", type=int, help="[preset]"),
        click.option("--rollout-n", type=int, help="GRPO samples per prompt [preset]."),
        click.option(
            "--save-freq", type=int, help="Checkpoint every N steps (and at the end) [preset]."
        ),
        click.option(
            "--test-freq", type=int, help="Validate every N steps (and at the end) [preset]."
        ),
        click.option(
            "--keep-checkpoints",
            default=1,
            type=click.IntRange(min=0),
            help="Resumable checkpoints kept per finished stage.",
        ),
        click.option("--seed", default=0, type=int, help="Data shuffling (and tiny model) seed."),
        click.option("--no-wandb", is_flag=True, help="Log to the console only."),
        click.argument("overrides", nargs=-1, type=click.UNPROCESSED),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _config(params: dict[str, Any]) -> TrainerConfig:
    return resolve_config(
        params["size"],
        backend=params["backend"],
        algo=params["algo"],
        rounds=params["rounds"],
        epochs=params["epochs"],
        groups=params["groups"],
        data_dir=params["data_dir"],
        out=params["out"],
        model=params["model"],
        n_gpus_per_node=params["n_gpus_per_node"],
        nnodes=params["nnodes"],
        ray_address=params["ray_address"],
        tp=params["tp"],
        train_batch_size=params["train_batch_size"],
        ppo_mini_batch_size=params["ppo_mini_batch_size"],
        micro_batch_per_gpu=params["micro_batch_per_gpu"],
        max_prompt_length=params["max_prompt_length"],
        max_response_length=params["max_response_length"],
        rollout_n=params["rollout_n"],
        save_freq=params["save_freq"],
        test_freq=params["test_freq"],
        keep_checkpoints=params["keep_checkpoints"],
        wandb=not params["no_wandb"],
        seed=params["seed"],
        overrides=list(params["overrides"]),
    )


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
def run(force: bool, **params: Any) -> None:
    """Train every stage in order, resuming where a previous invocation stopped."""
    cfg = _config(params)
    preflight(cfg)
    code = Engine(cfg, force=force).run()
    sys.exit(code)


def plan_data(cfg: TrainerConfig) -> dict[str, Any]:
    """The plan as data: the resolved config and, per stage, its start model and exact command."""
    manifest = read_manifest(cfg.run_dir) or {}
    status = {s["name"]: s["status"] for s in manifest.get("stages", [])}
    env = wandb_env(cfg)
    stages = []
    previous: str | None = None
    for stage in plan_stages(cfg):
        actor = previous or base_model_path(cfg)
        critic = None
        if cfg.uses_critic:
            critic = (
                str(cfg.run_dir / plan_stages(cfg)[stage.index - 1].final_critic)
                if previous
                else actor
            )
        argv = backend_prefix(cfg) + stage_overrides(
            cfg,
            round_=stage.round,
            group=stage.group,
            actor_path=actor,
            critic_path=critic,
            wandb_env=env,
        )
        stages.append(
            {
                "index": stage.index,
                "name": stage.name,
                "round": stage.round,
                "group": stage.group,
                "status": status.get(stage.name, "pending"),
                "model": actor,
                "critic": critic,
                "log": str(cfg.run_dir / stage.log),
                "final_model": str(cfg.run_dir / stage.final_model),
                "env": env,
                "argv": argv,
                "command": format_command(argv, env),
            }
        )
        previous = str(cfg.run_dir / stage.final_model)
    return {
        "run_dir": str(cfg.run_dir),
        "name": cfg.run_name,
        "config": cfg.to_dict(),
        "stages": stages,
    }


@main.command(context_settings=CONTEXT)
@curriculum_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(as_json: bool, **params: Any) -> None:
    """Print every stage with its exact, copy-pasteable command; needs no GPU."""
    data = plan_data(_config(params))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    cfg = data["config"]
    click.echo(
        f"# {data['name']}: {len(data['stages'])} stages, backend {cfg['backend']}, "
        f"algo {cfg['algo']}, run dir {data['run_dir']}"
    )
    click.echo("# resolved configuration:")
    for key, value in cfg.items():
        click.echo(f"#   {key}: {value}")
    for st in data["stages"]:
        click.echo(
            f"\n# stage {st['index'] + 1}/{len(data['stages'])} {st['name']} "
            f"[{st['status']}]: starts from {st['model']}; log {st['log']}"
        )
        click.echo(st["command"])
