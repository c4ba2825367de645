"""Remedies between stages do what they claim, on a real tiny Qwen2 and real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM

from cl_trainer.errors import UsageError
from cl_trainer.local import tiny
from cl_trainer.remedies import (
    apply_weight_remedies,
    parse,
    parse_all,
    redo,
    shrink_perturb,
    write_replay,
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


def test_specs_are_canonical_and_checked() -> None:
    assert parse("redo").spec == "redo:tau=0.025"
    assert parse("shrink-perturb:sigma=0,lambda=1").spec == (
        "shrink-perturb:lambda=1.0,sigma=0.0,toward=init"
    )
    for bad, says in [
        ("redo:tau=2", "0 <= tau < 1"),
        ("replay:fraction=1", "0 < fraction < 1"),
        ("prune", "use one of"),
        ("redo:alpha=1", "redo takes tau"),
        ("shrink-perturb:toward=zero", "toward is init"),
    ]:
        with pytest.raises(UsageError, match=says) as err:
            parse(bad)
        assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="twice"):
        parse_all(["redo", "redo:tau=0.1"])


def test_shrink_perturb_with_lambda_1_sigma_0_is_the_identity(model_dir: Path) -> None:
    model, before = load(model_dir), load(model_dir)
    params = parse("shrink-perturb:lambda=1,sigma=0").params
    assert shrink_perturb(model, params, base=model_dir, seed=0)["relative_change"] == 0
    for (name, a), b in zip(before.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_shrink_toward_base_interpolates(model_dir: Path, tmp_path: Path) -> None:
    moved = load(model_dir)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(1.0)
    params = parse("shrink-perturb:lambda=0.25,sigma=0,toward=base").params
    shrink_perturb(moved, params, base=model_dir, seed=0)
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
    changed = redo(model, tiny.build_tokenizer(), texts, tau=0.0, seed=1)
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
        ["shrink-perturb:lambda=0.9,sigma=0.01", "redo:tau=0.1"], model_dir, out,
        base=model_dir, probe=probe, template="compact", seed=3,
    )  # fmt: skip
    assert [r["name"] for r in records] == ["shrink-perturb", "redo"]
    assert 0 < records[0]["changed"]["relative_change"] < 0.5
    assert "reset_units_per_layer" in records[1]["changed"]
    assert (model_dir / "model.safetensors").read_bytes() == source  # the source is untouched
    assert not torch.equal(
        load(out).model.embed_tokens.weight, load(model_dir).model.embed_tokens.weight
    )


def test_replay_holds_the_fraction_from_earlier_groups_only(data_dir: Path, tmp_path: Path) -> None:
    own = split_path(data_dir, "plus_minus_mul", "train")
    earlier = [split_path(data_dir, g, "train") for g in ("plus", "plus_minus")]
    out = tmp_path / "replay" / "train.parquet"
    changed = write_replay(own, earlier, 0.25, out, seed=0)
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
    np.testing.assert_equal(write_replay(own, earlier, 0.25, out, seed=0), changed)  # same seed
