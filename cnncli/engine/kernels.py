"""Numba kernels for 2-D convolution and pooling, forward and backward.

Layout is NCHW and weights are ``(F, C // groups, KH, KW)``, as in PyTorch, and
every result matches PyTorch's CPU operators (same output sizes, same pooling
divisors, same max-pool tie rule), so a model file means the same here.

Each public function is plain Python: it checks its arguments (a failure is a
bug in the calling layer, hence :class:`ValueError`) and hands arrays and
scalars to private ``_kernels`` compiled through :mod:`cnncli.engine.jit`. Arrays keep
their floating dtype (float32 or float64) end to end.

Convolution has two strategies, picked per call from the shapes alone:

* unfold + BLAS (almost every layer): a kernel unfolds a cache-sized chunk of
  the batch into a column matrix ``(C*KH*KW, n, Q)`` and ``np.matmul`` does
  the products, batched over groups. The chunk's samples sit side by side in
  the GEMM's long dimension, so the weight gradient is one reduction over the
  whole chunk and the input gradient is one product folded back by the
  adjoint kernel. Numba's own ``np.dot`` needs SciPy, so GEMMs run in numpy,
  outside the JIT; BLAS runs on one thread (:mod:`cnncli.engine.threads`), so large
  GEMMs are cut into slabs shared with the engine's worker threads. Filters
  too small for an efficient GEMM get their weight gradient from direct dot
  products instead.
* direct loops, for stride-1 groups so thin (depthwise) that a GEMM would
  have a single-digit dimension.

Parallel kernels split work by (sample, channel) plane or (sample, filter)
pair, or by channel; each iteration writes only its own slice, per-sample
partial sums are added in sample order, and GEMM slabs partition the output,
so results are bit-identical run to run. Large temporaries live in per-thread
scratch buffers that grow to the largest layer seen and are reused, because
fresh multi-megabyte arrays cost page faults comparable to filling them.
"""

from __future__ import annotations

import operator
import threading

import numpy as np
from numba import prange

from cnncli.engine import threads as engine_threads
from cnncli.engine.jit import kernel, parallel_kernel

__all__ = [
    "adaptive_avgpool2d_backward",
    "adaptive_avgpool2d_forward",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "conv2d_backward",
    "conv2d_forward",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "pool_output_size",
]

Pair = tuple[int, int]

# The column matrix of one chunk of the batch is kept under this size, so it
# is still in cache when the GEMM reads it back: on LeNet-5 at batch 256, 4 MB
# chunks run the layers 1.6-2x faster than one whole-batch chunk. Layers with
# bigger per-sample matrices (VGG-16's second layer: ~115 MB) go one sample at
# a time, where the GEMM is large enough not to care (measured: no gain from
# 16 or 32 MB on VGG's 14x14 to 56x56 layers).
_COLS_BUDGET_BYTES = 4 << 20

# Stride-1 groups this thin (depthwise-like: at most this many filters and
# this many weights per filter) go to direct loops, where a GEMM would have a
# single-digit dimension and run at a fraction of BLAS speed. Measured on one
# core: depthwise 3x3 runs 1.5x (forward) to 5x (backward) faster direct,
# while LeNet-5's first layer (6 filters, 1 channel) is already faster as GEMM.
_DIRECT_MAX_FG = 2
_DIRECT_MAX_TAPS = 32

# A stride-1 weight gradient this small per group (filters * weights per
# filter) comes from direct dot products, skipping the unfold: the GEMM would
# be a long reduction into a tiny matrix, which OpenBLAS runs slowly. Measured
# on one core: LeNet-5's first layer (150) is 25% faster direct, a 3-channel
# 3x3 layer with 16 filters (432) 15% slower.
_DIRECT_DW_MAX_WEIGHTS = 256

# Stride-1 layers unfold whole padded rows (see below), computing Wp - OW junk
# outputs per row; that costs GEMM work in proportion to the filters, while
# gathering only the OW real outputs costs a slower unfold (short rows). The
# junk wins while filters-per-group * junk fraction stays under this (measured:
# LeNet-5's second layer, 16 * 0.4, prefers junk; VGG's 14x14 layers,
# 512 * 0.14, do not).
_MAX_JUNK_WORK = 12.0

# Below this many filters per group, OpenBLAS computes the weight gradient
# about twice as fast as cols @ dy^T (then transposed) than as dy @ cols^T.
_DW_TRANSPOSED_MAX_F = 32

# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------


def _pair(name: str, value, minimum: int) -> Pair:
    try:
        a, b = value
        pair = (operator.index(a), operator.index(b))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of ints (h, w), got {value!r}") from None
    if pair[0] < minimum or pair[1] < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {pair}")
    return pair


def _array(name: str, a, ndim: int, dtype=None) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if dtype is None:
        if a.dtype not in (np.float32, np.float64):
            raise ValueError(f"{name} must be float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if 0 in a.shape:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    # Kernels are compiled for C-contiguous arrays; a view from the layer above
    # costs one copy here rather than a slow strided specialisation.
    return np.ascontiguousarray(a)


def _shape4(name: str, shape) -> tuple[int, int, int, int]:
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise ValueError(f"{name} must be a tuple of 4 ints, got {shape!r}") from None
    if len(dims) != 4 or min(dims) < 1:
        raise ValueError(f"{name} must be 4 positive ints (N, C, H, W), got {shape!r}")
    return dims  # type: ignore[return-value]


def _check_pool_padding(kernel_hw: Pair, padding: Pair) -> None:
    # PyTorch's rule: a window may hang over the border by at most half of it,
    # which guarantees every window still sees at least one real input cell.
    if padding[0] > kernel_hw[0] // 2 or padding[1] > kernel_hw[1] // 2:
        raise ValueError(f"padding {padding} must be at most half the kernel {kernel_hw}")


# ---------------------------------------------------------------------------
# output sizes
# ---------------------------------------------------------------------------


def pool_output_size(
    size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil_mode: bool = False
) -> int:
    """Length of one output axis of a pooling (or, with ``ceil_mode=False``, convolution) window.

    PyTorch's rule, including the ``ceil_mode`` correction that drops a last
    window which would start beyond the input and its left padding. The result
    may be zero or negative when the window does not fit; callers decide how to
    report that.
    """
    size, kernel, stride = operator.index(size), operator.index(kernel), operator.index(stride)
    padding, dilation = operator.index(padding), operator.index(dilation)
    if size < 1 or kernel < 1 or stride < 1 or dilation < 1 or padding < 0:
        raise ValueError(
            f"need size, kernel, stride, dilation >= 1 and padding >= 0, got "
            f"size={size} kernel={kernel} stride={stride} padding={padding} dilation={dilation}"
        )
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _out_hw(
    name: str, hw: Pair, k: Pair, s: Pair, p: Pair, d: Pair = (1, 1), ceil_mode: bool = False
) -> Pair:
    oh = pool_output_size(hw[0], k[0], s[0], p[0], d[0], ceil_mode)
    ow = pool_output_size(hw[1], k[1], s[1], p[1], d[1], ceil_mode)
    if oh < 1 or ow < 1:
        raise ValueError(f"{name}: window {k} does not fit input {hw} with padding {p}")
    return oh, ow


# ---------------------------------------------------------------------------
# convolution
#
# Both strategies share one intermediate layout. The input chunk is first
# copied into a zero-padded buffer ``xp`` (n, C, Hp, Wp), so no inner loop
# tests borders. Output positions are then numbered q = oh * pitch + ow with
# Q = (OH - 1) * pitch + OW of them per sample. For stride 1, pitch = Wp: the
# input cell under tap (kh, kw) of output q is xp's flat index q + kh*dh*Wp +
# kw*dw, so every tap is one contiguous run of Q cells and unfolding is a
# memcpy. The price is Wp - OW junk outputs per row (wrapped across the row
# end), which are computed, never stored, and given zero gradient. Other
# strides, and stride-1 layers where the junk would cost more GEMM work than
# it saves (see _MAX_JUNK_WORK), use pitch = OW and gather row by row.
# ---------------------------------------------------------------------------


@parallel_kernel
def _pad_input(x, n0, xp, ph, pw):
    c_ = x.shape[1]
    h_ = x.shape[2]
    w_ = x.shape[3]
    hp_ = xp.shape[2]
    for job in prange(xp.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        src = x[n0 + n, c]
        dst = xp[n, c]
        for r in range(ph):
            dst[r, :] = 0.0
        for r in range(h_):
            row = dst[ph + r]
            row[:pw] = 0.0
            row[pw : pw + w_] = src[r]
            row[pw + w_ :] = 0.0
        for r in range(ph + h_, hp_):
            dst[r, :] = 0.0


@parallel_kernel
def _unfold(xp, cols, kh_, kw_, sh, sw, dh, dw, oh_, ow_, pitch):
    # cols is (C*KH*KW, n, Q): a row per weight tap (what one weight multiplies),
    # with the chunk's samples side by side so that one GEMM covers them all.
    c_ = xp.shape[1]
    wp_ = xp.shape[3]
    q_ = cols.shape[2]
    flat_taps = sh == 1 and sw == 1 and pitch == wp_
    for job in prange(xp.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        plane = xp[n, c]
        flat = plane.reshape(-1)
        for i in range(kh_):
            for j in range(kw_):
                dst = cols[(c * kh_ + i) * kw_ + j, n]
                if flat_taps:
                    off = i * dh * wp_ + j * dw
                    src = flat[off : off + q_]
                    for q in range(q_):
                        dst[q] = src[q]
                elif sw == 1:
                    for oh in range(oh_):
                        src = plane[oh * sh + i * dh, j * dw : j * dw + ow_]
                        out = dst[oh * pitch : oh * pitch + ow_]
                        for ow in range(ow_):
                            out[ow] = src[ow]
                else:
                    for oh in range(oh_):
                        src = plane[oh * sh + i * dh, j * dw :: sw]
                        out = dst[oh * pitch : oh * pitch + ow_]
                        for ow in range(ow_):
                            out[ow] = src[ow]


@parallel_kernel
def _fold(dcols, dxp, dx, n0, ph, pw, kh_, kw_, sh, sw, dh, dw, oh_, ow_, pitch):
    # The adjoint of _pad_input + _unfold. Each (sample, channel) plane is owned
    # by one iteration, which adds its KH*KW overlapping taps in a fixed order
    # and then crops the padding off into dx. dxp may be dx's own chunk (no
    # padding), in which case the crop is skipped.
    c_ = dxp.shape[1]
    h_ = dx.shape[2]
    w_ = dx.shape[3]
    wp_ = dxp.shape[3]
    q_ = dcols.shape[2]
    flat_taps = sh == 1 and sw == 1 and pitch == wp_
    crop = ph > 0 or pw > 0
    for job in prange(dxp.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        plane = dxp[n, c]
        flat = plane.reshape(-1)
        flat[:] = 0.0
        for i in range(kh_):
            for j in range(kw_):
                src = dcols[(c * kh_ + i) * kw_ + j, n]
                if flat_taps:
                    off = i * dh * wp_ + j * dw
                    dst = flat[off : off + q_]
                    for q in range(q_):
                        dst[q] += src[q]
                elif sw == 1:
                    for oh in range(oh_):
                        dst = plane[oh * sh + i * dh, j * dw : j * dw + ow_]
                        part = src[oh * pitch : oh * pitch + ow_]
                        for ow in range(ow_):
                            dst[ow] += part[ow]
                else:
                    for oh in range(oh_):
                        dst = plane[oh * sh + i * dh, j * dw :: sw]
                        part = src[oh * pitch : oh * pitch + ow_]
                        for ow in range(ow_):
                            dst[ow] += part[ow]
        if crop:
            out = dx[n0 + n, c]
            for r in range(h_):
                out[r, :] = plane[ph + r, pw : pw + w_]


@parallel_kernel
def _store_output(ybuf, b, y, n0, pitch):
    # (F, n, Q) -> y's (N, F, OH, OW), dropping junk columns; the copy is
    # needed anyway, so the bias rides along.
    f_ = ybuf.shape[0]
    oh_ = y.shape[2]
    ow_ = y.shape[3]
    has_bias = b.shape[0] > 0
    for job in prange(ybuf.shape[1] * f_):
        n = job // f_
        f = job - n * f_
        src = ybuf[f, n]
        dst = y[n0 + n, f]
        bias = b[f] if has_bias else b.dtype.type(0)
        for oh in range(oh_):
            row = dst[oh]
            part = src[oh * pitch : oh * pitch + ow_]
            for ow in range(ow_):
                row[ow] = part[ow] + bias


@parallel_kernel
def _load_grad(dy, n0, dyt, pitch):
    # The adjoint of _store_output: (N, F, OH, OW) -> (F, n, Q), junk columns
    # zeroed so that they add nothing to dw or dx.
    f_ = dyt.shape[0]
    oh_ = dy.shape[2]
    ow_ = dy.shape[3]
    q_ = dyt.shape[2]
    for job in prange(dyt.shape[1] * f_):
        n = job // f_
        f = job - n * f_
        src = dy[n0 + n, f]
        dst = dyt[f, n]
        for oh in range(oh_):
            row = src[oh]
            part = dst[oh * pitch : min((oh + 1) * pitch, q_)]
            for ow in range(ow_):
                part[ow] = row[ow]
            for q in range(ow_, part.shape[0]):
                part[q] = 0.0


@parallel_kernel
def _bias_grad(dy, db):
    # One channel per iteration; the batch is summed in sample order.
    n_ = dy.shape[0]
    f_ = dy.shape[1]
    p_ = dy.shape[2]
    for f in prange(f_):
        total = dy.dtype.type(0)
        for n in range(n_):
            row = dy[n, f]
            acc = dy.dtype.type(0)
            for p in range(p_):
                acc += row[p]
            total += acc
        db[f] = total


@parallel_kernel
def _direct_forward(xp, w, ybuf, dh, dw, groups):
    # Fused unfold + product for thin layers (stride 1 only): accumulate each
    # tap's contiguous run straight into the output row.
    f_ = w.shape[0]
    cg_ = w.shape[1]
    kh_ = w.shape[2]
    kw_ = w.shape[3]
    wp_ = xp.shape[3]
    q_ = ybuf.shape[2]
    fg_ = f_ // groups
    for job in prange(xp.shape[0] * f_):
        n = job // f_
        f = job - n * f_
        acc = ybuf[f, n]
        acc[:] = 0.0
        c0 = (f // fg_) * cg_
        for cg in range(cg_):
            flat = xp[n, c0 + cg].reshape(-1)
            for i in range(kh_):
                for j in range(kw_):
                    wv = w[f, cg, i, j]
                    off = i * dh * wp_ + j * dw
                    src = flat[off : off + q_]
                    for q in range(q_):
                        acc[q] += wv * src[q]


@parallel_kernel
def _direct_dw(xp, dyt, part, dh, dw, groups):
    # Weight gradient without a column matrix (stride 1, flat taps): one
    # (sample, filter) pair per iteration writes that sample's contribution to
    # the filter's weights into its own slot of part (n, F, C/groups, KH, KW);
    # the caller sums the samples in order.
    f_ = part.shape[1]
    cg_ = part.shape[2]
    kh_ = part.shape[3]
    kw_ = part.shape[4]
    wp_ = xp.shape[3]
    q_ = dyt.shape[2]
    fg_ = f_ // groups
    for job in prange(part.shape[0] * f_):
        n = job // f_
        f = job - n * f_
        g = dyt[f, n]
        c0 = (f // fg_) * cg_
        for cg in range(cg_):
            flat = xp[n, c0 + cg].reshape(-1)
            for i in range(kh_):
                for j in range(kw_):
                    off = i * dh * wp_ + j * dw
                    src = flat[off : off + q_]
                    acc = xp.dtype.type(0)
                    for q in range(q_):
                        acc += g[q] * src[q]
                    part[n, f, cg, i, j] = acc


@parallel_kernel
def _direct_dx(dyt, w, dxp, dx, n0, ph, pw, dh, dw, groups):
    c_ = dxp.shape[1]
    h_ = dx.shape[2]
    w_ = dx.shape[3]
    f_ = w.shape[0]
    cg_ = w.shape[1]
    kh_ = w.shape[2]
    kw_ = w.shape[3]
    wp_ = dxp.shape[3]
    q_ = dyt.shape[2]
    fg_ = f_ // groups
    crop = ph > 0 or pw > 0
    for job in prange(dxp.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        g = c // cg_
        cg = c - g * cg_
        plane = dxp[n, c]
        flat = plane.reshape(-1)
        flat[:] = 0.0
        for f in range(g * fg_, (g + 1) * fg_):
            src = dyt[f, n]
            for i in range(kh_):
                for j in range(kw_):
                    wv = w[f, cg, i, j]
                    off = i * dh * wp_ + j * dw
                    dst = flat[off : off + q_]
                    for q in range(q_):
                        dst[q] += wv * src[q]
        if crop:
            out = dx[n0 + n, c]
            for r in range(h_):
                out[r, :] = plane[ph + r, pw : pw + w_]


# ---------------------------------------------------------------------------
# convolution: public API
# ---------------------------------------------------------------------------

_workspace = threading.local()


def scratch(slot: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A reusable uninitialised buffer, one per thread, slot and dtype.

    Slots are shared by every module on a thread: callers outside this module
    prefix theirs (``fused.cols``) so that buffers in use never alias.

    Column matrices run to tens of megabytes; allocating them afresh on every
    call costs page faults comparable to filling them.
    """
    key = (slot, np.dtype(dtype).str)
    buffers = getattr(_workspace, "buffers", None)
    if buffers is None:
        buffers = _workspace.buffers = {}
    size = 1
    for d in shape:
        size *= d
    buf = buffers.get(key)
    if buf is None or buf.size < size:
        buf = buffers[key] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


class _Geometry:
    """Shapes and strategy of one convolution call, derived once from the arguments."""

    def __init__(self, x, w, stride, padding, dilation, groups):
        self.x = _array("x", x, 4)
        self.w = _array("w", w, 4, self.x.dtype)
        self.sh, self.sw = _pair("stride", stride, 1)
        self.ph, self.pw = _pair("padding", padding, 0)
        self.dh, self.dw = _pair("dilation", dilation, 1)
        self.groups = operator.index(groups)
        self.n, self.c, self.h, self.wd = self.x.shape
        self.f, self.cg, self.kh, self.kw = self.w.shape
        g = self.groups
        if g < 1 or self.c % g or self.f % g:
            raise ValueError(f"groups={g} must divide in channels {self.c} and filters {self.f}")
        if self.cg * g != self.c:
            raise ValueError(
                f"w has {self.cg} input channels per group, x has {self.c} channels in {g} groups"
            )
        self.oh, self.ow = _out_hw(
            "conv2d",
            (self.h, self.wd),
            (self.kh, self.kw),
            (self.sh, self.sw),
            (self.ph, self.pw),
            (self.dh, self.dw),
        )
        self.hp = self.h + 2 * self.ph
        self.wp = self.wd + 2 * self.pw
        unit = self.sh == 1 and self.sw == 1
        junk_work = (self.f // self.groups) * (self.wp - self.ow) / self.ow
        self.pitch = self.wp if unit and junk_work <= _MAX_JUNK_WORK else self.ow
        self.q = (self.oh - 1) * self.pitch + self.ow
        self.taps = self.cg * self.kh * self.kw
        self.direct = unit and _use_direct(self.cg, self.kh, self.kw, self.f // g)
        flat = unit and self.pitch == self.wp
        self.direct_dw = self.direct or (flat and _use_direct_dw(self.taps, self.f // g))
        # Direct kernels need no column matrix, so the whole batch is one chunk.
        per_sample = 0 if self.direct else self.c * self.kh * self.kw * self.q * self.x.itemsize
        step = max(1, min(self.n, _COLS_BUDGET_BYTES // max(per_sample, 1)))
        # Equal chunks rather than full ones and a runt: no chunk's GEMM is tiny.
        chunks = -(-self.n // step)
        self.step = -(-self.n // chunks)

    def padded(self, n0: int, nc: int) -> np.ndarray:
        if self.ph == 0 and self.pw == 0:
            return self.x[n0 : n0 + nc]
        xp = scratch("xp", (nc, self.c, self.hp, self.wp), self.x.dtype)
        _pad_input(self.x, n0, xp, self.ph, self.pw)
        return xp

    def unfolded(self, xp: np.ndarray, nc: int) -> np.ndarray:
        cols = scratch("cols", (self.c * self.kh * self.kw, nc, self.q), self.x.dtype)
        _unfold(xp, cols, self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.oh, self.ow, self.pitch)
        return cols

    def input_grad_buffer(self, dx: np.ndarray, n0: int, nc: int) -> np.ndarray:
        if self.ph == 0 and self.pw == 0:
            return dx[n0 : n0 + nc]
        # Shares the padded input's buffer: callers take it once that input
        # has been unfolded (or used for dw) and is no longer needed.
        return scratch("xp", (nc, self.c, self.hp, self.wp), self.x.dtype)


def _use_direct(cg_: int, kh_: int, kw_: int, fg_: int) -> bool:
    return fg_ <= _DIRECT_MAX_FG and cg_ * kh_ * kw_ <= _DIRECT_MAX_TAPS


def _use_direct_dw(taps: int, fg_: int) -> bool:
    return taps * fg_ <= _DIRECT_DW_MAX_WEIGHTS


def conv2d_forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
) -> np.ndarray:
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``.

    x (N, C, H, W); w (F, C // groups, KH, KW); b (F,) or None.
    Returns y (N, F, OH, OW) with OH = (H + 2*ph - dh*(KH-1) - 1) // sh + 1
    (likewise OW), in the dtype of x.
    """
    geo = _Geometry(x, w, stride, padding, dilation, groups)
    dtype = geo.x.dtype
    if b is None:
        bias = np.empty(0, dtype=dtype)
    else:
        bias = _array("b", b, 1, dtype)
        if bias.shape[0] != geo.f:
            raise ValueError(f"b must have shape ({geo.f},), got {bias.shape}")
    y = np.empty((geo.n, geo.f, geo.oh, geo.ow), dtype=dtype)
    g, fg = geo.groups, geo.f // geo.groups
    w3 = geo.w.reshape(g, fg, geo.taps)
    for n0 in range(0, geo.n, geo.step):
        nc = min(geo.step, geo.n - n0)
        xp = geo.padded(n0, nc)
        ybuf = scratch("out", (geo.f, nc, geo.q), dtype)
        if geo.direct:
            _direct_forward(xp, geo.w, ybuf, geo.dh, geo.dw, g)
        else:
            cols = geo.unfolded(xp, nc)
            engine_threads.matmul(w3, cols.reshape(g, geo.taps, nc * geo.q), ybuf.reshape(g, fg, nc * geo.q))
        _store_output(ybuf, bias, y, n0, geo.pitch)
    return y


def conv2d_backward(
    x: np.ndarray,
    w: np.ndarray,
    dy: np.ndarray,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    groups: int,
    need_dx: bool = True,
    need_db: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Gradients of :func:`conv2d_forward` given dy = dL/dy.

    x (N, C, H, W); w (F, C // groups, KH, KW); dy (N, F, OH, OW).
    Returns (dx (N, C, H, W) or None, dw (F, C // groups, KH, KW), db (F,) or None);
    dx is skipped unless ``need_dx`` (a first layer needs no input gradient),
    db unless ``need_db`` (a layer without bias).
    """
    geo = _Geometry(x, w, stride, padding, dilation, groups)
    dtype = geo.x.dtype
    dy = _array("dy", dy, 4, dtype)
    if dy.shape != (geo.n, geo.f, geo.oh, geo.ow):
        raise ValueError(f"dy must have shape {(geo.n, geo.f, geo.oh, geo.ow)}, got {dy.shape}")
    db = None
    if need_db:
        db = np.empty(geo.f, dtype=dtype)
        _bias_grad(dy.reshape(geo.n, geo.f, geo.oh * geo.ow), db)
    dx = np.empty_like(geo.x) if need_dx else None
    dw_out = np.empty_like(geo.w)
    g, fg = geo.groups, geo.f // geo.groups
    w3t = geo.w.reshape(g, fg, geo.taps).transpose(0, 2, 1)
    dw3 = dw_out.reshape(g, fg, geo.taps)
    dw_t = None
    if not geo.direct_dw and fg <= _DW_TRANSPOSED_MAX_F:
        dw_t = np.empty((g, geo.taps, fg), dtype=dtype)
    for n0 in range(0, geo.n, geo.step):
        nc = min(geo.step, geo.n - n0)
        xp = geo.padded(n0, nc)
        dyt = scratch("out", (geo.f, nc, geo.q), dtype)
        _load_grad(dy, n0, dyt, geo.pitch)
        dyt3 = dyt.reshape(g, fg, nc * geo.q)
        # Chunks are fixed by the shapes alone, so the running sums below add
        # the same partial products in the same order on every run.
        if geo.direct_dw:
            part = scratch("dw", (nc, *dw_out.shape), dtype)
            _direct_dw(xp, dyt, part, geo.dh, geo.dw, g)
            if n0 == 0:
                np.sum(part, axis=0, out=dw_out)
            else:
                dw_out += part.sum(axis=0)
        else:
            cols3 = geo.unfolded(xp, nc).reshape(g, geo.taps, nc * geo.q)
            if dw_t is not None:
                out = dw_t if n0 == 0 else np.empty_like(dw_t)
                part = engine_threads.matmul(cols3, dyt3.transpose(0, 2, 1), out)
                if n0 > 0:
                    dw_t += part
            else:
                out = dw3 if n0 == 0 else np.empty_like(dw3)
                part = engine_threads.matmul(dyt3, cols3.transpose(0, 2, 1), out)
                if n0 > 0:
                    dw3 += part
        if dx is None:
            continue
        dxp = geo.input_grad_buffer(dx, n0, nc)
        if geo.direct:
            _direct_dx(dyt, geo.w, dxp, dx, n0, geo.ph, geo.pw, geo.dh, geo.dw, g)
            continue
        # Same buffer as the unfolded input, which is spent by now.
        dcols = scratch("cols", (geo.c * geo.kh * geo.kw, nc, geo.q), dtype)
        engine_threads.matmul(w3t, dyt3, dcols.reshape(g, geo.taps, nc * geo.q))
        _fold(
            dcols, dxp, dx, n0, geo.ph, geo.pw, geo.kh, geo.kw,
            geo.sh, geo.sw, geo.dh, geo.dw, geo.oh, geo.ow, geo.pitch,
        )  # fmt: skip
    if dw_t is not None:
        dw3[...] = dw_t.transpose(0, 2, 1)
    return dx, dw_out, db


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------


@parallel_kernel
def _maxpool_forward(x, y, argmax, kh_, kw_, sh, sw, ph, pw):
    c_ = x.shape[1]
    h_ = x.shape[2]
    w_ = x.shape[3]
    oh_ = y.shape[2]
    ow_ = y.shape[3]
    for job in prange(x.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        xs = x[n, c]
        ys = y[n, c]
        am = argmax[n, c]
        for oh in range(oh_):
            h0 = oh * sh - ph
            h1 = min(h0 + kh_, h_)
            h0 = max(h0, 0)
            for ow in range(ow_):
                w0 = ow * sw - pw
                w1 = min(w0 + kw_, w_)
                w0 = max(w0, 0)
                # Padding never wins, so start from the first real cell
                # (every window has one, see _check_pool_padding) rather
                # than from an -inf constant that fast-math may assume away.
                # Strict '>' then keeps the first maximum in row-major order,
                # PyTorch's tie rule.
                best = xs[h0, w0]
                best_i = h0 * w_ + w0
                for ih in range(h0, h1):
                    row = xs[ih]
                    for iw in range(w0, w1):
                        v = row[iw]
                        if v > best:
                            best = v
                            best_i = ih * w_ + iw
                ys[oh, ow] = best
                am[oh, ow] = best_i


@parallel_kernel
def _maxpool_backward(dy, argmax, dx):
    c_ = dx.shape[1]
    for job in prange(dx.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        flat = dx[n, c].reshape(-1)
        flat[:] = 0.0
        g = dy[n, c].reshape(-1)
        am = argmax[n, c].reshape(-1)
        for p in range(g.shape[0]):
            flat[am[p]] += g[p]


def maxpool2d_forward(
    x: np.ndarray, kernel: Pair, stride: Pair, padding: Pair, ceil_mode: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling, as ``torch.nn.functional.max_pool2d(..., return_indices=True)``.

    x (N, C, H, W). Returns y (N, C, OH, OW) in the dtype of x and argmax
    (N, C, OH, OW), int32 (int64 for planes past 2**31 cells), holding the flat
    index ``h*W + w`` of the chosen cell within its (n, c) plane. Padding acts
    as -inf; ties pick the first maximum in row-major window order.
    """
    x = _array("x", x, 4)
    kernel_hw = _pair("kernel", kernel, 1)
    stride = _pair("stride", stride, 1)
    padding = _pair("padding", padding, 0)
    _check_pool_padding(kernel_hw, padding)
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = _out_hw("maxpool2d", (h_, w_), kernel_hw, stride, padding, ceil_mode=bool(ceil_mode))
    y = np.empty((n_, c_, oh_, ow_), dtype=x.dtype)
    index_dtype = np.int32 if h_ * w_ <= np.iinfo(np.int32).max else np.int64
    argmax = np.empty((n_, c_, oh_, ow_), dtype=index_dtype)
    _maxpool_forward(x, y, argmax, *kernel_hw, *stride, *padding)
    return y, argmax


def maxpool2d_backward(dy: np.ndarray, argmax: np.ndarray, in_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Gradient of :func:`maxpool2d_forward`: each dy cell goes to the input cell it came from.

    dy (N, C, OH, OW); argmax (N, C, OH, OW) from the forward pass;
    in_shape = (N, C, H, W). Returns dx (in_shape) in the dtype of dy.
    Overlapping windows that chose the same cell add up.
    """
    dy = _array("dy", dy, 4)
    n_, c_, h_, w_ = _shape4("in_shape", in_shape)
    if not isinstance(argmax, np.ndarray) or argmax.dtype not in (np.int32, np.int64):
        raise ValueError("argmax must be an int32 or int64 numpy array")
    if argmax.shape != dy.shape:
        raise ValueError(f"argmax shape {argmax.shape} differs from dy shape {dy.shape}")
    if dy.shape[:2] != (n_, c_):
        raise ValueError(f"dy shape {dy.shape} does not fit in_shape {in_shape}")
    argmax = np.ascontiguousarray(argmax)
    # An out-of-plane index would write outside dx; the check is one pass
    # over a small int array, cheap next to the debugging it saves.
    if argmax.min() < 0 or argmax.max() >= h_ * w_:
        raise ValueError(f"argmax holds indices outside a {h_}x{w_} plane")
    dx = np.empty((n_, c_, h_, w_), dtype=dy.dtype)
    _maxpool_backward(dy, argmax, dx)
    return dx


# ---------------------------------------------------------------------------
# average pooling (fixed and adaptive)
#
# Both are averages over rectangles whose rows and columns are chosen
# independently, so the wrappers describe each axis by a table of window
# bounds and divisor factors, and one pair of kernels serves both: a window
# sum is a sum of whole input rows (contiguous, vectorised) followed by short
# sums within the summed row.
# ---------------------------------------------------------------------------


@kernel
def _window_table(size, n_out, k, s, p, count_include_pad, adaptive):
    """Window bounds [lo, hi) and divisor factor per output index on one axis.

    Fixed windows follow PyTorch's avg_pool2d (divisor clipped to the padded
    or to the real input); adaptive ones span floor(i*size/n_out) ..
    ceil((i+1)*size/n_out), in exact integer arithmetic.
    """
    lo = np.empty(n_out, dtype=np.int64)
    hi = np.empty(n_out, dtype=np.int64)
    div = np.empty(n_out, dtype=np.int64)
    for o in range(n_out):
        if adaptive:
            lo[o] = (o * size) // n_out
            hi[o] = ((o + 1) * size + n_out - 1) // n_out
            div[o] = hi[o] - lo[o]
        else:
            start = o * s - p
            end = min(start + k, size + p)
            lo[o] = max(start, 0)
            hi[o] = min(end, size)
            div[o] = end - start if count_include_pad else hi[o] - lo[o]
    return lo, hi, div


def _avg_axis(size: int, n_out: int, k: int, s: int, p: int, count_include_pad: bool):
    return _window_table(size, n_out, k, s, p, count_include_pad, False)


def _adaptive_axis(size: int, n_out: int):
    return _window_table(size, n_out, 1, 1, 0, True, True)


@parallel_kernel
def _window_avg_forward(x, y, rlo, rhi, rdiv, clo, chi, cdiv):
    c_ = x.shape[1]
    oh_ = y.shape[2]
    ow_ = y.shape[3]
    for job in prange(x.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        xs = x[n, c]
        ys = y[n, c]
        band = np.empty(x.shape[3], dtype=x.dtype)
        for oh in range(oh_):
            band[:] = 0.0
            for ih in range(rlo[oh], rhi[oh]):
                row = xs[ih]
                for iw in range(band.shape[0]):
                    band[iw] += row[iw]
            out = ys[oh]
            for ow in range(ow_):
                acc = x.dtype.type(0)
                for iw in range(clo[ow], chi[ow]):
                    acc += band[iw]
                out[ow] = acc / (rdiv[oh] * cdiv[ow])


@parallel_kernel
def _window_avg_backward(dy, dx, rlo, rhi, rdiv, clo, chi, cdiv):
    c_ = dx.shape[1]
    oh_ = dy.shape[2]
    ow_ = dy.shape[3]
    for job in prange(dx.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        plane = dx[n, c]
        plane[:, :] = 0.0
        g = dy[n, c]
        band = np.empty(dx.shape[3], dtype=dx.dtype)
        for oh in range(oh_):
            band[:] = 0.0
            for ow in range(ow_):
                share = g[oh, ow] / (rdiv[oh] * cdiv[ow])
                for iw in range(clo[ow], chi[ow]):
                    band[iw] += share
            for ih in range(rlo[oh], rhi[oh]):
                row = plane[ih]
                for iw in range(band.shape[0]):
                    row[iw] += band[iw]


def _check_avgpool(kernel, stride, padding):
    kernel_hw = _pair("kernel", kernel, 1)
    stride = _pair("stride", stride, 1)
    padding = _pair("padding", padding, 0)
    _check_pool_padding(kernel_hw, padding)
    return kernel_hw, stride, padding


def _avg_tables(in_hw: Pair, kernel_hw: Pair, stride: Pair, padding: Pair, ceil_mode, count_include_pad):
    oh_, ow_ = _out_hw("avgpool2d", in_hw, kernel_hw, stride, padding, ceil_mode=bool(ceil_mode))
    rows = _avg_axis(in_hw[0], oh_, kernel_hw[0], stride[0], padding[0], bool(count_include_pad))
    cols = _avg_axis(in_hw[1], ow_, kernel_hw[1], stride[1], padding[1], bool(count_include_pad))
    return (oh_, ow_), rows, cols


def avgpool2d_forward(
    x: np.ndarray,
    kernel: Pair,
    stride: Pair,
    padding: Pair,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> np.ndarray:
    """Average pooling, as ``torch.nn.functional.avg_pool2d``.

    x (N, C, H, W). Returns y (N, C, OH, OW) in the dtype of x. The divisor is
    the window clipped to the padded input when ``count_include_pad``, else the
    window clipped to the real input (so a ``ceil_mode`` overhang never counts).
    """
    x = _array("x", x, 4)
    kernel_hw, stride, padding = _check_avgpool(kernel, stride, padding)
    n_, c_, h_, w_ = x.shape
    out_hw, rows, cols = _avg_tables((h_, w_), kernel_hw, stride, padding, ceil_mode, count_include_pad)
    y = np.empty((n_, c_, *out_hw), dtype=x.dtype)
    _window_avg_forward(x, y, *rows, *cols)
    return y


def avgpool2d_backward(
    dy: np.ndarray,
    in_shape: tuple[int, int, int, int],
    kernel: Pair,
    stride: Pair,
    padding: Pair,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> np.ndarray:
    """Gradient of :func:`avgpool2d_forward` (same window arguments).

    dy (N, C, OH, OW); in_shape = (N, C, H, W). Returns dx (in_shape) in the
    dtype of dy.
    """
    dy = _array("dy", dy, 4)
    n_, c_, h_, w_ = _shape4("in_shape", in_shape)
    kernel_hw, stride, padding = _check_avgpool(kernel, stride, padding)
    out_hw, rows, cols = _avg_tables((h_, w_), kernel_hw, stride, padding, ceil_mode, count_include_pad)
    if dy.shape != (n_, c_, *out_hw):
        raise ValueError(f"dy must have shape {(n_, c_, *out_hw)}, got {dy.shape}")
    dx = np.empty((n_, c_, h_, w_), dtype=dy.dtype)
    _window_avg_backward(dy, dx, *rows, *cols)
    return dx


def adaptive_avgpool2d_forward(x: np.ndarray, out_hw: Pair) -> np.ndarray:
    """Adaptive average pooling, as ``torch.nn.functional.adaptive_avg_pool2d``.

    x (N, C, H, W); out_hw = (OH, OW). Returns y (N, C, OH, OW) in the dtype of
    x; output cell i averages input rows floor(i*H/OH) .. ceil((i+1)*H/OH) - 1
    (likewise columns), so windows may overlap when H is not a multiple of OH.
    """
    x = _array("x", x, 4)
    oh_, ow_ = _pair("out_hw", out_hw, 1)
    y = np.empty((x.shape[0], x.shape[1], oh_, ow_), dtype=x.dtype)
    _window_avg_forward(x, y, *_adaptive_axis(x.shape[2], oh_), *_adaptive_axis(x.shape[3], ow_))
    return y


def adaptive_avgpool2d_backward(dy: np.ndarray, in_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Gradient of :func:`adaptive_avgpool2d_forward`.

    dy (N, C, OH, OW); in_shape = (N, C, H, W). Returns dx (in_shape) in the
    dtype of dy.
    """
    dy = _array("dy", dy, 4)
    n_, c_, h_, w_ = _shape4("in_shape", in_shape)
    if dy.shape[:2] != (n_, c_):
        raise ValueError(f"dy shape {dy.shape} does not fit in_shape {in_shape}")
    dx = np.empty((n_, c_, h_, w_), dtype=dy.dtype)
    oh_, ow_ = dy.shape[2], dy.shape[3]
    _window_avg_backward(dy, dx, *_adaptive_axis(h_, oh_), *_adaptive_axis(w_, ow_))
    return dx
