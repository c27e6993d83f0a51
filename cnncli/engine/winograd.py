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
number of threads. A sample whose tiles alone are more than a group's worth
(``rules.winograd_band``: VGG-16's 224×224 layers) runs by itself, its tiles in
*bands* shared out over the threads: its rows of channels are made once and
shared, each band transforms, multiplies and transforms back its own tiles,
and in the backward pass each run of bands (a slot) adds its share of dx into
rows of its own (bands overlap at their edges), added up in order after. The
transforms are additions only, in a fixed order, so their bits do not depend
on where the arrays sit.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import get_thread_id, prange

from cnncli.engine import layout, products, rules, simd
from cnncli.engine.arrays import scratch
from cnncli.engine.jit import exact_kernel, exact_parallel_kernel, kernel, parallel_kernel

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
# the kernels: groups of samples (or bands of a sample's tiles) in parallel, 16 products each
# ---------------------------------------------------------------------------


@kernel
def _forward_tiles(xt, q0, q1, inputs, outputs, ut, c_, v, m, yt, bases, cp, fp, cs, fs, chunk, lanes_):
    # Tiles q0 .. q1-1 of the rows of channels xt: V (16 planes of v, rows of cs), M = V · U (m, rows of fs), and
    # the output transform into yt (rows of fp). ut: U[ξ] with filters innermost (16 planes of C rows of fs);
    # inputs, outputs: a tile's 16 input rows in xt and 4 output rows in yt; bases: tile i's row of V at i·cs.
    plane_v = v.shape[0] // 16
    plane_m = m.shape[0] // 16
    for q in range(q0, q1):
        _input(xt, inputs, 16 * q, cp, 0, v, _PLANES, 0, plane_v, (q - q0) * cs, cp)
    for k in range(16):
        products.matrix_product(v[k * plane_v:], bases[:q1 - q0], ut[k], fs, c_, m[k * plane_m:], fs, fp, chunk,
                                _ZERO_ROWS, lanes_)
    for q in range(q0, q1):
        _output(m, _PLANES, 0, plane_m, (q - q0) * fs, yt, outputs, 4 * q, fp, 0, fp)


@kernel
def _backward_tiles(xt, dyt, dxt, q0, q1, inputs, outputs, uc, f_, v, m, slot, filter_bases, tile_bases, cp, fp,
                    cs, fs, chunk, lanes_, need_dx):
    # Tiles q0 .. q1-1: V of xt's rows, dM of dyt's (rows of fp), dUᵀ added into slot (16 planes of F rows of cp),
    # and unless not need_dx dV = dM · Uᵀ (uc: U[ξ] with channels innermost, 16 planes of F rows of cs) and its
    # adjoint transform added into dxt's rows (of cp). v holds V, then dV.
    plane_v = v.shape[0] // 16
    plane_m = m.shape[0] // 16
    cols = q1 - q0
    for q in range(q0, q1):
        _input(xt, inputs, 16 * q, cp, 0, v, _PLANES, 0, plane_v, (q - q0) * cs, cp)
        _output_adjoint(dyt, outputs, 4 * q, fp, 0, m, _PLANES, 0, plane_m, (q - q0) * fs, fp)
    for k in range(16):
        products.outer_sums(m[k * plane_m:], filter_bases, _ZERO_ROWS, fs, v[k * plane_v:], _ZERO_ROWS, cs, cols,
                            slot[k], cp, lanes_)
    if need_dx:
        for k in range(16):  # V is spent: dV takes its place
            products.matrix_product(m[k * plane_m:], tile_bases[:cols], uc[k], cs, f_, v[k * plane_v:], cs, cp,
                                    chunk, _ZERO_ROWS, lanes_)
        for q in range(q0, q1):
            _input_adjoint(v, _PLANES, 0, plane_v, (q - q0) * cs, dxt, inputs, 16 * q, cp, 0, cp)


@parallel_kernel
def _forward(x, ut, bias, y, per, t_, cp, fp, cs, fs, inputs, outputs, bases, chunk, xt_buf, v_buf, m_buf, yt_buf,
             lanes_):
    # Groups of ``per`` samples in parallel, t_ tiles each; cp, fp: channels and filters rounded up to whole
    # vectors, cs, fs: the row strides of V and M (and U). Per thread: xt_buf (rows of cp and the row of zeros
    # that ``inputs`` names for the padding), v_buf (16 planes of per·t_ rows of cs), m_buf (16 of per·t_ rows of
    # fs), yt_buf (rows of fp and a row past the edges).
    n_, c_ = x.shape[0], x.shape[1]
    f_ = y.shape[1]
    for gi in prange((n_ + per - 1) // per):
        t = get_thread_id()
        xt, yt = xt_buf[t], yt_buf[t]
        s0 = gi * per
        sc = min(n_, s0 + per) - s0
        layout.to_rows(x, s0, sc, xt, cp, lanes_)
        simd.zero(xt, xt.shape[0] - cp, cp)
        _forward_tiles(xt, 0, sc * t_, inputs, outputs, ut, c_, v_buf[t], m_buf[t], yt, bases, cp, fp, cs, fs,
                       chunk, lanes_)
        layout.from_rows(yt, fp, s0, sc, y, 0, f_, bias, lanes_)


@parallel_kernel
def _forward_bands(x, ut, bias, y, band, t_, cp, fp, cs, fs, inputs, outputs, bases, chunk, xt, v_buf, m_buf, yt,
                   lanes_):
    # One sample at a time, its tiles in bands of ``band`` in parallel: xt and yt (a sample's rows, shared), v_buf
    # and m_buf per thread as in _forward.
    n_, c_ = x.shape[0], x.shape[1]
    for n in range(n_):
        for cb in prange(cp // lanes_):
            layout.to_rows_block(x, n, 0, xt, cp, cb * lanes_, lanes_)
        simd.zero(xt, xt.shape[0] - cp, cp)
        for b in prange((t_ + band - 1) // band):
            t = get_thread_id()
            _forward_tiles(xt, b * band, min(t_, b * band + band), inputs, outputs, ut, c_, v_buf[t], m_buf[t], yt,
                           bases, cp, fp, cs, fs, chunk, lanes_)
        for fb in prange(fp // lanes_):
            layout.from_rows(yt, fp, n, 1, y, fb * lanes_, lanes_, bias, lanes_)


@parallel_kernel
def _backward(x, uc, dy, dx, du_slots, per, span, t_, cp, fp, cs, fs, inputs, outputs, filter_bases, tile_bases,
              chunk, xt_buf, v_buf, m_buf, dyt_buf, dxt_buf, lanes_, need_dx):
    # du_slots (slots, 16, ≥ F·cp): slot s sums dU[ξ]ᵀ (F, cp) over groups s·span ... in order; uc (16 planes of F
    # rows of cs): U[ξ] with channels innermost; filter_bases (F): filter f at f; tile_bases: tile i at i·fs. Per
    # thread as in _forward, and dyt_buf (rows of fp), dxt_buf (rows of cp, dx's).
    n_, c_ = x.shape[0], x.shape[1]
    f_ = dy.shape[1]
    groups = (n_ + per - 1) // per
    for si in prange(du_slots.shape[0]):
        t = get_thread_id()
        xt, dyt, dxt = xt_buf[t], dyt_buf[t], dxt_buf[t]
        slot = du_slots[si]
        for k in range(16):
            simd.zero(slot[k], 0, slot.shape[1])
        for gi in range(si * span, min(groups, si * span + span)):
            s0 = gi * per
            sc = min(n_, s0 + per) - s0
            layout.to_rows(x, s0, sc, xt, cp, lanes_)
            simd.zero(xt, xt.shape[0] - cp, cp)
            layout.to_rows(dy, s0, sc, dyt, fp, lanes_)
            simd.zero(dyt, dyt.shape[0] - fp, fp)
            if need_dx:
                simd.zero(dxt, 0, dxt.shape[0])
            _backward_tiles(xt, dyt, dxt, 0, sc * t_, inputs, outputs, uc, f_, v_buf[t], m_buf[t], slot,
                            filter_bases, tile_bases, cp, fp, cs, fs, chunk, lanes_, need_dx)
            if need_dx:
                layout.from_rows(dxt, cp, s0, sc, dx, 0, c_, dx[0, 0, 0, :0], lanes_)


@parallel_kernel
def _backward_bands(x, uc, dy, dx, du_slots, band, span, t_, cp, fp, cs, fs, inputs, outputs, filter_bases,
                    tile_bases, chunk, xt, dyt, v_buf, m_buf, dxt_slots, lanes_, need_dx):
    # One sample at a time, its bands of tiles shared out as runs (slots, span bands each), each slot's dUᵀ
    # summed over the samples and its bands in order, and its share of dx's rows added into dxt_slots[slot]
    # (bands overlap at their edges), the slots' rows then added up in order. xt, dyt: a sample's rows, shared.
    n_ = x.shape[0]
    f_ = dy.shape[1]
    bands = (t_ + band - 1) // band
    slots = du_slots.shape[0]
    size = dxt_slots.shape[1]
    for si in prange(slots):
        for k in range(16):
            simd.zero(du_slots[si, k], 0, du_slots.shape[2])
    for n in range(n_):
        for cb in prange(cp // lanes_):
            layout.to_rows_block(x, n, 0, xt, cp, cb * lanes_, lanes_)
        for fb in prange(fp // lanes_):
            layout.to_rows_block(dy, n, 0, dyt, fp, fb * lanes_, lanes_)
        simd.zero(xt, xt.shape[0] - cp, cp)
        past = dy.shape[2] * dy.shape[3] * fp  # the bands' rows past the output's edges, read as zeros
        simd.zero(dyt, past, dyt.shape[0] - past)
        for si in prange(slots):
            t = get_thread_id()
            if need_dx:
                simd.zero(dxt_slots[si], 0, size)
            for b in range(si * span, min(bands, si * span + span)):
                _backward_tiles(xt, dyt, dxt_slots[si], b * band, min(t_, b * band + band), inputs, outputs, uc,
                                f_, v_buf[t], m_buf[t], du_slots[si], filter_bases, tile_bases, cp, fp, cs, fs,
                                chunk, lanes_, need_dx)
        if need_dx:
            for r in prange((size + 4095) // 4096):
                for si in range(1, slots):
                    for i in range(r * 4096, min(size, r * 4096 + 4096)):
                        dxt_slots[0, i] += dxt_slots[si, i]
            for cb in prange(cp // lanes_):
                layout.from_rows(dxt_slots[0], cp, n, 1, dx, cb * lanes_, lanes_, dx[0, 0, 0, :0], lanes_)


# ---------------------------------------------------------------------------
# the public functions (called by cnncli.engine.conv, which has checked the arguments)
# ---------------------------------------------------------------------------


@exact_parallel_kernel
def _filters(w, u, columns):
    # u[ξ, o·columns + i] = (G w[o, i] Gᵀ)[ξ], ξ = 4·a + b, for w (O, I, 3, 3) (filters by channels, or channels by
    # filters) and u (16, ≥ O·columns), read and written in order: T = G w, rounded to w's dtype, then U = T Gᵀ.
    # G's halves are exact. Runs of 16 rows in parallel.
    rows = w.shape[0]
    for job in prange((rows + 15) // 16):
        t = np.empty((4, 3), dtype=w.dtype)
        for o in range(job * 16, min(rows, job * 16 + 16)):
            _filter_row(w, o, u, columns, t)


@exact_kernel
def _filter_row(w, o, u, columns, t):
    # Row o of _filters.
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


@exact_parallel_kernel
def _weight_gradient(du_slots, cp, dw):
    # dw (F, C, 3, 3) = Gᵀ dU G, the adjoint of _filters, of dU summed over the slots in order; du_slots (slots,
    # 16, ≥ F·cp), dU[ξ]ᵀ (F, cp). Runs of 16 filters in parallel; in each filter, runs of 16 channels at a time,
    # each step across the run (vectorised).
    f_ = dw.shape[0]
    for job in prange((f_ + 15) // 16):
        d = np.empty((16, 16), dtype=dw.dtype)  # dU[ξ] of the run's channels
        s = np.empty((12, 16), dtype=dw.dtype)  # S = Gᵀ dU, row-major (3 × 4)
        for f in range(job * 16, min(f_, job * 16 + 16)):
            _gradient_row(du_slots, cp, dw, f, d, s)


@exact_kernel
def _gradient_row(du_slots, cp, dw, f, d, s):
    # Filter f of _weight_gradient.
    c_ = dw.shape[1]
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
    # Filters innermost from w transposed by numpy: a kernel reading w across its rows is slower.
    w = np.ascontiguousarray(w.transpose(1, 0, 2, 3)) if filters_innermost else w
    u = np.empty((16, rules.unaliased_stride(w.shape[0] * columns, w.itemsize)), dtype=w.dtype)
    planes = u[:, :w.shape[0] * columns].reshape(16, w.shape[0], columns)
    planes[:, :, w.shape[1]:] = 0.0
    _filters(w, u, columns)
    return u


@functools.lru_cache(maxsize=64)
def _tables(per: int, h: int, w: int, oh: int, ow: int, ph: int, pw: int, band: int) -> tuple[np.ndarray, np.ndarray]:
    """For each tile of a group of ``per`` samples: the rows of its 16 inputs, row-major (sample s's position
    (r, c) at s·H·W + r·W + c; per·H·W, the row of zeros, where the tile covers the padding), and of its 4
    outputs (at s·OH·OW + r·OW + c; past the output's edge a row never read: per·OH·OW, or in bands of ``band``
    tiles each band's own after it, so that bands running at once never write one row). Made once per layer
    shape (cached)."""
    ty, tx = tiles(oh, ow)
    s, i, j = (a[..., None, None] for a in np.meshgrid(np.arange(per), np.arange(ty), np.arange(tx), indexing="ij"))
    a = np.arange(4)
    r, c = 2 * i + a[:, None] - ph, 2 * j + a[None, :] - pw
    inputs = np.where((0 <= r) & (r < h) & (0 <= c) & (c < w), s * h * w + r * w + c, per * h * w)
    b = np.arange(2)
    r, c = 2 * i + b[:, None], 2 * j + b[None, :]
    past = per * oh * ow + ((i * tx + j) // band if band else 0)
    outputs = np.where((r < oh) & (c < ow), s * oh * ow + r * ow + c, past)
    inputs, outputs = (np.ascontiguousarray(t.reshape(-1), dtype=np.int64) for t in (inputs, outputs))
    for table in (inputs, outputs):
        table.flags.writeable = False
    return inputs, outputs


class _Plan:
    """How a call runs: in groups of ``per`` samples (``band`` = 0) or one sample at a time in bands of ``band``
    tiles (``rules.winograd_band``); tiles per sample ``t``; C' and F' (``cp``, ``fp``: channels and filters rounded
    up to whole vectors); the row strides of V and M (``cs``, ``fs``: ``rules.unaliased_stride``, since the
    products read runs of many rows of U, V or M, which rows a power of two apart would crowd into a few sets of
    L1); the products' runs of rows (``chunk``); each tile's input and output rows (``inputs``, ``outputs``); how
    many bands a sample has (0 in groups) and how many groups a batch."""

    def __init__(self, x: np.ndarray, f: int, oh: int, ow: int, ph: int, pw: int):
        n, c, h, w = x.shape
        ty, tx = tiles(oh, ow)
        self.lanes = simd.lanes(x.itemsize)
        self.t = ty * tx
        self.band = rules.winograd_band(c, f, self.t, x.itemsize)
        self.per = 1 if self.band else rules.winograd_plan(n, c, f, self.t, x.itemsize)
        self.span = self.band or self.per * self.t  # tiles transformed at a time
        self.chunk = rules.outer_channels(1, products.MOST_VECTORS * self.lanes * x.itemsize)
        self.cp, self.fp = -(-c // self.lanes) * self.lanes, -(-f // self.lanes) * self.lanes
        self.cs, self.fs = rules.unaliased_stride(self.cp, x.itemsize), rules.unaliased_stride(self.fp, x.itemsize)
        self.inputs, self.outputs = _tables(self.per, h, w, oh, ow, ph, pw, self.band)
        self.x_rows = (self.per * h * w + 1) * self.cp   # a group's or sample's rows, and the row of zeros
        self.bands = -(-self.t // self.band) if self.band else 0
        self.groups = -(-n // self.per)
        self.y_rows = (self.per * oh * ow + max(self.bands, 1)) * self.fp  # and the rows past the output's edges

    def tiles_buffers(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """V and M, per thread, for the tiles transformed at a time."""
        threads = numba.get_num_threads()
        return (scratch("winograd.v", (threads, 16 * self.span * self.cs), x.dtype),
                scratch("winograd.m", (threads, 16 * self.span * self.fs), x.dtype))

    def rows(self, slot: str, x: np.ndarray, size: int, count: int) -> np.ndarray:
        """``count`` buffers of ``size`` (one per thread in groups; in bands one shared, or one per slot)."""
        return scratch(slot, (count, size), x.dtype)


def forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray, y: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """y (N, F, OH, OW) = conv(x (N, C, H, W), w (F, C, 3, 3)) + bias (F,) or (0,): stride 1, dilation 1, one
    group, padding (ph, pw); OH = H + 2·ph − 2. Arrays as conv2d_forward has checked them."""
    f, oh, ow = y.shape[1:]
    p = _Plan(x, f, oh, ow, ph, pw)
    ut = _transformed(w, p.fs, filters_innermost=True)
    v, m = p.tiles_buffers(x)
    bases = products.point_bases(p.span, p.cs)
    if p.band:
        _forward_bands(x, ut, bias, y, p.band, p.t, p.cp, p.fp, p.cs, p.fs, p.inputs, p.outputs, bases, p.chunk,
                       p.rows("winograd.xt", x, p.x_rows, 1)[0], v, m, p.rows("winograd.yt", x, p.y_rows, 1)[0],
                       p.lanes)
    else:
        threads = numba.get_num_threads()
        _forward(x, ut, bias, y, p.per, p.t, p.cp, p.fp, p.cs, p.fs, p.inputs, p.outputs, bases, p.chunk,
                 p.rows("winograd.xt", x, p.x_rows, threads), v, m, p.rows("winograd.yt", x, p.y_rows, threads),
                 p.lanes)
    return y


def backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, dx: np.ndarray | None, dw: np.ndarray,
             ph: int, pw: int) -> None:
    """The gradients of :func:`forward`: dw (F, C, 3, 3) and, unless dx is None, dx (N, C, H, W), written in
    place (the bias gradient is the convolution's own)."""
    f, oh, ow = dy.shape[1:]
    p = _Plan(x, f, oh, ow, ph, pw)
    slots, span = rules.dw_slots(p.bands or p.groups)
    du = np.empty((slots, 16, rules.unaliased_stride(f * p.cp, x.itemsize)), dtype=x.dtype)  # planes read together
    uc = _transformed(w, p.cs, filters_innermost=False)
    v, m = p.tiles_buffers(x)
    tile_bases, filter_bases = products.point_bases(p.span, p.fs), np.arange(f, dtype=np.int64)
    dx_ = dx if dx is not None else x[:1]
    if p.band:
        _backward_bands(x, uc, dy, dx_, du, p.band, span, p.t, p.cp, p.fp, p.cs, p.fs, p.inputs, p.outputs,
                        filter_bases, tile_bases, p.chunk, p.rows("winograd.xt", x, p.x_rows, 1)[0],
                        p.rows("winograd.dyt", x, p.y_rows, 1)[0], v, m, p.rows("winograd.dxt", x, p.x_rows, slots),
                        p.lanes, dx is not None)
    else:
        threads = numba.get_num_threads()
        _backward(x, uc, dy, dx_, du, p.per, span, p.t, p.cp, p.fp, p.cs, p.fs, p.inputs, p.outputs, filter_bases,
                  tile_bases, p.chunk, p.rows("winograd.xt", x, p.x_rows, threads), v, m,
                  p.rows("winograd.dyt", x, p.y_rows, threads), p.rows("winograd.dxt", x, p.x_rows, threads),
                  p.lanes, dx is not None)
    _weight_gradient(du, p.cp, dw)
