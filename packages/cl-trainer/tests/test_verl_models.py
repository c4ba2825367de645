"""Each role's model loaded by veRL's own code from the config a stage emits: what the GPU workers
would do at start-up, on a real (tiny) Qwen2 checkpoint. A missing attention implementation is an
error here, not hours later on the cluster, and preflight names the fix first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import verl
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.model import get_hf_auto_model_class, load_valuehead_model
from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder
from verl.workers.config import HFModelConfig

from cl_trainer import checks
from cl_trainer.config import resolve_config
from cl_trainer.errors import TrainerError
from cl_trainer.local import tiny
from cl_trainer.stages import stage_plan
from countdown_data import load_rows

CONFIG_DIR = str(Path(verl.__file__).parent / "trainer" / "config")
CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
"""Qwen2.5's template in essence: a default system turn, every message a ChatML turn."""


@pytest.fixture(scope="module")
def qwen_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny Qwen2 checkpoint whose tokenizer carries a ChatML template, as Qwen2.5's."""
    out = tmp_path_factory.mktemp("qwen_like")
    tokenizer = tiny.build_tokenizer()
    tokenizer.chat_template = CHATML
    tiny.build_model(tokenizer, seed=0).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def stage_config(data_dir: Path, model: Path, tmp_path: Path, **settings: object) -> DictConfig:
    cfg = resolve_config("0.5b", data_dir=data_dir, out=tmp_path, model=str(model), **settings)
    argv = stage_plan(cfg)[0].argv
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=argv[3:])


def load_policy(model_cfg: HFModelConfig) -> torch.nn.Module:
    """veRL's FSDP engine's ``_build_module`` for a language model (actor and reference)."""
    auto = get_hf_auto_model_class(hf_config=model_cfg.hf_config)
    return auto.from_pretrained(
        pretrained_model_name_or_path=model_cfg.local_path,
        torch_dtype=torch.float32,
        config=model_cfg.hf_config,
    )


def test_gpu_roles_need_flash_attention_and_preflight_says_so_first(
    data_dir: Path, qwen_like: Path, tmp_path: Path
) -> None:
    conf = stage_config(data_dir, qwen_like, tmp_path)  # PPO on GPUs: actor, ref and critic
    actor = omega_conf_to_dataclass(conf.actor_rollout_ref.model, dataclass_type=HFModelConfig)
    assert actor.hf_config._attn_implementation == "flash_attention_2"
    critic = omega_conf_to_dataclass(conf.critic).model
    if checks.flash_attn_problem() is None:
        pytest.skip("flash-attn works here: the GPU path loads")
    with pytest.raises(ImportError, match="FlashAttention2"):
        load_policy(actor)
    with pytest.raises(RuntimeError, match="not a value head model"):  # flash_attention_2, always
        load_valuehead_model(critic.local_path, torch.float32, critic.hf_config, False)
    cfg = resolve_config("0.5b", data_dir=data_dir, out=tmp_path, model=str(qwen_like))
    with pytest.raises(TrainerError) as err:
        checks.preflight(cfg, gpus=2)
    assert str(err.value).startswith("FlashAttention-2 does not work here (ModuleNotFoundError")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("extension", "problem"),
    [
        # A build against another torch: the package and its metadata are there, its kernels not.
        (
            "raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDevice')",
            "ImportError: flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDevice",
        ),
        ("", None),  # an extension that loads (no GPU here to run a kernel on)
    ],
    ids=["broken", "loads"],
)
def test_preflight_loads_the_compiled_extension_not_just_the_metadata(
    extension: str,
    problem: str | None,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "flash_attn_2_cuda.py").write_text(extension + "\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    cfg = resolve_config("0.5b", data_dir=data_dir, out=tmp_path)
    assert checks.flash_attn_problem() == problem
    if problem is None:
        checks.check_flash_attn(cfg)
        return
    with pytest.raises(TrainerError) as err:
        checks.check_flash_attn(cfg)
    assert problem in str(err.value) and "FLASH_ATTN_CUDA_ARCHS" in str(err.value)


def test_the_cpu_overlay_loads_every_policy_role_with_sdpa(
    data_dir: Path, qwen_like: Path, tmp_path: Path
) -> None:
    conf = stage_config(data_dir, qwen_like, tmp_path, device="cpu", algo="grpo")
    model_cfg = omega_conf_to_dataclass(conf.actor_rollout_ref.model, dataclass_type=HFModelConfig)
    module = load_policy(model_cfg)
    assert module.config._attn_implementation == "sdpa"
    assert not checks.needs_flash_attn(resolve_config("0.5b", device="cpu"))


def test_base_prompts_reach_the_model_as_written(
    data_dir: Path, qwen_like: Path, tmp_path: Path
) -> None:
    """The ``base`` template is a completion prompt: veRL renders it through the stage's
    pass-through chat template, not inside a ChatML user turn with a default system prompt."""
    row = load_rows(data_dir, "plus", "test")[0]  # generated with the base template
    conf = stage_config(data_dir, qwen_like, tmp_path)
    model_cfg = omega_conf_to_dataclass(conf.actor_rollout_ref.model, dataclass_type=HFModelConfig)
    # The rollout's prompt tokens, as veRL's agent loop builds them for a qwen2 model.
    builder = create_continuous_token_builder(model_cfg.tokenizer, hf_model_type="qwen2")
    ids = builder.build_initial_tokens(list(row["prompt"]))
    fed = model_cfg.tokenizer.decode(ids)
    assert fed == row["prompt"][0]["content"] and fed.endswith("<think>")
    chatml = HFModelConfig(path=str(qwen_like))  # what veRL would feed without the override
    plain = create_continuous_token_builder(chatml.tokenizer, hf_model_type="qwen2")
    assert "<|im_start|>system" in chatml.tokenizer.decode(
        plain.build_initial_tokens(list(row["prompt"]))
    )
