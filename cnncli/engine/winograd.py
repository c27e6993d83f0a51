"""3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3), forward and backward.

A 2×2 block of outputs of a 3×3 filter needs 36 multiplications directly; F(2×2, 3×3)
(Lavin & Gray, "Fast algorithms for convolutional neural networks", 2016) needs 16,
after cheap transforms made of additions only:

    y_tile (2×2) = Aᵀ [ (G w Gᵀ) ⊙ (Bᵀ d B) ] A

with d the 4×4 input tile under the block (tiles overlap by 2), w the 3×3 filter,
and the fixed matrices below. Summed over input channels, the 16 products ⊙ of
each tile become 16 matrix products, one per position ξ of the 4×4 transformed tile:

    M[ξ] (tiles, F) = V[ξ] (tiles, C) · U[ξ] (C, F),   U = G w Gᵀ,  V = Bᵀ d B,

so a layer costs 16·F·C multiply-adds per tile (4 outputs) instead of 36·F·C:
2.25x fewer. The backward pass is the same algebra read backwards (adjoints):
dM = A dy Aᵀ per tile, then

    dU[ξ] (C, F) = Σ over tiles V[ξ]ᵀ · dM[ξ],   dw = Gᵀ dU G,
    dV[ξ] (tiles, C) = dM[ξ] · U[ξ]ᵀ,            dd = B dV Bᵀ, added into the overlapping tiles of dx,

which is the exact gradient of the forward computation (and, in exact
arithmetic, of the convolution: the transforms are an identity). In float32
the results differ from the float64 convolution by 3-8e-7 of the largest value
on ResNet-18- and VGG-shaped layers, against 2-5e-7 for the other paths
(tests/test_kernels.py holds them under 5e-6).

Layout: channels innermost. A *group* of samples (``rules.winograd_plan``: its
transformed tiles fit half a core's L2, and there are enough of them for the
products) is turned into rows of channels, one per position
(:mod:`cnncli.engine.layout`); a tile's 16 rows are transformed a vector of
channels at a time (:func:`cnncli.engine.simd.tile_transform`, additions in
registers) into V (16, tiles, C'), tiles numbered sample-major, then row-major
inside a sample, C' the channels rounded up to whole vectors. The products run
filters (or, for dV, channels) in the lanes (:mod:`cnncli.engine.products`),
and the output transform writes rows of filters that go back to NCHW with the
bias. Positions outside a plane (the padding, the outputs past an odd edge) are
a row of zeros read, or a row written and never read.

Groups run in parallel; the weight gradient of each run of groups (a *slot*,
``rules.dw_slots``) is summed in order, so the result does not depend on the
number of threads. The transforms are additions only, in a fixed order, so
their bits do not depend on where the arrays sit.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import get_thread_id, prange

from cnncli.engine import layout, products, rules, simd
from cnncli.engine.arrays import scratch
from cnncli.engine.jit import exact_kernel, parallel_kernel

__all__ = ["G", "backward", "forward", "tiles"]

#: The filter transform (4×3): U = G w Gᵀ. Its 1/2 are exact in binary floating point.
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
#: The input transform: V = Bᵀ d B.
B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
#: The output transform: y = Aᵀ M A.
A_T = ((1, 1, 1, 0), (0, 1, -1, -1))

_B = tuple(zip(*B_T))
_A = tuple(zip(*A_T))
_input = simd.tile_transform(B_T, B_T, accumulate=False)        # V = Bᵀ d B
_output = simd.tile_transform(A_T, A_T, accumulate=False)       # y = Aᵀ M A
_output_adjoint = simd.tile_transform(_A, _A, accumulate=False)  # dM = A dy Aᵀ
_input_adjoint = simd.tile_transform(_B, _B, accumulate=True)    # dd += B dV Bᵀ
#: ξ's plane among the 16 of V, M and their gradients: row ξ · (the plane's size).
_PLANES = np.arange(16, dtype=np.int64)
_ZERO_ROWS = np.zeros(1, dtype=np.int64)


def tiles(oh: int, ow: int) -> tuple[int, int]:
    """Tile rows and columns covering an OH × OW output with 2×2 blocks."""
    return (oh + 1) // 2, (ow + 1) // 2


# ---------------------------------------------------------------------------
# the kernels: groups of samples in parallel, 16 products per group
# ---------------------------------------------------------------------------


@parallel_kernel
def _forward(x, ut, bias, y, per, t_, cp, fp, cs, fs, inputs, outputs, bases, chunk, xt_buf, v_buf, m_buf, yt_buf,
             lanes_):
    # ut (16 planes of C rows of fs): U[ξ] with filters innermost, zeros past F; per: samples per group, t_ tiles per sample; cp,
    # fp: channels and filters rounded up to whole vectors, cs, fs: the row strides of V and M (and U);
    # inputs (per·t_·16): a tile's 16 input rows in xt; outputs (per·t_·4): its 4 output rows in yt; bases:
    # matrix_product's rows of V (tile i at i·cs). Per thread: xt_buf (rows of cp), v_buf (16 planes of per·t_
    # rows of cs), m_buf (16 of per·t_ rows of fs), yt_buf (rows of fp).
    n_, c_ = x.shape[0], x.shape[1]
    f_ = y.shape[1]
    plane_v = v_buf.shape[1] // 16
    plane_m = m_buf.shape[1] // 16
    for gi in prange((n_ + per - 1) // per):
        t = get_thread_id()
        xt, v, m, yt = xt_buf[t], v_buf[t], m_buf[t], yt_buf[t]
        s0 = gi * per
        sc = min(n_, s0 + per) - s0
        cols = sc * t_
        layout.to_rows(x, s0, sc, xt, cp, lanes_)
        simd.zero(xt, xt.shape[0] - cp, cp)
        for q in range(cols):
            _input(xt, inputs, 16 * q, cp, 0, v, _PLANES, 0, plane_v, q * cs, cp)
        for k in range(16):
            products.matrix_product(v[k * plane_v:], bases[:cols], ut[k], fs, c_, m[k * plane_m:], fs,
                                    fp, chunk, _ZERO_ROWS, lanes_)
        for q in range(cols):
            _output(m, _PLANES, 0, plane_m, q * fs, yt, outputs, 4 * q, fp, 0, fp)
        layout.from_rows(yt, fp, s0, sc, y, 0, f_, bias, lanes_)


@parallel_kernel
def _backward(x, uc, dy, dx, du_slots, per, span, t_, cp, fp, cs, fs, inputs, outputs, filter_bases, tile_bases,
              chunk, xt_buf, v_buf, m_buf, dyt_buf, lanes_, need_dx):
    # du_slots (slots, 16, ≥ F·cp): slot s sums dU[ξ]ᵀ (F, cp) over groups s·span ... in order; uc (16 planes of F
    # rows of cs): U[ξ] with channels innermost; filter_bases (F): filter f at f; tile_bases: tile i at i·fs. As in
    # _forward, dyt_buf rows of fp; v_buf holds V, then dV; m_buf dM; xt_buf the rows of x, then of dx.
    n_, c_ = x.shape[0], x.shape[1]
    f_ = dy.shape[1]
    plane_v = v_buf.shape[1] // 16
    plane_m = m_buf.shape[1] // 16
    groups = (n_ + per - 1) // per
    for si in prange(du_slots.shape[0]):
        t = get_thread_id()
        xt, v, m, dyt = xt_buf[t], v_buf[t], m_buf[t], dyt_buf[t]
        slot = du_slots[si]
        for k in range(16):
            simd.zero(slot[k], 0, slot.shape[1])
        for gi in range(si * span, min(groups, si * span + span)):
            s0 = gi * per
            sc = min(n_, s0 + per) - s0
            cols = sc * t_
            layout.to_rows(x, s0, sc, xt, cp, lanes_)
            simd.zero(xt, xt.shape[0] - cp, cp)
            for q in range(cols):
                _input(xt, inputs, 16 * q, cp, 0, v, _PLANES, 0, plane_v, q * cs, cp)
            layout.to_rows(dy, s0, sc, dyt, fp, lanes_)
            simd.zero(dyt, dyt.shape[0] - fp, fp)
            for q in range(cols):
                _output_adjoint(dyt, outputs, 4 * q, fp, 0, m, _PLANES, 0, plane_m, q * fs, fp)
            for k in range(16):
                products.outer_sums(m[k * plane_m:], filter_bases, _ZERO_ROWS, fs, v[k * plane_v:], _ZERO_ROWS, cs,
                                    cols, slot[k], cp, lanes_)
            if need_dx:
                for k in range(16):  # V is spent: dV takes its place
                    products.matrix_product(m[k * plane_m:], tile_bases[:cols], uc[k], cs, f_,
                                            v[k * plane_v:], cs, cp, chunk, _ZERO_ROWS, lanes_)
                simd.zero(xt, 0, xt.shape[0])
                for q in range(cols):
                    _input_adjoint(v, _PLANES, 0, plane_v, q * cs, xt, inputs, 16 * q, cp, 0, cp)
                layout.from_rows(xt, cp, s0, sc, dx, 0, c_, dx[0, 0, 0, :0], lanes_)


# ---------------------------------------------------------------------------
# the public functions (called by cnncli.engine.conv, which has checked the arguments)
# ---------------------------------------------------------------------------


@exact_kernel
def _filters(w, u, columns):
    # u[ξ, o·columns + i] = (G w[o, i] Gᵀ)[ξ], ξ = 4·a + b, for w (O, I, 3, 3) (filters by channels, or channels by
    # filters) and u (16, ≥ O·columns), read and written in order: T = G w, rounded to w's dtype, then U = T Gᵀ.
    # G's halves are exact.
    t = np.empty((4, 3), dtype=w.dtype)
    for o in range(w.shape[0]):
        for i in range(w.shape[1]):
            for j in range(3):
                t[0, j] = w[o, i, 0, j]
                t[1, j] = 0.5 * (w[o, i, 0, j] + w[o, i, 1, j] + w[o, i, 2, j])
                t[2, j] = 0.5 * (w[o, i, 0, j] - w[o, i, 1, j] + w[o, i, 2, j])
                t[3, j] = w[o, i, 2, j]
            at = o * columns + i
            for a in range(4):
                u[4 * a, at] = t[a, 0]
                u[4 * a + 1, at] = 0.5 * (t[a, 0] + t[a, 1] + t[a, 2])
                u[4 * a + 2, at] = 0.5 * (t[a, 0] - t[a, 1] + t[a, 2])
                u[4 * a + 3, at] = t[a, 2]


@exact_kernel
def _weight_gradient(du_slots, cp, dw):
    # dw (F, C, 3, 3) = Gᵀ dU G, the adjoint of _filters, of dU summed over the slots in order; du_slots (slots,
    # 16, ≥ F·cp), dU[ξ]ᵀ (F, cp). Runs of 16 channels at a time, each step across the run (vectorised).
    f_, c_ = dw.shape[0], dw.shape[1]
    d = np.empty((16, 16), dtype=dw.dtype)  # dU[ξ] of the run's channels
    s = np.empty((12, 16), dtype=dw.dtype)  # S = Gᵀ dU, row-major (3 × 4)
    for f in range(f_):
        for c0 in range(0, c_, 16):
            n = min(16, c_ - c0)
            at = f * cp + c0
            for k in range(16):
                for i in range(n):
                    d[k, i] = du_slots[0, k, at + i]
                for slot in range(1, du_slots.shape[0]):
                    for i in range(n):
                        d[k, i] += du_slots[slot, k, at + i]
            for b in range(4):
                for i in range(n):
                    s[b, i] = d[b, i] + 0.5 * (d[4 + b, i] + d[8 + b, i])
                    s[4 + b, i] = 0.5 * (d[4 + b, i] - d[8 + b, i])
                    s[8 + b, i] = 0.5 * (d[4 + b, i] + d[8 + b, i]) + d[12 + b, i]
            for a in range(3):
                for i in range(n):
                    dw[f, c0 + i, a, 0] = s[4 * a, i] + 0.5 * (s[4 * a + 1, i] + s[4 * a + 2, i])
                    dw[f, c0 + i, a, 1] = 0.5 * (s[4 * a + 1, i] - s[4 * a + 2, i])
                    dw[f, c0 + i, a, 2] = 0.5 * (s[4 * a + 1, i] + s[4 * a + 2, i]) + s[4 * a + 3, i]


def _transformed(w: np.ndarray, columns: int, filters_innermost: bool) -> np.ndarray:
    """U of w (F, C, 3, 3): 16 planes of C rows of ``columns`` (filters innermost) or of F rows (channels
    innermost), zeros in the columns past F or C; the planes ``rules.unaliased_stride`` apart (written together,
    planes a power of two apart would evict each other from the cache)."""
    # Filters innermost from w transposed by numpy: the kernel reading w across its rows ran 2-3x slower.
    w = np.ascontiguousarray(w.transpose(1, 0, 2, 3)) if filters_innermost else w
    u = np.empty((16, rules.unaliased_stride(w.shape[0] * columns, w.itemsize)), dtype=w.dtype)
    planes = u[:, :w.shape[0] * columns].reshape(16, w.shape[0], columns)
    planes[:, :, w.shape[1]:] = 0.0
    _filters(w, u, columns)
    return u


@functools.lru_cache(maxsize=64)
def _tables(per: int, h: int, w: int, oh: int, ow: int, ph: int, pw: int) -> tuple[np.ndarray, np.ndarray]:
    """For each tile of a group of ``per`` samples: the rows of its 16 inputs, row-major (sample s's position
    (r, c) at s·H·W + r·W + c; per·H·W, the row of zeros, where the tile covers the padding), and of its 4
    outputs (at s·OH·OW + r·OW + c; per·OH·OW, a row never read, past the output's edge). Made once per layer
    shape (cached)."""
    ty, tx = tiles(oh, ow)
    s, i, j = (a[..., None, None] for a in np.meshgrid(np.arange(per), np.arange(ty), np.arange(tx), indexing="ij"))
    a = np.arange(4)
    r, c = 2 * i + a[:, None] - ph, 2 * j + a[None, :] - pw
    inputs = np.where((0 <= r) & (r < h) & (0 <= c) & (c < w), s * h * w + r * w + c, per * h * w)
    b = np.arange(2)
    r, c = 2 * i + b[:, None], 2 * j + b[None, :]
    outputs = np.where((r < oh) & (c < ow), s * oh * ow + r * ow + c, per * oh * ow)
    inputs, outputs = (np.ascontiguousarray(t.reshape(-1), dtype=np.int64) for t in (inputs, outputs))
    for table in (inputs, outputs):
        table.flags.writeable = False
    return inputs, outputs


def _plan(x: np.ndarray, f: int, oh: int, ow: int) -> tuple[int, int, int, int, int, int, int]:
    """(samples per group, tiles per sample, C' and F' (channels and filters rounded up to whole vectors), the
    row strides of V and M (``rules.unaliased_stride``: the products read runs of many rows of U, V or M, which
    rows a power of two apart would crowd into a few sets of L1), the products' runs of rows) of a call."""
    n, c = x.shape[:2]
    ty, tx = tiles(oh, ow)
    lanes_ = simd.lanes(x.itemsize)
    per = rules.winograd_plan(n, c, f, ty * tx, x.itemsize)
    chunk = rules.outer_channels(1, products.MOST_VECTORS * lanes_ * x.itemsize)
    cp, fp = -(-c // lanes_) * lanes_, -(-f // lanes_) * lanes_
    return (per, ty * tx, cp, fp, rules.unaliased_stride(cp, x.itemsize), rules.unaliased_stride(fp, x.itemsize),
            chunk)


def _buffers(x: np.ndarray, per: int, t_: int, cp: int, fp: int, cs: int, fs: int, oplane: int,
             out_slot: str) -> tuple[np.ndarray, ...]:
    """Per-thread scratch: rows of x (and the row of zeros), V, M, and rows of y or dy (and one more)."""
    threads, dtype = numba.get_num_threads(), x.dtype
    plane = x.shape[2] * x.shape[3]
    return (scratch("winograd.xt", (threads, (per * plane + 1) * cp), dtype),
            scratch("winograd.v", (threads, 16 * per * t_ * cs), dtype),
            scratch("winograd.m", (threads, 16 * per * t_ * fs), dtype),
            scratch(out_slot, (threads, (per * oplane + 1) * fp), dtype))


def forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray, y: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """y (N, F, OH, OW) = conv(x (N, C, H, W), w (F, C, 3, 3)) + bias (F,) or (0,): stride 1, dilation 1, one
    group, padding (ph, pw); OH = H + 2·ph − 2. Arrays as conv2d_forward has checked them."""
    f, oh, ow = y.shape[1:]
    per, t_, cp, fp, cs, fs, chunk = _plan(x, f, oh, ow)
    inputs, outputs = _tables(per, x.shape[2], x.shape[3], oh, ow, ph, pw)
    ut = _transformed(w, fs, filters_innermost=True)
    _forward(x, ut, bias, y, per, t_, cp, fp, cs, fs, inputs, outputs, products.point_bases(per * t_, cs), chunk,
             *_buffers(x, per, t_, cp, fp, cs, fs, oh * ow, "winograd.yt"), simd.lanes(x.itemsize))
    return y


def backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, dx: np.ndarray | None, dw: np.ndarray,
             ph: int, pw: int) -> None:
    """The gradients of :func:`forward`: dw (F, C, 3, 3) and, unless dx is None, dx (N, C, H, W), written in
    place (the bias gradient is the convolution's own)."""
    n, c = x.shape[:2]
    f, oh, ow = dy.shape[1:]
    per, t_, cp, fp, cs, fs, chunk = _plan(x, f, oh, ow)
    inputs, outputs = _tables(per, x.shape[2], x.shape[3], oh, ow, ph, pw)
    slots, span = rules.dw_slots(-(-n // per))
    du = np.empty((slots, 16, rules.unaliased_stride(f * cp, x.itemsize)), dtype=x.dtype)  # planes read together
    _backward(x, _transformed(w, cs, filters_innermost=False), dy, dx if dx is not None else x[:1], du, per, span,
              t_, cp, fp, cs, fs, inputs, outputs, np.arange(f, dtype=np.int64), products.point_bases(per * t_, fs),
              chunk,
              *_buffers(x, per, t_, cp, fp, cs, fs, oh * ow, "winograd.dyt"), simd.lanes(x.itemsize),
              dx is not None)
    _weight_gradient(du, cp, dw)
