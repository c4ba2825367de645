"""The long phases of a report show progress bars on a terminal and print nothing elsewhere."""

from __future__ import annotations

import io

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from cl_eval import progress
from cl_eval.analysis import analyse
from cl_eval.cli import main
from cl_eval.geometry import checkpoint_spectra, update_geometry

PHASES = ("weight change", "spectra", "update geometry")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, verl_line, synth):
    root = tmp_path_factory.mktemp("runs") / "tiny"
    R = np.linspace(0.1, 0.6, 4 * 4).reshape(4, 4)
    synth.make_run(root, verl_line, R, [(1, g) for g in synth.GROUPS[:3]], synth.GROUPS)
    return root


def _analysed(run_dir, terminal: bool) -> str:
    out = io.StringIO()
    with progress.shown(Console(file=out, force_terminal=terminal, width=120)):
        analyse(run_dir, weights=True, probe=False)
    return out.getvalue()


def test_a_terminal_shows_every_long_phase_to_the_end(run_dir) -> None:
    shown = _analysed(run_dir, terminal=True)
    for name in PHASES:
        assert name in shown
    assert shown.count("100%") >= len(PHASES)


def test_logs_and_pipes_get_no_progress_output(run_dir) -> None:
    assert _analysed(run_dir, terminal=False) == ""
    r = CliRunner().invoke(main, ["report", "--run", str(run_dir), "--no-probe"])
    assert r.exit_code == 0, r.output
    assert not any(name in r.output for name in PHASES)


def test_kernels_report_all_of_their_work(run_dir) -> None:
    done: list[float] = []
    m = run_dir / "metrics"
    update_geometry(m / "initial_1_plus", m / "final_1_plus", m / "initial_1_plus_minus",
                    m / "final_1_plus_minus", progress=done.append)  # fmt: skip
    assert sum(done) == pytest.approx(1) and len(done) > 1
    done.clear()
    checkpoint_spectra(m / "final_1_plus", progress=done.append)
    assert sum(done) == pytest.approx(1) and len(done) > 1
