"""Benchmark ``cl-eval report`` on a 12-stage run of random Qwen2.5-0.5B-shaped checkpoints.

Builds, in a child process, a run directory laid out as cl-trainer writes it: a base model, one
final model per stage (the previous one moved by a random update, half of it the previous
stage's direction), each stage's initial model hard-linked to the previous final model (as
``cl_trainer.engine.link_model_dir`` does), veRL-format logs with validation before and after
every stage, run.json, and a countdown-data set for the activation probe. Every checkpoint
carries a byte-level BPE tokenizer trained on that data set: Qwen's own is on the hub, and a
char-level one would make the prompts four times longer than Qwen's tokens.

Then runs ``cl-eval report`` in a child (its progress bars on this terminal, its phases timed)
and prints the wall time, the peak RSS and the floors: reading every distinct checkpoint file
once (the I/O any weight diagnostic needs), the float32 Gram matrices of every checkpoint's
matrices (the spectra's BLAS work, the faster of BLAS's threads and one) and, with the probe,
bare forward passes of the probe's batches through every checkpoint. ``--compare PYTHON`` runs
another checkout's cl-eval (e.g. ``/tmp/base/.venv/bin/python``) on the same directory,
interleaved. The files are deleted at the end.

    uv run python bench/report.py                        # 12 stages, 24 layers, bf16: 13 GB
    uv run python bench/report.py --layers 4 --no-probe  # quicker, the same tensor shapes
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

from weight_diff import QWEN_05B, drop_cache, measure, shapes

from cl_eval.probe import PROBE_PUZZLES
from countdown_data.groups import GROUPS

RUN_REPORT = """
import sys, time
from contextlib import contextmanager
import cl_eval
from cl_eval.cli import main
try:
    from cl_eval import progress
except ImportError:  # a checkout without progress bars
    progress = None
if progress is not None:
    shown_phase = progress.phase

    @contextmanager
    def timed(description, total):
        t0 = time.perf_counter()
        with shown_phase(description, total) as advance:
            yield advance
        print(f"phase {description}: {time.perf_counter() - t0:.1f}s", flush=True)

    for module in list(sys.modules.values()):  # wherever the phases were imported
        if getattr(module, "phase", None) is shown_phase:
            module.phase = timed
main(sys.argv[1:])
"""

GRAM_FLOOR = """
import sys, time, numpy as np
from threadpoolctl import threadpool_limits
from weight_diff import shapes
rng = np.random.default_rng(0)
mats = [rng.standard_normal(s, dtype=np.float32) for s in shapes(int(sys.argv[1])).values()
        if len(s) == 2]
best = []
for limit in (None, 1):  # BLAS's own threads, and one: the faster counts
    t0 = time.perf_counter()
    with threadpool_limits(limit, user_api="blas"):
        for x in mats:
            x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
    best.append(time.perf_counter() - t0)
print(min(best))
"""

FORWARD_FLOOR = """
import sys, time, torch
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging
from cl_eval.probe import _solution_batch, build_probe_set
logging.disable_progress_bar()
path, data = Path(sys.argv[1]), Path(sys.argv[2])
groups = sys.argv[3].split(",")
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
tok = AutoTokenizer.from_pretrained(path)
probe = build_probe_set(data, groups, tok, int(sys.argv[4]))
with torch.inference_mode():
    t0 = time.perf_counter()
    tokens = 0
    for g in groups:
        (ids, attention), target = _solution_batch(tok, probe.solutions[g])
        h = model.model(input_ids=ids, attention_mask=attention).last_hidden_state
        model.lm_head(h[:, :-1][target[:, 1:].bool()])
        tokens += int(attention.sum())
print(time.perf_counter() - t0, tokens)
"""


def qwen_config(layers: int, tokenizer) -> dict:
    """Qwen2.5-0.5B's config.json with ``layers`` layers (tied embeddings, 151,936 tokens)."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": QWEN_05B["hidden"],
        "intermediate_size": QWEN_05B["intermediate"],
        "num_hidden_layers": layers,
        "num_attention_heads": QWEN_05B["heads"],
        "num_key_value_heads": QWEN_05B["kv_heads"],
        "vocab_size": QWEN_05B["vocab"],
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def train_tokenizer(data: Path):
    """A byte-level BPE (Qwen2's tokenizer class, 4,096 tokens) trained on the data set's prompts
    and reference solutions: about as many tokens per puzzle as Qwen's own tokenizer gives."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from countdown_data.dataset import load_rows
    from countdown_data.sft import sft_examples

    texts = []
    for g in GROUPS:
        for ex in sft_examples(load_rows(data, g, "train")):
            texts += [ex["prompt"], ex["completion"]]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)  # fmt: skip
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return Qwen2Tokenizer(vocab=model["vocab"], merges=merges, unk_token=None,
                          eos_token="<|im_end|>", pad_token="<|endoftext|>")  # fmt: skip


def _metric_line(step: int, metrics: dict[str, float]) -> str:
    """veRL's console format (``concat_dict_to_str``)."""
    return " - ".join([f"step:{step}", *(f"{k}:{v}" for k, v in metrics.items())])


def _validation(accuracy: dict[str, float]) -> dict[str, float]:
    return {f"val-core/countdown_{g}/acc/mean@1": a for g, a in accuracy.items()}


def build(root: Path, stages: int, layers: int, dtype: str) -> dict:
    """The run directory (see the module docstring); returns what was built."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from cl_rundir.layout import LOGS_DIR, PROJECT, Stage
    from cl_rundir.record import RunRecord, StageRecord, write_record
    from countdown_data import GenConfig, write_dataset

    data = root / "data"
    write_dataset(GenConfig(train_size=200, test_size=PROBE_PUZZLES), data)
    tokenizer = train_tokenizer(data)
    config = qwen_config(layers, tokenizer)
    store = {"bf16": torch.bfloat16, "f32": torch.float32}[dtype]
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    weights = {
        n: (
            torch.ones(s) if len(s) == 1 and "norm" in n else torch.randn(s, generator=g) * 0.02
        ).to(store)
        for n, s in shapes(layers).items()
    }
    previous: dict[str, torch.Tensor] = {}

    def save(d: Path) -> Path:
        d.mkdir(parents=True)
        save_file(weights, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps(config))
        tokenizer.save_pretrained(d)
        return d

    last = save(root / "models" / "base")
    accuracy = dict.fromkeys(GROUPS, 0.02)
    order = [(r, grp) for r in range(1, 4) for grp in GROUPS][:stages]
    plan = [Stage(k, r, grp) for k, (r, grp) in enumerate(order)]
    record = RunRecord(name=f"{PROJECT}_0.5b", size="0.5b", backend="bench",
                       base_model=str(last), groups=list(GROUPS),
                       config={"rounds": plan[-1].round, "data_dir": str(data)})  # fmt: skip
    (root / LOGS_DIR).mkdir()
    for stage in plan:
        scale = 1e-3 * (1 + stage.index % 3)
        for n, w in weights.items():
            fresh = torch.randn(w.shape, generator=g) * scale
            delta = fresh + 0.5 * previous[n] if n in previous else fresh
            weights[n] = (w.float() + delta).to(store)
            previous[n] = delta.to(store)
        initial = root / stage.initial_model
        initial.mkdir(parents=True)
        for f in last.iterdir():
            os.link(f, initial / f.name)
        last = save(root / stage.final_model)
        before = dict(accuracy)
        accuracy = {x: min(1.0, max(0.0, a + rng.normal(0.05 if x == stage.group else -0.01, 0.02)))
                    for x, a in accuracy.items()}  # fmt: skip
        lines = [_metric_line(0, _validation(before))]
        lines += [_metric_line(s, {"actor/pg_loss": -0.01 * s}) for s in range(1, 15)]
        lines.append(_metric_line(15, {"actor/pg_loss": -0.15, **_validation(accuracy)}))
        (root / stage.log).write_text("\n".join(lines) + "\n")
        entry = StageRecord.planned(stage)
        entry.status, entry.global_steps = "done", 15
        record.stages.append(entry)
    write_record(root, record)
    files = {os.stat(p).st_ino: str(p) for p in sorted(root.glob("*/*/model.safetensors"))}
    return {"files": sorted(files.values()), "numel": sum(w.numel() for w in weights.values())}


def _phases(text: str) -> str:
    return ", ".join(
        line[len("phase ") :] for line in text.splitlines() if line.startswith("phase ")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=12, help="stages (4 groups per round)")
    ap.add_argument("--layers", type=int, default=QWEN_05B["layers"])
    ap.add_argument("--dtype", choices=("bf16", "f32"), default="bf16", help="stored precision")
    ap.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--compare", type=Path, help="python of another checkout to run as well")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the run")
    ap.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        print(json.dumps(build(args.build_only, args.stages, args.layers, args.dtype)))
        return
    bench = Path(__file__).parent
    env_path = f"{bench}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "0.5b"
        t0 = time.perf_counter()
        built = json.loads(
            subprocess.run(
                [sys.executable, __file__, "--build-only", str(root), "--stages",
                 str(args.stages), "--layers", str(args.layers), "--dtype", args.dtype],
                check=True, capture_output=True, text=True,
            ).stdout.splitlines()[-1]
        )  # fmt: skip
        files = [Path(f) for f in built["files"]]
        size = sum(f.stat().st_size for f in files)
        print(
            f"built a {args.stages}-stage run: {len(files)} distinct {args.dtype} checkpoints of "
            f"{built['numel'] / 1e6:.0f}M parameters ({size / 2**30:.1f} GiB) in "
            f"{time.perf_counter() - t0:.0f}s; {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f}"
        )
        pythons = {"new": sys.executable}
        if args.compare:
            pythons["old"] = str(args.compare)
        drop_cache(files)
        read = measure([sys.executable, "-c", "import sys\nbuf = bytearray(16 << 20)\n"
                        "for p in sys.argv[1:]:\n with open(p, 'rb', buffering=0) as f:\n"
                        "  while f.readinto(buf): pass", *map(str, files)])  # fmt: skip
        env = {**os.environ, "PYTHONPATH": env_path}
        gram_cmd = [sys.executable, "-c", GRAM_FLOOR, str(args.layers)]
        gram = float(subprocess.run(gram_cmd, check=True, capture_output=True, text=True,
                                    env=env).stdout)  # fmt: skip
        floors = {"read every checkpoint once": read[0], f"{len(files)} x Gram": len(files) * gram}
        if args.probe:
            out = subprocess.run(
                [sys.executable, "-c", FORWARD_FLOOR, str(root / "models" / "base"),
                 str(root / "data"), ",".join(GROUPS), str(PROBE_PUZZLES)],
                check=True, capture_output=True, text=True, env=env,
            ).stdout.split()  # fmt: skip
            floors[f"{len(files)} x probe forward ({out[1]} tokens)"] = len(files) * float(out[0])
        floor = sum(floors.values())
        print("floor: " + ", ".join(f"{k} {v:.1f}s" for k, v in floors.items())
              + f" = {floor:.1f}s")  # fmt: skip
        flags = [] if args.probe else ["--no-probe"]
        rows = {}
        for label, python in pythons.items():
            drop_cache(files)
            wall, rss, text = measure([python, "-c", RUN_REPORT, "report", "--run", str(root),
                                        *flags], stderr=None)  # fmt: skip
            rows[label] = (wall, rss, _phases(text))
            print(f"{label}: {wall:.1f}s, peak RSS {rss / 1024:.2f} GiB ({rows[label][2]})")
        for label, (wall, rss, _) in rows.items():
            print(f"{label}: cl-eval report {wall:.1f}s = {wall / floor:.1f}x the floor; "
                  f"peak RSS {rss / 1024:.2f} GiB")  # fmt: skip
        if "old" in rows:
            print(f"old / new time: {rows['old'][0] / rows['new'][0]:.1f}x")


if __name__ == "__main__":
    main()
