"""Benchmark the activation probe (``cl_eval.probe.probe_checkpoints``) on two random
Qwen2.5-0.5B-shaped checkpoints (151,936-token vocabulary; a base model and one stage's final
model, its initial model hard-linked to the base as cl-trainer does), with the probe's default
16 puzzles per group.

Prints the probe's wall time and peak RSS (of its process alone) and the floors: bare forward
passes of the same batches through one model, with the output layer applied to the solution
tokens only (the compute), per checkpoint; and the memory of one float32 model with the Python,
torch and transformers it needs. ``--compare PYTHON`` runs another checkout's probe as well
(``--compare-puzzles`` fewer puzzles for it: the former probe's float64 log-softmax tensors need
~15 GB at 16 puzzles). The files (2 GB in bf16, 4 GB in f32) are deleted at the end.

    uv run python bench/probe.py
    uv run python bench/probe.py --dtype f32 --compare /tmp/base/.venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import FORWARD_FLOOR
from weight_diff import QWEN_05B, measure

from cl_eval.probe import PROBE_PUZZLES
from cl_rundir.layout import Stage
from countdown_data.groups import GROUPS

PROBE = """
import json, sys
from pathlib import Path
from cl_eval.probe import probe_checkpoints
base, initial, final, data = map(Path, sys.argv[1:5])
k, groups = int(sys.argv[5]), sys.argv[6].split(",")
out = probe_checkpoints([base, final], [None, initial], data, groups, k)
print(json.dumps([{"soft": p.soft_accuracy, "kl": p.kl_moved, "srank": p.srank} for p in out]))
"""

MODEL_ONLY = """
import sys, torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging
logging.disable_progress_bar()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
with torch.no_grad():
    for p in model.parameters():
        p.add_(0)  # every page resident, as a forward pass makes them
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=("bf16", "f32"), default="bf16", help="stored precision")
    ap.add_argument("--layers", type=int, default=QWEN_05B["layers"])
    ap.add_argument("--puzzles", type=int, default=PROBE_PUZZLES)
    ap.add_argument("--compare", type=Path, help="python of another checkout to run as well")
    ap.add_argument("--compare-puzzles", type=int, default=4)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    bench = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": f"{bench}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "run"
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, str(bench / "report.py"), "--build-only", str(root), "--stages", "1",
             "--layers", str(args.layers), "--dtype", args.dtype],
            check=True, capture_output=True,
        )  # fmt: skip
        print(f"built 2 {args.dtype} checkpoints in {time.perf_counter() - t0:.0f}s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
        base = root / "models" / "base"
        stage = Stage(0, 1, GROUPS[0])  # the one stage report.py --stages 1 builds
        paths = [str(p) for p in (base, root / stage.initial_model, root / stage.final_model)]
        groups = ",".join(GROUPS)
        runs = [("new", sys.executable, args.puzzles)]
        if args.compare:
            runs += [("old", str(args.compare), args.compare_puzzles)]
            if args.compare_puzzles != args.puzzles:
                runs += [("new", sys.executable, args.compare_puzzles)]
        floors = {}
        for k in sorted({k for _, _, k in runs}):
            cmd = [sys.executable, "-c", FORWARD_FLOOR, str(base), str(root / "data"), groups]
            out = subprocess.run([*cmd, str(k)], check=True, capture_output=True, text=True,
                                 env=env).stdout.split()  # fmt: skip
            floors[k] = 2 * float(out[0])
            print(f"floor, {k} puzzles per group: forward passes of both checkpoints "
                  f"({out[1]} tokens each) {floors[k]:.1f}s")  # fmt: skip
        _, model_rss, _ = measure([sys.executable, "-c", MODEL_ONLY, str(base)], stderr=None)
        print(f"memory floor: one float32 model, loaded and resident: {model_rss / 1024:.2f} GiB")
        for label, python, k in runs:
            wall, rss, text = measure([python, "-c", PROBE, *paths, str(root / "data"), str(k),
                                        groups], stderr=None)  # fmt: skip
            kl = json.loads(text.splitlines()[-1])[1]["kl"]
            print(f"{label} probe, {k} puzzles per group: {wall:.1f}s = {wall / floors[k]:.1f}x "
                  f"the floor; peak RSS {rss / 1024:.2f} GiB = {rss / model_rss:.2f}x one model; "
                  f"KL moved {json.dumps({g: round(v, 5) for g, v in kl.items()})}")  # fmt: skip


if __name__ == "__main__":
    main()
