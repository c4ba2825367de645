"""Progress of the long phases of ``cl-eval report`` (weight change, spectra, update geometry,
activation probes): a bar per phase on a terminal, nothing at all elsewhere (CI logs, pipes,
library use), so a log holds results, not redraws."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

Advance = Callable[[float], None]
"""Called with the units of work just done."""

_shown: ContextVar[Progress | None] = ContextVar("cl_eval_progress", default=None)


def _ignore(_units: float) -> None:
    pass


@contextmanager
def shown(console: Console) -> Iterator[None]:
    """Draw the phases run inside this block as progress bars, if ``console`` is a terminal."""
    if not console.is_terminal:
        yield
        return
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bars:
        token = _shown.set(bars)
        try:
            yield
        finally:
            _shown.reset(token)


@contextmanager
def phase(description: str, total: float) -> Iterator[Advance]:
    """One phase of ``total`` units of work; yields the function that reports units done (it
    does nothing when no bars are shown, and may be called from worker threads)."""
    bars = _shown.get()
    if bars is None:
        yield _ignore
        return
    task = bars.add_task(description, total=total)
    yield lambda units: bars.advance(task, units)
    bars.update(task, completed=total)
