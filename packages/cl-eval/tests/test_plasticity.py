"""Plasticity diagnostics on checkpoints built with known properties: ranks of planted matrices,
update geometry of planted updates, dormant units planted in a real tiny Qwen2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cl_eval.geometry import checkpoint_spectra, spectrum_of, update_geometry
from cl_eval.probe import dormant_fractions, srank
from cl_rundir.dormant import unit_scores


def _rank_r(rows: int, cols: int, r: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, r, generator=g, dtype=torch.float64))
    return (u @ v.T).float()  # r equal singular values


def test_a_rank_r_matrix_has_effective_and_stable_rank_r(tmp_path, synth) -> None:
    tensors = synth.tiny_tensors(0, hidden=64)
    tensors["model.layers.0.mlp.up_proj.weight"] = _rank_r(16, 64, 5, 1)
    tensors["model.layers.0.mlp.down_proj.weight"] = _rank_r(64, 16, 3, 2)  # wide side
    tensors["model.layers.1.self_attn.q_proj.weight"] = torch.eye(64)
    ck = synth.save_ckpt(tmp_path / "m", tensors, dtype="f32")
    spectra = checkpoint_spectra(ck).matrices
    up = spectra["model.layers.0.mlp.up_proj.weight"]
    assert up.effective_rank == pytest.approx(5, rel=1e-4)
    assert up.stable_rank == pytest.approx(5, rel=1e-4)
    assert spectra["model.layers.0.mlp.down_proj.weight"].effective_rank == pytest.approx(
        3, rel=1e-4
    )
    assert spectra["model.layers.1.self_attn.q_proj.weight"].effective_rank == pytest.approx(64)
    decaying = spectrum_of(np.array([1.0, 0.0, 0.0]))
    assert decaying.effective_rank == pytest.approx(1) and decaying.stable_rank == 1


def _step(tensors: dict, delta: dict) -> dict:
    return {k: v + delta.get(k, 0) for k, v in tensors.items()}


def test_update_geometry_of_planted_updates(tmp_path, synth) -> None:
    base = synth.tiny_tensors(0)
    g = torch.Generator().manual_seed(5)
    d1 = {k: torch.randn(v.shape, generator=g) * 0.01 for k, v in base.items()}
    d2 = {k: torch.randn(v.shape, generator=g) * 0.01 for k, v in base.items()}
    m0 = synth.save_ckpt(tmp_path / "m0", base, dtype="f32")
    m1 = synth.save_ckpt(tmp_path / "m1", _step(base, d1), dtype="f32")
    m2 = synth.save_ckpt(tmp_path / "m2", _step(_step(base, d1), d1), dtype="f32")
    same = update_geometry(m0, m1, m1, m2)  # the second stage repeats the first's update
    assert same.cosine["all"] == pytest.approx(1, abs=1e-5)
    assert same.overlap["all"] == pytest.approx(1, abs=1e-3)
    assert same.selected["all"][0] == pytest.approx(0.01, abs=0.002)
    m3 = synth.save_ckpt(tmp_path / "m3", _step(_step(base, d1), d2), dtype="f32")
    other = update_geometry(m0, m1, m1, m3)  # an independent update: orthogonal, chance overlap
    assert abs(other.cosine["all"]) < 0.05
    assert other.overlap["all"] < 0.05
    opposite = synth.save_ckpt(tmp_path / "m4", base, dtype="f32")
    undo = update_geometry(m0, m1, m1, opposite)  # the second stage undoes the first
    assert undo.cosine["up"] == pytest.approx(-1, abs=1e-5)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from cl_trainer.local.tiny import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=40,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    ).eval()  # fmt: skip
    out = tmp_path_factory.mktemp("qwen")
    tok.save_pretrained(out)
    return model, AutoTokenizer.from_pretrained(out)


def test_planted_dead_units_give_the_planted_dormant_ratio(qwen) -> None:
    model, tok = qwen
    mlp = model.model.layers[1].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[:10] = 0  # silu(0) = 0: these 10 of 40 units never fire
    texts = ["nums 12 7 3 target 22 ops +\n", "nums 5 9 40 target 36 ops +-\n"] * 4
    scores, finals = unit_scores(model, tok, texts)
    fractions = dormant_fractions(scores)
    per_layer, overall = fractions[0.0]
    assert per_layer == [0.0, 0.25]
    assert overall == pytest.approx(10 / 80)
    assert fractions[0.1][0][1] >= 0.25  # τ = 0.1 counts them too
    assert finals.shape == (len(texts), 32)


def test_srank_counts_the_singular_values_that_matter() -> None:
    rng = np.random.default_rng(0)
    low = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 20))
    assert srank(low) == 3
    assert srank(np.zeros((4, 4))) == 0
    json.dumps({"srank": srank(low)})  # a plain int in the report's JSON


def test_summary_computes_the_accuracy_metrics_on_the_soft_matrix() -> None:
    from cl_eval.matrix import Curriculum
    from cl_eval.plasticity import DEFINITIONS, SUMMARY_TAU, Plasticity
    from cl_eval.probe import CheckpointProbe

    soft = [(-3.0, -4.0), (-1.0, -3.5), (-2.0, -1.5)]  # base, after plus, after plus_minus
    probes = [
        CheckpointProbe(dormant_overall={SUMMARY_TAU: 0.1 * i}, srank=10 - i,
                        soft_accuracy={"plus": a, "plus_minus": b})
        for i, (a, b) in enumerate(soft)
    ]  # fmt: skip
    p = Plasticity(["base", "R1_plus", "R1_plus_minus"], probes=probes)
    s = p.summary(Curriculum(("plus", "plus_minus"), (0, 1)), t_used=2)
    assert set(s) == set(DEFINITIONS)
    assert s["soft_plasticity_gain"] == pytest.approx(((-1 + 3) + (-1.5 + 3.5)) / 2)
    assert s["soft_bwt"] == pytest.approx(-2.0 - -1.0)  # plus fell from -1 to -2
    assert s["soft_final_accuracy"] == pytest.approx(-1.75)
    assert s["dormant_final"] == pytest.approx(0.2) and s["srank_final"] == 8
    unprobed = Plasticity(["base", "R1_plus"]).summary(Curriculum(("plus",), (0,)), t_used=1)
    assert unprobed == dict.fromkeys(DEFINITIONS)
