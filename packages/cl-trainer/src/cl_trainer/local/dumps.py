"""The local loop's sample dumps, in veRL's format and through veRL's writer.

veRL writes ``<dir>/<step>.jsonl`` for validation (``trainer.validation_data_dir``) and training
(``trainer.rollout_data_dir``) samples alike: the prompt and response decoded without special
tokens, the ground truth, the reward, the step and extra fields; the v1 trainer's training dump
has ``uid`` as its only extra field (``PPOTrainer._log_rollout_data``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from cl_trainer import private_api
from cl_trainer.local.data import Example


def write(
    tokenizer: Any,
    examples: list[Example],
    batch: dict[str, Any],
    scores: list[float],
    extras: dict[str, list[Any]],
    dump_dir: str,
    step: int,
) -> None:
    """One step's samples (``batch``: the rollout's ``responses`` and ``response_mask``)."""
    decode = partial(tokenizer.decode, skip_special_tokens=True)
    lengths = batch["response_mask"].sum(-1).tolist()
    responses: torch.Tensor = batch["responses"]
    private_api.write_generations(
        inputs=[decode(ex.prompt_ids) for ex in examples],
        outputs=[decode(r[: int(m)]) for r, m in zip(responses, lengths, strict=True)],
        gts=[ex.reward_model["ground_truth"] for ex in examples],
        scores=scores,
        reward_extra_infos_dict=extras,
        dump_path=dump_dir,
        global_steps=step,
    )
