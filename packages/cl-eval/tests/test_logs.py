"""Log parsing on lines produced by veRL's own logger, with noise and damage."""

from __future__ import annotations

import numpy as np
import pytest

from cl_eval.logs import parse_log, parse_log_text
from cl_rundir.metric_lines import data_sources, group_accuracy


def test_stage_log_validation_and_training(verl_line, synth, tmp_path) -> None:
    text = synth.stage_log(
        verl_line, {"plus": 0.2, "plus_minus": 0.1}, {"plus": 0.9, "plus_minus": 0.3}
    )
    (tmp_path / "s.log").write_text(text)
    log = parse_log(tmp_path / "s.log")
    assert log.steps == list(range(7))
    assert log.val_steps() == [0, 6]
    assert log.train_steps() == [1, 2, 3, 4, 5, 6]
    assert group_accuracy(log.records[0], "countdown_plus") == (
        0.2,
        "val-core/countdown_plus/acc/mean@1",
    )
    assert group_accuracy(log.records[6], "countdown_plus_minus")[0] == 0.3
    assert data_sources(log.records[0]) == ["countdown_plus", "countdown_plus_minus"]
    steps, vals = log.series("critic/score/mean")
    assert steps == [1, 2, 3, 4, 5, 6] and vals[0] == pytest.approx(0.22)
    assert not log.warnings


def test_truncated_last_line_keeps_complete_fields(verl_line) -> None:
    full = verl_line({"a": 0.5, "b": 0.123456, "c": np.float64(0.25)}, 3)
    cut_number = full[: full.index("c:") - 3] + " - b:0.12"
    log = parse_log_text(
        "noise\n" + verl_line({"a": 0.1}, 2) + "\n" + full.split(" - b:")[0] + " - b:0.12"
    )
    assert log.records[3] == {"a": 0.5}  # b may be cut mid-number: dropped
    assert any("truncated" in w for w in log.warnings)
    assert "a" in parse_log_text(cut_number).records[3]
    cut_np = full[:-3]  # "... - c:np.float64(0." -> unparseable, dropped
    log = parse_log_text(cut_np)
    assert log.records[3] == {"a": 0.5, "b": 0.123456}


def test_resumed_stage_later_lines_win(verl_line) -> None:
    text = (
        "\n".join(
            [verl_line({"x": 1.0}, s) for s in (0, 1, 2, 3)]
            + ["Traceback (most recent call last):", "RuntimeError: CUDA out of memory"]
            + [verl_line({"x": 9.0, "y": 1.0}, s) for s in (2, 3, 4)]
        )
        + "\n"
    )
    log = parse_log_text(text, name="R1_plus.log")
    assert log.steps == [0, 1, 2, 3, 4]
    assert log.records[1] == {"x": 1.0}
    assert log.records[3] == {"x": 9.0, "y": 1.0}
    assert log.restarts == 1
    assert any("resumed" in w for w in log.warnings)


def test_binary_garbage_is_not_fatal(tmp_path, verl_line) -> None:
    p = tmp_path / "x.log"
    p.write_bytes(b"\xff\xfe\x00garbage\r" + verl_line({"a": 1}, 1).encode() + b"\r\n\x00\x01")
    assert parse_log(p).records == {1: {"a": 1.0}}
