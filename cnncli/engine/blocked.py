"""'Same' stride-1 convolution as register-blocked direct loops, forward and backward.

Each output is computed once, in a register: a block of FB filters × V·L
positions (:func:`cnncli.engine.simd.multiply_add_block`) sums every channel
and tap into its accumulators, then is stored once; no partial sum goes
through memory between taps, as it does with a GEMM per tap. The weight
gradient is the mirror image (:func:`cnncli.engine.simd.multiply_add_reduce`):
FB × K sums over positions held in registers, one per (filter, tap), their lanes
added at the end.

Layout. A *group* of S samples is copied side by side into a per-thread buffer,
each channel's S planes zero-padded and consecutive: xg (C, S, Hp·Wp).
Positions are numbered along whole padded rows, q = s·Hp·Wp + oh·Wp + ow, so
tap (i, j) of every output of the group is one contiguous run of xg at offset
i·dh·Wp + j·dw, and a block of positions may span two samples. Positions that
are not outputs (the Wp - OW columns past each row's end, the rows past OH) are
*junk*: computed in the forward pass and never stored; in the backward pass
their gradient is zero.

The layers are 'same' convolutions (``rules.blocked_applies``: padding
dh·(KH-1)/2 each side, so OH = H). Then the input gradient is itself such a
convolution, of dy padded the same way with the filters flipped and their
channels and filters swapped, and the backward pass's copy of dy, dyg (F, S,
Hp·Wp) with dy[oh, ow] at q = s·Hp·Wp + oh·Wp + ow and zeros at the junk
positions, *is* that padded dy once shifted by ph·Wp + pw: one copy of dy feeds
both gradients.

Work is shared out by group of samples (by group and run of filter blocks in a
forward pass over fewer samples than threads); the weight gradient of a run of
groups (a *slot*, ``rules.slot_samples``) is summed in order. Every output is
the same sum in the same order on any split, so the results are bit-identical
on any number of threads.

Shapes: x (N, C, H, W), w (F, C, KH, KW), y and dy (N, F, H, W).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import get_thread_id, prange

from cnncli.engine import rules, simd
from cnncli.engine.arrays import scratch
from cnncli.engine.jit import kernel, parallel_kernel

__all__ = ["backward", "forward"]

FILTERS, VECTORS = rules.register_block(simd.VECTOR_REGISTERS)
_block = simd.multiply_add_block(FILTERS, VECTORS)
GRAD_FILTERS, GRAD_TAPS = rules.reduce_block(simd.VECTOR_REGISTERS)
_reduce = simd.multiply_add_reduce(GRAD_FILTERS, GRAD_TAPS)
_reduce_one = simd.multiply_add_reduce(GRAD_FILTERS, 1)  # the taps left over past a multiple of GRAD_TAPS


# ---------------------------------------------------------------------------
# copies in and out of a group's buffers, a row at a time (simd.copy: a short
# row in a few vector moves)
# ---------------------------------------------------------------------------


@kernel
def _gather(x, s0, sc, xg, at, ph, pw, tail):
    # Samples s0 .. s0+sc-1 of x (N, C, H, W) into xg at ``at``: (C, sc, Hp·Wp), every plane zero-padded,
    # then ``tail`` zeros after the last (blocks read past the last plane).
    c_, h_, w_ = x.shape[1], x.shape[2], x.shape[3]
    wp = w_ + 2 * pw
    plane = (h_ + 2 * ph) * wp
    span = sc * plane
    src = x.reshape(-1)
    for s in range(sc):
        for c in range(c_):
            base = at + c * span + s * plane
            first = ((s0 + s) * c_ + c) * h_ * w_
            simd.zero(xg, base, ph * wp + pw)
            for r in range(h_):
                row = base + (ph + r) * wp + pw
                simd.copy(xg, row, src, first + r * w_, w_)
                simd.zero(xg, row + w_, wp - w_ if r + 1 < h_ else plane - (ph + r) * wp - pw - w_)
    simd.zero(xg, at + c_ * span, tail)


@kernel
def _scatter(out, qpad, s0, sc, y, f0, fb, plane, wp, bias):
    # The block's rows (fb, ≥ sc·plane) → y[s0 + s, f0 + i] for their outputs (bias added when given), junk dropped.
    f_, oh_, ow_ = y.shape[1], y.shape[2], y.shape[3]
    dst = y.reshape(-1)
    for i in range(min(fb, f_ - f0)):
        f = f0 + i
        for s in range(sc):
            first = ((s0 + s) * f_ + f) * oh_ * ow_
            for oh in range(oh_):
                if bias.shape[0] > 0:
                    simd.copy_add(dst, first + oh * ow_, out, i * qpad + s * plane + oh * wp, ow_, bias[f])
                else:
                    simd.copy(dst, first + oh * ow_, out, i * qpad + s * plane + oh * wp, ow_)


# ---------------------------------------------------------------------------
# the kernels
# ---------------------------------------------------------------------------


@parallel_kernel
def _forward(x, wb, bias, y, xg_buf, out_buf, offs, ph, pw, group, split, step):
    # wb (blocks, C·T, FB): filter block b's weights, row c·T + t; bias (F,) or (0,); per thread: xg_buf
    # (≥ C·group·plane + plane + step), out_buf (FB·qpad, qpad ≥ group·plane rounded up to step).
    n_, c_ = x.shape[0], x.shape[1]
    blocks = wb.shape[0]
    wp = x.shape[3] + 2 * pw
    plane = (x.shape[2] + 2 * ph) * wp
    qpad = out_buf.shape[1] // FILTERS
    groups = (n_ + group - 1) // group
    per = (blocks + split - 1) // split
    for job in prange(groups * split):
        g = job // split
        part = job - g * split
        t = get_thread_id()
        xg = xg_buf[t]
        out = out_buf[t]
        s0 = g * group
        sc = min(n_, s0 + group) - s0
        span = sc * plane
        _gather(x, s0, sc, xg, 0, ph, pw, plane + step)
        for b in range(part * per, min(blocks, part * per + per)):
            weights = wb[b].reshape(-1)
            for q0 in range(0, span, step):
                _block(xg, q0, weights, 0, out, q0, qpad, c_, span, offs)
            _scatter(out, qpad, s0, sc, y, b * FILTERS, FILTERS, plane, wp, bias)


@parallel_kernel
def _backward(x, dy, wbt, parts, dx, xg_buf, dyg_buf, out_buf, offs, ph, pw, per, group, lanes_, step, lead,
              need_dx):
    # parts (slots, C·T, Fp): slot k's dwᵀ, summed over samples k·per ... in groups of ``group``; Fp = F
    # rounded up to GRAD_FILTERS. wbt (C blocks, F·T, FB): the flipped, transposed filters in blocks (the
    # input gradient's weights). Per thread: xg_buf as in _forward; dyg_buf (Fp rows of ``row`` + plane +
    # step): row f = `lead` zeros (ph·Wp + pw, the padding before the first position, rounded up to whole
    # vectors so that the sums' loads of dy are aligned), then the group's dy planes at their positions, zeros
    # elsewhere; out_buf (FB·qpad) for dx's blocks.
    n_, c_, h_, w_ = x.shape
    f_ = dy.shape[1]
    fp = parts.shape[2]
    t_ = offs.shape[0]
    wp = w_ + 2 * pw
    plane = (h_ + 2 * ph) * wp
    shift = lead - (ph * wp + pw)  # where the padded dy of the first sample starts in a row
    qpad = out_buf.shape[1] // FILTERS
    grads = dy.reshape(-1)
    for slot in prange(parts.shape[0]):
        tid = get_thread_id()
        xg = xg_buf[tid]
        dyg = dyg_buf[tid]
        out = out_buf[tid]
        dw = parts[slot].reshape(-1)
        for k in range(dw.shape[0]):
            dw[k] = 0.0
        last = min(n_, slot * per + per)
        for s0 in range(slot * per, last, group):
            sc = min(last, s0 + group) - s0
            span = sc * plane
            length = (span + lanes_ - 1) // lanes_ * lanes_
            row = lead + length
            _gather(x, s0, sc, xg, 0, ph, pw, plane + lanes_)
            # dy at the positions; the leading zeros of a row are the trailing ones of the row before.
            simd.zero(dyg, 0, lead)
            for f in range(fp):
                base = f * row + lead
                if f < f_:
                    for s in range(sc):
                        first = ((s0 + s) * f_ + f) * h_ * w_
                        for oh in range(h_):
                            at = base + s * plane + oh * wp
                            simd.copy(dyg, at, grads, first + oh * w_, w_)
                            simd.zero(dyg, at + w_, wp - w_)
                        simd.zero(dyg, base + s * plane + h_ * wp, plane - h_ * wp)
                    simd.zero(dyg, base + span, length + lead - span)
                else:
                    simd.zero(dyg, base, length + lead)
            simd.zero(dyg, fp * row + lead, plane + step - lead)
            for c in range(c_):
                for f0 in range(0, fp, GRAD_FILTERS):
                    t0 = 0
                    while t0 + GRAD_TAPS <= t_:
                        _reduce(xg, c * span, offs[t0:], dyg, f0 * row + lead, row, length, dw,
                                (c * t_ + t0) * fp + f0, 1, fp)
                        t0 += GRAD_TAPS
                    for t in range(t0, t_):
                        _reduce_one(xg, c * span, offs[t:], dyg, f0 * row + lead, row, length, dw,
                                    (c * t_ + t) * fp + f0, 1, fp)
            if need_dx:
                for b in range(wbt.shape[0]):
                    weights = wbt[b].reshape(-1)
                    for q0 in range(0, span, step):
                        _block(dyg, shift + q0, weights, 0, out, q0, qpad, f_, row, offs)
                    _scatter(out, qpad, s0, sc, dx, b * FILTERS, FILTERS, plane, wp, dx[0, 0, 0, :0])


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


def _offsets(kernel: tuple[int, int], wp: int, dh: int, dw: int) -> np.ndarray:
    """Each tap's offset into a padded plane of width ``wp``, taps row-major."""
    return np.array([i * dh * wp + j * dw for i in range(kernel[0]) for j in range(kernel[1])], dtype=np.int64)


def forward(x: np.ndarray, w: np.ndarray, bias: np.ndarray, y: np.ndarray, ph: int, pw: int, dh: int,
            dw: int) -> np.ndarray:
    """y = conv(x, w) + bias, 'same' at stride 1 (``rules.blocked_applies``); bias (F,) or (0,).

    Arguments as :func:`cnncli.engine.conv.conv2d_forward` has checked them.
    """
    n, c, h, wd = x.shape
    hp, wp = h + 2 * ph, wd + 2 * pw
    plane = hp * wp
    step = VECTORS * simd.lanes(x.itemsize)
    group = rules.blocked_group(n, (c + FILTERS) * plane * x.itemsize)
    qpad = -(-(group * plane) // step) * step
    threads = numba.get_num_threads()
    blocks = -(-w.shape[0] // FILTERS)
    split = min(blocks, -(-threads // -(-n // group)))
    _forward(x, _blocks(w), bias, y, scratch("blocked.xg", (threads, c * group * plane + plane + step), x.dtype),
             scratch("blocked.out", (threads, FILTERS * qpad), x.dtype), _offsets(w.shape[2:], wp, dh, dw),
             ph, pw, group, split, step)
    return y


def backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, dx: np.ndarray | None, ph: int, pw: int, dh: int,
             dw: int, per: int) -> np.ndarray:
    """The gradients of :func:`forward`: dx into ``dx`` (unless None), and dwᵀ by slots, returned as
    (slots, C·KH·KW, F), slot k summed over samples k·per ... k·per + per - 1 in order
    (:func:`cnncli.engine.conv._sum_slots` adds the slots up and transposes)."""
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    hp, wp = h + 2 * ph, wd + 2 * pw
    plane = hp * wp
    lanes_ = simd.lanes(x.itemsize)
    step = VECTORS * lanes_
    fp = -(-f // GRAD_FILTERS) * GRAD_FILTERS
    group = rules.blocked_group(per, (c + fp) * plane * x.itemsize)
    length = -(-(group * plane) // lanes_) * lanes_
    lead = -(-(ph * wp + pw) // lanes_) * lanes_  # dyg's zeros before a row's first position, whole vectors
    row = lead + length
    qpad = -(-(group * plane) // step) * step
    threads = numba.get_num_threads()
    parts = np.empty((-(-n // per), c * kh * kw, fp), dtype=x.dtype)
    flipped = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    _backward(x, dy, _blocks(flipped), parts, dx if dx is not None else np.empty((1, 1, 1, 1), dtype=x.dtype),
              scratch("blocked.xg", (threads, c * group * plane + plane + lanes_), x.dtype),
              scratch("blocked.dyg", (threads, fp * row + plane + step), x.dtype),
              scratch("blocked.out", (threads, FILTERS * qpad), x.dtype), _offsets((kh, kw), wp, dh, dw),
              ph, pw, per, group, lanes_, step, lead, dx is not None)
    return parts if fp == f else np.ascontiguousarray(parts[:, :, :f])
