"""The TRL side of test_reward_in_trl.py, run by the overlay environment's Python (trl beside the
workspace's packages, never among them): ``python trl_client.py OUT``.

Builds a tiny Qwen2 model directory, runs the countdown-reward README's TRL snippet on it for two
GRPO steps on CPU, then again on a dataset with a ``score`` column, and writes what TRL logged to
``OUT/result.json`` (TRL itself writes each step's completions to ``OUT/grpo/completions/``).

The vocabulary is a few digits plus whole answers as single tokens, so that even a random
model's samples hold right, wrong and missing answers, and made-up ``Assistant:`` turns.
"""

from __future__ import annotations

import json
import re
import sys
from importlib.metadata import version
from pathlib import Path

from datasets import Dataset
from tokenizers import AddedToken
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer
from trl import GRPOConfig

README = Path(__file__).resolve().parents[1] / "packages" / "countdown-reward" / "README.md"
ANSWERS = (
    "<answer>1+2</answer>",
    "<answer>2-1</answer>",
    "<answer>2*1</answer>",
    "<answer>2/1</answer>",
)
WORDS = (*ANSWERS, "<answer>", "</answer>", "Assistant:", "hmm")
PAD, EOS = "<|endoftext|>", "<|im_end|>"
PUZZLES = (((1, 2), 3), ((1, 2), 1), ((2, 1), 2), ((2, 1), 3))
"""(numbers, target); each prompt is ``question(numbers, target)``."""
STEPS, GENERATIONS = 2, 4
PROMPTS_PER_STEP = 2


def question(numbers: tuple[int, ...], target: int) -> str:
    return f"{' '.join(map(str, numbers))} = {target}"


def model_dir(path: Path) -> str:
    """A Qwen2 model directory as a user would name it: AutoTokenizer loads it as Qwen2Tokenizer,
    so its vocabulary is byte-level symbols (``Ġ`` is a space) plus added tokens."""
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, "1", "2", "3", "=", "Ġ"])}
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
    return str(path)


def dataset(**extra_columns: list) -> Dataset:
    """Conversational prompts and the columns countdown-data's parquet has (target, nums)."""
    return Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": question(n, t)}] for n, t in PUZZLES],
            "target": [t for _, t in PUZZLES],
            "nums": [list(n) for n, _ in PUZZLES],
            **extra_columns,
        }
    )


def args(out: Path) -> GRPOConfig:
    return GRPOConfig(
        output_dir=str(out),
        use_cpu=True,
        max_steps=STEPS,
        per_device_train_batch_size=PROMPTS_PER_STEP * GENERATIONS,
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


def readme_example() -> str:
    match = re.search(r"<!-- trl-example -->\n```python\n(.+?)```", README.read_text(), re.DOTALL)
    if match is None:
        raise SystemExit(f"{README} has no TRL example")
    return match.group(1)


def main(out: Path) -> None:
    model = model_dir(out / "model")
    trained = {"model": model, "args": args(out / "grpo"), "dataset": dataset()}
    exec(readme_example(), trained)  # builds the trainer and trains, as a user would

    refused = {
        "model": model,
        "args": args(out / "grpo-score-column"),
        "dataset": dataset(score=[0.5] * len(PUZZLES)),
    }
    try:
        exec(readme_example(), refused)
        error = None
    except Exception as exc:  # recorded for the test to judge, whatever it is
        error = f"{type(exc).__name__}: {exc}"
    result = {
        "versions": {p: version(p) for p in ("trl", "transformers", "torch", "accelerate")},
        "puzzles": {question(n, t): {"numbers": list(n), "target": t} for n, t in PUZZLES},
        "steps": STEPS,
        "completions_per_step": PROMPTS_PER_STEP * GENERATIONS,
        "log_history": trained["trainer"].state.log_history,
        "score_column": {"error": error, "global_step": refused["trainer"].state.global_step},
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
