"""The writers of ``cl-eval report``: metrics JSON, plots and report.md (optionally report.html),
all rendered from one :class:`cl_eval.analysis.Analysis`."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cl_eval.analysis import Analysis, StageResult, SuccessSeries, analyse
from cl_eval.matrix import DEFINITIONS
from cl_eval.passk import PassAtK
from cl_eval.plasticity import (
    KL_DEFINITION,
    KL_PAIRINGS,
    SUMMARY_TAU,
    KLPoint,
    Plasticity,
    kl_correlation,
    kl_forgetting,
)
from cl_eval.run import Run
from cl_eval.stats import Estimate, MetricKey
from cl_eval.turnover import SOLVED
from cl_rundir.atomic import write_atomic
from cl_rundir.layout import MODELS_DIR

if TYPE_CHECKING:
    from cl_eval.plots import Curve

SCHEMA_VERSION = 1


def json_safe(obj: object) -> object:
    """JSON-safe copy: NaN/inf become null (strict JSON readers reject them), records become
    objects, and typed keys their JSON spelling."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return json_safe(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    return obj


def write_json(path: Path, obj: object) -> None:
    write_atomic(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def _ci(v: float, lo: float, hi: float) -> str:
    if not math.isfinite(v):
        return "–"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:.3f}"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _interval_cells(est: Estimate) -> list[str]:
    """``[lo, hi]`` and whether it excludes 0 (``yes``/``no``), or dashes."""
    if est.lo is None or est.hi is None:
        return ["–", "–"]
    return [f"[{_signed(est.lo)}, {_signed(est.hi)}]", yes_no(est.excludes_zero)]


def yes_no(flag: bool | None) -> str:
    return "–" if flag is None else ("yes" if flag else "no")


def _metric_row(est: Estimate) -> list[str]:
    """A signed value with its interval cells (dashes where undefined)."""
    if est.value is None:
        return ["–", "–", "–"]
    return [_signed(est.value), *_interval_cells(est)]


def _fmt(v: object, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{v:+.3f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _sci(v: float | None) -> str:
    return "–" if v is None else f"{v:.3e}"


class Doc:
    """A report as blocks, rendered both to GitHub markdown and to a self-contained HTML page."""

    def __init__(self) -> None:
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def img(self, rel: str, alt: str) -> None:
        self.blocks.append(("img", rel, alt))

    def markdown(self) -> str:
        out: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"{'#' * b[1]} {b[2]}\n")
            elif b[0] == "p":
                out.append(f"{b[1]}\n")
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]) + "\n")
            elif b[0] == "table":
                esc = [[c.replace("|", "\\|") for c in r] for r in [b[1], *b[2]]]
                out.append("| " + " | ".join(esc[0]) + " |")
                out.append("|" + "|".join("---" for _ in b[1]) + "|")
                out.extend("| " + " | ".join(r) + " |" for r in esc[1:])
                out.append("")
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})\n")
        return "\n".join(out)

    def html(self, root: Path, title: str) -> str:
        e = html.escape
        out = [
            f"<!doctype html><meta charset='utf-8'><title>{e(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;"
            "text-align:right}img{max-width:100%}</style>",
        ]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "ul":
                out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in b[1]) + "</tr>")
                out.extend("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b[2])
                out.append("</table>")
            elif b[0] == "img":
                data = base64.b64encode((root / b[1]).read_bytes()).decode()
                out.append(f"<p><img alt='{e(b[2])}' src='data:image/png;base64,{data}'></p>")
        return "\n".join(out) + "\n"


@dataclass
class ReportResult:
    run: Run
    outputs: list[Path]
    warnings: list[str]
    consolidated: dict


def build_report(
    run_dir: Path,
    size: str | None = None,
    *,
    weights: bool = True,
    write_html: bool = False,
    workers: int | None = None,
    probe: bool = True,
) -> ReportResult:
    """Everything ``cl-eval report`` writes, for one run directory."""
    a = analyse(run_dir, size, weights=weights, workers=workers, probe=probe)
    entries = [stage_entry(a.run, res) for res in a.results]
    outputs = write_stage_metrics(a, entries)
    consolidated = consolidated_metrics(a, entries)
    cpath = a.run.path / MODELS_DIR / f"consolidated_metrics_{a.run.size}.json"
    write_json(cpath, consolidated)
    outputs.append(cpath)
    figs = write_plots(a)
    outputs.extend(figs.values())
    doc = document(a, figs)
    md = a.run.path / "report.md"
    write_atomic(md, doc.markdown())
    outputs.append(md)
    if write_html:
        page = a.run.path / "report.html"
        write_atomic(page, doc.html(a.run.path, _title(a.run)))
        outputs.append(page)
    return ReportResult(a.run, outputs, a.warnings, consolidated)


def _title(run: Run) -> str:
    return f"{run.name} ({run.size})"


def stage_entry(run: Run, res: StageResult) -> dict:
    """One stage's metrics JSON (``metrics/metrics_<round>_<group>_<size>.json``)."""
    st = res.stage
    return {
        "schema_version": SCHEMA_VERSION,
        "stage": {
            "index": st.index,
            "round": st.round,
            "group": st.group,
            "name": st.name,
            "status": st.status,
            "log": _rel(st.log, run.path),
            "initial_model": _rel(st.initial_model, run.path),
            "final_model": _rel(st.final_model, run.path),
        },
        "steps": _steps(res),
        "validation": {"before": res.before, "after": res.after, "history": res.history},
        "training": res.train,
        "weight_change": {
            kind: None if d is None else d.to_dict(per_tensor=False)
            for kind, d in (("stage", res.weights_stage), ("cumulative", res.weights_cumulative))
        },
    }


def write_stage_metrics(a: Analysis, entries: list[dict]) -> list[Path]:
    """The per-stage JSON files of the stages that have a log or a weight diff."""
    out = []
    for res, entry in zip(a.results, entries, strict=True):
        st = res.stage
        if res.log is not None or res.weights_stage is not None:
            path = a.run.path / MODELS_DIR / f"metrics_{st.round}_{st.group}_{a.run.size}.json"
            write_json(path, entry)
            out.append(path)
    return out


def consolidated_metrics(a: Analysis, entries: list[dict]) -> dict:
    """All numbers of the report in one document (``consolidated_metrics_<size>.json``)."""
    run = a.run
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run": {
            "path": str(run.path),
            "name": run.name,
            "size": run.size,
            "base_model": run.base_model,
            "groups": run.groups,
            "stages": [e["stage"] for e in entries],
        },
        **a.matrix_payload(),
        "plasticity": None
        if a.plasticity is None
        else {
            **a.plasticity.as_dict(),
            "kl_forgetting": {
                name: {"points": points, "correlation": kl_correlation(points)}
                for name, points in _kl_points(a).items()
            },
            "kl_definition": KL_DEFINITION,
        },
        "per_round": a.per_round,
        "rounds": a.round_results() if a.rounds > 1 else None,
        "pass_at_k": None
        if a.pass_at_k is None
        else {
            "n": a.pass_at_k.n,
            "k": a.pass_at_k.ks,
            "values": a.pass_at_k.values,
            "lo": a.pass_at_k.lo,
            "hi": a.pass_at_k.hi,
            "metrics": {str(k): m for k, m in a.pass_at_k.metrics.items()},
            "metric_intervals": {str(k): m for k, m in a.pass_at_k.intervals.items()},
        },
        "turnover": {"solved_at": SOLVED, "flips": a.flips, "losses": a.losses},
        "forgetting_matrix": a.F,
        "definitions": DEFINITIONS,
        "stages": [
            {
                "name": e["stage"]["name"],
                "steps": e["steps"],
                "before": e["validation"]["before"],
                "after": e["validation"]["after"],
                "training": {
                    k: {x: getattr(v, x) for x in ("key", "first", "last", "mean")}
                    for k, v in e["training"].items()
                },
                "weight_change": {
                    kind: None
                    if w is None
                    else {"global": w["global"], "by_module": w["by_module"], "dtypes": w["dtypes"]}
                    for kind, w in e["weight_change"].items()
                },
            }
            for e in entries
        ],
        "warnings": a.warnings,
    }


def write_plots(a: Analysis) -> dict[str, Path]:
    """The report's figures under ``plots/``, by name."""
    from cl_eval import plots  # matplotlib: only when plotting

    run, results, size = a.run, a.results, a.run.size
    plot_dir = run.path / "plots"
    series = [
        plots.StageSeries(
            res.stage.name,
            _steps(res)["last"] or 0,
            {k: (v.steps, v.values) for k, v in res.train.items()},
            {
                g: (
                    [h.step for h in res.history if g in h.accuracy],
                    [h.accuracy[g] for h in res.history if g in h.accuracy],
                )
                for g in run.groups
            },
            {k: (v.lo, v.hi) for k, v in res.train.items() if isinstance(v, SuccessSeries)},
        )
        for res in results
    ]
    title = _title(run)
    figs: dict[str, Path] = {}
    figs["training"] = plots.training_metrics(
        series, plot_dir / f"training_metrics_{size}.png", f"{title}: training"
    )
    figs["matrix"] = plots.accuracy_matrix(
        a.R,
        (a.uncertainty.lo, a.uncertainty.hi),
        a.row_names,
        run.groups,
        plot_dir / f"accuracy_matrix_{size}.png",
        f"{title}: accuracy matrix R[stage][group]",
    )
    per_stage = {}
    if a.metrics:
        pad = [None] * (len(run.stages) - a.stages_used)
        per_stage = {
            "BWT (GEM)": list(a.metrics["bwt_per_stage"]) + pad,
            "forgetting (max-based)": list(a.metrics["forgetting_max_per_stage"]) + pad,
            "average accuracy (seen groups)": list(a.metrics["average_accuracy_per_stage"]) + pad,
        }
    figs["forgetting"] = plots.forgetting(
        a.R,
        (a.uncertainty.lo, a.uncertainty.hi),
        a.F,
        a.row_names,
        run.groups,
        per_stage,
        plot_dir / f"forgetting_{size}.png",
        f"{title}: forgetting",
    )
    if a.rounds > 1:
        results_by = {(r.group, r.round): r for r in a.round_results()}
        numbers = sorted({r for _, r in results_by})
        none = Estimate(None)

        def per_round(attr: str) -> dict[str, list[Estimate]]:
            return {
                str(r): [getattr(results_by[g, r], attr) if (g, r) in results_by else none
                         for g in run.groups]
                for r in numbers
            }  # fmt: skip

        figs["rounds"] = plots.rounds(
            run.groups,
            per_round("gain"),
            per_round("start"),
            plot_dir / f"rounds_{size}.png",
            f"{title}: does each return to a group gain less, or start higher?",
        )
    if a.pass_at_k is not None:
        figs["pass_at_k"] = plots.pass_at_k(
            a.pass_at_k.ks,
            _pass_curves(a, a.pass_at_k),
            plot_dir / f"pass_at_k_{size}.png",
            f"{title}: pass@k (bands: 95 % intervals over puzzles)",
        )
    panels = [
        (f"{res.stage.name}", *res.weights_stage.layer_module_matrix())
        for res in results
        if res.weights_stage is not None
    ]
    last_cum = next((r for r in reversed(results) if r.weights_cumulative is not None), None)
    if last_cum is not None:
        panels.append(
            (f"base→{last_cum.stage.name}", *last_cum.weights_cumulative.layer_module_matrix())
        )
    if panels:
        figs["weights"] = plots.weight_change(
            panels,
            plot_dir / f"weight_change_{size}.png",
            f"{title}: relative L2 weight change per layer × module (grey = unchanged)",
        )
    if a.plasticity is not None:
        p = a.plasticity
        figs["plasticity"] = plots.plasticity(
            p.rows,
            _dormant_matrix(p),
            p.rank_matrix(),
            _soft_matrix(a),
            _overlap_matrix(p),
            plot_dir / f"plasticity_{size}.png",
            f"{title}: plasticity",
            tau=SUMMARY_TAU,
        )
        figs["kl"] = plots.kl_forgetting(
            {name: (pts, kl_correlation(pts)) for name, pts in _kl_points(a).items()},
            plot_dir / f"kl_forgetting_{size}.png",
            f"{title}: forgetting vs KL on the new task",
        )
    return figs


OVERLAP_MODULES = ("q", "k", "v", "o", "gate", "up", "down", "embed", "all")


def _pass_curves(a: Analysis, pk: PassAtK) -> dict[str, list[Curve]]:
    """Per group, pass@k of the base model, right after the group's last training (when that is
    not the last stage) and at the end."""
    from cl_eval.plots import Curve

    T, out = a.stages_used, {}
    for j, g in enumerate(a.run.groups):
        last = a.curriculum.last(j, T)
        rows = [("base", "base", 0)]
        if last is not None and last < T:
            rows.append(("last", f"after {a.row_names[last]} (last trained)", last))
        rows.append(("end", f"end ({a.row_names[T]})", T))
        out[g] = [
            Curve(role, label, pk.values[:, i, j], pk.lo[:, i, j], pk.hi[:, i, j])
            for role, label, i in rows
        ]
    return out


def _kl_points(a: Analysis) -> dict[str, list[KLPoint]]:
    """Pairing name (``KL_PAIRINGS``) -> the run's points."""
    if a.plasticity is None:
        return {p.name: [] for p in KL_PAIRINGS}
    cols = [a.run.groups.index(st.group) for st in a.run.stages]
    return kl_forgetting(a.plasticity, a.R, cols, a.run.groups)


def _dormant_matrix(p: Plasticity, tau: float = SUMMARY_TAU) -> tuple[list[int], np.ndarray] | None:
    probed = [pr for pr in p.probes or [] if pr]
    if not probed:
        return None
    layers = len(probed[0].dormant.get(tau, []))
    M = np.full((layers, len(p.rows)), np.nan)
    for r, pr in enumerate(p.probes or []):
        if pr:
            M[:, r] = pr.dormant.get(tau, [np.nan] * layers)
    return list(range(layers)), M


def _soft_matrix(a: Analysis) -> tuple[list[str], np.ndarray] | None:
    S = None if a.plasticity is None else a.plasticity.soft_matrix(a.run.groups)
    return None if S is None else (a.run.groups, S)


def _overlap_matrix(p: Plasticity) -> tuple[list[str], list[str], np.ndarray] | None:
    bounds = [(f"{p.rows[k + 1]}→{p.rows[k + 2]}", g) for k, g in enumerate(p.geometry) if g]
    if not bounds:
        return None
    M = np.array([[g.overlap.get(m, np.nan) for m in OVERLAP_MODULES] for _, g in bounds])
    return [b for b, _ in bounds], list(OVERLAP_MODULES), M


def _rel(p: Path | None, root: Path) -> str | None:
    if p is None:
        return None
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def _steps(res: StageResult) -> dict:
    ts = res.train_steps
    return {"first": ts[0] if ts else None, "last": ts[-1] if ts else None, "count": len(ts)}


# ------------------------------------------------------------------------------ report.md


def document(a: Analysis, figs: dict[str, Path]) -> Doc:
    """report.md (and report.html): one section after another."""
    d = Doc()
    for section in (
        _header,
        _warnings,
        _accuracy_matrix,
        _transfer_and_forgetting,
        _rounds,
        _pass_at_k,
        _turnover,
        _plasticity,
        _noise_floor,
        _stages,
        _training_curves,
        _weight_change,
        _files,
    ):
        section(d, a, figs)
    return d


def _img(d: Doc, a: Analysis, figs: dict[str, Path], key: str, alt: str) -> None:
    if key in figs:
        d.img(_rel(figs[key], a.run.path) or "", alt)


def _header(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    run = a.run
    d.h(1, f"Continual Countdown report: {run.name}")
    done = sum(1 for st in run.stages if st.status == "done")
    d.p(
        f"Run `{run.path}` · size **{run.size}** · base model `{run.base_model or '?'}` · "
        f"{len(run.stages)} stages ({done} done) · groups: {', '.join(run.groups)}."
    )


def _warnings(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    if a.warnings:
        d.h(2, "Warnings (partial data)")
        d.ul(a.warnings)


def _accuracy_matrix(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    unc = a.uncertainty
    d.h(2, "Accuracy matrix")
    d.p(
        "R[i][j] = validation accuracy on group j (columns) after stage i (rows); row `base` "
        "is the first stage's validation before any training. Each cell: the estimate and its "
        f"95 % interval, from {unc.source}; n = puzzles (or answers) behind the cell."
    )
    d.table(
        ["after stage", *a.run.groups, "n", "source"],
        [
            [
                name,
                *(_ci(float(v), unc.lo[i, j], unc.hi[i, j]) for j, v in enumerate(a.R[i])),
                "/".join(str(n) if n else "–" for n in unc.n[i]),
                a.matrix.origin[i],
            ]
            for i, name in enumerate(a.row_names)
        ],
    )
    _img(d, a, figs, "matrix", "accuracy matrix")


def _transfer_and_forgetting(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    if not a.metrics:
        return
    d.h(2, "Transfer and forgetting")
    d.p(
        f"Computed over stages 1..{a.stages_used}. Each stage is a task occurrence; with several "
        "rounds a group's reference is its most recent training (BWT, forgetting) or its "
        "first (FWT)."
    )
    d.table(
        ["metric", "value", "95 % interval", "excludes 0", "definition"],
        [
            [k, _fmt(a.metrics[k]), *_interval_cells(a.metric(k)), DEFINITIONS[k]]
            for k in DEFINITIONS
        ],
    )
    d.h(3, "Per group: forgetting and transfer")
    d.p(
        "R[T][j] − R[last(j)][j] (negative: forgotten since the group was last trained), "
        "R[T][j] − R[0][j] (from_base: where the whole curriculum left the group against the "
        "untouched model) and R[first(j)−1][j] − R[0][j] (what earlier stages did for the group "
        "before it was trained), each with its paired 95 % interval."
    )
    d.table(
        ["group", "since last trained", "95 % interval", "excludes 0",
         "from base", "95 % interval", "excludes 0",
         "before first trained", "95 % interval", "excludes 0"],
        [
            [g, *_metric_row(a.metric("bwt_per_group", j)),
             *_metric_row(a.metric("from_base_per_group", j)),
             *_metric_row(a.metric("fwt_per_group", j))]
            for j, g in enumerate(a.run.groups, start=1)
        ],
    )  # fmt: skip
    if a.per_round and len(a.per_round) > 1:
        d.h(3, "Per round (rows: before the round .. end of the round; FWT vs base)")
        keys = ["final_accuracy", "learning_accuracy", "bwt", "fwt", "forgetting_max"]
        d.table(
            ["round", *keys],
            [[str(r), *(_fmt(m[k]) for k in keys)] for r, m in a.per_round.items()],
        )
    _img(d, a, figs, "forgetting", "forgetting")


def _verdict(est: Estimate, below: str, above: str) -> str:
    """What an interval supports, in words."""
    if est.value is None:
        return "not measured"
    if est.lo is None or est.hi is None:
        return "no interval: no claim"
    if est.hi < 0:
        return below
    if est.lo > 0:
        return above
    return "the interval includes 0: no difference supported"


def _est(e: Estimate, signed: bool = True) -> str:
    if e.value is None:
        return "–"
    f = _signed if signed else (lambda v: f"{v:.3f}")
    if e.lo is None or e.hi is None:
        return f(e.value)
    return f"{f(e.value)} [{f(e.lo)}, {f(e.hi)}]"


def _rounds(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    if a.rounds < 2 or not a.metrics:
        return
    d.h(2, "Rounds: plasticity and retention")
    d.p(
        "Each return to a group, against its first training: the gain of the stage that trains "
        "it (accuracy at the stage's end − at its start) and the accuracy at the stage's start. "
        "Later rounds gaining less is loss of plasticity (at a comparable start); later rounds "
        "starting higher is retention. Every interval is paired over the same test puzzles."
    )
    gain, start = a.metric("gain_change"), a.metric("start_change")
    d.table(
        ["question", "later rounds − round 1 (mean)", "95 % interval", "what it supports"],
        [
            ["do later rounds gain less?", _signed(gain.value), _interval_cells(gain)[0],
             _verdict(gain, "yes: later rounds gain less (loss of plasticity)",
                      "no: later rounds gain more")],
            ["do later rounds start higher?", _signed(start.value), _interval_cells(start)[0],
             _verdict(start, "no: later rounds start lower", "yes: later rounds start higher "
                      "(retention)")],
        ],
    )  # fmt: skip
    d.table(
        ["group", "round", "stage", "start", "end", "gain", "gain − round 1", "start − round 1"],
        [
            [r.group, str(r.round), a.row_names[r.stage], _est(r.start, False),
             _est(r.end, False), _est(r.gain), _est(r.gain_change), _est(r.start_change)]
            for r in a.round_results()
        ],
    )  # fmt: skip
    _img(d, a, figs, "rounds", "gain per round and group")


PASS_METRICS = ("bwt", "forgetting_max", "from_base")


def _pass_at_k(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    pk = a.pass_at_k
    if pk is None:
        return
    d.h(2, "pass@k")
    d.p(
        f"Validations drew n = {pk.n} samples per puzzle. pass@k is the unbiased estimate of "
        "Chen et al. (2021), 1 − C(n−c, k)/C(n, k) for c right of n, averaged over puzzles; "
        "intervals resample puzzles with all their samples (paired across stages). Forgetting "
        f"at pass@1 but not at pass@{pk.n} means the model lost its first choice, not the "
        "ability."
    )
    rows = []
    for name in PASS_METRICS:
        rows.append([name, *(_pass_est(pk, k, MetricKey(name)) for k in pk.metric_ks)])
    for prefix in ("bwt_per_group", "from_base_per_group"):
        for j, g in enumerate(a.run.groups, start=1):
            key = MetricKey(prefix, j)
            rows.append([f"{prefix}[{g}]", *(_pass_est(pk, k, key) for k in pk.metric_ks)])
    rows = [r for r in rows if any(c != "–" for c in r[1:])]
    d.table(["metric", *(f"at pass@{k}" for k in pk.metric_ks)], rows)
    T = a.stages_used
    d.table(
        ["k", *(f"{g}: base → end" for g in a.run.groups)],
        [
            [str(k), *(f"{_ci(pk.values[k - 1, 0, j], pk.lo[k - 1, 0, j], pk.hi[k - 1, 0, j])} → "
                       f"{_ci(pk.values[k - 1, T, j], pk.lo[k - 1, T, j], pk.hi[k - 1, T, j])}"
                       for j in range(len(a.run.groups)))]
            for k in pk.ks
        ],
    )  # fmt: skip
    _img(d, a, figs, "pass_at_k", "pass@k per group")


def _pass_est(pk: PassAtK, k: int, key: MetricKey) -> str:
    metrics, intervals = pk.metrics[k], pk.intervals[k]
    value = metrics.get(key.name)
    if key.index is not None:
        value = value[key.index - 1] if isinstance(value, list) else None
    lo, hi = intervals.get(key, (None, None))
    finite = isinstance(value, int | float) and math.isfinite(value)
    return _est(Estimate(float(value) if finite else None, lo, hi))


def _turnover(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    if not a.flips:
        return
    d.h(2, "Turnover")
    d.p(
        "Per stage and group, from the per-sample records: puzzles solved before the stage and "
        "unsolved after it (lost), and the reverse (gained). A puzzle counts as solved when at "
        f"least {SOLVED:.0%} of its samples are right. A small net change can hide large churn."
    )
    d.table(
        ["stage", "group", "puzzles", "solved before", "lost", "gained", "net"],
        [
            [a.row_names[f.stage], f.group, str(f.puzzles), str(f.solved_before), str(f.lost),
             str(f.gained), f"{f.net:+d}"]
            for f in a.flips
        ],
    )  # fmt: skip
    if a.losses:
        d.h(3, "Which stage lost them")
        d.p(
            "Of the puzzles a group solved right after its last training and no longer solves "
            "at the end, how many each later stage lost (charged to the stage of the puzzle's "
            "last solved → unsolved flip)."
        )
        d.table(
            ["group", "last trained", "solved then", "unsolved at the end", "lost by stage"],
            [
                [x.group, a.row_names[x.last], str(x.solved_then), str(x.unsolved_now),
                 ", ".join(f"{a.row_names[k]}: {n}" for k, n in x.by_stage.items()) or "–"]
                for x in a.losses
            ],
        )  # fmt: skip


def _plasticity(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    p = a.plasticity
    if p is None:
        return
    d.h(2, "Plasticity")
    d.p(
        "What each stage could still learn, beside what it forgot. Weights: mean effective rank "
        "of the MLP matrices (Roy & Vetterli), total weight norm, and how a stage's update lines "
        "up with the next one's (cosine; Jaccard overlap of their top-1 % |Δ| coordinates, "
        "chance ≈ 0.005). Activations on a fixed probe of test prompts: τ-dormant MLP units "
        "(Sokar et al.), feature rank srank (Kumar et al.), and the KL a stage moved on the "
        "reference solutions of its own group, per token: from the base model, KL(base ‖ after) "
        "(RL's Razor's measure), and from the stage's start in both directions, KL(start ‖ after) "
        "and KL(after ‖ start)."
    )
    probes = p.probes or []
    rows = []
    for r, name in enumerate(p.rows):
        pr = probes[r] if r < len(probes) else None
        geo = p.geometry[r - 1] if 1 <= r <= len(p.geometry) else None
        own = a.run.stages[r - 1].group if r else None
        norm, prev = p.total_norm(r), p.total_norm(r - 1) if r else None
        rows.append(
            [
                name,
                *([f"{100 * pr.dormant_overall[t]:.1f}%" for t in (0.0, 0.025, 0.1)]
                  if pr else ["–"] * 3),
                str(pr.srank) if pr else "–",
                _fmt(p.mean_rank(r), 1),
                "–" if norm is None else f"{norm:.2f}"
                + (f" (×{norm / prev:.3f})" if prev else ""),
                _fmt(pr.kl_base.get(own)) if pr and own else "–",
                _fmt(pr.kl_forward.get(own)) if pr and own else "–",
                _fmt(pr.kl_moved.get(own)) if pr and own else "–",
                _fmt(geo.cosine.get("all")) if geo else "–",
                _fmt(geo.overlap.get("all")) if geo else "–",
            ]
        )  # fmt: skip
    d.table(
        ["after stage", "dormant τ=0", "τ=0.025", "τ=0.1", "srank", "MLP eff. rank",
         "weight norm", "KL(base ‖ after), own group", "KL(start ‖ after), own group",
         "KL(after ‖ start), own group",
         "update cos → next", "top-1 % overlap → next"],
        rows,
    )  # fmt: skip
    soft = _soft_matrix(a)
    if soft is not None:
        d.h(3, "Soft accuracy")
        d.p(
            "Mean log-likelihood per token of the reference solutions (countdown-data's SFT "
            "export) of each group's probe puzzles, teacher-forced: deterministic, so it moves "
            "before sampled accuracy does."
        )
        cols, S = soft
        d.table(
            ["after stage", *cols],
            [[name, *(_fmt(float(v)) for v in S[i])] for i, name in enumerate(p.rows)],
        )
    _img(d, a, figs, "plasticity", "plasticity")
    by_pairing = _kl_points(a)
    if any(by_pairing.values()):
        d.h(3, "Forgetting vs KL")
        d.p(
            f"{KL_DEFINITION} A negative r: stages that moved more KL on their new group cost the "
            "other groups more accuracy; it is supported only where its interval excludes 0."
        )
        rows = []
        for pairing in KL_PAIRINGS:
            points = by_pairing[pairing.name]
            r = kl_correlation(points)
            rows.append([pairing.title, _est(r), *_interval_cells(r)[1:], str(len(points)),
                         str(len({p.stage for p in points})),
                         r.method if r.lo is not None else "–"])  # fmt: skip
        d.table(
            ["pairing", "Pearson r [95 %]", "excludes 0", "points", "stages", "interval"], rows
        )
    _img(d, a, figs, "kl", "forgetting vs KL")
    if p.notes:
        d.ul(p.notes)


def _noise_floor(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    if not a.uncertainty.noise_floor:
        return
    d.h(2, "Noise floor")
    d.p(
        "Stage k's last validation and stage k+1's first validate the same weights: their "
        "difference is what sampling alone does. A difference whose interval excludes 0 is "
        "flagged: more than sampling explains (non-determinism, or a chaining bug)."
    )
    d.table(
        ["boundary", "group", "difference", "95 % interval", "n", "method", "flag"],
        [
            [
                e["boundary"],
                e["group"],
                _signed(e["diff"]),
                f"[{_signed(e['lo'])}, {_signed(e['hi'])}]",
                str(e["n"]),
                e["method"],
                "**beyond sampling**" if e["flag"] else "",
            ]
            for e in a.uncertainty.noise_floor
        ],
    )


def _stages(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    d.h(2, "Stages")
    rows = []
    for k, res in enumerate(a.results, start=1):
        st = res.stage
        j = a.run.groups.index(st.group)
        before, after = a.R[k - 1, j], a.R[k, j]
        ws = res.weights_stage.total().summary() if res.weights_stage else {}
        wc = res.weights_cumulative.total().summary() if res.weights_cumulative else {}
        score, length = res.train.get("score"), res.train.get("response_length")
        rows.append(
            [
                st.name,
                st.status,
                str(_steps(res)["count"]),
                _fmt(float(before)),
                _fmt(float(after)),
                _signed(float(after - before)) if np.isfinite(after - before) else "–",
                _interval_cells(a.metric("plasticity_gain_per_stage", k))[0],
                _fmt(score.last if score else None),
                _fmt(length.mean if length else None, 1),
                _sci(ws.get("rel_l2")),
                _sci(wc.get("rel_l2")),
                _pct(ws.get("unchanged_bitwise")),
                _pct(ws.get("unchanged_atol")),
                _pct(ws.get("unchanged_rel")),
            ]
        )
    d.table(
        ["stage", "status", "steps", "acc before", "acc after", "gain", "gain 95 % interval",
         "last score", "mean resp len", "Δw rel (stage)", "Δw rel (vs base)", "unchanged bits",
         "unchanged |Δ|≤1e-5", "unchanged rel≤1e-3"],
        rows,
    )  # fmt: skip


def _training_curves(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    if "training" in figs:
        d.h(2, "Training curves")
        _training_success(d, a)
        _img(d, a, figs, "training", "training metrics")


def _training_success(d: Doc, a: Analysis) -> None:
    """What the training curves' success panel shows, and per stage its first and last step."""
    d.p(
        "**Training success rate** (`success`): per training step, the fraction of that step's "
        "training samples (sampled at the rollout temperature from the stage's training data, "
        "`rollout.n` per prompt) whose answer the verifier accepts, from "
        "`rollouts/<stage>.parquet`; each with its 95 % Wilson interval at the step's effective "
        "sample size (answers to one prompt are correlated). **Mean reward** "
        "(`critic/score/mean`, veRL's log) also counts the format reward of well-formed wrong "
        "answers. **Validation accuracy** (dots) is greedy, on every group's test split."
    )
    rows = []
    for k, res in enumerate(a.results, start=1):
        s = res.train.get("success")
        j = a.run.groups.index(res.stage.group)
        if not isinstance(s, SuccessSeries):
            rows.append([res.stage.name, "not recorded", "–", "–", "–"])
            continue
        rows.append(
            [
                res.stage.name,
                f"{_ci(s.first, s.lo[0], s.hi[0])} (step {s.steps[0]})",
                f"{_ci(s.last, s.lo[-1], s.hi[-1])} (step {s.steps[-1]})",
                f"{s.samples[-1]} ({s.prompts[-1]} prompts)",
                f"{_fmt(float(a.R[k - 1, j]))} → {_fmt(float(a.R[k, j]))}",
            ]
        )
    d.table(
        ["stage", "train success, first step", "last step", "samples/step",
         "val acc before → after (own group)"],
        rows,
    )  # fmt: skip


def _weight_change(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    if "weights" not in figs:
        return
    d.h(2, "Weight change")
    d.p(
        "Relative L2 change ‖W1−W0‖/‖W0‖ pooled per layer × module (norm-pooled), each stage "
        "initial→final, plus the cumulative change from the base model to the last stage. "
        "Unchanged fractions are per stored dtype (see the per-stage JSON)."
    )
    _img(d, a, figs, "weights", "weight change")


def _files(d: Doc, a: Analysis, figs: dict[str, Path]) -> None:
    d.h(2, "Files")
    d.p(
        f"Per-stage metrics: `metrics/metrics_<round>_<group>_{a.run.size}.json`; all numbers: "
        f"`metrics/consolidated_metrics_{a.run.size}.json`."
    )
