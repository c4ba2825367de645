"""The ``tiny`` preset's base model: a character-level Qwen2 built and warm-started on this machine.

A newcomer without GPUs or downloads must still see RL learn, so the model is small enough to train
on two CPU cores and is first taught the answer format by supervised training on solver solutions:
RL then starts from a non-zero reward instead of from noise.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from cl_rundir.atomic import building_dir
from cl_rundir.layout import WARM_START_RECORD
from cl_trainer.errors import UsageError
from cl_trainer.local.config import LocalConfigError, cpu_threads

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
TAG_TOKENS: tuple[str, ...] = ("<think>", "</think>", "<answer>", "</answer>")
"""Ordinary (non-special) tokens: ``decode(skip_special_tokens=True)`` keeps them for the reward."""

CHAT_TEMPLATE = (
    "{% for message in messages %}{% if not loop.first %}\n{% endif %}"
    "{{ message['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}" + BOS_TOKEN + "{% endif %}"
)
"""Only the messages' text and one token that opens the answer: prompts stay a few dozen tokens."""

MARKER = WARM_START_RECORD
"""Written last into a finished model directory; its presence means the build completed."""
COMPLETION_STYLE = "compact"
"""The answer text the warm start teaches (``countdown_data.sft``); recorded in ``MARKER`` so
cl-eval's soft accuracy scores the same text."""


@dataclass(frozen=True)
class WarmStart:
    """How a locally built base model is taught before RL: supervised steps on solver solutions,
    the mix of groups in a batch, and whether the ``plus`` demonstrations are noisy."""

    sft_steps: int
    group_weights: dict[str, float]
    plus_early_stop_every: int | None = None
    """Every N-th ``plus`` demonstration stops one number short; None: a faithful demonstrator."""


WARM_STARTS: dict[str, WarmStart] = {
    # The README demo (``gen --quick --template compact`` data): mostly ``plus``, whose answer is
    # a copy of the numbers (the copying circuit forms only when most of each batch asks for it;
    # the other groups still teach the format). Every second ``plus`` demonstration stops one
    # number early: the warm start hesitates between finishing the sum and stopping short, one
    # shared decision GRPO's outcome reward corrects within a stage. A faithful demonstrator
    # leaves only scattered copy slips, which a model this small sharpens away too slowly for a
    # demo of minutes.
    "tiny": WarmStart(
        220,
        {"plus": 0.8, "plus_minus": 0.07, "plus_minus_mul": 0.07, "plus_minus_mul_div": 0.06},
        plus_early_stop_every=2,
    ),
    # The CPU testbed (``gen --profile small`` data, numbers shown sorted): a faithful
    # demonstrator of every group, stopped early and weighted away from ``plus``, so every group
    # starts well below what RL reaches within its own stage.
    "testbed": WarmStart(
        400, {"plus": 0.1, "plus_minus": 0.5, "plus_minus_mul": 0.2, "plus_minus_mul_div": 0.2}
    ),
}
"""Per preset that builds its model here."""

MODEL_SHAPE: dict[str, int] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def build_tokenizer() -> Any:
    """Qwen2's own tokenizer class with a char-level vocabulary: the 256 byte-level symbols (every
    printable ASCII char among them), no merges, the answer tags and the chat specials.

    Using ``Qwen2Tokenizer`` itself matters: ``AutoTokenizer`` (and so veRL) loads any model of
    type ``qwen2`` with it and rebuilds its byte-level pipeline, which would garble a vocabulary in
    another encoding.
    """
    from tokenizers import AddedToken
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + TAG_TOKENS + tuple(symbols))}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
    )
    tokenizer.add_tokens([AddedToken(BOS_TOKEN, special=True)], special_tokens=True)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: Any, seed: int) -> Any:
    """A randomly initialised Qwen2 with tied embeddings sized to the tokenizer."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        rope_theta=10000.0,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS_TOKEN),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SHAPE,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def _read_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    rows = pq.read_table(path).to_pylist()
    return rows if limit is None else rows[:limit]


def sft_pairs(
    data_dir: Path, group: str, early_stop_every: int | None = None
) -> list[tuple[str, str]]:
    """(prompt text, completion) pairs from ``countdown_data.sft`` for a group's train split.

    Prompts are the stored ones (what RL will see, whatever template ``gen`` used); completions
    are the ``compact`` style (the answer without the worked steps): a model this small cannot
    learn multi-digit arithmetic in a minute, and the reward only reads the answer.
    """
    from countdown_data.sft import sft_examples

    pairs = []
    examples = sft_examples(data_dir, split="train", groups=[group], style=COMPLETION_STYLE)
    for i, ex in enumerate(examples):
        completion = ex["completion"]
        if group == "plus" and early_stop_every and (i + 1) % early_stop_every == 0:
            head, rest = completion.split("<answer>", 1)
            answer, tail = rest.split("</answer>", 1)
            completion = f"{head}<answer>{answer.rsplit('+', 1)[0]}</answer>{tail}"
        pairs.append((ex["prompt"], completion))
    return pairs


def _encode_pair(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], int]:
    """Token ids of prompt + BOS + completion + EOS, and where the completion starts (the loss
    mask); ``prompt + BOS`` is what ``CHAT_TEMPLATE`` renders for a one-message prompt."""
    prompt_ids = tokenizer.encode(prompt + BOS_TOKEN, add_special_tokens=False)
    completion_ids = tokenizer.encode(completion, add_special_tokens=False)
    return prompt_ids + completion_ids + [tokenizer.eos_token_id], len(prompt_ids)


def supervised_warm_start(
    model: Any,
    tokenizer: Any,
    pairs_by_group: dict[str, list[tuple[str, str]]],
    group_weights: dict[str, float],
    steps: int,
    seed: int,
    batch_size: int = 32,
    lr: float = 2e-3,
) -> list[float]:
    """Teacher-forced cross-entropy on completion tokens; returns the loss per step."""
    rng = random.Random(seed)
    encoded = {
        g: [_encode_pair(tokenizer, p, c) for p, c in pairs]
        for g, pairs in pairs_by_group.items()
        if pairs
    }
    groups = list(encoded)
    weights = [group_weights.get(g, 0.1) for g in groups]
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / max(steps, 1)))
    )
    model.train()
    losses = []
    for _ in range(steps):
        batch = [rng.choice(encoded[g]) for g in rng.choices(groups, weights, k=batch_size)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (ids, start) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, start : len(ids)] = torch.tensor(ids[start:])
            attention[i, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def greedy_accuracy(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    max_new_tokens: int,
    batch_size: int = 64,
    temperature: float = 0.0,
) -> float:
    """Fraction of ``rows`` the model solves, judged by ``countdown_reward``: greedily, or with
    one sample at ``temperature`` > 0 (how the tiny preset validates)."""
    from countdown_reward import compute_score_with_acc

    if not rows:
        return 0.0
    correct = 0.0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        texts = [
            tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
            for r in chunk
        ]
        enc = tokenizer(
            texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt"
        )
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            **(
                {"do_sample": True, "temperature": temperature, "top_k": 0}
                if temperature > 0
                else {"do_sample": False}
            ),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        responses = tokenizer.batch_decode(
            out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for row, text in zip(chunk, responses, strict=True):
            gt = row["reward_model"]["ground_truth"]
            correct += compute_score_with_acc(row["data_source"], text, gt)["acc"]
    return correct / len(rows)


def is_built(model_dir: Path) -> bool:
    """Built to the end (the marker is written last) and its weights still read back whole."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not (model_dir / MARKER).is_file():
        return False
    try:
        load_file(model_dir / "model.safetensors")
    except (OSError, RuntimeError, SafetensorError):
        return False
    return True


def ensure_tiny_model(
    out_dir: Path,
    data_dir: Path,
    seed: int = 0,
    *,
    warm_start: WarmStart = WARM_STARTS["tiny"],
    sft_steps: int | None = None,
    eval_samples: int = 64,
    max_new_tokens: int = 48,
) -> Path:
    """Return ``out_dir`` holding the warm-started tiny model, building it first if needed.

    Idempotent: a directory with the completion marker (and weights that read back) is returned
    untouched. The build happens in a sibling temp dir renamed into place, so an interrupted build
    never leaves a half model. ``tiny_model.json`` records the warm start, its SFT loss and the
    post-SFT accuracy per group. ``sft_steps`` overrides the warm start's (tests). Torch runs on
    the local backend's threads (``cl_trainer.local.config.cpu_threads``), restored afterwards.
    """
    from transformers.utils import logging

    from countdown_data.dataset import split_path
    from countdown_data.groups import GROUPS

    logging.disable_progress_bar()  # "Writing model shards": a bar for one small file

    out_dir = Path(out_dir)
    data_dir = Path(data_dir)
    if is_built(out_dir):
        return out_dir
    present = [g for g in GROUPS if split_path(data_dir, g, "train").is_file()]
    if not present:
        raise FileNotFoundError(
            f"no countdown data in {data_dir}; run `countdown-data gen --quick --template compact`"
        )
    try:
        build_threads = cpu_threads()
    except LocalConfigError as exc:
        raise UsageError(str(exc)) from None
    threads = torch.get_num_threads()
    torch.set_num_threads(build_threads)
    try:
        started = time.monotonic()
        tokenizer = build_tokenizer()
        model = build_model(tokenizer, seed)
        steps = warm_start.sft_steps if sft_steps is None else sft_steps
        pairs = {g: sft_pairs(data_dir, g, warm_start.plus_early_stop_every) for g in present}
        losses = supervised_warm_start(
            model, tokenizer, pairs, warm_start.group_weights, steps=steps, seed=seed
        )
        sft_seconds = time.monotonic() - started
        accuracy, sampled = {}, {}
        for g in present:
            test = data_dir / g / "test.parquet"
            if test.is_file():
                rows = _read_rows(test, eval_samples)
                accuracy[g] = greedy_accuracy(model, tokenizer, rows, max_new_tokens)
                sampled[g] = greedy_accuracy(
                    model, tokenizer, rows, max_new_tokens, temperature=1.0
                )
    finally:
        torch.set_num_threads(threads)

    with building_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = {
            "seed": seed,
            "data_dir": str(data_dir),
            "sft_steps": steps,
            "completion_style": COMPLETION_STYLE,
            "sft_group_weights": warm_start.group_weights,
            "plus_early_stop_every": warm_start.plus_early_stop_every,
            "sft_seconds": round(sft_seconds, 2),
            "torch_threads": build_threads,
            "sft_final_loss": round(losses[-1], 4) if losses else None,
            "post_sft_greedy_accuracy": accuracy,
            "post_sft_sampled_accuracy": sampled,
            "eval_samples_per_group": eval_samples,
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return out_dir
