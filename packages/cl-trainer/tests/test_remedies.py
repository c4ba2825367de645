"""Remedies between stages do what they claim, on a real tiny Qwen2 and real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from cl_trainer.config import resolve_config
from cl_trainer.errors import UsageError
from cl_trainer.local import tiny
from cl_trainer.remedies import (
    REMEDIES,
    DataInputs,
    Param,
    WeightInputs,
    apply_weight_remedies,
    parse,
    parse_all,
    redo,
    register_remedy,
    replay,
    shrink_perturb,
)
from countdown_data import load_rows, split_path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    tok = tiny.build_tokenizer()
    tiny.build_model(tok, seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def load(path: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def inputs(model_dir: Path, seed: int = 0, texts: list[str] | None = None) -> WeightInputs:
    return WeightInputs(tiny.build_tokenizer(), texts or [], model_dir, seed)


def test_specs_are_canonical_and_checked() -> None:
    """Every spelling a user or an existing run.json has keeps its canonical form (a resume
    compares it), and every bound is a one-line error naming it."""
    for given, canonical in [
        ("redo", "redo:tau=0.025"),
        ("redo:tau=0.1", "redo:tau=0.1"),
        ("redo:tau=1e-1", "redo:tau=0.1"),
        ("shrink-perturb", "shrink-perturb:lambda=0.8,sigma=0.01,toward=init"),
        ("shrink-perturb:sigma=0,lambda=1", "shrink-perturb:lambda=1.0,sigma=0.0,toward=init"),
        ("shrink-perturb:toward=base", "shrink-perturb:lambda=0.8,sigma=0.01,toward=base"),
        ("replay", "replay:fraction=0.25"),
        (" replay:fraction=0.5 ", "replay:fraction=0.5"),
    ]:
        assert parse(given).spec == canonical
    for bad, says in [
        ("redo:tau=2", "needs 0 <= tau < 1"),
        ("redo:tau=1", "needs 0 <= tau < 1"),
        ("redo:tau=-0.1", "needs 0 <= tau < 1"),
        ("replay:fraction=1", "needs 0 < fraction < 1"),
        ("replay:fraction=0", "needs 0 < fraction < 1"),
        ("shrink-perturb:lambda=1.5", "needs 0 <= lambda <= 1"),
        ("shrink-perturb:sigma=-1", "needs 0 <= sigma"),
        ("shrink-perturb:sigma=x", "sigma must be a number"),
        ("prune", "use one of shrink-perturb, redo, replay"),
        ("redo:alpha=1", "redo takes tau"),
        ("shrink-perturb:toward=zero", "toward is init .* or base"),
    ]:
        with pytest.raises(UsageError, match=says) as err:
            parse(bad)
        assert "\n" not in str(err.value)
    assert parse("redo:tau=0").params == {"tau": 0.0}  # the closed bound is allowed
    with pytest.raises(UsageError, match="twice"):
        parse_all(["redo", "redo:tau=0.1"])


def test_specs_are_parsed_once_into_the_configuration(data_dir: Path, tmp_path: Path) -> None:
    cfg = resolve_config(
        "tiny", data_dir=data_dir, out=tmp_path, between_stages=["replay", "redo:tau=1e-1"]
    )
    assert [(r.name, r.acts_on) for r in cfg.between_stages] == [
        ("replay", "data"),
        ("redo", "weights"),
    ]
    assert cfg.to_dict()["between_stages"] == ["replay:fraction=0.25", "redo:tau=0.1"]


def test_a_remedy_is_one_declaration() -> None:
    """A new remedy declared with its parameters is parsed, checked and canonical at once; a
    second function under a taken name is refused."""

    @register_remedy("halve", acts_on="data", params={"k": Param(2.0, low=1)})
    def halve(params, inputs):
        return {"k": params["k"]}

    try:
        assert parse("halve").spec == "halve:k=2.0" and parse("halve").acts_on == "data"
        assert parse("halve:k=3").declaration.fn is halve
        with pytest.raises(UsageError, match="needs 1 <= k"):
            parse("halve:k=0")
        with pytest.raises(ValueError, match="already registered"):
            register_remedy("halve", acts_on="data", params={})(lambda p, i: {})
    finally:
        del REMEDIES["halve"]


def test_shrink_perturb_with_lambda_1_sigma_0_is_the_identity(model_dir: Path) -> None:
    model, before = load(model_dir), load(model_dir)
    params = parse("shrink-perturb:lambda=1,sigma=0").params
    assert shrink_perturb(model, params, inputs(model_dir))["relative_change"] == 0
    for (name, a), b in zip(before.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_shrink_toward_base_interpolates(model_dir: Path, tmp_path: Path) -> None:
    moved = load(model_dir)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(1.0)
    params = parse("shrink-perturb:lambda=0.25,sigma=0,toward=base").params
    shrink_perturb(moved, params, inputs(model_dir))
    base = load(model_dir)
    for a, b in zip(moved.parameters(), base.parameters(), strict=True):
        assert torch.allclose(a, b + 0.25, atol=1e-6)  # 0.25 (θ_base + 1) + 0.75 θ_base


def test_redo_resets_only_the_dormant_units(model_dir: Path) -> None:
    model = load(model_dir)
    mlp = model.model.layers[2].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[:7] = 0  # planted dead units
    before = {n: p.clone() for n, p in model.named_parameters()}
    texts = ["nums 12 7 3 target 22 ops +\n", "nums 5 9 40 target 36 ops +-\n"] * 8
    changed = redo(model, {"tau": 0.0}, inputs(Path("unused"), seed=1, texts=texts))
    assert changed["reset_units_per_layer"] == [0, 0, 7]
    after = dict(model.named_parameters())
    for name, p in after.items():
        if name.startswith("model.layers.2.mlp."):
            continue
        assert torch.equal(p, before[name]), name
    prefix = "model.layers.2.mlp."
    for proj in ("gate_proj", "up_proj"):
        w0, w1 = before[prefix + proj + ".weight"], after[prefix + proj + ".weight"]
        assert not torch.equal(w1[:7], w0[:7]) and torch.equal(w1[7:], w0[7:])
        assert 0 < w1[:7].std() < 0.1  # drawn as at initialisation
    down0, down1 = before[prefix + "down_proj.weight"], after[prefix + "down_proj.weight"]
    assert torch.count_nonzero(down1[:, :7]) == 0 and torch.equal(down1[:, 7:], down0[:, 7:])


def test_remedies_write_the_next_stage_model_and_say_what_they_changed(
    model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "initial"
    source = (model_dir / "model.safetensors").read_bytes()
    probe = [[{"role": "user", "content": "nums 1 2 3 target 6 ops +\n"}]] * 4
    records = apply_weight_remedies(
        parse_all(["shrink-perturb:lambda=0.9,sigma=0.01", "replay", "redo:tau=0.1"]), model_dir,
        out, base=model_dir, probe=probe, template="compact", seed=3,
    )  # fmt: skip
    assert [r.name for r in records] == ["shrink-perturb", "redo"]  # replay acts on data
    assert records[0].params == {"lambda": 0.9, "sigma": 0.01, "toward": "init"}
    assert 0 < records[0].changed["relative_change"] < 0.5
    assert len(records[1].changed["reset_units_per_layer"]) == 3
    assert (model_dir / "model.safetensors").read_bytes() == source  # the source is untouched
    assert not torch.equal(
        load(out).model.embed_tokens.weight, load(model_dir).model.embed_tokens.weight
    )


def test_replay_holds_the_fraction_from_earlier_groups_only(data_dir: Path, tmp_path: Path) -> None:
    own = split_path(data_dir, "plus_minus_mul", "train")
    earlier = [split_path(data_dir, g, "train") for g in ("plus", "plus_minus")]
    out = tmp_path / "replay" / "train.parquet"
    changed = replay({"fraction": 0.25}, DataInputs(own, earlier, out, seed=0))
    rows = pq.read_table(out).to_pylist()
    n = pq.read_metadata(own).num_rows
    assert len(rows) == n == changed["rows"] and changed["replayed"] == round(0.25 * n)
    groups = [r["extra_info"]["group"] for r in rows]
    assert groups.count("plus_minus_mul") == n - changed["replayed"]
    assert set(groups) <= {"plus", "plus_minus", "plus_minus_mul"}
    own_keys = {
        (r["target"], tuple(r["nums"])) for r in load_rows(data_dir, "plus_minus_mul", "train")
    }
    replayed = [r for r in rows if r["extra_info"]["group"] != "plus_minus_mul"]
    assert all((r["target"], tuple(r["nums"])) not in own_keys for r in replayed)
    assert len({(r["target"], tuple(r["nums"])) for r in rows}) == len(rows)
    again = replay({"fraction": 0.25}, DataInputs(own, earlier, out, seed=0))
    np.testing.assert_equal(again, changed)  # same seed
