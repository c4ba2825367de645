"""End to end: a synthetic run dir (run.json + veRL logs + tiny checkpoints) -> report."""

from __future__ import annotations

import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from cl_eval.cli import main
from cl_eval.report import build_report
from cl_eval.run import RunError, load_run

R = np.array(
    [
        [0.30, 0.10, 0.05, 0.00],
        [0.70, 0.05, 0.05, 0.00],
        [0.60, 0.50, 0.10, 0.00],
        [0.55, 0.40, 0.45, 0.05],
        [0.50, 0.35, 0.40, 0.60],
    ]
)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def png_is_not_blank(path) -> bool:
    """Decode the first IDAT stream and check the pixels are not all one value."""
    data = path.read_bytes()
    idat, pos = b"", 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + n]
        pos += 12 + n
    raw = zlib.decompress(idat)
    return len(set(raw[:200_000])) > 10


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, verl_line, synth):
    root = tmp_path_factory.mktemp("runs") / "tiny"
    stages = [(1, g) for g in synth.GROUPS]
    synth.make_run(root, verl_line, R, stages, synth.GROUPS)
    return root


def test_report_end_to_end(full_run) -> None:
    res = build_report(full_run, write_html=True)
    assert not res.warnings, res.warnings
    c = json.loads((full_run / "metrics" / "consolidated_metrics_tiny.json").read_text())
    assert c["schema_version"] == 1
    assert np.allclose(np.array(c["accuracy_matrix"]["values"], dtype=float), R)
    assert c["accuracy_matrix"]["rows"][0] == "base"
    assert c["accuracy_matrix"]["keys"][1][0] == "val-core/countdown_plus/acc/mean@1"
    m = c["metrics"]
    assert m["bwt"] == pytest.approx(((0.5 - 0.7) + (0.35 - 0.5) + (0.4 - 0.45)) / 3)
    assert m["fwt"] == pytest.approx(((0.05 - 0.1) + (0.1 - 0.05) + (0.05 - 0.0)) / 3)
    assert m["forgetting_max"] == pytest.approx(((0.7 - 0.5) + (0.5 - 0.35) + (0.45 - 0.4)) / 3)
    assert set(c["definitions"]) >= {"bwt", "fwt", "forgetting_avalanche", "forgetting_max"}
    st = c["stages"][0]
    assert st["steps"] == {"first": 1, "last": 6, "count": 6}
    assert st["training"]["score"]["key"] == "critic/score/mean"
    wc = st["weight_change"]
    assert wc["stage"]["global"]["rel_l2"] > 0
    assert wc["stage"]["dtypes"] == {"BF16": wc["stage"]["global"]["numel"]}
    # stage 1 starts from the base model: cumulative == per-stage; later stages accumulate
    assert wc["cumulative"]["global"] == wc["stage"]["global"]
    last = c["stages"][-1]["weight_change"]
    assert last["cumulative"]["global"]["rel_l2"] > last["stage"]["global"]["rel_l2"]
    per = json.loads((full_run / "metrics" / "metrics_1_plus_minus_tiny.json").read_text())
    assert per["validation"]["before"]["accuracy"]["plus_minus"] == pytest.approx(0.05)
    assert per["validation"]["after"]["accuracy"]["plus_minus"] == pytest.approx(0.5)
    assert per["training"]["response_length"]["values"][0] == 119.0
    assert per["weight_change"]["stage"]["by_module"]["up"]["rel_l2"] > 0
    for name in ("training_metrics", "accuracy_matrix", "weight_change", "forgetting"):
        png = full_run / "plots" / f"{name}_tiny.png"
        w, h = png_size(png)
        assert w > 400 and h > 300
        assert png_is_not_blank(png)
    md = (full_run / "report.md").read_text()
    assert "| base | 0.300 | 0.100 | 0.050 | 0.000 |" in md
    assert "![accuracy matrix](plots/accuracy_matrix_tiny.png)" in md
    assert "BWT (GEM" in md and "Chaudhry" in md
    page = (full_run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6  # + plasticity and forgetting vs KL


def test_partial_run_warns_and_reports(tmp_path, full_run) -> None:
    run = tmp_path / "partial"
    shutil.copytree(full_run, run, symlinks=True)
    for p in [*run.glob("metrics/*.json"), *run.glob("plots/*"), run / "report.md"]:
        p.unlink()
    manifest = json.loads((run / "run.json").read_text())
    manifest["stages"][3]["status"] = "running"
    (run / "run.json").write_text(json.dumps(manifest))
    log3 = run / "logs/ContinualCountdown_R1_plus_minus_mul.log"
    text = log3.read_text()
    log3.write_text(
        text[: text.rindex("step:6") + 40]
    )  # crash mid-line before the final validation
    (run / "logs/ContinualCountdown_R1_plus_minus_mul_div.log").unlink()
    shutil.rmtree(run / "metrics/final_1_plus_minus_mul_div")
    shutil.rmtree(run / "metrics/final_1_plus_minus")
    res = build_report(run)
    w = "\n".join(res.warnings)
    assert "R1_plus_minus_mul.log: last line is truncated" in w
    assert "stage R1_plus_minus_mul_div: no log" in w
    assert "stage R1_plus_minus: no final checkpoint" in w
    assert "stage R1_plus_minus_mul: no validation after training" in w or "last validation" in w
    assert "metrics use stages 1..2 of 4" in w
    c = res.consolidated
    vals = c["accuracy_matrix"]["values"]
    assert (
        np.isnan(np.array(vals[3], dtype=float)).all()
        and np.isnan(np.array(vals[4], dtype=float)).all()
    )
    assert c["metrics"]["bwt"] == pytest.approx(0.6 - 0.7)
    assert (run / "plots/training_metrics_tiny.png").stat().st_size > 10_000
    assert not (run / "metrics/metrics_1_plus_minus_mul_div_tiny.json").exists()


def test_next_stage_before_validation_fills_a_missing_row(tmp_path, full_run) -> None:
    run = tmp_path / "r"
    shutil.copytree(full_run, run, symlinks=True)
    log = run / "logs/ContinualCountdown_R1_plus.log"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(ln for ln in lines if "val-core" not in ln or "step:0" in ln) + "\n")
    res = build_report(run, weights=False)
    assert any("taken from R1_plus_minus's before-validation" in w for w in res.warnings)
    assert res.consolidated["accuracy_matrix"]["values"][1] == pytest.approx(list(R[1]))


def test_layout_without_run_json(tmp_path, verl_line, synth) -> None:
    run = synth.make_run(
        tmp_path / "0.5b",
        verl_line,
        R[:3],
        [(1, "plus"), (1, "plus_minus")],
        synth.GROUPS,
        size="0.5b",
        checkpoints=False,
        manifest=False,
    )
    loaded = load_run(run)
    assert [s.name for s in loaded.stages] == ["R1_plus", "R1_plus_minus"]
    assert loaded.size == "0.5b"
    res = build_report(run)
    assert (run / "metrics/consolidated_metrics_0.5b.json").is_file()
    assert (run / "metrics/metrics_1_plus_0.5b.json").is_file()
    assert any("no run.json" in w for w in res.warnings)
    assert not (run / "plots/weight_change_0.5b.png").exists()


def test_nothing_usable_is_an_error(tmp_path) -> None:
    with pytest.raises(RunError, match="no stages"):
        load_run(tmp_path)
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/ContinualCountdown_R1_plus.log").write_text("Ray noise only\n")
    with pytest.raises(RunError, match="nothing to report"):
        build_report(tmp_path)


def test_cli(tmp_path, full_run) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["matrix", str(full_run)])
    assert r.exit_code == 0, r.output
    assert "R1_plus_minus_mul_div" in r.output and "0.600" in r.output and "bwt" in r.output
    r = runner.invoke(main, ["matrix", str(full_run), "--json"])
    assert json.loads(r.output)["accuracy_matrix"]["values"][1][0] == pytest.approx(0.7)
    a, b = full_run / "metrics/initial_1_plus", full_run / "metrics/final_1_plus"
    r = runner.invoke(main, ["diff", str(a), str(b), "--json", "--per-tensor"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["global"]["rel_l2"] > 0 and "model.layers.1.mlp.up_proj.weight" in out["tensors"]
    r = runner.invoke(main, ["diff", str(a), str(b)])
    assert r.exit_code == 0 and "unchanged bits" in r.output and "BF16" in r.output
    r = runner.invoke(main, ["diff", str(a), str(tmp_path)])
    assert r.exit_code == 1 and "no model.safetensors" in r.output
    r = runner.invoke(main, ["report", "--runs-root", str(tmp_path / "none")])
    assert r.exit_code == 2 and "pass --run DIR" in r.output
    r = runner.invoke(main, ["report", "--run", str(full_run), "--model-size", "tiny"])
    assert r.exit_code == 2 and "not both" in r.output
    r = runner.invoke(
        main,
        ["report", "--runs-root", str(full_run.parent), "--model-size", "tiny", "--no-weights"],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["report", "--run", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "does not exist" in r.output
    r = runner.invoke(main, ["-h"])
    assert r.exit_code == 0 and "report" in r.output
