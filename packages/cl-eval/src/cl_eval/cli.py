"""``cl-eval``: report a continual run, diff two checkpoints, print the accuracy matrix."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cl_rundir.layout import LOGS_DIR, RUN_JSON

if TYPE_CHECKING:
    from rich.console import Console

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def _console(stderr: bool = False) -> Console:
    """A rich console that does not squeeze tables to 80 columns when output is piped."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 160)


@click.group(context_settings=CONTEXT)
def main() -> None:
    """Continual-learning analysis of Countdown runs (reads run dirs; never trains)."""


def _run_dirs(runs: tuple[Path, ...], model_size: str | None, runs_root: Path) -> list[Path]:
    if runs and model_size:
        raise click.UsageError("give --run or --model-size, not both")
    if runs:
        return list(runs)
    if model_size:
        return [runs_root / model_size]
    found = (
        sorted(
            d
            for d in runs_root.glob("*")
            if d.is_dir() and ((d / RUN_JSON).is_file() or (d / LOGS_DIR).is_dir())
        )
        if runs_root.is_dir()
        else []
    )
    if not found:
        raise click.UsageError(
            f"no runs under {runs_root}/ (none has run.json or logs/); pass --run DIR"
        )
    return found


@main.command()
@click.option(
    "--run",
    "runs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Run directory (repeatable). Default: every run under --runs-root.",
)
@click.option(
    "--model-size",
    metavar="SIZE",
    help="Shorthand for --run RUNS_ROOT/<size>, as in the original evaluator.",
)
@click.option(
    "--runs-root",
    type=click.Path(path_type=Path),
    default=Path("runs"),
    help="Where --model-size and the default look for runs.",
)
@click.option(
    "--weights/--no-weights",
    default=True,
    help="Compute weight change between checkpoints (the slow part).",
)
@click.option(
    "--probe/--no-probe",
    default=True,
    help="Activation diagnostics (forward passes of every checkpoint on a probe set; needs "
    "cl-eval[probe]; slow on CPU for real models).",
)
@click.option("--html", "write_html", is_flag=True, help="Also write a self-contained report.html.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Threads for weight diffs [default: min(4, CPUs)].",
)
def report(
    runs: tuple[Path, ...],
    model_size: str | None,
    runs_root: Path,
    weights: bool,
    probe: bool,
    write_html: bool,
    workers: int | None,
) -> None:
    """Write metrics/*.json, plots/*.png and report.md into each run directory."""
    from rich.markup import escape

    from cl_eval.report import build_report
    from cl_eval.run import RunError

    console = _console(stderr=True)
    for d in _run_dirs(runs, model_size, runs_root):
        try:
            res = build_report(
                d, model_size, weights=weights, write_html=write_html, workers=workers, probe=probe
            )
        except RunError as exc:
            raise click.ClickException(str(exc)) from exc
        for w in res.warnings:
            console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
        console.print(
            f"[green]{escape(str(d))}[/]: wrote {len(res.outputs)} files, e.g. {d / 'report.md'}"
        )


def _f(v: float | None, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


@main.command()
@click.argument("ckpt_a", type=click.Path(exists=True, path_type=Path))
@click.argument("ckpt_b", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--per-tensor", is_flag=True, help="Include every tensor (JSON) / a tensor table.")
@click.option(
    "--workers", type=click.IntRange(1, 64), default=None, help="Threads [default: min(4, CPUs)]."
)
def diff(ckpt_a: Path, ckpt_b: Path, as_json: bool, per_tensor: bool, workers: int | None) -> None:
    """Weight change from CKPT_A to CKPT_B (HF dirs or .safetensors files), streamed."""
    from cl_eval.weights import CheckpointError, diff_checkpoints

    try:
        d = diff_checkpoints(ckpt_a, ckpt_b, workers=workers)
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from exc
    out = d.to_dict(per_tensor=per_tensor)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    dtypes = ", ".join(f"{k}: {v:,}" for k, v in out["dtypes"].items())
    table = Table(title=escape(f"{ckpt_a} → {ckpt_b}  (stored dtype {dtypes})"))
    for col in (
        "module",
        "params",
        "rel L2",
        "max |Δ|",
        "unchanged bits",
        "unchanged |Δ|≤1e-5",
        "unchanged rel≤1e-3",
    ):
        table.add_column(col, justify="right")
    rows = list(out["by_module"].items())
    if per_tensor:
        rows += list(out["tensors"].items())
    for name, s in [*rows, ("all", out["global"])]:
        table.add_row(
            escape(name),
            f"{s['numel']:,}",
            _f(s["rel_l2"], ".3e"),
            _f(s["max_abs_delta"], ".3e"),
            _f(s["unchanged_bitwise"], ".2%"),
            _f(s["unchanged_atol"], ".2%"),
            _f(s["unchanged_rel"], ".2%"),
        )
    console.print(table)
    for w in out["warnings"] + out["skipped"]:
        console.print(f"[yellow]{escape(w)}[/]", highlight=False)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print matrix and metrics as JSON.")
def matrix(run_dir: Path, as_json: bool) -> None:
    """Print the accuracy matrix of RUN_DIR and its transfer/forgetting metrics (logs only)."""
    import numpy as np
    from rich.markup import escape
    from rich.table import Table

    from cl_eval.analysis import analyse
    from cl_eval.matrix import DEFINITIONS
    from cl_eval.report import json_safe
    from cl_eval.run import RunError

    try:
        a = analyse(run_dir)
    except RunError as exc:
        raise click.ClickException(str(exc)) from exc
    run, R, origin, metrics, warnings = a.run, a.R, a.matrix.origin, a.metrics, a.warnings
    if not a.stages_used and not np.isfinite(R[0]).any():
        raise click.ClickException(f"{run_dir}: no validation accuracy in any stage log")
    rows = a.row_names
    unc = a.uncertainty
    if as_json:
        click.echo(json.dumps(json_safe(a.matrix_payload()), indent=2, allow_nan=False))
        return
    console = _console()
    table = Table(title=escape(f"Accuracy matrix R[stage][group]: {run.name}"))
    table.add_column("after stage")
    for g in run.groups:
        table.add_column(g, justify="right")
    table.add_column("source", style="dim")
    for i, name in enumerate(rows):
        cells = []
        for j, v in enumerate(R[i]):
            trained = i > 0 and run.groups.index(run.stages[i - 1].group) == j
            txt = _f(float(v), ".3f")
            if math.isfinite(unc.lo[i, j]):
                txt += f" [dim]±{(unc.hi[i, j] - unc.lo[i, j]) / 2:.3f}[/]"
            cells.append(f"[bold]{txt}[/]" if trained else txt)
        table.add_row(escape(name), *cells, escape(origin[i]))
    console.print(table)
    console.print(f"[dim]± half-width of the 95 % interval, from {escape(unc.source)}[/]")
    if metrics:
        mt = Table(title="Transfer and forgetting (bold cells above = the stage's own group)")
        mt.add_column("metric")
        mt.add_column("value", justify="right")
        mt.add_column("95 % interval", justify="right")
        mt.add_column("definition", overflow="fold")
        for k, text in DEFINITIONS.items():
            est = a.metric(k)
            ci = "–" if est.lo is None or est.hi is None else f"[{est.lo:+.3f}, {est.hi:+.3f}]"
            mt.add_row(k, _f(est.value, "+.3f"), ci, escape(text))
        console.print(mt)
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)


@main.command()
@click.argument("runs", nargs=-1)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="NAME=GLOB",
    help="A condition: its name and the run directories (a glob) that make it (repeatable; "
    "the first is the reference).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Where compare.md, compare.json and plots/ go [the first run's parent/compare].",
)
@click.option(
    "--plasticity",
    is_flag=True,
    help="Also read every run's checkpoints for the plasticity summary (soft-accuracy metrics, "
    "dormant ratio, feature rank; slower, the probes need cl-eval[probe]).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(
    runs: tuple[str, ...],
    labels: tuple[str, ...],
    out: Path | None,
    plasticity: bool,
    as_json: bool,
) -> None:
    """Aggregate runs (one per seed) with intervals; with labels, the differences between them.

    `cl-eval compare 'runs/tiny-s*'` aggregates one condition; `cl-eval compare --label
    none='runs/none-s*' --label redo='runs/redo-s*'` also sets redo against none.
    """
    from rich.markup import escape
    from rich.table import Table

    from cl_eval.analysis import analyse
    from cl_eval.compare import compare as run_compare
    from cl_eval.compare import expand, tables, write_outputs
    from cl_eval.report import json_safe
    from cl_eval.run import RunError

    if runs and labels:
        raise click.UsageError("give RUNS or --label NAME=GLOB, not both")
    if not runs and not labels:
        raise click.UsageError("name the runs to compare (paths or globs), or --label NAME=GLOB")
    patterns: dict[str, list[str]] = {"runs": list(runs)} if runs else {}
    for spec in labels:
        name, sep, pattern = spec.partition("=")
        if not sep or not name or not pattern:
            raise click.UsageError(f"--label {spec!r}: write NAME=GLOB, e.g. redo='runs/redo-s*'")
        patterns.setdefault(name, []).append(pattern)
    conditions = {}
    for name, pats in patterns.items():
        dirs = [d for d in expand(pats) if d.is_dir()]
        if not dirs:
            raise click.UsageError(f"{name}: no run directory matches {' '.join(pats)}")
        try:
            conditions[name] = [analyse(d, weights=plasticity) for d in dirs]
        except RunError as exc:
            raise click.ClickException(str(exc)) from exc
    result = run_compare(conditions)
    if as_json:
        click.echo(json.dumps(json_safe(result.as_dict()), indent=2))
        return
    console = _console()
    for title, header, rows in tables(result):
        table = Table(title=escape(title))
        for i, col in enumerate(header):
            table.add_column(escape(col), justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*(escape(c) for c in row))
        console.print(table)
    first = next(iter(conditions.values()))[0].run.path
    written = write_outputs(result, out or first.parent / "compare")
    console.print(f"[green]wrote[/] {', '.join(escape(str(p)) for p in written)}")
