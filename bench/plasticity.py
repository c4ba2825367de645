"""The plasticity ablation on CPU: no remedy vs shrink-perturb vs ReDo vs replay, several seeds
each, judged by ``cl-eval compare``.

Runs the real command lines, one after the other (a curriculum trains the tiny model on one
torch thread, so it uses one core of the machine):
  countdown-data gen          - the preset's data set, once, shared by every run;
  cl-trainer --seeds ...      - one curriculum per arm and seed, in OUT/<arm>-s<seed>;
  cl-eval compare --plasticity - every arm against ``none``: ACC, BWT, plasticity gain, the
                                soft-accuracy metrics and the dormant ratio, each with its interval.
Interrupted, the same command resumes where it stopped (finished stages are kept).

    uv run python bench/plasticity.py                       # testbed, seeds 0,1,2 (~2 h)
    uv run python bench/plasticity.py --size tiny --seeds 0,1
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from cl_trainer.config import seed_out
from cl_trainer.presets import DATA_COMMANDS
from cl_trainer.remedies import REMEDIES, parse
from countdown_data.dataset import MANIFEST

ARMS: dict[str, str | None] = {"none": None, **{name: parse(name).spec for name in REMEDIES}}
"""Each arm's ``--between-stages`` spec: every remedy at its default parameters."""
BIN = Path(sys.executable).parent


def run(args: list[str]) -> float:
    """Run one command line (its output goes to the console); its wall time in seconds."""
    print("$", shlex.join(args), flush=True)
    t0 = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="testbed", help="cl-trainer preset [testbed]")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds [0,1,2]")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"subset of {','.join(ARMS)}")
    ap.add_argument("--out", type=Path, default=Path("runs/plasticity"), help="[runs/plasticity]")
    args = ap.parse_args()
    arms = args.arms.split(",")
    if unknown := [a for a in arms if a not in ARMS]:
        ap.error(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    data = args.out / "data"
    walls: dict[str, float] = {}
    if not (data / MANIFEST).is_file():
        gen = shlex.split(DATA_COMMANDS.get(args.size, "countdown-data gen"))
        walls["data"] = run([str(BIN / gen[0]), *gen[1:], "--out", str(data)])
    for arm in arms:
        remedy = ["--between-stages", ARMS[arm]] if ARMS[arm] else []
        walls[arm] = run(
            [str(BIN / "cl-trainer"), "--size", args.size, "--seeds", args.seeds,
             "--data-dir", str(data), "--out", str(args.out / arm), "--no-wandb", *remedy]
        )  # fmt: skip
    labels = [x for arm in arms for x in ("--label", f"{arm}={seed_out(args.out / arm, '*')}")]
    walls["compare"] = run(
        [str(BIN / "cl-eval"), "compare", "--plasticity", "--out", str(args.out / "compare"),
         *labels]
    )  # fmt: skip
    print("\nwall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()))
    print(f"total {sum(walls.values()) / 60:.1f} min for {len(arms)} arms × seeds {args.seeds}")


if __name__ == "__main__":
    main()
