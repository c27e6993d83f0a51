"""'Same' stride-1 convolution as register-blocked direct loops, forward and backward; and the forward
pass of strided layers whose filters fill whole vectors (``rules.outer_applies``), with the filters in the lanes.

Each output is computed once, in a register, and stored once; no partial sum
goes through memory between taps, as it does with a GEMM per tap. Two register
blocks (cnncli.engine.simd):

* *positions in the lanes* (:func:`~cnncli.engine.simd.multiply_add_block`):
  FB filters × V·L positions, a broadcast weight times a vector of inputs;
  the forward pass of layers whose filters do not fill blocks of 4 vectors,
  and the input gradient;
* *filters in the lanes* (:func:`~cnncli.engine.simd.multiply_add_outer`):
  P points × V vectors of filters, a broadcast input times a vector of
  weights or gradients, half the loads per multiply-add; the forward pass
  where the filters fill blocks of 4 vectors (``rules.outer_forward``: 64
  filters with AVX-512) or the layer is strided, P positions
  (:func:`cnncli.engine.products.outer_rows`), over runs of channels whose weights
  stay in L1 (``rules.outer_channels``), stored filters innermost and
  transposed back in registers (:mod:`cnncli.engine.layout`); an output
  position's inputs are then scalars at its window's offsets in the padded
  planes, so a stride only spaces the positions' bases; and the weight
  gradient, P channel-taps × the filters (:func:`cnncli.engine.products.outer_sums`),
  over dy transposed to filters-innermost.

Layouts. A *group* of S samples is copied side by side into per-thread
buffers, rows ``rules.unaliased_stride`` apart. For positions in the lanes,
each channel's S planes unpadded, xg (C, S·H·W): positions are numbered
q = s·H·W + oh·W + ow, so tap (i, j) of every output of the group is one
contiguous run of xg at offset (i·dh - ph)·W + (j·dw - pw), and a block of
positions may span rows and samples. Where a tap falls outside its plane (the
padding) the lane is left out by a mask (:func:`_mask_table`: one bit per
lane, per vector of positions and tap), so every lane of a block is an output:
no position is computed that is not stored, but in a group's last vectors. For
filters in the lanes, each channel's S planes zero-padded, xp (C, S·Hp·Wp):
an input is a broadcast scalar, and the padding is its zeros.

Apart from that strided forward pass, the layers are 'same' convolutions (``rules.blocked_applies``: padding
dh·(KH-1)/2 each side, so OH = H). Then the input gradient is itself such a
convolution of dy, with the filters flipped and their channels and filters
swapped, at the same offsets under the same masks.

Work is shared out by group of samples (by group and run of filter blocks in a
forward pass over fewer samples than threads); the weight gradient of a run of
groups (a *slot*, ``rules.slot_samples``) is summed in order. Every output is
the same sum in the same order on any split, so the results are bit-identical
on any number of threads.

Shapes: x (N, C, H, W), w (F, C, KH, KW), y and dy (N, F, OH, OW) (OH = H, OW = W in the 'same' layers).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import get_thread_id, prange

from cnncli.engine import layout, products, rules, simd
from cnncli.engine.arrays import scratch
from cnncli.engine.jit import kernel, parallel_kernel

__all__ = ["backward", "forward"]

FILTERS, VECTORS = rules.register_block(simd.VECTOR_REGISTERS)
_block = simd.multiply_add_block(FILTERS, VECTORS)
# the forward pass with filters in the lanes (rules.outer_forward): blocks of up to _VECTORS_OUT vectors of filters
_VECTORS_OUT = rules.OUTER_FORWARD_VECTORS


# ---------------------------------------------------------------------------
# copies in and out of a group's buffers (simd.copy: a plane in a few vector
# moves)
# ---------------------------------------------------------------------------


@kernel
def _gather(x, s0, sc, xg, stride):
    # Samples s0 .. s0+sc-1 of x (N, C, H, W) into xg: channel c's sc planes from c·stride on. (Made for a whole
    # group, the masks of a shorter one let its last block read past its planes, for outputs never stored.)
    c_ = x.shape[1]
    plane = x.shape[2] * x.shape[3]
    src = x.reshape(-1)
    for c in range(c_):
        for s in range(sc):
            simd.copy(xg, c * stride + s * plane, src, ((s0 + s) * c_ + c) * plane, plane)


@kernel
def _gather_padded(x, s0, sc, xp, stride, ph, pw):
    # Samples s0 .. s0+sc-1 of x (N, C, H, W) into xp: channel c's sc planes from c·stride on, each zero-padded
    # to (H + 2ph, W + 2pw).
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    wp = w_ + 2 * pw
    plane = (h_ + 2 * ph) * wp
    src = x.reshape(-1)
    for c in range(c_):
        for s in range(sc):
            base = c * stride + s * plane
            first = ((s0 + s) * c_ + c) * h_ * w_
            simd.zero(xp, base, ph * wp + pw)
            for r in range(h_):
                row = base + (ph + r) * wp + pw
                simd.copy(xp, row, src, first + r * w_, w_)
                simd.zero(xp, row + w_, 2 * pw if r + 1 < h_ else plane - (ph + r) * wp - pw - w_)


@kernel
def _scatter(out, orow, s0, sc, y, f0, fb, bias):
    # The block's rows (fb, ≥ sc·H·W) → y[s0 + s, f0 + i] (bias added when given).
    f_ = y.shape[1]
    plane = y.shape[2] * y.shape[3]
    dst = y.reshape(-1)
    for i in range(min(fb, f_ - f0)):
        f = f0 + i
        for s in range(sc):
            if bias.shape[0] > 0:
                simd.copy_add(dst, ((s0 + s) * f_ + f) * plane, out, i * orow + s * plane, plane, bias[f])
            else:
                simd.copy(dst, ((s0 + s) * f_ + f) * plane, out, i * orow + s * plane, plane)


# ---------------------------------------------------------------------------
# the kernels
# ---------------------------------------------------------------------------


@kernel
def _job(job, split, group, n_, blocks):
    # A forward pass's job ``job``, shared out by group of samples and run of filter blocks (``split`` runs):
    # its first sample, its samples, and its filter blocks b0 .. b1-1.
    g = job // split
    part = job - g * split
    per = (blocks + split - 1) // split
    s0 = g * group
    return s0, min(n_, s0 + group) - s0, part * per, min(blocks, part * per + per)


@parallel_kernel
def _forward(x, wb, bias, y, xg_buf, out_buf, masks, offs, group, split, step):
    # wb (blocks, C·T, FB): filter block b's weights, row c·T + t; bias (F,) or (0,); masks: _mask_table's; per
    # thread: xg_buf (C rows of ≥ group·H·W), out_buf (FB rows of orow ≥ group·H·W rounded up to step).
    n_, c_, h_, w_ = x.shape
    blocks = wb.shape[0]
    taps = offs.shape[0]
    lanes_ = step // VECTORS
    plane = h_ * w_
    orow = out_buf.shape[1] // FILTERS
    stride = xg_buf.shape[1] // c_
    for job in prange((n_ + group - 1) // group * split):
        s0, sc, b0, b1 = _job(job, split, group, n_, blocks)
        t = get_thread_id()
        xg = xg_buf[t]
        out = out_buf[t]
        span = sc * plane
        _gather(x, s0, sc, xg, stride)
        for b in range(b0, b1):
            weights = wb[b].reshape(-1)
            for q0 in range(0, span, step):
                _block(xg, q0, weights, 0, out, q0, orow, c_, stride, offs, masks, q0 // lanes_ * taps, taps)
            _scatter(out, orow, s0, sc, y, b * FILTERS, FILTERS, bias)


@parallel_kernel
def _forward_outer(x, wt, bias, y, xp_buf, yt_buf, bases, taps, wrows, ph, pw, group, split, chunk, lanes_):
    # Filters in the lanes: wt (T·C·F) the weights laid (T, C, F); bases (≥ group·OH·OW): an output's first input
    # in xp (at tap (0, 0)); taps (T): a tap's offset from there; wrows (T): its weights' row in wt. Per thread:
    # xp_buf (C rows of ≥ group padded planes), yt_buf (group·OH·OW rows of F). A job's run of filter vectors
    # in blocks of P positions × up to 4 vectors (products.outer_rows) over ``chunk`` channels at a time (their
    # weights stay in L1 while every position is run past them), stored filters innermost, then transposed into y.
    n_, c_ = x.shape[0], x.shape[1]
    f_ = y.shape[1]
    plane = y.shape[2] * y.shape[3]
    xstride = xp_buf.shape[1] // c_
    vectors = f_ // lanes_
    for job in prange((n_ + group - 1) // group * split):
        s0, sc, v0, v1 = _job(job, split, group, n_, vectors)
        t = get_thread_id()
        xp = xp_buf[t]
        yt = yt_buf[t]
        _gather_padded(x, s0, sc, xp, xstride, ph, pw)
        f0 = v0 * lanes_
        width = (v1 - v0) * lanes_
        points = bases[:sc * plane]
        for c0 in range(0, c_, chunk):
            products.outer_rows(xp[c0 * xstride:], points, taps, xstride, wt, c0 * f_ + f0, wrows, f_,
                                min(chunk, c_ - c0), yt, f0, f_, width, c0, lanes_)
        layout.from_rows(yt, f_, s0, sc, y, f0, width, bias, lanes_)


@parallel_kernel
def _backward(x, dy, wbt, parts, dx, xp_buf, dyt_buf, dyg_buf, out_buf, masks, offs, bases, xrows, dyrows, ph, pw,
              per, group, lanes_, step, need_dx):
    # parts (slots, C·T, Fp): slot k's dwᵀ, summed over samples k·per ... in groups of ``group``; Fp = F rounded up
    # to whole vectors. wbt (C blocks, F·T, FB): the flipped, transposed filters in blocks
    # (the input gradient's weights). bases (C·T): channel-tap i's first input in xp; xrows, dyrows (group·H): an
    # output row's first input in xp (at tap (0, 0)) and first gradient in dyt. masks as in _forward. Per thread:
    # xp_buf (C rows of ≥ group padded planes), dyt_buf (group·H·W·Fp), dyg_buf (F rows of ≥ group·H·W, for dx's
    # blocks as xg_buf is for y's), out_buf (FB rows of orow).
    n_, c_, h_, w_ = x.shape
    f_ = dy.shape[1]
    fp = parts.shape[2]
    t_ = offs.shape[0]
    plane = h_ * w_
    orow = out_buf.shape[1] // FILTERS
    xstride = xp_buf.shape[1] // c_
    row = dyg_buf.shape[1] // f_
    for slot in prange(parts.shape[0]):
        tid = get_thread_id()
        xp = xp_buf[tid]
        dyt = dyt_buf[tid]
        dyg = dyg_buf[tid]
        out = out_buf[tid]
        dw = parts[slot].reshape(-1)
        for k in range(dw.shape[0]):
            dw[k] = 0.0
        last = min(n_, slot * per + per)
        for s0 in range(slot * per, last, group):
            sc = min(last, s0 + group) - s0
            _gather_padded(x, s0, sc, xp, xstride, ph, pw)
            layout.to_rows(dy, s0, sc, dyt, fp, lanes_)
            products.outer_sums(xp, bases, xrows[:sc * h_], 1, dyt, dyrows[:sc * h_], fp, w_, dw, fp, lanes_)
            if need_dx:
                _gather(dy, s0, sc, dyg, row)
                for b in range(wbt.shape[0]):
                    weights = wbt[b].reshape(-1)
                    for q0 in range(0, sc * plane, step):
                        _block(dyg, q0, weights, 0, out, q0, orow, f_, row, offs, masks, q0 // lanes_ * t_, t_)
                    _scatter(out, orow, s0, sc, dx, b * FILTERS, FILTERS, dx[0, 0, 0, :0])


# ---------------------------------------------------------------------------
# the public functions
# ---------------------------------------------------------------------------


def _blocks(w: np.ndarray) -> np.ndarray:
    """w (F, C, KH, KW) → (F/FB rounded up, C·KH·KW, FB): each block's weights, filters innermost (zeros past F)."""
    f, c, kh, kw = w.shape
    blocks = -(-f // FILTERS)
    wb = np.zeros((blocks * FILTERS, c * kh * kw), dtype=w.dtype)
    wb[:f] = w.reshape(f, -1)
    return np.ascontiguousarray(wb.reshape(blocks, FILTERS, c * kh * kw).transpose(0, 2, 1))


def _taps(kernel: tuple[int, int], ph: int, pw: int, dh: int, dw: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Each tap's rows and columns from an output to its input, taps row-major."""
    rows = tuple(i * dh - ph for i in range(kernel[0]) for _ in range(kernel[1]))
    cols = tuple(j * dw - pw for _ in range(kernel[0]) for j in range(kernel[1]))
    return rows, cols


def _offsets(rows: tuple[int, ...], cols: tuple[int, ...], width: int, ph: int = 0, pw: int = 0) -> np.ndarray:
    """Each tap's offset from an output to its input in a plane of ``width`` (int64); in a zero-padded one, from
    the output's input at tap (0, 0) (``ph``, ``pw`` its padding)."""
    return (np.array(rows, dtype=np.int64) + ph) * width + (np.array(cols, dtype=np.int64) + pw)


@functools.lru_cache(maxsize=64)
def _mask_table(positions: int, group: int, h: int, w: int, rows: tuple[int, ...], cols: tuple[int, ...],
                lanes_: int) -> np.ndarray:
    """The lane masks of a group of ``group`` samples of (h, w) planes, for ``positions`` (a multiple of L):
    (positions/L · T,) int64, entry v·T + t with bit l set where position q = v·L + l is one of the group's and
    its tap t, at (rows[t], cols[t]) from it, falls inside its plane. Made once per layer shape (cached)."""
    q = np.arange(positions)
    p = q % (h * w)
    r = p // w + np.array(rows)[:, None]
    c = p % w + np.array(cols)[:, None]
    inside = (0 <= r) & (r < h) & (0 <= c) & (c < w) & (q < group * h * w)  # (T, positions)
    bits = (inside.reshape(len(rows), -1, lanes_).astype(np.int64) << np.arange(lanes_)).sum(axis=2)
    table = np.ascontiguousarray(bits.T).reshape(-1)
    table.flags.writeable = False
    return table


def forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray, y: np.ndarray, ph: int, pw: int, dh: int,
            dw: int, sh: int = 1, sw: int = 1) -> np.ndarray:
    """y = conv(x, w) + bias; bias (F,) or (0,). A 'same' convolution at stride 1 (``rules.blocked_applies``),
    or any convolution of one group whose filters fill whole vectors (``rules.outer_applies``), which runs with
    the filters in the lanes.

    Arguments as :func:`cnncli.engine.conv.conv2d_forward` has checked them.
    """
    n, c, h, wd = x.shape
    oh, ow = y.shape[2], y.shape[3]
    plane = oh * ow
    lanes_ = simd.lanes(x.itemsize)
    threads = numba.get_num_threads()
    rows, cols = _taps(w.shape[2:], ph, pw, dh, dw)
    f = w.shape[0]
    if (sh, sw) != (1, 1) or rules.outer_forward(f, lanes_, simd.VECTOR_REGISTERS):
        hp, wp = h + 2 * ph, wd + 2 * pw
        group = rules.blocked_group(n, (c * hp * wp + f * plane) * x.itemsize)
        xstride = rules.unaliased_stride(group * hp * wp, x.itemsize)
        vectors = f // lanes_
        split = min(vectors, -(-threads // -(-n // group)))
        wt = np.ascontiguousarray(w.transpose(2, 3, 1, 0)).reshape(-1)
        taps = _offsets(rows, cols, wp, ph, pw)
        _forward_outer(x, wt, bias, y, scratch("blocked.xp", (threads, c * xstride), x.dtype),
                       scratch("blocked.yt", (threads, group * plane * f), x.dtype),
                       _position_bases(group, oh, ow, hp, wp, sh, sw), taps,
                       np.arange(len(rows), dtype=np.int64) * (c * f), ph, pw, group, split,
                       rules.outer_channels(len(rows), _VECTORS_OUT * lanes_ * x.itemsize), lanes_)
        return y
    step = VECTORS * lanes_
    group = rules.blocked_group(n, (c + FILTERS) * plane * x.itemsize)
    qpad = -(-(group * plane) // step) * step
    blocks = -(-f // FILTERS)
    split = min(blocks, -(-threads // -(-n // group)))
    _forward(x, _blocks(w), bias, y,
             scratch("blocked.xg", (threads, c * rules.unaliased_stride(group * plane, x.itemsize)), x.dtype),
             scratch("blocked.out", (threads, FILTERS * rules.unaliased_stride(qpad, x.itemsize)), x.dtype),
             _mask_table(qpad, group, h, wd, rows, cols, lanes_), _offsets(rows, cols, wd), group, split, step)
    return y


@functools.lru_cache(maxsize=64)
def _position_bases(group: int, oh: int, ow: int, hp: int, wp: int, sh: int, sw: int) -> np.ndarray:
    """Each output position q = s·OH·OW + i·OW + j of a group: its first input in the group's zero-padded (hp, wp)
    planes (at tap (0, 0)), s·hp·wp + i·sh·wp + j·sw. Made once per layer shape (cached)."""
    q = np.arange(group * oh * ow)
    s, p = np.divmod(q, oh * ow)
    i, j = np.divmod(p, ow)
    bases = (s * hp * wp + i * sh * wp + j * sw).astype(np.int64)
    bases.flags.writeable = False
    return bases


@functools.lru_cache(maxsize=64)
def _row_tables(c: int, xstride: int, rows: tuple[int, ...], cols: tuple[int, ...], ph: int, pw: int, group: int,
                h: int, w: int, fp: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weight gradient's tables (int64): each channel-tap's first input in the group's zero-padded planes
    (C·T), each output row's first input there at tap (0, 0) and its first gradient in dy transposed
    (group·H each). Made once per layer shape (cached)."""
    hp, wp = h + 2 * ph, w + 2 * pw
    bases = (np.arange(c)[:, None] * xstride + _offsets(rows, cols, wp, ph, pw)[None, :]).reshape(-1)
    s, oh = np.divmod(np.arange(group * h), h)
    xrows = (s * hp * wp + oh * wp).astype(np.int64)
    dyrows = np.arange(group * h, dtype=np.int64) * (w * fp)
    for table in (bases, xrows, dyrows):
        table.flags.writeable = False
    return bases, xrows, dyrows


def backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, dx: np.ndarray | None, ph: int, pw: int, dh: int,
             dw: int, per: int) -> np.ndarray:
    """The gradients of :func:`forward`: dx into ``dx`` (unless None), and dwᵀ by slots, returned as
    (slots, C·KH·KW, F), slot k summed over samples k·per ... k·per + per - 1 in order
    (:func:`cnncli.engine.conv.general._sum_slots` adds the slots up and transposes)."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    plane = h * wd
    hp, wp = h + 2 * ph, wd + 2 * pw
    lanes_ = simd.lanes(x.itemsize)
    step = VECTORS * lanes_
    fp = -(-f // lanes_) * lanes_
    group = rules.blocked_group(per, (c * hp * wp + (f + fp) * plane) * x.itemsize)
    qpad = -(-(group * plane) // step) * step
    threads = numba.get_num_threads()
    xstride = rules.unaliased_stride(group * hp * wp, x.itemsize)
    parts = np.empty((-(-n // per), c * kh * kw, fp), dtype=x.dtype)
    flipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    rows, cols = _taps((kh, kw), ph, pw, dh, dw)
    bases, xrows, dyrows = _row_tables(c, xstride, rows, cols, ph, pw, group, h, wd, fp)
    _backward(x, dy, _blocks(flipped), parts, dx if dx is not None else np.empty((1, 1, 1, 1), dtype=x.dtype),
              scratch("blocked.xp", (threads, c * xstride), x.dtype),
              scratch("blocked.dyt", (threads, group * plane * fp), x.dtype),
              scratch("blocked.dyg", (threads, f * rules.unaliased_stride(group * plane, x.itemsize)), x.dtype),
              scratch("blocked.out", (threads, FILTERS * rules.unaliased_stride(qpad, x.itemsize)), x.dtype),
              _mask_table(qpad, group, h, wd, rows, cols, lanes_), _offsets(rows, cols, wd), bases, xrows, dyrows,
              ph, pw, per, group, lanes_, step, dx is not None)
    return parts if fp == f else np.ascontiguousarray(parts[:, :, :f])
