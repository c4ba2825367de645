"""Benchmark ``cl-eval diff`` and the report's weight diagnostics on two random
Qwen2.5-0.5B-shaped bf16 checkpoints.

Compares wall time and peak RSS (of the measured process alone, via ``os.wait4``) of
  read     - reading both safetensors files once, 16 MiB at a time (the I/O floor),
  diff     - ``cl-eval diff A B --json`` (streaming, the tool under test),
  spectra  - the report's weight-only plasticity diagnostics of one checkpoint (norms, stable and
             effective rank of every matrix: ``cl_eval.geometry.checkpoint_spectra``),
  geometry - the update geometry of two consecutive updates A→B, B→A (cosine, top-1 % overlap:
             ``cl_eval.geometry.update_geometry``), two passes over the same two files,
  naive    - loading both models into torch (``safetensors.torch.load_file``) and diffing,
each with the files in the page cache ("hot") and after dropping them from it with
``posix_fadvise(DONTNEED)`` ("cold"); and the BLAS floor of the spectra, timed inside a process
on matrices already in memory: the float32 Gram matrix (``x.T @ x``, syrk) of every matrix of
the same shapes, and apart the float64 eigenvalues of those Gram matrices. Goals: peak RSS of
diff, spectra and geometry < 1.5 GB; diff <= 2x read; geometry <= 6x read; spectra <= 2x the
Gram floor. ``--compare PYTHON`` runs another checkout's code (e.g. ``/tmp/base/.venv/bin/python``)
on the same files, interleaved with each mode (hot, ``--compare-repeat`` times).

    uv run python bench/weight_diff.py            # full 0.5B shapes (~2 GB of temp files)
    uv run python bench/weight_diff.py --layers 4 # quicker, same tensor shapes
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

QWEN_05B = {
    "hidden": 896,
    "layers": 24,
    "intermediate": 4864,
    "vocab": 151936,
    "heads": 14,
    "kv_heads": 2,
}

READ = """
import sys
buf = bytearray(16 << 20)
for p in sys.argv[1:]:
    with open(p, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
"""

NAIVE = """
import sys, torch
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
sq_d = sq_a = 0.0
for k, w0 in a.items():
    w0, w1 = w0.float(), b[k].float()
    d = w1 - w0
    sq_d += float(d.double().pow(2).sum()); sq_a += float(w0.double().pow(2).sum())
    (d == 0).sum(); (d.abs() <= 1e-5).sum()
print((sq_d / sq_a) ** 0.5)
"""


SPECTRA = """
import sys
from pathlib import Path
from cl_eval.geometry import checkpoint_spectra
print(len(checkpoint_spectra(Path(sys.argv[1])).matrices))
"""

GEOMETRY = """
import sys
from pathlib import Path
from cl_eval.geometry import update_geometry
a, b = Path(sys.argv[1]), Path(sys.argv[2])
print(update_geometry(a, b, b, a).cosine["all"])
"""


BLAS_FLOOR = """
import sys, time
import numpy as np
from threadpoolctl import threadpool_limits
from weight_diff import shapes
rng = np.random.default_rng(0)
mats = [rng.standard_normal(s, dtype=np.float32) for s in shapes(int(sys.argv[1])).values()
        if len(s) == 2]
for limit in (None, 1):  # BLAS's own threads, and one
    gram = eig = 0.0
    with threadpool_limits(limit, user_api="blas"):
        for x in mats:
            t0 = time.perf_counter()
            g = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
            gram += time.perf_counter() - t0
            g = g.astype(np.float64)
            t0 = time.perf_counter()
            np.linalg.eigvalsh(g)
            eig += time.perf_counter() - t0
    print(gram, eig)
"""


def shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """Qwen2.5-0.5B parameter shapes (tied embeddings: no lm_head.weight)."""
    h, i, v = QWEN_05B["hidden"], QWEN_05B["intermediate"], QWEN_05B["vocab"]
    kv = h // QWEN_05B["heads"] * QWEN_05B["kv_heads"]
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(layers):
        p = f"model.layers.{n}."
        out |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    out["model.norm.weight"] = (h,)
    return out


def build(root: Path, layers: int) -> tuple[Path, Path, int]:
    """Two checkpoints: B = A + a small update that bf16 rounding hides for many weights."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    a, b = {}, {}
    for name, shape in shapes(layers).items():
        w = torch.randn(shape, generator=g) * 0.02
        a[name] = w.bfloat16()
        b[name] = (w + 2e-5 * torch.randn(shape, generator=g)).bfloat16()
    cfg = json.dumps({"model_type": "qwen2", "tie_word_embeddings": True})
    for d, t in (("a", a), ("b", b)):
        (root / d).mkdir()
        (root / d / "config.json").write_text(cfg)
        save_file(t, root / d / "model.safetensors")
    os.sync()
    return root / "a", root / "b", sum(x.numel() for x in a.values())


def drop_cache(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(cmd: list[str], stderr: int | None = subprocess.STDOUT) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MiB, stdout) of one child process; its stderr goes into stdout,
    or with ``stderr=None`` to this terminal (progress bars)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=stderr)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]} failed:\n{text[-2000:]}")
    return wall, usage.ru_maxrss / 1024, text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=QWEN_05B["layers"])
    ap.add_argument("--repeat", type=int, default=2, help="hot runs per mode (best time kept)")
    ap.add_argument(
        "--skip-naive", action="store_true", help="skip the load-both-in-torch baseline"
    )
    ap.add_argument("--dir", type=Path, default=None, help="where to write the checkpoints")
    ap.add_argument("--compare", type=Path, help="python of another checkout to run as well")
    ap.add_argument("--compare-repeat", type=int, default=1, help="its hot runs per mode")
    ap.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build_only:
        print(build(args.build_only, args.layers)[2])
        return
    cl_eval = Path(sys.executable).parent / "cl-eval"
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        t0 = time.perf_counter()
        # Built in a child: a parent holding the tensors would inflate every child's ru_maxrss
        # (Linux carries the high-water mark of the forked parent image across exec).
        numel = int(
            subprocess.run(
                [sys.executable, __file__, "--build-only", tmp, "--layers", str(args.layers)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()[-1]
        )
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        files = [a / "model.safetensors", b / "model.safetensors"]
        size = sum(f.stat().st_size for f in files)
        print(
            f"built 2 x {numel / 1e6:.1f}M-parameter bf16 checkpoints ({size / 2**30:.2f} GiB "
            f"in all) in {time.perf_counter() - t0:.1f}s; {os.cpu_count()} CPUs, load average "
            f"{os.getloadavg()[0]:.1f}"
        )

        def modes(python: str) -> dict[str, list[str]]:
            bin_dir = Path(python).parent
            return {
                "read": [python, "-c", READ, *map(str, files)],
                "diff": [str(bin_dir / "cl-eval"), "diff", str(a), str(b), "--json"],
                "spectra": [python, "-c", SPECTRA, str(a)],
                "geometry": [python, "-c", GEOMETRY, str(a), str(b)],
            }

        new = modes(sys.executable)
        assert Path(new["diff"][0]) == cl_eval
        if not args.skip_naive:
            new["naive"] = [sys.executable, "-c", NAIVE, *map(str, files)]
        old = modes(str(args.compare)) if args.compare else {}
        measure(new["read"])  # warm the page cache
        rows, old_rows = {}, {}
        for name, cmd in new.items():
            hot = [measure(cmd) for _ in range(args.repeat)]
            if name in old and name != "read":
                old_hot = [measure(old[name]) for _ in range(args.compare_repeat)]
                old_rows[name] = (min(h[0] for h in old_hot), max(h[1] for h in old_hot))
            drop_cache(files)
            cold = measure(cmd)
            rows[name] = (min(h[0] for h in hot), max(h[1] for h in hot), cold[0], cold[1])
            if name == "diff":
                g = json.loads(hot[0][2])["global"]
                print(
                    f"diff: rel_l2={g['rel_l2']:.4e} unchanged bits={g['unchanged_bitwise']:.2%} "
                    f"|Δ|<=1e-5={g['unchanged_atol']:.2%} rel={g['unchanged_rel']:.2%}"
                )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
        out = subprocess.run(
            [sys.executable, "-c", BLAS_FLOOR, str(args.layers)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout.split()
        # the better of BLAS's own threads and one thread, for each part
        gram, eig = min(float(out[0]), float(out[2])), min(float(out[1]), float(out[3]))
        print(
            f"\n{'mode':<8} {'hot wall s':>10} {'hot peak RSS MiB':>17} {'cold wall s':>12} "
            f"{'cold peak RSS MiB':>18}"
            + (f" {'old hot wall s':>15} {'old/new':>8}" if old else "")
        )
        for name, (hw, hr, cw, cr) in rows.items():
            line = f"{name:<8} {hw:>10.2f} {hr:>17.0f} {cw:>12.2f} {cr:>18.0f}"
            if name in old_rows:
                line += f" {old_rows[name][0]:>15.2f} {old_rows[name][0] / hw:>7.1f}x"
            print(line)
        r = rows["read"]
        print(
            f"\nfloors: read {r[0]:.2f}s hot, {r[2]:.2f}s cold; float32 Gram matrices "
            f"{gram:.2f}s, their float64 eigenvalues {eig:.2f}s (in memory; the faster of "
            "BLAS's threads and one)"
        )
        for name, goal in (("diff", 2), ("geometry", 6)):
            d = rows[name]
            line = (
                f"{name} / read: hot {d[0] / r[0]:.2f}x, cold {d[2] / r[2]:.2f}x (goal <= {goal}x)"
            )
            if name in old_rows:
                line += f"; old {old_rows[name][0] / r[0]:.1f}x hot"
            print(line)
        sp = rows["spectra"]
        line = (f"spectra / Gram floor: {sp[0] / gram:.2f}x hot (goal <= 2x); / (Gram + "
                f"eigenvalues) {sp[0] / (gram + eig):.2f}x")  # fmt: skip
        if "spectra" in old_rows:
            line += f"; old {old_rows['spectra'][0] / gram:.1f}x the Gram floor"
        print(line)
        for name in ("diff", "spectra", "geometry"):
            peak = max(rows[name][1], rows[name][3])
            print(f"{name} peak RSS: {peak:.0f} MiB (goal < 1536 MiB)")
        if "naive" in rows:
            n = rows["naive"]
            print(f"naive load-both: {n[0]:.2f}s, {max(n[1], n[3]):.0f} MiB")


if __name__ == "__main__":
    main()
