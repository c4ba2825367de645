"""What a person sees while the curriculum runs: a summary, not the backend's stream.

The stage process's whole output goes to its log file (cl-eval's input) unchanged; the console
gets, per stage, one live line on a terminal (step/total, mean reward, the last validation
accuracy per group, ETA) or, off a terminal (CI, ``| tee``), one plain line every few steps and
at each validation, and a summary line at each stage boundary. ``verbose`` also echoes the stream.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path
from typing import IO, Any

from rich.console import Console as RichConsole
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cl_rundir.metric_lines import TOTAL_STEPS, data_sources, group_accuracy, parse_metric_line
from cl_rundir.record import StageRecord
from cl_trainer.stages import StagePlan
from countdown_data.groups import group_of

REWARD_KEY = "critic/score/mean"
"""veRL's mean sequence score of the step's rollouts (the reward before any KL penalty)."""
_TQDM_TOTAL = re.compile(r"Training Progress:.*?\|\s*\d+/(\d+)\b")
FAIL_TAIL_LINES = 15
PLAIN_LINES_PER_STAGE = 4
"""Off a terminal, about this many progress lines per stage (plus one per validation)."""


def _accuracies(metrics: dict[str, float]) -> dict[str, float]:
    """The validation accuracy of every data source in a metric record."""
    out = {}
    for source in data_sources(metrics):
        got = group_accuracy(metrics, source)
        if got is not None:
            out[group_of(source)] = got[0]
    return out


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class StageView:
    """What the console knows about the running stage, from the lines it has seen."""

    def __init__(self, plan: StagePlan, index: int, count: int, log: Path) -> None:
        self.plan = plan
        self.log = log
        self.label = f"[{index + 1}/{count} {plan.stage.name}]"
        self.step = 0
        self.total: int | None = None
        self.reward: float | None = None
        self.first_val: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.t0 = time.monotonic()
        self.step_times: list[tuple[int, float]] = []

    def update(self, line: str) -> tuple[bool, bool]:
        """Take one output line; returns (a training step finished, a validation arrived)."""
        if (m := TOTAL_STEPS.search(line) or _TQDM_TOTAL.search(line)) and self.total is None:
            self.total = int(m.group(1))
        parsed = parse_metric_line(line)
        if parsed is None:
            return False, False
        step, metrics = parsed
        acc = _accuracies(metrics)
        if acc:
            self.first_val = self.first_val or acc
            self.last_val = acc
        trained = REWARD_KEY in metrics
        if trained:
            self.step = step
            self.reward = metrics[REWARD_KEY]
            self.step_times.append((step, time.monotonic()))
        return trained, bool(acc)

    def seconds_per_step(self) -> float | None:
        if len(self.step_times) < 2:
            return None
        (s0, t0), (s1, t1) = self.step_times[0], self.step_times[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 else None

    def info(self) -> str:
        parts = []
        if self.reward is not None:
            parts.append(f"reward {self.reward:.3f}")
        if self.last_val:
            parts.append("val " + " ".join(f"{g} {a:.2f}" for g, a in self.last_val.items()))
        return " · ".join(parts)

    def plain(self) -> str:
        total = f"/{self.total}" if self.total else ""
        parts = [f"{self.label} step {self.step}{total}", self.info()]
        per = self.seconds_per_step()
        if per is not None:
            parts.append(f"{per:.1f} s/step")
            if self.total:
                parts.append(f"ETA {_clock(per * (self.total - self.step))}")
        return " · ".join(p for p in parts if p)


class Console:
    """The engine's reporter (``cl_trainer.engine.Reporter``)."""

    def __init__(self, *, verbose: bool = False, file: IO[str] | None = None) -> None:
        self.out = RichConsole(file=file or sys.stdout, highlight=False, soft_wrap=True)
        self.verbose = verbose
        self.live = self.out.is_terminal and not verbose
        self.view: StageView | None = None
        self.progress: Progress | None = None
        self.task: Any = None

    def note(self, text: str) -> None:
        self.out.print(escape(text))

    def stage_started(self, plan: StagePlan, total: int, resumed: bool, log: Path) -> None:
        self.view = StageView(plan, plan.stage.index, total, log)
        verb = "resuming" if resumed else "starting"
        self.out.print(escape(f"{self.view.label} {verb} from {plan.actor}; log: {log}"))
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=self.out,
                transient=True,
            )
            self.task = self.progress.add_task(escape(self.view.label), total=None, info="")
            self.progress.start()

    def output(self, line: str) -> None:
        if self.verbose:
            self.out.print(line, markup=False, emoji=False)
        view = self.view
        if view is None:
            return
        trained, validated = view.update(line)
        if self.progress is not None:
            self.progress.update(
                self.task, completed=view.step, total=view.total, info=escape(view.info())
            )
            return
        if self.verbose or not (trained or validated):
            return
        every = max(1, math.ceil((view.total or 20) / PLAIN_LINES_PER_STAGE))
        if validated or view.step % every == 0:
            self.out.print(escape(view.plain()))

    def stage_finished(self, record: StageRecord) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        view = self.view
        self.view = None
        took = _clock(record.duration_s or 0.0)
        status = record.status
        if status == "done":
            moved = ""
            if view is not None and view.last_val:
                moved = "; validation " + ", ".join(
                    f"{g} {view.first_val.get(g, math.nan):.2f} → {a:.2f}"
                    for g, a in view.last_val.items()
                )
            self.out.print(
                escape(f"[{record.name}] done at step {record.global_steps} in {took}{moved}")
            )
            return
        if status == "failed" and not self.verbose:
            lines = (record.error_tail or "").rstrip("\n").splitlines()
            for line in lines[-FAIL_TAIL_LINES:]:
                self.out.print(escape(f"  | {line}"))
        how = record.signal or f"exit code {record.exit_code}"
        log = view.log if view is not None else record.log
        self.out.print(
            escape(f"[{record.name}] {status} ({how}) after {took}; log: {log}"), style="red"
        )
