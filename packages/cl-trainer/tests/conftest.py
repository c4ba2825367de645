"""Shared fixtures: a small real Countdown data set and a tiny HF model directory (no downloads)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

FAKE_VERL = Path(__file__).parent / "fake_verl.py"


def make_hf_model(path: Path, texts: list[str]) -> Path:
    """A loadable Qwen2 config + a BPE tokenizer trained on ``texts``; the weights are stand-ins."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Words whole, digits one by one, as Qwen2's tokenizer does: a fair prompt-length estimate.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    specials = ["<pad>", "<eos>", "<unk>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=2000, special_tokens=specials))
    words = tok.get_vocab()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(path)
    Qwen2Config(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        architectures=["Qwen2ForCausalLM"],
    ).save_pretrained(path)
    (path / "model.safetensors").write_bytes(b"base weights" * 100)
    return path


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real countdown-data set (40 train / 8 test puzzles per group, ``base`` prompts)."""
    from countdown_data import GenConfig, write_dataset

    root = tmp_path_factory.mktemp("data")
    write_dataset(GenConfig(train_size=40, test_size=8), root)
    return root


class Recorder:
    """An engine reporter that keeps what it is told (``cl_trainer.engine.Reporter``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.notes: list[str] = []
        self.finished: list[tuple[str, str]] = []

    def stage_started(self, plan, total, resumed, log) -> None:
        self.notes.append(f"{'resuming' if resumed else 'starting'} {plan.stage.name}")

    def output(self, line: str) -> None:
        self.lines.append(line)

    def stage_finished(self, record) -> None:
        self.finished.append((record.name, record.status))

    def note(self, text: str) -> None:
        self.notes.append(text)


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    import pyarrow.parquet as pq

    texts = [
        m["content"]
        for p in sorted(data_dir.glob("*/*.parquet"))
        for prompt in pq.read_table(p, columns=["prompt"]).column("prompt").to_pylist()
        for m in prompt
    ]
    return make_hf_model(tmp_path_factory.mktemp("model"), texts)


@pytest.fixture
def fake_backend() -> list[str]:
    return [sys.executable, str(FAKE_VERL)]
