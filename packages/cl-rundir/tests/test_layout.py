"""The run directory's names: what the trainer writes is what the evaluator's patterns find."""

from __future__ import annotations

from pathlib import Path

from cl_rundir.layout import (
    LOG_FILE,
    MODEL_DIR,
    WARM_START_RECORD,
    Stage,
    completion_style,
)


def test_the_file_patterns_find_every_stage_the_layout_names() -> None:
    for stage in (Stage(0, 1, "plus"), Stage(7, 2, "plus_minus_mul_div"), Stage(11, 10, "x_y")):
        m = LOG_FILE.match(Path(stage.log).name)
        assert m and (int(m.group(1)), m.group(2)) == (stage.round, stage.group)
        for kind in ("initial", "final"):
            m = MODEL_DIR.match(Path(getattr(stage, f"{kind}_model")).name)
            assert m and (m.group(1), int(m.group(2)), m.group(3)) == (
                kind,
                stage.round,
                stage.group,
            )
    assert Stage(4, 2, "plus").experiment_name == "ContinualCountdown_R2_plus"


def test_a_base_model_without_a_record_is_scored_on_worked_solutions(tmp_path: Path) -> None:
    assert completion_style(tmp_path) == "worked"
    (tmp_path / WARM_START_RECORD).write_text('{"completion_style": "compact"}')
    assert completion_style(tmp_path) == "compact"
    (tmp_path / WARM_START_RECORD).write_text("[not json")
    assert completion_style(tmp_path) == "worked"
