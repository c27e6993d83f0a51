"""2-D pooling in NCHW, forward and backward: max, average, adaptive average and tiled average.

Every result matches PyTorch's CPU operators (same output sizes, same
divisors, same max-pool tie rule). Output sizes and the padding rule come from
:mod:`cnncli.model.kinds` through :mod:`cnncli.engine.arrays`. Kernels split
work by (sample, channel) plane, each iteration writing only its own plane, so
results repeat bit for bit.

* max pooling keeps the index of each window's maximum for the backward pass;
* average and adaptive average pooling describe each axis by a table of
  window bounds and divisors, and one pair of kernels serves both;
* *tiled* average pooling (square non-overlapping tiles: kernel = stride, no
  padding, no ceil mode, as in LeNet-5; :func:`is_tile_pool`) has kernels of
  its own, which vectorise where the general window kernels cannot.
  :func:`tile_mean_plane` is also what the fused blocks of
  :mod:`cnncli.engine.fast` pool with.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from cnncli.engine import rules
from cnncli.engine.arrays import Pair, array, check_pool_padding, out_hw, pair, shape4
from cnncli.engine.jit import kernel, parallel_kernel, vector_kernel, vector_parallel_kernel

__all__ = [
    "adaptive_avgpool2d_backward",
    "adaptive_avgpool2d_forward",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "is_tile_pool",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "tile_avgpool_backward",
    "tile_avgpool_forward",
    "tile_mean_plane",
]


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------

@kernel
def _max_windows(xs, ys, am, oh, h0, h1, ow0, ow1, kw_, sw, pw):
    # Output cells (oh, ow0..ow1-1), any window, one at a time. Padding never
    # wins, so start from the first real cell (every window has one, see
    # check_pool_padding) rather than from an -inf constant that fast-math may
    # assume away. Strict '>' then keeps the first maximum in row-major order,
    # PyTorch's tie rule.
    w_ = xs.shape[1]
    for ow in range(ow0, ow1):
        w0 = ow * sw - pw
        w1 = min(w0 + kw_, w_)
        w0 = max(w0, 0)
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


@kernel
def _max_inner(xs, ys, am, oh, h0, h1, ow0, ow1, kw_, sw, pw):
    # Output cells (oh, ow0..ow1-1) whose windows lie inside the row: the
    # window's cells in the same row-major order and with the same strict '>'
    # as _max_windows, each one across all these columns at once (selects, so
    # that the loop over columns vectorises).
    w_ = xs.shape[1]
    m = ow1 - ow0
    y_row = ys[oh, ow0:ow1]
    a_row = am[oh, ow0:ow1]
    c0 = ow0 * sw - pw  # the first column's window starts here
    first = xs[h0, c0 : c0 + (m - 1) * sw + 1 : sw]
    for o in range(m):
        y_row[o] = first[o]
        a_row[o] = h0 * w_ + c0 + o * sw
    for ih in range(h0, h1):
        for j in range(kw_):
            if ih == h0 and j == 0:
                continue
            base = ih * w_ + c0 + j
            cells = xs[ih, c0 + j : c0 + j + (m - 1) * sw + 1 : sw]
            for o in range(m):
                v = cells[o]
                cur = y_row[o]
                take = v > cur
                y_row[o] = v if take else cur
                a_row[o] = base + o * sw if take else a_row[o]


@kernel
def _max_flat(xs, ys, am, kh_, kw_, ph, pw, low, buf, best, where):
    # Stride 1, the whole plane at once: xs copied into buf (Hp, Wp), padded
    # with the lowest finite value, whose flat cells q + i*Wp + j (q = oh*Wp +
    # ow) are window cell (i, j) of output (oh, ow), the Wp - OW last of each row
    # junk; so each cell of the windows is one long loop of selects over the
    # plane, in row-major order with strict '>' as _max_windows. A window whose
    # real cells are all that lowest value (or -inf) would keep a padding cell:
    # False then, and the caller takes the plane one window at a time.
    h_, w_ = xs.shape
    wp = buf.shape[1]
    oh_, ow_ = ys.shape
    buf[:] = low
    for r in range(h_):
        buf[ph + r, pw : pw + w_] = xs[r]
    flat = buf.reshape(-1)
    q_ = (oh_ - 1) * wp + ow_
    b = best[:q_]
    k = where[:q_]
    for q in range(q_):
        b[q] = flat[q]
        k[q] = q
    for i in range(kh_):
        for j in range(kw_):
            if i == 0 and j == 0:
                continue
            off = i * wp + j
            cells = flat[off : off + q_]
            for q in range(q_):
                v = cells[q]
                cur = b[q]
                take = v > cur
                b[q] = v if take else cur
                k[q] = q + off if take else k[q]
    for oh in range(oh_):
        for ow in range(ow_):
            q = oh * wp + ow
            r = k[q] // wp
            c = k[q] - r * wp - pw
            r -= ph
            if r < 0 or r >= h_ or c < 0 or c >= w_:
                return False
            ys[oh, ow] = b[q]
            am[oh, ow] = r * w_ + c
    return True


@parallel_kernel
def _maxpool_forward(x, y, argmax, kh_, kw_, sh, sw, ph, pw, vector_columns, low):
    c_ = x.shape[1]
    h_ = x.shape[2]
    w_ = x.shape[3]
    oh_ = y.shape[2]
    ow_ = y.shape[3]
    # Columns whose windows lie inside the row: ow*sw - pw >= 0 and ow*sw - pw + kw <= W.
    inner0 = min(ow_, (pw + sw - 1) // sw)
    inner1 = max(inner0, min(ow_, (w_ - kw_ + pw) // sw + 1)) if w_ >= kw_ - pw else inner0
    if inner1 - inner0 < vector_columns:  # too short a row to gain from vectors
        inner1 = inner0
    flat = sh == 1 and sw == 1
    hp = h_ + 2 * ph
    wp = w_ + 2 * pw
    for job in prange(x.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        xs = x[n, c]
        ys = y[n, c]
        am = argmax[n, c]
        if flat:
            q_ = (oh_ - 1) * wp + ow_
            if _max_flat(xs, ys, am, kh_, kw_, ph, pw, low, np.empty((hp, wp), x.dtype),
                         np.empty(q_, x.dtype), np.empty(q_, np.int64)):
                continue
        for oh in range(oh_):
            h0 = oh * sh - ph
            h1 = min(h0 + kh_, h_)
            h0 = max(h0, 0)
            if inner1 == inner0:
                _max_windows(xs, ys, am, oh, h0, h1, 0, ow_, kw_, sw, pw)
                continue
            _max_windows(xs, ys, am, oh, h0, h1, 0, inner0, kw_, sw, pw)
            _max_inner(xs, ys, am, oh, h0, h1, inner0, inner1, kw_, sw, pw)
            _max_windows(xs, ys, am, oh, h0, h1, inner1, ow_, kw_, sw, pw)


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
    x = array("x", x, 4)
    kernel_hw = pair("kernel", kernel, 1)
    stride = pair("stride", stride, 1)
    padding = pair("padding", padding, 0)
    check_pool_padding(kernel_hw, padding)
    n_, c_, h_, w_ = x.shape
    oh_, ow_ = out_hw("maxpool2d", (h_, w_), kernel_hw, stride, padding, ceil_mode=bool(ceil_mode))
    y = np.empty((n_, c_, oh_, ow_), dtype=x.dtype)
    index_dtype = np.int32 if h_ * w_ <= np.iinfo(np.int32).max else np.int64
    argmax = np.empty((n_, c_, oh_, ow_), dtype=index_dtype)
    _maxpool_forward(x, y, argmax, *kernel_hw, *stride, *padding, rules.MAXPOOL_VECTOR_COLUMNS,
                     np.finfo(x.dtype).min)
    return y, argmax


def maxpool2d_backward(dy: np.ndarray, argmax: np.ndarray, in_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Gradient of :func:`maxpool2d_forward`: each dy cell goes to the input cell it came from.

    dy (N, C, OH, OW); argmax (N, C, OH, OW) from the forward pass;
    in_shape = (N, C, H, W). Returns dx (in_shape) in the dtype of dy.
    Overlapping windows that chose the same cell add up.
    """
    dy = array("dy", dy, 4)
    n_, c_, h_, w_ = shape4("in_shape", in_shape)
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
    kernel_hw = pair("kernel", kernel, 1)
    stride = pair("stride", stride, 1)
    padding = pair("padding", padding, 0)
    check_pool_padding(kernel_hw, padding)
    return kernel_hw, stride, padding


def _avg_tables(in_hw: Pair, kernel_hw: Pair, stride: Pair, padding: Pair, ceil_mode, count_include_pad):
    oh_, ow_ = out_hw("avgpool2d", in_hw, kernel_hw, stride, padding, ceil_mode=bool(ceil_mode))
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
    x = array("x", x, 4)
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
    dy = array("dy", dy, 4)
    n_, c_, h_, w_ = shape4("in_shape", in_shape)
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
    x = array("x", x, 4)
    oh_, ow_ = pair("out_hw", out_hw, 1)
    y = np.empty((x.shape[0], x.shape[1], oh_, ow_), dtype=x.dtype)
    _window_avg_forward(x, y, *_adaptive_axis(x.shape[2], oh_), *_adaptive_axis(x.shape[3], ow_))
    return y


def adaptive_avgpool2d_backward(dy: np.ndarray, in_shape: tuple[int, int, int, int]) -> np.ndarray:
    """Gradient of :func:`adaptive_avgpool2d_forward`.

    dy (N, C, OH, OW); in_shape = (N, C, H, W). Returns dx (in_shape) in the
    dtype of dy.
    """
    dy = array("dy", dy, 4)
    n_, c_, h_, w_ = shape4("in_shape", in_shape)
    if dy.shape[:2] != (n_, c_):
        raise ValueError(f"dy shape {dy.shape} does not fit in_shape {in_shape}")
    dx = np.empty((n_, c_, h_, w_), dtype=dy.dtype)
    oh_, ow_ = dy.shape[2], dy.shape[3]
    _window_avg_backward(dy, dx, *_adaptive_axis(h_, oh_), *_adaptive_axis(w_, ow_))
    return dx


# ---------------------------------------------------------------------------
# tiled average pooling (kernel = stride, no padding)
#
# Compiled with numpy's float error model (cnncli.engine.jit.VECTOR_FLAGS):
# the divisor is a constant, and without it LLVM vectorises none of these loops.
# ---------------------------------------------------------------------------


@vector_kernel
def tile_mean_plane(src, dst, k, band):
    # dst[i, j] = mean of src's k x k tile (i, j): the tile's rows are added
    # whole (vectorised), then k neighbours within that sum.
    ow_ = dst.shape[1]
    wide = ow_ * k
    inv = src.dtype.type(1.0 / (k * k))
    for i in range(dst.shape[0]):
        first = src[i * k]
        for col in range(wide):
            band[col] = first[col]
        for r in range(i * k + 1, i * k + k):
            row = src[r]
            for col in range(wide):
                band[col] += row[col]
        out = dst[i]
        for j in range(ow_):
            acc = band[j * k]
            for t in range(1, k):
                acc += band[j * k + t]
            out[j] = acc * inv


@vector_parallel_kernel
def _tile_avg(x, y, k):
    # y[n, c, i, j] = mean of x[n, c, i*k : i*k+k, j*k : j*k+k], a plane per job.
    c_ = x.shape[1]
    wide = y.shape[3] * k
    for job in prange(x.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        tile_mean_plane(x[n, c], y[n, c], k, np.empty(wide, dtype=x.dtype))


@vector_parallel_kernel
def _tile_spread(dy, dx, k):
    # The adjoint of _tile_avg: each input cell of a tile gets dy / k²; rows
    # and columns past the last whole tile get zero.
    c_ = dx.shape[1]
    h_ = dx.shape[2]
    w_ = dx.shape[3]
    oh_ = dy.shape[2]
    ow_ = dy.shape[3]
    inv = dx.dtype.type(1.0 / (k * k))
    for job in prange(dx.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        g = dy[n, c]
        dst = dx[n, c]
        for r in range(h_):
            row = dst[r]
            i = r // k
            if i < oh_:
                grow = g[i]
                for col in range(ow_ * k):
                    row[col] = grow[col // k] * inv
                for col in range(ow_ * k, w_):
                    row[col] = 0.0
            else:
                row[:] = 0.0


def tile_avgpool_forward(x: np.ndarray, k: int) -> np.ndarray:
    """Average of each non-overlapping k x k tile: x (N, C, H, W) -> (N, C, H // k, W // k)."""
    x = np.ascontiguousarray(x)
    n, c, h, w = x.shape
    y = np.empty((n, c, h // k, w // k), dtype=x.dtype)
    _tile_avg(x, y, k)
    return y


def tile_avgpool_backward(dy: np.ndarray, in_shape: tuple[int, int, int, int], k: int) -> np.ndarray:
    """Gradient of :func:`tile_avgpool_forward`: dy / k² on every cell of its tile."""
    dx = np.empty(in_shape, dtype=dy.dtype)
    _tile_spread(np.ascontiguousarray(dy), dx, k)
    return dx


def is_tile_pool(options: dict) -> bool:
    """True for average-pooling options that :func:`tile_avgpool_forward` computes exactly."""
    k = tuple(options["kernel"])
    return (k[0] == k[1] and tuple(options["stride"]) == k and tuple(options["padding"]) == (0, 0)
            and not options["ceil_mode"])
