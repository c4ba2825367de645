"""veRL's console metric lines, parsed from lines that veRL's own logger prints, with noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cl_rundir.metric_lines import group_accuracy, parse_value
from cl_rundir.metric_lines import parse_metric_line as parse_line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.5", 0.5),
        ("12", 12.0),
        ("-2.5e-10", -2.5e-10),
        ("np.float64(0.5)", 0.5),
        ("np.float32(1e-06)", 1e-6),
        ("np.int64(3)", 3.0),
        ("True", 1.0),
        ("inf", math.inf),
        ("-inf", -math.inf),
        ("np.float64(nan)", math.nan),
        ("0.12abc", None),
        ("np.float64(0.", None),
    ],
)
def test_parse_value(text: str, expected: float | None) -> None:
    got = parse_value(text)
    if expected is None:
        assert got is None
    elif math.isnan(expected):
        assert got is not None and math.isnan(got)
    else:
        assert got == expected


def test_round_trips_verl_console_format(verl_line) -> None:
    data = {
        "val-core/countdown_plus/acc/mean@1": np.float64(0.625),
        "actor/pg_loss": np.float32(-0.125),
        "training/global_step": 7,
        "critic/vf_loss": float("nan"),
        "timing_s/step": 3.25,
        "perf/total_num_tokens": np.int64(123456),
        "note": "strings are not logged",
    }
    line = verl_line(data, 7)
    step, metrics = parse_line("\x1b[36m(TaskRunner pid=99)\x1b[0m " + line)
    assert step == 7
    assert metrics["val-core/countdown_plus/acc/mean@1"] == 0.625
    assert metrics["actor/pg_loss"] == -0.125
    assert metrics["perf/total_num_tokens"] == 123456
    assert math.isnan(metrics["critic/vf_loss"])
    assert "note" not in metrics


def test_ignores_noise_lines() -> None:
    for line in [
        "Training Progress:  50%|#### | 5/10",
        "vLLM step: init",
        "step: x - a:1",
        "Traceback (most recent call last):",
        "",
        "mystep:3 - a:1",
    ]:
        assert parse_line(line) is None
    assert parse_line("step:4") == (4, {})


def test_accuracy_falls_back_to_reward() -> None:
    rec = {
        "val-aux/countdown_plus/reward/mean@4": 0.4,
        "val-core/countdown_plus/reward/mean@4": 0.5,
    }
    assert group_accuracy(rec, "countdown_plus") == (0.5, "val-core/countdown_plus/reward/mean@4")
    rec["val-aux/countdown_plus/acc/mean@4"] = 0.3
    assert group_accuracy(rec, "countdown_plus")[0] == 0.3
    assert group_accuracy(rec, "countdown_plus_minus") is None
