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

import numpy as np

from cl_eval.analysis import Analysis, StageResult, analyse
from cl_eval.matrix import DEFINITIONS
from cl_eval.plasticity import SUMMARY_TAU, Plasticity, kl_forgetting_points
from cl_eval.run import Run
from cl_eval.stats import Estimate
from cl_rundir.atomic import write_atomic
from cl_rundir.layout import MODELS_DIR

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
        else {**a.plasticity.as_dict(), "kl_forgetting": _kl_points(a)},
        "per_round": a.per_round,
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
            _kl_points(a), plot_dir / f"kl_forgetting_{size}.png", f"{title}: forgetting vs KL"
        )
    return figs


OVERLAP_MODULES = ("q", "k", "v", "o", "gate", "up", "down", "embed", "all")


def _kl_points(a: Analysis) -> list[tuple[str, str, float, float]]:
    if a.plasticity is None:
        return []
    cols = [a.run.groups.index(st.group) for st in a.run.stages]
    return kl_forgetting_points(a.plasticity, a.R, cols, a.run.groups)


def _dormant_matrix(p: Plasticity, tau: float = SUMMARY_TAU) -> tuple[list[int], np.ndarray] | None:
    if not p.probes:
        return None
    layers = len(p.probes[0].dormant.get(tau, []))
    M = np.full((layers, len(p.rows)), np.nan)
    for r, pr in enumerate(p.probes):
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
        "R[T][j] − R[last(j)][j] (negative: forgotten since the group was last trained) and "
        "R[first(j)−1][j] − R[0][j] (what earlier stages did for the group before it was "
        "trained), each with its paired 95 % interval."
    )
    d.table(
        ["group", "since last trained", "95 % interval", "excludes 0",
         "before first trained", "95 % interval", "excludes 0"],
        [
            [g, *_metric_row(a.metric("bwt_per_group", j)),
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
        "(Sokar et al.), feature rank srank (Kumar et al.), and the KL(after ‖ before) per token "
        "a stage moved on the reference solutions of its own group."
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
                _fmt(pr.kl_moved.get(own)) if pr and own else "–",
                _fmt(geo.cosine.get("all")) if geo else "–",
                _fmt(geo.overlap.get("all")) if geo else "–",
            ]
        )  # fmt: skip
    d.table(
        ["after stage", "dormant τ=0", "τ=0.025", "τ=0.1", "srank", "MLP eff. rank",
         "weight norm", "KL moved (own group)", "update cos → next", "top-1 % overlap → next"],
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
        _img(d, a, figs, "training", "training metrics")


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
