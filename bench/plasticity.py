"""The plasticity ablation on the 3-round CPU testbed, judged by ``cl-eval compare``.

Arms: no remedy, replay 0.25, the KL anchored to the base model (veRL's coefficient, 0.001) and
shrink-and-perturb on 5 seeds each; on 3: the KL to the base at GRPO's published coefficient
(0.04, DeepSeekMath), shrink-and-perturb toward the base, ReDo and the joint multi-task baseline.

Runs the real command lines, one curriculum after the other (a curriculum trains the tiny model on
one torch thread, so it uses one core of the machine):
  countdown-data gen          - the preset's data set, once, shared by every run;
  cl-trainer --seed S         - one curriculum per arm and seed, in OUT/<arm>-s<seed>;
  cl-eval compare --plasticity - every arm against the first (``none``), over the runs finished
                                so far: ACC, BWT, plasticity gain, soft accuracy, dormant ratio,
                                each difference with its interval.
Runs in chunks: ``--arms`` and ``--seeds`` pick a subset; a finished run (every stage of its
run.json done) is skipped, an unfinished one resumes where it stopped; ``--compare-only`` prints
the table of what has finished. The seeds of every arm are the same (same warm start, same data
order), so the comparison is paired over seeds.

    uv run python bench/plasticity.py                              # all: 32 testbed runs
    uv run python bench/plasticity.py --arms none,kl-base --seeds 0,1  # a chunk
    uv run python bench/plasticity.py --compare-only
    uv run python bench/plasticity.py --size tiny --arms none,kl-base --seeds 0 --max-steps 2 \
        -- --val-max-samples 64
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cl_rundir.record import RecordError, read_record
from cl_trainer.config import seed_out
from cl_trainer.presets import DATA_COMMANDS
from cl_trainer.remedies import parse
from countdown_data.dataset import MANIFEST

BIN = Path(sys.executable).parent
MAIN_SEEDS = (0, 1, 2, 3, 4)
EXTRA_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Arm:
    """One condition: the cl-trainer options that make it, and its default seeds."""

    options: tuple[str, ...]
    seeds: tuple[int, ...]


def _remedy(spec: str) -> tuple[str, ...]:
    return ("--between-stages", parse(spec).spec)


ARMS: dict[str, Arm] = {
    "none": Arm((), MAIN_SEEDS),
    "replay": Arm(_remedy("replay:fraction=0.25"), MAIN_SEEDS),
    "kl-base": Arm(("--reference", "base"), MAIN_SEEDS),
    "shrink-perturb": Arm(_remedy("shrink-perturb"), MAIN_SEEDS),
    "shrink-perturb-base": Arm(_remedy("shrink-perturb:toward=base"), EXTRA_SEEDS),
    "kl-base-0.04": Arm(
        ("--reference", "base", "actor_rollout_ref.actor.kl_loss_coef=0.04"), EXTRA_SEEDS
    ),
    "redo": Arm(_remedy("redo"), EXTRA_SEEDS),
    "joint": Arm(("--curriculum", "joint"), EXTRA_SEEDS),
}
"""Every arm; the first is the reference of ``cl-eval compare``."""


def run(args: list[str]) -> float:
    """Run one command line (its output goes to the console); its wall time in seconds."""
    print("$", shlex.join(args), flush=True)
    t0 = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - t0


def finished(run_dir: Path) -> bool:
    """Whether every stage the run planned is done (its run.json says so)."""
    try:
        record = read_record(run_dir)
    except RecordError:
        return False
    return (
        record is not None
        and bool(record.stages)
        and all(s.status == "done" for s in record.stages)
    )


def stage_time(run_dir: Path) -> float:
    """The run's training time: its stages' durations, summed (resumed attempts included)."""
    record = read_record(run_dir)
    return sum(s.duration_s or 0.0 for s in record.stages) if record else 0.0


def compare_labels(out: Path, arms: list[str]) -> list[str]:
    """``--label arm=glob`` over each arm's finished runs: links to them in OUT/finished/<arm>/,
    so a run still in progress never enters the table."""
    labels = []
    for arm in arms:
        farm = out / "finished" / arm
        shutil.rmtree(farm, ignore_errors=True)
        done = [d for d in sorted(out.glob(f"{arm}-s*")) if d.is_dir() and finished(d)]
        if not done:
            continue
        farm.mkdir(parents=True)
        for d in done:
            (farm / d.name).symlink_to(d.resolve(), target_is_directory=True)
        labels += ["--label", f"{arm}={farm}/*"]
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="testbed", help="cl-trainer preset [testbed]")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"subset of {','.join(ARMS)}")
    ap.add_argument(
        "--seeds", help="comma-separated seeds for every arm named [5 per main arm, 3 per extra]"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/plasticity"), help="[runs/plasticity]")
    ap.add_argument("--rounds", type=int, help="cl-trainer --rounds [the preset's: testbed 3]")
    ap.add_argument("--max-steps", type=int, help="cl-trainer --max-steps: a quick check")
    ap.add_argument("--compare-only", action="store_true", help="train nothing; compare")
    ap.add_argument(
        "--plasticity",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cl-eval compare --plasticity (reads every checkpoint) [on]",
    )
    ap.add_argument(
        "trainer_args",
        nargs=argparse.REMAINDER,
        help="after --: more cl-trainer options for every run (e.g. --val-max-samples 64)",
    )
    args = ap.parse_args()
    more = args.trainer_args[1:] if args.trainer_args[:1] == ["--"] else args.trainer_args
    arms = args.arms.split(",")
    if unknown := [a for a in arms if a not in ARMS]:
        ap.error(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2")
    data = args.out / "data"
    walls: dict[str, float] = {}
    if not args.compare_only:
        if not (data / MANIFEST).is_file():
            gen = shlex.split(DATA_COMMANDS.get(args.size, "countdown-data gen"))
            walls["data"] = run([str(BIN / gen[0]), *gen[1:], "--out", str(data)])
        extra = [
            *(["--rounds", str(args.rounds)] if args.rounds else []),
            *(["--max-steps", str(args.max_steps)] if args.max_steps else []),
            *more,
        ]
        for arm in arms:
            for seed in seeds or ARMS[arm].seeds:
                out = Path(seed_out(args.out / arm, seed))
                if finished(out):
                    print(f"done: {out} ({stage_time(out) / 60:.1f} min of stages)")
                    continue
                walls[out.name] = run(
                    [str(BIN / "cl-trainer"), "--size", args.size, "--seed", str(seed),
                     "--data-dir", str(data), "--out", str(out), "--no-wandb",
                     *ARMS[arm].options, *extra]
                )  # fmt: skip
    order = [a for a in ARMS if a in arms or args.compare_only]
    labels = compare_labels(args.out, order)
    if labels:
        walls["compare"] = run(
            [str(BIN / "cl-eval"), "compare", "--out", str(args.out / "compare"),
             *(["--plasticity"] if args.plasticity else []), *labels]
        )  # fmt: skip
    if walls:
        print("\nwall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()))
    runs = [d for a in order for d in sorted(args.out.glob(f"{a}-s*")) if finished(d)]
    total = sum(stage_time(d) for d in runs)
    print(f"{len(runs)} finished runs in {args.out}: {total / 3600:.2f} h of stages in all")


if __name__ == "__main__":
    main()
