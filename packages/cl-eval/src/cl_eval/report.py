"""Turn a run directory into metrics JSON, plots and report.md (optionally report.html)."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cl_eval.atomic import atomic_write
from cl_eval.logs import ParsedLog, group_accuracy, parse_log
from cl_eval.matrix import (
    DEFINITIONS,
    Curriculum,
    compute_metrics,
    forgetting_matrix,
    per_round_metrics,
)
from cl_eval.run import Run, RunError, Stage, load_run
from cl_eval.weights import CheckpointError, WeightDiff, diff_checkpoints

SCHEMA_VERSION = 1

TRAIN_KEYS: dict[str, tuple[str, ...]] = {
    "score": ("critic/score/mean",),
    "reward": ("critic/rewards/mean",),
    "train_acc": ("critic/acc/mean", "reward/acc/mean", "train/acc/mean", "train/acc"),
    "pg_loss": ("actor/pg_loss",),
    "vf_loss": ("critic/vf_loss",),
    "grad_norm": ("actor/grad_norm",),
    "critic_grad_norm": ("critic/grad_norm",),
    "response_length": ("response_length/mean",),
    "clip_ratio": ("response_length/clip_ratio",),
    "entropy": ("actor/entropy",),
    "kl_loss": ("actor/kl_loss",),
    "ppo_kl": ("actor/ppo_kl",),
    "kl_penalty": ("actor/reward_kl_penalty",),
    "pg_clipfrac": ("actor/pg_clipfrac",),
    "step_time": ("timing_s/step", "perf/time_per_step"),
}
"""Short name -> veRL keys (first present wins). ppo_kl is the k1 estimate of KL(π_old‖π) per
update; kl_loss is the configured estimator (e.g. k3 low_var_kl) of KL(π‖π_ref)."""


def _clean(obj: object) -> object:
    """JSON-safe copy: NaN/inf become null (strict JSON readers reject them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def write_json(path: Path, obj: object) -> None:
    atomic_write(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")


@dataclass
class StageResult:
    stage: Stage
    log: ParsedLog | None
    before: dict | None = None
    after: dict | None = None
    history: list[dict] = field(default_factory=list)
    train: dict[str, dict] = field(default_factory=dict)
    weights_stage: dict | None = None
    weights_cumulative: dict | None = None
    matrix_stage: WeightDiff | None = None
    matrix_cumulative: WeightDiff | None = None


def _validation(rec: dict[str, float], step: int, groups: list[str]) -> dict:
    acc, keys = {}, {}
    for g in groups:
        got = group_accuracy(rec, f"countdown_{g}")
        if got is not None:
            acc[g], keys[g] = got
    return {"step": step, "accuracy": acc, "keys": keys}


def analyse_stage(stage: Stage, groups: list[str], warnings: list[str]) -> StageResult:
    """Validation before/after and per-step training series of one stage log."""
    if stage.log is None:
        return StageResult(stage, None)
    log = parse_log(stage.log)
    warnings.extend(f"stage {stage.name}: {w}" for w in log.warnings)
    res = StageResult(stage, log)
    vals = [_validation(log.records[s], s, groups) for s in log.val_steps()]
    vals = [v for v in vals if v["accuracy"]]
    res.history = vals
    train_steps = log.train_steps()
    if not log.records:
        warnings.append(f"stage {stage.name}: log has no metric lines")
    if vals:
        res.before = vals[0]
        if vals[0]["step"] != 0:
            warnings.append(
                f"stage {stage.name}: first validation is at step {vals[0]['step']}, not 0 "
                "(val_before_train off or resumed); used as the before-stage accuracy"
            )
        last_train = train_steps[-1] if train_steps else 0
        if len(vals) > 1 or (vals[-1]["step"] > 0 and vals[-1]["step"] >= last_train):
            res.after = vals[-1]
            if vals[-1]["step"] < last_train:
                warnings.append(
                    f"stage {stage.name}: last validation at step {vals[-1]['step']} but training "
                    f"reached step {last_train} (stage unfinished?)"
                )
        else:
            warnings.append(f"stage {stage.name}: no validation after training")
    elif stage.log is not None:
        warnings.append(f"stage {stage.name}: no per-group validation metrics in the log")
    for short, keys in TRAIN_KEYS.items():
        for key in keys:
            steps, values = log.series(key)
            steps_v = [(s, v) for s, v in zip(steps, values, strict=True) if s in set(train_steps)]
            if steps_v:
                xs, ys = [s for s, _ in steps_v], [v for _, v in steps_v]
                finite = [v for v in ys if math.isfinite(v)]
                res.train[short] = {
                    "key": key,
                    "steps": xs,
                    "values": ys,
                    "first": ys[0],
                    "last": ys[-1],
                    "mean": float(np.mean(finite)) if finite else None,
                    "min": min(finite) if finite else None,
                    "max": max(finite) if finite else None,
                }
                break
    return res


def build_matrix(
    run: Run, results: list[StageResult], warnings: list[str]
) -> tuple[np.ndarray, list[list[str | None]], list[str]]:
    """R (T+1 × groups), the key behind each cell and where each row came from."""
    T, G = len(results), len(run.groups)
    R = np.full((T + 1, G), np.nan)
    keys: list[list[str | None]] = [[None] * G for _ in range(T + 1)]
    origin = ["missing"] * (T + 1)

    def fill(row: int, val: dict | None, label: str) -> bool:
        if not val:
            return False
        for j, g in enumerate(run.groups):
            if g in val["accuracy"]:
                R[row, j] = val["accuracy"][g]
                keys[row][j] = val["keys"][g]
        origin[row] = label
        return True

    if results and not fill(0, results[0].before, f"{results[0].stage.name} step 0"):
        warnings.append("row 0 (base model): first stage has no before-training validation")
    for k, res in enumerate(results, start=1):
        name = res.stage.name
        if fill(k, res.after, f"{name} step {res.after['step'] if res.after else '?'}"):
            continue
        nxt = results[k].before if k < T else None
        if fill(k, nxt, f"{results[k].stage.name} step 0" if k < T else ""):
            warnings.append(f"row {name}: taken from {results[k].stage.name}'s before-validation")
        elif res.stage.status not in ("pending",):
            warnings.append(f"row {name}: no accuracy after this stage")
    used = sorted({k for row in keys for k in row if k})
    if any("/reward/" in k for k in used):
        warnings.append("some accuracy cells are mean rewards (no acc key logged), not accuracy")
    return R, keys, origin


def _weights(res: StageResult, run: Run, warnings: list[str], workers: int | None) -> None:
    st = res.stage
    if st.final_model is None:
        return
    for attr, start in (("stage", st.initial_model), ("cumulative", run.base_checkpoint)):
        if start is None:
            warnings.append(
                f"stage {st.name}: no {'initial' if attr == 'stage' else 'base'} "
                "checkpoint, weight change skipped"
            )
            continue
        same = attr == "cumulative" and st.initial_model is not None
        if same and start.resolve() == st.initial_model.resolve() and res.matrix_stage:
            d = res.matrix_stage
        else:
            try:
                d = diff_checkpoints(start, st.final_model, workers=workers)
            except CheckpointError as exc:
                warnings.append(f"stage {st.name}: weight change skipped ({exc})")
                continue
        setattr(res, f"matrix_{attr}", d)
        setattr(res, f"weights_{attr}", d.to_dict(per_tensor=False))


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
) -> ReportResult:
    """Everything ``cl-eval report`` writes, for one run directory."""
    from cl_eval import plots

    run = load_run(run_dir, size)
    warnings = list(run.warnings)
    results = [analyse_stage(st, run.groups, warnings) for st in run.stages]
    if not any(r.log and r.log.records for r in results) and not any(
        st.final_model for st in run.stages
    ):
        raise RunError(
            f"{run.path}: no stage has metric lines or a final checkpoint; nothing to report"
        )
    if weights:
        for res in results:
            _weights(res, run, warnings, workers)
    R, keys, origin = build_matrix(run, results, warnings)
    cols = [run.groups.index(st.group) for st in run.stages]
    cur = Curriculum(tuple(run.groups), tuple(cols))
    measured = [k for k in range(1, R.shape[0]) if np.isfinite(R[k]).any()]
    t_used = measured[-1] if measured else 0
    metrics = per_round = None
    F = np.full(R.shape, np.nan)
    if t_used:
        Ru = R[: t_used + 1]
        metrics = compute_metrics(Ru, cur)
        per_round = per_round_metrics(Ru, cur, [st.round for st in run.stages])
        F[: t_used + 1] = forgetting_matrix(Ru, cur)
        if t_used < len(run.stages):
            warnings.append(
                f"metrics use stages 1..{t_used} of {len(run.stages)} (later stages not measured)"
            )
    else:
        warnings.append("no stage has validation accuracy after training: no CL metrics")
    row_names = ["base"] + [st.name for st in run.stages]
    size_ = run.size
    outputs: list[Path] = []
    stage_entries = []
    for res in results:
        st = res.stage
        entry = {
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
            "weight_change": {"stage": res.weights_stage, "cumulative": res.weights_cumulative},
        }
        path = run.path / "metrics" / f"metrics_{st.round}_{st.group}_{size_}.json"
        if res.log is not None or res.weights_stage is not None:
            write_json(path, entry)
            outputs.append(path)
        stage_entries.append(entry)
    consolidated = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run": {
            "path": str(run.path),
            "name": run.name,
            "size": size_,
            "base_model": run.base_model,
            "groups": run.groups,
            "stages": [e["stage"] for e in stage_entries],
        },
        "accuracy_matrix": {
            "rows": row_names,
            "columns": run.groups,
            "values": R,
            "keys": keys,
            "row_source": origin,
            "stages_used": t_used,
        },
        "metrics": metrics,
        "per_round": per_round,
        "forgetting_matrix": F,
        "definitions": DEFINITIONS,
        "stages": [
            {
                "name": e["stage"]["name"],
                "steps": e["steps"],
                "before": e["validation"]["before"],
                "after": e["validation"]["after"],
                "training": {
                    k: {x: v[x] for x in ("key", "first", "last", "mean")}
                    for k, v in e["training"].items()
                },
                "weight_change": {
                    kind: None
                    if w is None
                    else {"global": w["global"], "by_module": w["by_module"], "dtypes": w["dtypes"]}
                    for kind, w in e["weight_change"].items()
                },
            }
            for e in stage_entries
        ],
        "warnings": warnings,
    }
    cpath = run.path / "metrics" / f"consolidated_metrics_{size_}.json"
    write_json(cpath, consolidated)
    outputs.append(cpath)

    plot_dir = run.path / "plots"
    series = [
        plots.StageSeries(
            res.stage.name,
            _steps(res)["last"] or 0,
            {k: (v["steps"], v["values"]) for k, v in res.train.items()},
            {
                g: (
                    [h["step"] for h in res.history if g in h["accuracy"]],
                    [h["accuracy"][g] for h in res.history if g in h["accuracy"]],
                )
                for g in run.groups
            },
        )
        for res in results
    ]
    title = f"{run.name} ({size_})"
    figs: dict[str, Path] = {}
    figs["training"] = plots.training_metrics(
        series, plot_dir / f"training_metrics_{size_}.png", f"{title}: training"
    )
    figs["matrix"] = plots.accuracy_matrix(
        R,
        row_names,
        run.groups,
        plot_dir / f"accuracy_matrix_{size_}.png",
        f"{title}: accuracy matrix R[stage][group]",
    )
    per_stage = {}
    if metrics:
        pad = [None] * (len(run.stages) - t_used)
        per_stage = {
            "BWT (GEM)": list(metrics["bwt_per_stage"]) + pad,
            "forgetting (max-based)": list(metrics["forgetting_max_per_stage"]) + pad,
            "average accuracy (seen groups)": list(metrics["average_accuracy_per_stage"]) + pad,
        }
    figs["forgetting"] = plots.forgetting(
        R,
        F,
        row_names,
        run.groups,
        per_stage,
        plot_dir / f"forgetting_{size_}.png",
        f"{title}: forgetting",
    )
    panels = [
        (f"{res.stage.name}", *res.matrix_stage.layer_module_matrix())
        for res in results
        if res.matrix_stage is not None
    ]
    last_cum = next((r for r in reversed(results) if r.matrix_cumulative is not None), None)
    if last_cum is not None:
        panels.append(
            (f"base→{last_cum.stage.name}", *last_cum.matrix_cumulative.layer_module_matrix())
        )
    if panels:
        figs["weights"] = plots.weight_change(
            panels,
            plot_dir / f"weight_change_{size_}.png",
            f"{title}: relative L2 weight change per layer × module (grey = unchanged)",
        )
    outputs.extend(figs.values())
    doc = _document(run, results, R, origin, metrics, per_round, figs, warnings, t_used)
    md = run.path / "report.md"
    atomic_write(md, doc.markdown())
    outputs.append(md)
    if write_html:
        page = run.path / "report.html"
        atomic_write(page, doc.html(run.path, title))
        outputs.append(page)
    return ReportResult(run, outputs, warnings, consolidated)


def _rel(p: Path | None, root: Path) -> str | None:
    if p is None:
        return None
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def _steps(res: StageResult) -> dict:
    ts = res.log.train_steps() if res.log else []
    return {"first": ts[0] if ts else None, "last": ts[-1] if ts else None, "count": len(ts)}


def _document(
    run: Run,
    results: list[StageResult],
    R: np.ndarray,
    origin: list[str],
    metrics: dict | None,
    per_round: dict | None,
    figs: dict[str, Path],
    warnings: list[str],
    t_used: int,
) -> Doc:
    d = Doc()
    d.h(1, f"Continual Countdown report: {run.name}")
    done = sum(1 for st in run.stages if st.status == "done")
    d.p(
        f"Run `{run.path}` · size **{run.size}** · base model `{run.base_model or '?'}` · "
        f"{len(run.stages)} stages ({done} done) · groups: {', '.join(run.groups)}."
    )
    if warnings:
        d.h(2, "Warnings (partial data)")
        d.ul(warnings)
    d.h(2, "Accuracy matrix")
    d.p(
        "R[i][j] = validation accuracy on group j (columns) after stage i (rows); row `base` "
        "is the first stage's validation before any training."
    )
    d.table(
        ["after stage", *run.groups, "source"],
        [
            [name, *(_fmt(float(v)) for v in R[i]), origin[i]]
            for i, name in enumerate(["base"] + [st.name for st in run.stages])
        ],
    )
    if "matrix" in figs:
        d.img(_rel(figs["matrix"], run.path) or "", "accuracy matrix")
    if metrics:
        d.h(2, "Transfer and forgetting")
        d.p(
            f"Computed over stages 1..{t_used}. Each stage is a task occurrence; with several "
            "rounds a group's reference is its most recent training (BWT, forgetting) or its "
            "first (FWT)."
        )
        d.table(
            ["metric", "value", "definition"],
            [[k, _fmt(metrics[k]), DEFINITIONS[k]] for k in DEFINITIONS],
        )
        if per_round and len(per_round) > 1:
            d.h(3, "Per round (rows: before the round .. end of the round; FWT vs base)")
            keys = ["final_accuracy", "learning_accuracy", "bwt", "fwt", "forgetting_max"]
            d.table(
                ["round", *keys],
                [[str(r), *(_fmt(m[k]) for k in keys)] for r, m in per_round.items()],
            )
        if "forgetting" in figs:
            d.img(_rel(figs["forgetting"], run.path) or "", "forgetting")
    d.h(2, "Stages")
    rows = []
    for k, res in enumerate(results, start=1):
        st = res.stage
        j = run.groups.index(st.group)
        before = R[k - 1, j]
        after = R[k, j]
        ws = (res.weights_stage or {}).get("global") or {}
        wc = (res.weights_cumulative or {}).get("global") or {}
        rows.append(
            [
                st.name,
                st.status,
                str(_steps(res)["count"]),
                _fmt(float(before)),
                _fmt(float(after)),
                _signed(float(after - before)) if np.isfinite(after - before) else "–",
                _fmt(res.train.get("score", {}).get("last")),
                _fmt(res.train.get("response_length", {}).get("mean"), 1),
                _sci(ws.get("rel_l2")),
                _sci(wc.get("rel_l2")),
                _pct(ws.get("unchanged_bitwise")),
                _pct(ws.get("unchanged_atol")),
                _pct(ws.get("unchanged_rel")),
            ]
        )
    d.table(
        [
            "stage",
            "status",
            "steps",
            "acc before",
            "acc after",
            "gain",
            "last score",
            "mean resp len",
            "Δw rel (stage)",
            "Δw rel (vs base)",
            "unchanged bits",
            "unchanged |Δ|≤1e-5",
            "unchanged rel≤1e-3",
        ],
        rows,
    )
    if "training" in figs:
        d.h(2, "Training curves")
        d.img(_rel(figs["training"], run.path) or "", "training metrics")
    if "weights" in figs:
        d.h(2, "Weight change")
        d.p(
            "Relative L2 change ‖W1−W0‖/‖W0‖ pooled per layer × module (norm-pooled), each stage "
            "initial→final, plus the cumulative change from the base model to the last stage. "
            "Unchanged fractions are per stored dtype (see the per-stage JSON)."
        )
        d.img(_rel(figs["weights"], run.path) or "", "weight change")
    d.h(2, "Files")
    d.p(
        f"Per-stage metrics: `metrics/metrics_<round>_<group>_{run.size}.json`; all numbers: "
        f"`metrics/consolidated_metrics_{run.size}.json`."
    )
    return d
