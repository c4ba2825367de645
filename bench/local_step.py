"""Time a testbed step of the local backend phase by phase, against its compute floor.

Builds (once, into OUT/base_model) the testbed's warm-started tiny model, composes the first
stage's veRL config exactly as ``cl-trainer --size testbed`` does, and runs STEPS real training
steps of ``cl_trainer.local.loop.LocalTrainer`` (generation, reward, old and reference
log-probs, advantages, actor update), then one validation of every test puzzle. For each step it
prints the trainer's own per-phase timings and two floors: the same model's bare forward (for
the update: forward + backward + AdamW step, per mini-batch) on dense blocks of the step's
tokens without any padding, best of three,
  real      every sequence's prompt and response tokens (what each phase would cost if it ran
            only the tokens the sequences hold);
  distinct  each distinct prompt once and every response (what must be run at all: the
            ``rollout.n`` responses of a prompt share its prefix, as the backend now runs them).
Per phase, the floor is one such forward for gen (decoding adds a pass per new token; the ratio
shows what that costs) and ref, and the update's; old_log_prob has none: generation returns the
old log-probs (the policy has not changed since it drew the responses), so that phase only
moves them into place.

    uv run python bench/local_step.py                             # 5 steps
    CL_LOCAL_THREADS=1 uv run python bench/local_step.py --steps 3
    uv run python bench/local_step.py --profile /tmp/step.prof    # and a cProfile of the steps
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from cl_trainer.config import resolve_config, tiny_model_dir
from cl_trainer.local import loop
from cl_trainer.local.config import compose, cpu_threads
from cl_trainer.local.tiny import WARM_STARTS, ensure_tiny_model
from cl_trainer.presets import DATA_COMMANDS
from cl_trainer.stages import stage_plan

PHASES = ("gen", "reward", "old_log_prob", "ref", "adv", "update_actor")
BIN = Path(sys.executable).parent


def trainer(data: Path, out: Path, seed: int) -> loop.LocalTrainer:
    """The testbed's first stage (``plus``) as the stage engine would start it."""
    cfg = resolve_config("testbed", data_dir=str(data), out=str(out), wandb=False, seed=seed)
    ensure_tiny_model(tiny_model_dir(cfg), data, seed, warm_start=WARM_STARTS["testbed"])
    argv = stage_plan(cfg)[0].argv
    overrides = argv[argv.index("cl_trainer.local") + 1 :]
    # Every test puzzle of every group, as every stage validates; no checkpoint, no validation
    # inside the timed steps.
    overrides += ["trainer.save_freq=-1", "trainer.test_freq=-1"]
    return loop.LocalTrainer(compose(overrides))


def dense(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """``ids`` (a flat run of real tokens) as a dense [rows, mean length] block: no padding."""
    width = max(1, ids.numel() // rows)
    return ids[: rows * width].reshape(rows, width)


def blocks(
    batch: dict[str, torch.Tensor], rows: torch.Tensor, distinct: bool
) -> list[torch.Tensor]:
    """The rows' real tokens as dense blocks: every row's prompt and response in one block, or
    (``distinct``) each distinct prompt once in one block and every response in another."""
    width = batch["prompts"].shape[1]
    mask = batch["attention_mask"][rows].bool()
    ids = batch["input_ids"][rows]
    if not distinct:
        return [dense(ids[mask], len(rows))]
    prompts = torch.unique(batch["prompts"][rows], dim=0)
    prompt_ids = prompts[prompts != batch["prompts"][0, 0]]  # left padding: the pad token
    return [
        dense(prompt_ids, len(prompts)),
        dense(ids[:, width:][mask[:, width:]], len(rows)),
    ]


def tokens(parts: list[torch.Tensor]) -> int:
    return sum(p.numel() for p in parts)


def timed(fn: Any, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def floors(
    t: loop.LocalTrainer, batch: dict[str, torch.Tensor], distinct: bool
) -> dict[str, float]:
    """Bare forward / forward+backward+AdamW over the step's real tokens, best of three."""
    model = copy.deepcopy(t.model)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-12)
    size = batch["input_ids"].shape[0]
    mini = int(t.cfg.actor_rollout_ref.actor.ppo_mini_batch_size) * int(
        t.cfg.actor_rollout_ref.rollout.n
    )
    whole = blocks(batch, torch.arange(size), distinct)
    minis = [
        blocks(batch, torch.arange(start, min(size, start + mini)), distinct)
        for start in range(0, size, mini)
    ]

    def forward() -> None:
        with torch.inference_mode():
            for ids in whole:
                model(input_ids=ids).logits.log_softmax(-1)

    def update() -> None:
        for parts in minis:
            loss = sum(model(input_ids=ids).logits.log_softmax(-1).mean() for ids in parts)
            optim.zero_grad()
            loss.backward()
            optim.step()

    fwd = timed(forward)
    return {
        "tokens": tokens(whole),
        "gen": fwd,
        "old_log_prob": 0.0,
        "ref": fwd if t.ref is not None else 0.0,
        "update_actor": timed(update),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-local-step"), help="[%(default)s]")
    ap.add_argument("--data", type=Path, help="testbed data [OUT/data, generated if missing]")
    ap.add_argument("--steps", type=int, default=5, help="training steps timed [%(default)s]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=Path, help="write a cProfile of the steps here")
    args = ap.parse_args()
    data = args.data or args.out / "data"
    if not (data / "manifest.json").is_file():
        gen = DATA_COMMANDS["testbed"].split()
        subprocess.run([str(BIN / gen[0]), *gen[1:], "--out", str(data)], check=True)
    torch.set_num_threads(cpu_threads())
    torch.manual_seed(args.seed)
    t = trainer(data, args.out, args.seed)
    captured: dict[str, Any] = {}
    update = t._update_actor

    def capture(batch: dict[str, Any]) -> Any:
        captured["batch"] = batch
        return update(batch)

    t._update_actor = capture  # the bench reads each step's batch for its floor
    print(f"torch threads {torch.get_num_threads()}; {args.steps} steps of the testbed's R1_plus")
    print(f"{'step':>4} " + " ".join(f"{p:>13}" for p in PHASES) + f" {'step':>7}")
    profiler = cProfile.Profile() if args.profile else None
    runs: list[dict[str, float]] = []
    for i in range(1, args.steps + 1):
        t.global_steps = i
        if profiler:
            profiler.enable()
        metrics = t.step()
        if profiler:
            profiler.disable()
        timing = {p: float(metrics.get(f"timing_s/{p}", 0.0)) for p in (*PHASES, "step")}
        print(" ".join([f"{i:>4}", *(f"{timing[p]:>12.3f}s" for p in PHASES)]), end="")
        print(f" {timing['step']:>6.2f}s")
        for name, distinct in (("real", False), ("distinct", True)):
            floor = floors(t, captured["batch"], distinct)
            work = sum(v for k, v in floor.items() if k != "tokens")
            timing[f"floor_{name}"], timing[f"tokens_{name}"] = work, floor["tokens"]
            print(
                f"     floor over the {floor['tokens']} {name} tokens: "
                + " ".join(f"{p} {floor[p]:.3f}s" for p in PHASES if p in floor)
                + f" = {work:.3f}s"
            )
        runs.append(timing)
    if profiler:
        profiler.dump_stats(args.profile)
        print(f"cProfile written to {args.profile}")
    t0 = time.perf_counter()
    t.validate()
    val = time.perf_counter() - t0
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print("median per phase: " + ", ".join(f"{p} {med[p]:.3f}s" for p in PHASES))
    for name in ("real", "distinct"):
        print(
            f"median step {med['step']:.2f}s vs floor over {med[f'tokens_{name}']:.0f} {name} "
            f"tokens {med[f'floor_{name}']:.2f}s: ratio {med['step'] / med[f'floor_{name}']:.2f}"
        )
    print(f"validation of {len(t.val)} puzzles: {val:.2f}s")


if __name__ == "__main__":
    main()
