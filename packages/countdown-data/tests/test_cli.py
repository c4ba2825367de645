"""The command line: files, manifest, safety (atomicity, --force), validate and the SFT export."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import stat
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import countdown_data.dataset as dataset_mod
from countdown_data.cli import main
from countdown_data.dataset import SCHEMA, load_rows, write_table
from countdown_data.groups import GROUPS, OPERATORS
from countdown_data.sft import COMPLETION_STYLES, compact_completion, sft_examples
from countdown_data.templates import group_of_prompt, prompt_operators
from countdown_reward import compute_score

GEN = ["gen", "--train-size", "300", "--test-size", "60", "--seed", "7", "--workers", "1"]


def run(*args: str) -> object:
    return CliRunner().invoke(main, list(args))


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_schema_and_manifest(small_dir: Path) -> None:
    manifest = json.loads((small_dir / "manifest.json").read_text())
    assert manifest["groups"] == list(GROUPS)
    assert manifest["params"]["seed"] == 7 and manifest["params"]["require_new_op"] is True
    assert manifest["version"] == "0.1.0"
    for g in GROUPS:
        for s, n in (("train", 300), ("test", 60)):
            path = small_dir / g / f"{s}.parquet"
            entry = manifest["files"][f"{g}/{s}.parquet"]
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert entry["rows"] == n == manifest["counts"][g][s]
            assert pq.read_schema(path).equals(SCHEMA)
        row = load_rows(small_dir, g, "train")[0]
        assert row["data_source"] == f"countdown_{g}" and row["ability"] == "math"
        assert row["reward_model"] == {
            "style": "rule",
            "ground_truth": {"target": row["target"], "numbers": row["nums"]},
        }
        assert row["extra_info"]["split"] == "train" and row["extra_info"]["index"] == 0
        assert len(row["prompt"]) == 1 and row["prompt"][0]["role"] == "user"
        content = row["prompt"][0]["content"]
        assert content.endswith("Let me solve this step by step.\n<think>")
        assert prompt_operators(content) == OPERATORS[g] and group_of_prompt(content) == g


def test_validate_and_stats_pass(small_dir: Path) -> None:
    res = run("validate", str(small_dir), "--workers", "2")
    assert res.exit_code == 0, res.output
    assert "satisfy every guarantee" in res.output
    res = run("stats", str(small_dir))
    assert res.exit_code == 0 and "plus_minus_mul_div" in res.output


def test_byte_identical_across_workers(tmp_path: Path, small_dir: Path) -> None:
    res = run(*GEN[:-1], "2", "--out", str(tmp_path / "w2"))
    assert res.exit_code == 0, res.output
    assert snapshot(tmp_path / "w2") == snapshot(small_dir)


def test_refuses_overwrite_without_force(tmp_path: Path, small_dir: Path) -> None:
    out = tmp_path / "d"
    shutil.copytree(small_dir, out)
    before = snapshot(out)
    res = run(*GEN, "--out", str(out))
    assert res.exit_code == 0 and "already holds this data set" in res.output
    res = run(*GEN, "--out", str(out), "--seed", "8")
    assert res.exit_code == 1 and "--force" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert snapshot(out) == before
    res = run(*GEN, "--out", str(out), "--seed", "8", "--force", "--groups", "plus")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "manifest.json").read_text())["params"]["seed"] == 8


def test_interrupted_gen_leaves_old_data_intact(
    tmp_path: Path, small_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "d"
    shutil.copytree(small_dir, out)
    before = snapshot(out)
    calls = []

    def failing(table: pa.Table, path: Path) -> None:
        calls.append(path)
        if len(calls) == 3:
            path.write_bytes(b"PAR1 half a file")
            raise KeyboardInterrupt
        write_table(table, path)

    monkeypatch.setattr(dataset_mod, "write_table", failing)
    res = run(*GEN, "--out", str(out), "--seed", "9", "--force")
    assert res.exit_code != 0 and len(calls) == 3
    assert snapshot(out) == before  # no temporaries left, nothing replaced


@pytest.mark.parametrize(
    "args",
    [
        ["--groups", "plus,times"],
        ["--number-range", "9-2"],
        ["--numbers-per-puzzle", "x"],
        ["--number-range", "1-4", "--numbers-per-puzzle", "3-3"],
        ["--template", "fancy"],
    ],
)
def test_bad_options_one_line_and_nothing_written(tmp_path: Path, args: list[str]) -> None:
    res = run("gen", "--out", str(tmp_path / "d"), *args)
    assert res.exit_code == 2
    assert "Error:" in res.output
    assert not (tmp_path / "d").exists()


def test_an_unknown_group_names_the_valid_ones_in_every_command(tmp_path: Path) -> None:
    for args in (["gen", "--out", str(tmp_path / "d")], ["sft", str(tmp_path)]):
        res = run(*args, "--groups", "plus,times")
        assert res.exit_code == 2, res.output
        assert "--groups: unknown group 'times'; choose from plus, plus_minus" in res.output


def test_gen_defaults_are_the_generators_own() -> None:
    """Every ``gen`` option named after a GenConfig field defaults to that field's default."""
    import dataclasses

    from countdown_data.cli import gen
    from countdown_data.generate import GenConfig

    defaults = GenConfig()
    ctx = gen.make_context("gen", [])
    options = {p.name: p for p in gen.params}
    for f in dataclasses.fields(GenConfig):
        value = options[f.name].type_cast_value(ctx, options[f.name].default)
        if f.name == "groups":
            value = tuple(value.split(","))
        assert value == getattr(defaults, f.name), f.name


def test_validate_reports_corruption(tmp_path: Path, small_dir: Path) -> None:
    out = tmp_path / "d"
    shutil.copytree(small_dir, out)
    path = out / "plus_minus" / "train.parquet"
    rows = pq.read_table(path).to_pylist()
    rows[5]["target"] += 1
    rows[5]["reward_model"]["ground_truth"]["target"] += 1
    rows[7] = {**rows[8], "extra_info": {**rows[8]["extra_info"], "index": 7}}
    test_row = load_rows(out, "plus_minus", "test")[0]
    rows[9].update(
        nums=test_row["nums"],
        target=test_row["target"],
        reward_model=test_row["reward_model"],
        prompt=test_row["prompt"],
        extra_info={**test_row["extra_info"], "split": "train", "index": 9},
    )
    write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    (out / "plus" / "test.parquet").write_bytes(b"garbage")
    res = run("validate", str(out), "--workers", "1")
    assert res.exit_code == 1
    for expected in (
        "plus_minus/train.parquet: [checksum]",
        "row 5: [unsolved]",
        "row 7: [duplicate]",
        "row 9: [leak]",
        "plus/test.parquet: [corrupt]",
    ):
        assert expected in res.output, res.output


def test_validate_catches_new_op_violation(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert (
        run(
            *GEN,
            "--out",
            str(out),
            "--groups",
            "plus_minus_mul",
            "--train-size",
            "80",
            "--no-require-new-op",
        ).exit_code
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["params"]["require_new_op"] = True
    (out / "manifest.json").write_text(json.dumps(manifest))
    res = run("validate", str(out), "--workers", "1")
    assert res.exit_code == 1 and "[new-op]" in res.output and "reachable with +-" in res.output


def test_solve_command() -> None:
    res = run("solve", "3", "3", "8", "8", "--target", "24")
    assert res.exit_code == 0 and res.output.strip().endswith("= 24")
    res = run("solve", "25", "3", "7", "50", "--target", "89")
    assert res.exit_code == 1 and "no solution" in res.output
    res = run("solve", "1", "2", "--target", "3", "--ops", "+^")
    assert res.exit_code == 2


def test_sft_examples_score_full_reward(small_dir: Path, tmp_path: Path) -> None:
    for template, style in itertools.product((None, "compact", "chat"), COMPLETION_STYLES):
        examples = sft_examples(small_dir, template=template, limit=25, style=style)
        assert len(examples) == 25 * len(GROUPS)
        for ex in examples:
            response = ex["completion"]
            assert response.count("<think>") + ex["prompt"].endswith("<think>") == 1
            gt = {"target": ex["target"], "numbers": ex["nums"]}
            assert compute_score(f"countdown_{ex['group']}", response, gt) == 1.0
            if style == "compact":
                assert " " not in response and "</think><answer>" in response
    compact = sft_examples(load_rows(small_dir, "plus", "test"), template="compact", limit=3)
    assert compact[0]["prompt"].startswith("nums ") and len(compact) == 3
    res = run("sft", str(small_dir), "--out", str(tmp_path / "s.jsonl"), "--limit", "5")
    assert res.exit_code == 0, res.output
    assert len((tmp_path / "s.jsonl").read_text().splitlines()) == 5 * len(GROUPS)
    with pytest.raises(ValueError, match="style 'terse': use one of worked, compact"):
        sft_examples(small_dir, style="terse")


def test_a_compact_sum_copies_the_prompt_order() -> None:
    """A pure sum is written in the prompt's number order (what a small model can copy); any
    other equation is the solution without spaces."""
    assert compact_completion("7 + 3 + 5", [3, 5, 7]) == "<think></think><answer>3+5+7</answer>"
    assert compact_completion("(7 - 3) * 5", [3, 5, 7]).endswith("<answer>(7-3)*5</answer>")
    assert compact_completion("7 + 3", [3, 7], open_think=False) == "</think><answer>3+7</answer>"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_validate_reports_damaged_data_pages_with_the_other_violations(
    tmp_path: Path, small_dir: Path, workers: str
) -> None:
    """Pages overwritten under an intact footer: a [corrupt] violation beside the checksum one,
    not a ZSTD traceback that hides it."""
    out = tmp_path / "d"
    shutil.copytree(small_dir, out)
    path = out / "plus" / "train.parquet"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle - 1000 : middle + 1000] = bytes(2000)
    path.write_bytes(bytes(data))
    res = run("validate", str(out), "--workers", workers)
    assert res.exit_code == 1, res.output
    assert "plus/train.parquet: [checksum]" in res.output
    assert "plus/train.parquet: [corrupt]" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda m: [], "not an object"),
        (lambda m: {k: v for k, v in m.items() if k != "params"}, "params is missing"),
        (lambda m: {**m, "counts": {**m["counts"], "plus": {}}}, "counts.plus.train"),
        (
            lambda m: {**m, "params": {**m["params"], "numbers_per_puzzle": "3-4"}},
            "params.numbers_per_puzzle",
        ),
    ],
)
def test_validate_reports_a_malformed_manifest(
    tmp_path: Path, small_dir: Path, damage, says: str
) -> None:
    out = tmp_path / "d"
    shutil.copytree(small_dir, out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(damage(manifest)))
    res = run("validate", str(out), "--workers", "1")
    assert res.exit_code == 1
    assert "manifest.json: [manifest]" in res.output and says in res.output, res.output


def test_gen_into_an_unwritable_place_fails_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    res = run("gen", "--out", str(blocker / "data"))  # the full default set: would take ~20 s
    assert res.exit_code == 1
    assert "cannot write to" in res.output and "--out" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_rerun_removes_what_a_killed_gen_left_and_prints_only_renamed_files(
    tmp_path: Path,
) -> None:
    out = tmp_path / "d"
    (out / "plus").mkdir(parents=True)
    stale = [out / "plus" / ".train.parquet.k9x_1.tmp", out / ".manifest.json.abc.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    res = run(*GEN, "--out", str(out), "--groups", "plus")
    assert res.exit_code == 0, res.output
    assert not any(p.exists() for p in stale)
    assert not list(out.rglob("*.tmp"))
    printed = [line.split(":")[0] for line in res.output.splitlines() if "rows, " in line]
    assert printed and all(Path(p).is_file() for p in printed)


def test_files_follow_the_umask_like_any_open(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        res = run(*GEN, "--out", str(tmp_path / "d"), "--groups", "plus")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for path in [tmp_path / "d" / "manifest.json", *(tmp_path / "d").rglob("*.parquet")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_profile_small_sets_the_testbed_defaults_and_options_still_win(tmp_path: Path) -> None:
    out = tmp_path / "small"
    args = ["gen", "--profile", "small", "--test-size", "50", "--train-size", "100",
            "--groups", "plus,plus_minus_mul_div", "--workers", "1", "--out", str(out)]  # fmt: skip
    res = run(*args)
    assert res.exit_code == 0, res.output
    params = json.loads((out / "manifest.json").read_text())["params"]
    assert params["numbers_per_puzzle"] == [3, 3] and params["number_range"] == [1, 20]
    assert params["target_range"] == [1, 100] and params["template"] == "compact"
    assert params["sort_numbers"] is True and params["require_new_op"] is True
    assert (params["train_size"], params["test_size"]) == (100, 50)
    for g in ("plus", "plus_minus_mul_div"):
        for row in load_rows(out, g, "test"):
            assert row["nums"] == sorted(row["nums"])
            assert row["prompt"][0]["content"].startswith(
                "nums " + " ".join(map(str, row["nums"])) + " target"
            )
    assert run("validate", str(out)).exit_code == 0
    quick = run("gen", "--profile", "small", "--quick", "--groups", "plus", "--out",
                str(tmp_path / "q"))  # fmt: skip
    assert quick.exit_code == 0, quick.output
    sizes = json.loads((tmp_path / "q" / "manifest.json").read_text())["params"]
    assert (sizes["train_size"], sizes["test_size"]) == (1000, 400)  # the profile's sizes win
