"""3×3 stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3), forward and backward.

A 2×2 block of outputs of a 3×3 filter needs 36 multiplications directly; F(2×2, 3×3)
(Lavin & Gray, "Fast algorithms for convolutional neural networks", 2016) needs 16,
after cheap transforms made of additions only:

    y_tile (2×2) = Aᵀ [ (G w Gᵀ) ⊙ (Bᵀ d B) ] A

with d the 4×4 input tile under the block (tiles overlap by 2), w the 3×3 filter,
and the fixed matrices below. Summed over input channels, the 16 products ⊙ of
each tile become 16 GEMMs, one per position ξ of the 4×4 transformed tile:

    M[ξ] (F, tiles) = U[ξ] (F, C) · V[ξ] (C, tiles),   U = G w Gᵀ,  V = Bᵀ d B,

so a layer costs 16·F·C multiply-adds per tile (4 outputs) instead of 36·F·C:
2.25x fewer. The backward pass is the same algebra read backwards (adjoints):
dM = A dy Aᵀ per tile, then

    dU[ξ] (F, C) = Σ over tiles dM[ξ] · V[ξ]ᵀ,   dw = Gᵀ dU G,
    dV[ξ] (C, tiles) = U[ξ]ᵀ · dM[ξ],           dd = B dV Bᵀ, added into the overlapping tiles of dx,

which is the exact gradient of the forward computation (and, in exact
arithmetic, of the convolution: the transforms are an identity). In float32
the results differ from the float64 convolution by 3-8e-7 of the largest value
on ResNet-18- and VGG-shaped layers, against 2-5e-7 for the other paths
(tests/test_kernels.py holds them under 5e-6).

Layout: a *group* of samples (``rules.winograd_plan``: its transformed tiles
fit half a core's L2, and there are enough of them for the GEMMs) is transformed into V (16, C, group tiles), tiles numbered
sample-major, then row-major inside a sample; the GEMMs are called from the
kernel (:mod:`cnncli.engine.blas`). Groups run in parallel; the weight
gradient of each run of groups (a *slot*, ``rules.dw_slots``) is summed in
order, so the result does not depend on the number of threads. The transforms
are additions only, compiled without fast-math, so their bits do not depend on
where the arrays sit.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import get_thread_id, prange

from cnncli.engine import blas, rules, simd
from cnncli.engine.arrays import scratch
from cnncli.engine.blas import NO_TRANS, TRANS, gemm
from cnncli.engine.jit import exact_kernel, exact_parallel_kernel

__all__ = ["G", "backward", "forward", "tiles"]

#: The filter transform (4×3): U = G w Gᵀ. Its 1/2 are exact in binary floating point.
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
# Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] and
# Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]] are written out as additions in the kernels.


def tiles(oh: int, ow: int) -> tuple[int, int]:
    """Tile rows and columns covering an OH × OW output with 2×2 blocks."""
    return (oh + 1) // 2, (ow + 1) // 2


# ---------------------------------------------------------------------------
# the transforms of one sample: every channel (or filter) in one call, explicit
# indices, no array views in the loops (a call or a view per plane cost more
# than the work of a small plane)
# ---------------------------------------------------------------------------


@exact_kernel
def _input_tiles(xs, ph, pw, v, col0, ty_, tx_, pad, t4):
    # V[:, c, col0 + tile] = Bᵀ d B for every 4×4 tile d of every channel of xs (C, H, W), padded by (ph, pw)
    # into pad (2·TY + 2, 2·TX + 2); t4 (4, TY, 2·TX + 2): Bᵀ applied to each tile row's band of four rows.
    h_ = xs.shape[1]
    w_ = xs.shape[2]
    hb = pad.shape[0]
    wb = pad.shape[1]
    for c in range(xs.shape[0]):
        for r in range(hb):
            simd.zero(pad[r], 0, wb)
        for r in range(h_):
            simd.copy(pad[ph + r], pw, xs[c, r], 0, w_)
        for ty in range(ty_):
            r = 2 * ty
            for j in range(wb):
                t4[0, ty, j] = pad[r, j] - pad[r + 2, j]
                t4[1, ty, j] = pad[r + 1, j] + pad[r + 2, j]
                t4[2, ty, j] = pad[r + 2, j] - pad[r + 1, j]
                t4[3, ty, j] = pad[r + 1, j] - pad[r + 3, j]
        for i in range(4):
            for ty in range(ty_):
                q0 = col0 + ty * tx_
                for tx in range(tx_):
                    e0 = t4[i, ty, 2 * tx]
                    o0 = t4[i, ty, 2 * tx + 1]
                    e1 = t4[i, ty, 2 * tx + 2]
                    o1 = t4[i, ty, 2 * tx + 3]
                    v[4 * i, c, q0 + tx] = e0 - e1
                    v[4 * i + 1, c, q0 + tx] = o0 + e1
                    v[4 * i + 2, c, q0 + tx] = e1 - o0
                    v[4 * i + 3, c, q0 + tx] = o0 - o1


@exact_kernel
def _input_tiles_adjoint(dv, col0, dxs, ph, pw, ty_, tx_, dpad, h):
    # The adjoint of _input_tiles: B dV Bᵀ of every tile of every channel, added up in the padded plane dpad
    # where the tiles overlap, the padding cropped off into dxs (C, H, W); h (4, 4, TY, TX): B applied to
    # the tiles' columns.
    hb = dpad.shape[0]
    wb = dpad.shape[1]
    last = tx_ - 1
    for c in range(dxs.shape[0]):
        for j in range(4):
            for ty in range(ty_):
                q0 = col0 + ty * tx_
                for tx in range(tx_):
                    v0 = dv[j, c, q0 + tx]
                    v1 = dv[4 + j, c, q0 + tx]
                    v2 = dv[8 + j, c, q0 + tx]
                    v3 = dv[12 + j, c, q0 + tx]
                    h[0, j, ty, tx] = v0
                    h[1, j, ty, tx] = v1 - v2 + v3
                    h[2, j, ty, tx] = v1 + v2 - v0
                    h[3, j, ty, tx] = -v3
        for r in range(hb):
            simd.zero(dpad[r], 0, wb)
        for ty in range(ty_):
            for k in range(4):
                r = 2 * ty + k
                # column 2m takes tile m's first column and tile m-1's third; 2m+1 the second and the fourth
                dpad[r, 0] += h[k, 0, ty, 0]
                dpad[r, 1] += h[k, 1, ty, 0] - h[k, 2, ty, 0] + h[k, 3, ty, 0]
                for m in range(1, tx_):
                    dpad[r, 2 * m] += h[k, 0, ty, m] + (h[k, 1, ty, m - 1] + h[k, 2, ty, m - 1] - h[k, 0, ty, m - 1])
                    dpad[r, 2 * m + 1] += (h[k, 1, ty, m] - h[k, 2, ty, m] + h[k, 3, ty, m]) - h[k, 3, ty, m - 1]
                dpad[r, 2 * tx_] += h[k, 1, ty, last] + h[k, 2, ty, last] - h[k, 0, ty, last]
                dpad[r, 2 * tx_ + 1] -= h[k, 3, ty, last]
        for r in range(dxs.shape[1]):
            simd.copy(dxs[c, r], 0, dpad[ph + r], pw, dxs.shape[2])


@exact_kernel
def _output_tiles(m, col0, ys, bias, ty_, tx_, ab):
    # ys (F, OH, OW) = Aᵀ M A of every tile of every filter, plus the bias (F,) or (0,); ab (8, TY, TX): Aᵀ
    # applied to the tiles' rows.
    oh_ = ys.shape[1]
    ow_ = ys.shape[2]
    pairs = ow_ // 2
    has_bias = bias.shape[0] > 0
    for f in range(ys.shape[0]):
        b = bias[f] if has_bias else bias.dtype.type(0)
        for j in range(4):
            for ty in range(ty_):
                q0 = col0 + ty * tx_
                for tx in range(tx_):
                    m0 = m[j, f, q0 + tx]
                    m1 = m[4 + j, f, q0 + tx]
                    m2 = m[8 + j, f, q0 + tx]
                    m3 = m[12 + j, f, q0 + tx]
                    ab[j, ty, tx] = m0 + m1 + m2
                    ab[4 + j, ty, tx] = m1 - m2 - m3
        for r in range(oh_):
            ty = r // 2
            s = 4 * (r - 2 * ty)
            for tx in range(pairs):
                ys[f, r, 2 * tx] = (ab[s, ty, tx] + ab[s + 1, ty, tx] + ab[s + 2, ty, tx]) + b
                ys[f, r, 2 * tx + 1] = (ab[s + 1, ty, tx] - ab[s + 2, ty, tx] - ab[s + 3, ty, tx]) + b
            if ow_ > 2 * pairs:
                ys[f, r, 2 * pairs] = (ab[s, ty, pairs] + ab[s + 1, ty, pairs] + ab[s + 2, ty, pairs]) + b


@exact_kernel
def _output_tiles_adjoint(dys, dm, col0, ty_, tx_, s4):
    # The adjoint of _output_tiles: dM[:, f, col0 + tile] = A dy Aᵀ for every 2×2 block of every filter's
    # dys (F, OH, OW), zeros past its edges; s4 (4, TY, 2·TX + 2): A applied to each pair of rows.
    oh_ = dys.shape[1]
    ow_ = dys.shape[2]
    width = 2 * tx_
    for f in range(dys.shape[0]):
        for ty in range(ty_):
            r = 2 * ty
            if r + 1 < oh_:
                for j in range(ow_):
                    p = dys[f, r, j]
                    q = dys[f, r + 1, j]
                    s4[0, ty, j] = p
                    s4[1, ty, j] = p + q
                    s4[2, ty, j] = p - q
                    s4[3, ty, j] = -q
            else:
                for j in range(ow_):
                    p = dys[f, r, j]
                    s4[0, ty, j] = p
                    s4[1, ty, j] = p
                    s4[2, ty, j] = p
                    s4[3, ty, j] = 0.0
            for j in range(ow_, width):
                for i in range(4):
                    s4[i, ty, j] = 0.0
        for i in range(4):
            for ty in range(ty_):
                q0 = col0 + ty * tx_
                for tx in range(tx_):
                    ev = s4[i, ty, 2 * tx]
                    od = s4[i, ty, 2 * tx + 1]
                    dm[4 * i, f, q0 + tx] = ev
                    dm[4 * i + 1, f, q0 + tx] = ev + od
                    dm[4 * i + 2, f, q0 + tx] = ev - od
                    dm[4 * i + 3, f, q0 + tx] = -od


# ---------------------------------------------------------------------------
# the kernels: groups of samples in parallel, 16 GEMMs per group
# ---------------------------------------------------------------------------


@exact_parallel_kernel
def _forward(address, ilp64, x, u, bias, y, per, ph, pw, pad_buf, v_buf, m_buf, rows_buf, ab_buf):
    # u (16, F, C); per: samples per group; *_buf[t]: thread t's scratch (padded plane, V, M, the transforms').
    n_ = x.shape[0]
    c_ = x.shape[1]
    f_ = u.shape[1]
    ty_ = (y.shape[2] + 1) // 2
    tx_ = (y.shape[3] + 1) // 2
    t_ = ty_ * tx_
    ld = v_buf.shape[3]
    for gi in prange((n_ + per - 1) // per):
        t = get_thread_id()
        pad, v, m, rows, ab = pad_buf[t], v_buf[t], m_buf[t], rows_buf[t], ab_buf[t]
        n0 = gi * per
        n1 = min(n_, n0 + per)
        for n in range(n0, n1):
            _input_tiles(x[n], ph, pw, v, (n - n0) * t_, ty_, tx_, pad, rows)
        cols = (n1 - n0) * t_
        for k in range(16):
            gemm(address, ilp64, NO_TRANS, NO_TRANS, f_, cols, c_, u[k], c_, v[k], ld, 0.0, m[k], ld)
        for n in range(n0, n1):
            _output_tiles(m, (n - n0) * t_, y[n], bias, ty_, tx_, ab)


@exact_parallel_kernel
def _backward(address, ilp64, x, u, dy, dx, du_slots, per, span, ph, pw, pad_buf, v_buf, m_buf, rows_buf,
              h_buf, need_dx):
    # du_slots (slots, 16, F, C): slot s sums dU over groups s·span ... in order; v_buf[t] holds V, then dV.
    n_ = x.shape[0]
    c_ = x.shape[1]
    f_ = u.shape[1]
    ty_ = (dy.shape[2] + 1) // 2
    tx_ = (dy.shape[3] + 1) // 2
    t_ = ty_ * tx_
    ld = v_buf.shape[3]
    groups = (n_ + per - 1) // per
    for si in prange(du_slots.shape[0]):
        t = get_thread_id()
        pad, v, m, rows, h = pad_buf[t], v_buf[t], m_buf[t], rows_buf[t], h_buf[t]
        slot = du_slots[si]
        for gi in range(si * span, min(groups, si * span + span)):
            n0 = gi * per
            n1 = min(n_, n0 + per)
            cols = (n1 - n0) * t_
            for n in range(n0, n1):
                _input_tiles(x[n], ph, pw, v, (n - n0) * t_, ty_, tx_, pad, rows)
                _output_tiles_adjoint(dy[n], m, (n - n0) * t_, ty_, tx_, rows)
            beta = 0.0 if gi == si * span else 1.0
            for k in range(16):
                gemm(address, ilp64, NO_TRANS, TRANS, f_, c_, cols, m[k], ld, v[k], ld, beta, slot[k], c_)
            if need_dx:
                for k in range(16):  # V is spent: dV takes its place
                    gemm(address, ilp64, TRANS, NO_TRANS, c_, cols, f_, u[k], c_, m[k], ld, 0.0, v[k], ld)
                for n in range(n0, n1):
                    _input_tiles_adjoint(v, (n - n0) * t_, dx[n], ph, pw, ty_, tx_, pad, h)


# ---------------------------------------------------------------------------
# the public functions (called by cnncli.engine.conv, which has checked the arguments)
# ---------------------------------------------------------------------------


def _filters(w: np.ndarray) -> np.ndarray:
    """U (16, F, C) = G w Gᵀ of w (F, C, 3, 3), ξ = 4·i + j."""
    # Two big GEMMs (tensordot), not a small product per filter: a stack of 3×3 products costs microseconds
    # each, tens of milliseconds for a 512×512 layer.
    g = G.astype(w.dtype)
    wg = np.tensordot(w, g, axes=([3], [1]))      # (F, C, 3, 4): w Gᵀ
    u = np.tensordot(g, wg, axes=([1], [2]))      # (4, F, C, 4): G w Gᵀ
    return np.ascontiguousarray(u.transpose(0, 3, 1, 2)).reshape(16, w.shape[0], w.shape[1])


def _plan(x: np.ndarray, f: int, oh: int, ow: int, adjoint: bool) -> tuple[int, tuple[np.ndarray, ...]]:
    """(samples per group, per-thread scratch) of a call: the padded plane, V, M (room
    for a group's tiles), the rows of the input transform, and those of the output transform (forward) or of
    the input transform's adjoint (backward)."""
    n, c = x.shape[:2]
    ty, tx = tiles(oh, ow)
    per = rules.winograd_plan(n, c, f, ty * tx, x.itemsize)
    t, dtype = numba.get_num_threads(), x.dtype
    last = (scratch("winograd.h", (t, 4, 4, ty, tx), dtype) if adjoint
            else scratch("winograd.ab", (t, 8, ty, tx), dtype))
    return per, (scratch("winograd.pad", (t, 2 * ty + 2, 2 * tx + 2), dtype),
                 scratch("winograd.v", (t, 16, c, per * ty * tx), dtype),
                 scratch("winograd.m", (t, 16, f, per * ty * tx), dtype),
                 scratch("winograd.rows", (t, 4, ty, 2 * tx + 2), dtype), last)


def forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray, y: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """y (N, F, OH, OW) = conv(x (N, C, H, W), w (F, C, 3, 3)) + bias (F,) or (0,): stride 1, dilation 1, one
    group, padding (ph, pw); OH = H + 2·ph − 2. Arrays as conv2d_forward has checked them."""
    f, oh, ow = y.shape[1:]
    per, buffers = _plan(x, f, oh, ow, adjoint=False)
    fns = blas.FUNCTIONS
    _forward(fns.of(x.dtype), fns.ilp64, x, _filters(w), bias, y, per, ph, pw, *buffers)
    return y


def backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, dx: np.ndarray | None, dw: np.ndarray,
             ph: int, pw: int) -> None:
    """The gradients of :func:`forward`: dw (F, C, 3, 3) and, unless dx is None, dx (N, C, H, W), written in
    place (the bias gradient is the convolution's own)."""
    n, c = x.shape[:2]
    f, oh, ow = dy.shape[1:]
    per, buffers = _plan(x, f, oh, ow, adjoint=True)
    slots, span = rules.dw_slots(-(-n // per))
    du = np.empty((slots, 16, f, c), dtype=x.dtype)
    fns = blas.FUNCTIONS
    _backward(fns.of(x.dtype), fns.ilp64, x, _filters(w), dy, dx if dx is not None else x[:0], du, per, span,
              ph, pw, *buffers, dx is not None)
    g = G.astype(x.dtype)
    total = du[0] if slots == 1 else du.sum(axis=0)  # the slots in order
    gd = np.tensordot(g, total.reshape(4, 4, f, c), axes=([0], [0]))  # (3, 4, F, C): Gᵀ dU
    dw[...] = np.tensordot(gd, g, axes=([1], [0])).transpose(1, 2, 0, 3)  # Gᵀ dU G, the adjoint of _filters
