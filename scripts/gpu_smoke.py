"""GPU smoke test: the local backend's tiny model on CUDA, per-step time and peak memory.

For a machine with one GPU (never CI). Needs only torch, transformers, pyarrow and numpy: the
workspace packages are imported from their ``src`` folders, no install. With veRL importable (a
``uv sync`` checkout) it runs the real local backend, ``python -m cl_trainer.local`` with
``trainer.device=cuda``; without veRL (a bare CUDA image) it times the same work with torch
alone: generation of 8 prompts x 8 rollouts with the backend's own ``rollout.generate``, the
per-token log-probs and one policy-gradient update. Either way it prints one line per step and a
summary, in well under 5 minutes:

    python scripts/gpu_smoke.py [--steps 6] [--out /tmp/gpu-smoke] [--torch-only]

``--device cpu`` checks the script itself on a machine without a GPU (CI does, for one step).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = [str(p) for p in sorted(ROOT.glob("packages/*/src"))]
sys.path[:0] = SRC

import torch  # noqa: E402

from cl_trainer.local import rollout, tiny  # noqa: E402
from countdown_data import GenConfig, load_rows, split_path, write_dataset  # noqa: E402
from countdown_data.dataset import MANIFEST  # noqa: E402

PROMPTS, ROLLOUTS, RESPONSE_TOKENS = 8, 8, 48


def build(out: Path) -> tuple[Path, Path]:
    data = out / "data"
    if not (data / MANIFEST).is_file():
        cfg = GenConfig(train_size=256, test_size=32, groups=("plus",), template="compact")
        write_dataset(cfg, data)
    model = tiny.ensure_tiny_model(out / "model", data, seed=0, sft_steps=60, eval_samples=8)
    return data, model


def run_local_backend(
    data: Path, model: Path, out: Path, steps: int, device: str
) -> list[dict[str, float]]:
    """The real local backend; per-step metrics parsed from its log lines."""
    from cl_rundir.metric_lines import parse_metric_line

    args = [
        f"data.train_files={split_path(data, 'plus', 'train')}",
        f"data.val_files=[{split_path(data, 'plus', 'test')}]",
        "data.max_prompt_length=96",
        f"data.max_response_length={RESPONSE_TOKENS}",
        f"data.train_batch_size={PROMPTS}",
        f"actor_rollout_ref.model.path={model}",
        f"actor_rollout_ref.rollout.n={ROLLOUTS}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS}",
        "algorithm.adv_estimator=grpo",
        "reward.custom_reward_function.path=pkg://countdown_reward",
        "reward.custom_reward_function.name=compute_score_with_acc",
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.default_local_dir={out / 'ckpt'}",
        "trainer.resume_mode=disable",
        "trainer.logger=[console]",
        f"trainer.device={device}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(SRC), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cl_trainer.local", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode:
        sys.exit(f"local backend failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    records = [p[1] for line in proc.stdout.splitlines() if (p := parse_metric_line(line))]
    return [
        {
            "step_s": r["timing_s/step"],
            "gen_s": r.get("timing_s/gen", float("nan")),
            "peak_gib": r.get("perf/max_memory_allocated_gb", float("nan")),
        }
        for r in records
        if "timing_s/step" in r
    ]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def run_torch_only(data: Path, model_dir: Path, steps: int, name: str) -> list[dict[str, float]]:
    """The same work without veRL: generate, log-probs, one policy-gradient update per step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = load_rows(data, "plus", "train")
    prompts = [
        tokenizer.apply_chat_template(list(r["prompt"]), add_generation_prompt=True, tokenize=True)
        for r in rows[:PROMPTS]
    ]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    sampling = {"temperature": 1.0, "top_k": -1, "top_p": 1.0}
    out = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        batch = rollout.generate(
            model,
            tokenizer,
            [p for p in prompts for _ in range(ROLLOUTS)],
            sampling,
            True,
            96,
            RESPONSE_TOKENS,
        )
        _sync(device)
        gen = time.perf_counter() - start
        model.train()
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=rollout.position_ids(mask)
        ).logits[:, -RESPONSE_TOKENS - 1 : -1]
        logp = torch.log_softmax(logits.float(), -1).gather(
            -1, batch["responses"].to(device)[..., None]
        )[..., 0]
        advantage = torch.randn(logp.shape[0], 1, device=device)
        resp_mask = batch["response_mask"].to(device)
        loss = -(advantage * logp * resp_mask).sum() / resp_mask.sum()
        optim.zero_grad()
        loss.backward()
        optim.step()
        model.eval()
        _sync(device)
        out.append(
            {"step_s": time.perf_counter() - start, "gen_s": gen, "peak_gib": _peak_gib(device)}
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", type=Path, default=Path("/tmp/gpu-smoke"))
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--torch-only", action="store_true", help="Skip the local backend.")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: this smoke test is for a GPU machine (or pass --device cpu)")
    started = time.perf_counter()
    data, model = build(args.out)
    built = time.perf_counter() - started
    real = importlib.util.find_spec("verl") is not None and not args.torch_only
    path = "local backend (cl_trainer.local)" if real else "torch only"
    records = (
        run_local_backend(data, model, args.out, args.steps, args.device)
        if real
        else run_torch_only(data, model, args.steps, args.device)
    )
    if not records:
        sys.exit("no step was timed")
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name} · torch {torch.__version__} · path: {path}")
    print(f"data + tiny model (SFT on CPU): {built:.1f} s")
    for i, r in enumerate(records, 1):
        print(
            f"step {i}: {r['step_s']:.3f} s (generation {r['gen_s']:.3f} s), "
            f"peak memory {r['peak_gib']:.3f} GiB"
        )
    steady = [r["step_s"] for r in records[1:]] or [r["step_s"] for r in records]
    print(
        f"median step after the first: {statistics.median(steady):.3f} s; "
        f"peak memory {max(r['peak_gib'] for r in records):.3f} GiB; "
        f"{PROMPTS} prompts x {ROLLOUTS} rollouts x {RESPONSE_TOKENS} tokens"
    )


if __name__ == "__main__":
    main()
