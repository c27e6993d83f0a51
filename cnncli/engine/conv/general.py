"""The NCHW kernels of the convolution's own strategies, and each strategy's passes over them.

Layout is NCHW and weights are ``(F, C // groups, KH, KW)``, as in PyTorch, and every result matches
``torch.nn.functional.conv2d`` (same output sizes). Which strategy runs a call is
:func:`cnncli.engine.conv.strategies.pick`'s choice; here are the passes of those whose kernels live in this
file, and thin wrappers over :mod:`cnncli.engine.winograd` and :mod:`cnncli.engine.blocked`:

* **taps**, a GEMM per kernel tap (stride 1, where numpy's BLAS exports a CBLAS GEMM,
  :mod:`cnncli.engine.blas`): with whole padded rows as the pitch, the columns a tap multiplies are a
  window of the padded input itself, so each tap's GEMM reads it in place and no column matrix is written;
  the input and weight gradients likewise, tap by tap. A sample at a time, in bands of rows when its output
  is big.
* **groups**, unfold + BLAS a few samples at a time, the GEMMs called from the kernel
  (:func:`~cnncli.engine.rules.sample_group`: their columns fit in a core's L2), groups shared out over the
  threads. The columns never leave the cache, and no Python runs between samples. The weight gradient is
  computed as cols·dyᵀ (faster in OpenBLAS than dy·colsᵀ for these shapes), summed over runs of groups into
  a few *slots* (:func:`~cnncli.engine.rules.dw_slots`, one per core), the slots added in order and
  transposed in one pass (``_sum_slots``); the tap kernels share the slots.
* **chunks**, unfold + numpy's GEMMs: a kernel unfolds a *chunk* of the batch
  (:func:`~cnncli.engine.rules.chunk_size`) into ``(C*KH*KW, n, Q)`` and
  :func:`cnncli.engine.threads.matmul` does the products, cut into *slabs* shared with the engine's worker
  threads. Filters with few weights (:func:`~cnncli.engine.rules.direct_weights`) get their weight
  gradient from direct dot products instead.
* **depthwise**, the direct loops for stride-1 groups so thin (:func:`~cnncli.engine.rules.depthwise`) that a
  GEMM would have a single-digit dimension. The same loops give the weight gradient of layers with few
  weights (:func:`~cnncli.engine.rules.direct_weights`) and run the convolution of fused chains with few
  weights (:mod:`cnncli.engine.fast.fused`).

Intermediate layout: the input is copied into a zero-padded buffer ``xp`` (n, C, Hp, Wp), so no inner loop
tests borders, and output positions are numbered q = oh * pitch + ow (see the kernels below). The unfold,
its adjoint (fold) and the padding are written once, per plane (``_pad_plane``, ``_unfold_plane``,
``_fold_plane``), and used by every strategy here and by :mod:`cnncli.engine.fast.fused`, as are the direct
loops (``direct_forward``, ``direct_dw``, ``direct_dx``). Parallel kernels
split work by group of samples, (sample, channel) plane or (sample, filter) pair, or by channel; each
iteration writes only its own slice, partial sums are added in a fixed order, and GEMM slabs partition the
output, so results are bit-identical run to run and on any number of threads. Large temporaries live in
per-thread scratch buffers (:func:`cnncli.engine.arrays.scratch`).
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
from numba import get_thread_id, prange

from cnncli.engine import blas, blocked, rules, simd, winograd
from cnncli.engine import threads as engine_threads
from cnncli.engine.arrays import scratch
from cnncli.engine.blas import NO_TRANS, TRANS, gemm
from cnncli.engine.conv.geometry import Call
from cnncli.engine.fast.vector import row5
from cnncli.engine.jit import exact_parallel_kernel, kernel, parallel_kernel, vector_parallel_kernel

__all__ = ["Geometry", "nchw_fold", "nchw_pad", "nchw_unfold"]


# ---------------------------------------------------------------------------
# kernels
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
# it saves (see rules.flat_rows), use pitch = OW and gather row by row.
# ---------------------------------------------------------------------------


@kernel
def _pad_plane(src, dst, ph, pw):
    # One (H, W) plane into its zero-padded (Hp, Wp) buffer, row by row in vector moves (simd).
    h_ = src.shape[0]
    w_ = src.shape[1]
    wp = dst.shape[1]
    for r in range(ph):
        simd.zero(dst[r], 0, wp)
    for r in range(h_):
        row = dst[ph + r]
        simd.zero(row, 0, pw)
        simd.copy(row, pw, src[r], 0, w_)
        simd.zero(row, pw + w_, wp - pw - w_)
    for r in range(ph + h_, dst.shape[0]):
        simd.zero(dst[r], 0, wp)


@parallel_kernel
def nchw_pad(x, n0, xp, ph, pw):
    c_ = x.shape[1]
    for job in prange(xp.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        _pad_plane(x[n0 + n, c], xp[n, c], ph, pw)


@kernel
def _unfold_plane(plane, cols, row0, col0, kh_, kw_, sh, sw, dh, dw, oh0, oh1, ow_, pitch):
    # One padded input plane → its KH*KW rows of a column matrix, for output
    # rows oh0..oh1-1: rows row0 ... of cols (2-D), from column col0 on
    # (≥ (oh1 - oh0 - 1) * pitch + OW of them). Rows copied with simd's vector
    # moves (every other element for stride 2).
    wp_ = plane.shape[1]
    q_ = (oh1 - oh0 - 1) * pitch + ow_
    flat = plane.reshape(-1)
    flat_taps = sh == 1 and sw == 1 and pitch == wp_
    for i in range(kh_):
        for j in range(kw_):
            dst = cols[row0 + i * kw_ + j]
            if flat_taps:
                simd.copy(dst, col0, flat, i * dh * wp_ + j * dw + oh0 * pitch, q_)
                continue
            for oh in range(oh0, oh1):
                at = (oh * sh + i * dh) * wp_ + j * dw
                out = col0 + (oh - oh0) * pitch
                if sw == 1:
                    simd.copy(dst, out, flat, at, ow_)
                elif sw == 2:
                    simd.copy_stride2(dst, out, flat, at, ow_)
                else:
                    for ow in range(ow_):
                        dst[out + ow] = flat[at + ow * sw]


@parallel_kernel
def nchw_unfold(xp, cols, kh_, kw_, sh, sw, dh, dw, oh_, ow_, pitch):
    # cols is (C*KH*KW, n, Q): a row per weight tap (what one weight multiplies),
    # with the chunk's samples side by side so that one GEMM covers them all.
    c_ = xp.shape[1]
    kk = kh_ * kw_
    q_ = cols.shape[2]
    rows = cols.reshape(cols.shape[0], -1)
    for job in prange(xp.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        _unfold_plane(xp[n, c], rows, c * kk, n * q_, kh_, kw_, sh, sw, dh, dw, 0, oh_, ow_, pitch)


@kernel
def _fold_plane(taps, plane, kh_, kw_, sh, sw, dh, dw, oh0, oh1, ow_, pitch, zero):
    # The adjoint of _unfold_plane: a plane's KH*KW rows of column gradients
    # for output rows oh0..oh1-1 added into the padded plane (zeroed first if
    # ``zero``: the first rows of a sample), taps in a fixed order.
    wp_ = plane.shape[1]
    q_ = (oh1 - oh0 - 1) * pitch + ow_
    flat = plane.reshape(-1)
    if zero:
        flat[:] = 0.0
    flat_taps = sh == 1 and sw == 1 and pitch == wp_
    for i in range(kh_):
        for j in range(kw_):
            src = taps[i * kw_ + j]
            if flat_taps:
                off = i * dh * wp_ + j * dw + oh0 * pitch
                dst = flat[off : off + q_]
                for q in range(q_):
                    dst[q] += src[q]
            elif sw == 1:
                for oh in range(oh0, oh1):
                    dst = plane[oh * sh + i * dh, j * dw : j * dw + ow_]
                    partial = src[(oh - oh0) * pitch : (oh - oh0) * pitch + ow_]
                    for ow in range(ow_):
                        dst[ow] += partial[ow]
            else:
                for oh in range(oh0, oh1):
                    dst = plane[oh * sh + i * dh, j * dw :: sw]
                    partial = src[(oh - oh0) * pitch : (oh - oh0) * pitch + ow_]
                    for ow in range(ow_):
                        dst[ow] += partial[ow]


@kernel
def _crop_plane(plane, out, ph, pw):
    w_ = out.shape[1]
    for r in range(out.shape[0]):
        simd.copy(out[r], 0, plane[ph + r], pw, w_)


@parallel_kernel
def nchw_fold(dcols, dxp, dx, n0, ph, pw, kh_, kw_, sh, sw, dh, dw, oh_, ow_, pitch):
    # The adjoint of nchw_pad + nchw_unfold. Each (sample, channel) plane is owned
    # by one iteration, which adds its KH*KW overlapping taps in a fixed order
    # and then crops the padding off into dx. dxp may be dx's own chunk (no
    # padding), in which case the crop is skipped.
    c_ = dxp.shape[1]
    kk = kh_ * kw_
    crop = ph > 0 or pw > 0
    for job in prange(dxp.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        plane = dxp[n, c]
        _fold_plane(dcols[c * kk : (c + 1) * kk, n], plane, kh_, kw_, sh, sw, dh, dw, 0, oh_, ow_, pitch, True)
        if crop:
            _crop_plane(plane, dx[n0 + n, c], ph, pw)


@kernel
def _store_plane(src, dst, bias, pitch):
    # One output plane from its GEMM row: src (Q,) -> dst (OH, OW), dropping
    # junk columns; the copy is needed anyway, so the bias rides along.
    ow_ = dst.shape[1]
    for oh in range(dst.shape[0]):
        simd.copy_add(dst[oh], 0, src, oh * pitch, ow_, bias)


@kernel
def _load_plane(src, dst, pitch):
    # The adjoint of _store_plane: src (OH, OW) -> dst (Q,), junk columns
    # zeroed so that they add nothing to dw or dx.
    ow_ = src.shape[1]
    q_ = dst.shape[0]
    for oh in range(src.shape[0]):
        at = oh * pitch
        simd.copy(dst, at, src[oh], 0, ow_)
        simd.zero(dst, at + ow_, min(at + pitch, q_) - at - ow_)


@parallel_kernel
def _store_output(ybuf, b, y, n0, pitch):
    # (F, n, Q) -> y's (N, F, OH, OW), plane by plane.
    f_ = ybuf.shape[0]
    has_bias = b.shape[0] > 0
    for job in prange(ybuf.shape[1] * f_):
        n = job // f_
        f = job - n * f_
        _store_plane(ybuf[f, n], y[n0 + n, f], b[f] if has_bias else b.dtype.type(0), pitch)


@parallel_kernel
def _load_grad(dy, n0, dyt, pitch):
    # The adjoint of _store_output: (N, F, OH, OW) -> (F, n, Q).
    f_ = dyt.shape[0]
    for job in prange(dyt.shape[1] * f_):
        n = job // f_
        f = job - n * f_
        _load_plane(dy[n0 + n, f], dyt[f, n], pitch)


@exact_parallel_kernel
def _bias_grad(dy, db):
    # Without fastmath: dy is any array, and a vectorised sum's order would
    # depend on where its rows start (see jit.EXACT_FLAGS).
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


# The direct loops: few weights per filter (thin groups, rules.depthwise; small layers,
# rules.direct_weights), where a GEMM would have a handful of rows. Stride 1 and dilation 1 on flat rows
# (pitch = Wp): tap (i, j) of output q reads the padded plane's flat cell q + i*Wp + j, so each tap adds one
# contiguous run. Kernel rows five taps wide (LeNet-5's) take the five at once, holding their weights in
# registers; the forward pass computes two filters of a group per job, each load of the input feeding both.
# (The tap offsets are constants: with a run-time dilation LLVM no longer vectorises these loops.)


@vector_parallel_kernel
def direct_forward(xp, w, ybuf, groups):
    # ybuf (F, n, Q) = the convolution of the padded planes xp (n, C, Hp, Wp), no bias.
    f_, cg_, kh_, kw_ = w.shape
    wp_ = xp.shape[3]
    q_ = ybuf.shape[2]
    fg_ = f_ // groups
    pairs = (fg_ + 1) // 2
    per = groups * pairs
    for job in prange(xp.shape[0] * per):
        n = job // per
        r = job - n * per
        g = r // pairs
        f = g * fg_ + 2 * (r - g * pairs)
        f2 = min(f + 1, (g + 1) * fg_ - 1)  # f itself when the group has an odd filter out
        acc = np.zeros(q_, dtype=ybuf.dtype)
        acc2 = np.zeros(q_, dtype=ybuf.dtype)
        for cg in range(cg_):
            flat = xp[n, g * cg_ + cg].reshape(-1)
            for i in range(kh_):
                if f2 == f:
                    for j in range(kw_):
                        wv = w[f, cg, i, j]
                        src = flat[i * wp_ + j : i * wp_ + j + q_]
                        for q in range(q_):
                            acc[q] += wv * src[q]
                    continue
                if kw_ == 5:
                    w0, w1, w2, w3, w4 = row5(w, f, cg, i)
                    v0, v1, v2, v3, v4 = row5(w, f2, cg, i)
                    src = flat[i * wp_ : i * wp_ + q_ + 4]
                    for q in range(q_):
                        s0 = src[q]
                        s1 = src[q + 1]
                        s2 = src[q + 2]
                        s3 = src[q + 3]
                        s4 = src[q + 4]
                        acc[q] += w0 * s0 + w1 * s1 + w2 * s2 + w3 * s3 + w4 * s4
                        acc2[q] += v0 * s0 + v1 * s1 + v2 * s2 + v3 * s3 + v4 * s4
                    continue
                for j in range(kw_):
                    wv = w[f, cg, i, j]
                    vv = w[f2, cg, i, j]
                    src = flat[i * wp_ + j : i * wp_ + j + q_]
                    for q in range(q_):
                        acc[q] += wv * src[q]
                        acc2[q] += vv * src[q]
        ybuf[f, n, :] = acc
        if f2 != f:
            ybuf[f2, n, :] = acc2


@vector_parallel_kernel
def direct_dw(xp, dyt, grad, groups, first):
    # grad (F, C/groups, KH, KW) (+)= the dot products, over the chunk's samples in order, of each filter's
    # gradient run dyt (F, n, Q) with each tap's run of xp; first: overwrite grad, else add to it (later
    # chunks). One job per (filter, channel, kernel row); five taps of a row share each load of the gradient.
    f_, cg_, kh_, kw_ = grad.shape
    wp_ = xp.shape[3]
    q_ = dyt.shape[2]
    fg_ = f_ // groups
    zero = grad.dtype.type(0)
    for job in prange(f_ * cg_ * kh_):
        f = job // (cg_ * kh_)
        r = job - f * (cg_ * kh_)
        cg = r // kh_
        i = r - cg * kh_
        c = (f // fg_) * cg_ + cg
        j0 = 0
        while j0 < kw_:
            wide = min(5, kw_ - j0)
            t0 = zero
            t1 = zero
            t2 = zero
            t3 = zero
            t4 = zero
            for n in range(xp.shape[0]):
                g = dyt[f, n]
                flat = xp[n, c].reshape(-1)
                off = i * wp_ + j0
                a0 = zero
                a1 = zero
                a2 = zero
                a3 = zero
                a4 = zero
                if wide == 5:
                    src = flat[off : off + q_ + 4]
                    for q in range(q_):
                        gq = g[q]
                        a0 += gq * src[q]
                        a1 += gq * src[q + 1]
                        a2 += gq * src[q + 2]
                        a3 += gq * src[q + 3]
                        a4 += gq * src[q + 4]
                else:
                    src = flat[off : off + q_]
                    for q in range(q_):
                        a0 += g[q] * src[q]
                t0 += a0
                t1 += a1
                t2 += a2
                t3 += a3
                t4 += a4
            if wide == 5:
                sums = (t0, t1, t2, t3, t4)
                for t in range(5):
                    if first:
                        grad[f, cg, i, j0 + t] = sums[t]
                    else:
                        grad[f, cg, i, j0 + t] += sums[t]
                j0 += 5
            else:
                if first:
                    grad[f, cg, i, j0] = t0
                else:
                    grad[f, cg, i, j0] += t0
                j0 += 1


@vector_parallel_kernel
def direct_dx(dyt, w, dxp, dx, n0, ph, pw, groups):
    # The input gradient: dxp (n, C, Hp, Wp) = each filter's gradient run dyt (F, n, Q) times each tap's
    # weight, added into the tap's run of the padded plane; then the padding cropped off into dx (skipped
    # when dxp is dx's own chunk). One job per (sample, channel). With 5-wide kernel rows each cell gathers
    # the row's five taps at once from a copy of the gradient run with a zero border.
    c_ = dxp.shape[1]
    h_ = dx.shape[2]
    w_ = dx.shape[3]
    f_, cg_, kh_, kw_ = w.shape
    wp_ = dxp.shape[3]
    q_ = dyt.shape[2]
    fg_ = f_ // groups
    zero = dxp.dtype.type(0)
    crop = ph > 0 or pw > 0
    for job in prange(dxp.shape[0] * c_):
        n = job // c_
        c = job - n * c_
        g = c // cg_
        cg = c - g * cg_
        plane = dxp[n, c]
        flat = plane.reshape(-1)
        flat[:] = zero
        srcp = np.empty(q_ + 8, dtype=dxp.dtype)
        srcp[:4] = zero
        srcp[q_ + 4 :] = zero
        for f in range(g * fg_, (g + 1) * fg_):
            src = dyt[f, n]
            if kw_ == 5:
                srcp[4 : q_ + 4] = src
            for i in range(kh_):
                if kw_ == 5:
                    w0, w1, w2, w3, w4 = row5(w, f, cg, i)
                    dst = flat[i * wp_ : i * wp_ + q_ + 4]
                    for r in range(q_ + 4):
                        dst[r] += (w0 * srcp[r + 4] + w1 * srcp[r + 3] + w2 * srcp[r + 2]
                                   + w3 * srcp[r + 1] + w4 * srcp[r])
                    continue
                for j in range(kw_):
                    wv = w[f, cg, i, j]
                    dst = flat[i * wp_ + j : i * wp_ + j + q_]
                    for q in range(q_):
                        dst[q] += wv * src[q]
        if crop:
            out = dx[n0 + n, c]
            for r in range(h_):
                out[r, :] = plane[ph + r, pw : pw + w_]


# ---------------------------------------------------------------------------
# a few samples at a time, the GEMMs called from the kernel (cnncli.engine.blas)
#
# A group of samples whose columns (C*KH*KW, n*Q) fit in a core's cache
# (rules.sample_group): the unfold writes them there and the GEMM reads them
# back from there, where a chunk's columns went through main memory. Each
# thread has its own buffers (index get_thread_id()). Each group's weight
# gradient has its own slot, which the caller adds up in order: the same bits
# on any number of threads.
# ---------------------------------------------------------------------------


@kernel
def _columns(x, n, xp, cols, col0, kh_, kw_, sh, sw, ph, pw, dh, dw, oh0, oh1, ow_, pitch):
    # Output rows oh0..oh1-1 of sample n of x → their column matrix, columns col0 ... of cols (C*KH*KW, ...),
    # through the padded planes xp (C, Hp, Wp), padded when a sample's first rows are unfolded.
    kk = kh_ * kw_
    padded = ph > 0 or pw > 0
    for c in range(x.shape[1]):
        plane = x[n, c]
        if padded:
            if oh0 == 0:
                _pad_plane(plane, xp[c], ph, pw)
            plane = xp[c]
        _unfold_plane(plane, cols, c * kk, col0, kh_, kw_, sh, sw, dh, dw, oh0, oh1, ow_, pitch)


@parallel_kernel
def _forward_groups(address, ilp64, x, w2, bias, y, per, band, xp_buf, cols_buf, out_buf,
                    kh_, kw_, sh, sw, ph, pw, dh, dw, pitch, groups):
    # Groups of ``per`` samples, each sample's output rows in bands of ``band`` (all of them unless one
    # sample's columns are too big). cols_buf[t] (C*KH*KW, per*qmax), out_buf[t] (F, per*qmax): sample j
    # of a group at j*qmax, qmax a band's column count.
    n_ = x.shape[0]
    f_ = w2.shape[0]
    taps = w2.shape[1]
    fg = f_ // groups
    oh_ = y.shape[2]
    ow_ = y.shape[3]
    qmax = (band - 1) * pitch + ow_
    ld = per * qmax
    has_bias = bias.shape[0] > 0
    for gi in prange((n_ + per - 1) // per):
        t = get_thread_id()
        cols, out = cols_buf[t], out_buf[t]
        n0 = gi * per
        ns = min(per, n_ - n0)
        for r0 in range(0, oh_, band):
            r1 = min(oh_, r0 + band)
            qb = (r1 - r0 - 1) * pitch + ow_
            for j in range(ns):
                _columns(x, n0 + j, xp_buf[t], cols, j * qmax, kh_, kw_, sh, sw, ph, pw,
                         dh, dw, r0, r1, ow_, pitch)
            for g in range(groups):
                gemm(address, ilp64, NO_TRANS, NO_TRANS, fg, (ns - 1) * qmax + qb, taps, w2[g * fg :], taps,
                     cols[g * taps :], ld, 0.0, out[g * fg :], ld)
            for j in range(ns):
                for f in range(f_):
                    _store_plane(out[f, j * qmax : j * qmax + qb], y[n0 + j, f, r0:r1],
                                 bias[f] if has_bias else bias.dtype.type(0), pitch)


@parallel_kernel
def _backward_groups(address, ilp64, x, w2, dy, dx, dw_slots, per, span, band, xp_buf, dxp_buf, cols_buf, dy_buf,
                     kh_, kw_, sh, sw, ph, pw, dh, dw, pitch, groups, need_dx):
    # dw_slots (slots, channel groups, C/groups*KH*KW, F/groups): slot s sums the dwᵀ of groups of samples
    # s*span … s*span + span - 1, in order.
    n_ = x.shape[0]
    c_ = x.shape[1]
    f_ = w2.shape[0]
    taps = w2.shape[1]
    fg = f_ // groups
    oh_ = dy.shape[2]
    ow_ = dy.shape[3]
    kk = kh_ * kw_
    qmax = (band - 1) * pitch + ow_
    ld = per * qmax
    padded = ph > 0 or pw > 0
    group_count = (n_ + per - 1) // per
    for si in prange(dw_slots.shape[0]):
        t = get_thread_id()
        cols, dyt, xp, dxp = cols_buf[t], dy_buf[t], xp_buf[t], dxp_buf[t]
        part = dw_slots[si]
        for gi in range(si * span, min(group_count, si * span + span)):
            n0 = gi * per
            ns = min(per, n_ - n0)
            for r0 in range(0, oh_, band):
                r1 = min(oh_, r0 + band)
                qb = (r1 - r0 - 1) * pitch + ow_
                width = (ns - 1) * qmax + qb
                for j in range(ns):
                    _columns(x, n0 + j, xp, cols, j * qmax, kh_, kw_, sh, sw, ph, pw, dh, dw,
                             r0, r1, ow_, pitch)
                    for f in range(f_):  # dy of the sample's rows as (F, band's Q)
                        _load_plane(dy[n0 + j, f, r0:r1], dyt[f, j * qmax : j * qmax + qb], pitch)
                for g in range(groups):  # this group's dwᵀ += cols · dyᵀ (OpenBLAS runs it faster than dy · colsᵀ)
                    gemm(address, ilp64, NO_TRANS, TRANS, taps, fg, width, cols[g * taps :], ld,
                         dyt[g * fg :], ld, 0.0 if r0 == 0 and gi == si * span else 1.0, part[g], fg)
                if not need_dx:
                    continue
                for g in range(groups):  # column gradients wᵀ · dy, into the spent columns
                    gemm(address, ilp64, TRANS, NO_TRANS, taps, width, fg, w2[g * fg :], taps,
                         dyt[g * fg :], ld, 0.0, cols[g * taps :], ld)
                for j in range(ns):
                    for c in range(c_):
                        plane = dxp[c] if padded else dx[n0 + j, c]
                        _fold_plane(cols[c * kk : (c + 1) * kk, j * qmax : j * qmax + qb], plane, kh_, kw_, sh, sw,
                                    dh, dw, r0, r1, ow_, pitch, r0 == 0)
                        if padded and r1 == oh_:  # the sample's last rows: its gradient is complete
                            _crop_plane(plane, dx[n0 + j, c], ph, pw)


# ---------------------------------------------------------------------------
# stride 1: one GEMM per kernel tap, no column matrix (rules.tap_gemms)
#
# With whole padded rows as the pitch, the input under tap (i, j) of every
# output q is the padded plane's flat cell q + i*dh*Wp + j*dw, so the column
# matrix's rows for that tap are a (C, Q) window of the padded planes with
# leading dimension Hp*Wp: a GEMM reads it in place. The forward pass is the
# sum over taps of w_tap (F, C) · window, the input gradient adds w_tapᵀ · dy
# into the same windows of a padded gradient buffer, and the weight gradient
# of tap k is window · dyᵀ, written into rows k, k+KH*KW, ... of the group's
# (C*KH*KW, F) slot (leading dimension KH*KW*F). Unfolding wrote and re-read
# KH*KW copies of the input; here the GEMMs read the padded input directly.
# One sample at a time (its rows in bands when its output is bigger than
# GROUP_COLS_BYTES); groups of samples share a weight-gradient slot, added up in
# order by the caller.
# ---------------------------------------------------------------------------


@parallel_kernel
def _forward_taps(address, ilp64, x, wt, bias, y, per, band, xp_buf, out_buf, kh_, kw_, ph, pw, dh, dw, groups):
    # wt (KH*KW, F, C/groups); xp_buf[t] (C, Hp, Wp); out_buf[t] (F, ≥ a band's Q).
    n_ = x.shape[0]
    c_ = x.shape[1]
    f_ = wt.shape[1]
    cg = wt.shape[2]
    fg = f_ // groups
    oh_ = y.shape[2]
    ow_ = y.shape[3]
    hp = xp_buf.shape[2]
    wp = xp_buf.shape[3]
    plane = hp * wp
    ld = out_buf.shape[2]
    has_bias = bias.shape[0] > 0
    for gi in prange((n_ + per - 1) // per):
        t = get_thread_id()
        xp, out = xp_buf[t], out_buf[t]
        flat = xp.reshape(c_, plane)
        for n in range(gi * per, min(n_, gi * per + per)):
            for c in range(c_):
                _pad_plane(x[n, c], xp[c], ph, pw)
            for r0 in range(0, oh_, band):
                r1 = min(oh_, r0 + band)
                qb = (r1 - r0 - 1) * wp + ow_
                for i in range(kh_):
                    for j in range(kw_):
                        k = i * kw_ + j
                        off = (r0 + i * dh) * wp + j * dw
                        for g in range(groups):
                            gemm(address, ilp64, NO_TRANS, NO_TRANS, fg, qb, cg, wt[k, g * fg :], cg,
                                 flat[g * cg :, off:], plane, 0.0 if k == 0 else 1.0, out[g * fg :], ld)
                for f in range(f_):
                    _store_plane(out[f, :qb], y[n, f, r0:r1], bias[f] if has_bias else bias.dtype.type(0), wp)


@parallel_kernel
def _backward_taps(address, ilp64, x, wt, dy, dx, dw_slots, per, band, xp_buf, dxp_buf, dy_buf,
                   kh_, kw_, ph, pw, dh, dw, groups, need_dx):
    # dw_slots (groups of samples, channel groups, C/groups*KH*KW, F/groups): each group of samples has a
    # slot (rules.tap_plan makes at most DW_SLOTS groups), its dwᵀ summed over its samples in order.
    n_ = x.shape[0]
    c_ = x.shape[1]
    f_ = wt.shape[1]
    cg = wt.shape[2]
    fg = f_ // groups
    kk = kh_ * kw_
    oh_ = dy.shape[2]
    ow_ = dy.shape[3]
    hp = xp_buf.shape[2]
    wp = xp_buf.shape[3]
    plane = hp * wp
    ld = dy_buf.shape[2]
    for gi in prange(dw_slots.shape[0]):
        t = get_thread_id()
        xp, dxp, dyt = xp_buf[t], dxp_buf[t], dy_buf[t]
        flat = xp.reshape(c_, plane)
        dflat = dxp.reshape(c_, plane)
        slot = dw_slots[gi]
        first = True
        for n in range(gi * per, min(n_, gi * per + per)):
            for c in range(c_):
                _pad_plane(x[n, c], xp[c], ph, pw)
            if need_dx:
                dxp[:] = 0.0
            for r0 in range(0, oh_, band):
                r1 = min(oh_, r0 + band)
                qb = (r1 - r0 - 1) * wp + ow_
                for f in range(f_):  # junk columns zeroed: they add nothing to dw or dx
                    _load_plane(dy[n, f, r0:r1], dyt[f, :qb], wp)
                for i in range(kh_):
                    for j in range(kw_):
                        k = i * kw_ + j
                        off = (r0 + i * dh) * wp + j * dw
                        for g in range(groups):
                            gemm(address, ilp64, NO_TRANS, TRANS, cg, fg, qb, flat[g * cg :, off:], plane,
                                 dyt[g * fg :], ld, 0.0 if first else 1.0, slot[g].reshape(-1)[k * fg :], kk * fg)
                            if need_dx:
                                gemm(address, ilp64, TRANS, NO_TRANS, cg, qb, fg, wt[k, g * fg :], cg,
                                     dyt[g * fg :], ld, 1.0, dflat[g * cg :, off:], plane)
                first = False
            if need_dx:
                for c in range(c_):
                    _crop_plane(dxp[c], dx[n, c], ph, pw)


@exact_parallel_kernel
def _sum_slots(slots, dw3):
    # dw3 (groups, F/groups, taps)[g, f, t] = Σ over slots s, in order, of slots (S, groups, taps, F/groups)[s, g, t, f]:
    # the slots' sum and the transpose in one pass, tile by tile so that both sides stay in cache.
    s_, g_, t_, f_ = slots.shape
    tile = 32
    f_tiles = (f_ + tile - 1) // tile
    for job in prange(g_ * f_tiles):
        g = job // f_tiles
        f0 = (job - g * f_tiles) * tile
        f1 = min(f_, f0 + tile)
        for t0 in range(0, t_, tile):
            t1 = min(t_, t0 + tile)
            for f in range(f0, f1):
                out = dw3[g, f]
                for t in range(t0, t1):
                    total = slots[0, g, t, f]
                    for k in range(1, s_):
                        total += slots[k, g, t, f]
                    out[t] = total


# ---------------------------------------------------------------------------
# the strategies' passes (cnncli.engine.conv.strategies runs them; the arguments are checked by then)
#
# forward(geo, bias, y) fills y (N, F, OH, OW) and returns it; backward(geo, dy, dx, dw) fills dw
# (F, C/groups, KH, KW) and, unless dx is None, dx (N, C, H, W). bias is (F,) or (0,).
# ---------------------------------------------------------------------------


class Geometry(Call):
    """A :class:`~cnncli.engine.conv.geometry.Call` with its arrays, and the buffers its kernels take."""

    def __init__(self, x: np.ndarray, w: np.ndarray, call: Call):
        self.__dict__.update(call.__dict__)  # the call's shapes and rule inputs, computed once
        self.x = x
        self.w = w

    def padded(self, n0: int, nc: int) -> np.ndarray:
        if self.ph == 0 and self.pw == 0:
            return self.x[n0 : n0 + nc]
        xp = scratch("xp", (nc, self.c, self.hp, self.wp), self.x.dtype)
        nchw_pad(self.x, n0, xp, self.ph, self.pw)
        return xp

    def unfolded(self, xp: np.ndarray, nc: int) -> np.ndarray:
        cols = scratch("cols", (self.c * self.kh * self.kw, nc, self.q), self.x.dtype)
        nchw_unfold(xp, cols, self.kh, self.kw, self.sh, self.sw, self.dh, self.dw, self.oh, self.ow, self.pitch)
        return cols

    def group_buffers(self, per: int, band: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-thread buffers of the group kernels: padded planes, columns, outputs (or dy) of ``per`` samples'
        bands of ``band`` output rows."""
        t = numba.get_num_threads()
        dtype = self.x.dtype
        qmax = (band - 1) * self.pitch + self.ow
        return (scratch("group.xp", (t, self.c, self.hp, self.wp), dtype),
                scratch("group.cols", (t, self.c * self.kh * self.kw, per * qmax), dtype),
                scratch("group.out", (t, self.f, per * qmax), dtype))

    def tap_weights(self) -> np.ndarray:
        """The weights as (KH*KW, F, C/groups): one (F, C/groups) matrix per tap, for the tap kernels."""
        return np.ascontiguousarray(self.w.transpose(2, 3, 0, 1)).reshape(self.kh * self.kw, self.f, self.cg)

    def tap_buffers(self, band: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-thread buffers of the tap kernels: a sample's padded planes, a band's outputs (or dy), on whole
        padded rows."""
        t = numba.get_num_threads()
        dtype = self.x.dtype
        return (scratch("group.xp", (t, self.c, self.hp, self.wp), dtype),
                scratch("group.out", (t, self.f, (band - 1) * self.wp + self.ow), dtype))

    def input_grad_buffer(self, dx: np.ndarray, n0: int, nc: int) -> np.ndarray:
        if self.ph == 0 and self.pw == 0:
            return dx[n0 : n0 + nc]
        # Shares the padded input's buffer: callers take it once that input
        # has been unfolded (or used for dw) and is no longer needed.
        return scratch("xp", (nc, self.c, self.hp, self.wp), self.x.dtype)


def _no_dx(dx: np.ndarray | None, dtype) -> np.ndarray:
    return dx if dx is not None else np.empty((0, 0, 0, 0), dtype)


def winograd_forward(geo: Geometry, bias: np.ndarray, y: np.ndarray) -> np.ndarray:
    return winograd.forward(geo.x, geo.w, bias, y, geo.ph, geo.pw)


def winograd_backward(geo: Geometry, dy: np.ndarray, dx: np.ndarray | None, dw: np.ndarray) -> None:
    winograd.backward(geo.x, geo.w, dy, dx, dw, geo.ph, geo.pw)


def blocked_forward(geo: Geometry, bias: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The register-blocked forward pass: positions or filters in the lanes ('same' stride 1), filters in the
    lanes (strided)."""
    return blocked.forward(geo.x, geo.w, bias, y, geo.ph, geo.pw, geo.dh, geo.dw, geo.sh, geo.sw)


def blocked_backward(geo: Geometry, dy: np.ndarray, dx: np.ndarray | None, dw: np.ndarray) -> None:
    parts = blocked.backward(geo.x, geo.w, dy, dx, geo.ph, geo.pw, geo.dh, geo.dw, rules.slot_samples(geo.n))
    _sum_slots(parts.reshape(parts.shape[0], 1, geo.taps, geo.f), dw.reshape(1, geo.f, geo.taps))


def taps_forward(geo: Geometry, bias: np.ndarray, y: np.ndarray) -> np.ndarray:
    f = blas.FUNCTIONS
    per, band = geo.tap_plan()
    _forward_taps(f.of(geo.x.dtype), f.ilp64, geo.x, geo.tap_weights(), bias, y, per, band, *geo.tap_buffers(band),
                  geo.kh, geo.kw, geo.ph, geo.pw, geo.dh, geo.dw, geo.groups)
    return y


def taps_backward(geo: Geometry, dy: np.ndarray, dx: np.ndarray | None, dw: np.ndarray) -> None:
    f = blas.FUNCTIONS
    dtype = geo.x.dtype
    g, fg = geo.groups, geo.fg
    per, band = geo.tap_plan()
    parts = np.empty((-(-geo.n // per), g, geo.taps, fg), dtype=dtype)  # dwᵀ per slot: a group of samples each
    xp, dyt = geo.tap_buffers(band)
    _backward_taps(f.of(dtype), f.ilp64, geo.x, geo.tap_weights(), dy, _no_dx(dx, dtype), parts, per, band,
                   xp, scratch("group.dxp", xp.shape, dtype), dyt, geo.kh, geo.kw, geo.ph, geo.pw, geo.dh,
                   geo.dw, g, dx is not None)
    _sum_slots(parts, dw.reshape(g, fg, geo.taps))


def groups_forward(geo: Geometry, bias: np.ndarray, y: np.ndarray) -> np.ndarray:
    f = blas.FUNCTIONS
    per, band = geo.group_plan()
    _forward_groups(f.of(geo.x.dtype), f.ilp64, geo.x, geo.w.reshape(geo.f, geo.taps), bias, y, per, band,
                    *geo.group_buffers(per, band), geo.kh, geo.kw, geo.sh, geo.sw, geo.ph, geo.pw, geo.dh,
                    geo.dw, geo.pitch, geo.groups)
    return y


def groups_backward(geo: Geometry, dy: np.ndarray, dx: np.ndarray | None, dw: np.ndarray) -> None:
    f = blas.FUNCTIONS
    dtype = geo.x.dtype
    g, fg = geo.groups, geo.fg
    per, band = geo.group_plan()
    slots, span = rules.dw_slots(-(-geo.n // per))
    parts = np.empty((slots, g, geo.taps, fg), dtype=dtype)  # dwᵀ per slot of groups of samples
    xp, cols, dyt = geo.group_buffers(per, band)
    dxp = scratch("group.dxp", xp.shape, dtype)
    _backward_groups(f.of(dtype), f.ilp64, geo.x, geo.w.reshape(geo.f, geo.taps), dy, _no_dx(dx, dtype), parts,
                     per, span, band, xp, dxp, cols, dyt, geo.kh, geo.kw, geo.sh, geo.sw, geo.ph, geo.pw, geo.dh,
                     geo.dw, geo.pitch, g, dx is not None)
    _sum_slots(parts, dw.reshape(g, fg, geo.taps))


def depthwise_forward(geo: Geometry, bias: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The direct loops over whole padded rows (stride 1, dilation 1), the batch in one go: no column matrix."""
    q = (geo.oh - 1) * geo.wp + geo.ow
    ybuf = scratch("out", (geo.f, geo.n, q), geo.x.dtype)
    direct_forward(geo.padded(0, geo.n), geo.w, ybuf, geo.groups)
    _store_output(ybuf, bias, y, 0, geo.wp)
    return y


def depthwise_backward(geo: Geometry, dy: np.ndarray, dx: np.ndarray | None, dw: np.ndarray) -> None:
    dtype = geo.x.dtype
    q = (geo.oh - 1) * geo.wp + geo.ow
    xp = geo.padded(0, geo.n)
    dyt = scratch("out", (geo.f, geo.n, q), dtype)
    _load_grad(dy, 0, dyt, geo.wp)
    direct_dw(xp, dyt, dw, geo.groups, True)
    if dx is not None:
        dxp = geo.input_grad_buffer(dx, 0, geo.n)
        direct_dx(dyt, geo.w, dxp, dx, 0, geo.ph, geo.pw, geo.groups)


def chunks_forward(geo: Geometry, bias: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Unfold a chunk of the batch (rules.chunk_size), numpy's GEMM (threads.matmul, in slabs), store."""
    dtype = geo.x.dtype
    g, fg = geo.groups, geo.fg
    w3 = geo.w.reshape(g, fg, geo.taps)
    for n0 in range(0, geo.n, geo.step):
        nc = min(geo.step, geo.n - n0)
        ybuf = scratch("out", (geo.f, nc, geo.q), dtype)
        cols = geo.unfolded(geo.padded(n0, nc), nc)
        engine_threads.matmul(w3, cols.reshape(g, geo.taps, nc * geo.q), ybuf.reshape(g, fg, nc * geo.q))
        _store_output(ybuf, bias, y, n0, geo.pitch)
    return y


def chunks_backward(geo: Geometry, dy: np.ndarray | None, dx: np.ndarray | None, dw_out: np.ndarray,
                    load: Callable[[int, np.ndarray], None] | None = None,
                    kept: list[np.ndarray] | None = None) -> None:
    """Chunk by chunk: dy laid out as the GEMMs' (F, n, Q); the weight gradient by GEMM (transposed when
    rules.dw_transposed) or, with few weights on flat rows (``direct_dw``), by the direct loops; the input
    gradient by GEMM and fold, or by the direct loops where the forward pass took them (``direct_loops``).

    A fused block (:mod:`cnncli.engine.fast.fused`) passes ``load(n0, dyt)``, which fills the chunk's (F, n, Q)
    from the gradient of its activation and pooling instead of dy, and ``kept``, the chunks' column matrices
    from its forward pass, if it kept them.
    """
    dtype = geo.x.dtype
    g, fg = geo.groups, geo.fg
    w3t = geo.w.reshape(g, fg, geo.taps).transpose(0, 2, 1)
    dw3 = dw_out.reshape(g, fg, geo.taps)
    dw_t = None
    if not geo.direct_dw and rules.dw_transposed(fg):
        dw_t = np.empty((g, geo.taps, fg), dtype=dtype)
    for i, n0 in enumerate(range(0, geo.n, geo.step)):
        nc = min(geo.step, geo.n - n0)
        dyt = scratch("out", (geo.f, nc, geo.q), dtype)
        if load is None:
            _load_grad(dy, n0, dyt, geo.pitch)
        else:
            load(n0, dyt)
        dyt3 = dyt.reshape(g, fg, nc * geo.q)
        # Chunks are fixed by the shapes alone, so the running sums below add
        # the same partial products in the same order on every run.
        if geo.direct_dw:
            direct_dw(geo.padded(n0, nc), dyt, dw_out, g, n0 == 0)
        else:
            cols = kept[i] if kept is not None else geo.unfolded(geo.padded(n0, nc), nc)
            cols3 = cols.reshape(g, geo.taps, nc * geo.q)
            if dw_t is not None:
                out = dw_t if n0 == 0 else np.empty_like(dw_t)
                partial = engine_threads.matmul(cols3, dyt3.transpose(0, 2, 1), out)
                if n0 > 0:
                    dw_t += partial
            else:
                out = dw3 if n0 == 0 else np.empty_like(dw3)
                partial = engine_threads.matmul(dyt3, cols3.transpose(0, 2, 1), out)
                if n0 > 0:
                    dw3 += partial
        if dx is None:
            continue
        dxp = geo.input_grad_buffer(dx, n0, nc)
        if geo.direct_loops:
            direct_dx(dyt, geo.w, dxp, dx, n0, geo.ph, geo.pw, g)
            continue
        # Same buffer as the unfolded input, which is spent by now.
        dcols = scratch("cols", (geo.c * geo.kh * geo.kw, nc, geo.q), dtype)
        engine_threads.matmul(w3t, dyt3, dcols.reshape(g, geo.taps, nc * geo.q))
        nchw_fold(
            dcols, dxp, dx, n0, geo.ph, geo.pw, geo.kh, geo.kw,
            geo.sh, geo.sw, geo.dh, geo.dw, geo.oh, geo.ow, geo.pitch,
        )  # fmt: skip
    if dw_t is not None:
        dw3[...] = dw_t.transpose(0, 2, 1)


def bias_grad(dy: np.ndarray, db: np.ndarray) -> None:
    """db (F,) = dy (N, F, OH, OW) summed over samples (in order) and positions."""
    n, f = dy.shape[:2]
    _bias_grad(dy.reshape(n, f, -1), db)
