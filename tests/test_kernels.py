"""Each convolution strategy and pooling kernel (cnncli.engine.conv, cnncli.engine.pool) against a reference.

The convolution's reference is the package's own (cnncli.engine.conv.reference, what a plain network runs),
itself checked here against slow, obvious loops written straight from the definitions, with Python loops over
small shapes, in float64. Every strategy of cnncli.engine.conv.STRATEGIES that runs a plain convolution is run
by name on exactly the cases it applies to, in plans that reach each branch of its kernels, both dtypes, and
compared with the reference; the picker's own choice is checked to be what runs. Backward references add up
each output's contribution to its inputs, which is the definition of the adjoint; separate tests check the
adjoint identities (<dy, f(x)> = <f*(dy), x>) and finite differences of each strategy's own forward pass, so
that a reference and a kernel sharing one misreading of the definition would still be caught, and that each
strategy gives the same bits on one thread or two. A few literal values were taken from PyTorch to pin the
conventions (output sizes, pooling divisors, tie rule).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from cnncli.engine import conv, pool, rules, simd
from cnncli.model.kinds import window_output

DTYPES = [np.float32, np.float64]


def tolerances(dtype) -> dict:
    return {"rtol": 2e-5, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-11, "atol": 1e-11}


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------


def conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def ref_conv2d(x, w, b, stride, padding, dilation, groups):
    n_, _, h_, w_ = x.shape
    f_, cg_, kh_, kw_ = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh_, ow_ = conv_out(h_, kh_, sh, ph, dh), conv_out(w_, kw_, sw, pw, dw)
    fg_ = f_ // groups
    y = np.zeros((n_, f_, oh_, ow_))
    for n in range(n_):
        for f in range(f_):
            g = f // fg_
            for oh in range(oh_):
                for ow in range(ow_):
                    acc = 0.0 if b is None else float(b[f])
                    for cg in range(cg_):
                        for i in range(kh_):
                            for j in range(kw_):
                                ih = oh * sh - ph + i * dh
                                iw = ow * sw - pw + j * dw
                                if 0 <= ih < h_ and 0 <= iw < w_:
                                    acc += float(x[n, g * cg_ + cg, ih, iw]) * float(w[f, cg, i, j])
                    y[n, f, oh, ow] = acc
    return y


def ref_conv2d_backward(x, w, dy, stride, padding, dilation, groups):
    n_, _, h_, w_ = x.shape
    f_, cg_, kh_, kw_ = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    fg_ = f_ // groups
    dx = np.zeros(x.shape)
    dwt = np.zeros(w.shape)
    db = np.zeros(f_)
    for n in range(n_):
        for f in range(f_):
            g = f // fg_
            for oh in range(dy.shape[2]):
                for ow in range(dy.shape[3]):
                    grad = float(dy[n, f, oh, ow])
                    db[f] += grad
                    for cg in range(cg_):
                        for i in range(kh_):
                            for j in range(kw_):
                                ih = oh * sh - ph + i * dh
                                iw = ow * sw - pw + j * dw
                                if 0 <= ih < h_ and 0 <= iw < w_:
                                    c = g * cg_ + cg
                                    dx[n, c, ih, iw] += float(w[f, cg, i, j]) * grad
                                    dwt[f, cg, i, j] += float(x[n, c, ih, iw]) * grad
    return dx, dwt, db


def ref_pool_size(size, k, s, p, d=1, ceil_mode=False):
    """Count windows by walking them along the padded axis.

    Floor mode keeps the windows that fit entirely. Ceil mode also keeps a
    window hanging over the padded end by less than one stride, unless
    (PyTorch's correction) it starts in the right padding or beyond.
    """
    span = d * (k - 1)  # a window covers [start, start + span]
    last = size - 1 + p  # last cell of the padded axis, in input coordinates
    count, start = 0, -p
    while True:
        overhang = start + span - last
        keep = overhang <= 0 or (ceil_mode and overhang < s and start <= size - 1)
        if not keep:
            return count
        count += 1
        start += s


def pool_windows(size, k, s, p, ceil_mode):
    """(start, end) of each window on one axis in input coordinates, unclipped."""
    n_out = ref_pool_size(size, k, s, p, 1, ceil_mode)
    return [(o * s - p, o * s - p + k) for o in range(n_out)]


def ref_maxpool2d(x, kernel, stride, padding, ceil_mode):
    n_, c_, h_, w_ = x.shape
    rows = pool_windows(h_, kernel[0], stride[0], padding[0], ceil_mode)
    cols = pool_windows(w_, kernel[1], stride[1], padding[1], ceil_mode)
    y = np.zeros((n_, c_, len(rows), len(cols)))
    idx = np.zeros(y.shape, dtype=np.int64)
    for n in range(n_):
        for c in range(c_):
            for oh, (r0, r1) in enumerate(rows):
                for ow, (q0, q1) in enumerate(cols):
                    best, best_i = -math.inf, None
                    for r in range(r0, r1):
                        for q in range(q0, q1):
                            if not (0 <= r < h_ and 0 <= q < w_):
                                continue  # padding is -inf: it never wins
                            v = float(x[n, c, r, q])
                            if best_i is None or v > best:
                                best, best_i = v, r * w_ + q
                    y[n, c, oh, ow] = best
                    idx[n, c, oh, ow] = best_i
    return y, idx


def ref_maxpool2d_backward(dy, idx, in_shape):
    dx = np.zeros(in_shape)
    n_, c_, _, w_ = in_shape
    for n in range(n_):
        for c in range(c_):
            for oh in range(dy.shape[2]):
                for ow in range(dy.shape[3]):
                    k = int(idx[n, c, oh, ow])
                    dx[n, c, k // w_, k % w_] += float(dy[n, c, oh, ow])
    return dx


def avg_divisors(size, k, s, p, ceil_mode, count_include_pad):
    """Per window: (cells in the real input, divisor) along one axis."""
    out = []
    for start, end in pool_windows(size, k, s, p, ceil_mode):
        real = [i for i in range(start, end) if 0 <= i < size]
        in_padded = [i for i in range(start, end) if -p <= i < size + p]
        out.append((real, len(in_padded) if count_include_pad else len(real)))
    return out


def ref_avgpool2d(x, kernel, stride, padding, ceil_mode, count_include_pad):
    n_, c_, h_, w_ = x.shape
    rows = avg_divisors(h_, kernel[0], stride[0], padding[0], ceil_mode, count_include_pad)
    cols = avg_divisors(w_, kernel[1], stride[1], padding[1], ceil_mode, count_include_pad)
    y = np.zeros((n_, c_, len(rows), len(cols)))
    for n in range(n_):
        for c in range(c_):
            for oh, (rr, rdiv) in enumerate(rows):
                for ow, (qq, qdiv) in enumerate(cols):
                    total = sum(float(x[n, c, r, q]) for r in rr for q in qq)
                    y[n, c, oh, ow] = total / (rdiv * qdiv)
    return y


def ref_avgpool2d_backward(dy, in_shape, kernel, stride, padding, ceil_mode, count_include_pad):
    n_, c_, h_, w_ = in_shape
    rows = avg_divisors(h_, kernel[0], stride[0], padding[0], ceil_mode, count_include_pad)
    cols = avg_divisors(w_, kernel[1], stride[1], padding[1], ceil_mode, count_include_pad)
    dx = np.zeros(in_shape)
    for n in range(n_):
        for c in range(c_):
            for oh, (rr, rdiv) in enumerate(rows):
                for ow, (qq, qdiv) in enumerate(cols):
                    for r in rr:
                        for q in qq:
                            dx[n, c, r, q] += float(dy[n, c, oh, ow]) / (rdiv * qdiv)
    return dx


def adaptive_windows(size, n_out):
    return [
        (math.floor(Fraction(i * size, n_out)), math.ceil(Fraction((i + 1) * size, n_out)))
        for i in range(n_out)
    ]


def ref_adaptive_avgpool2d(x, out_hw):
    n_, c_, h_, w_ = x.shape
    rows, cols = adaptive_windows(h_, out_hw[0]), adaptive_windows(w_, out_hw[1])
    y = np.zeros((n_, c_, *out_hw))
    for n in range(n_):
        for c in range(c_):
            for oh, (r0, r1) in enumerate(rows):
                for ow, (q0, q1) in enumerate(cols):
                    cells = [float(x[n, c, r, q]) for r in range(r0, r1) for q in range(q0, q1)]
                    y[n, c, oh, ow] = sum(cells) / len(cells)
    return y


def ref_adaptive_avgpool2d_backward(dy, in_shape):
    n_, c_, h_, w_ = in_shape
    rows, cols = adaptive_windows(h_, dy.shape[2]), adaptive_windows(w_, dy.shape[3])
    dx = np.zeros(in_shape)
    for n in range(n_):
        for c in range(c_):
            for oh, (r0, r1) in enumerate(rows):
                for ow, (q0, q1) in enumerate(cols):
                    share = float(dy[n, c, oh, ow]) / ((r1 - r0) * (q1 - q0))
                    dx[n, c, r0:r1, q0:q1] += share
    return dx


# ---------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------


def conv_config(seed: int) -> dict:
    """A random small convolution whose output is at least 1x1."""
    rng = np.random.default_rng(seed)
    while True:
        groups = int(rng.choice([1, 1, 1, 2, 3]))
        cg = int(rng.integers(1, 4))
        fg = int(rng.integers(1, 4))
        kernel = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        hw = (int(rng.integers(1, 9)), int(rng.integers(1, 9)))
        oh = conv_out(hw[0], kernel[0], stride[0], padding[0], dilation[0])
        ow = conv_out(hw[1], kernel[1], stride[1], padding[1], dilation[1])
        if oh >= 1 and ow >= 1:
            break
    return {
        "shape": (int(rng.integers(1, 4)), groups * cg, *hw),
        "filters": groups * fg,
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "bias": bool(rng.integers(0, 2)),
    }


def named_conv(shape, filters, kernel, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, bias=True):
    return {
        "shape": shape,
        "filters": filters,
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "bias": bias,
    }


NAMED_CONVS = {
    "lenet-c1-like": named_conv((2, 1, 9, 9), 3, (5, 5), padding=(2, 2)),
    "lenet-c2-like": named_conv((2, 4, 9, 9), 5, (5, 5)),
    "vgg-like": named_conv((2, 3, 7, 6), 4, (3, 3), padding=(1, 1)),
    "pointwise": named_conv((3, 5, 4, 5), 3, (1, 1), bias=False),
    "pointwise-stride2": named_conv((2, 3, 5, 5), 2, (1, 1), stride=(2, 2)),
    "depthwise": named_conv((2, 4, 6, 6), 4, (3, 3), padding=(1, 1), groups=4),
    "depthwise-x2": named_conv((2, 3, 6, 5), 6, (3, 3), stride=(2, 1), padding=(1, 1), groups=3),
    "groups2": named_conv((2, 4, 6, 6), 6, (3, 2), padding=(1, 0), groups=2, bias=False),
    "dilated": named_conv((2, 2, 8, 7), 3, (3, 3), padding=(2, 1), dilation=(2, 3)),
    "stride-gt-kernel": named_conv((2, 2, 9, 9), 2, (2, 2), stride=(3, 3), padding=(1, 1)),
    "asymmetric": named_conv((1, 2, 7, 4), 3, (3, 1), stride=(2, 1), padding=(0, 2)),
    "window-eq-input": named_conv((2, 2, 3, 4), 2, (5, 6), padding=(1, 1)),
    "tall-kernel-pad": named_conv((1, 1, 2, 3), 2, (4, 2), padding=(2, 0)),
    # 3×3 stride 1, one group (Winograd's layers): odd and even sizes, every padding, a 1×1 output
    "winograd-odd": named_conv((3, 5, 7, 9), 6, (3, 3), padding=(1, 1)),
    "winograd-no-padding": named_conv((2, 4, 8, 5), 3, (3, 3)),
    "winograd-padding-2": named_conv((2, 3, 4, 3), 2, (3, 3), padding=(2, 2), bias=False),
    "winograd-asymmetric": named_conv((2, 6, 6, 7), 4, (3, 3), padding=(1, 0)),
    "winograd-one-output": named_conv((2, 2, 3, 3), 3, (3, 3)),
    # 'same' stride 1, one group, at least 8 filters (the blocked layers): filters not a multiple of a register
    # block, every kernel size that fits one weight-gradient block and one that does not, dilation, asymmetric
    # kernels, outputs narrower than a vector, blocks of positions that span two samples
    "blocked-3x3": named_conv((3, 5, 7, 9), 9, (3, 3), padding=(1, 1)),
    "blocked-17-filters": named_conv((2, 3, 5, 4), 17, (3, 3), padding=(1, 1), bias=False),
    "blocked-1x1": named_conv((3, 4, 3, 5), 8, (1, 1)),
    "blocked-5x5": named_conv((2, 3, 6, 5), 10, (5, 5), padding=(2, 2)),
    "blocked-dilated": named_conv((2, 2, 7, 8), 8, (3, 3), padding=(2, 1), dilation=(2, 1)),
    "blocked-3x1": named_conv((2, 3, 5, 6), 12, (3, 1), padding=(1, 0)),
    "blocked-1x1-image": named_conv((5, 2, 1, 1), 8, (3, 3), padding=(1, 1)),
    "blocked-one-sample": named_conv((1, 3, 4, 5), 17, (3, 3), padding=(1, 1)),  # filter blocks split over threads
    # filters that fill blocks of 4 vectors (64 or 128 with AVX-512): the forward pass holds them in the lanes
    "blocked-64-filters": named_conv((3, 5, 6, 7), 64, (3, 3), padding=(1, 1)),
    "blocked-128-filters-5x5": named_conv((1, 2, 5, 4), 128, (5, 5), padding=(4, 2), dilation=(2, 1), bias=False),
    # strided layers of one group whose filters fill whole vectors (16 float32 / 8 float64 lanes): the forward pass
    # holds the filters in the lanes; ResNet's 3×3 and 1×1 downsampling, a 7×7 stem, dilation, asymmetric strides
    # and kernels, filters in blocks of 4 vectors and fewer (80: 4 + 1 float32, 4 + 4 + 2 float64)
    "outer-3x3-stride-2": named_conv((3, 5, 9, 9), 16, (3, 3), stride=(2, 2), padding=(1, 1)),
    "outer-1x1-stride-2": named_conv((2, 6, 7, 7), 32, (1, 1), stride=(2, 2), bias=False),
    "outer-7x7-stem": named_conv((2, 3, 15, 13), 64, (7, 7), stride=(2, 2), padding=(3, 3)),
    "outer-dilated-asymmetric": named_conv((2, 4, 13, 11), 48, (3, 2), stride=(3, 2), padding=(2, 1),
                                           dilation=(2, 1)),
    "outer-80-filters": named_conv((3, 5, 8, 8), 80, (3, 3), stride=(2, 1), padding=(0, 1)),
    "outer-one-sample": named_conv((1, 3, 9, 10), 64, (3, 3), stride=(2, 2), padding=(1, 1)),  # split by filters
}

CONV_CASES = [pytest.param(conv_config(s), id=f"seed{s}") for s in range(30)] + [
    pytest.param(cfg, id=name) for name, cfg in NAMED_CONVS.items()
]

# Each strategy of cnncli.engine.conv.STRATEGIES that runs a plain convolution is run by name (conv2d_forward's
# ``strategy``) on every case it applies to (its ``applies``, whatever its ``pays``), in plans that reach every
# branch of its kernels: the rules below set how a call is cut up, never which strategy runs.
#   winograd: "" one group of samples; "groups-of-one" each sample its own group and slot, "one-slot" those
#     groups summed into one slot, "bands" one sample at a time in bands of 3 tiles, shared out as 3 slots;
#   blocked, outer: "" a slot's samples side by side; "groups-of-one" each sample its own group and slot (a run
#     of filter blocks per job; with filters in the lanes one channel at a time), "one-slot" (blocked) those
#     summed into one slot;
#   taps: "" groups of samples; "bands" each sample its own group, its output rows one band each; "one-slot";
#   groups: "" all of a small test batch in one group; "groups-of-one", "groups-of-one-one-slot"; "row-bands"
#     one output row of one sample at a time (what the 224×224 layers do with bigger bands);
#   chunks: "" one chunk; "per-sample" each sample its own chunk (the running weight-gradient sums);
#     "direct-dw" and "per-sample-direct-dw" the weight gradient by direct dot products (flat rows only).
PLANS = {
    "winograd": ["", "groups-of-one", "one-slot", "bands"],
    "blocked": ["", "groups-of-one", "one-slot"],
    "outer": ["", "groups-of-one"],
    "depthwise": [""],
    "taps": ["", "bands", "one-slot"],
    "groups": ["", "groups-of-one", "groups-of-one-one-slot", "row-bands"],
    "chunks": ["", "per-sample", "direct-dw", "per-sample-direct-dw"],
}
PLAIN = [s.name for s in conv.STRATEGIES if s.forward is not None]


def test_every_plain_strategy_has_plans():
    assert list(PLANS) == PLAIN


def case_call(cfg, dtype) -> conv.Call:
    return conv.Call(cfg["shape"], (cfg["filters"], cfg["shape"][1] // cfg["groups"], *cfg["kernel"]),
                     *geometry(cfg), np.dtype(dtype).itemsize)


def plan_applies(cfg, dtype, name: str, plan: str) -> bool:
    call = case_call(cfg, dtype)
    if not conv.by_name(name).applies(call):
        return False
    if plan.endswith("direct-dw"):  # direct dot products read whole padded rows
        return call.unit and call.pitch == call.wp
    return not (name == "chunks" and call.direct)  # thin layers' weight gradients are direct dot products


def strategy_cases(plans: bool = True, dtypes=DTYPES) -> list:
    """(cfg, dtype, strategy, plan) for every case and dtype, every strategy that applies and its plans."""
    out = []
    for case in CONV_CASES:
        (cfg,) = case.values
        for dtype in dtypes:
            for name in PLAIN:
                for plan in PLANS[name] if plans else [""]:
                    if plan_applies(cfg, dtype, name, plan):
                        label = "-".join(filter(None, [case.id, np.dtype(dtype).name, name, plan]))
                        out.append(pytest.param(cfg, dtype, name, plan, id=label))
    return out


def use_plan(name: str, plan: str, monkeypatch) -> None:
    """Cut a call up as ``plan`` says (see PLANS) by the rules that size the strategy's groups, bands and slots."""
    if plan.endswith("one-slot"):
        monkeypatch.setattr(rules, "DW_SLOTS", 1)
    if name == "winograd":
        monkeypatch.setattr(rules, "winograd_plan", lambda n, *a: n if plan == "" else 1)
        monkeypatch.setattr(rules, "winograd_band", lambda c, f, tiles, itemsize: 3 * (plan == "bands"))
        if plan == "bands":
            monkeypatch.setattr(rules, "DW_SLOTS", 3)
        elif plan == "groups-of-one":
            monkeypatch.setattr(rules, "DW_SLOTS", 10**9)
    if name in ("blocked", "outer") and plan:
        monkeypatch.setattr(rules, "blocked_group", lambda *a: 1)
        monkeypatch.setattr(rules, "OUTER_WEIGHT_BYTES", 1)  # filters in the lanes: one channel at a time
        if plan == "groups-of-one":
            monkeypatch.setattr(rules, "DW_SLOTS", 10**9)
    if name == "taps" and plan == "bands":
        monkeypatch.setattr(rules, "GROUP_COLS_BYTES", 1)
        monkeypatch.setattr(rules, "DW_SLOTS", 10**9)
    if name == "groups":
        if plan.startswith("groups-of-one"):
            monkeypatch.setattr(rules, "sample_group", lambda n, rows, per_row, per_sample: (1, rows))
        if plan == "row-bands":
            monkeypatch.setattr(rules, "GROUP_COLS_BYTES", 1)
    if name == "chunks":
        monkeypatch.setattr(rules, "direct_weights", lambda *a: plan.endswith("direct-dw"))
        if plan.startswith("per-sample"):
            monkeypatch.setattr(rules, "CONV_COLS_BUDGET_BYTES", 1)


def conv_arrays(cfg, dtype, seed=0):
    rng = np.random.default_rng(seed)
    n_, c_, h_, w_ = cfg["shape"]
    kh_, kw_ = cfg["kernel"]
    x = rng.standard_normal(cfg["shape"]).astype(dtype)
    w = rng.standard_normal((cfg["filters"], c_ // cfg["groups"], kh_, kw_)).astype(dtype)
    b = rng.standard_normal(cfg["filters"]).astype(dtype) if cfg["bias"] else None
    oh = conv_out(h_, kh_, cfg["stride"][0], cfg["padding"][0], cfg["dilation"][0])
    ow = conv_out(w_, kw_, cfg["stride"][1], cfg["padding"][1], cfg["dilation"][1])
    dy = rng.standard_normal((n_, cfg["filters"], oh, ow)).astype(dtype)
    return x, w, b, dy


def geometry(cfg):
    return cfg["stride"], cfg["padding"], cfg["dilation"], cfg["groups"]


_REFERENCES: dict = {}


def conv_reference(cfg, dtype):
    """The package's reference convolution (cnncli.engine.conv.reference), in float64, on conv_arrays(cfg, dtype):
    (y, dx, dw, db), computed once per case and dtype, since every strategy of a case is checked against it."""
    key = (repr(sorted(cfg.items())), np.dtype(dtype).str)
    if key not in _REFERENCES:
        x, w, b, dy = (None if a is None else a.astype(np.float64) for a in conv_arrays(cfg, dtype))
        _REFERENCES[key] = (conv.reference.forward(x, w, b, *geometry(cfg)),
                            *conv.reference.backward(x, w, dy, *geometry(cfg)))
    return _REFERENCES[key]


# ---------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONV_CASES)
def test_reference_convolution_matches_loops(cfg, dtype):
    """The package's reference against the loops written from the definition, in the case's dtype."""
    x, w, b, dy = conv_arrays(cfg, dtype)
    y = conv.reference.forward(x, w, b, *geometry(cfg))
    grads = conv.reference.backward(x, w, dy, *geometry(cfg))
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    tol = tolerances(dtype)
    np.testing.assert_allclose(y, ref_conv2d(x, w, b, *geometry(cfg)), **tol)
    for got, want in zip(grads, ref_conv2d_backward(x, w, dy, *geometry(cfg))):
        np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("cfg,dtype,strategy,plan", strategy_cases())
def test_every_strategy_matches_the_reference(cfg, dtype, strategy, plan, monkeypatch):
    use_plan(strategy, plan, monkeypatch)
    x, w, b, dy = conv_arrays(cfg, dtype)
    ry, rdx, rdw, rdb = conv_reference(cfg, dtype)
    tol = tolerances(dtype)
    y = conv.conv2d_forward(x, w, b, *geometry(cfg), strategy=strategy)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ry, **tol)
    if conv.by_name(strategy).backward is None:
        return
    dx, dw, db = conv.conv2d_backward(x, w, dy, *geometry(cfg), strategy=strategy)
    assert dx.dtype == dw.dtype == db.dtype == dtype
    np.testing.assert_allclose(dx, rdx, **tol)
    np.testing.assert_allclose(dw, rdw, **tol)
    np.testing.assert_allclose(db, rdb, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONV_CASES)
def test_the_picked_strategy_is_the_one_that_runs(cfg, dtype):
    """conv2d_forward and conv2d_backward run what conv.pick picks, pass by pass: the same bits as that strategy
    run by name."""
    x, w, b, dy = conv_arrays(cfg, dtype)
    call = case_call(cfg, dtype)
    picked = conv.pick(call).name
    y = conv.conv2d_forward(x, w, b, *geometry(cfg))
    assert y.tobytes() == conv.conv2d_forward(x, w, b, *geometry(cfg), strategy=picked).tobytes()
    picked = conv.pick(call, conv.BACKWARD).name
    for auto, named in zip(conv.conv2d_backward(x, w, dy, *geometry(cfg)),
                           conv.conv2d_backward(x, w, dy, *geometry(cfg), strategy=picked)):
        assert auto.tobytes() == named.tobytes()


@pytest.mark.parametrize("cfg", CONV_CASES[:10] + CONV_CASES[-len(NAMED_CONVS) :])
def test_conv2d_backward_skips_what_is_not_needed(cfg):
    x, w, _, dy = conv_arrays(cfg, np.float64)
    full = conv.conv2d_backward(x, w, dy, *geometry(cfg))
    dx, dw, db = conv.conv2d_backward(x, w, dy, *geometry(cfg), need_dx=False, need_db=False)
    assert dx is None and db is None
    np.testing.assert_array_equal(dw, full[1])


@pytest.mark.parametrize("cfg,dtype,strategy,plan",
                         [*strategy_cases(plans=False, dtypes=[np.float64]),
                          *(pytest.param(c, np.float64, "reference", "", id=f"{c_id}-reference")
                            for c, c_id in ((case.values[0], case.id) for case in CONV_CASES))])
def test_conv2d_adjoint_identities_and_finite_differences(cfg, dtype, strategy, plan):
    """y = A x + B w + b is bilinear, so <dy, y> = <dx, x> + <db, b> = <dw, w> + <db, b>,
    and a step eps*v of x (or of w) changes <dy, y> by exactly eps*<dx, v> (eps*<dw, v>): each strategy's
    gradients against finite differences of its own forward pass (outer's backward pass is the one picked after
    it), and the reference's."""
    x, w, b, dy = conv_arrays(cfg, dtype, seed=1)
    b = np.random.default_rng(2).standard_normal(w.shape[0])
    if strategy == "reference":
        forward, backward = conv.reference.forward, conv.reference.backward
    else:
        named = conv.by_name(strategy)

        def forward(*args):
            return conv.conv2d_forward(*args, strategy=strategy)

        def backward(*args):
            return conv.conv2d_backward(*args, strategy=strategy if named.backward is not None else None)

    y = forward(x, w, b, *geometry(cfg))
    dx, dw, db = backward(x, w, dy, *geometry(cfg))
    lhs = np.sum(dy * y)
    assert lhs == pytest.approx(np.sum(dx * x) + np.sum(db * b), rel=1e-10, abs=1e-10)
    assert lhs == pytest.approx(np.sum(dw * w) + np.sum(db * b), rel=1e-10, abs=1e-10)
    eps = 1e-3
    v = np.random.default_rng(3).standard_normal(x.shape)
    moved = np.sum(dy * forward(x + eps * v, w, b, *geometry(cfg)))
    assert (moved - lhs) / eps == pytest.approx(np.sum(dx * v), rel=1e-7, abs=1e-7)
    v = np.random.default_rng(4).standard_normal(w.shape)
    moved = np.sum(dy * forward(x, w + eps * v, b, *geometry(cfg)))
    assert (moved - lhs) / eps == pytest.approx(np.sum(dw * v), rel=1e-7, abs=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "cfg",
    [
        named_conv((3, 8, 12, 13), 40, (3, 3), padding=(1, 1)),  # dw = dy @ cols^T, split by taps
        named_conv((2, 8, 9, 9), 8, (3, 3), padding=(1, 1)),  # dw = cols @ dy^T, split by taps
        named_conv((2, 6, 11, 9), 8, (3, 2), stride=(2, 1), padding=(1, 0), groups=2),
    ],
    ids=["many-filters", "few-filters", "strided-groups"],
)
def test_conv2d_split_gemms_match_unsplit(cfg, dtype, monkeypatch):
    """The chunks' numpy GEMMs split across threads (slabs) give the loop references' results, run after run."""
    x, w, b, dy = conv_arrays(cfg, dtype, seed=4)
    monkeypatch.setattr(rules, "direct_weights", lambda *a: False)
    monkeypatch.setattr(rules, "SLAB_MIN_MACS", 1)

    def run():
        return [conv.conv2d_forward(x, w, b, *geometry(cfg), strategy="chunks"),
                *conv.conv2d_backward(x, w, dy, *geometry(cfg), strategy="chunks")]

    split = run()
    tol = tolerances(dtype)
    np.testing.assert_allclose(split[0], ref_conv2d(x, w, b, *geometry(cfg)), **tol)
    for got, want in zip(split[1:], ref_conv2d_backward(x, w, dy, *geometry(cfg))):
        np.testing.assert_allclose(got, want, **tol)
    again = run()
    for a, b_ in zip(split, again):
        assert a.tobytes() == b_.tobytes()


def test_conv2d_literal_pytorch_value():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y = conv.conv2d_forward(x, w, np.array([0.5]), (1, 1), (1, 1), (1, 1), 1)
    expected = [
        [0.5, 4.5, 11.5, 18.5, 9.5],
        [16.5, 34.5, 44.5, 54.5, 24.5],
        [40.5, 74.5, 84.5, 94.5, 40.5],
        [64.5, 114.5, 124.5, 134.5, 56.5],
        [24.5, 38.5, 41.5, 44.5, 15.5],
    ]
    np.testing.assert_array_equal(y[0, 0], expected)


def test_conv2d_accepts_non_contiguous_views():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 4, 3, 2)).transpose(3, 2, 1, 0)  # (2, 3, 4, 5), F-ordered
    w = rng.standard_normal((3, 3, 2, 2))[:, :, ::-1]
    dy = rng.standard_normal((2, 3, 3, 4))
    args = ((1, 1), (0, 0), (1, 1), 1)
    y = conv.conv2d_forward(x, w, None, *args)
    np.testing.assert_array_equal(y, conv.conv2d_forward(x.copy(), w.copy(), None, *args))
    grads = conv.conv2d_backward(x, w, dy[:, :, :, :], *args)
    for got, want in zip(grads, conv.conv2d_backward(x.copy(), w.copy(), dy, *args)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"x": np.zeros((1, 2, 5, 5), np.float32)},  # dtype differs from w
        {"x": np.zeros((1, 2, 5), np.float64)},  # not 4-D
        {"x": np.zeros((1, 3, 5, 5))},  # channels do not fit w
        {"groups": 2},  # w expects 2 channels per group, x has 1 per group
        {"stride": (0, 1)},
        {"padding": (-1, 0)},
        {"dilation": (1,)},
        {"b": np.zeros(3)},
        {"x": np.zeros((1, 2, 2, 2))},  # window larger than the input
    ],
)
def test_conv2d_rejects_bad_arguments(kwargs):
    args = {
        "x": np.zeros((1, 2, 5, 5)),
        "w": np.zeros((4, 2, 3, 3)),
        "b": None,
        "stride": (1, 1),
        "padding": (0, 0),
        "dilation": (1, 1),
        "groups": 1,
    }
    args.update(kwargs)
    with pytest.raises(ValueError):
        conv.conv2d_forward(**args)


def test_conv2d_backward_rejects_wrong_dy_shape():
    with pytest.raises(ValueError):
        conv.conv2d_backward(np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 2, 3)),
                          (1, 1), (0, 0), (1, 1), 1)  # fmt: skip


# ---------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------


def pool_config(seed: int) -> dict:
    rng = np.random.default_rng(1000 + seed)
    while True:
        kernel = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        padding = (int(rng.integers(0, kernel[0] // 2 + 1)), int(rng.integers(0, kernel[1] // 2 + 1)))
        hw = (int(rng.integers(1, 10)), int(rng.integers(1, 10)))
        ceil_mode = bool(rng.integers(0, 2))
        if all(ref_pool_size(hw[a], kernel[a], stride[a], padding[a], 1, ceil_mode) >= 1 for a in (0, 1)):
            break
    return {
        "shape": (int(rng.integers(1, 3)), int(rng.integers(1, 4)), *hw),
        "kernel": kernel,
        "stride": stride,
        "padding": padding,
        "ceil_mode": ceil_mode,
    }


def named_pool(shape, kernel, stride, padding=(0, 0), ceil_mode=False):
    return {"shape": shape, "kernel": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode}


NAMED_POOLS = {
    "lenet-2x2": named_pool((2, 3, 8, 8), (2, 2), (2, 2)),
    "odd-2x2-ceil": named_pool((1, 2, 5, 7), (2, 2), (2, 2), ceil_mode=True),
    "3x3s2p1-ceil": named_pool((2, 2, 6, 6), (3, 3), (2, 2), (1, 1), ceil_mode=True),
    "overlap-3x3s1": named_pool((1, 2, 5, 6), (3, 3), (1, 1), (1, 1)),
    "stride-gt-kernel": named_pool((1, 1, 9, 8), (2, 3), (3, 4), (1, 1), ceil_mode=True),
    "global": named_pool((2, 3, 4, 5), (4, 5), (1, 1)),
    "window-beyond-padded-input": named_pool((1, 2, 2, 3), (4, 4), (1, 1), (1, 1), ceil_mode=True),
    # rows wide enough for the max-pool kernel's vectorised inner columns (rules.MAXPOOL_VECTOR_COLUMNS), with
    # border columns on both sides
    "wide-3x3s1p1": named_pool((1, 2, 6, 37), (3, 3), (1, 1), (1, 1)),
    "wide-3x3s2-ceil": named_pool((2, 1, 9, 103), (3, 3), (2, 2), ceil_mode=True),  # 50 inner columns
    "wide-2x3s3p1": named_pool((1, 1, 5, 152), (2, 3), (3, 3), (1, 1), ceil_mode=True),  # 50 inner columns
    "wide-3x3s21p1": named_pool((1, 2, 7, 60), (3, 3), (2, 1), (1, 1)),  # 58 inner columns, unit column stride
}

POOL_CASES = [pytest.param(pool_config(s), id=f"seed{s}") for s in range(30)] + [
    pytest.param(cfg, id=name) for name, cfg in NAMED_POOLS.items()
]


def pool_args(cfg):
    return cfg["kernel"], cfg["stride"], cfg["padding"], cfg["ceil_mode"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", POOL_CASES)
def test_maxpool2d_matches_loops(cfg, dtype):
    rng = np.random.default_rng(7)
    # Small integers make ties common, so the first-maximum rule is exercised.
    x = rng.integers(-3, 4, cfg["shape"]).astype(dtype)
    y, idx = pool.maxpool2d_forward(x, *pool_args(cfg))
    ry, ridx = ref_maxpool2d(x, *pool_args(cfg))
    assert y.dtype == dtype and idx.dtype in (np.int32, np.int64)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = pool.maxpool2d_backward(dy, idx, x.shape)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, ref_maxpool2d_backward(dy, ridx, x.shape), **tolerances(dtype))
    # Either index width is accepted.
    np.testing.assert_array_equal(pool.maxpool2d_backward(dy, ridx.astype(np.int64), x.shape), dx)


@pytest.mark.parametrize("cfg", POOL_CASES)
def test_maxpool2d_adjoint_and_finite_difference(cfg):
    rng = np.random.default_rng(8)
    # Distinct values with gaps far wider than eps: no argmax moves under the step.
    x = rng.permutation(np.prod(cfg["shape"])).reshape(cfg["shape"]).astype(np.float64)
    y, idx = pool.maxpool2d_forward(x, *pool_args(cfg))
    dy = rng.standard_normal(y.shape)
    dx = pool.maxpool2d_backward(dy, idx, x.shape)
    assert np.sum(dy * y) == pytest.approx(np.sum(dx * x), rel=1e-12)
    v = rng.standard_normal(x.shape)
    eps = 1e-3
    moved = np.sum(dy * pool.maxpool2d_forward(x + eps * v, *pool_args(cfg))[0])
    assert (moved - np.sum(dy * y)) / eps == pytest.approx(np.sum(dx * v), rel=1e-7, abs=1e-7)


def test_maxpool2d_literal_pytorch_values():
    x = np.array([[[[1.0, 3, 3], [3, 2, 3], [0, 3, 1]]]])
    y, idx = pool.maxpool2d_forward(x, (2, 2), (1, 1), (0, 0))
    np.testing.assert_array_equal(y[0, 0], [[3, 3], [3, 3]])
    np.testing.assert_array_equal(idx[0, 0], [[1, 1], [3, 5]])
    # An all -inf window still points at its first real cell, as in PyTorch.
    y, idx = pool.maxpool2d_forward(np.full((1, 1, 3, 3), -np.inf, np.float32), (2, 2), (2, 2), (1, 1))
    assert np.all(y == -np.inf)
    np.testing.assert_array_equal(idx[0, 0], [[0, 1], [3, 4]])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", ["-inf", "lowest", "mixed"])
def test_maxpool2d_stride_one_windows_of_the_lowest_values(fill, dtype):
    # Stride 1 pads a plane with the lowest finite value and takes it whole; a window whose real cells are all
    # that value (or -inf) must still point at its first real cell, as one window at a time does.
    low = np.finfo(dtype).min
    x = np.full((2, 3, 5, 6), -np.inf if fill == "-inf" else low, dtype)
    if fill == "mixed":
        x[0, 1, 2, 3] = -np.inf
        x[1, 2] = np.random.default_rng(4).standard_normal((5, 6))
    for kernel, padding in (((3, 3), (1, 1)), ((2, 3), (1, 1)), ((3, 2), (0, 1))):
        y, idx = pool.maxpool2d_forward(x, kernel, (1, 1), padding)
        ry, ridx = ref_maxpool2d(x, kernel, (1, 1), padding, False)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(idx, ridx)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", POOL_CASES)
def test_avgpool2d_matches_loops(cfg, dtype, count_include_pad):
    rng = np.random.default_rng(9)
    x = rng.standard_normal(cfg["shape"]).astype(dtype)
    y = pool.avgpool2d_forward(x, *pool_args(cfg), count_include_pad)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref_avgpool2d(x, *pool_args(cfg), count_include_pad), **tolerances(dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = pool.avgpool2d_backward(dy, x.shape, *pool_args(cfg), count_include_pad)
    assert dx.dtype == dtype
    ref = ref_avgpool2d_backward(dy, x.shape, *pool_args(cfg), count_include_pad)
    np.testing.assert_allclose(dx, ref, **tolerances(dtype))


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("cfg", POOL_CASES)
def test_avgpool2d_adjoint(cfg, count_include_pad):
    rng = np.random.default_rng(10)
    x = rng.standard_normal(cfg["shape"])
    y = pool.avgpool2d_forward(x, *pool_args(cfg), count_include_pad)
    dy = rng.standard_normal(y.shape)
    dx = pool.avgpool2d_backward(dy, x.shape, *pool_args(cfg), count_include_pad)
    assert np.sum(dy * y) == pytest.approx(np.sum(dx * x), rel=1e-12, abs=1e-12)


def test_avgpool2d_literal_pytorch_values():
    ones = np.ones((1, 1, 6, 6))
    y = pool.avgpool2d_forward(ones, (3, 3), (2, 2), (1, 1), ceil_mode=True, count_include_pad=True)
    expected = np.array([[4, 6, 6, 3], [6, 9, 9, 4.5], [6, 9, 9, 4.5], [3, 4.5, 4.5, 2.25]]) / 9
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-15)
    y = pool.avgpool2d_forward(ones, (3, 3), (2, 2), (1, 1), ceil_mode=True, count_include_pad=False)
    np.testing.assert_array_equal(y, np.ones((1, 1, 4, 4)))
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y = pool.avgpool2d_forward(x, (2, 2), (2, 2), (0, 0), ceil_mode=True)
    np.testing.assert_array_equal(y[0, 0], [[3, 5, 6.5], [13, 15, 16.5], [20.5, 22.5, 24]])
    y = pool.avgpool2d_forward(x, (3, 3), (2, 2), (1, 1), ceil_mode=True)
    np.testing.assert_allclose(y[0, 0], [[12 / 9, 3, 24 / 9], [7, 12, 9], [72 / 9, 13, 84 / 9]], rtol=1e-15)
    # A ceil-mode window longer than the padded input divides by its padded part.
    y = pool.avgpool2d_forward(np.ones((1, 1, 2, 2)), (4, 4), (1, 1), (1, 1), ceil_mode=True)
    np.testing.assert_array_equal(y, [[[[0.25]]]])


ADAPTIVE_CASES = [
    ((2, 3, 5, 7), (3, 4)),
    ((1, 2, 7, 7), (1, 1)),
    ((2, 1, 6, 4), (6, 4)),  # identity
    ((1, 2, 3, 5), (5, 7)),  # upsampling: windows overlap and repeat cells
    ((2, 2, 10, 9), (4, 2)),
    ((1, 1, 1, 1), (2, 3)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,out_hw", ADAPTIVE_CASES)
def test_adaptive_avgpool2d_matches_loops(shape, out_hw, dtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(dtype)
    y = pool.adaptive_avgpool2d_forward(x, out_hw)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, ref_adaptive_avgpool2d(x, out_hw), **tolerances(dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = pool.adaptive_avgpool2d_backward(dy, shape)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, ref_adaptive_avgpool2d_backward(dy, shape), **tolerances(dtype))
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    adj = np.sum(pool.adaptive_avgpool2d_backward(dy64, shape) * x64)
    assert np.sum(dy64 * pool.adaptive_avgpool2d_forward(x64, out_hw)) == pytest.approx(
        adj, rel=1e-12, abs=1e-12
    )


def test_adaptive_avgpool2d_literal_pytorch_value():
    y = pool.adaptive_avgpool2d_forward(np.arange(35.0).reshape(1, 1, 5, 7), (3, 4))
    expected = [[4, 5.5, 7.5, 9], [14.5, 16, 18, 19.5], [25, 26.5, 28.5, 30]]
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-15)


# Output sizes as reported by torch.nn.functional.max_pool2d on these inputs:
# (size, kernel, stride, padding, dilation, ceil_mode) -> length.
PYTORCH_POOL_SIZES = [
    ((5, 2, 2, 0, 1, True), 3),
    ((6, 3, 2, 1, 1, True), 4),
    ((6, 3, 2, 1, 1, False), 3),
    ((7, 3, 3, 1, 1, True), 3),
    ((4, 2, 3, 1, 1, True), 2),
    ((10, 3, 2, 1, 1, True), 6),
    ((9, 3, 2, 1, 2, True), 4),
    ((1, 1, 2, 0, 1, True), 1),
    ((3, 3, 3, 1, 1, True), 2),
    ((5, 4, 3, 2, 1, True), 3),
    ((8, 2, 5, 1, 1, True), 2),
    ((11, 5, 4, 2, 2, True), 3),
    ((2, 3, 2, 1, 1, True), 2),
    # ceil mode even admits a window longer than the padded input
    ((3, 4, 2, 0, 1, True), 1),
    ((3, 5, 3, 0, 1, True), 1),
    ((2, 4, 1, 1, 1, True), 1),
    ((3, 5, 2, 2, 1, True), 2),
]


@pytest.mark.parametrize("args,expected", PYTORCH_POOL_SIZES)
def test_window_output_literal_pytorch_values(args, expected):
    size, kernel, stride, padding, dilation, ceil_mode = args
    assert window_output(size, kernel, stride, padding, dilation, ceil_mode) == expected


def test_window_output_matches_window_walk():
    for size in range(1, 13):
        for kernel in range(1, 6):
            for stride in range(1, 5):
                for padding in range(kernel // 2 + 1):
                    for dilation in (1, 2):
                        for ceil_mode in (False, True):
                            want = ref_pool_size(size, kernel, stride, padding, dilation, ceil_mode)
                            got = window_output(size, kernel, stride, padding, dilation, ceil_mode)
                            if want >= 1 or got >= 1:
                                assert got == want, (size, kernel, stride, padding, dilation, ceil_mode)


def test_window_arguments_are_checked_by_the_wrappers():
    x = np.zeros((1, 1, 4, 4))
    w = np.zeros((1, 1, 1, 1))
    for stride, padding, dilation in [((0, 1), (0, 0), (1, 1)), ((1, 1), (-1, 0), (1, 1)), ((1, 1), (0, 0), (0, 1))]:
        with pytest.raises(ValueError):
            conv.conv2d_forward(x, w, None, stride, padding, dilation, 1)
    with pytest.raises(ValueError):
        pool.maxpool2d_forward(x, (0, 2), (2, 2), (0, 0))
    with pytest.raises(ValueError):
        pool.avgpool2d_forward(x, (2, 2), (0, 2), (0, 0))


def test_pooling_rejects_bad_arguments():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError):
        pool.maxpool2d_forward(x, (2, 2), (2, 2), (2, 0))  # padding over half the kernel
    with pytest.raises(ValueError):
        pool.avgpool2d_forward(x, (5, 5), (1, 1), (0, 0))  # window larger than the input
    with pytest.raises(ValueError):
        pool.avgpool2d_forward(x.astype(np.int64), (2, 2), (2, 2), (0, 0))
    with pytest.raises(ValueError):
        pool.maxpool2d_backward(np.zeros((1, 1, 2, 2)), np.full((1, 1, 2, 2), 16, np.int64), (1, 1, 4, 4))
    with pytest.raises(ValueError):
        pool.avgpool2d_backward(np.zeros((1, 1, 3, 2)), (1, 1, 4, 4), (2, 2), (2, 2), (0, 0))
    with pytest.raises(ValueError):
        pool.adaptive_avgpool2d_forward(x, (0, 2))


# ---------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "cfg",
    [
        named_conv((16, 1, 20, 20), 6, (5, 5), padding=(2, 2)),  # direct
        named_conv((16, 6, 12, 12), 16, (5, 5)),  # GEMM
        named_conv((8, 8, 10, 10), 8, (3, 3), stride=(2, 2), padding=(1, 1), groups=2),
    ],
    ids=["direct", "gemm", "strided-groups"],
)
@pytest.mark.parametrize("budget", [None, 3 * 2**14], ids=["one-chunk", "chunks"])
def test_results_are_bit_identical_run_to_run(cfg, dtype, budget, monkeypatch):
    if budget is not None:
        monkeypatch.setattr(rules, "CONV_COLS_BUDGET_BYTES", budget)
    x, w, b, dy = conv_arrays(cfg, dtype, seed=5)

    def run():
        out = [conv.conv2d_forward(x, w, b, *geometry(cfg)), *conv.conv2d_backward(x, w, dy, *geometry(cfg))]
        y, idx = pool.maxpool2d_forward(x, (3, 3), (2, 2), (1, 1), True)
        out += [y, idx, pool.maxpool2d_backward(y, idx, x.shape)]
        y = pool.avgpool2d_forward(x, (3, 3), (2, 2), (1, 1), True, False)
        out += [y, pool.avgpool2d_backward(y, x.shape, (3, 3), (2, 2), (1, 1), True, False)]
        y = pool.adaptive_avgpool2d_forward(x, (3, 5))
        out += [y, pool.adaptive_avgpool2d_backward(y, x.shape)]
        return out

    first, second = run(), run()
    for a, b_ in zip(first, second):
        assert a.dtype == b_.dtype and a.tobytes() == b_.tobytes()


# ---------------------------------------------------------------------------
# batch normalization (cnncli.engine.norm) against numpy's formulas
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (7, 2), (2, 5, 1, 9)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_kernels_equal_the_formulas(shape, dtype):
    from cnncli.engine import norm

    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w, b = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    axes = (0,) + tuple(range(2, len(shape)))
    bshape = (1, -1) + (1,) * (len(shape) - 2)
    x64 = x.astype(np.float64)
    mean, var = norm.batch_stats(x)
    np.testing.assert_allclose(mean, x64.mean(axis=axes), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, x64.var(axis=axes), rtol=1e-12, atol=1e-12)
    inv = (1 / np.sqrt(var + 1e-5)).astype(dtype)
    y = norm.forward(x, mean, inv, w, b)
    want_xhat = (x64 - mean.reshape(bshape)) * inv.astype(np.float64).reshape(bshape)
    tol = tolerances(dtype)
    np.testing.assert_allclose(y, want_xhat * w.reshape(bshape) + b.reshape(bshape), **tol)
    for train in (True, False):
        dx, dw, db = norm.backward(dy, x, mean, inv, w, train)
        dy64, h64 = dy.astype(np.float64), want_xhat
        g = dy64 * w.astype(np.float64).reshape(bshape)
        if train:
            want = g - g.mean(axis=axes, keepdims=True) - h64 * (g * h64).mean(axis=axes, keepdims=True)
        else:
            want = g
        np.testing.assert_allclose(dx, want * inv.astype(np.float64).reshape(bshape), **tol)
        np.testing.assert_allclose(dw, (dy64 * h64).sum(axis=axes), **tol)
        np.testing.assert_allclose(db, dy64.sum(axis=axes), **tol)
    # the folded ReLU: the same output clipped at 0, and dy through it is dy masked where the output was > 0
    yr = norm.forward(x, mean, inv, w, b, relu=True)
    np.testing.assert_array_equal(yr, np.where(y < 0, 0, y))
    # Equal up to rounding, not bit for bit: the kernels' masked and unmasked loops are compiled apart, and
    # LLVM may vectorise their sums with different numbers of running sums (1 ulp apart in float64 on AMD Zen 5).
    masked = np.where(yr > 0, dy, 0).astype(dtype)
    for got, want in zip(norm.backward(dy, x, mean, inv, w, True, relu_out=yr), norm.backward(masked, x, mean, inv, w, True)):
        np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("length", [1, 7, 49, 64, 1024])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_row_sums_do_not_depend_on_where_the_rows_sit(length, dtype):
    # A part of a split batch sums its rows where they sit in the part's arrays, the whole batch where they sit
    # in its own: the sums must be the same bits at every offset from a 64-byte boundary (jit.REDUCE_FLAGS).
    from cnncli.engine import norm

    rng = np.random.default_rng(12)
    shape = (3, 5, length)
    x, dy, y = (rng.standard_normal(shape).astype(dtype) * 3 + 1 for _ in range(3))
    mean, inv = rng.standard_normal(5), rng.random(5) + 0.5
    size = x.size
    found = set()
    for offset in range(64 // np.dtype(dtype).itemsize):
        views = []
        for a in (x, dy, y):
            buf = np.empty(size + 64, dtype)
            v = buf[offset : offset + size].reshape(shape)
            v[...] = a
            views.append(v)
        vx, vdy, vy = views
        found.add((norm.row_moments(vx).tobytes(), norm.grad_rows(vdy, vx, mean, inv).tobytes(),
                   norm.grad_rows(vdy, vx, mean, inv, relu_out=vy).tobytes()))
    assert len(found) == 1


# ---------------------------------------------------------------------------
# the dense layer's weight gradient (cnncli.engine.dense)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_weight_grad_equals_the_product(n, dtype):
    """xᵀ·dy by either path (the outer product up to rules.DENSE_OUTER_MAX_BATCH samples, the GEMM after):
    the float64 product within rounding, and at one or two samples numpy's products and sum, bit for bit."""
    from cnncli.engine import dense

    rng = np.random.default_rng(13)
    x, dy = rng.standard_normal((n, 37)).astype(dtype), rng.standard_normal((n, 21)).astype(dtype)
    out = np.full((37, 21), np.nan, dtype)
    assert dense.weight_grad(x, dy, out) is out
    np.testing.assert_allclose(out, x.astype(np.float64).T @ dy.astype(np.float64), **tolerances(dtype))
    if rules.dense_outer(n):
        want = x[0][:, None] * dy[0][None, :]
        for k in range(1, n):
            want = want + x[k][:, None] * dy[k][None, :]
        np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="must be"):
        dense.weight_grad(x, dy, np.empty((21, 37), dtype))


# ---------------------------------------------------------------------------
# ReLU kernels (cnncli.engine.elementwise) against numpy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_kernels_equal_numpy_and_let_nan_through(dtype):
    from cnncli.engine import elementwise

    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 5, 7, 11)).astype(dtype)  # not a multiple of the kernels' job size
    b = rng.standard_normal(a.shape).astype(dtype)
    a[0, 0, 0, :3] = [np.nan, 0.0, -0.0]
    dy = rng.standard_normal(a.shape).astype(dtype)
    y = elementwise.relu(a)
    want = np.where(a > 0, a, 0).astype(dtype)
    want[0, 0, 0, 0] = np.nan
    np.testing.assert_array_equal(y, want)
    s = elementwise.add_relu(a, b)
    want_s = np.maximum(a + b, 0)  # numpy's maximum passes NaN on too
    np.testing.assert_array_equal(s, want_s)
    np.testing.assert_array_equal(elementwise.relu_grad(dy, y), np.where(y > 0, dy, 0))
    big = rng.standard_normal(100_003).astype(dtype)  # several parallel jobs
    np.testing.assert_array_equal(elementwise.relu(big), np.maximum(big, 0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_leaky_relu_kernels_equal_the_obvious_products(dtype):
    """Against numpy's x·(1 if x > 0 else slope), the product in the array's dtype (PyTorch's leaky_relu)."""
    from cnncli.engine import elementwise

    rng = np.random.default_rng(4)
    x = rng.standard_normal(100_003).astype(dtype)  # several parallel jobs, a ragged last one
    x[:3] = [np.nan, 0.0, -0.0]
    dy = rng.standard_normal(x.shape).astype(dtype)
    slope = 0.1
    y = elementwise.leaky_relu(x, slope)
    np.testing.assert_array_equal(y, np.where(x > 0, x, x * np.asarray(slope, dtype)))
    assert np.isnan(y[0])
    np.testing.assert_array_equal(elementwise.leaky_relu_grad(dy, y, slope),
                                  np.where(x > 0, dy, dy * np.asarray(slope, dtype)))


# ---------------------------------------------------------------------------
# GEMM called from inside a kernel (cnncli.engine.blas)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_from_a_kernel_equals_numpy_for_every_transpose_and_leading_dimension(dtype):
    from numba import njit

    from cnncli.engine import blas

    if blas.FUNCTIONS is None:
        pytest.skip("numpy's BLAS exports no CBLAS GEMM here")

    @njit
    def call(address, ilp64, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc):
        blas.gemm(address, ilp64, ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc)

    rng = np.random.default_rng(6)
    f = blas.FUNCTIONS
    m, n, k = 5, 7, 9
    for ta in (blas.NO_TRANS, blas.TRANS):
        for tb in (blas.NO_TRANS, blas.TRANS):
            # Matrices inside wider arrays, starting at an offset: leading dimensions larger than a row.
            a_big = rng.standard_normal((12, 15)).astype(dtype)
            b_big = rng.standard_normal((12, 15)).astype(dtype)
            c_big = rng.standard_normal((9, 11)).astype(dtype)
            a = a_big[2:, 3:]
            b = b_big[1:, 2:]
            opa = a[:m, :k] if ta == blas.NO_TRANS else a[:k, :m].T
            opb = b[:k, :n] if tb == blas.NO_TRANS else b[:n, :k].T
            for beta in (0.0, 1.0):
                c = c_big.copy()
                want = opa.astype(np.float64) @ opb + beta * c[1:1 + m, :n]
                flat_a = a_big.reshape(-1)[2 * 15 + 3:]
                flat_b = b_big.reshape(-1)[1 * 15 + 2:]
                flat_c = c.reshape(-1)[1 * 11:]
                call(f.of(np.dtype(dtype)), f.ilp64, ta, tb, m, n, k, flat_a, 15, flat_b, 15, beta, flat_c, 11)
                np.testing.assert_allclose(c[1:1 + m, :n], want, **tolerances(dtype))
                untouched = np.ones(c.shape, bool)
                untouched[1:1 + m, :n] = False
                assert np.array_equal(c[untouched], c_big[untouched])  # nothing written outside C


@pytest.mark.parametrize("strategy,plan", [(name, "") for name in PLAIN] + [("winograd", "bands")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_strategy_gives_the_same_bits_on_one_thread_or_two(dtype, strategy, plan, monkeypatch):
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs two engine threads")
    monkeypatch.setattr(rules, "GROUP_COLS_BYTES", 1)  # a sample per group, in bands of one row
    monkeypatch.setattr(rules, "winograd_plan", lambda *a: 3)  # groups of 3, 3 and 2 samples, 2 slots
    monkeypatch.setattr(rules, "winograd_band", lambda *a: 4 * (plan == "bands"))  # bands of 4 tiles
    monkeypatch.setattr(rules, "blocked_group", lambda *a: 3)  # groups of 3 and 1 samples in each of 2 slots
    monkeypatch.setattr(rules, "CONV_COLS_BUDGET_BYTES", 3 << 12)  # chunks of a few samples
    # the second: one sample, its filter blocks shared out over the threads (blocked forward); the third strided
    cases = [named_conv((8, 6, 9, 9), 10, (3, 3), padding=(1, 1)), named_conv((1, 3, 5, 4), 17, (3, 3), padding=(1, 1)),
             named_conv((8, 6, 9, 9), 16, (3, 3), stride=(2, 2), padding=(1, 1), groups=1),
             named_conv((3, 4, 7, 7), 4, (3, 3), padding=(1, 1), groups=4)]
    ran = 0
    for cfg in cases:
        if not plan_applies(cfg, dtype, strategy, plan):
            continue
        ran += 1
        x, w, b, dy = conv_arrays(cfg, dtype, seed=8)
        results = []
        for threads in (1, 2):
            numba.set_num_threads(threads)
            try:
                results.append([conv.conv2d_forward(x, w, b, *geometry(cfg), strategy=strategy)])
                if conv.by_name(strategy).backward is not None:
                    results[-1] += conv.conv2d_backward(x, w, dy, *geometry(cfg), strategy=strategy)
            finally:
                numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        for one, two in zip(*results):
            assert one.tobytes() == two.tobytes()
    assert ran


def test_scratch_buffers_start_on_the_same_boundary_in_every_thread():
    # A fastmath reduction's order may depend on where its data starts: every part of a batch, on any thread or
    # in any process, must find its buffers on the same boundary to get the same bits.
    from concurrent.futures import ThreadPoolExecutor

    from cnncli.engine import arrays

    def starts(tag):
        return [arrays.scratch(f"test.{tag}.{i}", (i + 3, 5), np.dtype(dt)).ctypes.data % arrays.ALIGN
                for i, dt in enumerate(["float32", "float64", "float32"])]

    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(starts, ["a", "b"])) + [starts("c")]
    assert found == [[0, 0, 0]] * 3


def test_winograd_takes_the_wide_3x3_layers_and_keeps_float32_close():
    """The rule sends wide 3×3 stride-1 layers to Winograd F(2×2, 3×3) and the rest elsewhere; in float32 its
    results stay within a few units in the last place of the float64 convolution."""
    def winograd(x, w, stride, padding, dilation, groups):
        return takes("winograd", conv.Call(x.shape, w.shape, stride, padding, dilation, groups, x.itemsize))

    wide = np.zeros((16, 128, 8, 8), np.float32)  # 16 tiles a sample, 256 in the batch
    assert winograd(wide, np.zeros((128, 128, 3, 3), np.float32), (1, 1), (1, 1), (1, 1), 1)
    assert winograd(wide[:, :32], np.zeros((32, 32, 3, 3), np.float32), (1, 1), (1, 1), (1, 1), 1)
    assert not winograd(wide[:15], np.zeros((128, 128, 3, 3), np.float32), (1, 1), (1, 1), (1, 1), 1)
    assert not winograd(wide, np.zeros((128, 128, 3, 3), np.float32), (2, 2), (1, 1), (1, 1), 1)
    assert not winograd(wide[:, :16], np.zeros((16, 16, 3, 3), np.float32), (1, 1), (1, 1), (1, 1), 1)
    assert not winograd(wide, np.zeros((128, 128, 5, 5), np.float32), (1, 1), (2, 2), (1, 1), 1)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((11, 80, 10, 9))  # 275 tiles
    w = rng.standard_normal((32, 80, 3, 3)) / 27
    dy = rng.standard_normal((11, 32, 10, 9))
    assert winograd(x.astype(np.float32), w.astype(np.float32), (1, 1), (1, 1), (1, 1), 1)
    want = [conv.conv2d_forward(x, w, None, (1, 1), (1, 1), (1, 1), 1),
            *conv.conv2d_backward(x, w, dy, (1, 1), (1, 1), (1, 1), 1)[:2]]
    x32, w32, dy32 = (a.astype(np.float32) for a in (x, w, dy))
    got = [conv.conv2d_forward(x32, w32, None, (1, 1), (1, 1), (1, 1), 1),
           *conv.conv2d_backward(x32, w32, dy32, (1, 1), (1, 1), (1, 1), 1)[:2]]
    for g, ref in zip(got, want):
        assert np.abs(g - ref).max() / np.abs(ref).max() < 5e-6  # float32's unit roundoff is 6e-8


@pytest.mark.parametrize("filters_innermost", [True, False])
def test_winograd_filter_transform_is_g_w_gt_and_its_adjoint_the_weight_gradient(filters_innermost):
    """winograd's kernels spell out U = G w Gᵀ (into either layout, zeros past the real columns) and dw = Gᵀ dU G
    (summed over slots): the first against the matrix products with winograd.G, the second as the first's adjoint,
    ⟨dU, U(w)⟩ = ⟨dw(dU), w⟩."""
    from cnncli.engine import winograd

    rng = np.random.default_rng(2)
    f, c = 5, 7
    w = rng.standard_normal((f, c, 3, 3))
    columns = 9
    u = winograd._transformed(w, columns, filters_innermost)
    rows, real = (c, f) if filters_innermost else (f, c)
    planes = u[:, :rows * columns].reshape(16, rows, columns)
    want = np.einsum("ai,fcij,bj->abfc", winograd.G, w, winograd.G).reshape(16, f, c)
    np.testing.assert_allclose(planes[:, :, :real], want.transpose(0, 2, 1) if filters_innermost else want,
                               rtol=1e-14, atol=1e-14)
    assert not planes[:, :, real:].any()
    cp = 8
    du = rng.standard_normal((2, 16, f * cp + 3))
    dw = np.empty_like(w)
    winograd._weight_gradient(du, cp, dw)
    total = (du[0] + du[1])[:, :f * cp].reshape(16, f, cp)[:, :, :c]
    assert np.isclose((total * want).sum(), (dw * w).sum(), rtol=1e-12)


def takes(name: str, call) -> bool:
    """Whether the picker runs the forward pass of ``call`` by the strategy ``name``."""
    return conv.pick(call).name == name


def test_blocked_takes_the_narrow_same_layers(monkeypatch):
    """On a CPU of 32 vector registers the rule sends 'same' stride-1 layers of one group with 8-64 filters, at most
    64 channels and up to 9 taps that Winograd does not take to the register-blocked loops, and nothing else; on one
    of 16 (AVX2), none; every named blocked case is one it applies to (so that the "blocked" paths above run it
    rather than falling back)."""
    def blocked(c, f, kernel, padding, stride=(1, 1), dilation=(1, 1), groups=1, hw=(8, 8)):
        return takes("blocked", conv.Call((2, c, *hw), (f, c // groups, *kernel), stride, padding, dilation, groups,
                                          4))

    monkeypatch.setattr(simd, "VECTOR_REGISTERS", 16)
    assert not blocked(16, 16, (3, 3), (1, 1), hw=(32, 32)) and not blocked(64, 64, (1, 1), (0, 0), hw=(24, 24))
    monkeypatch.setattr(simd, "VECTOR_REGISTERS", 32)
    assert blocked(16, 16, (3, 3), (1, 1), hw=(32, 32)) and blocked(32, 32, (3, 3), (1, 1), hw=(16, 16))
    assert blocked(3, 16, (3, 3), (1, 1)) and blocked(16, 8, (1, 1), (0, 0))
    assert blocked(64, 64, (3, 3), (1, 1), hw=(7, 7)) and blocked(64, 64, (1, 1), (0, 0), hw=(24, 24))
    assert not blocked(64, 64, (3, 3), (1, 1), hw=(24, 24))  # Winograd's: 144 tiles a sample, 288 in the batch
    assert not blocked(32, 32, (3, 3), (1, 1), hw=(32, 32))
    assert not blocked(16, 128, (3, 3), (1, 1)) and not blocked(16, 4, (3, 3), (1, 1))
    assert not blocked(16, 16, (5, 5), (2, 2))  # more taps than the weight gradient's block
    assert not blocked(16, 16, (3, 3), (0, 0)) and not blocked(16, 16, (3, 3), (1, 1), stride=(2, 2))
    assert not blocked(16, 16, (3, 3), (1, 1), groups=2)
    for name, cfg in NAMED_CONVS.items():
        if name.startswith("blocked"):
            x, w, _, _ = conv_arrays(cfg, np.float64)
            assert rules.blocked_applies(cfg["stride"], cfg["padding"], cfg["kernel"], cfg["dilation"], cfg["groups"])
            assert w.shape[0] >= rules.BLOCKED_MIN_FILTERS, name


def test_wide_layers_on_small_maps_run_in_chunks():
    """The general convolution runs a layer in groups of samples unless it has more filters than a group (or a
    band of one sample) has output positions: then in chunks of the batch."""
    from cnncli.engine import blas

    if blas.FUNCTIONS is None:
        pytest.skip("numpy's BLAS exports no CBLAS GEMM here")

    def groups(n, c, hw, f, stride=1):
        call = conv.Call((n, c, hw, hw), (f, c, 3, 3), (stride, stride), (1, 1), (1, 1), 1, 4)
        return call.in_kernel_gemms and call.group_gemms()

    assert not groups(8, 512, 7, 512)  # groups of 2 samples: 98 positions
    assert not groups(1, 512, 14, 512) and not groups(1, 256, 28, 512)  # bands of a few rows
    assert not groups(8, 256, 14, 512, stride=2)  # groups of 4: 196 positions
    assert groups(8, 128, 28, 256, stride=2)  # groups of 2: 392 positions
    assert groups(8, 64, 56, 64) and groups(8, 512, 7, 64)


def test_outer_takes_the_narrow_strided_layers():
    """The rule sends strided layers of one group with at most 64 channels and filters that fill whole vectors
    (any kernel, padding, dilation) to the forward pass with filters in the lanes, and nothing else; every named
    outer case is one it applies to in both dtypes (so that the "outer" paths above run it)."""
    from cnncli.engine import simd

    def outer(c, f, kernel=(3, 3), stride=(2, 2), groups=1, dtype=np.float32):
        call = conv.Call((2, c, 16, 16), (f, c // groups, *kernel), stride, (1, 1), (1, 1), groups,
                         np.dtype(dtype).itemsize)
        return conv.by_name("outer").runs(call, conv.FORWARD)

    lanes = simd.lanes(4)  # float32 lanes: 16 with AVX-512, 8 with AVX2
    assert outer(16, 32) and outer(64, 128) and outer(3, 64, (7, 7)) and outer(16, 32, (1, 1), (2, 1))
    assert outer(64, lanes) and outer(64, lanes // 2, dtype=np.float64)
    assert not outer(16, lanes // 2) and not outer(16, lanes + lanes // 2) and not outer(128, 256)
    assert not outer(16, 32, stride=(1, 1)) and not outer(16, 32, groups=2)
    for name, cfg in NAMED_CONVS.items():
        if name.startswith("outer"):
            for dtype in DTYPES:
                assert rules.outer_applies(cfg["stride"], cfg["groups"], cfg["filters"],
                                           simd.lanes(np.dtype(dtype).itemsize)), (name, dtype)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_simd_tile_transform_equals_the_matrix_products(dtype, accumulate):
    """simd.tile_transform(left, right) computes Y = left · X · rightᵀ over runs of every length up to three vectors
    (X's and Y's elements at rows named by tables), added to Y's rows with ``accumulate``, and writes nothing else.
    Winograd's four transforms, and one with a row of zeros."""
    from numba import njit

    from cnncli.engine import simd, winograd

    shapes = [(winograd.B_T, winograd.B_T), (winograd.A_T, winograd.A_T),
              (tuple(zip(*winograd.A_T)), tuple(zip(*winograd.A_T))), (((1, -1), (0, 0), (-1, 0)), ((0, 1), (1, 1)))]
    def runner(transform):
        @njit
        def run(src, stab, sscale, dst, dtab, dscale, count):
            transform(src, stab, 1, sscale, 2, dst, dtab, 2, dscale, 1, count)
        return run

    rng = np.random.default_rng(4)
    for left, right in shapes:
        run = runner(simd.tile_transform(left, right, accumulate))
        lm, rm = np.array(left, dtype), np.array(right, dtype)
        p, q, a, b = lm.shape[1], rm.shape[1], lm.shape[0], rm.shape[0]
        for count in range(3 * simd.lanes(np.dtype(dtype).itemsize) + 2):
            sscale, dscale = count + 2, count + 3  # rows apart, with room between them
            src = rng.standard_normal(sscale * (p * q + 1) + 2 + count).astype(dtype)
            stab = np.concatenate([[99], rng.permutation(p * q + 1)[:p * q]]).astype(np.int64)  # rows, from entry 1
            dtab = np.concatenate([[99, 99], rng.permutation(a * b)]).astype(np.int64)
            dst = rng.standard_normal(dscale * a * b + 1 + count + 4).astype(dtype)
            before = dst.copy()
            run(src, stab, sscale, dst, dtab, dscale, count)
            x = np.stack([src[stab[1 + k] * sscale + 2:][:count] for k in range(p * q)]).reshape(p, q, count)
            y = np.einsum("ip,pqc,jq->ijc", lm, x, rm).reshape(a * b, count)
            want = before.copy()
            for k in range(a * b):
                at = dtab[2 + k] * dscale + 1
                want[at:at + count] = y[k] + (before[at:at + count] if accumulate else 0)
            np.testing.assert_allclose(dst, want, **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_products_equal_numpy(dtype):
    """products.matrix_product (runs of the depth, every block width the columns need) and products.outer_sums
    (rows and steps, added to what is there) against numpy, on sizes that leave every kind of block's tail."""
    from numba import njit

    from cnncli.engine import products, simd

    lanes = simd.lanes(np.dtype(dtype).itemsize)
    zero = np.zeros(1, np.int64)
    rng = np.random.default_rng(6)
    for vectors in range(1, 9):  # the compiled choice of block is rules.outer_vectors
        assert products._vectors(vectors * lanes, lanes) == rules.outer_vectors(vectors, simd.VECTOR_REGISTERS)

    @njit
    def product(a, bases, b, bstride, depth, out, ostride, columns, chunk):
        products.matrix_product(a, bases, b, bstride, depth, out, ostride, columns, chunk, zero, lanes)

    for points, depth, vectors in [(1, 1, 1), (7, 5, 3), (13, 40, 7), (25, 3, 4)]:
        columns = vectors * lanes
        a = rng.standard_normal((points, depth + 3)).astype(dtype)
        b = rng.standard_normal((depth, columns + 5)).astype(dtype)
        out = np.full((points, columns + 2), 9, dtype)
        product(a.reshape(-1), products.point_bases(points, depth + 3), b.reshape(-1), columns + 5, depth,
                out.reshape(-1), columns + 2, columns, 4)
        np.testing.assert_allclose(out[:, :columns], a[:, :depth] @ b[:, :columns], **tolerances(dtype))
        assert (out[:, columns:] == 9).all()
        steps = rng.standard_normal((points + 2 * depth + 4,)).astype(dtype)
        grads = rng.standard_normal((3 * depth + 2, columns)).astype(dtype)
        bases = rng.permutation(points).astype(np.int64)
        arows, brows = np.array([0, 3], np.int64), np.array([0, 2 * columns], np.int64)
        sums = rng.standard_normal((points, columns)).astype(dtype)
        want = sums.copy()
        for i in range(points):
            for r in range(2):
                for k in range(depth):
                    want[i] += steps[bases[i] + arows[r] + 2 * k] * grads.reshape(-1)[brows[r] + k * columns:][:columns]
        products.outer_sums(steps, bases, arows, 2, grads.reshape(-1), brows, columns, depth, sums.reshape(-1),
                            columns, lanes)
        np.testing.assert_allclose(sums, want, **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_simd_moves_write_exactly_their_run(dtype):
    """simd.copy, copy_add, zero and copy_stride2 write n elements from the offset on (whole vectors, then halves,
    ..., then single elements: every length up to three vectors), and nothing before or after."""
    from numba import njit

    from cnncli.engine import simd

    @njit
    def moves(dst, src, d0, s0, n, add):
        simd.copy(dst, d0, src, s0, n)
        simd.copy_add(dst, d0 + n + 3, src, s0, n, add)
        simd.zero(dst, d0 + 2 * n + 10, n)
        simd.copy_stride2(dst, d0 + 3 * n + 12, src, s0, n)

    for n in range(3 * simd.lanes(np.dtype(dtype).itemsize) + 2):
        # src ends at the last element copy_stride2 needs (its vectors must stop one short of it)
        src = np.arange(max(3 + 2 * n - 1, 3 + n), dtype=dtype) + 0.5
        dst = np.full(300, 7, dtype)
        moves(dst, src, 5, 3, n, dtype(2))
        want = np.full(300, 7, dtype)
        want[5:5 + n] = src[3:3 + n]
        want[8 + n:8 + 2 * n] = src[3:3 + n] + 2
        want[15 + 2 * n:15 + 3 * n] = 0
        want[17 + 3 * n:17 + 4 * n] = src[3:3 + 2 * n:2]
        np.testing.assert_array_equal(dst, want)
