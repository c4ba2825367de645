"""Weight-only plasticity diagnostics, streamed from safetensors with numpy (no torch).

Per matrix: Frobenius norm, stable rank ‖W‖_F²/σ_max² and effective rank exp(H(σ/Σσ)) (Roy &
Vetterli 2007). Singular values come from the Gram matrix of the smaller side, accumulated over row
chunks, so memory is that Gram matrix plus one chunk (the 151936 × 896 embedding of Qwen2.5-0.5B
needs 6 MB, not 1 GB). Per pair of consecutive stages: the cosine between their updates
Δ_k = final_k − initial_k and Δ_{k+1} per module, and the Jaccard overlap of their top-1 % |Δ|
coordinates (thresholds from a first streaming pass over log-spaced histograms, counts from a
second): do later stages rewrite the weights earlier ones moved?
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cl_eval.weights import (
    _FLOAT_DTYPES,
    CheckpointError,
    LayerModule,
    TensorRef,
    classify,
    open_checkpoint,
)

GRAM_CHUNK_BYTES = 32 << 20
"""Rows read at a time for a Gram matrix (as float32; twice that as float64 while multiplied):
bounds memory for any matrix shape."""
GRAM_MAX_SIDE = 8192
"""Largest smaller side whose Gram matrix is formed (512 MB in float64); larger ones are skipped."""
STREAM_CHUNK = 1 << 20
TOP_FRACTION = 0.01
_HIST_EDGES = np.concatenate([[0.0], np.logspace(-12, 2, 4097)])
"""|Δ| histogram bins: exact zero apart, then log-spaced over the range weights move in."""


def _values(fd: int, ref: TensorRef, lo: int, hi: int) -> np.ndarray:
    """Elements [lo, hi) of a tensor as float32 (bf16 widened by a 16-bit shift)."""
    width = _FLOAT_DTYPES[ref.dtype]
    raw = os.pread(fd, (hi - lo) * width, ref.start + lo * width)
    if len(raw) != (hi - lo) * width:
        raise CheckpointError(f"{ref.file}: unexpected end of file while reading {ref.name}")
    if ref.dtype == "BF16":
        return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    dtype = {"F16": np.float16, "F32": np.float32, "F64": np.float64}[ref.dtype]
    return np.frombuffer(raw, dtype).astype(np.float32)


def _chunks(fd: int, ref: TensorRef, size: int) -> Iterator[np.ndarray]:
    for lo in range(0, ref.numel, size):
        yield _values(fd, ref, lo, min(ref.numel, lo + size))


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


def matrix_spectrum(fd: int, ref: TensorRef) -> Spectrum | None:
    """Singular values of a stored 2-D matrix from the Gram matrix of its smaller side."""
    rows, cols = ref.shape
    if min(rows, cols) > GRAM_MAX_SIDE:
        return None
    row_block = max(1, GRAM_CHUNK_BYTES // (4 * cols))
    if cols <= rows:  # stream rows: G = Σ XᵀX (cols × cols)
        gram = np.zeros((cols, cols), np.float64)
        for r in range(0, rows, row_block):
            x = _values(fd, ref, r * cols, min(rows, r + row_block) * cols).reshape(-1, cols)
            x64 = x.astype(np.float64)  # float32 products would bury the small singular values
            gram += x64.T @ x64
    else:  # the whole (short, wide) matrix is at most GRAM_MAX_SIDE rows: W Wᵀ
        x = _values(fd, ref, 0, ref.numel).reshape(rows, cols).astype(np.float64)
        gram = x @ x.T
    eig = np.linalg.eigvalsh(gram)
    eig[eig < eig.max() * 1e-12] = 0  # rounding noise of a rank-deficient Gram matrix
    return spectrum_of(np.sqrt(eig))


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


def checkpoint_spectra(path: Path) -> Spectra:
    """Spectra of every 2-D float weight matrix of a checkpoint (tied lm_head counted once)."""
    ck = open_checkpoint(path)
    out = Spectra(Path(path))
    fds = {f: os.open(f, os.O_RDONLY) for f in {r.file for r in ck.tensors.values()}}
    try:
        for name, ref in sorted(ck.tensors.items()):
            if len(ref.shape) != 2 or ref.dtype not in _FLOAT_DTYPES:
                continue
            if name == "lm_head.weight" and ck.tied:
                continue
            sp = matrix_spectrum(fds[ref.file], ref)
            if sp is None:
                out.skipped.append(f"{name}: {list(ref.shape)} too large for its Gram matrix")
            else:
                out.matrices[name] = sp
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


def _modules(names: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for n in names:
        out[classify(n)[1]].append(n)
    out["all"] = list(names)
    return out


def update_geometry(
    start_a: Path, end_a: Path, start_b: Path, end_b: Path, top: float = TOP_FRACTION
) -> UpdateGeometry:
    """Δa = end_a − start_a against Δb = end_b − start_b (stage k and stage k+1)."""
    cks = [open_checkpoint(p) for p in (start_a, end_a, start_b, end_b)]
    names = sorted(
        n
        for n in set.intersection(*(set(c.tensors) for c in cks))
        if all(c.tensors[n].dtype in _FLOAT_DTYPES for c in cks)
        and len({c.tensors[n].shape for c in cks}) == 1
        and not (n == "lm_head.weight" and cks[0].tied)
    )
    files = {r.file for c in cks for r in c.tensors.values()}
    fds = {f: os.open(f, os.O_RDONLY) for f in files}
    modules = _modules(names)
    module_of = {n: classify(n)[1] for n in names}

    def deltas(name: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        refs = [c.tensors[name] for c in cks]
        streams = [_chunks(fds[r.file], r, STREAM_CHUNK) for r in refs]
        for a0, a1, b0, b1 in zip(*streams, strict=True):
            yield a1 - a0, b1 - b0

    try:
        dot: dict[str, float] = defaultdict(float)
        na: dict[str, float] = defaultdict(float)
        nb: dict[str, float] = defaultdict(float)
        hist_a: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(_HIST_EDGES), np.int64))
        hist_b: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(_HIST_EDGES), np.int64))
        for name in names:
            for da, db in deltas(name):
                for key in (module_of[name], "all"):
                    dot[key] += float(np.dot(da.astype(np.float64), db))
                    na[key] += float(np.dot(da.astype(np.float64), da))
                    nb[key] += float(np.dot(db.astype(np.float64), db))
                    hist_a[key] += _histogram(da)
                    hist_b[key] += _histogram(db)
        thresholds = {
            key: (_top_threshold(hist_a[key], top), _top_threshold(hist_b[key], top))
            for key in modules
        }
        both: dict[str, int] = defaultdict(int)
        in_a: dict[str, int] = defaultdict(int)
        in_b: dict[str, int] = defaultdict(int)
        for name in names:
            for da, db in deltas(name):
                for key in (module_of[name], "all"):
                    ta, tb = thresholds[key]
                    sa, sb = np.abs(da) >= ta, np.abs(db) >= tb
                    in_a[key] += int(sa.sum())
                    in_b[key] += int(sb.sum())
                    both[key] += int((sa & sb).sum())
    finally:
        for fd in fds.values():
            os.close(fd)
    cosine, overlap, selected = {}, {}, {}
    for key, members in modules.items():
        total = sum(cks[0].tensors[n].numel for n in members)
        if not total:
            continue
        denom = math.sqrt(na[key] * nb[key])
        cosine[key] = dot[key] / denom if denom else math.nan
        union = in_a[key] + in_b[key] - both[key]
        overlap[key] = both[key] / union if union else math.nan
        selected[key] = (in_a[key] / total, in_b[key] / total)
    return UpdateGeometry(cosine, overlap, selected)


def _histogram(delta: np.ndarray) -> np.ndarray:
    """Counts of |Δ| per bin of ``_HIST_EDGES`` (bin 0: exactly zero)."""
    mag = np.abs(delta)
    idx = np.searchsorted(_HIST_EDGES, mag, side="right") - 1
    idx[mag == 0] = 0
    return np.bincount(np.clip(idx, 0, len(_HIST_EDGES) - 1), minlength=len(_HIST_EDGES))


def _top_threshold(hist: np.ndarray, top: float) -> float:
    """The lower edge of the bin where the top ``top`` fraction of |Δ| begins (never 0: a zero
    update is never among the largest)."""
    total = hist.sum()
    if total == 0:
        return math.inf
    from_top = np.cumsum(hist[::-1])
    k = int(np.searchsorted(from_top, top * total))
    edge = _HIST_EDGES[len(hist) - 1 - min(k, len(hist) - 1)]
    return max(float(edge), float(np.nextafter(0, 1)))
