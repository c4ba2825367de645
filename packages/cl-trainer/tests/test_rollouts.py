"""A stage's rollout dumps (written by veRL's own writer) compacted into one small parquet file."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from cl_rundir.layout import ROLLOUT_COLUMNS
from cl_trainer import private_api
from cl_trainer.errors import TrainerError
from cl_trainer.rollouts import compact
from countdown_reward.scoring import FORMAT_SCORE

GT = {"target": 10, "numbers": [3, 7]}
RIGHT, WRONG, NONE = "<answer>3 + 7</answer>", "<answer>3 * 7</answer>", "no idea"


def dump(dir_: str, step: int, outputs: list[str], scores: list[float]) -> None:
    """One step as veRL's v1 trainer dumps it (``_log_rollout_data``)."""
    private_api.write_generations(
        inputs=["Using 3 7 make 10"] * len(outputs),
        outputs=outputs,
        gts=[GT] * len(outputs),
        scores=scores,
        reward_extra_infos_dict={"uid": [f"u{step}_{i}_0" for i in range(len(outputs))]},
        dump_path=dir_,
        global_steps=step,
    )


def test_compaction_keeps_step_score_correctness_and_length(tmp_path) -> None:
    dumps, out = tmp_path / "rollouts" / "R1_plus", tmp_path / "rollouts" / "R1_plus.parquet"
    dump(str(dumps), 1, [RIGHT, WRONG, NONE], [1.0, FORMAT_SCORE, 0.0])
    dump(str(dumps), 2, [RIGHT, RIGHT], [1.0, 1.0])
    assert compact(dumps, out) == 5
    assert not dumps.exists()
    table = pq.read_table(out)
    assert tuple(table.column_names) == ROLLOUT_COLUMNS
    assert table["step"].to_pylist() == [1, 1, 1, 2, 2]
    assert table["correct"].to_pylist() == [True, False, False, True, True]
    assert table["score"].to_pylist() == pytest.approx([1.0, FORMAT_SCORE, 0.0, 1.0, 1.0])
    assert (
        table["response_chars"].to_pylist()
        == [len(RIGHT), len(WRONG), len(NONE)] + [len(RIGHT)] * 2
    )


def test_the_text_is_kept_only_when_asked(tmp_path) -> None:
    dumps, out = tmp_path / "d", tmp_path / "r.parquet"
    dump(str(dumps), 3, [WRONG], [FORMAT_SCORE])
    compact(dumps, out, keep_text=True)
    row = pq.read_table(out).to_pylist()[0]
    assert row["output"] == WRONG and row["input"] == "Using 3 7 make 10"
    assert row["gts"] == '{"numbers": [3, 7], "target": 10}' and row["correct"] is False


def test_a_cut_short_compaction_loses_nothing_when_rerun(tmp_path) -> None:
    dumps, out = tmp_path / "d", tmp_path / "r.parquet"
    dump(str(dumps), 1, [RIGHT], [1.0])
    dump(str(dumps), 2, [WRONG], [FORMAT_SCORE])
    compact(dumps, out)
    # Killed after publishing a compaction of steps 1-2 but before removing the dumps of a
    # resumed stage's steps 2-3: step 1 survives from the file, steps 2-3 from the dumps.
    dump(str(dumps), 2, [WRONG], [FORMAT_SCORE])
    dump(str(dumps), 3, [RIGHT, NONE], [1.0, 0.0])
    assert compact(dumps, out) == 4
    table = pq.read_table(out)
    assert table["step"].to_pylist() == [1, 2, 3, 3]
    assert table["correct"].to_pylist() == [True, False, True, False]
    assert compact(dumps, out) == 4  # nothing dumped: the file stands


def test_a_line_cut_off_mid_write_is_left_out(tmp_path) -> None:
    dumps, out = tmp_path / "d", tmp_path / "r.parquet"
    dump(str(dumps), 1, [RIGHT, WRONG], [1.0, FORMAT_SCORE])
    with (dumps / "1.jsonl").open("a") as f:
        f.write('{"input": "Using 3 7 make 10", "output": "<ans')
    assert compact(dumps, out) == 2


def test_a_damaged_line_stops_the_compaction_naming_the_file(tmp_path) -> None:
    dumps, out = tmp_path / "d", tmp_path / "r.parquet"
    dump(str(dumps), 1, [RIGHT, WRONG], [1.0, FORMAT_SCORE])
    text = (dumps / "1.jsonl").read_text()
    (dumps / "1.jsonl").write_text("garbage\n" + text)
    with pytest.raises(TrainerError, match=r"1\.jsonl:1 .*delete the file"):
        compact(dumps, out)
    assert (dumps / "1.jsonl").is_file() and not out.exists()


def test_no_dumps_no_file(tmp_path) -> None:
    assert compact(tmp_path / "missing", tmp_path / "r.parquet") == 0
    assert not (tmp_path / "r.parquet").exists()
