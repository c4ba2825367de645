"""Plasticity diagnostics on checkpoints built with known properties: ranks of planted matrices,
update geometry of planted updates, dormant units planted in a real tiny Qwen2."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

import cl_eval.geometry as geometry
import cl_eval.probe as probe
from cl_eval.geometry import checkpoint_spectra, spectrum_of, update_geometry
from cl_eval.probe import dormant_fractions, srank
from cl_rundir.dormant import UnitSums, unit_scores


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


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (still float32), as a bf16 checkpoint stores them."""
    return torch.from_numpy(np.asarray(x, np.float32)).bfloat16().float().numpy()


def _svd_spectrum(w: np.ndarray):
    return spectrum_of(np.linalg.svd(w.astype(np.float64), compute_uv=False))


def _with_spectrum(rows: int, cols: int, s: np.ndarray, rng) -> np.ndarray:
    u, _ = np.linalg.qr(rng.standard_normal((rows, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((cols, len(s))))
    return (u * s) @ v.T


def test_float32_gram_spectra_match_float64_svd(tmp_path, synth) -> None:
    """The float32 Gram path against float64 SVD of the same stored (bf16) values: ranks within
    RANK_TOL where float32 resolves the spectrum, else the float64 redo gives them exactly."""
    rng = np.random.default_rng(0)
    resolved = {  # float32 must suffice for these (real weights look like them)
        "gauss_tall": rng.standard_normal((2048, 256)) * 0.02,
        "gauss_wide": rng.standard_normal((256, 2048)) * 0.02,
        "spiked": rng.standard_normal((2048, 256)) * 0.02
        + _with_spectrum(2048, 256, np.array([3.0, 1.0, 0.5]), rng),
        "power_law": _with_spectrum(2048, 256, 1 / np.sqrt(np.arange(1, 257)), rng),
    }
    unresolved = {  # tails below float32's reach: recomputed in float64
        "rank_8": _with_spectrum(2048, 256, np.linspace(1, 0.1, 8), rng),
        "steep": _with_spectrum(2048, 256, 1 / np.arange(1, 257) ** 2, rng),
        "square": rng.standard_normal((256, 256)),  # float64 from the start (its shape)
    }
    tensors = synth.tiny_tensors(0)
    stored = {}
    for i, (label, w) in enumerate({**resolved, **unresolved}.items()):
        name = f"model.layers.{i}.mlp.up_proj.weight"
        tensors[name] = torch.from_numpy(w.astype(np.float32))
        stored[label] = (name, _bf16(w))
    spectra = checkpoint_spectra(synth.save_ckpt(tmp_path / "m", tensors)).matrices
    for label, (name, w) in stored.items():
        gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
        if label != "square":
            assert (geometry.gram_spectrum(gram, 2.0**-24) is not None) == (label in resolved)
        got, want = spectra[name], _svd_spectrum(w)
        tol = geometry.RANK_TOL if label in resolved else 1e-9
        assert got.effective_rank == pytest.approx(want.effective_rank, rel=tol), label
        assert got.stable_rank == pytest.approx(want.stable_rank, rel=1e-6), label
        assert got.fro == pytest.approx(want.fro, rel=1e-6), label
        assert got.sigma_max == pytest.approx(want.sigma_max, rel=1e-6), label


def _geometry_reference(models: list[dict], top: float) -> dict[str, tuple]:
    """Cosine, overlap and selected fractions per module and overall, straight from the
    definitions (float64 dot products, an exact sort for the top-k threshold)."""
    from cl_eval.weights import classify

    names = sorted(models[0])
    groups = {"all": names}
    for n in names:
        groups.setdefault(classify(n).module, []).append(n)
    out = {}
    for key, members in groups.items():
        a0, a1, b0, b1 = (
            np.concatenate([_bf16(m[n].numpy()).ravel() for n in members]) for m in models
        )
        da, db = a1 - a0, b1 - b0  # float32, as stored values subtract exactly
        k = math.ceil(top * len(da))
        sets = []
        for d in (np.abs(da), np.abs(db)):
            kth = np.sort(d)[::-1][k - 1]
            sets.append(d >= max(kth, np.nextafter(np.float32(0), np.float32(1))))
        da64, db64 = da.astype(np.float64), db.astype(np.float64)
        cos = da64 @ db64 / math.sqrt((da64 @ da64) * (db64 @ db64))
        both = int((sets[0] & sets[1]).sum())
        union = int(sets[0].sum() + sets[1].sum()) - both
        out[key] = (cos, both / union, sets[0].mean(), sets[1].mean())
    return out


def test_update_geometry_equals_the_definition(tmp_path, synth, monkeypatch) -> None:
    """Exact top-k thresholds under ties (bf16 steps), zero updates, untouched tensors, many
    chunks and a raised floor; a hard-linked shared model gives the same answer as a copy."""
    monkeypatch.setattr(geometry, "STREAM_CHUNK", 64)  # many chunks: the floor rises
    base = synth.tiny_tensors(0, hidden=32)
    g = torch.Generator().manual_seed(3)
    d1 = {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in base.items()}
    d1["model.layers.1.mlp.down_proj.weight"] *= 10  # one tensor dominates the overall top 1 %
    d1["model.layers.0.self_attn.k_proj.weight"] *= 0  # one tensor untouched
    d2 = {k: 0.5 * v + torch.randn(v.shape, generator=g) * 0.01 for k, v in d1.items()}
    m = [base, _step(base, d1), _step(_step(base, d1), d2)]
    paths = [synth.save_ckpt(tmp_path / f"m{i}", t) for i, t in enumerate(m)]
    linked = tmp_path / "m1_linked"
    linked.mkdir()
    for f in paths[1].iterdir():
        (linked / f.name).hardlink_to(f)
    want = _geometry_reference([m[0], m[1], m[1], m[2]], top=0.05)
    for mid in (paths[1], linked):
        got = update_geometry(paths[0], paths[1], mid, paths[2], top=0.05, workers=2)
        assert set(got.cosine) == set(want)
        for key, (cos, overlap, sel_a, sel_b) in want.items():
            assert got.cosine[key] == pytest.approx(cos, rel=1e-6, abs=1e-9), key
            assert got.overlap[key] == pytest.approx(overlap, abs=1e-12), key
            assert got.selected[key] == pytest.approx((sel_a, sel_b), abs=1e-12), key


def test_largest_keeps_the_exact_kth_value_under_ties(monkeypatch) -> None:
    monkeypatch.setattr(geometry, "STREAM_CHUNK", 16)  # slack before the floor rises
    rng = np.random.default_rng(1)
    for k in (1, 7, 300):
        values = rng.integers(0, 40, 5000).astype(np.float32) / 8  # many ties and zeros
        largest = geometry._Largest(k)
        chunks = np.array_split(values, 96)
        for i in range(0, len(chunks), 4):  # four offers in flight: the floor rises meanwhile
            for offer in [largest.offer(c) for c in chunks[i : i + 4]]:
                largest.add(*offer)
        positive = np.sort(values[values > 0])[::-1]
        assert largest.kth() == (positive[k - 1] if k <= len(positive) else geometry._TINY)


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


def test_forward_kl_is_the_reverse_kl_with_the_models_swapped(qwen) -> None:
    """KL(start ‖ after), RL's Razor's direction, measured with ``after`` as the model equals
    KL(after ‖ start) measured the other way round; the two directions differ."""
    from cl_eval.probe import soft_accuracy_and_kl

    start, tok = qwen
    after = copy.deepcopy(start)
    with torch.no_grad():
        after.model.layers[0].mlp.up_proj.weight.mul_(1.5)
        after.lm_head.weight.add_(torch.randn(after.lm_head.weight.shape) * 3)
    pairs = [("nums 12 7 3 target 22 ops +\n", "12+7+3"), ("nums 5 9 target 14 ops +\n", "5+9")]
    _, reverse, forward = soft_accuracy_and_kl(after, start, tok, pairs)
    _, swapped_reverse, swapped_forward = soft_accuracy_and_kl(start, after, tok, pairs)
    assert forward == pytest.approx(swapped_reverse, rel=1e-9)
    assert reverse == pytest.approx(swapped_forward, rel=1e-9)
    assert forward > 0 and reverse > 0 and forward != pytest.approx(reverse, rel=0.05)


def test_kl_correlation_clusters_the_points_of_a_stage() -> None:
    """Earlier groups lose 2 × the KL the stage moved, plus noise: r is Pearson's, its interval
    (a bootstrap over the 10 stages, not the 30 points) holds it and excludes 0; a perfect line
    gives r = −1."""
    from cl_eval.plasticity import KLPoint, kl_correlation

    rng = np.random.default_rng(2)
    points = [
        KLPoint(f"R1_s{k}", g, kl, -2 * kl + rng.normal(0, 0.02))
        for k, kl in enumerate(rng.uniform(0.01, 0.1, size=10))
        for g in ("plus", "plus_minus", "plus_minus_mul")
    ]
    r = kl_correlation(points)
    x = np.array([p.kl for p in points])
    y = np.array([p.change for p in points])
    assert r.value == pytest.approx(np.corrcoef(x, y)[0, 1]) and r.n == 30
    assert r.lo < r.value < r.hi < 0 and r.method == "Pearson, bootstrap over stages"
    line = [KLPoint(f"s{k}", "plus", k / 10, -k / 5) for k in range(1, 6)]
    assert kl_correlation(line).value == pytest.approx(-1)
    assert kl_correlation(line[:2]).value is None  # too few points for a correlation


def test_rl_razor_pairs_the_kl_from_the_base_with_the_change_from_the_base() -> None:
    """Planted KLs and accuracies: RL's Razor's pairing sets KL(base ‖ after) on the stage's own
    group against every other group's change from the base, R[k][j] − R[0][j]; the stage-start
    pairing sets KL(start ‖ after) against each earlier group's change in the stage. Planted
    changes of −2 × the base KL give r = −1 in the first, not in the second."""
    from cl_eval.plasticity import (
        KL_PAIRINGS,
        Plasticity,
        kl_correlation,
        kl_forgetting,
        kl_forgetting_points,
    )
    from cl_eval.probe import CheckpointProbe

    groups = ["plus", "plus_minus", "plus_minus_mul"]
    R = np.array([[0.5, 0.2, 0.1], [0.9, 0.3, 0.1], [0.7, 0.8, 0.2], [0.6, 0.6, 0.9]])
    probes = [CheckpointProbe()] + [
        CheckpointProbe(kl_base={g: base}, kl_forward={g: start})
        for g, base, start in zip(groups, (0.1, 0.2, 0.3), (0.1, 0.05, 0.4), strict=True)
    ]
    plast = Plasticity(["base", "R1_plus", "R1_plus_minus", "R1_plus_minus_mul"], probes=probes)
    points = kl_forgetting(plast, R, [0, 1, 2], groups)
    assert [p.name for p in KL_PAIRINGS] == list(points) == ["base", "stage_start"]
    got = {name: [(p.stage, p.group, p.kl, round(p.change, 9)) for p in pts]
           for name, pts in points.items()}  # fmt: skip
    assert got["base"] == [
        ("R1_plus", "plus_minus", 0.1, 0.1), ("R1_plus", "plus_minus_mul", 0.1, 0.0),
        ("R1_plus_minus", "plus", 0.2, 0.2), ("R1_plus_minus", "plus_minus_mul", 0.2, 0.1),
        ("R1_plus_minus_mul", "plus", 0.3, 0.1), ("R1_plus_minus_mul", "plus_minus", 0.3, 0.4),
    ]  # fmt: skip
    assert got["stage_start"] == [
        ("R1_plus_minus", "plus", 0.05, -0.2),
        ("R1_plus_minus_mul", "plus", 0.4, -0.1), ("R1_plus_minus_mul", "plus_minus", 0.4, -0.2),
    ]  # fmt: skip
    del probes[2].kl_base["plus_minus"]  # a stage whose KL from the base was not measured
    assert {p.stage for p in kl_forgetting(plast, R, [0, 1, 2], groups)["base"]} == {
        "R1_plus", "R1_plus_minus_mul"
    }
    # RL's Razor on planted data: each stage's other groups lose 2 × its KL from the base.
    kls = np.linspace(0.01, 0.1, 6)
    planted = np.zeros((7, 3))
    probes = [CheckpointProbe()]
    for k, kl in enumerate(kls, start=1):
        own = groups[(k - 1) % 3]
        probes.append(CheckpointProbe(kl_base={own: kl}, kl_forward={own: 0.05}))
        planted[k] = -2 * kl
        planted[k, (k - 1) % 3] = 0.5
    plast = Plasticity(["base"] + [f"R{1 + k // 3}_s{k}" for k in range(6)], probes=probes)
    pairs = kl_forgetting(plast, planted, [k % 3 for k in range(6)], groups)
    assert kl_correlation(pairs["base"]).value == pytest.approx(-1)
    assert kl_correlation(pairs["stage_start"]).value is None  # one KL for every stage
    with pytest.raises(ValueError, match="unknown KL pairing"):
        kl_forgetting_points(plast, planted, [0, 1, 2], groups, "reverse")
def _full_float64(model, previous, tok, pairs) -> tuple[float, float | None]:
    """The probe's former computation: every position's log-softmax over the vocabulary in
    float64, masked to the solution tokens."""
    (ids, attention), target = probe._solution_batch(tok, pairs)
    mask = target[:, 1:].double()

    def logp(m):
        with torch.no_grad():
            logits = m(input_ids=ids, attention_mask=attention).logits[:, :-1].double()
        return torch.log_softmax(logits, dim=-1)

    lp = logp(model)
    soft = float((lp.gather(-1, ids[:, 1:, None])[..., 0] * mask).sum() / mask.sum())
    if previous is None:
        return soft, None
    kl = (lp.exp() * (lp - logp(previous))).sum(-1)
    return soft, float((kl * mask).sum() / mask.sum())


def test_chunked_soft_accuracy_and_kl_equal_the_full_computation(qwen, monkeypatch) -> None:
    model, tok = qwen
    after = copy.deepcopy(model)
    with torch.no_grad():
        for p in after.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pairs = [
        ("nums 12 7 3 target 22 ops +\n", "12+7+3=22"),
        ("nums 5 9 40 target 36 ops +-\n", "40-9+5=36"),
        ("nums 2 3 target 5 ops +\n", "2+3=5"),
    ]
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(probe, "LOGIT_CHUNK_BYTES", 4 * vocab * 3)  # 3 positions per chunk
    soft, kl, forward = probe.soft_accuracy_and_kl(after, model, tok, pairs)
    want_soft, want_kl = _full_float64(after, model, tok, pairs)
    assert soft == pytest.approx(want_soft, rel=1e-6)
    assert kl == pytest.approx(want_kl, rel=1e-4, abs=1e-7) and kl > 1e-3
    want_forward = _full_float64(model, after, tok, pairs)[1]  # KL(model ‖ after)
    assert forward == pytest.approx(want_forward, rel=1e-4, abs=1e-7)
    base = copy.deepcopy(model)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))

    def states(m):
        return probe.solution_states(m, tok, pairs)[0]

    with_base = probe.soft_and_kl(states(after), states(model), states(base))
    assert with_base[:3] == (soft, kl, forward)  # the base changes nothing else
    want_base = _full_float64(base, after, tok, pairs)[1]  # KL(base ‖ after)
    assert with_base[3] == pytest.approx(want_base, rel=1e-4, abs=1e-7) and want_base > 1e-3
    assert probe.soft_and_kl(states(after), None, states(base))[1:] == (None, None, with_base[3])
    alone = probe.soft_accuracy_and_kl(model, None, tok, pairs)
    assert alone[0] == pytest.approx(_full_float64(model, None, tok, pairs)[0], rel=1e-6)
    assert alone[1] is None and alone[2] is None


def test_one_forward_pass_gives_what_the_prompts_alone_gave(qwen) -> None:
    """Dormant units and feature rank come from the prompt positions of the teacher-forced
    solutions: the same numbers as a forward pass of the prompts alone (left-padded)."""
    model, tok = qwen
    pairs = [
        ("nums 12 7 3 target 22 ops +\n", "12+7+3=22"),
        ("nums 5 9 40 target 36 ops +-\n", "40-9+5=36"),
        ("nums 2 3 target 5 ops +\n", "2+3=5"),
    ]
    scores, finals = unit_scores(model, tok, [p for p, _ in pairs])
    with UnitSums(model) as units:
        _, merged_finals = probe.solution_states(model, tok, pairs, units)
    for alone, merged in zip(scores, units.means(), strict=True):
        np.testing.assert_allclose(merged, alone, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(merged_finals.numpy(), finals, rtol=1e-4, atol=1e-6)


def test_probe_restores_torch_global_state(qwen, tmp_path, monkeypatch) -> None:
    """Also: a start hard-linked to the previous checkpoint (cl-trainer's layout) is not loaded
    again, and the KL against the previous output layer, read back from its file, is the KL
    between the two models in memory."""
    from countdown_data import GenConfig, write_dataset

    model, tok = qwen
    data = tmp_path / "data"
    write_dataset(GenConfig(train_size=4, test_size=2), data)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dirs = []
    for i, m in enumerate((model, moved)):
        d = tmp_path / f"m{i}"
        m.save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    linked = tmp_path / "m0_linked"
    linked.mkdir()
    for f in dirs[0].iterdir():
        (linked / f.name).hardlink_to(f)
    loads = []
    load_model = probe.load_model
    monkeypatch.setattr(probe, "load_model", lambda p: loads.append(p) or load_model(p))
    groups = ["plus", "plus_minus"]
    threads = max(2, torch.get_num_threads())  # the tiny model's probe runs on one thread
    torch.set_num_threads(threads)
    out = probe.probe_checkpoints(dirs, [None, linked], data, groups, k=2)
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads
    assert loads == dirs
    pset = probe.build_probe_set(data, groups, tok, 2)
    for g in groups:
        soft, kl, forward = probe.soft_accuracy_and_kl(moved, model, tok, pset.solutions[g])
        assert out[1].kl_moved[g] == pytest.approx(kl, rel=1e-5) and kl > 1e-4
        assert out[1].kl_forward[g] == pytest.approx(forward, rel=1e-5) and forward > 1e-4
        assert out[1].soft_accuracy[g] == pytest.approx(soft, rel=1e-6)
    (tmp_path / "empty").mkdir()
    notes: list[str] = []  # no model there: skipped after the tiny model set 1 thread
    out = probe.probe_checkpoints([dirs[0], tmp_path / "empty"], [None, dirs[0]], data, groups,
                                  notes=notes)  # fmt: skip
    assert out[0] is not None and out[1] is None and "empty" in notes[0]
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads


def test_the_kl_from_the_base_is_measured_against_the_first_checkpoint(qwen, tmp_path) -> None:
    """Checkpoints base → m1 → m2 → a copy of the base, each stage starting from the one before:
    the KL from the base is KL(base ‖ checkpoint), none for the base itself, the stage-start KL
    for the first stage (which starts from the base), 0 for the copy of the base, whose KL from
    its stage's start is KL(m2 ‖ base): stage 2's KL from the base with the models swapped."""
    from countdown_data import GenConfig, write_dataset

    model, tok = qwen
    data = tmp_path / "data"
    write_dataset(GenConfig(train_size=4, test_size=2), data)
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
            p1.add_(0.05 * torch.randn_like(p1))
            p2.add_(0.1 * torch.randn_like(p2))
    dirs = []
    for i, m in enumerate((model, m1, m2, model)):
        d = tmp_path / f"m{i}"
        m.save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    groups = ["plus", "plus_minus"]
    out = probe.probe_checkpoints(dirs, [None, *dirs[:3]], data, groups, k=2)
    assert out[0].kl_base == {} and out[1].kl_base == out[1].kl_forward
    pset = probe.build_probe_set(data, groups, tok, 2)
    for g in groups:
        from_base = probe.soft_accuracy_and_kl(m2, model, tok, pset.solutions[g])[2]
        assert out[2].kl_base[g] == pytest.approx(from_base, rel=1e-5)
        assert from_base > 1e-3 and out[2].kl_base[g] != pytest.approx(out[2].kl_forward[g])
        assert out[3].kl_base[g] == pytest.approx(0, abs=1e-9)
        assert out[3].kl_forward[g] == pytest.approx(
            probe.soft_accuracy_and_kl(model, m2, tok, pset.solutions[g])[2], rel=1e-5
        )
