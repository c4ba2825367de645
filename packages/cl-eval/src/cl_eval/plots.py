"""The report's figures (matplotlib, Agg backend: no display needed, safe in containers)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from cl_rundir.atomic import write_atomic

if TYPE_CHECKING:
    from cl_eval.plasticity import KLPoint
    from cl_eval.stats import Estimate


@dataclass
class StageSeries:
    """One stage's training curves, keyed by short metric name, on the stage's own step axis."""

    name: str
    steps: int
    series: dict[str, tuple[list[int], list[float]]]
    val: dict[str, tuple[list[int], list[float]]]
    bands: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    """95 % intervals (lower, upper) of the series that have one, drawn as a shaded band."""


ANNOTATED_CELLS = 80
"""Above this many cells a heatmap's numbers would not fit their cells: colours only."""

PANELS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "Train success rate (band: 95 %), mean reward, validation accuracy (dots)",
        ("success", "score"),
        "success / reward / accuracy",
    ),
    ("Policy / value loss", ("pg_loss", "vf_loss"), "loss"),
    ("Gradient norm", ("grad_norm",), "‖g‖"),
    ("Response length", ("response_length",), "tokens"),
    ("Response clip ratio", ("clip_ratio",), "fraction"),
    ("Entropy and KL", ("entropy", "kl_loss", "ppo_kl"), "nats"),
)


LABELS = {
    "success": "train success rate (correct answers)",
    "score": "mean reward (incl. format reward)",
}
"""Legend entries where the short metric name would be ambiguous."""


def _save(fig: plt.Figure, out: Path) -> Path:
    """Render to memory, then write atomically, so a crash leaves the old plot."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    write_atomic(out, buf.getvalue())
    return out


def _boundaries(ax: plt.Axes, stages: Sequence[StageSeries], label: bool) -> list[int]:
    offsets, x = [], 0
    for i, st in enumerate(stages):
        offsets.append(x)
        end = x + max(st.steps, 1)
        if i % 2:
            ax.axvspan(x, end, color="0.92", zorder=0)
        ax.axvline(x, color="0.6", lw=0.6, zorder=1)
        x = end
    if label:
        mids = [o + max(st.steps, 1) / 2 for o, st in zip(offsets, stages, strict=True)]
        top = ax.secondary_xaxis("top")
        top.set_xticks(mids, [st.name for st in stages], fontsize=7, rotation=30, ha="left")
        top.tick_params(length=0)
    return offsets


def training_metrics(stages: Sequence[StageSeries], out: Path, title: str) -> Path:
    """Curves over the whole curriculum (x = cumulative step), stage boundaries shaded/labelled."""
    fig, axes = plt.subplots(3, 2, figsize=(14, 10), sharex=True)
    for n, (ax, (heading, keys, ylabel)) in enumerate(zip(axes.flat, PANELS, strict=True)):
        offsets = _boundaries(ax, stages, label=n < 2)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        drawn = False
        for ki, key in enumerate(keys):
            for st, off in zip(stages, offsets, strict=True):
                xs, ys = st.series.get(key, ([], []))
                if xs:
                    if key in st.bands:
                        lo, hi = st.bands[key]
                        ax.fill_between(
                            [off + x for x in xs], lo, hi, color=colors[ki], alpha=0.2, lw=0
                        )
                    ax.plot(
                        [off + x for x in xs],
                        ys,
                        lw=0.9,
                        color=colors[ki],
                        label=LABELS.get(key, key)
                        if st is next(s for s in stages if key in s.series)
                        else None,
                    )
                    drawn = True
        if n == 0:
            for gi, group in enumerate(sorted({g for st in stages for g in st.val})):
                first = True
                for st, off in zip(stages, offsets, strict=True):
                    xs, ys = st.val.get(group, ([], []))
                    if xs:
                        ax.plot(
                            [off + x for x in xs],
                            ys,
                            "o",
                            ms=3,
                            color=colors[(gi + 2) % 10],
                            label=f"val acc {group}" if first else None,
                        )
                        first = False
                        drawn = True
        ax.set_title(
            heading,
            fontsize=9,
            loc="left",
            y=1.0,
            pad=-13,
            bbox={"facecolor": "white", "alpha": 0.8, "lw": 0},
        )
        ax.set_ylabel(ylabel)
        ax.margins(y=0.18)
        if n == 0:  # fractions: room above 1 for the legend, clear of every curve and dot
            ax.set_ylim(-0.05, 1.85)
            ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
        if drawn:
            ax.legend(
                fontsize=7,
                framealpha=0.8,
                **(
                    {"loc": "upper center", "bbox_to_anchor": (0.5, 0.86), "ncol": 2}
                    if n == 0
                    else {"loc": "best", "bbox_to_anchor": (0.0, 0.0, 1.0, 0.88)}  # below the title
                ),
            )
        else:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", color="0.5")
    for ax in axes[-1]:
        ax.set_xlabel("training step (cumulative over the curriculum)")
    fig.suptitle(title)
    return _save(fig, out)


def _annotated(
    ax: plt.Axes,
    M: np.ndarray,
    fmt: str,
    cmap: str,
    vmin: float,
    vmax: float,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    small_only: bool = False,
) -> None:
    """Heatmap with each cell's value written in it (and its interval ``[lo, hi]`` under it, if
    given); ``small_only``: values only while the grid is small enough to read them."""
    im = ax.imshow(np.ma.masked_invalid(M), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    plt.colorbar(im, ax=ax, fraction=0.046)
    if small_only and M.size > ANNOTATED_CELLS:
        return
    mid = (vmin + vmax) / 2
    for (i, j), v in np.ndenumerate(M):
        if not math.isnan(v):
            dark = v < mid if cmap in ("viridis", "magma") else abs(v - mid) > 0.6 * (vmax - mid)
            text = format(v, fmt)
            if bounds is not None and np.isfinite([bounds[0][i, j], bounds[1][i, j]]).all():
                text += f"\n[{bounds[0][i, j]:{fmt}}, {bounds[1][i, j]:{fmt}}]"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )


def accuracy_matrix(
    R: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    rows: Sequence[str],
    cols: Sequence[str],
    out: Path,
    title: str,
) -> Path:
    """Annotated heatmap of R (rows: base + each stage; columns: groups), each cell with its
    95 % interval (as bounds: an accuracy's interval is not symmetric near 0 or 1)."""
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(cols), 1.2 + 0.6 * len(rows)))
    _annotated(ax, R, ".2f", "viridis", 0.0, 1.0, bounds)
    ax.set_xticks(range(len(cols)), cols, rotation=20, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("evaluated group")
    ax.set_ylabel("after stage")
    ax.set_title(title)
    return _save(fig, out)


def forgetting(
    R: np.ndarray,
    bands: tuple[np.ndarray, np.ndarray],
    F: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    per_stage: dict[str, Sequence[float | None]],
    out: Path,
    title: str,
) -> Path:
    """Per-group accuracy across stages (with its 95 % band), per-stage BWT/forgetting, and the
    forgetting matrix."""
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(18, 5), gridspec_kw={"width_ratios": [3, 3, 2]})
    x = np.arange(len(rows))
    lo, hi = bands
    for j, g in enumerate(cols):
        (line,) = a1.plot(x, R[:, j], "o-", ms=4, label=g)
        a1.fill_between(x, lo[:, j], hi[:, j], color=line.get_color(), alpha=0.15, lw=0)
    a1.set_xticks(x, rows, rotation=45, ha="right", fontsize=8)
    a1.set_ylim(-0.02, 1.02)
    a1.set_ylabel("validation accuracy")
    a1.set_title("Accuracy of each group after each stage (bands: 95 % intervals)")
    a1.legend(fontsize=8)
    for name, vals in per_stage.items():
        ys = [np.nan if v is None else v for v in vals]
        a2.plot(x[1:], ys, "o-", ms=4, label=name)
    a2.axhline(0, color="0.5", lw=0.8)
    a2.set_xticks(x[1:], rows[1:], rotation=45, ha="right", fontsize=8)
    a2.set_title("Transfer and forgetting after each stage")
    a2.legend(fontsize=8)
    finite = F[np.isfinite(F)]
    lim = max(0.05, float(np.abs(finite).max())) if finite.size else 1.0
    _annotated(a3, F, ".2f", "RdBu_r", -lim, lim)
    a3.set_xticks(range(len(cols)), cols, rotation=20, ha="right", fontsize=8)
    a3.set_yticks(range(len(rows)), rows, fontsize=8)
    a3.set_title("Forgetting max_{l<k} R[l][j] − R[k][j]")
    fig.suptitle(title)
    return _save(fig, out)


def weight_change(
    panels: Sequence[tuple[str, list[str], list[str], np.ndarray]], out: Path, title: str
) -> Path:
    """One layer × module heatmap of relative L2 change per panel, on a shared log colour scale
    (grey: unchanged or absent)."""
    n = max(len(panels), 1)
    ncols = min(n, 6)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols + 1, 4.2 * nrows), squeeze=False)
    cmap = plt.get_cmap("magma").with_extremes(bad="0.88")
    vals = np.concatenate([M[np.isfinite(M) & (M > 0)] for *_, M in panels] or [np.array([])])
    norm = LogNorm(vmin=float(vals.min()), vmax=float(vals.max())) if vals.size else None
    im = None
    for i, (ax, (name, layers, mods, M)) in enumerate(zip(axes.flat, panels, strict=False)):
        im = ax.imshow(
            np.ma.masked_invalid(np.where(M > 0, M, np.nan)),
            cmap=cmap,
            norm=norm,
            aspect="auto",
            interpolation="nearest",
        )
        ax.set_xticks(range(len(mods)), mods, fontsize=7, rotation=90)
        step = max(1, len(layers) // 12)
        ticks = sorted({*range(0, len(layers), step), len(layers) - 1})
        ax.set_yticks(ticks, [layers[t] if i % ncols == 0 else "" for t in ticks], fontsize=7)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("layer")
    if im is not None and norm is not None:
        fig.colorbar(im, ax=axes, fraction=0.02, label="‖W1−W0‖ / ‖W0‖")
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no checkpoints", ha="center", transform=axes[0, 0].transAxes)
    fig.suptitle(title)
    return _save(fig, out)


def _grouped_bars(ax: plt.Axes, xlabels: Sequence[str], per_label: dict[str, list]) -> None:
    """One group of bars per x label, one bar per series, whiskers for each estimate's interval
    (``per_label[label][i]``: an estimate with value, lo, hi)."""
    width = 0.8 / max(len(per_label), 1)
    x = np.arange(len(xlabels))
    for n, (label, ests) in enumerate(per_label.items()):
        mean = np.array([np.nan if e.value is None else e.value for e in ests], dtype=float)
        lo = np.array([np.nan if e.lo is None else e.lo for e in ests], dtype=float)
        hi = np.array([np.nan if e.hi is None else e.hi for e in ests], dtype=float)
        err = np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)])
        at = x + (n - (len(per_label) - 1) / 2) * width
        bars = ax.bar(at, mean, width, yerr=err, capsize=3, label=label)
        for xi in at[np.isnan(mean)]:  # a missing bar is not a zero: say so where it would stand
            ax.text(xi, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90,
                    color=bars.patches[0].get_facecolor())  # fmt: skip
    ax.axhline(0, color="0.4", lw=0.8)


def compare_metrics(keys: Sequence[str], per_label: dict[str, list], out: Path, title: str) -> Path:
    """Grouped bars: one group per metric, one bar per condition, whiskers for its interval.
    ``per_label[label][i]`` is the estimate (value, lo, hi) of ``keys[i]``."""
    fig, ax = plt.subplots(figsize=(2.0 + 1.5 * len(keys), 4.5))
    _grouped_bars(ax, keys, per_label)
    ax.set_xticks(np.arange(len(keys)), list(keys), rotation=20, ha="right")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, out)


def rounds(
    groups: Sequence[str],
    gain: dict[str, list],
    start: dict[str, list],
    out: Path,
    title: str,
) -> Path:
    """Two panels of grouped bars (x = group, one bar per round, whiskers = paired 95 %
    intervals): the gain of the stage that trains the group, and its accuracy at that stage's
    start. Falling gains = loss of plasticity; rising starts = retention."""
    fig, (a_gain, a_start) = plt.subplots(1, 2, figsize=(4 + 2.4 * len(groups), 4.5),
                                          layout="constrained")  # fmt: skip
    for ax, series, heading in (
        (a_gain, gain, "Gain in the stage: accuracy at its end − at its start"),
        (a_start, start, "Accuracy at the stage's start"),
    ):
        _grouped_bars(ax, groups, series)
        ax.set_xticks(np.arange(len(groups)), list(groups), fontsize=9)
        ax.set_title(heading, fontsize=10)
        ax.set_xlabel("group trained by the stage")
        ax.set_ylabel("accuracy" if ax is a_start else "accuracy gain")
        ax.grid(axis="y", color="0.9", lw=0.6)
        ax.set_axisbelow(True)
    a_start.set_ylim(0, 1)
    a_gain.legend(fontsize=8, title="round", title_fontsize=8)
    fig.suptitle(title + " (whiskers: paired 95 % intervals over puzzles)", fontsize=11)
    return _save(fig, out)


class Curve(NamedTuple):
    """One pass@k curve over k: its role (``base``, ``last`` = right after the group's last
    training, ``end``), its legend label, and its values with 95 % bounds."""

    role: str
    label: str
    values: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


CURVE_COLORS = {"base": "0.45", "last": "C0", "end": "C3"}
"""One colour per role in every panel."""


def pass_at_k(ks: Sequence[int], curves: dict[str, list[Curve]], out: Path, title: str) -> Path:
    """One panel per group: pass@k against k for a few rows of the matrix, with 95 % bands. A
    curve that falls at k = 1 but not at k = n lost a first choice, not an ability."""
    fig, axes = plt.subplots(1, len(curves), figsize=(1.5 + 3.3 * len(curves), 3.8),
                             sharey=True, layout="constrained", squeeze=False)  # fmt: skip
    for ax, (group, rows) in zip(axes[0], curves.items(), strict=True):
        for role, label, v, lo, hi in rows:
            color = CURVE_COLORS[role]
            ax.plot(ks, v, marker="o", ms=3, color=color, label=label)
            ax.fill_between(ks, lo, hi, color=color, alpha=0.15, lw=0)
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("k (samples per puzzle)")
        ax.set_xticks(list(ks))
        ax.set_ylim(0, 1)
        ax.grid(color="0.9", lw=0.6)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("pass@k")
    fig.suptitle(title, fontsize=11)
    return _save(fig, out)


def _dormant_panel(ax: plt.Axes, rows: Sequence[str], layers: list[int], M: np.ndarray) -> None:
    """Dormant fraction per layer (rows) after each stage (columns); a panel whose every
    measured value is 0 says so instead of drawing a colour scale for nothing."""
    finite = M[np.isfinite(M)]
    if finite.size and not finite.any():
        ax.text(
            0.5,
            0.5,
            f"no dormant units\nin any of the {len(layers)} layers after any stage",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=11,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        return
    _annotated(ax, M, ".2f", "magma", 0.0, max(float(finite.max()), 1e-9), small_only=True)
    ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=8)
    ax.set_xticks(range(len(rows)), list(rows), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("layer")
    ax.invert_yaxis()


def plasticity(
    rows: Sequence[str],
    dormant: tuple[list[int], np.ndarray] | None,
    ranks: tuple[list[int], np.ndarray],
    soft: tuple[Sequence[str], np.ndarray] | None,
    overlap: tuple[list[str], list[str], np.ndarray] | None,
    out: Path,
    title: str,
    tau: float = 0.025,
) -> Path:
    """Four panels, two by two: dormant MLP units and effective rank per layer after each stage,
    the soft-accuracy matrix, and the top-1 % overlap of consecutive stages' updates per module.
    Each panel gets its own colour bar and room for its labels (constrained layout)."""
    fig, axes = plt.subplots(2, 2, figsize=(15, 9.5), layout="constrained")
    (a_dormant, a_rank), (a_soft, a_overlap) = axes

    def missing(ax: plt.Axes, why: str) -> None:
        ax.text(0.5, 0.5, why, ha="center", transform=ax.transAxes, color="0.5")
        ax.set_axis_off()

    a_dormant.set_title(f"Dormant MLP units (τ = {tau:g}): fraction per layer", fontsize=10)
    if dormant is None or not np.isfinite(dormant[1]).any():
        missing(a_dormant, "not measured")
    else:
        _dormant_panel(a_dormant, rows, *dormant)
    a_rank.set_title("Effective rank of MLP matrices, per layer", fontsize=10)
    layers, M = ranks
    if not np.isfinite(M).any():
        missing(a_rank, "not measured")
    else:
        finite = M[np.isfinite(M)]
        lo, hi = float(finite.min()), float(finite.max())
        _annotated(a_rank, M, ".1f", "viridis", lo, hi if hi > lo else lo + 1, small_only=True)
        a_rank.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=8)
        a_rank.set_xticks(range(len(rows)), list(rows), rotation=30, ha="right", fontsize=8)
        a_rank.set_ylabel("layer")
        a_rank.invert_yaxis()
    a_soft.set_title("Soft accuracy: mean log-likelihood per token of reference solutions",
                     fontsize=10)  # fmt: skip
    if soft is None:
        missing(a_soft, "not measured")
    else:
        cols, S = soft
        finite = S[np.isfinite(S)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        _annotated(a_soft, S, ".2f", "viridis", lo, hi if hi > lo else lo + 1)
        a_soft.set_xticks(range(len(cols)), list(cols), rotation=20, ha="right", fontsize=8)
        a_soft.set_yticks(range(len(rows)), list(rows), fontsize=8)
        a_soft.set_ylabel("after stage")
    a_overlap.set_title("Top-1 % |Δ| overlap of consecutive stages' updates (chance ≈ 0.005)",
                        fontsize=10)  # fmt: skip
    if overlap is None:
        missing(a_overlap, "fewer than 2 stages")
    else:
        bounds, mods, shared = overlap
        _annotated(a_overlap, shared, ".2f", "viridis", 0.0, max(0.05, float(np.nanmax(shared))))
        a_overlap.set_xticks(range(len(mods)), list(mods), fontsize=8)
        a_overlap.set_yticks(range(len(bounds)), list(bounds), fontsize=8)
        a_overlap.set_xlabel("module")
    fig.suptitle(title)
    return _save(fig, out)


def kl_forgetting(
    pairings: dict[str, tuple[Sequence[KLPoint], Estimate]], out: Path, title: str
) -> Path:
    """A panel per KL pairing (``plasticity.KL_PAIRINGS``, RL's Razor's first): the accuracy
    change of the other groups against the KL the stage moved on its own group, with the
    least-squares line and, above it, Pearson's r with its 95 % interval. A group has one colour
    in both panels, and one legend below them, where it hides no point."""
    from cl_eval.plasticity import KL_PAIRINGS

    shown = [p for p in KL_PAIRINGS if p.name in pairings]
    groups = sorted({pt.group for points, _ in pairings.values() for pt in points})
    colour = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    fig, axes = plt.subplots(
        1, len(shown), figsize=(6.2 * len(shown), 5.2), squeeze=False, layout="constrained"
    )
    for ax, pairing in zip(axes[0], shown, strict=True):
        points, r = pairings[pairing.name]
        n = f"{len(points)} point{'s' if len(points) != 1 else ''}"
        if not points:
            summary = "nothing to correlate"
        elif r.value is None:
            summary = f"{n}: too few, or too alike, for r"
        else:
            ci = "" if r.lo is None else f" [{r.lo:.2f}, {r.hi:.2f}]"
            summary = f"Pearson r = {r.value:.2f}{ci}, {n}"
        ax.set_title(f"{pairing.title}\n{summary}", fontsize=10)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel(pairing.kl_label)
        ax.set_ylabel(pairing.change_label)
        if not points:
            ax.text(0.5, 0.5, "no KL measured", ha="center", transform=ax.transAxes, color="0.5")
            continue
        x = np.array([p.kl for p in points])
        y = np.array([p.change for p in points])
        for g in groups:
            sel = [i for i, p in enumerate(points) if p.group == g]
            if sel:
                ax.scatter(x[sel], y[sel], s=25, color=colour[g])
        if r.value is not None:
            slope, intercept = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 20)
            ax.plot(xs, slope * xs + intercept, color="0.4", lw=1)
    handles = [plt.Line2D([], [], ls="", marker="o", color=colour[g], label=g) for g in groups]
    if any(r.value is not None for _, r in pairings.values()):
        handles.append(plt.Line2D([], [], color="0.4", lw=1, label="least squares"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
                   title="other group j", title_fontsize=8)  # fmt: skip
    fig.suptitle(title)
    return _save(fig, out)
