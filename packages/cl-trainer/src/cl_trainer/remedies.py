"""Remedies for plasticity loss, applied between stages: the same for both backends, no veRL fork.

Each is declared in one ``--between-stages`` spec, ``name[:key=value,...]`` (repeatable):

- ``shrink-perturb:lambda=0.8,sigma=0.01[,toward=base]`` (Ash & Adams 2020): θ ← λθ + σε, ε a
  fresh initialisation of the same architecture; with ``toward=base``, θ ← λθ + (1−λ)θ_base + σε,
  shrinking toward the curriculum's base model rather than toward zero.
- ``redo:tau=0.025`` (Sokar et al. 2023): MLP units that are τ-dormant on a probe batch of the
  next group's prompts get fresh incoming weights (their rows of gate and up) and zero outgoing
  weights (their column of down), so the network's function is unchanged at the reset.
- ``replay:fraction=0.25``: that fraction of each stage's training file comes from earlier
  groups' training puzzles, the rest from the stage's own (same size, same number of steps).

Weight remedies transform the previous stage's final model into the stage's ``metrics/initial_*``
(so cl-eval sees what really trained); each application is recorded in run.json with what it
changed. Nothing here imports torch until a transform runs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_trainer.errors import UsageError

PARAMS: dict[str, dict[str, float | str]] = {
    "shrink-perturb": {"lambda": 0.8, "sigma": 0.01, "toward": "init"},
    "redo": {"tau": 0.025},
    "replay": {"fraction": 0.25},
}
"""Each remedy's parameters and their defaults."""
WEIGHT_REMEDIES = ("shrink-perturb", "redo")
REDO_PROBE_PROMPTS = 64
_SPEC = re.compile(r"^([a-z-]+)(?::(.*))?$")


@dataclass(frozen=True)
class Remedy:
    name: str
    params: dict[str, float | str]

    @property
    def spec(self) -> str:
        """The canonical spelling (what run.json records and a resume compares)."""
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))


def parse(spec: str) -> Remedy:
    """``name[:key=value,...]`` with every parameter checked; a bad one is a one-line error."""
    m = _SPEC.match(spec.strip())
    if not m or m.group(1) not in PARAMS:
        raise UsageError(
            f"--between-stages {spec!r}: use one of {', '.join(PARAMS)}, e.g. redo:tau=0.025"
        )
    name, defaults = m.group(1), PARAMS[m.group(1)]
    params = dict(defaults)
    for item in filter(None, (m.group(2) or "").split(",")):
        key, sep, raw = item.partition("=")
        if not sep or key not in defaults:
            raise UsageError(f"--between-stages {spec!r}: {name} takes {', '.join(defaults)}")
        if isinstance(defaults[key], str):
            params[key] = raw
            continue
        try:
            params[key] = float(raw)
        except ValueError:
            raise UsageError(f"--between-stages {spec!r}: {key} must be a number") from None
    _check(spec, name, params)
    return Remedy(name, params)


def _check(spec: str, name: str, p: dict[str, float | str]) -> None:
    def bad(why: str) -> UsageError:
        return UsageError(f"--between-stages {spec!r}: {why}")

    if name == "shrink-perturb":
        if not 0 <= float(p["lambda"]) <= 1 or float(p["sigma"]) < 0:
            raise bad("needs 0 <= lambda <= 1 and sigma >= 0")
        if p["toward"] not in ("init", "base"):
            raise bad("toward is init (θ ← λθ + σε) or base (shrink toward the base model)")
    elif name == "redo" and not 0 <= float(p["tau"]) < 1:
        raise bad("needs 0 <= tau < 1")
    elif name == "replay" and not 0 < float(p["fraction"]) < 1:
        raise bad("needs 0 < fraction < 1")


def parse_all(specs: list[str]) -> list[Remedy]:
    remedies = [parse(s) for s in specs]
    names = [r.name for r in remedies]
    if len(set(names)) != len(names):
        raise UsageError("--between-stages names a remedy twice; give each once")
    return remedies


def transforms_weights(specs: list[str]) -> bool:
    return any(r.name in WEIGHT_REMEDIES for r in parse_all(specs))


def replay_fraction(specs: list[str]) -> float | None:
    return next((float(r.params["fraction"]) for r in parse_all(specs) if r.name == "replay"), None)


# ------------------------------------------------------------------------------ weights


def apply_weight_remedies(
    specs: list[str],
    start: Path,
    out: Path,
    *,
    base: Path,
    probe: list[list[dict[str, str]]],
    template: str,
    seed: int,
) -> list[dict[str, Any]]:
    """Transform ``start`` into ``out`` (an HF model directory, written atomically); returns one
    record per remedy: its name, parameters and what it changed. ``probe``: prompts (messages of
    ``template``) of the group the next stage trains, for redo."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from countdown_data.atomic import building_dir
    from countdown_data.templates import model_input

    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(start)
    probe_texts = [model_input(m, template, tokenizer) for m in probe]
    records = []
    for remedy in parse_all(specs):
        if remedy.name == "shrink-perturb":
            changed = shrink_perturb(model, remedy.params, base=base, seed=seed)
        elif remedy.name == "redo":
            changed = redo(model, tokenizer, probe_texts, float(remedy.params["tau"]), seed=seed)
        else:
            continue
        records.append({"name": remedy.name, "params": remedy.params, "changed": changed})
    with building_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return records


def _fresh_init(model: Any, seed: int) -> dict[str, Any]:
    """A new initialisation of the same architecture (the model's own init distribution)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
    return dict(fresh.named_parameters())


def shrink_perturb(
    model: Any, params: dict[str, float | str], *, base: Path, seed: int
) -> dict[str, float]:
    """θ ← λθ + σε, or λθ + (1−λ)θ_base + σε; returns the relative change of all weights."""
    import torch
    from transformers import AutoModelForCausalLM

    lam, sigma = float(params["lambda"]), float(params["sigma"])
    eps = _fresh_init(model, seed)
    anchor = None
    if params["toward"] == "base":
        anchor = dict(
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).named_parameters()
        )
    moved = total = 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            new = lam * p + sigma * eps[name]
            if anchor is not None:
                new += (1 - lam) * anchor[name]
            moved += float((new - p).double().pow(2).sum())
            total += float(p.double().pow(2).sum())
            p.copy_(new)
    return {"relative_change": math.sqrt(moved / total) if total else 0.0}


def redo(model: Any, tokenizer: Any, texts: list[str], tau: float, *, seed: int) -> dict[str, Any]:
    """Reset the τ-dormant MLP units (cl-eval's definition, on ``texts``): fresh gate/up rows
    drawn as at initialisation, zero down columns. Returns the reset units per layer."""
    import torch

    from cl_eval.probe import dormant_mask, unit_scores

    scores, _ = unit_scores(model, tokenizer, texts)
    generator = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02))
    reset = []
    with torch.no_grad():
        for layer, s in zip(model.model.layers, scores, strict=True):
            units = torch.from_numpy(dormant_mask(s, tau)).nonzero()[:, 0]
            mlp = layer.mlp
            for proj in (mlp.gate_proj, mlp.up_proj):
                shape = (len(units), proj.weight.shape[1])
                proj.weight[units] = torch.randn(shape, generator=generator) * std
            mlp.down_proj.weight[:, units] = 0
            reset.append(len(units))
    width = model.model.layers[0].mlp.down_proj.in_features
    return {"reset_units_per_layer": reset, "fraction": sum(reset) / (width * len(reset))}


# ------------------------------------------------------------------------------- replay


def write_replay(
    own: Path, earlier: list[Path], fraction: float, out: Path, seed: int
) -> dict[str, int]:
    """A training file as large as ``own``: a ``fraction`` of its rows drawn from the
    ``earlier`` groups' files, the rest from ``own``; shuffled, written atomically."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from countdown_data.atomic import writing
    from countdown_data.dataset import write_table

    table = pq.read_table(own)
    pool = pa.concat_tables([pq.read_table(p) for p in earlier])
    n = table.num_rows
    n_replay = min(round(fraction * n), pool.num_rows)
    rng = np.random.default_rng(seed)
    keep = table.take(np.sort(rng.choice(n, n - n_replay, replace=False)))
    replay = pool.take(np.sort(rng.choice(pool.num_rows, n_replay, replace=False)))
    mixed = pa.concat_tables([keep, replay])
    mixed = mixed.take(rng.permutation(mixed.num_rows))
    with writing(out) as tmp:
        write_table(mixed, tmp)
    return {"rows": mixed.num_rows, "replayed": n_replay}
