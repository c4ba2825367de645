"""TRL's GRPOTrainer trains with the reward exactly as the package README shows it, and the
rewards TRL logs are what ``verify()`` says of the completions TRL generated.

The model and tokenizer are built here (no hub): a one-layer Qwen2 whose vocabulary is a few
digits plus whole answers as single tokens, so that even a random model's samples hold right,
wrong and missing answers, and a made-up ``Assistant:`` turn.
"""

import re
from pathlib import Path

import pandas as pd
import pytest
from datasets import Dataset
from tokenizers import AddedToken
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer
from trl import GRPOConfig

from countdown_reward import verify

README = Path(__file__).resolve().parents[1] / "packages" / "countdown-reward" / "README.md"
ANSWERS = [
    "<answer>1+2</answer>",
    "<answer>2-1</answer>",
    "<answer>2*1</answer>",
    "<answer>2/1</answer>",
]
WORDS = [*ANSWERS, "<answer>", "</answer>", "Assistant:", "hmm"]
PAD, EOS = "<|endoftext|>", "<|im_end|>"
PUZZLES = [([1, 2], 3), ([1, 2], 1), ([2, 1], 2), ([2, 1], 3)]
STEPS, GENERATIONS = 2, 4


def _model_dir(path: Path) -> Path:
    """A Qwen2 model directory as a user would name it: AutoTokenizer loads it as Qwen2Tokenizer."""
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, "1", "2", "3", "=", "Ġ"])}  # Ġ: a space
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=PAD, eos_token=EOS, pad_token=PAD)
    tokenizer.add_tokens([AddedToken(w, special=False, normalized=False) for w in WORDS])
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %} {% endif %}"
    )
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _readme_example() -> str:
    match = re.search(r"<!-- trl-example -->\n```python\n(.+?)```", README.read_text(), re.DOTALL)
    assert match, "the countdown-reward README has no TRL example"
    return match.group(1)


def _question(numbers: list[int], target: int) -> str:
    return f"{' '.join(map(str, numbers))} = {target}"


def _verified_score(text: str, numbers: list[int], target: int) -> float:
    verdict = verify(text, target, numbers)
    return 1.0 if verdict.correct else 0.1 if verdict.has_answer else 0.0


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(_model_dir(tmp_path_factory.mktemp("model")))


def _dataset(**extra_columns: list) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": _question(n, t)}] for n, t in PUZZLES],
            "target": [t for _, t in PUZZLES],
            "nums": [n for n, _ in PUZZLES],
            **extra_columns,
        }
    )


def _args(out: Path) -> GRPOConfig:
    return GRPOConfig(
        output_dir=str(out),
        use_cpu=True,
        max_steps=STEPS,
        per_device_train_batch_size=2 * GENERATIONS,  # two prompts per step
        num_generations=GENERATIONS,
        max_completion_length=4,
        learning_rate=1e-3,
        logging_steps=1,
        log_completions=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )


def test_grpo_trainer_logs_the_rewards_verify_gives_its_completions(
    model: str, tmp_path: Path
) -> None:
    namespace = {"model": model, "args": _args(tmp_path), "dataset": _dataset()}
    exec(_readme_example(), namespace)  # builds the trainer and trains, as a user would

    puzzle_of = {_question(nums, t): (nums, t) for nums, t in PUZZLES}
    history = namespace["trainer"].state.log_history
    metrics = [
        e["rewards/countdown_reward/mean"] for e in history if "rewards/countdown_reward/mean" in e
    ]
    assert len(metrics) == STEPS
    seen: set[float] = set()
    for step, logged in enumerate(metrics, start=1):
        table = pd.read_parquet(tmp_path / "completions" / f"completions_{step:05d}.parquet")
        assert len(table) == 2 * GENERATIONS
        expected = []
        for prompt, completion in zip(table["prompt"], table["completion"], strict=True):
            (message,) = completion
            expected.append(_verified_score(message["content"], *puzzle_of[prompt[0]["content"]]))
        assert table["countdown_reward"].tolist() == pytest.approx(expected)  # float32 in TRL
        assert logged == pytest.approx(sum(expected) / len(expected))
        seen.update(expected)
    assert len(seen) >= 2, f"every completion scored {seen}: the comparison would prove nothing"


def test_a_score_column_stops_grpo_at_the_first_step(model: str, tmp_path: Path) -> None:
    namespace = {
        "model": model,
        "args": _args(tmp_path),
        "dataset": _dataset(score=[0.5] * len(PUZZLES)),
    }
    with pytest.raises(ValueError, match=r"column.*'score'.*rename or remove"):
        exec(_readme_example(), namespace)
    assert namespace["trainer"].state.global_step == 0
