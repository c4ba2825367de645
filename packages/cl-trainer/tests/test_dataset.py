"""veRL's own RLHFDataset reads countdown-data's parquet, and every prompt fits the preset."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl.utils.dataset.rl_dataset import RLHFDataset

from cl_trainer.config import preset_value


@pytest.mark.parametrize("size", ["0.5b", "1.5b"])
def test_rlhf_dataset_loads_every_group_within_max_prompt_length(
    size: str, data_dir: Path, hf_model: Path, tmp_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(hf_model)
    limit = preset_value(size, "max_prompt_length")
    files = [str(data_dir / g / "test.parquet") for g in ("plus", "plus_minus_mul_div")]
    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": limit,
            "truncation": "error",
            "filter_overlong_prompts": False,
            "return_raw_chat": True,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    dataset = RLHFDataset(data_files=files, tokenizer=tokenizer, config=config)
    assert len(dataset) == 16
    sources = set()
    for i in range(len(dataset)):
        item = dataset[i]
        sources.add(item["data_source"])
        ids = tokenizer.apply_chat_template(
            item["raw_prompt"], add_generation_prompt=True, tokenize=True
        )
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert 50 < len(ids) <= limit
        assert item["reward_model"]["ground_truth"]["target"] > 0
    assert sources == {"countdown_plus", "countdown_plus_minus_mul_div"}
