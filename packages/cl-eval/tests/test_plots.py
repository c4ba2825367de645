"""The report's figures are for people: every label readable, numbers a reader can take in."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from matplotlib.figure import Figure

from cl_eval import plots

ROWS = ["base", "R1_plus", "R1_plus_minus", "R1_plus_minus_mul", "R1_plus_minus_mul_div"]
GROUPS = ["plus", "plus_minus", "plus_minus_mul", "plus_minus_mul_div"]


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plot functions would save, drawn and kept for inspection."""
    figs: list[Figure] = []

    def keep(fig: Figure, out):
        fig.canvas.draw()
        figs.append(fig)
        return out

    monkeypatch.setattr(plots, "_save", keep)
    return figs


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _collisions(fig: Figure) -> list[str]:
    """Tick labels of one axes that run into another axes (a panel or a colour bar)."""
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
        for other in fig.axes:
            if other is ax:
                continue
            box = other.get_window_extent(renderer)
            out += [
                f"{t.get_text()!r} of {ax.get_title()!r} runs into {other.get_title()!r}"
                for t in labels
                if t.get_window_extent(renderer).overlaps(box)
            ]
    return out


def _plasticity(drawn: list[Figure], dormant: np.ndarray, tmp_path) -> Figure:
    rng = np.random.default_rng(0)
    bounds = [f"{a}→{b}" for a, b in pairwise(ROWS[1:])]
    plots.plasticity(
        ROWS,
        ([0, 1, 2], dormant),
        ([0, 1, 2], 100 + rng.random((3, 5))),
        (GROUPS, -rng.random((5, 4))),
        (bounds, ["q", "k", "v", "o", "gate", "up", "down", "embed", "all"], rng.random((3, 9))),
        tmp_path / "p.png",
        "plasticity",
        tau=0.025,
    )
    return drawn[-1]


def test_plasticity_labels_never_run_into_another_panel_or_colour_bar(drawn, tmp_path) -> None:
    fig = _plasticity(drawn, np.random.default_rng(1).random((3, 5)) * 0.05, tmp_path)
    assert _collisions(fig) == []
    assert "0.03" in _texts(fig)  # cell values with two decimals
    assert len(fig.axes) == 8  # every panel with its own colour bar


def test_no_dormant_unit_is_said_not_coloured(drawn, tmp_path) -> None:
    fig = _plasticity(drawn, np.zeros((3, 5)), tmp_path)
    assert any(t.startswith("no dormant units") for t in _texts(fig))
    assert len(fig.axes) == 7  # no colour bar for a panel of zeros
    assert _collisions(fig) == []


def test_accuracy_cells_show_their_interval_with_two_decimals(drawn, tmp_path) -> None:
    """Bounds, not ± a half-width: near 0 an accuracy's interval is one-sided ([0.00, 0.01],
    never a misleading ±0.00)."""
    R = np.array([[0.3, 0.0], [0.7, 0.05]])
    lo = np.array([[0.254719, 0.0], [0.653719, 0.031]])
    hi = np.array([[0.348281, 0.0095], [0.746281, 0.072]])
    plots.accuracy_matrix(R, (lo, hi), ROWS[:2], GROUPS[:2], tmp_path / "a.png", "R")
    texts = _texts(drawn[-1])
    assert "0.70\n[0.65, 0.75]" in texts and "0.00\n[0.00, 0.01]" in texts
