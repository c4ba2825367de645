"""The tiny preset's tokenizer and model build (cl_trainer.local.tiny)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from cl_trainer.local import tiny
from countdown_data import GenConfig, write_dataset


def write_plus_data(root: Path, n_train: int = 64, n_test: int = 8) -> Path:
    """A ``plus`` group from countdown-data's own writer, ``compact`` prompts."""
    cfg = GenConfig(
        train_size=n_train,
        test_size=n_test,
        groups=("plus",),
        numbers_per_puzzle=(3, 3),
        template="compact",
    )
    write_dataset(cfg, root)
    return root


def test_tokenizer_round_trip_and_chat_template(tmp_path: Path) -> None:
    tok = tiny.build_tokenizer()
    tok.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    loaded = AutoTokenizer.from_pretrained(tmp_path)  # what veRL does: the qwen2 tokenizer class
    text = "nums 12 7 target 19 ops +-*/\n<think>7+12</think><answer>(12+7)*1</answer>"
    ids = loaded.encode(text, add_special_tokens=False)
    assert ids == tok.encode(text, add_special_tokens=False)
    assert loaded.decode(ids) == text
    answer = [tok.convert_tokens_to_ids(t) for t in tiny.TAG_TOKENS]
    assert set(answer) <= set(ids), "tags are single tokens"
    assert loaded.decode([*ids, loaded.eos_token_id], skip_special_tokens=True) == text
    prompt = [{"role": "user", "content": "nums 1 2 target 3 ops +\n"}]
    rendered = loaded.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    assert rendered == "nums 1 2 target 3 ops +\n" + tiny.BOS_TOKEN
    assert loaded.pad_token_id != loaded.eos_token_id


def test_ensure_tiny_model_is_idempotent_and_loadable(tmp_path: Path, monkeypatch) -> None:
    data = write_plus_data(tmp_path / "data")
    out = tmp_path / "model"
    assert tiny.ensure_tiny_model(out, data, sft_steps=3, eval_samples=4) == out
    info = json.loads((out / tiny.MARKER).read_text())
    assert info["sft_steps"] == 3 and set(info["post_sft_greedy_accuracy"]) == {"plus"}
    assert set(info["post_sft_sampled_accuracy"]) == {"plus"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.")], (
        "temp dir left behind"
    )

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tok)
    assert (out / "model.safetensors").is_file()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("a complete model dir must not be rebuilt")

    monkeypatch.setattr(tiny, "build_model", no_rebuild)
    assert tiny.ensure_tiny_model(out, data) == out


def test_ensure_tiny_model_without_data_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="countdown-data gen"):
        tiny.ensure_tiny_model(tmp_path / "model", tmp_path / "nodata")
    assert not (tmp_path / "model").exists()


def test_sft_pairs_match_the_rl_prompt_tokens(tmp_path: Path) -> None:
    """The SFT prompt is token for token what RL's chat template renders; a sum is copied in the
    prompt's number order, without spaces or worked steps."""
    import pyarrow.parquet as pq

    data = write_plus_data(tmp_path / "data")
    tok = tiny.build_tokenizer()
    row = pq.read_table(data / "plus" / "train.parquet").to_pylist()[0]
    prompt, completion = tiny.sft_pairs(data, "plus")[0]
    ids, start = tiny._encode_pair(tok, prompt, completion)
    rendered = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    assert ids[:start] == tok.encode(rendered, add_special_tokens=False)
    numbers = row["reward_model"]["ground_truth"]["numbers"]
    assert completion == f"<think></think><answer>{'+'.join(map(str, numbers))}</answer>"


def test_plus_demonstrations_are_noisy_by_design(tmp_path: Path) -> None:
    """Every second plus demonstration stops one number short (the error RL then corrects); the
    others are the full sum, so the warm start is neither perfect nor hopeless."""
    import pyarrow.parquet as pq

    data = write_plus_data(tmp_path / "data")
    rows = pq.read_table(data / "plus" / "train.parquet").to_pylist()
    every = tiny.WARM_STARTS["tiny"].plus_early_stop_every
    pairs = tiny.sft_pairs(data, "plus", every)
    short = 0
    for row, (_, completion) in zip(rows, pairs, strict=True):
        numbers = list(map(str, row["nums"]))
        answer = completion.split("<answer>")[1].split("</answer>")[0]
        assert answer in ("+".join(numbers), "+".join(numbers[:-1]))
        short += answer == "+".join(numbers[:-1])
    assert short == len(rows) // every


def test_a_damaged_cached_model_is_rebuilt(tmp_path: Path) -> None:
    data = write_plus_data(tmp_path / "data")
    out = tmp_path / "model"
    tiny.ensure_tiny_model(out, data, sft_steps=2, eval_samples=2)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # torn copy
    assert not tiny.is_built(out)
    tiny.ensure_tiny_model(out, data, sft_steps=2, eval_samples=2)
    assert tiny.is_built(out)
    AutoModelForCausalLM.from_pretrained(out)


def test_testbed_warm_start_is_a_faithful_demonstrator(tmp_path: Path) -> None:
    """``testbed`` demonstrates every plus puzzle with its full sum: no planted mistakes."""
    import pyarrow.parquet as pq

    data = write_plus_data(tmp_path / "data")
    rows = pq.read_table(data / "plus" / "train.parquet").to_pylist()
    warm = tiny.WARM_STARTS["testbed"]
    assert warm.plus_early_stop_every is None
    pairs = tiny.sft_pairs(data, "plus", warm.plus_early_stop_every)
    for row, (_, completion) in zip(rows, pairs, strict=True):
        assert completion == f"<think></think><answer>{'+'.join(map(str, row['nums']))}</answer>"
