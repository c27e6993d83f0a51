"""The fused NCHW block: convolution + bias + activation + tiled average pooling in one pass each way.

LeNet-style networks spend more time in the passes *between* their GEMMs than
in the GEMMs: storing the convolution's output, adding the bias, the
activation, the pooling and, going back, the same four in reverse plus the
bias gradient, each one a trip through memory and a Numba launch. A
:class:`Block` does a convolution (stride 1, no dilation, one group), its
activation (ReLU or tanh, or none) and an optional average pooling with
non-overlapping ``k x k`` tiles (kernel = stride, no padding) as

* forward: the chain's convolution, without its bias, into a buffer (F, n, Q)
  (pad + unfold a chunk of the batch and one GEMM; layers with few weights,
  :func:`cnncli.engine.rules.direct_weights`, LeNet-5's first, the general
  convolution's direct loops), then the fusion step: one kernel that adds the
  bias, applies the activation, crops the junk columns, writes the activation
  and averages its tiles;
* backward: one kernel spreads the pooled gradient over its tiles, multiplies
  by the activation's derivative and lays it out for the GEMMs (the bias
  gradient is one row sum of that), then the general convolution's chunked
  backward pass (GEMMs and fold, or its direct loops), which computes the
  input gradient only when the block's input needs one. Small layers keep their
  column matrices from the forward pass (:func:`cnncli.engine.rules.keep_cols`)
  instead of unfolding again.

The kernels use numpy's float error model (:data:`cnncli.engine.jit.VECTOR_FLAGS`),
without which no loop that divides or takes a min/max is vectorised, and the
float32 tanh of :mod:`cnncli.engine.fast.vector`. Big batches of small layers
run in :mod:`cnncli.engine.fast.lanes` instead; this block takes small batches
and big layers (VGG-16).

Layout and conventions are those of :mod:`cnncli.engine.conv.general` (NCHW, weights
``(F, C, KH, KW)``, PyTorch's results), whose pad, unfold and direct kernels it
runs at stride and dilation 1, and whose chunked backward pass
(``chunks_backward``) it runs after its own activation and pooling gradient:
the block's own kernels are the fusion steps only. Its pitch and chunks are the
chain's :class:`~cnncli.engine.conv.Call`'s.
The block keeps its input, the activation and
the small column matrices for the backward pass. Every kernel writes disjoint
slices and sums in a fixed order, so results are the same run to run; scratch
buffers are per thread, so that blocks of two network replicas can run at the
same time on different threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from cnncli.engine import rules
from cnncli.engine.arrays import scratch
from cnncli.engine.conv.general import Geometry, chunks_backward, direct_forward, nchw_pad, nchw_unfold
from cnncli.engine.conv.geometry import Call
from cnncli.engine.fast.vector import ACTIVATIONS, tanh32
from cnncli.engine.jit import vector_kernel, vector_parallel_kernel
from cnncli.engine.pool import tile_mean_plane
from cnncli.engine.threads import matmul

__all__ = ["Block"]


def _scratch(slot: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reusable buffer from the engine's per-thread workspace: the general convolution's slots (``xp``,
    ``cols``, ``out``), whose chunked backward pass this block runs, so that the two share one set of buffers
    (none is in use across a call)."""
    return scratch(slot, shape, dtype)


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------


@vector_kernel
def _activate_rows(src, pitch, bias, dst, act, exact):
    # dst[oh, ow] = act(src[oh * pitch + ow] + bias): 1 ReLU, 2 tanh (exact:
    # math.tanh, for float64; else tanh32), 0 none.
    zero = dst.dtype.type(0)
    ow_ = dst.shape[1]
    for oh in range(dst.shape[0]):
        row = dst[oh]
        partial = src[oh * pitch : oh * pitch + ow_]
        if act == 2 and not exact:
            for ow in range(ow_):
                row[ow] = tanh32(partial[ow] + bias)
        elif act == 2:
            for ow in range(ow_):
                row[ow] = math.tanh(partial[ow] + bias)
        elif act == 1:
            for ow in range(ow_):
                row[ow] = max(partial[ow] + bias, zero)
        else:
            for ow in range(ow_):
                row[ow] = partial[ow] + bias


@vector_parallel_kernel
def _bias_act(ybuf, b, a, p, n0, pitch, act, k, exact):
    # GEMM output (F, n, Q) -> a (N, F, OH, OW): junk columns dropped, bias
    # added, activation applied; then, with k > 0, the tiled average into p.
    f_ = ybuf.shape[0]
    has_bias = b.shape[0] > 0
    for job in prange(ybuf.shape[1] * f_):
        n = job // f_
        f = job - n * f_
        bias = b[f] if has_bias else a.dtype.type(0)
        plane = a[n0 + n, f]
        _activate_rows(ybuf[f, n], pitch, bias, plane, act, exact)
        if k > 0:
            tile_mean_plane(plane, p[n0 + n, f], k, np.empty(p.shape[3] * k, dtype=a.dtype))


@vector_parallel_kernel
def _fused_act_grad(g, a, dyt, n0, pitch, k, act):
    # dz = (the pooled gradient spread over its k x k tile, or g itself when
    # k == 0) * act'(a), laid out as the GEMMs' (F, n, Q) with junk zeroed.
    # A pooled row is spread once into a full-width row that its k output
    # rows then share, so the per-cell loops run contiguous and vectorised.
    f_ = dyt.shape[0]
    kk = max(k, 1)
    inv = a.dtype.type(1.0 / (kk * kk))
    zero = a.dtype.type(0)
    one = a.dtype.type(1)
    wide = g.shape[3] * kk  # columns (and, below, rows) that reach the output
    for job in prange(dyt.shape[1] * f_):
        n = job // f_
        f = job - n * f_
        src = a[n0 + n, f]
        gs = g[n0 + n, f]
        dst = dyt[f, n]
        dst[:] = zero
        spread = np.empty(wide, dtype=a.dtype)
        for i in range(g.shape[2]):
            grow = gs[i]
            if k > 0:
                for j in range(g.shape[3]):
                    share = grow[j] * inv
                    for t in range(kk):
                        spread[j * kk + t] = share
            else:
                spread[:] = grow
            for oh in range(i * kk, i * kk + kk):
                arow = src[oh]
                out = dst[oh * pitch : oh * pitch + wide]
                if act == 2:
                    for ow in range(wide):
                        av = arow[ow]
                        out[ow] = spread[ow] * (one - av * av)
                elif act == 1:
                    for ow in range(wide):
                        out[ow] = spread[ow] if arow[ow] > zero else zero
                else:
                    out[:] = spread


# ---------------------------------------------------------------------------
# the block
# ---------------------------------------------------------------------------


class Block:
    """Convolution (+ bias) + activation + optional tiled average pooling, fused.

    ``kernel`` (KH, KW) and ``padding`` (PH, PW) describe the convolution
    (stride 1, dilation 1, groups 1); ``act`` is None, ``"relu"`` or ``"tanh"``;
    ``pool`` is the tile size k, or 0 for none. Call :meth:`forward` then
    :meth:`backward`; the block keeps its input and activation in between.
    """

    def __init__(self, padding, act: str | None, pool: int):
        self.ph, self.pw = padding
        self.act = act
        self.code = ACTIVATIONS[act]
        self.pool = int(pool)
        # A batch whose column matrices (all chunks) are small enough
        # (rules.keep_cols) keeps them for the backward pass in this buffer of
        # the block's own, saving an unfold per step; bigger ones (VGG-16's)
        # unfold again rather than hold memory.
        self._cols: np.ndarray | None = None
        self.kept: list[np.ndarray] | None = None

    def _geometry(self, x: np.ndarray, w: np.ndarray) -> None:
        # The chain's convolution as the picker sees it: its pitch (whole padded rows unless the junk would cost
        # more GEMM work than a row-by-row gather), chunks and direct loops (direct_dw) by the general rules.
        self.call = Call(x.shape, w.shape, (1, 1), (self.ph, self.pw), (1, 1), 1, x.itemsize,
                         chain=(self.act, self.pool))
        for name in ("hp", "wp", "oh", "ow", "pitch", "q", "step"):
            setattr(self, name, getattr(self.call, name))
        self.taps = self.call.c * self.call.kh * self.call.kw
        self.direct = self.call.direct_loops  # as chunks_backward reads it for the backward pass

    def _padded(self, x: np.ndarray, n0: int, nc: int) -> np.ndarray:
        if self.ph == 0 and self.pw == 0:
            return x[n0 : n0 + nc]
        xp = _scratch("xp", (nc, x.shape[1], self.hp, self.wp), x.dtype)
        nchw_pad(x, n0, xp, self.ph, self.pw)
        return xp

    def _unfolded(self, xp: np.ndarray, kh: int, kw: int, nc: int) -> np.ndarray:
        cols = _scratch("cols", (self.taps, nc, self.q), xp.dtype)
        nchw_unfold(xp, cols, kh, kw, 1, 1, 1, 1, self.oh, self.ow, self.pitch)
        return cols

    def release(self) -> None:
        """Drop what the last forward pass kept for a backward pass (an inference pass needs none)."""
        for name in ("x", "a", "kept"):
            setattr(self, name, None)

    def forward(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """x (N, C, H, W) -> (activation (N, F, OH, OW), output: pooled (N, F, OH//k, OW//k) or the activation)."""
        x = np.ascontiguousarray(x)
        w = np.ascontiguousarray(w)
        self._geometry(x, w)
        self.x = x
        n = x.shape[0]
        f, _, kh, kw = w.shape
        dtype = x.dtype
        bias = np.empty(0, dtype=dtype) if b is None else b
        a = np.empty((n, f, self.oh, self.ow), dtype=dtype)
        k = self.pool
        p = np.empty((n, f, self.oh // k, self.ow // k) if k else (1, 1, 1, 1), dtype=dtype)
        exact = dtype != np.float32  # float64 (checks) takes math.tanh
        w2 = w.reshape(f, self.taps)
        self.kept = None
        size = self.taps * n * self.q
        if not self.direct and rules.keep_cols(self.taps * self.q * x.itemsize, n):
            if self._cols is None or self._cols.size < size or self._cols.dtype != dtype:
                self._cols = np.empty(size, dtype=dtype)
            self.kept = []
        for n0 in range(0, n, self.step):
            nc = min(self.step, n - n0)
            ybuf = _scratch("out", (f, nc, self.q), dtype)
            if self.direct:
                direct_forward(self._padded(x, n0, nc), w, ybuf, 1)
                _bias_act(ybuf, bias, a, p, n0, self.pitch, self.code, self.pool, exact)
                continue
            if self.kept is not None:
                span = self._cols[self.taps * n0 * self.q : self.taps * (n0 + nc) * self.q]
                cols = span.reshape(self.taps, nc, self.q)
                self.kept.append(cols)
                nchw_unfold(self._padded(x, n0, nc), cols, kh, kw, 1, 1, 1, 1, self.oh, self.ow, self.pitch)
            else:
                cols = self._unfolded(self._padded(x, n0, nc), kh, kw, nc)
            matmul(w2, cols.reshape(self.taps, nc * self.q), out=ybuf.reshape(f, nc * self.q))
            _bias_act(ybuf, bias, a, p, n0, self.pitch, self.code, self.pool, exact)
        self.a = a
        return a, (p if self.pool else a)

    def backward(self, g: np.ndarray, w: np.ndarray, need_dx: bool = True, need_db: bool = True):
        """g = dL/d(output) -> (dx or None, dw (F, C, KH, KW), db (F,) or None)."""
        x, a = self.x, self.a
        g = np.ascontiguousarray(g)
        w = np.ascontiguousarray(w)
        f = w.shape[0]
        dtype = x.dtype
        dx = np.empty_like(x) if need_dx else None
        db = np.zeros(f, dtype=dtype) if need_db else None
        dw = np.empty_like(w)

        def load(n0: int, dyt: np.ndarray) -> None:
            # the chunk's gradient before the activation and pooling, laid out for the GEMMs; its row sums: db's
            _fused_act_grad(g, a, dyt, n0, self.pitch, self.pool, self.code)
            if db is not None:
                db[:] += dyt.reshape(f, -1).sum(axis=1)

        # the general convolution's chunked backward pass: unfold (or the kept columns) + GEMMs, or its direct loops
        chunks_backward(Geometry(x, w, self.call), None, dx, dw, load, self.kept)
        return dx, dw, db
