"""run.json: one typed record, read and written in one place, tolerant where cl-eval always was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_rundir.layout import RUN_JSON, Stage
from cl_rundir.record import (
    RecordError,
    RemedyRecord,
    RunRecord,
    StageRecord,
    read_record,
    write_record,
)

WRITTEN_BEFORE = {
    "schema_version": 1,
    "name": "ContinualCountdown_testbed",
    "size": "testbed",
    "backend": "local",
    "created_at": "2026-05-01T10:00:00+00:00",
    "updated_at": "2026-05-01T10:30:00+00:00",
    "git_sha": None,
    "versions": {"cl-trainer": "0.1.0", "verl": "0.9.1", "torch": "2.11.0", "transformers": None},
    "base_model": "/runs/testbed/base_model",
    "groups": ["plus", "plus_minus"],
    "config": {"data_dir": "/data/small", "between_stages": ["redo:tau=0.1"], "seed": 0},
    "cpu_overlay": None,
    "stages": [
        {
            "index": 0, "round": 1, "group": "plus", "name": "R1_plus", "status": "done",
            "log": "logs/ContinualCountdown_R1_plus.log",
            "initial_model": "metrics/initial_1_plus", "final_model": "metrics/final_1_plus",
            "checkpoint_dir": "checkpoints/R1_plus", "validation_dir": "validation/R1_plus",
            "started_at": "2026-05-01T10:00:01+00:00", "finished_at": "2026-05-01T10:10:00+00:00",
            "duration_s": 599.5, "exit_code": 0, "signal": None, "error_tail": None,
            "global_steps": 15, "remedies": [],
        },
        {
            "index": 1, "round": 1, "group": "plus_minus", "name": "R1_plus_minus",
            "status": "interrupted", "log": "logs/ContinualCountdown_R1_plus_minus.log",
            "initial_model": "metrics/initial_1_plus_minus",
            "final_model": "metrics/final_1_plus_minus",
            "checkpoint_dir": "checkpoints/R1_plus_minus",
            "validation_dir": "validation/R1_plus_minus",
            "started_at": "2026-05-01T10:10:01+00:00", "finished_at": "2026-05-01T10:12:00+00:00",
            "duration_s": 119, "exit_code": 143, "signal": "SIGTERM", "error_tail": "...\n",
            "global_steps": None,
            "remedies": [{"name": "redo", "params": {"tau": 0.1},
                          "changed": {"reset_units_per_layer": [0, 2, 0], "fraction": 0.004}}],
        },
    ],
}  # fmt: skip
"""run.json as the trainer wrote it before run.json had a typed record (schema 1)."""


def test_a_run_json_written_before_reads_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    text = json.dumps(WRITTEN_BEFORE, indent=2) + "\n"
    (tmp_path / RUN_JSON).write_text(text)
    record = read_record(tmp_path)
    assert record is not None
    done, stopped = record.stages
    assert done.stage == Stage(0, 1, "plus") and done.global_steps == 15
    assert stopped.signal == "SIGTERM" and stopped.duration_s == 119
    assert stopped.remedies == [
        RemedyRecord("redo", {"tau": 0.1}, {"reset_units_per_layer": [0, 2, 0], "fraction": 0.004})
    ]
    assert record.data_dir == Path("/data/small") and record.val_max_samples is None
    assert record.to_json() == text  # same keys, same order, same values


def test_a_planned_stage_has_its_layout_paths_and_the_writer_stamps_the_time(
    tmp_path: Path,
) -> None:
    stage = Stage(3, 2, "plus_minus")
    rec = StageRecord.planned(stage)
    assert (rec.name, rec.status, rec.log, rec.final_model) == (
        "R2_plus_minus",
        "pending",
        "logs/ContinualCountdown_R2_plus_minus.log",
        "metrics/final_2_plus_minus",
    )
    record = RunRecord(groups=["plus", "plus_minus"], stages=[rec])
    write_record(tmp_path, record)
    assert record.updated_at is not None
    assert read_record(tmp_path) == record
    assert read_record(tmp_path / "elsewhere") is None


def test_hand_written_files_fill_in_and_unknown_keys_are_ignored(tmp_path: Path) -> None:
    """What cl-eval always accepted: a stage needs its group; round, index and name follow."""
    (tmp_path / RUN_JSON).write_text(
        json.dumps({"stages": [{"group": "plus", "status": "done", "note": "mine"}], "x": 1})
    )
    record = read_record(tmp_path)
    assert record is not None and record.groups == [] and record.schema_version == 1
    (stage,) = record.stages
    assert (stage.index, stage.round, stage.name, stage.log) == (0, 1, "R1_plus", None)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda m: m["stages"][0].update(log=42), r"stages\[0\]\.log is a number, not a string"),
        (lambda m: m["stages"].__setitem__(1, "R1"), r"stages\[1\] is a string, not an object"),
        (lambda m: m.update(groups=None), "groups is null, not a list"),
        (lambda m: m.update(groups=["plus", 3]), r"groups\[1\] is a number, not a string"),
        (lambda m: m["stages"][0].update(round="1"), r"\.round is a string, not an integer"),
        (lambda m: m["stages"][0].update(exit_code=True), "exit_code is true or false, not an"),
        (lambda m: m["stages"][0].pop("group"), r"stages\[0\]\.group is missing"),
        (lambda m: m["stages"][1]["remedies"][0].update(params=[]), r"\]\.params is a list, not"),
        (lambda m: m.update(stages={}), "no stages list"),
        (lambda m: m.update(schema_version=2), "schema_version 2 is newer"),
    ],
)
def test_a_mistyped_file_is_one_line_naming_the_key(tmp_path: Path, damage, says: str) -> None:
    m = json.loads(json.dumps(WRITTEN_BEFORE))
    damage(m)
    (tmp_path / RUN_JSON).write_text(json.dumps(m))
    with pytest.raises(RecordError, match=says) as err:
        read_record(tmp_path)
    assert "\n" not in str(err.value)


def test_a_file_that_is_not_json_is_a_record_error(tmp_path: Path) -> None:
    (tmp_path / RUN_JSON).write_text('{"stages": [')
    with pytest.raises(RecordError):
        read_record(tmp_path)


def test_the_evaluator_reads_the_validation_cap_when_the_trainer_set_one() -> None:
    assert RunRecord(config={"val_max_samples": 16}).val_max_samples == 16
    assert RunRecord(config={"val_max_samples": -1}).val_max_samples is None
