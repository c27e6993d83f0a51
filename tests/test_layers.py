"""Finite-difference gradient checks for every layer kind, a composite graph, losses and optimizers.

Each check builds a one-layer network from YAML in float64, takes the scalar
E = Σ y·R for a fixed random R (so ∂E/∂y = R), and compares the analytic
gradients of the input and of every parameter with central differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import central_difference

from cnncli.engine import losses, optim, rules
from cnncli.engine.layers import LAYERS
from cnncli.engine.network import Network
from cnncli.errors import ShapeError, SpecError
from cnncli.model import graph, spec
from cnncli.model.kinds import KINDS

# kind -> list of (input shape with batch, layer entry in YAML, train mode)
CASES: dict[str, list[tuple[tuple[int, ...], str, bool]]] = {
    "conv": [
        ((2, 3, 7, 6), "conv: {filters: 4, kernel: 3}", True),
        ((2, 4, 8, 7), "conv: {filters: 6, kernel: [3, 2], stride: [2, 1], padding: [1, 2], groups: 2}", True),
        ((1, 2, 9, 9), "conv: {filters: 3, kernel: 3, dilation: 2, padding: 1, bias: false}", True),
        ((2, 3, 6, 6), "conv: {filters: 3, kernel: 3, groups: 3}", True),
        ((2, 3, 6, 6), "conv: {filters: 2, kernel: 3, connections: [[1, 0, 1], [0, 1, 1]]}", True),
    ],
    "maxpool": [
        ((2, 3, 6, 6), "maxpool: {kernel: 2}", True),
        ((2, 2, 7, 7), "maxpool: {kernel: 3, stride: 2, padding: 1, ceil_mode: true}", True),
    ],
    "avgpool": [
        ((2, 3, 6, 6), "avgpool: {kernel: 2}", True),
        ((2, 2, 7, 7), "avgpool: {kernel: 3, stride: 2, padding: 1}", True),
        ((2, 2, 7, 7), "avgpool: {kernel: 3, stride: 2, padding: 1, ceil_mode: true, count_include_pad: false}", True),
    ],
    "adaptive_avgpool": [((2, 3, 7, 5), "adaptive_avgpool: {output: [3, 2]}", True)],
    "global_avgpool": [((2, 3, 4, 5), "global_avgpool", True)],
    "subsample": [((2, 3, 6, 6), "subsample: {kernel: 2}", True)],
    "dense": [((3, 5), "dense: {units: 4}", True), ((3, 5), "dense: {units: 2, bias: false}", True)],
    "flatten": [((2, 3, 2, 2), "flatten", True)],
    "relu": [((3, 7), "relu", True)],
    "leaky_relu": [((3, 7), "leaky_relu: {slope: 0.1}", True)],
    "sigmoid": [((3, 7), "sigmoid", True)],
    "tanh": [((2, 2, 3, 3), "tanh", True)],
    "softmax": [((3, 5), "softmax", True)],
    "batchnorm": [
        ((4, 3, 3, 3), "batchnorm", True),
        ((4, 3, 3, 3), "batchnorm", False),
        ((5, 4), "batchnorm", True),
    ],
    "dropout": [((3, 8), "dropout: {rate: 0.3}", True), ((3, 8), "dropout: {rate: 0.3}", False)],
    "lrn": [((2, 6, 3, 3), "lrn: {size: 3, alpha: 0.5, beta: 0.75, k: 2.0}", True),
            ((2, 5, 2, 2), "lrn: {size: 4, alpha: 0.3, beta: 0.6, k: 1.0}", True)],
    "shortcut_pad": [
        ((2, 3, 6, 6), "shortcut_pad: {stride: 2, channels: 6}", True),   # ResNet's stage change
        ((2, 2, 7, 5), "shortcut_pad: {stride: [2, 3], channels: 3}", True),  # odd sizes: ⌈7/2⌉ × ⌈5/3⌉
        ((2, 3, 4, 4), "shortcut_pad: {channels: 3}", True),   # stride 1, no new channels: the identity
    ],
    "add": [((2, 3, 4, 4), "add: {inputs: [input, b]}", True)],
    "concat": [((2, 3, 4, 4), "concat: {inputs: [input, b]}", True)],
    "yolo": [((2, 7, 3, 4), "yolo: {boxes: 1}", True)],
    "localize": [((3, 6), "localize", True)],
}


def test_every_kind_has_a_layer_and_a_gradient_check():
    assert set(LAYERS) == set(KINDS) == set(CASES)


def test_every_init_scheme_a_model_file_may_name_is_implemented():
    from cnncli.engine.init import SCHEMES

    assert set(SCHEMES) == set(graph.INIT_SCHEMES)


@pytest.mark.parametrize("scheme", sorted(graph.INIT_SCHEMES))
def test_init_schemes_draw_what_they_say(scheme):
    """Bounds and spreads of each scheme on a dense layer of fan-in 400, fan-out 100."""
    text = f"input: [400]\nlayers:\n  - dense: {{units: 100, init: {scheme}}}\n"
    net = Network(graph.build(spec.parse(text)), "float64", seed=1)
    w, b = net.params["dense1.weight"], net.params["dense1.bias"]
    if scheme == "zeros":
        assert not w.any() and not b.any()
    elif scheme == "default":  # PyTorch's: uniform in ±1/√fan_in, weights and biases alike
        for a in (w, b):
            assert np.abs(a).max() <= 1 / 20 and np.abs(a).max() > 0.9 / 20
    elif scheme == "he":  # normal with standard deviation √(2/fan_in); zero biases
        assert w.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02) and not b.any()
    else:  # xavier: uniform in ±√(6/(fan_in + fan_out)); zero biases
        bound = np.sqrt(6 / 500)
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound and not b.any()


def _network(in_shape, entry: str, dtype="float64", seed=0) -> Network:
    pre = ""
    if entry.startswith(("add", "concat")):
        pre = "  - tanh: {name: b}\n"  # a second path into the join
    text = f"input: {list(in_shape[1:])}\nlayers:\n{pre}  - {entry}\n"
    return Network(graph.build(spec.parse(text)), dtype=dtype, seed=seed)


def _perturb_params(net: Network, rng: np.random.Generator) -> None:
    # Move away from special initial values (batch norm's scale 1 and shift 0, and its running
    # statistics' mean 0 and variance 1, which inference reads) so every term is exercised.
    for p in net.trainable().values():
        p += 0.1 * rng.standard_normal(p.shape)
    for key, b in net.buffers.items():
        b += 0.1 * rng.standard_normal(b.shape)
        if key.endswith("running_var"):
            np.abs(b, out=b)


def _fd_check(net: Network, x: np.ndarray, train: bool, rng: np.random.Generator, eps=1e-6, tol=1e-6):
    passes = net.passes

    def energy() -> float:
        net.passes = passes  # the same dropout mask on every call
        saved = {k: v.copy() for k, v in net.buffers.items()}
        y = net.forward(x, train=train)
        for k, v in saved.items():
            net.buffers[k][...] = v
        return float((y * r).sum())

    net.passes = passes
    y = net.forward(x, train=train)
    r = rng.standard_normal(y.shape)
    # energy() repeats this very pass (the same dropout mask, the running statistics put back),
    # so E = Σ y·R and ∂E/∂y = R hold for the finite differences below.
    buffers = {k: v.copy() for k, v in net.buffers.items()}
    assert energy() == float((y * r).sum())
    assert all(np.array_equal(net.buffers[k], v) for k, v in buffers.items())
    net.passes = passes
    net.forward(x, train=train)
    net.backward({net.graph.output: r})
    dx, grads = net.input_grad, dict(net.grads)

    def check(name, arr, analytic):
        flat = list(np.ndindex(arr.shape))
        picks = flat if len(flat) <= 40 else [flat[i] for i in rng.choice(len(flat), 40, replace=False)]
        for idx in picks:
            num = central_difference(arr, idx, energy, eps)
            assert abs(num - analytic[idx]) <= tol * max(1.0, abs(num)), (name, idx, num, analytic[idx])

    check("input", x, dx)
    for key, p in net.trainable().items():
        check(key, p, grads[key])


@pytest.mark.parametrize("kind,in_shape,entry,train",
                         [(k, s, e, t) for k, cases in CASES.items() for s, e, t in cases],
                         ids=lambda v: v if isinstance(v, str) and ":" not in v else None)
def test_gradients_match_finite_differences(kind, in_shape, entry, train):
    rng = np.random.default_rng(1)
    net = _network(in_shape, entry)
    if kind == "conv" and "connections" in entry:
        w = net.params["conv1.weight"]
        assert np.all(w[0, 1] == 0) and np.all(w[1, 0] == 0)
    _perturb_params(net, rng)
    assert all(np.all((b != 0) & (b != 1)) for b in net.buffers.values())  # batch norm's running statistics
    x = rng.standard_normal(in_shape)
    if kind == "conv" and "connections" in entry:
        mask = np.array([[1, 0, 1], [0, 1, 1]])[:, :, None, None]
        _fd_check(net, x, train, rng)
        assert np.all(net.grads["conv1.weight"] * (1 - mask) == 0)
        return
    _fd_check(net, x, train, rng)


def test_shortcut_pad_keeps_every_strided_cell_and_appends_zero_channels():
    # What the gradient check cannot see: which cells are kept and where the zero channels go.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 5))
    net = _network(x.shape, "shortcut_pad: {stride: 2, channels: 8}")
    y = net.forward(x, train=True)
    assert y.shape == (2, *net.graph.output_shape) == (2, 8, 4, 3)
    dy = rng.standard_normal(y.shape)
    net.backward({net.graph.output: dy})
    dx = np.zeros_like(x)
    for i in range(4):
        for j in range(3):
            assert np.array_equal(y[:, :3, i, j], x[:, :, 2 * i, 2 * j])  # the input's channels first
            dx[:, :, 2 * i, 2 * j] = dy[:, :3, i, j]
    assert not y[:, 3:].any()  # then zeros
    assert np.array_equal(net.input_grad, dx)


@pytest.mark.parametrize("in_shape,entry,error,message", [
    ([12], "shortcut_pad: {channels: 16}", ShapeError, "shortcut_pad needs an image input (C×H×W), got 12"),
    ([16, 8, 8], "shortcut_pad: {stride: 2, channels: 8}", ShapeError,
     "channels (=8) must be at least its input channels (=16)"),
    ([16, 8, 8], "shortcut_pad: {stride: 2}", SpecError, "missing option 'channels'"),
    ([16, 8, 8], "shortcut_pad: {stride: 0, channels: 16}", SpecError, "stride must be positive"),
])
def test_shortcut_pad_says_what_it_cannot_take(in_shape, entry, error, message):
    with pytest.raises(error) as e:
        graph.build(spec.parse(f"input: {in_shape}\nlayers:\n  - {entry}\n"))
    assert message in str(e.value)


COMPOSITE = """
input: [3, 8, 8]
blocks:
  basic:
    args: {filters: ~, stride: 1}
    layers:
      - conv: {name: c1, filters: $filters, kernel: 3, stride: $stride, padding: 1, bias: false}
      - batchnorm
      - relu
      - conv: {filters: $filters, kernel: 3, padding: 1}
      - add: {inputs: [in, conv2]}
  mix:
    args: {a: ~}
    layers:
      - conv: {name: b1, filters: $a, kernel: 1}
      - conv: {name: b2, input: in, filters: $a * 2, kernel: 3, padding: 1}
      - maxpool: {name: b3, input: in, kernel: 3, stride: 1, padding: 1}
      - concat: {inputs: [b1, b2, b3]}
layers:
  - conv: {filters: 4, kernel: 3, padding: 1}
  - tanh
  - basic: {name: layer1, filters: 4, repeat: 2}
  - mix: {name: mix1, a: 2}
  - avgpool: {kernel: 2}
  - global_avgpool: {name: aux_pool, input: layer1}
  - dense: {name: aux, units: 3, aux: 0.3}
  - flatten: {input: avgpool1}
  - dense: {units: 5}
  - softmax
"""


def test_composite_graph_with_blocks_add_concat_and_aux_head():
    model = spec.parse(COMPOSITE)
    g = graph.build(model)
    assert g["mix1.concat1"].out_shape == (10, 8, 8)
    assert g.aux_outputs == {"aux": 0.3}
    net = Network(g, dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    _perturb_params(net, rng)
    x = rng.standard_normal((2, 3, 8, 8))
    # BatchNorm in inference mode keeps the energy a fixed function of the parameters.
    _fd_check(net, x, train=False, rng=rng, tol=1e-5)
    inference = Network(graph.build(model, aux=False), dtype="float64", seed=3)
    assert "aux" not in {n.name for n in inference.graph.nodes}


def test_composite_loss_includes_weighted_aux_head_and_fused_softmax():
    net = Network(graph.build(spec.parse(COMPOSITE)), dtype="float64", seed=4)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 3, 8, 8))
    target = np.array([0, 2, 1])
    loss = losses.get("cross_entropy")
    value, out = net.loss_and_backward(x, target, loss, train=True)
    logits_main = net.values["dense2"]
    logits_aux = net.values["aux"]
    expect = (losses.softmax_cross_entropy(logits_main, target)[0]
              + 0.3 * losses.softmax_cross_entropy(logits_aux, target)[0])
    assert value == pytest.approx(expect, rel=1e-12)
    assert np.allclose(out.sum(axis=1), 1.0)
    # The parameters of the aux head get gradients while training, none at inference.
    assert np.abs(net.grads["aux.weight"]).sum() > 0
    net.loss_and_backward(x, target, loss, train=False)
    assert np.abs(net.grads["aux.weight"]).sum() == 0


def test_float32_agrees_with_float64():
    model = spec.parse(COMPOSITE)
    n64 = Network(graph.build(model), dtype="float64", seed=5)
    n32 = Network(graph.build(model), dtype="float32", seed=5)
    for k in n64.params:
        n32.params[k][...] = n64.params[k]
    x = np.random.default_rng(3).standard_normal((4, 3, 8, 8))
    target = np.array([0, 1, 2, 1])
    loss = losses.get("cross_entropy")
    l64, _ = n64.loss_and_backward(x, target, loss)
    l32, _ = n32.loss_and_backward(x.astype(np.float32), target, loss)
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k, g in n64.grads.items():
        assert np.allclose(n32.grads[k], g, rtol=1e-3, atol=1e-5 * max(1.0, np.abs(g).max())), k


@pytest.mark.parametrize("name", ["cross_entropy", "bce", "mse"])
@pytest.mark.parametrize("target_kind", ["index", "vector"])
def test_loss_gradients_match_finite_differences(name, target_kind):
    rng = np.random.default_rng(7)
    o = rng.uniform(0.05, 0.95, size=(3, 4))
    target = np.array([1, 0, 3]) if target_kind == "index" else rng.uniform(0, 1, size=(3, 4))
    fn = losses.get(name).fn
    _, g = fn(o, target)
    eps = 1e-6
    for idx in np.ndindex(o.shape):
        up, down = o.copy(), o.copy()
        up[idx] += eps
        down[idx] -= eps
        num = (fn(up, target)[0] - fn(down, target)[0]) / (2 * eps)
        assert num == pytest.approx(g[idx], rel=1e-6, abs=1e-9)


def test_fused_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]])
    value, g = losses.softmax_cross_entropy(logits, np.array([2]))
    assert value == pytest.approx(2000.0)
    assert np.all(np.isfinite(g))


def test_bce_is_the_lectures_formula():
    o = np.array([[0.2698, 0.3223, 0.4078]])
    value, _ = losses.binary_cross_entropy(o, np.array([[1.0, 0.0, 0.0]]))
    assert value == pytest.approx(-(np.log(0.2698) + np.log(1 - 0.3223) + np.log(1 - 0.4078)))


def _reference_sgd(p, grads, lr, momentum, nesterov, wd):
    p, buf = p.copy(), None
    for g in grads:
        g = g + wd * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-2)])
def test_sgd_follows_pytorchs_rule_and_its_state_round_trips(momentum, nesterov, wd):
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((3, 2))
    grads = [rng.standard_normal((3, 2)) for _ in range(4)]
    p = {"w": p0.copy()}
    opt = optim.make("sgd", p, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    for g in grads[:2]:
        opt.step({"w": g})
    # Resume in a fresh optimizer from the saved state: same result as running on.
    state = {k: v.copy() for k, v in opt.state_dict().items()}
    p2 = {"w": p["w"].copy()}
    opt2 = optim.make("sgd", p2, lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    opt2.load_state_dict(state)
    for g in grads[2:]:
        opt.step({"w": g})
        opt2.step({"w": g})
    expect = _reference_sgd(p0, grads, 0.1, momentum, nesterov, wd)
    assert np.allclose(p["w"], expect) and np.array_equal(p["w"], p2["w"])


def test_adam_matches_its_definition():
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(3)]
    p = {"w": p0.copy()}
    opt = optim.make("adam", p, lr=0.01)
    m = v = np.zeros(5)
    q = p0.copy()
    for t, g in enumerate(grads, 1):
        opt.step({"w": g})
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        q = q - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    assert np.allclose(p["w"], q)


def test_batchnorm_running_statistics_follow_pytorch():
    net = _network((6, 2), "batchnorm: {momentum: 0.1}")
    x = np.random.default_rng(0).standard_normal((6, 2)) * 3 + 1
    net.forward(x, train=True)
    assert np.allclose(net.buffers["batchnorm1.running_mean"], 0.1 * x.mean(axis=0))
    assert np.allclose(net.buffers["batchnorm1.running_var"], 0.9 + 0.1 * x.var(axis=0, ddof=1))
    assert "batchnorm1.running_mean" not in net.params


def test_inline_init_sets_the_lectures_weights():
    net = Network(graph.build(spec.load("slide-mlp")), dtype="float64")
    assert np.array_equal(net.params["h1.weight"], [[0.1, 0.2, 0.3], [0.3, 0.2, 0.7], [0.4, 0.3, 0.9]])
    assert np.array_equal(net.params["o.bias"], [1.0, 1.0, 1.0])
    y = net.forward(np.array([[0.1, 0.2, 0.7]]))
    # Slides 5–7 print h1 = [1.35 1.27 1.8], h2_in = [2.73 2.76 4.001], o_in = [1.8658 2.2292 2.8204].
    assert np.allclose(net.values["h1"], [[1.35, 1.27, 1.8]])
    assert np.allclose(net.values["h2"], [[2.731, 2.76, 4.004]])
    assert np.allclose(net.values["o"], [[1.8658, 2.2292, 2.8204]], atol=5e-3)
    # Slide 7's softmax [0.2698 0.3223 0.4078] is a slip: softmax(o_in) is this.
    e = np.exp(net.values["o"])
    assert np.allclose(y, e / e.sum()) and np.allclose(y, [[0.1984, 0.2854, 0.5162]], atol=1e-3)


# Chains that a fast network runs fused (cnncli.engine.fast.fused): conv -> relu/tanh (-> tiled avgpool).
# A tanh in front makes the chain's input gradient reach the network's input, where it is checked.
FUSED_CASES = [
    ((2, 2, 7, 6), "conv: {filters: 3, kernel: 3, padding: 1}\n  - tanh\n  - avgpool: {kernel: 2}"),
    ((2, 2, 8, 8), "conv: {filters: 3, kernel: 3}\n  - relu\n  - avgpool: {kernel: 3}"),
    # direct loops, five taps of a kernel row per pass
    ((3, 1, 9, 9), "conv: {filters: 2, kernel: 5, padding: 2, bias: false}\n  - tanh\n  - avgpool: {kernel: 2}"),
    # an odd number of filters: the last of the pairs the direct loops run is alone
    ((2, 1, 9, 9), "conv: {filters: 3, kernel: 5, padding: 2}\n  - relu\n  - avgpool: {kernel: 2}"),
    ((2, 3, 6, 6), "conv: {filters: 2, kernel: 3, connections: [[1, 0, 1], [0, 1, 1]]}\n  - tanh"),
    # LeNet-5's second layer in small: 5x5, 16 filters, GEMMs
    ((2, 6, 9, 9), "conv: {filters: 16, kernel: 5}\n  - tanh\n  - avgpool: {kernel: 2}"),
    # more than 256 weights: GEMMs on whole padded rows instead of direct loops
    ((2, 3, 6, 6), "conv: {filters: 12, kernel: 3, padding: 1}\n  - tanh\n  - avgpool: {kernel: 2}"),
    # many filters on a narrow image: the columns are gathered row by row (pitch = output width)
    ((2, 2, 5, 5), "conv: {filters: 40, kernel: 3, padding: 0}\n  - tanh\n  - avgpool: {kernel: 3}"),
    # a pooling the block does not take (overlapping windows) stays a layer of its own
    ((2, 2, 7, 7), "conv: {filters: 3, kernel: 3, padding: 1}\n  - relu\n  - avgpool: {kernel: 3, stride: 2}"),
]


def _fused_network(in_shape, entry: str, dtype="float64", seed=0, fast=True) -> Network:
    text = f"input: {list(in_shape[1:])}\nlayers:\n  - tanh: {{name: pre}}\n  - {entry}\n"
    return Network(graph.build(spec.parse(text)), dtype=dtype, seed=seed, fast=fast)


def _use_layout(layout: str, monkeypatch) -> type:
    """Make fused chains run NCHW (cnncli.engine.fast.fused) or batch-innermost (cnncli.engine.fast.lanes), whatever the batch."""
    from cnncli.engine.fast import fused, lanes

    monkeypatch.setattr(rules, "MIN_LANES", 1 if layout == "lanes" else 10**9)
    return lanes.Block if layout == "lanes" else fused.Block


def _ran(net: Network, block_type: type) -> None:
    assert net.fused_head, "the chain should have been fused"
    for chain in net.fused_head.values():
        assert isinstance(chain.block, block_type)


@pytest.mark.parametrize("layout", ["nchw", "lanes"])
@pytest.mark.parametrize("in_shape,entry", FUSED_CASES, ids=range(len(FUSED_CASES)))
def test_fused_chains_match_finite_differences(in_shape, entry, layout, monkeypatch):
    block_type = _use_layout(layout, monkeypatch)
    rng = np.random.default_rng(11)
    net = _fused_network(in_shape, entry)
    _perturb_params(net, rng)
    assert all(np.all((b != 0) & (b != 1)) for b in net.buffers.values())  # batch norm's running statistics
    x = rng.standard_normal(in_shape)
    _fd_check(net, x, True, rng)
    _ran(net, block_type)


@pytest.mark.parametrize("chunked", [False, "kept", True, "lanes"],
                         ids=["one-chunk", "chunks-kept", "chunk-per-sample", "lanes"])
@pytest.mark.parametrize("in_shape,entry", FUSED_CASES, ids=range(len(FUSED_CASES)))
def test_fused_chains_equal_the_layers_they_replace(in_shape, entry, chunked, monkeypatch):

    block_type = _use_layout("lanes" if chunked == "lanes" else "nchw", monkeypatch)
    if chunked and chunked != "lanes":  # every sample its own chunk: the chunks' gradients add up
        monkeypatch.setattr(rules, "COLS_BUDGET_BYTES", 1)
    if chunked is True:  # and each chunk is unfolded again for the backward pass
        monkeypatch.setattr(rules, "KEEP_COLS_BYTES", 0)
    _fast_equals_plain(in_shape, entry, np.random.default_rng(12), block_type)


def _fast_equals_plain(in_shape, entry: str, rng, block_type: type) -> tuple[Network, np.ndarray]:
    """The fast network of a chain against the plain one, forward and backward, its chains run by ``block_type``;
    returns the fast network and its input."""
    plain, fast = _fused_network(in_shape, entry, fast=False), _fused_network(in_shape, entry)
    x = rng.standard_normal(in_shape)
    y = plain.forward(x, train=True)
    assert np.allclose(fast.forward(x, train=True), y, rtol=1e-12, atol=1e-14)
    _ran(fast, block_type)
    r = rng.standard_normal(y.shape)
    plain.backward({plain.graph.output: r})
    fast.backward({fast.graph.output: r})
    assert np.allclose(fast.input_grad, plain.input_grad, rtol=1e-10, atol=1e-14)
    for k, g in plain.grads.items():
        assert np.allclose(fast.grads[k], g, rtol=1e-10, atol=1e-14), k
    return fast, x


@pytest.mark.parametrize("layout", ["nchw", "lanes"])
@pytest.mark.parametrize("in_shape,entry", FUSED_CASES, ids=range(len(FUSED_CASES)))
def test_fused_chains_in_float32_and_on_one_thread_or_two(in_shape, entry, layout, monkeypatch):
    """A chain's block in float32 stays close to the plain network (the reference convolution) in float64, and
    gives the same bits on one engine thread or two."""
    import numba

    block_type = _use_layout(layout, monkeypatch)
    rng = np.random.default_rng(14)
    plain = _fused_network(in_shape, entry, fast=False)
    x = rng.standard_normal(in_shape)
    y = plain.forward(x, train=True)
    r = rng.standard_normal(y.shape)
    plain.backward({plain.graph.output: r})
    runs = []
    for threads in (1, 2) if numba.config.NUMBA_NUM_THREADS >= 2 else (1,):
        fast = _fused_network(in_shape, entry, dtype="float32")
        numba.set_num_threads(threads)
        try:
            y32 = fast.forward(x.astype(np.float32), train=True)
            fast.backward({fast.graph.output: r.astype(np.float32)})
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        _ran(fast, block_type)
        runs.append([y32, fast.input_grad, *(fast.grads[k] for k in sorted(fast.grads))])
        np.testing.assert_allclose(y32, y, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(fast.input_grad, plain.input_grad, rtol=1e-4, atol=1e-5)
        for k, g in plain.grads.items():
            np.testing.assert_allclose(fast.grads[k], g, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(g).max()))
    for one, two in zip(*runs) if len(runs) == 2 else ():
        assert one.tobytes() == two.tobytes()


@pytest.mark.parametrize("in_shape,entry,takes", [
    ((2, 3, 6, 6), "conv: {filters: 4, kernel: 3, padding: 1}\n  - relu", True),
    ((2, 2, 7, 5), "conv: {filters: 3, kernel: 3, bias: false}\n  - relu", True),
    ((2, 2, 8, 8), "conv: {filters: 3, kernel: 3}\n  - relu\n  - avgpool: {kernel: 3}", False),  # pooled: fused
    ((2, 2, 6, 6), "conv: {filters: 3, kernel: 3, padding: 1}\n  - tanh", False),  # not a ReLU: fused
])
def test_fused_relu_chains_run_as_winograd_where_the_convolution_would(in_shape, entry, takes, monkeypatch):
    """A conv → relu chain whose convolution takes Winograd on that call runs as Winograd then the ReLU, equal to
    the layers it replaces and to finite differences; chains with a pooling or another activation stay fused."""
    from cnncli.engine import layers
    from cnncli.engine.fast import fused

    monkeypatch.setattr(rules, "winograd_pays", lambda *a: True)
    _use_layout("nchw", monkeypatch)
    rng = np.random.default_rng(13)
    block_type = layers._ThenRelu if takes else fused.Block
    fast, x = _fast_equals_plain(in_shape, entry, rng, block_type)
    _perturb_params(fast, rng)
    _fd_check(fast, x, True, rng)
    _ran(fast, block_type)


@pytest.mark.parametrize("model,chains", [
    ("lenet5", [["c1", "tanh1", "s2"], ["c3", "tanh2", "s4"]]),
    ("lenet5-1998", [["c1", "tanh1"], ["c3", "tanh3"], ["c5", "tanh5"]]),
])
def test_fast_network_fuses_lenet_and_skips_the_input_gradient(model, chains):
    g = graph.build(spec.load(model))
    plain, fast = Network(g, "float64", seed=1), Network(g, "float64", seed=1, fast=True)
    assert [c.nodes for c in fast.fused_head.values()] == chains
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, *g.input_shape))
    target = rng.integers(0, 10, 5)
    loss = losses.get("cross_entropy")
    lp, op = plain.loss_and_backward(x, target, loss)
    lf, of = fast.loss_and_backward(x, target, loss)
    assert lf == pytest.approx(lp, rel=1e-12) and np.allclose(of, op, rtol=1e-12)
    assert fast.input_grad is None and plain.input_grad is not None
    for k, grad in plain.grads.items():
        assert np.allclose(fast.grads[k], grad, rtol=1e-9, atol=1e-15), k
    # float32 through the fused kernels agrees with float64
    f32 = Network(g, "float32", seed=1, fast=True)
    for k in f32.params:
        f32.params[k][...] = fast.params[k]
    l32, _ = f32.loss_and_backward(x.astype(np.float32), target, loss)
    assert l32 == pytest.approx(lf, rel=1e-5)
    for k, grad in fast.grads.items():
        assert np.allclose(f32.grads[k], grad, rtol=1e-3, atol=1e-5 * max(1.0, np.abs(grad).max())), k


# COMPOSITE with dropout before its classifier: batch statistics and random draws in one network.
WITH_DROPOUT = COMPOSITE.replace("  - dense: {units: 5}", "  - dropout: {rate: 0.4}\n  - dense: {units: 5}")


def test_fast_network_splits_a_batch_across_threads_with_the_same_results():
    g = graph.build(spec.parse(WITH_DROPOUT))
    whole = Network(g, "float64", seed=6, fast=True, workers=1)
    split = Network(g, "float64", seed=6, fast=True, workers=3)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((50, 3, 8, 8))
    target = rng.integers(0, 3, 50)  # the aux head has 3 classes
    loss = losses.get("cross_entropy")
    for _ in range(2):  # two training passes: the second draws other dropout masks, in both
        lw, ow = whole.loss_and_backward(x, target, loss)
        ls, os_ = split.loss_and_backward(x, target, loss)
        assert len(split.parts.replicas) == 2  # three parts of 16-17 samples: unequal shares of the batch
        assert ls == pytest.approx(lw, rel=1e-12) and np.allclose(os_, ow, rtol=1e-12)
        assert split.values == {}  # the parts' values are not kept
        for k, grad in whole.grads.items():
            assert np.allclose(split.grads[k], grad, rtol=1e-10, atol=1e-15), k
        # batch norm's running statistics: updated once per batch, from the whole batch's statistics
        for k, buf in whole.buffers.items():
            assert np.allclose(split.buffers[k], buf, rtol=1e-13, atol=1e-15), k
    assert split.passes == whole.passes == 2
    assert np.allclose(split.forward(x), whole.forward(x), rtol=1e-12)
    # the replicas share the parameters and the running statistics: an update is seen by every part
    for net in (split, whole):
        for p in net.params.values():
            p *= 0.5
        for b in net.buffers.values():
            b *= 1.5
    assert np.allclose(split.forward(x), whole.forward(x), rtol=1e-12)
    # small batches are not split
    split.loss_and_backward(x[:20], target[:20], loss)
    assert isinstance(split.values, dict)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_in_a_split_batch_uses_the_whole_batchs_statistics_bit_for_bit(dtype):
    # A conv whose output per sample does not depend on the batch around it (direct loops: 3 taps of
    # 1 channel), then batch norm: its statistics, and so the running ones, are the same bits whole or split.
    g = graph.build(spec.parse("""
input: [1, 6, 6]
layers:
  - conv: {filters: 4, kernel: [1, 3], padding: [0, 1], bias: false}
  - batchnorm
  - flatten
  - dense: {units: 3}
"""))
    whole = Network(g, dtype, seed=2, fast=True, workers=1)
    split = Network(g, dtype, seed=2, fast=True, workers=2)
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((40, 1, 6, 6)) * 3 + 2).astype(dtype)
    target = rng.integers(0, 3, 40)
    loss = losses.get("cross_entropy")
    whole.loss_and_backward(x, target, loss)
    split.loss_and_backward(x, target, loss)
    assert split.parts.replicas  # it did split
    for k, buf in whole.buffers.items():
        assert split.buffers[k].tobytes() == buf.tobytes(), k
    bn = "batchnorm1"
    assert split.layers[bn].inv_std.tobytes() == whole.layers[bn].inv_std.tobytes()


def test_dropout_masks_do_not_depend_on_the_split_and_follow_the_pass_number():
    from cnncli.engine import draws
    from cnncli.engine.batch import Place

    g = graph.build(spec.parse("input: [7]\nlayers:\n  - dropout: {rate: 0.5}"))
    net = Network(g, "float64", seed=9)
    x = np.ones((6, 7))
    first = net.forward(x, train=True)
    again = net.forward(x, train=True)
    assert net.passes == 2 and not np.array_equal(first, again)  # each training pass draws anew
    net.passes = 0
    assert np.array_equal(net.forward(x, train=True), first)  # the pass number is the generator's state
    assert np.array_equal(net.forward(x, train=False), x) and net.passes == 1  # inference draws nothing
    # samples 2.. of the batch, run as a part, get the whole batch's masks of samples 2..
    part = net.forward_part(x[2:], True, Place(2, 6, 4, 0, 9))
    assert np.array_equal(part, first[2:])
    # the masks are the reference's: element j of sample i keeps iff uniform(key, 7 i + j) >= rate
    u = draws.uniform(draws.key(9, 0, 0), np.arange(42).reshape(6, 7))
    assert np.array_equal(first, np.where(u >= 0.5, 2.0, 0.0))
    kept = draws.dropout_mask((4000, 50), 0, 0.3, draws.key(1, 2, 3), np.float32) > 0
    assert abs(kept.mean() - 0.7) < 0.005  # 200,000 draws: the standard error is 0.001
    assert abs(kept[:, 0].mean() - kept[0, :].mean()) < 0.15  # no pattern along either axis


def test_lenet_batches_run_batch_innermost_with_the_nchw_results(monkeypatch):
    from cnncli.engine.fast import fused, lanes

    # a big inference batch would need a column matrix over the budget: the NCHW block takes it
    assert not lanes.Block.fits((5000, 6, 14, 14), (16, 6, 5, 5), (0, 0), 4)
    assert lanes.Block.fits((5000, 1, 28, 28), (6, 1, 5, 5), (2, 2), 4)  # direct loops, no columns
    assert not lanes.Block.fits((8, 1, 28, 28), (6, 1, 5, 5), (2, 2), 4)  # too few samples for a vector
    g = graph.build(spec.load("lenet5"))
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, *g.input_shape))
    target = rng.integers(0, 10, 40)
    loss = losses.get("cross_entropy")
    results = {}
    for layout in ("lanes", "nchw"):
        if layout == "nchw":
            monkeypatch.setattr(rules, "MIN_LANES", 10**9)
        net = Network(g, "float64", seed=2, fast=True, workers=1)
        results[layout] = net.loss_and_backward(x, target, loss), dict(net.grads)
        kind = lanes.Block if layout == "lanes" else fused.Block
        assert all(isinstance(c.block, kind) for c in net.fused_head.values())
    (l1, o1), g1 = results["lanes"]
    (l2, o2), g2 = results["nchw"]
    assert l1 == pytest.approx(l2, rel=1e-12) and np.allclose(o1, o2, rtol=1e-12)
    for k in g2:
        assert np.allclose(g1[k], g2[k], rtol=1e-10, atol=1e-15), k
