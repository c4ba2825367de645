"""Fixtures: tiny safetensors checkpoints and a synthetic run dir (veRL's log lines: the root
conftest)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

GROUPS = ["plus", "plus_minus", "plus_minus_mul", "plus_minus_mul_div"]


def tiny_tensors(seed: int = 0, layers: int = 2, hidden: int = 8, vocab: int = 32) -> dict:
    """A Qwen2-shaped state dict (float32 torch tensors), small enough for exact checks."""
    import torch

    g = torch.Generator().manual_seed(seed)
    t: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g)
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        for m, shape in {
            "q": (hidden, hidden),
            "k": (2, hidden),
            "v": (2, hidden),
            "o": (hidden, hidden),
        }.items():
            t[f"{p}self_attn.{m}_proj.weight"] = torch.randn(*shape, generator=g) * 0.1
        for m in "qkv":
            t[f"{p}self_attn.{m}_proj.bias"] = (
                torch.randn(t[f"{p}self_attn.{m}_proj.weight"].shape[0], generator=g) * 0.01
            )
        t[f"{p}mlp.gate_proj.weight"] = torch.randn(16, hidden, generator=g) * 0.1
        t[f"{p}mlp.up_proj.weight"] = torch.randn(16, hidden, generator=g) * 0.1
        t[f"{p}mlp.down_proj.weight"] = torch.randn(hidden, 16, generator=g) * 0.1
        t[f"{p}input_layernorm.weight"] = torch.ones(hidden)
        t[f"{p}post_attention_layernorm.weight"] = torch.ones(hidden)
    t["model.norm.weight"] = torch.ones(hidden)
    return t


def save_ckpt(
    d: Path, tensors: dict, dtype: str = "bf16", tie: bool = True, shards: int = 1
) -> Path:
    """Write an HF-style model dir: config.json + model.safetensors (or a sharded index)."""
    import torch
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    tdt = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}[dtype]
    conv = {k: v.to(tdt).contiguous() for k, v in tensors.items()}
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2", "tie_word_embeddings": tie}))
    if shards == 1:
        save_file(conv, d / "model.safetensors")
        return d
    names = sorted(conv)
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s::shards]
        save_file({n: conv[n] for n in part}, d / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return d


def stage_log(
    verl_line: Callable[[dict, int], str],
    before: dict[str, float],
    after: dict[str, float] | None,
    steps: int = 6,
    seed: int = 0,
) -> str:
    """A stage's console output: Ray/vLLM noise around veRL metric lines (val at 0 and last)."""
    rng = np.random.default_rng(seed)
    pfx = "\x1b[36m(TaskRunner pid=4242)\x1b[0m "
    val = lambda accs: {  # noqa: E731
        **{f"val-core/countdown_{g}/acc/mean@1": np.float64(a) for g, a in accs.items()},
        **{
            f"val-aux/countdown_{g}/reward/mean@1": np.float64(0.1 + 0.9 * a)
            for g, a in accs.items()
        },
    }
    lines = [
        "2025-01-01 12:00:00,000\tINFO worker.py:1810 -- Started a local Ray instance.",
        pfx + "INFO 01-01 12:00:05 [config.py:1234] vLLM step: init",
        pfx + verl_line(val(before), 0),
    ]
    for s in range(1, steps + 1):
        m = {
            "training/global_step": s,
            "actor/pg_loss": np.float64(-0.01 * s),
            "actor/entropy": np.float64(1.0 - 0.05 * s),
            "actor/grad_norm": np.float64(0.5 + rng.random()),
            "actor/ppo_kl": np.float64(1e-4 * s),
            "actor/kl_loss": np.float64(2e-3 * s),
            "critic/score/mean": np.float64(min(1.0, 0.1 + 0.12 * s)),
            "critic/rewards/mean": np.float64(min(1.0, 0.1 + 0.12 * s)),
            "response_length/mean": np.float64(120.0 - s),
            "response_length/clip_ratio": np.float32(0.01),
            "timing_s/step": 12.5,
            "perf/total_num_tokens": 12345,
            "critic/vf_loss": math.nan,
        }
        if s == steps and after is not None:
            m.update(val(after))
        lines.append(f"Training Progress:  {100 * s // steps}%|##  | {s}/{steps} [00:0{s}<00:10]")
        lines.append(pfx + verl_line(m, s))
        if s == 2:
            lines.append(pfx + "WARNING: step: something odd - key: value")
    return "\n".join(lines) + "\n"


def make_run(
    root: Path,
    verl_line: Callable[[dict, int], str],
    R: np.ndarray,
    stages: list[tuple[int, str]],
    groups: list[str],
    size: str = "tiny",
    checkpoints: bool = True,
    manifest: bool = True,
) -> Path:
    """A cl-trainer run dir whose validations reproduce the accuracy matrix R exactly."""
    import torch

    (root / "logs").mkdir(parents=True, exist_ok=True)
    base = tiny_tensors(0)
    prev = save_ckpt(root / "models" / "base", base) if checkpoints else None
    state = dict(base)
    entries = []
    for k, (rnd, g) in enumerate(stages, start=1):
        before = dict(zip(groups, R[k - 1].tolist(), strict=True))
        after = None if np.isnan(R[k]).all() else dict(zip(groups, R[k].tolist(), strict=True))
        log = f"logs/ContinualCountdown_R{rnd}_{g}.log"
        (root / log).write_text(stage_log(verl_line, before, after, seed=k))
        entry = {
            "index": k - 1,
            "round": rnd,
            "group": g,
            "name": f"R{rnd}_{g}",
            "status": "done",
            "log": log,
            "initial_model": f"metrics/initial_{rnd}_{g}",
            "final_model": f"metrics/final_{rnd}_{g}",
            "checkpoint_dir": f"checkpoints/R{rnd}_{g}",
            "global_steps": 6,
        }
        if checkpoints:
            init = root / entry["initial_model"]
            init.parent.mkdir(parents=True, exist_ok=True)
            init.symlink_to(prev.resolve())
            gen = torch.Generator().manual_seed(100 + k)
            name = f"model.layers.{k % 2}.mlp.up_proj.weight"
            state = dict(state)
            state[name] = state[name] + 0.05 * torch.randn(state[name].shape, generator=gen)
            state["model.layers.0.self_attn.q_proj.weight"] = state[
                "model.layers.0.self_attn.q_proj.weight"
            ] * (1 + 0.01 * k)
            prev = save_ckpt(root / entry["final_model"], state)
        entries.append(entry)
    if manifest:
        (root / "run.json").write_text(
            json.dumps(
                {
                    "schema_version": 1,
                    "name": f"ContinualCountdown_{size}",
                    "size": size,
                    "backend": "local",
                    "created_at": "2025-01-01T00:00:00Z",
                    "updated_at": "2025-01-01T01:00:00Z",
                    "git_sha": None,
                    "versions": {},
                    "base_model": str(root / "models" / "base"),
                    "groups": groups,
                    "config": {"rounds": max(r for r, _ in stages)},
                    "stages": entries,
                }
            )
        )
    return root


@pytest.fixture(scope="session")
def synth():
    """The builders above (tests cannot import conftest under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        GROUPS=GROUPS,
        tiny_tensors=tiny_tensors,
        save_ckpt=save_ckpt,
        stage_log=stage_log,
        make_run=make_run,
    )
