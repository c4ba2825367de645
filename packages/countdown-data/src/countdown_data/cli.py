"""``countdown-data``: generate, solve, validate, summarise and export Countdown data sets."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from countdown_data.dataset import (
    DEFAULT_DATA_DIR,
    MANIFEST,
    OutputError,
    check_writable,
    existing_outputs,
    read_manifest,
    split_file,
    up_to_date,
    write_dataset,
)
from countdown_data.generate import (
    PROFILES,
    SPLITS,
    GenConfig,
    GenerationError,
    check_config,
    default_workers,
)
from countdown_data.groups import OPERATORS, check_group
from countdown_data.templates import TEMPLATES

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}
QUICK_SIZES = (2_000, 400)
DEFAULTS = GenConfig()
"""``gen``'s defaults are the generator's own."""


class OptionError(click.ClickException):
    """A bad option value: one line, usage exit status."""

    exit_code = 2


def _flag(field: str) -> str:
    """The ``gen`` option of a :class:`GenConfig` field (options are named after the fields)."""
    return "--" + field.replace("_", "-")


def _fmt_range(r: tuple[int, int]) -> str:
    """How ``LOW-HIGH`` options spell a range (what :class:`RangeType` reads)."""
    return f"{r[0]}-{r[1]}"


def _profile_options(name: str) -> str:
    """A profile spelled as the options it stands for."""
    words = []
    for field, value in PROFILES[name].items():
        if isinstance(value, bool):
            words.append(_flag(field) if value else "--no-" + _flag(field)[2:])
        elif isinstance(value, tuple):
            words.append(f"{_flag(field)} {_fmt_range(value)}")
        else:
            words.append(f"{_flag(field)} {value}")
    return " ".join(words)


class RangeType(click.ParamType):
    """``LOW-HIGH`` (or a single ``N``) as an inclusive integer range."""

    name = "LOW-HIGH"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        lo, sep, hi = str(value).partition("-")
        try:
            return (int(lo), int(hi if sep else lo))
        except ValueError:
            self.fail(f"{value!r} is not LOW-HIGH, e.g. 3-4", param, ctx)


RANGE = RangeType()


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)  # CI logs: one line per message, never wrapped


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="countdown-data")
def main() -> None:
    """Countdown puzzles per operator group, as veRL-ready parquet with checkable guarantees."""


# ------------------------------------------------------------------------------------- gen


def _parse_groups(text: str) -> tuple[str, ...]:
    try:
        return tuple(check_group(g.strip()) for g in text.split(",") if g.strip())
    except ValueError as exc:
        raise OptionError(f"--groups: {exc}") from None


@main.command(context_settings=CONTEXT)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_DATA_DIR,
    help="Output directory (one sub-directory per group plus manifest.json).",
)
@click.option(
    "--train-size", type=int, default=DEFAULTS.train_size, help="Training puzzles per group."
)
@click.option("--test-size", type=int, default=DEFAULTS.test_size, help="Test puzzles per group.")
@click.option(
    "--quick",
    is_flag=True,
    help=f"Small set ({QUICK_SIZES[0]} train / {QUICK_SIZES[1]} test per group) for "
    "demos; explicit --train-size/--test-size still win.",
)
@click.option(
    "--groups", default=",".join(DEFAULTS.groups), help="Comma-separated groups to generate."
)
@click.option("--seed", type=int, default=DEFAULTS.seed, help="Random seed; same seed, same bytes.")
@click.option(
    "--numbers-per-puzzle",
    type=RANGE,
    default=_fmt_range(DEFAULTS.numbers_per_puzzle),
    help="How many numbers a puzzle has (2-5).",
)
@click.option(
    "--number-range",
    type=RANGE,
    default=_fmt_range(DEFAULTS.number_range),
    help="Range of each number.",
)
@click.option(
    "--target-range",
    type=RANGE,
    default=_fmt_range(DEFAULTS.target_range),
    help="Range of targets.",
)
@click.option(
    "--template",
    type=click.Choice(TEMPLATES),
    default=DEFAULTS.template,
    help="Prompt style: base (TinyZero), chat (system+user) or compact (tiny model).",
)
@click.option(
    "--require-new-op/--no-require-new-op",
    default=DEFAULTS.require_new_op,
    help="Make every later-group puzzle unsolvable with the previous group's operators.",
)
@click.option(
    "--sort-numbers/--no-sort-numbers",
    default=DEFAULTS.sort_numbers,
    help="Show each puzzle's numbers in ascending order instead of the order drawn.",
)
@click.option(
    "--profile",
    type=click.Choice(list(PROFILES)),
    default=None,
    help="Named defaults; explicit options still win. "
    + "; ".join(f"{name} = {_profile_options(name)}" for name in PROFILES)
    + " (small: the CPU testbed, cl-trainer --size testbed).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    show_default="number of CPUs",
    help="Worker processes (never changes the output).",
)
@click.option("--force", is_flag=True, help="Overwrite existing data in --out.")
@click.pass_context
def gen(
    ctx: click.Context,
    out: Path,
    train_size: int,
    test_size: int,
    quick: bool,
    groups: str,
    seed: int,
    numbers_per_puzzle: tuple[int, int],
    number_range: tuple[int, int],
    target_range: tuple[int, int],
    template: str,
    require_new_op: bool,
    sort_numbers: bool,
    profile: str | None,
    workers: int | None,
    force: bool,
) -> None:
    """Generate train/test parquet files for each operator group, plus manifest.json."""
    values: dict[str, Any] = {
        "train_size": train_size,
        "test_size": test_size,
        "numbers_per_puzzle": numbers_per_puzzle,
        "number_range": number_range,
        "target_range": target_range,
        "template": template,
        "sort_numbers": sort_numbers,
    }
    # Precedence: options given explicitly, then the profile's values, then --quick's sizes.
    explicit = {k for k in values if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    defaults: dict[str, Any] = {}
    if quick:
        defaults |= dict(zip(("train_size", "test_size"), QUICK_SIZES, strict=True))
    if profile:
        defaults |= PROFILES[profile]
    values |= {k: v for k, v in defaults.items() if k not in explicit}
    cfg = GenConfig(
        groups=_parse_groups(groups), seed=seed, require_new_op=require_new_op, **values
    )
    try:
        check_config(cfg)
    except GenerationError as exc:
        raise OptionError(exc.renamed(_flag)) from None
    if out.exists() and not out.is_dir():
        raise OptionError(f"--out {out} is a file; give a directory")
    existing = existing_outputs(out)
    if existing and not force:
        if up_to_date(out, cfg):
            click.echo(f"{out} already holds this data set (same parameters, checksums match)")
            return
        raise click.ClickException(
            f"{out} already has data ({len(existing)} files); pass --force to overwrite, "
            "or choose another --out"
        )
    try:
        check_writable(out)
    except OutputError as exc:
        raise click.ClickException(f"{exc}; pass a writable --out directory") from None
    _run_gen(cfg, out, workers or default_workers())


def _run_gen(cfg: GenConfig, out: Path, workers: int) -> None:
    console = _console()
    tty = console.is_terminal
    start = time.perf_counter()
    progress = Progress(
        TextColumn("[bold]{task.description:<20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not tty,
        transient=False,
    )
    tasks = {g: progress.add_task(g, total=cfg.train_size + cfg.test_size) for g in cfg.groups}
    done: Counter[tuple[str, str]] = Counter()

    def on_progress(group: str, split: str, n: int, needed: int) -> None:
        done[group, split] = n
        progress.update(tasks[group], completed=done[group, "train"] + done[group, "test"])

    try:
        with progress:
            manifest = write_dataset(cfg, out, workers, on_progress)
    except GenerationError as exc:
        raise click.ClickException(exc.renamed(_flag)) from None
    except OutputError as exc:
        raise click.ClickException(f"{exc}; pass a writable --out directory") from None
    elapsed = time.perf_counter() - start
    files = manifest["files"]
    if tty:
        table = Table(title=f"countdown-data → {out}", title_style="bold")
        for col in ("group", "ops", "train", "test", "MB"):
            table.add_column(col, justify="left" if col in ("group", "ops") else "right")
        for g in cfg.groups:
            mb = sum(files[split_file(g, s)]["bytes"] for s in SPLITS) / 1e6
            table.add_row(
                f"[cyan]{g}[/]",
                OPERATORS[g],
                f"{manifest['counts'][g]['train']:,}",
                f"{manifest['counts'][g]['test']:,}",
                f"{mb:.1f}",
            )
        console.print(table)
        console.print(
            f"[green]✓[/] wrote {len(files)} files + {MANIFEST} in {elapsed:.1f}s "
            f"({workers} workers)"
        )
        return
    # Only now, after the rename: a line per file that is really in place.
    for rel, f in files.items():
        click.echo(
            f"{out / rel}: {f['rows']} rows, {f['bytes'] / 1e6:.1f} MB, sha256 {f['sha256'][:16]}"
        )
    click.echo(f"{out / MANIFEST}: {len(files)} files in {elapsed:.1f}s")


# ----------------------------------------------------------------------------------- solve


@main.command(context_settings=CONTEXT)
@click.argument("numbers", type=int, nargs=-1, required=True)
@click.option("--target", type=int, required=True, help="The value to reach.")
@click.option("--ops", default="+-*/", help="Allowed operators (any of + - * /).")
def solve(numbers: tuple[int, ...], target: int, ops: str) -> None:
    """Print one equation using every NUMBER exactly once that equals --target.

    Exit status 1 (and a message) when no equation exists. Exact rational arithmetic: integer
    paths are preferred, fractional intermediates are used only when nothing else works.
    """
    from countdown_data.solver import check_ops
    from countdown_data.solver import solve as find

    try:
        ops = check_ops(ops)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    if len(numbers) > 6:
        raise OptionError("at most 6 numbers (the search grows super-exponentially)")
    if any(n < 0 for n in numbers):
        raise OptionError("numbers must be non-negative")
    eq = find(numbers, target, ops)
    if eq is None:
        click.echo(f"no solution: {list(numbers)} cannot make {target} with {ops}")
        sys.exit(1)
    click.echo(f"{eq} = {target}")


# -------------------------------------------------------------------------------- validate


@main.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    show_default="number of CPUs",
    help="Worker processes.",
)
@click.option(
    "--max-report",
    type=click.IntRange(min=1),
    default=20,
    help="Violations to list (all are counted).",
)
def validate(directory: Path, workers: int | None, max_report: int) -> None:
    """Re-check schema, solvability, the new-operator rule, duplicates, leakage and checksums.

    Exit status 1 with a report of every kind of violation found.
    """
    from countdown_data.validate import validate as run

    start = time.perf_counter()
    violations = run(directory, workers or default_workers())
    elapsed = time.perf_counter() - start
    console = _console()
    if not violations:
        manifest = read_manifest(directory)
        rows = sum(f["rows"] for f in manifest["files"].values())
        console.print(
            f"[green]✓[/] {directory}: {rows:,} rows in {len(manifest['files'])} files "
            f"satisfy every guarantee ({elapsed:.1f}s)"
        )
        return
    kinds = Counter(v.kind for v in violations)
    summary = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    for v in violations[:max_report]:
        console.print(f"[red]✗[/] {escape(str(v))}", soft_wrap=True)
    if len(violations) > max_report:
        console.print(f"... and {len(violations) - max_report} more")
    console.print(
        f"[red]{escape(str(directory))}: {len(violations)} violations ({summary})[/]",
        soft_wrap=True,
    )
    sys.exit(1)


# ----------------------------------------------------------------------------------- stats


@main.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR)
def stats(directory: Path) -> None:
    """Per-group table: counts, numbers per puzzle, target distribution, solution lengths."""
    from countdown_data.stats import dataset_stats

    try:
        data = dataset_stats(directory)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    table = Table(title=f"{directory}", title_style="bold")
    table.add_column("group", no_wrap=True)
    table.add_column("split", no_wrap=True)
    for col in ("rows", "numbers/puzzle", "target p10/50/90 (max)", "solution chars", "ops"):
        table.add_column(col, justify="right")
    for g, splits in data.items():
        for s, st in splits.items():
            per = " ".join(f"{k}:{v / st['rows']:.0%}" for k, v in st["numbers_per_puzzle"].items())
            t, c = st["target"], st["solution_chars"]
            share = " ".join(f"{op}{v:.0%}" for op, v in st["operator_share"].items())
            table.add_row(
                g,
                s,
                f"{st['rows']:,}",
                per,
                f"{t['p10']:.0f}/{t['median']:.0f}/{t['p90']:.0f} ({t['max']:.0f})",
                f"{c['median']:.0f} ({c['max']:.0f})",
                share,
            )
    console = _console()
    if not console.is_terminal:
        console.width = 150
    console.print(table)


# ------------------------------------------------------------------------------------- sft


@main.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    show_default="DIRECTORY/sft_<split>.jsonl",
    help="JSONL file to write.",
)
@click.option("--split", type=click.Choice(SPLITS), default="train")
@click.option(
    "--groups", default=None, show_default="all in the manifest", help="Comma-separated groups."
)
@click.option(
    "--template",
    type=click.Choice(TEMPLATES),
    default=None,
    show_default="as generated",
    help="Re-render prompts with this template.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Rows per group.")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
def sft(
    directory: Path,
    out: Path | None,
    split: str,
    groups: str | None,
    template: str | None,
    limit: int | None,
    force: bool,
) -> None:
    """Export prompt -> '<think>steps</think><answer>equation</answer>' pairs as JSONL."""
    from countdown_data.sft import sft_examples, write_sft_jsonl

    names = _parse_groups(groups) if groups else None
    out = out or directory / f"sft_{split}.jsonl"
    if out.exists() and not force:
        raise click.ClickException(f"{out} exists; pass --force to overwrite")
    try:
        examples = sft_examples(
            directory, split=split, groups=names, template=template, limit=limit
        )
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    write_sft_jsonl(examples, out)
    click.echo(f"{out}: {len(examples)} examples")
