"""Parquet prompts tokenised as veRL's ``RLHFDataset`` + agent loop do; a resumable sampler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from cl_trainer.local.config import LocalConfigError, as_list


@dataclass
class Example:
    prompt_ids: list[int]
    data_source: str
    reward_model: dict[str, Any]
    extra_info: dict[str, Any] = field(default_factory=dict)


def data_seed(data_cfg: DictConfig) -> int:
    """``data.seed``; veRL leaves an unset seed random, the local backend pins it to 0 so the
    validation subset and the prompt order are the same in every stage and on resume."""
    seed = data_cfg.get("seed")
    return 0 if seed is None else int(seed)


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]], data_cfg: DictConfig) -> list[int]:
    """``apply_chat_template(messages, add_generation_prompt=True, tokenize=True)`` (veRL's)."""
    from verl.utils.tokenizer import normalize_token_ids

    raw = data_cfg.get("apply_chat_template_kwargs")
    kwargs = dict(OmegaConf.to_container(raw, resolve=True)) if raw else {}
    for key in ("tokenize", "return_dict", "return_tensors"):
        kwargs.pop(key, None)
    out = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, **kwargs
    )
    return normalize_token_ids(out)


def _fit(ids: list[int], max_len: int, truncation: str, where: str) -> list[int]:
    if len(ids) <= max_len:
        return ids
    if truncation == "left":
        return ids[-max_len:]
    if truncation == "right":
        return ids[:max_len]
    if truncation == "middle":
        half = max_len // 2
        return ids[:half] + ids[len(ids) - (max_len - half) :]
    raise LocalConfigError(
        f"{where}: prompt is {len(ids)} tokens > data.max_prompt_length={max_len}; raise "
        "data.max_prompt_length or set data.filter_overlong_prompts=True"
    )


def subsample(total: int, max_samples: int, seed: int, shuffle: bool = True) -> np.ndarray | None:
    """The rows veRL's ``data.{train,val}_max_samples`` keeps of ``total`` (``RLHFDataset``): a
    seeded random choice, or the first ones without shuffling; None when it keeps them all."""
    if not 0 < max_samples < total:
        return None
    if shuffle:
        return np.random.default_rng(seed).choice(total, max_samples, replace=False)
    return np.arange(max_samples)


def load_examples(
    files: Any, tokenizer: Any, data_cfg: DictConfig, max_samples: int
) -> list[Example]:
    """All rows of ``files`` (concatenated), subsampled like veRL's ``max_samples``."""
    rows: list[dict[str, Any]] = []
    for path in as_list(files):
        rows.extend(pq.read_table(path).to_pylist())
    keep = subsample(len(rows), max_samples, data_seed(data_cfg), data_cfg.get("shuffle", True))
    if keep is not None:
        rows = [rows[i] for i in keep.tolist()]
    key = data_cfg.get("prompt_key", "prompt")
    max_len = int(data_cfg.max_prompt_length)
    examples = []
    for i, row in enumerate(rows):
        ids = prompt_ids(tokenizer, list(row[key]), data_cfg)
        if len(ids) > max_len and data_cfg.get("filter_overlong_prompts", False):
            continue
        ids = _fit(ids, max_len, str(data_cfg.get("truncation", "error")), f"row {i} of {files}")
        examples.append(
            Example(ids, row["data_source"], row["reward_model"], row.get("extra_info") or {})
        )
    if not examples:
        raise LocalConfigError(f"no usable prompts in {files}")
    return examples


@dataclass
class Sampler:
    """Shuffled, drop-last batches per epoch; ``(epoch, batch)`` is the whole resumable state."""

    size: int
    batch_size: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    batch: int = 0

    def __len__(self) -> int:
        return self.size // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def next_batch(self) -> list[int]:
        """Indices of the next batch, advancing into the next epoch when this one is used up."""
        if self.batch >= len(self):
            self.epoch, self.batch = self.epoch + 1, 0
        start = self.batch * self.batch_size
        self.batch += 1
        return self.order(self.epoch)[start : start + self.batch_size].tolist()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
