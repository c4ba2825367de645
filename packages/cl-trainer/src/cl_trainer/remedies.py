"""Remedies for plasticity loss, applied between stages: the same for both backends, no veRL fork.

Each remedy is one declaration (:func:`register_remedy`, after veRL's ``register_adv_est``): its
name, its parameters with their defaults and bounds, what it acts on, and its function. A
``--between-stages`` spec ``name[:key=value,...]`` (repeatable) is parsed once, when the
configuration is resolved, into a :class:`Remedy`.

- ``shrink-perturb:lambda=0.8,sigma=0.01[,toward=base]`` (Ash & Adams 2020): θ ← λθ + σε, ε a
  fresh initialisation of the same architecture; with ``toward=base``, θ ← λθ + (1−λ)θ_base + σε,
  shrinking toward the curriculum's base model rather than toward zero.
- ``redo:tau=0.025`` (Sokar et al. 2023): MLP units that are τ-dormant on a probe batch of the
  next group's prompts get fresh incoming weights (their rows of gate and up) and zero outgoing
  weights (their column of down), so the network's function is unchanged at the reset.
- ``replay:fraction=0.25``: that fraction of each stage's training file comes from earlier
  groups' training puzzles, the rest from the stage's own (same size, same number of steps).

A remedy that acts on ``weights`` transforms the previous stage's final model into the stage's
``metrics/initial_*`` (so cl-eval sees what really trained). One that acts on ``data`` rewrites
the training file of every stage that has earlier groups, from its own and their training files,
into the stage's ``replay_file``. Each application is recorded in run.json with what it changed.
Nothing here imports torch until a transform runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cl_rundir.record import RemedyRecord
from cl_trainer.errors import UsageError

ActsOn = Literal["weights", "data"]
Params = dict[str, float | str]
REDO_PROBE_PROMPTS = 64
_SPEC = re.compile(r"^([a-z-]+)(?::(.*))?$")


@dataclass(frozen=True)
class Param:
    """A remedy's parameter: its default, and either its bounds (``closed`` says which of them
    are allowed values: ``both``, ``low``, ``high`` or ``neither``) or its choices (value -> what
    it means)."""

    default: float | str
    low: float | None = None
    high: float | None = None
    closed: Literal["both", "low", "high", "neither"] = "both"
    choices: dict[str, str] = field(default_factory=dict)

    def check(self, key: str, value: float | str) -> str | None:
        """Why ``value`` is not allowed, as the end of a one-line error; None when it is."""
        if self.choices:
            if value in self.choices:
                return None
            return f"{key} is " + " or ".join(f"{k} ({v})" for k, v in self.choices.items())
        x = float(value)
        with_low, with_high = self.closed in ("both", "low"), self.closed in ("both", "high")
        if (self.low is None or x > self.low or (with_low and x == self.low)) and (
            self.high is None or x < self.high or (with_high and x == self.high)
        ):
            return None
        low = "" if self.low is None else f"{self.low:g} {'<=' if with_low else '<'} "
        high = "" if self.high is None else f" {'<=' if with_high else '<'} {self.high:g}"
        return f"needs {low}{key}{high}"


@dataclass(frozen=True)
class WeightInputs:
    """What a remedy that acts on weights may use besides the model it transforms."""

    tokenizer: Any
    probe_texts: list[str]
    """Model inputs of the group the next stage trains (``REDO_PROBE_PROMPTS`` of them)."""
    base: Path
    """The curriculum's base model."""
    seed: int


@dataclass(frozen=True)
class DataInputs:
    """What a remedy that acts on data may use: the stage's own training file, the earlier
    groups' training files, and where the stage's new training file goes."""

    own: Path
    earlier: list[Path]
    out: Path
    seed: int


@dataclass(frozen=True)
class Declaration:
    name: str
    acts_on: ActsOn
    params: dict[str, Param]
    fn: Callable[..., dict[str, Any]]
    """weights: ``fn(model, params, WeightInputs)``; data: ``fn(params, DataInputs)``. Both
    return what they changed (run.json's record)."""


REMEDIES: dict[str, Declaration] = {}
"""Every remedy by name, in declaration order."""


def register_remedy(
    name: str, *, acts_on: ActsOn, params: dict[str, Param]
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Declare a remedy: ``@register_remedy("redo", acts_on="weights", params={...})``."""

    def decorator(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        if name in REMEDIES and REMEDIES[name].fn is not fn:
            raise ValueError(f"remedy {name} is already registered: {REMEDIES[name].fn}")
        REMEDIES[name] = Declaration(name, acts_on, params, fn)
        return fn

    return decorator


@dataclass(frozen=True)
class Remedy:
    """A parsed ``--between-stages`` spec: a declared remedy with every parameter's value."""

    name: str
    params: Params

    @property
    def declaration(self) -> Declaration:
        return REMEDIES[self.name]

    @property
    def acts_on(self) -> ActsOn:
        return self.declaration.acts_on

    @property
    def spec(self) -> str:
        """The canonical spelling (what run.json records and a resume compares)."""
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))


def parse(spec: str) -> Remedy:
    """``name[:key=value,...]`` with every parameter checked; a bad one is a one-line error."""
    m = _SPEC.match(spec.strip())
    if not m or m.group(1) not in REMEDIES:
        raise UsageError(
            f"--between-stages {spec!r}: use one of {', '.join(REMEDIES)}, e.g. redo:tau=0.025"
        )
    decl = REMEDIES[m.group(1)]
    params: Params = {k: p.default for k, p in decl.params.items()}
    for item in filter(None, (m.group(2) or "").split(",")):
        key, sep, raw = item.partition("=")
        if not sep or key not in decl.params:
            raise UsageError(f"--between-stages {spec!r}: {decl.name} takes {', '.join(params)}")
        if decl.params[key].choices:
            params[key] = raw
            continue
        try:
            params[key] = float(raw)
        except ValueError:
            raise UsageError(f"--between-stages {spec!r}: {key} must be a number") from None
    for key, p in decl.params.items():
        why = p.check(key, params[key])
        if why is not None:
            raise UsageError(f"--between-stages {spec!r}: {why}")
    return Remedy(decl.name, params)


def parse_all(specs: list[str]) -> list[Remedy]:
    remedies = [parse(s) for s in specs]
    names = [r.name for r in remedies]
    if len(set(names)) != len(names):
        raise UsageError("--between-stages names a remedy twice; give each once")
    return remedies


def acting_on(remedies: list[Remedy], kind: ActsOn) -> list[Remedy]:
    return [r for r in remedies if r.acts_on == kind]


# ------------------------------------------------------------------------------ weights


def apply_weight_remedies(
    remedies: list[Remedy],
    start: Path,
    out: Path,
    *,
    base: Path,
    probe: list[list[dict[str, str]]],
    template: str,
    seed: int,
) -> list[RemedyRecord]:
    """Transform ``start`` into ``out`` (an HF model directory, written atomically) by every
    remedy that acts on weights, in order; returns one record per remedy: its name, parameters
    and what it changed. ``probe``: prompts (messages of ``template``) of the group the next
    stage trains."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cl_rundir.atomic import building_dir
    from countdown_data.templates import model_input

    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(start)
    texts = [model_input(m, template, tokenizer) for m in probe]
    inputs = WeightInputs(tokenizer, texts, base, seed)
    records = [
        RemedyRecord(r.name, dict(r.params), r.declaration.fn(model, r.params, inputs))
        for r in acting_on(remedies, "weights")
    ]
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


@register_remedy(
    "shrink-perturb",
    acts_on="weights",
    params={
        "lambda": Param(0.8, low=0, high=1),
        "sigma": Param(0.01, low=0),
        "toward": Param(
            "init", choices={"init": "θ ← λθ + σε", "base": "shrink toward the base model"}
        ),
    },
)
def shrink_perturb(model: Any, params: Params, inputs: WeightInputs) -> dict[str, float]:
    """θ ← λθ + σε, or λθ + (1−λ)θ_base + σε; returns the relative change of all weights."""
    import torch
    from transformers import AutoModelForCausalLM

    lam, sigma = float(params["lambda"]), float(params["sigma"])
    eps = _fresh_init(model, inputs.seed)
    anchor = None
    if params["toward"] == "base":
        base = AutoModelForCausalLM.from_pretrained(inputs.base, dtype=torch.float32)
        anchor = dict(base.named_parameters())
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


@register_remedy(
    "redo", acts_on="weights", params={"tau": Param(0.025, low=0, high=1, closed="low")}
)
def redo(model: Any, params: Params, inputs: WeightInputs) -> dict[str, Any]:
    """Reset the τ-dormant MLP units (``cl_rundir.dormant``'s definition, on the probe texts):
    fresh gate/up rows drawn as at initialisation, zero down columns. Returns the reset units per
    layer."""
    import torch

    from cl_rundir.dormant import dormant_mask, unit_scores

    scores, _ = unit_scores(model, inputs.tokenizer, inputs.probe_texts)
    generator = torch.Generator().manual_seed(inputs.seed)
    std = float(getattr(model.config, "initializer_range", 0.02))
    reset = []
    with torch.no_grad():
        for layer, s in zip(model.model.layers, scores, strict=True):
            units = torch.from_numpy(dormant_mask(s, float(params["tau"]))).nonzero()[:, 0]
            mlp = layer.mlp
            for proj in (mlp.gate_proj, mlp.up_proj):
                shape = (len(units), proj.weight.shape[1])
                proj.weight[units] = torch.randn(shape, generator=generator) * std
            mlp.down_proj.weight[:, units] = 0
            reset.append(len(units))
    width = model.model.layers[0].mlp.down_proj.in_features
    return {"reset_units_per_layer": reset, "fraction": sum(reset) / (width * len(reset))}


# ------------------------------------------------------------------------------- data


@register_remedy(
    "replay", acts_on="data", params={"fraction": Param(0.25, low=0, high=1, closed="neither")}
)
def replay(params: Params, inputs: DataInputs) -> dict[str, Any]:
    """A training file as large as the stage's own: a ``fraction`` of its rows drawn from the
    earlier groups' files, the rest from its own; shuffled, written atomically."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cl_rundir.atomic import writing
    from countdown_data.dataset import write_table

    table = pq.read_table(inputs.own)
    pool = pa.concat_tables([pq.read_table(p) for p in inputs.earlier])
    n = table.num_rows
    n_replay = min(round(float(params["fraction"]) * n), pool.num_rows)
    rng = np.random.default_rng(inputs.seed)
    keep = table.take(np.sort(rng.choice(n, n - n_replay, replace=False)))
    replayed = pool.take(np.sort(rng.choice(pool.num_rows, n_replay, replace=False)))
    mixed = pa.concat_tables([keep, replayed])
    mixed = mixed.take(rng.permutation(mixed.num_rows))
    with writing(inputs.out) as tmp:
        write_table(mixed, tmp)
    return {"rows": mixed.num_rows, "replayed": n_replay}
