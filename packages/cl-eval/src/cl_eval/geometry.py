"""Weight-only plasticity diagnostics, streamed from safetensors with numpy (no torch).

Per matrix: Frobenius norm, stable rank ‖W‖_F²/σ_max² and effective rank exp(H(σ/Σσ)) (Roy &
Vetterli 2007). Singular values come from the Gram matrix of the smaller side, accumulated over
row chunks, so memory is that Gram matrix plus one 32 MB chunk (for the 151936 × 896 embedding of
Qwen2.5-0.5B, not 0.5 GB). The Gram matrix is formed in float32 by BLAS (half the time of float64
and no widened copy), summed over chunks and eigen-decomposed in float64; where float32 rounding
could move an effective rank by more than ``RANK_TOL`` the matrix is redone in float64
(``gram_spectrum``).

Per pair of consecutive stages: the cosine between their updates Δ_k = final_k − initial_k and
Δ_{k+1} per module, and the Jaccard overlap of their top-1 % |Δ| coordinates: do later stages
rewrite the weights earlier ones moved? One streaming pass takes the dot products, the exact
top-1 % threshold of every module and how many coordinates reach it (the largest |Δ| kept as they
come, see ``_Largest``); a second counts the coordinates above both stages' thresholds. A tensor
that two of the four models share (stage k's final model is stage k+1's initial one, hard-linked)
is read once per chunk.
"""

from __future__ import annotations

import math
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cl_eval.weights import (
    _FLOAT_DTYPES,
    LayerModule,
    TensorRef,
    _read_into,
    bounded_map,
    classify,
    decode_float32,
    open_checkpoint,
)

Progress = Callable[[float], None]
"""Told the fraction of a call's work just done (for a progress bar)."""

GRAM_CHUNK_BYTES = 32 << 20
"""Rows decoded at a time for a Gram matrix (as float32): bounds memory for any matrix shape."""
GRAM_MAX_SIDE = 8192
"""Largest smaller side whose Gram matrix is formed (512 MB in float64); larger ones are skipped."""
GRAM_NOISE = 8.0
"""Rounding of a computed Gram matrix, in units of u·‖G‖_F (u: the unit roundoff): eigenvalues
below it are treated as unresolved (``gram_spectrum``)."""
RANK_TOL = 1e-5
"""Largest relative error of an effective rank computed from a float32 Gram matrix (the report
prints ranks of ~10³ to one decimal); a matrix whose float32 spectrum cannot guarantee it is
recomputed in float64."""
STREAM_CHUNK = 1 << 17
"""Elements per chunk of the update geometry: its ~8 float32 operands stay in a core's L2 cache
(smaller chunks cost more in Python overhead than they save)."""
DOT_BLOCK = 4096
TOP_FRACTION = 0.01
_TINY = np.nextafter(np.float32(0), np.float32(1))
"""The smallest positive float32: the least |Δ| that can count among the largest (0 never does)."""


@dataclass
class Spectrum:
    fro: float
    sigma_max: float
    effective_rank: float
    stable_rank: float

    def as_dict(self) -> dict[str, float]:
        return {
            "fro": self.fro,
            "sigma_max": self.sigma_max,
            "effective_rank": self.effective_rank,
            "stable_rank": self.stable_rank,
        }


def spectrum_of(singular_values: np.ndarray) -> Spectrum:
    s = np.sort(np.clip(singular_values, 0, None))[::-1]
    total = float(s.sum())
    fro2 = float((s**2).sum())
    if total == 0:
        return Spectrum(0.0, 0.0, 0.0, 0.0)
    p = s[s > 0] / total
    return Spectrum(
        fro=math.sqrt(fro2),
        sigma_max=float(s[0]),
        effective_rank=float(np.exp(-(p * np.log(p)).sum())),
        stable_rank=fro2 / float(s[0]) ** 2,
    )


_local = threading.local()
"""Each worker thread's reusable buffers."""


class _GramBuffers:
    """One checkpoint's read and decode buffers, grown to the largest chunk and reused: a fresh
    32 MB allocation per chunk would cost a page fault per 4 KiB."""

    def __init__(self) -> None:
        self.raw = bytearray()
        self.out = np.empty(0, np.float32)

    def read(self, fd: int, ref: TensorRef, lo: int, hi: int) -> np.ndarray:
        width = _FLOAT_DTYPES[ref.dtype]
        if len(self.raw) < (hi - lo) * width:
            self.raw = bytearray((hi - lo) * width)
        if ref.dtype != "F32" and len(self.out) < hi - lo:
            self.out = np.empty(hi - lo, np.float32)
        raw = _read_into(fd, self.raw, ref.start + lo * width, (hi - lo) * width)
        return decode_float32(raw, ref.dtype, self.out)


def gram_matrix(x: np.ndarray) -> np.ndarray:
    """The Gram matrix of the smaller side of a 2-D array (BLAS syrk, in the array's precision)."""
    return x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T


def gram_spectrum(gram: np.ndarray, unit_roundoff: float) -> Spectrum | None:
    """The spectrum of a Gram matrix computed with ``unit_roundoff``, or None where its rounding
    could move the effective rank by more than ``RANK_TOL``.

    Rounding perturbs every eigenvalue by about u·‖G‖_F (measured on 0.5B shapes: up to
    0.5 u·‖G‖_F; ``GRAM_NOISE`` allows 8×). Eigenvalues below that level are indistinguishable
    from 0 and set to 0, which recovers the rank of a rank-deficient matrix; the answer stands
    only if raising all of them to twice that level would leave the effective rank within
    ``RANK_TOL``, i.e. if the spectrum's tail below ~√(u)·σ_max carries no weight."""
    eig = np.linalg.eigvalsh(gram.astype(np.float64, copy=False))
    noise = GRAM_NOISE * unit_roundoff * math.sqrt(float(np.square(eig).sum()))
    low = eig < noise
    eig[low] = 0
    s = spectrum_of(np.sqrt(eig))
    eig[low] = 2 * noise
    worst = spectrum_of(np.sqrt(eig))
    if abs(worst.effective_rank - s.effective_rank) > RANK_TOL * s.effective_rank:
        return None
    return s


def matrix_spectrum(
    fd: int, ref: TensorRef, buffers: _GramBuffers | None = None
) -> Spectrum | None:
    """Singular values of a stored 2-D matrix from the Gram matrix of its smaller side: in
    float32, or again in float64 where float32 cannot resolve the spectrum's tail. A square
    matrix goes to float64 at once: a generic one has singular values down to ~σ_max/n
    (Marchenko–Pastur at aspect ratio 1), far below what float32 resolves."""
    rows, cols = ref.shape
    if min(rows, cols) > GRAM_MAX_SIDE:
        return None
    buffers = buffers or _GramBuffers()
    for dtype in (np.float64,) if rows == cols else (np.float32, np.float64):
        if cols <= rows:  # stream rows: G = Σ XᵀX (cols × cols)
            gram = np.zeros((cols, cols), np.float64)
            block = max(1, GRAM_CHUNK_BYTES // (4 * cols))
            for r in range(0, rows, block):
                n = min(rows, r + block) - r
                x = buffers.read(fd, ref, r * cols, (r + n) * cols).reshape(n, cols)
                gram += gram_matrix(x.astype(dtype, copy=False))
        else:  # the whole (short, wide) matrix is at most GRAM_MAX_SIDE rows: W Wᵀ
            x = buffers.read(fd, ref, 0, ref.numel).reshape(rows, cols)
            gram = gram_matrix(x.astype(dtype, copy=False))
        s = gram_spectrum(gram, float(np.finfo(dtype).eps) / 2)
        if s is not None:
            return s
    return spectrum_of(np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0, None)))


@dataclass
class Spectra:
    """Per matrix of one checkpoint: its spectrum; per (layer, module): pooled norm and ranks."""

    path: Path
    matrices: dict[str, Spectrum] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def by_layer_module(self) -> dict[LayerModule, dict[str, float]]:
        """Per layer and module: norm (pooled over the module's matrices) and mean ranks."""
        acc: dict[LayerModule, list[Spectrum]] = defaultdict(list)
        for name, sp in self.matrices.items():
            acc[classify(name)].append(sp)
        return {
            key: {
                "fro": math.sqrt(sum(s.fro**2 for s in sps)),
                "effective_rank": float(np.mean([s.effective_rank for s in sps])),
                "stable_rank": float(np.mean([s.stable_rank for s in sps])),
            }
            for key, sps in acc.items()
        }


def one_blas_thread() -> Any:
    """BLAS limited to one thread, while our own threads work on one matrix or chunk each: for
    896-wide matrices BLAS's threads spin more than they compute, and on a busy machine (two
    cores, other processes) an eigendecomposition took 4-6x longer with two BLAS threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def checkpoint_spectra(
    path: Path, *, workers: int | None = None, progress: Progress | None = None
) -> Spectra:
    """Spectra of every 2-D float weight matrix of a checkpoint (tied lm_head counted once), one
    matrix per thread (``workers``: default one per CPU, at most 4: ~60 MB of buffers each)."""
    ck = open_checkpoint(path)
    out = Spectra(Path(path))
    matrices = [
        ref
        for name, ref in sorted(ck.tensors.items())
        if len(ref.shape) == 2
        and ref.dtype in _FLOAT_DTYPES
        and not (name == "lm_head.weight" and ck.tied)
    ]
    total = sum(r.numel for r in matrices) or 1
    fds = {f: os.open(f, os.O_RDONLY) for f in {r.file for r in matrices}}

    def spectrum(ref: TensorRef) -> Spectrum | None:
        buffers = getattr(_local, "gram", None) or _GramBuffers()
        _local.gram = buffers
        return matrix_spectrum(fds[ref.file], ref, buffers)

    try:
        with one_blas_thread(), ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
            for ref, sp in zip(matrices, pool.map(spectrum, matrices), strict=True):
                if sp is None:
                    out.skipped.append(
                        f"{ref.name}: {list(ref.shape)} too large for its Gram matrix"
                    )
                else:
                    out.matrices[ref.name] = sp
                if progress:
                    progress(ref.numel / total)
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


@dataclass
class UpdateGeometry:
    """How two consecutive stages' updates relate, per module and over all weights."""

    cosine: dict[str, float]
    overlap: dict[str, float]
    """Jaccard overlap of the top-1 % |Δ| coordinates; chance level is about 0.005."""
    selected: dict[str, tuple[float, float]]
    """The fraction each stage's set really holds (ties at the threshold can make it larger)."""


class _Largest:
    """The k-th largest value of a stream in one pass and O(k) memory: keeps the values above a
    floor, raised to the k-th largest kept whenever more than 2k are kept, and counts those equal
    to the floor (stored weights take few distinct values, so |Δ| has many ties)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.floor = _TINY
        self.above: list[np.ndarray] = []
        self.n_above = 0
        self.at_floor = 0

    def offer(self, values: np.ndarray) -> tuple[np.ndarray, int, np.float32]:
        """What ``add`` needs of some values, against the floor as it is now: those above it and
        the number equal to it (done in the worker threads, on their candidates)."""
        floor = self.floor
        return values[values > floor], int(np.count_nonzero(values == floor)), floor

    def add(self, above: np.ndarray, ties: int, floor: np.float32) -> None:
        """Take an ``offer``; the floor may have risen since it was made."""
        if floor != self.floor:
            ties = int(np.count_nonzero(above == self.floor))
            above = above[above > self.floor]
        self.at_floor += ties
        if len(above):
            self.above.append(above)
            self.n_above += len(above)
        if self.n_above > 2 * self.k + STREAM_CHUNK:
            values = np.concatenate(self.above)
            self.floor = np.partition(values, len(values) - self.k)[len(values) - self.k]
            self.at_floor = int(np.count_nonzero(values == self.floor))
            self.above = [values[values > self.floor]]
            self.n_above = len(self.above[0])

    def kth(self) -> np.float32:
        """The k-th largest value added, or the floor if fewer than k exceed it (then it is the
        k-th largest itself, or fewer than k values were positive)."""
        if self.n_above < self.k:
            return self.floor
        values = np.concatenate(self.above)
        return np.partition(values, len(values) - self.k)[len(values) - self.k]

    def at_least(self, threshold: np.float32) -> int:
        """How many values added are at least ``threshold`` (not below the floor)."""
        above = sum(int(np.count_nonzero(v >= threshold)) for v in self.above)
        return above + (self.at_floor if threshold == self.floor else 0)


@dataclass(frozen=True)
class _Param:
    """One parameter of the four models: its distinct stored copies and which one each reads."""

    module: str
    numel: int
    sources: tuple[TensorRef, ...]
    which: tuple[int, int, int, int]


class _Workspace:
    """Per-thread buffers, reused for every chunk (see ``weights._Workspace``)."""

    def __init__(self) -> None:
        self.raw = [bytearray(STREAM_CHUNK * 8) for _ in range(4)]
        self.val = [np.empty(STREAM_CHUNK, np.float32) for _ in range(4)]
        self.da = np.empty(STREAM_CHUNK, np.float32)
        self.db = np.empty(STREAM_CHUNK, np.float32)
        self.ma = np.empty(STREAM_CHUNK, np.bool_)
        self.mb = np.empty(STREAM_CHUNK, np.bool_)


def _workspace() -> _Workspace:
    ws = getattr(_local, "geometry", None)
    if ws is None:
        ws = _local.geometry = _Workspace()
    return ws


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """x·y as float32 dot products of ``DOT_BLOCK`` elements summed in float64: as fast as one
    float32 dot product over the chunk, whose rounding (~1e-6 relative) would show in a cosine."""
    n = len(x) - len(x) % DOT_BLOCK
    blocks = np.vecdot(x[:n].reshape(-1, DOT_BLOCK), y[:n].reshape(-1, DOT_BLOCK))
    return float(blocks.sum(dtype=np.float64)) + float(np.dot(x[n:], y[n:]))


def _abs_deltas(
    fds: dict[Path, int], p: _Param, lo: int, hi: int, ws: _Workspace, dots: bool
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """|Δa| and |Δb| of elements [lo, hi) (in ``ws``), and if ``dots`` Δa·Δb, ‖Δa‖² and ‖Δb‖².
    The differences are exact in float32 for bf16 storage and, by Sterbenz's lemma, for float32
    weights that an update changes by less than half."""
    n = hi - lo
    vals = []
    for i, ref in enumerate(p.sources):
        width = _FLOAT_DTYPES[ref.dtype]
        raw = _read_into(fds[ref.file], ws.raw[i], ref.start + lo * width, n * width)
        vals.append(decode_float32(raw, ref.dtype, ws.val[i]))
    a0, a1, b0, b1 = (vals[j] for j in p.which)
    da, db = np.subtract(a1, a0, out=ws.da[:n]), np.subtract(b1, b0, out=ws.db[:n])
    products = (_dot(da, db), _dot(da, da), _dot(db, db)) if dots else (0.0, 0.0, 0.0)
    return np.abs(da, out=da), np.abs(db, out=db), products


def _params(paths: tuple[Path, Path, Path, Path]) -> list[_Param]:
    """The float parameters all four models hold in one shape (a tied lm_head counted once)."""
    cks = [open_checkpoint(p) for p in paths]
    names = sorted(
        n
        for n in set.intersection(*(set(c.tensors) for c in cks))
        if all(c.tensors[n].dtype in _FLOAT_DTYPES for c in cks)
        and len({c.tensors[n].shape for c in cks}) == 1
        and not (n == "lm_head.weight" and cks[0].tied)
    )
    identity = {}
    for c in cks:
        for r in c.tensors.values():
            if r.file not in identity:
                st = r.file.stat()
                identity[r.file] = (st.st_dev, st.st_ino)
    params = []
    for n in names:
        refs = [c.tensors[n] for c in cks]
        keys = [(identity[r.file], r.start, r.dtype) for r in refs]
        distinct = list(dict.fromkeys(keys))
        params.append(
            _Param(
                classify(n).module,
                refs[0].numel,
                tuple(refs[keys.index(k)] for k in distinct),
                tuple(distinct.index(k) for k in keys),  # type: ignore[arg-type]
            )
        )
    return params


def _tasks(params: list[_Param]) -> Iterator[tuple[int, int, int]]:
    for i, p in enumerate(params):
        for lo in range(0, p.numel, STREAM_CHUNK):
            yield i, lo, min(p.numel, lo + STREAM_CHUNK)


def update_geometry(
    start_a: Path,
    end_a: Path,
    start_b: Path,
    end_b: Path,
    top: float = TOP_FRACTION,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> UpdateGeometry:
    """Δa = end_a − start_a against Δb = end_b − start_b (stage k and stage k+1)."""
    params = _params((start_a, end_a, start_b, end_b))
    totals: dict[str, int] = defaultdict(int)
    for p in params:
        totals[p.module] += p.numel
    totals["all"] = sum(p.numel for p in params)
    largest = {
        key: (_Largest(math.ceil(top * n)), _Largest(math.ceil(top * n)))
        for key, n in totals.items()
    }
    grand = 2 * (totals["all"] or 1)
    fds = {r.file: os.open(r.file, os.O_RDONLY) for p in params for r in p.sources}
    workers = workers or min(4, os.cpu_count() or 1)

    def first(task: tuple[int, int, int]) -> tuple[int, int, tuple, list[list[tuple]]]:
        i, lo, hi = task
        ws = _workspace()
        da, db, products = _abs_deltas(fds, params[i], lo, hi, ws, dots=True)
        offers = []
        for side, d, mask in ((0, da, ws.ma), (1, db, ws.mb)):
            tops = [largest[params[i].module][side], largest["all"][side]]
            floor = min(t.floor for t in tops)
            candidates = d[np.greater_equal(d, floor, out=mask[: hi - lo])]
            offers.append([t.offer(candidates) for t in tops])
        return i, hi - lo, products, offers

    def second(task: tuple[int, int, int]) -> tuple[int, int, list[int]]:
        i, lo, hi = task
        ws = _workspace()
        da, db, _ = _abs_deltas(fds, params[i], lo, hi, ws, dots=False)
        both = []
        for key in (params[i].module, "all"):
            ta, tb = thresholds[key]
            sa = np.greater_equal(da, ta, out=ws.ma[: hi - lo])
            sb = np.greater_equal(db, tb, out=ws.mb[: hi - lo])
            both.append(np.count_nonzero(np.logical_and(sa, sb, out=sa)))
        return i, hi - lo, both

    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3))
    both: dict[str, int] = defaultdict(int)
    try:
        with one_blas_thread(), ThreadPoolExecutor(workers) as pool:
            for i, n, products, offers in bounded_map(pool, first, _tasks(params), 2 * workers):
                for j, key in enumerate((params[i].module, "all")):
                    sums[key] += products
                    largest[key][0].add(*offers[0][j])
                    largest[key][1].add(*offers[1][j])
                if progress:
                    progress(n / grand)
            thresholds = {key: (la.kth(), lb.kth()) for key, (la, lb) in largest.items()}
            for i, n, per_key in bounded_map(pool, second, _tasks(params), 2 * workers):
                for key, c in zip((params[i].module, "all"), per_key, strict=True):
                    both[key] += c
                if progress:
                    progress(n / grand)
    finally:
        for fd in fds.values():
            os.close(fd)
    cosine, overlap, selected = {}, {}, {}
    for key, total in totals.items():
        if not total:
            continue
        dot, na, nb = sums[key]
        in_a, in_b = (top.at_least(t) for top, t in zip(largest[key], thresholds[key], strict=True))
        denom = math.sqrt(na * nb)
        cosine[key] = dot / denom if denom else math.nan
        union = in_a + in_b - both[key]
        overlap[key] = both[key] / union if union else math.nan
        selected[key] = (in_a / total, in_b / total)
    return UpdateGeometry(cosine, overlap, selected)
