"""Streaming weight change between two HF safetensors checkpoints.

The safetensors layout is an 8-byte little-endian header length, a JSON header (name -> dtype,
shape, data_offsets) and the raw little-endian tensor bytes. We read the header ourselves and pull
each tensor in fixed-size element chunks with ``os.preadv`` into small buffers: unlike a memory map
(``safe_open``), the pages read do not stay resident in this process, so peak RSS is bounded by a
few chunks, not by the two models. bf16 is widened to float32 by shifting its bits (numpy has no
bf16): products of bf16 (and f16) values are exact in float32, Δ² rounds with relative error below
2^-24, and every sum is accumulated in float64. float32 checkpoints are widened to float64.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

CHUNK_ELEMS = 1 << 17
"""Elements per chunk: 512 KiB of float32 per operand (L2-sized), ~10 MiB of buffers per thread."""

ATOL = 1e-5
"""Absolute tolerance of the Mukherjee et al. (2025) sparsity test."""

ETA = 1e-3
"""Relative tolerance of the bf16-aware test |Δ| <= η·max(|w0|, |w1|) (Zhu et al. 2025)."""

_FLOAT_DTYPES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8}
_DTYPE_BYTES = {**_FLOAT_DTYPES, "BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "I32": 4, "I64": 8}
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
_PROJ = re.compile(r"\.(q|k|v|o|gate|up|down)_proj\.")
MODULES = ("q", "k", "v", "o", "gate", "up", "down", "norm", "embed", "lm_head", "other")
EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"


class CheckpointError(Exception):
    """A path that is not a readable safetensors checkpoint."""


@dataclass(frozen=True)
class TensorRef:
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, TensorRef]
    config: dict

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))


def read_header(file: Path) -> dict[str, TensorRef]:
    """Parse one .safetensors header into tensor references (absolute byte ranges)."""
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError("header length is implausible")
            header = json.loads(f.read(n))
        size = file.stat().st_size
    except (OSError, ValueError, struct.error) as exc:
        raise CheckpointError(f"{file}: not a safetensors file ({exc})") from exc
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        s, e = meta["data_offsets"]
        if base + e > size:
            raise CheckpointError(f"{file}: tensor {name} runs past the end (truncated file?)")
        width = _DTYPE_BYTES.get(meta["dtype"])
        if width is not None and e - s != math.prod(meta["shape"]) * width:
            raise CheckpointError(
                f"{file}: corrupt header: tensor {name} is {meta['dtype']} {meta['shape']} but "
                f"spans {e - s} bytes"
            )
        out[name] = TensorRef(name, file, meta["dtype"], tuple(meta["shape"]), base + s, base + e)
    return out


def open_checkpoint(path: Path) -> Checkpoint:
    """Open an HF model dir (single or sharded safetensors), a veRL actor dir, or one file."""
    path = Path(path)
    if path.is_file():
        return Checkpoint(path, read_header(path), _config(path.parent))
    for sub in ("", "huggingface", "actor/huggingface"):
        d = path / sub if sub else path
        index = d / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{index}: unreadable index ({exc})") from exc
            tensors: dict[str, TensorRef] = {}
            for shard in sorted(set(weight_map.values())):
                if not (d / shard).is_file():
                    raise CheckpointError(f"{d / shard}: shard named in the index is missing")
                for name, ref in read_header(d / shard).items():
                    if weight_map.get(name) == shard:
                        tensors[name] = ref
            return Checkpoint(d, tensors, _config(d))
        files = sorted(d.glob("*.safetensors")) if d.is_dir() else []
        if files:
            tensors = {}
            for f in files:
                tensors.update(read_header(f))
            return Checkpoint(d, tensors, _config(d))
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json found")


def _config(d: Path) -> dict:
    try:
        return json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        return {}


class LayerModule(NamedTuple):
    """Where a parameter sits: its layer (None outside the layers: embeddings, final norm,
    lm_head) and its module type. JSON spells it ``<layer>:<module>`` (``-`` for no layer)."""

    layer: int | None
    module: str

    def __str__(self) -> str:
        return f"{'-' if self.layer is None else self.layer}:{self.module}"


def classify(name: str) -> LayerModule:
    """The layer and module type of a parameter name (Qwen2/Llama naming)."""
    m = _LAYER.search(name)
    layer = int(m.group(1)) if m else None
    if "embed_tokens" in name or name.endswith("wte.weight"):
        return LayerModule(layer, "embed")
    if name.startswith("lm_head"):
        return LayerModule(layer, "lm_head")
    p = _PROJ.search(name)
    if p:
        return LayerModule(layer, p.group(1))
    if "norm" in name or "ln_" in name:
        return LayerModule(layer, "norm")
    return LayerModule(layer, "other")


@dataclass
class TensorStats:
    """Float64 accumulators of one tensor (or an aggregate of tensors)."""

    numel: int = 0
    sq_a: float = 0.0
    sq_d: float = 0.0
    max_abs: float = 0.0
    eq_bits: int = 0
    eq_atol: int = 0
    eq_rel: int = 0

    def add(self, o: TensorStats) -> None:
        self.numel += o.numel
        self.sq_a += o.sq_a
        self.sq_d += o.sq_d
        self.max_abs = max(self.max_abs, o.max_abs)
        self.eq_bits += o.eq_bits
        self.eq_atol += o.eq_atol
        self.eq_rel += o.eq_rel

    def summary(self) -> dict[str, float | int | None]:
        """Norm-pooled relative change and the three unchanged fractions."""
        n = self.numel or 1
        na = math.sqrt(self.sq_a)
        return {
            "numel": self.numel,
            "l2_delta": math.sqrt(self.sq_d),
            "l2_a": na,
            "rel_l2": math.sqrt(self.sq_d) / na if na else None,
            "max_abs_delta": self.max_abs,
            "unchanged_bitwise": self.eq_bits / n,
            "unchanged_atol": self.eq_atol / n,
            "unchanged_rel": self.eq_rel / n,
        }


class _Workspace:
    """Per-thread buffers reused for every chunk: fresh large allocations would cost a page fault
    per 4 KiB on every chunk (glibc serves them with mmap), several times the arithmetic."""

    def __init__(self, chunk: int) -> None:
        self.raw = (bytearray(chunk * 8), bytearray(chunk * 8))
        self.wide = (np.empty(chunk, np.uint32), np.empty(chunk, np.uint32))
        self.f32 = [np.empty(chunk, np.float32) for _ in range(4)]
        self.f64 = [np.empty(chunk, np.float64) for _ in range(4)]
        self.mask = np.empty(chunk, np.bool_)


_local = threading.local()


def _workspace(chunk: int) -> _Workspace:
    ws = getattr(_local, "ws", None)
    if ws is None or len(ws.mask) < chunk:
        ws = _local.ws = _Workspace(chunk)
    return ws


def _read_into(fd: int, buf: bytearray, offset: int, nbytes: int) -> memoryview:
    view = memoryview(buf)[:nbytes]
    got = 0
    while got < nbytes:
        n = os.preadv(fd, [view[got:]], offset + got)
        if n == 0:
            raise CheckpointError("unexpected end of file while reading a tensor")
        got += n
    return view


def _read(fd: int, offset: int, nbytes: int) -> bytes:
    return bytes(_read_into(fd, bytearray(nbytes), offset, nbytes))


def _widen(raw: memoryview, dtype: str, ws: _Workspace, side: int, n: int) -> np.ndarray:
    """Decode n stored values: float32 for 2-byte types (bf16 by a 16-bit shift), else float64."""
    if dtype == "BF16":
        u = ws.wide[side][:n]
        np.copyto(u, np.frombuffer(raw, np.uint16))
        np.left_shift(u, 16, out=u)
        return u.view(np.float32)
    out = (ws.f32 if dtype == "F16" else ws.f64)[side][:n]
    np.copyto(
        out, np.frombuffer(raw, {"F16": np.float16, "F32": np.float32}.get(dtype, np.float64))
    )
    return out


BF16_REL_EXACT = 2.0**-9
"""Two different finite bf16 values always differ by more than 2^-9·max(|w0|,|w1|), so for η below
this the relative test on bf16 pairs is value equality (``x == y``: bit equality, plus ±0 == ∓0),
one comparison instead of five passes."""


def _chunk_stats(
    fds: dict[Path, int], a: TensorRef, b: TensorRef, lo: int, hi: int, atol: float, eta: float
) -> TensorStats:
    """Accumulate elements [lo, hi) of a pair of tensors."""
    n = hi - lo
    ws = _workspace(n)
    sa, sb = _FLOAT_DTYPES[a.dtype], _FLOAT_DTYPES[b.dtype]
    ra = _read_into(fds[a.file], ws.raw[0], a.start + lo * sa, n * sa)
    rb = _read_into(fds[b.file], ws.raw[1], b.start + lo * sb, n * sb)
    mask = ws.mask[:n]
    x, y = _widen(ra, a.dtype, ws, 0, n), _widen(rb, b.dtype, ws, 1, n)
    if x.dtype != y.dtype:
        x, y = ws.f64[2][:n], ws.f64[3][:n]
        np.copyto(x, _widen(ra, a.dtype, ws, 0, n))
        np.copyto(y, _widen(rb, b.dtype, ws, 1, n))
    d, t = (ws.f32 if x.dtype == np.float32 else ws.f64)[2:4]
    d, t = d[:n], t[:n]
    if a.dtype == b.dtype:
        ia, ib = np.frombuffer(ra, _UINT[sa]), np.frombuffer(rb, _UINT[sb])
        eq_bits = np.count_nonzero(np.equal(ia, ib, out=mask))
    else:
        eq_bits = np.count_nonzero(np.equal(x, y, out=mask))
    if a.dtype == b.dtype == "BF16" and eta < BF16_REL_EXACT:
        eq_rel = np.count_nonzero(np.equal(x, y, out=mask))
    else:
        eq_rel = None
    np.subtract(y, x, out=d)
    sq_a = float(np.add.reduce(np.multiply(x, x, out=t), dtype=np.float64))
    sq_d = float(np.add.reduce(np.multiply(d, d, out=t), dtype=np.float64))
    np.abs(d, out=d)
    eq_atol = np.count_nonzero(np.less_equal(d, atol, out=mask))
    max_abs = float(d.max()) if n else 0.0
    if eq_rel is None:
        np.abs(x, out=t)
        np.abs(y, out=x)
        np.maximum(x, t, out=t)
        t *= eta
        eq_rel = np.count_nonzero(np.less_equal(d, t, out=mask))
    return TensorStats(n, sq_a, sq_d, max_abs, int(eq_bits), int(eq_atol), int(eq_rel))


@dataclass
class WeightDiff:
    a: Path
    b: Path
    tensors: dict[str, TensorStats]
    dtypes: dict[str, str]
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def aggregate(self, by: str) -> dict[str, TensorStats]:
        """Pool stats by "layer" or "module" (keys "3", "q"; "-": no layer)."""
        out: dict[str, TensorStats] = defaultdict(TensorStats)
        for name, st in self.tensors.items():
            layer, module = classify(name)
            if by == "layer":
                out["-" if layer is None else str(layer)].add(st)
            else:
                out[module].add(st)
        return dict(out)

    def by_layer_module(self) -> dict[LayerModule, TensorStats]:
        """Stats pooled per layer and module."""
        out: dict[LayerModule, TensorStats] = defaultdict(TensorStats)
        for name, st in self.tensors.items():
            out[classify(name)].add(st)
        return dict(out)

    def total(self) -> TensorStats:
        t = TensorStats()
        for st in self.tensors.values():
            t.add(st)
        return t

    def layer_module_matrix(self, value: str = "rel_l2") -> tuple[list[str], list[str], np.ndarray]:
        """(row labels, modules, matrix) of one summary value.

        Rows are the layers plus a last
        "non-layer" row (embeddings, final norm, lm_head); NaN where a row lacks the module."""
        agg = self.by_layer_module()
        layers = sorted({k.layer for k in agg if k.layer is not None})
        outside = ["non-layer"] if any(k.layer is None for k in agg) else []
        rows = [str(i) for i in layers] + outside
        mods = [m for m in MODULES if any(k.module == m for k in agg)]
        M = np.full((len(rows), len(mods)), np.nan)
        for k, st in agg.items():
            v = st.summary()[value]
            row = "non-layer" if k.layer is None else str(k.layer)
            M[rows.index(row), mods.index(k.module)] = np.nan if v is None else v
        return rows, mods, M

    def to_dict(self, per_tensor: bool = True) -> dict:
        dtype_numel: dict[str, int] = defaultdict(int)
        for name, st in self.tensors.items():
            dtype_numel[self.dtypes[name]] += st.numel
        out = {
            "a": str(self.a),
            "b": str(self.b),
            "tests": {
                "unchanged_bitwise": "stored bits identical",
                "unchanged_atol": f"|Δ| <= {ATOL:g} (Mukherjee et al. 2025)",
                "unchanged_rel": f"|Δ| <= {ETA:g}·max(|w0|,|w1|) (bf16-aware, Zhu et al. 2025); "
                "for bf16 storage any η < 2^-9 equals bit-exact except signed zeros",
            },
            "rel_l2_definition": "sqrt(Σ‖Δ_t‖²) / sqrt(Σ‖W0_t‖²) over the pooled tensors",
            "dtypes": dict(dtype_numel),
            "global": self.total().summary(),
            "by_module": {k: v.summary() for k, v in sorted(self.aggregate("module").items())},
            "by_layer": {
                k: v.summary()
                for k, v in sorted(
                    self.aggregate("layer").items(),
                    key=lambda kv: (kv[0] == "-", int(kv[0]) if kv[0] != "-" else 0),
                )
            },
            "skipped": self.skipped,
            "warnings": self.warnings,
        }
        if per_tensor:
            out["tensors"] = {
                k: {"dtype": self.dtypes[k], **v.summary()} for k, v in self.tensors.items()
            }
        return out


def _same_bytes(fds: dict[Path, int], a: TensorRef, b: TensorRef) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    step = CHUNK_ELEMS * 8
    for off in range(0, a.end - a.start, step):
        n = min(step, a.end - a.start - off)
        if _read(fds[a.file], a.start + off, n) != _read(fds[b.file], b.start + off, n):
            return False
    return True


def _drop_tied(ck: Checkpoint, names: set[str], fds: dict[Path, int], warnings: list[str]) -> None:
    """Count tied embeddings once: drop lm_head when config ties it and it equals embed_tokens."""
    if LM_HEAD not in names or not ck.tied:
        return
    if EMBED not in ck.tensors or _same_bytes(fds, ck.tensors[LM_HEAD], ck.tensors[EMBED]):
        names.discard(LM_HEAD)
    else:
        warnings.append(f"{ck.path}: tie_word_embeddings but lm_head differs; counted separately")


def _work(pairs: list[tuple[TensorRef, TensorRef]], chunk: int) -> Iterator[tuple[int, int, int]]:
    for i, (a, _) in enumerate(pairs):
        n = a.numel
        for lo in range(0, n, chunk):
            yield i, lo, min(n, lo + chunk)


def diff_checkpoints(
    path_a: Path,
    path_b: Path,
    *,
    atol: float = ATOL,
    eta: float = ETA,
    chunk: int = CHUNK_ELEMS,
    workers: int | None = None,
) -> WeightDiff:
    """Stream every tensor pair of two checkpoints; memory is bounded by ``workers`` chunks."""
    ca, cb = open_checkpoint(path_a), open_checkpoint(path_b)
    warnings: list[str] = []
    skipped: list[str] = []
    files = {r.file for r in ca.tensors.values()} | {r.file for r in cb.tensors.values()}
    fds = {f: os.open(f, os.O_RDONLY) for f in files}
    try:
        names_a, names_b = set(ca.tensors), set(cb.tensors)
        _drop_tied(ca, names_a, fds, warnings)
        _drop_tied(cb, names_b, fds, warnings)
        skipped += [f"{n}: only in A" for n in sorted(names_a - names_b)]
        skipped += [f"{n}: only in B" for n in sorted(names_b - names_a)]
        pairs: list[tuple[TensorRef, TensorRef]] = []
        for n in sorted(names_a & names_b, key=_param_order):
            a, b = ca.tensors[n], cb.tensors[n]
            if a.shape != b.shape:
                skipped.append(f"{n}: shape {list(a.shape)} vs {list(b.shape)}")
            elif a.dtype not in _FLOAT_DTYPES or b.dtype not in _FLOAT_DTYPES:
                skipped.append(f"{n}: dtype {a.dtype}/{b.dtype} is not a float type")
            else:
                pairs.append((a, b))
        stats = {a.name: TensorStats() for a, _ in pairs}
        workers = workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            for i, st in _bounded_map(pool, pairs, fds, chunk, atol, eta, workers):
                stats[pairs[i][0].name].add(st)
    finally:
        for fd in fds.values():
            os.close(fd)
    dtypes = {a.name: a.dtype if a.dtype == b.dtype else f"{a.dtype}->{b.dtype}" for a, b in pairs}
    if skipped:
        warnings.append(f"{len(skipped)} tensor(s) not compared (see skipped)")
    return WeightDiff(Path(path_a), Path(path_b), stats, dtypes, skipped, warnings)


def _bounded_map(
    pool: ThreadPoolExecutor,
    pairs: list[tuple[TensorRef, TensorRef]],
    fds: dict[Path, int],
    chunk: int,
    atol: float,
    eta: float,
    workers: int,
) -> Iterator[tuple[int, TensorStats]]:
    """Chunks in order with at most ``2*workers`` in flight, so buffers never pile up."""
    pending: deque[tuple[int, Future[TensorStats]]] = deque()
    for i, lo, hi in _work(pairs, chunk):
        pending.append((i, pool.submit(_chunk_stats, fds, *pairs[i], lo, hi, atol, eta)))
        if len(pending) >= 2 * workers:
            j, fut = pending.popleft()
            yield j, fut.result()
    while pending:
        j, fut = pending.popleft()
        yield j, fut.result()


def _param_order(name: str) -> tuple[int, str]:
    layer, _ = classify(name)
    return (-1 if layer is None else layer, name)
