"""Streaming weight diff on tiny checkpoints with known differences."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cl_eval.weights import CheckpointError, classify, diff_checkpoints, open_checkpoint

Q0 = "model.layers.0.self_attn.q_proj.weight"


def exact(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    return float((b64 - a64).norm() / a64.norm())


def test_identical_checkpoints(tmp_path, synth) -> None:
    t = synth.tiny_tensors()
    a = synth.save_ckpt(tmp_path / "a", t)
    b = synth.save_ckpt(tmp_path / "b", t)
    d = diff_checkpoints(a, b, chunk=5)
    g = d.total().summary()
    assert g["rel_l2"] == 0.0 and g["l2_delta"] == 0.0
    assert g["unchanged_bitwise"] == g["unchanged_atol"] == g["unchanged_rel"] == 1.0
    assert g["numel"] == sum(v.numel() for v in t.values())
    assert d.to_dict()["dtypes"] == {"BF16": g["numel"]}
    assert not d.skipped


def test_one_tensor_changed_matches_exact_computation(tmp_path, synth) -> None:
    t = synth.tiny_tensors()
    u = dict(t)
    u[Q0] = t[Q0].clone()
    u[Q0][0, :4] += torch.tensor(
        [0.5, -0.25, 1e-6, 0.0]
    )  # 2 visible changes, 1 below bf16 resolution
    a = synth.save_ckpt(tmp_path / "a", t, dtype="f32")
    b = synth.save_ckpt(tmp_path / "b", u, dtype="f32")
    d = diff_checkpoints(a, b, chunk=7, workers=2)
    q = d.tensors[Q0].summary()
    assert q["rel_l2"] == pytest.approx(exact(t[Q0], u[Q0]), rel=1e-12)
    n = t[Q0].numel()
    assert q["unchanged_bitwise"] == pytest.approx((n - 3) / n)
    assert q["unchanged_atol"] == pytest.approx((n - 2) / n)  # the 1e-6 change is within 1e-5
    assert q["max_abs_delta"] == pytest.approx(0.5, rel=1e-6)
    others = [s for k, s in d.tensors.items() if k != Q0]
    assert all(s.sq_d == 0.0 for s in others)
    mods = d.to_dict()["by_module"]
    assert mods["q"]["rel_l2"] > 0 and mods["k"]["rel_l2"] == 0.0
    g = d.total().summary()
    total_sq = sum(float(v.double().pow(2).sum()) for v in t.values())
    assert g["rel_l2"] == pytest.approx(
        float((u[Q0].double() - t[Q0].double()).norm()) / total_sq**0.5
    )
    layers, modules, M = d.layer_module_matrix()
    assert layers == ["0", "1", "non-layer"] and modules[:4] == ["q", "k", "v", "o"]
    assert M[0, 0] > 0 and M[1, 0] == 0.0
    assert M[2, modules.index("embed")] == 0.0 and np.isnan(M[2, 0])


def test_bf16_rounding_hides_small_updates(tmp_path, synth) -> None:
    t = {k: v.to(torch.bfloat16).float() for k, v in synth.tiny_tensors().items()}
    u = {k: v * (1 + 1e-4) for k, v in t.items()}  # below half a bf16 ULP: rounds back to t
    bf = diff_checkpoints(synth.save_ckpt(tmp_path / "a", t), synth.save_ckpt(tmp_path / "b", u))
    assert bf.total().summary()["unchanged_bitwise"] == 1.0
    f32 = diff_checkpoints(
        synth.save_ckpt(tmp_path / "c", t, dtype="f32"),
        synth.save_ckpt(tmp_path / "d", u, dtype="f32"),
    )
    s = f32.total().summary()
    assert s["unchanged_bitwise"] == 0.0  # every nonzero weight moved in fp32 (and none is 0)
    assert s["unchanged_rel"] == 1.0  # every |Δ| = 1e-4|w| <= 1e-3 max(|w0|, |w1|)
    assert f32.to_dict()["dtypes"] == {"F32": s["numel"]}
    mixed = diff_checkpoints(tmp_path / "a", tmp_path / "d")
    assert set(mixed.to_dict()["dtypes"]) == {"BF16->F32"}


def test_tied_embeddings_counted_once(tmp_path, synth) -> None:
    t = synth.tiny_tensors()
    with_head = {**t, "lm_head.weight": t["model.embed_tokens.weight"].clone()}
    a = synth.save_ckpt(tmp_path / "a", with_head, tie=True)
    b = synth.save_ckpt(tmp_path / "b", t, tie=True)
    d = diff_checkpoints(a, b)
    assert "lm_head.weight" not in d.tensors and not d.skipped
    untied = synth.save_ckpt(tmp_path / "c", with_head, tie=False)
    d2 = diff_checkpoints(untied, untied)
    assert "lm_head.weight" in d2.tensors
    assert d2.to_dict()["by_module"]["lm_head"]["numel"] == t["model.embed_tokens.weight"].numel()
    liar = {**t, "lm_head.weight": t["model.embed_tokens.weight"] + 1}
    d3 = diff_checkpoints(synth.save_ckpt(tmp_path / "e", liar, tie=True), tmp_path / "e")
    assert "lm_head.weight" in d3.tensors and any("lm_head differs" in w for w in d3.warnings)


def test_sharded_index_equals_single_file(tmp_path, synth) -> None:
    t = synth.tiny_tensors()
    u = {k: v + 0.01 * torch.randn_like(v) for k, v in t.items()}
    single = diff_checkpoints(
        synth.save_ckpt(tmp_path / "a", t), synth.save_ckpt(tmp_path / "b", u)
    )
    sharded = diff_checkpoints(
        synth.save_ckpt(tmp_path / "c", t, shards=3), synth.save_ckpt(tmp_path / "d", u, shards=2)
    )
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 3
    assert single.to_dict(per_tensor=True)["tensors"] == sharded.to_dict(per_tensor=True)["tensors"]


def test_missing_and_mismatched_tensors_are_reported(tmp_path, synth) -> None:
    t = synth.tiny_tensors()
    u = dict(t)
    del u["model.norm.weight"]
    u[Q0] = torch.zeros(3, 3)
    u["extra.weight"] = torch.ones(2)
    d = diff_checkpoints(synth.save_ckpt(tmp_path / "a", t), synth.save_ckpt(tmp_path / "b", u))
    assert "model.norm.weight: only in A" in d.skipped
    assert "extra.weight: only in B" in d.skipped
    assert any(s.startswith(Q0 + ": shape") for s in d.skipped)
    assert Q0 not in d.tensors


def test_bad_inputs_raise_checkpoint_error(tmp_path, synth) -> None:
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        open_checkpoint(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        open_checkpoint(tmp_path / "bad.safetensors")
    d = synth.save_ckpt(tmp_path / "t", synth.tiny_tensors())
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(d)
    s = synth.save_ckpt(tmp_path / "s", synth.tiny_tensors(), shards=2)
    next(s.glob("model-00001*")).unlink()
    with pytest.raises(CheckpointError, match=r"shard named in the index is missing"):
        open_checkpoint(s)


def test_verl_actor_layout_and_single_file(tmp_path, synth) -> None:
    d = synth.save_ckpt(tmp_path / "global_step_3" / "actor" / "huggingface", synth.tiny_tensors())
    assert open_checkpoint(tmp_path / "global_step_3").path == d
    ck = open_checkpoint(d / "model.safetensors")
    assert ck.tied and len(ck.tensors) == len(synth.tiny_tensors())
    assert json.loads((d / "config.json").read_text())["tie_word_embeddings"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.layers.3.self_attn.k_proj.bias", (3, "k")),
        ("model.layers.11.mlp.down_proj.weight", (11, "down")),
        ("model.layers.0.post_attention_layernorm.weight", (0, "norm")),
        ("model.norm.weight", (None, "norm")),
        ("model.embed_tokens.weight", (None, "embed")),
        ("lm_head.weight", (None, "lm_head")),
        ("model.rotary_emb.inv_freq", (None, "other")),
    ],
)
def test_classify(name: str, expected: tuple) -> None:
    assert classify(name) == expected


def test_chunking_does_not_change_results(tmp_path, synth) -> None:
    t = synth.tiny_tensors()
    g = torch.Generator().manual_seed(7)
    u = {k: v + 0.003 * torch.randn(v.shape, generator=g) for k, v in t.items()}
    a, b = synth.save_ckpt(tmp_path / "a", t), synth.save_ckpt(tmp_path / "b", u)
    x = diff_checkpoints(a, b, chunk=3, workers=1).to_dict()["global"]
    y = diff_checkpoints(a, b, chunk=1 << 18, workers=3).to_dict()["global"]
    for k in x:
        assert x[k] == pytest.approx(y[k], rel=1e-12), k
    a64 = np.concatenate([v.to(torch.bfloat16).double().numpy().ravel() for v in t.values()])
    b64 = np.concatenate([u[k].to(torch.bfloat16).double().numpy().ravel() for k in t])
    # Δ² of bf16 values is rounded to float32 (relative error < 2^-24), sums are float64
    assert x["rel_l2"] == pytest.approx(np.linalg.norm(b64 - a64) / np.linalg.norm(a64), rel=1e-7)
    assert x["unchanged_rel"] == pytest.approx(
        np.mean(np.abs(b64 - a64) <= 1e-3 * np.maximum(abs(a64), abs(b64)))
    )


def test_bf16_relative_test_shortcut_matches_the_formula(tmp_path, synth) -> None:
    """bf16 pairs count |Δ| <= η·max(|w0|,|w1|) on raw bits; check it against the float formula."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4096, generator=g).bfloat16()
    w[:64] = 0.0
    v = w.clone()
    v[:32] = -0.0  # signed zeros: equal values, different bits
    v[100:1100] = (w[100:1100].float() * (1 + 2**-8)).bfloat16()  # one ulp or so
    v[2000:2100] = -w[2000:2100]
    v[3000:3010] = 1e-30
    a = synth.save_ckpt(tmp_path / "a", {"model.norm.weight": w})
    b = synth.save_ckpt(tmp_path / "b", {"model.norm.weight": v})
    x, y = w.double().numpy(), v.double().numpy()
    for eta in (1e-3, 2**-9 - 1e-6, 0.01):
        s = diff_checkpoints(a, b, eta=eta, chunk=1000).total().summary()
        expected = np.mean(np.abs(y - x) <= eta * np.maximum(np.abs(x), np.abs(y)))
        assert s["unchanged_rel"] == pytest.approx(expected), eta
    s = diff_checkpoints(a, b).total().summary()
    assert s["unchanged_bitwise"] == pytest.approx(
        np.mean(w.view(torch.int16).numpy() == v.view(torch.int16).numpy())
    )
