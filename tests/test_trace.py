"""``cnncli backprop-trace``: the numbers against finite differences and the slides' formulas, the tables
against golden files, and every user mistake as exit status 2.

The golden files ``tests/golden/trace_*.txt`` are snapshots of reviewed output, not
independent truth: they catch a change in the tables, while the numbers in them are
checked above against finite differences and an independent float64 reference.
``pytest --update-golden`` regenerates them (see ``tests/conftest.py``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import central_difference, run_main
from rich.console import Console

from cnncli import cli
from cnncli.engine import losses
from cnncli.engine.network import Network
from cnncli.errors import CheckpointError, UsageError
from cnncli.lecture import slides, trace
from cnncli.model import graph, spec
from cnncli.render import trace as render

SMALL_CNN = """
name: small-cnn
input: [2, 6, 6]
classes: 3
loss: cross_entropy
layers:
  - conv: {filters: 3, kernel: 3, padding: 1}
  - relu
  - maxpool: {kernel: 2}
  - conv: {filters: 4, kernel: 2, bias: false}
  - tanh
  - avgpool: {kernel: 2}
  - flatten
  - dense: {units: 3}
  - softmax
"""


# ---------------------------------------------------------------------------- helpers

def _energy(model: str, loss_name: str, x: np.ndarray, y: np.ndarray):
    """E(params, x) of a fresh float64 network, as the engine defines it (fused softmax included)."""
    net = Network(graph.build(spec.load(model)), dtype="float64", seed=0)
    loss = losses.get(loss_name)

    def energy() -> float:
        net.forward(x, train=True)
        node = net.graph[net.graph.output]
        source = node.inputs[0] if loss.fuses_softmax and node.kind == "softmax" else node.name
        return loss.fn(net.values[source], y)[0]

    return net, energy


def _render(result, width: int = 100) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None, highlight=False, soft_wrap=False)
    render.show(result, "table", console)
    return out.getvalue()


def _csv(a: np.ndarray) -> str:
    return ",".join(repr(float(v)) for v in a.ravel())


# ------------------------------------------------------------------- the worked example

@pytest.mark.parametrize("loss_name", ["bce", "cross_entropy", "mse"])
def test_worked_example_gradients_match_finite_differences(loss_name):
    t = trace.run("slide-mlp", loss={"cross_entropy": "ce"}.get(loss_name, loss_name))
    assert t.loss_name == loss_name
    x, y = t.x[None], t.target[None]
    net, energy = _energy("slide-mlp", loss_name, x, y)
    assert t.loss == pytest.approx(energy(), rel=1e-14)
    for layer in t.layers:
        w, b = net.params[f"{layer.name}.weight"], net.params[f"{layer.name}.bias"]
        assert np.array_equal(layer.weight, w)
        for idx in np.ndindex(w.shape):
            assert layer.grad_weight[idx] == pytest.approx(central_difference(w, idx, energy), rel=1e-6, abs=1e-9)
        for idx in np.ndindex(b.shape):
            assert layer.grad_bias[idx] == pytest.approx(central_difference(b, idx, energy), rel=1e-6, abs=1e-9)
    # ∂E/∂x, the gradient the first layer passes back to the input.
    x = x.copy()
    net, energy = _energy("slide-mlp", loss_name, x, y)
    for i in range(x.shape[1]):
        assert t.layers[0].grad_x[i] == pytest.approx(central_difference(x, (0, i), energy), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("loss_name", ["bce", "ce", "mse"])
def test_worked_example_factors_multiply_out_to_the_engines_gradients(loss_name):
    t = trace.run("slide-mlp", loss=loss_name)
    for n, layer in enumerate(t.layers):
        # ∂E/∂in = Jᵀ·∂E/∂out: with the fused cross-entropy, the table's unfused factors give the fused gradient.
        assert np.allclose(layer.jacobian.T @ layer.grad_out, layer.grad_in, rtol=1e-12, atol=1e-15)
        assert np.allclose(np.outer(layer.x, layer.grad_in), layer.grad_weight, rtol=1e-12, atol=1e-15)
        assert np.allclose(layer.weight @ layer.grad_in, layer.grad_x, rtol=1e-12, atol=1e-15)
        assert np.allclose(layer.new_weight, layer.weight - t.lr * layer.grad_weight, rtol=0, atol=1e-15)
        assert np.allclose(layer.new_bias, layer.bias - t.lr * layer.grad_bias, rtol=0, atol=1e-15)
        if layer.elementwise:
            # The slides' three-factor product is exact for an elementwise activation.
            three = layer.grad_out[None, :] * np.diag(layer.jacobian)[None, :] * layer.x[:, None]
            assert np.allclose(three, layer.grad_weight, rtol=1e-12, atol=1e-15)
        if n + 1 < len(t.layers):
            assert np.array_equal(t.layers[n + 1].x, layer.out)
    out = t.layers[-1]
    assert out.activation == "softmax" and not out.elementwise
    p = out.out
    assert np.allclose(out.jacobian, np.diag(p) - np.outer(p, p), atol=1e-15)
    assert t.terms.sum() == pytest.approx(t.loss, rel=1e-12)


def test_worked_example_is_the_lectures_and_named_as_on_the_slides():
    t = trace.run()
    g = slides.load_slides().given
    assert t.model == "slide-mlp" and t.loss_name == "bce" and t.lr == g.lr
    assert np.array_equal(t.x, g.x) and np.array_equal(t.target, g.y)
    assert [layer.weight.tolist() for layer in t.layers] == [g.W_ij.tolist(), g.W_jk.tolist(), g.W_kl.tolist()]
    assert [layer.rows + layer.cols for layer in t.layers] == ["ij", "jk", "kl"]
    assert [layer.activation for layer in t.layers] == ["relu", "sigmoid", "softmax"]
    # The forward values the slides print where they are right (slide 5: 1.35, 1.27, 1.8).
    assert np.allclose(t.layers[0].z, [1.35, 1.27, 1.8], atol=1e-15)


def test_steps_show_the_error_falling_and_keep_the_first_steps_tables():
    one = trace.run()
    many = trace.run(steps=5)
    errors = [s.loss for s in many.steps]
    assert [s.step for s in many.steps] == list(range(6))
    assert errors[0] == one.loss and all(b < a for a, b in zip(errors, errors[1:]))
    assert one.steps[1].loss == pytest.approx(errors[1], rel=1e-14)
    for a, b in zip(one.layers, many.layers):
        assert np.array_equal(a.new_weight, b.new_weight)


# The lecture's worked example as the slides give it (slides 5-8 and 13): input, target, the three
# weight matrices laid out (inputs, outputs) as the slides print them, every bias 1.0, lr 0.01.
LECTURE_X = np.array([0.1, 0.2, 0.7])
LECTURE_Y = np.array([1.0, 0.0, 0.0])
LECTURE_W = {
    "ij": np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.7], [0.4, 0.3, 0.9]]),
    "jk": np.array([[0.2, 0.3, 0.5], [0.3, 0.5, 0.7], [0.6, 0.4, 0.8]]),
    "kl": np.array([[0.1, 0.4, 0.8], [0.3, 0.7, 0.2], [0.5, 0.2, 0.9]]),
}
LECTURE_BIAS = 1.0
LECTURE_LR = 0.01


def lecture_reference() -> dict[str, float]:
    """Every quantity ``slide_exact`` reports, by the textbook formulas in plain float64 numpy.

    Independent of the engine: no cnncli code, the lecture's numbers written out
    above. The network is x -> ReLU(x·W_ij + 1) -> Sigmoid(h1·W_jk + 1) ->
    Softmax(h2·W_kl + 1) = o, the error is the per-output binary cross-entropy
    E = Σ_l -(y_l ln o_l + (1 - y_l) ln(1 - o_l)), and one plain SGD step
    W_new = W - lr·∂E/∂W. Indices in the keys are 1-based, [row, column] = [input, output].
    """
    x, y, w, lr = LECTURE_X, LECTURE_Y, LECTURE_W, LECTURE_LR
    # forward
    h1_in = x @ w["ij"] + LECTURE_BIAS
    h1_out = np.maximum(h1_in, 0.0)
    h2_in = h1_out @ w["jk"] + LECTURE_BIAS
    h2_out = 1.0 / (1.0 + np.exp(-h2_in))
    o_in = h2_out @ w["kl"] + LECTURE_BIAS
    o_out = np.exp(o_in) / np.exp(o_in).sum()
    e_term = -(y * np.log(o_out) + (1 - y) * np.log(1 - o_out))
    # backward, layer by layer from the output
    de_dout = -y / o_out + (1 - y) / (1 - o_out)                 # ∂E/∂o_l
    softmax_jac = np.diag(o_out) - np.outer(o_out, o_out)         # [a, b] = ∂o_a/∂o_in_b
    de_doin = softmax_jac.T @ de_dout                              # ∂E/∂o_in_l, through the full Jacobian
    dw_kl = np.outer(h2_out, de_doin)
    dh2out_term = w["kl"] * de_doin[None, :]                       # [k, l] = W_kl·∂E/∂o_in_l
    de_dh2out = dh2out_term.sum(axis=1)
    sigmoid_d = h2_out * (1 - h2_out)
    de_dh2in = de_dh2out * sigmoid_d
    dw_jk = np.outer(h1_out, de_dh2in)
    dh1out_term = w["jk"] * de_dh2in[None, :]                      # [j, k] = W_jk·∂E/∂h2_in_k
    de_dh1out = dh1out_term.sum(axis=1)
    relu_d = (h1_in > 0).astype(float)
    de_dh1in = de_dh1out * relu_d
    dw_ij = np.outer(x, de_dh1in)

    ref: dict[str, float] = {"E": float(e_term.sum())}
    vectors = {
        "E_term": e_term, "one_minus_o_out": 1 - o_out,
        "h1_in": h1_in, "h1_out": h1_out, "dE_dh1out": de_dh1out, "dh1out_dh1in": relu_d,
        "h2_in": h2_in, "h2_out": h2_out, "dE_dh2out": de_dh2out, "dh2out_dh2in": sigmoid_d,
        "o_in": o_in, "o_out": o_out, "dE_dout": de_dout, "dout_din": np.diag(softmax_jac),
    }
    matrices = {
        "dW_ij": dw_ij, "W_ij_new": w["ij"] - lr * dw_ij,
        "dW_jk": dw_jk, "W_jk_new": w["jk"] - lr * dw_jk,
        "dW_kl": dw_kl, "W_kl_new": w["kl"] - lr * dw_kl,
        "dE_dh1out_term": dh1out_term, "dE_dh2out_term": dh2out_term,
    }
    for name, v in vectors.items():
        ref.update({f"{name}[{n + 1}]": float(v[n]) for n in range(3)})
    for name, m in matrices.items():
        ref.update({f"{name}[{r + 1},{c + 1}]": float(m[r, c]) for r in range(3) for c in range(3)})
    return ref


def _close(a: float, b: float, tol: float = 1e-12) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


def test_lecture_reference_gradients_match_finite_differences():
    # The reference's own check: its ∂E/∂W against central differences of its own forward pass.
    def error(ws: dict[str, np.ndarray]) -> float:
        h1 = np.maximum(LECTURE_X @ ws["ij"] + LECTURE_BIAS, 0.0)
        h2 = 1.0 / (1.0 + np.exp(-(h1 @ ws["jk"] + LECTURE_BIAS)))
        z = h2 @ ws["kl"] + LECTURE_BIAS
        o = np.exp(z) / np.exp(z).sum()
        return float(-(LECTURE_Y * np.log(o) + (1 - LECTURE_Y) * np.log(1 - o)).sum())

    ref = lecture_reference()
    assert ref["E"] == pytest.approx(error(LECTURE_W), rel=1e-15)
    for pair in LECTURE_W:
        for r, c in np.ndindex(3, 3):
            up = {k: v.copy() for k, v in LECTURE_W.items()}
            down = {k: v.copy() for k, v in LECTURE_W.items()}
            up[pair][r, c] += 1e-6
            down[pair][r, c] -= 1e-6
            numeric = (error(up) - error(down)) / 2e-6
            assert ref[f"dW_{pair}[{r + 1},{c + 1}]"] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_slide_exact_values_equal_an_independent_float64_reference():
    t = trace.run()
    assert t.model == "slide-mlp" and t.loss_name == "bce" and t.lr == LECTURE_LR
    exact, ref = trace.slide_exact(t), lecture_reference()
    # Every quantity has a reference (a new one without a reference fails here), and no reference is unused.
    assert set(exact) == set(ref)
    wrong = {k: (exact[k], ref[k]) for k in ref if not _close(exact[k], ref[k])}
    assert not wrong, wrong


def test_compare_slides_has_an_exact_value_for_every_printed_number():
    t = trace.run(compare_slides=True)
    data = slides.load_slides()
    exact = trace.slide_exact(t)
    assert {r.id for r in data.records} <= set(exact)
    assert len(t.slides) == len(data.records)
    # Each printed number is set beside the exact value of its quantity (the independent reference's).
    ref = lecture_reference()
    assert [c.step for c in t.slides] == [r.id for r in data.records]
    wrong = [c for c in t.slides if not _close(c.exact, ref[c.step])]
    assert not wrong, wrong
    # slide 6 prints 4.001 for 1.35·0.5 + 1.27·0.7 + 1.8·0.8 + 1 = 4.004: a slip, at any precision.
    first = next(c for c in t.slides if c.step == "h2_in[3]")
    assert first.slide == 6 and not first.match and first.reason
    assert t.slips and all(line.startswith("slide ") for line in t.slips)
    d = json.loads(json.dumps(render._json_safe(t.to_dict())))
    assert set(d["slides"][0]) >= {"step", "slide", "recomputed", "exact", "match", "reason"}


def test_worked_example_json_holds_the_promised_fields(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["backprop-trace", "--format", "json", "--steps", "2"])
    assert e.value.code == 0
    d = json.loads(capsys.readouterr().out)
    assert isinstance(d["loss"], float)
    assert [layer["name"] for layer in d["layers"]] == ["h1", "h2", "o"]
    for layer in d["layers"]:
        for key in ("weight", "grad_weight", "new_weight"):
            assert np.asarray(layer[key]).shape == (3, 3)
        for key in ("bias", "grad_bias"):
            assert np.asarray(layer[key]).shape == (3,)
    assert [s["step"] for s in d["steps"]] == [0, 1, 2]


@pytest.mark.parametrize("argv,mode", [
    (["slide-conv"], "conv"), (["slide-maxpool"], "maxpool"), (["slide-avgpool"], "avgpool"),
    (["SMALL"], "network"),
])
def test_json_in_every_mode(argv, mode, tmp_path, capsys):
    model, _ = _small_cnn(tmp_path)
    argv = [model if a == "SMALL" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        cli.main(["backprop-trace", *argv, "--format", "json", "--dump", str(tmp_path / "g.npz")])
    assert e.value.code == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mode"] == mode and d["dump"] == str(tmp_path / "g.npz")
    with np.load(tmp_path / "g.npz") as f:
        assert "act_grad.input" in f.files
    if mode == "conv":
        assert np.asarray(d["grad_filter"]).shape == (2, 2) and len(d["grad_filter_sums"]) == 4
    elif mode == "network":
        assert d["layers"][-1]["name"] == "input" and isinstance(d["loss"], float)
    else:
        assert len(d["shares"]) == 16


# ---------------------------------------------------------------- convolution and pooling

def test_conv_example_spells_slides_26_and_27():
    t = trace.run("slide-conv")
    text = [f"{s.lhs} = " + " + ".join(f"{p.a}·{p.b}" for p in s.terms) for s in t.forward]
    assert text == ["O11 = F11·X11 + F12·X12 + F21·X21 + F22·X22",
                    "O12 = F11·X12 + F12·X13 + F21·X22 + F22·X23",
                    "O21 = F11·X21 + F12·X22 + F21·X31 + F22·X32",
                    "O22 = F11·X22 + F12·X23 + F21·X32 + F22·X33"]
    grads = [f"{s.lhs} = " + " + ".join(f"{p.a} {p.b}" for p in s.terms) for s in t.filter_sums]
    assert grads == ["∂E/∂F11 = ∂E/∂O11 X11 + ∂E/∂O12 X12 + ∂E/∂O21 X21 + ∂E/∂O22 X22",
                     "∂E/∂F12 = ∂E/∂O11 X12 + ∂E/∂O12 X13 + ∂E/∂O21 X22 + ∂E/∂O22 X23",
                     "∂E/∂F21 = ∂E/∂O11 X21 + ∂E/∂O12 X22 + ∂E/∂O21 X31 + ∂E/∂O22 X32",
                     "∂E/∂F22 = ∂E/∂O11 X22 + ∂E/∂O12 X23 + ∂E/∂O21 X32 + ∂E/∂O22 X33"]


@pytest.mark.parametrize("n,k", [(3, 2), (5, 3), (4, 1)])
def test_conv_example_numbers_follow_the_slides_formulas(n, k):
    rng = np.random.default_rng(n * 10 + k)
    x, f = rng.standard_normal((n, n)), rng.standard_normal((k, k))
    m = n - k + 1
    dy = rng.standard_normal((m, m))
    t = trace.run("slide-conv", input=_csv(x), filter=_csv(f), upstream=_csv(dy))
    o = np.array([[sum(f[a, b] * x[p + a, q + b] for a in range(k) for b in range(k)) for q in range(m)]
                  for p in range(m)])
    df = np.array([[sum(dy[p, q] * x[p + a, q + b] for p in range(m) for q in range(m)) for b in range(k)]
                   for a in range(k)])
    dx = np.zeros_like(x)
    for p, q, a, b in np.ndindex(m, m, k, k):
        dx[p + a, q + b] += dy[p, q] * f[a, b]
    assert np.allclose(t.output, o, rtol=1e-12, atol=1e-12)
    assert np.allclose(t.grad_filter, df, rtol=1e-12, atol=1e-12)
    assert np.allclose(t.grad_input, dx, rtol=1e-12, atol=1e-12)
    for s in t.forward + t.filter_sums + t.input_sums:
        assert sum(p.va * p.vb for p in s.terms) == pytest.approx(s.value, rel=1e-12, abs=1e-12)


def test_maxpool_sends_each_gradient_to_its_windows_maximum():
    t = trace.run("slide-maxpool")
    x, dy = t.x, t.upstream
    expect = np.zeros_like(x)
    for (p, q), cells in zip(np.ndindex(dy.shape), t.windows):
        r, c = max(cells, key=lambda rc: x[rc])
        assert cells == [(2 * p + a, 2 * q + b) for a in range(2) for b in range(2)]
        assert t.output[p, q] == x[r, c]
        share = np.zeros_like(x)
        share[r, c] = 1.0
        assert np.array_equal(t.shares[p, q], share)
        expect[r, c] += dy[p, q]
    assert np.array_equal(t.grad_input, expect)


def test_avgpool_shares_each_gradient_equally():
    t = trace.run("slide-avgpool", input=",".join(str(v) for v in range(36)), upstream=",".join("123456789"))
    assert t.x.shape == (6, 6) and t.output.shape == (3, 3)
    for (p, q), cells in zip(np.ndindex(t.output.shape), t.windows):
        assert t.output[p, q] == pytest.approx(np.mean([t.x[rc] for rc in cells]))
        for rc in cells:
            assert t.shares[(p, q) + rc] == 0.25
            assert t.grad_input[rc] == t.upstream[p, q] / 4
        assert t.shares[p, q].sum() == 1.0


# ------------------------------------------------------------------------- any network

def _small_cnn(tmp_path: Path) -> tuple[str, np.ndarray]:
    model = tmp_path / "small-cnn.yaml"
    model.write_text(SMALL_CNN, encoding="utf-8")
    x = np.random.default_rng(5).standard_normal((2, 6, 6))
    np.save(tmp_path / "x.npy", x)
    return str(model), x


def test_dump_gradients_match_finite_differences(tmp_path):
    model, x = _small_cnn(tmp_path)
    dump = tmp_path / "grads.npz"
    t = trace.run(model, input=str(tmp_path / "x.npy"), target="1", dump=dump)
    assert t.dump == str(dump) and not list(tmp_path.glob(".*part"))
    with np.load(dump) as f:
        saved = {k: f[k] for k in f.files}
    y = np.zeros((1, 3))
    y[0, 1] = 1
    xb = x[None].copy()
    net, energy = _energy(model, "cross_entropy", xb, y)
    assert set(net.params) <= set(saved)
    assert {f"act_grad.{n.name}" for n in net.graph.nodes} - {"act_grad.softmax1"} <= set(saved)
    rng = np.random.default_rng(0)
    for key, p in net.params.items():
        flat = list(np.ndindex(p.shape))
        for i in rng.choice(len(flat), min(len(flat), 12), replace=False):
            idx = flat[i]
            assert saved[key][idx] == pytest.approx(central_difference(p, idx, energy), rel=1e-6, abs=1e-9), (key, idx)
    for idx in [(0, 0, 0, 0), (0, 1, 2, 3), (0, 0, 5, 5), (0, 1, 4, 1)]:
        assert saved["act_grad.input"][idx] == pytest.approx(central_difference(xb, idx, energy), rel=1e-6, abs=1e-9)


def test_network_trace_rows_run_from_the_output_to_the_input(tmp_path):
    model, _ = _small_cnn(tmp_path)
    t = trace.run(model, input=str(tmp_path / "x.npy"), lr=0.1)
    names = [r.name for r in t.layers]
    assert names[0] == "softmax1" and names[-1] == "input" and names[-2] == "conv1"
    conv = t.layers[-2]
    assert conv.shape == (3, 6, 6)
    assert conv.update_ratio == pytest.approx(0.1 * conv.weight_grad_norm / conv.weight_norm)
    relu = next(r for r in t.layers if r.kind == "relu")
    assert 0 <= relu.dead <= 1
    assert [r.dead is None for r in t.layers if r.kind != "relu"] == [True] * (len(t.layers) - 1)
    assert all(r.grad_norm and r.grad_norm > 0 for r in t.layers[1:])


# ---------------------------------------------------------------------------- user errors

@pytest.mark.parametrize("argv,message", [
    (["--input", "1,2"], "gives 2 values"),
    (["--input", "0.1,,0.7"], "empty item"),
    (["--input", "0.1,x,0.7"], "not a number"),
    (["--target", "3"], "out of range"),
    (["--target", "-1"], "out of range"),
    (["--target", "1,0"], "3 outputs"),
    (["--target", "one"], "class index"),
    (["--lr", "0"], "positive"),
    (["--steps", "0"], ""),
    (["--filter", "1,2,3,4"], "does not apply"),
    (["--compare-slides", "--input", "0.2,0.2,0.6"], "lecture's own numbers"),
    (["slide-conv", "--filter", "1,2,3"], "square grid"),
    (["slide-conv", "--upstream", "1,2"], "2×2"),
    (["slide-conv", "--input", "1,2,3,4", "--filter", "1,2,3,4,5,6,7,8,9"], "larger than the input"),
    (["slide-maxpool", "--input", "1"], "at least 2×2"),
    (["slide-maxpool", "--target", "1"], "does not apply"),
    (["no-such-model"], "slide-conv"),
])
def test_bad_values_are_user_errors(argv, message, capsys):
    code, _, err = run_main(["backprop-trace", *argv], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_bad_input_arrays_and_checkpoints_are_user_errors(tmp_path, capsys):
    model, _ = _small_cnn(tmp_path)
    np.save(tmp_path / "wrong.npy", np.zeros((3, 6, 6)))
    code, _, err = run_main(["backprop-trace", model, "--input", str(tmp_path / "wrong.npy")], capsys)
    assert code == 2 and "3×6×6" in err and "2×6×6" in err
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    code, _, err = run_main(["backprop-trace", model, "--input", str(tmp_path / "junk.npy")], capsys)
    assert code == 2 and "not a .npy array file: it is a text file" in err
    net = Network(graph.build(spec.load("slide-mlp")), dtype="float64")
    state = net.state_dict()
    state["h2.weight"] = np.zeros((3, 4))
    np.savez(tmp_path / "other.npz", **state)
    code, _, err = run_main(["backprop-trace", "--weights", str(tmp_path / "other.npz")], capsys)
    assert code == 2 and "h2.weight" in err
    with pytest.raises(CheckpointError):
        trace.run(weights=tmp_path / "missing.npz")
    with pytest.raises(UsageError, match="folder"):
        trace.run(dump=tmp_path / "no" / "g.npz")


def test_a_sample_out_of_range_is_a_user_error(monkeypatch, capsys):
    from cnncli import data

    monkeypatch.setattr(data, "load", lambda *a, **k: (np.zeros((4, 1, 28, 28), np.uint8), np.arange(4)))
    code, _, err = run_main(["backprop-trace", "lenet5", "--sample", "4"], capsys)
    assert code == 2 and "out of range" in err and "0..3" in err
    t = trace.run("lenet5", sample=2)
    assert t.target == "class 2" and "test image 2" in t.input_source
    code, _, err = run_main(["backprop-trace", "slide-mlp", "--sample", "0"], capsys)
    assert code == 2 and "no dataset" in err


def test_weights_load_from_a_checkpoint(tmp_path):
    net = Network(graph.build(spec.load("slide-mlp")), dtype="float64")
    net.params["o.weight"][...] = 0.5
    np.savez(tmp_path / "ckpt.npz", **net.state_dict(), **{"meta.epoch": np.array(3)})
    t = trace.run(weights=tmp_path / "ckpt.npz")
    assert np.all(t.layers[2].weight == 0.5)


# ------------------------------------------------------------------------------ golden

@pytest.mark.parametrize("name,kwargs", [
    ("slide_mlp", {}),
    ("slide_mlp_compare", {"compare_slides": True}),
    ("slide_mlp_ce_steps", {"loss": "ce", "steps": 3}),
    ("slide_conv", {"model": "slide-conv"}),
    ("slide_maxpool", {"model": "slide-maxpool"}),
    ("slide_avgpool", {"model": "slide-avgpool"}),
])
def test_golden_tables(name, kwargs, golden):
    golden(f"trace_{name}.txt", _render(trace.run(**kwargs)))


def test_golden_network_table(tmp_path, monkeypatch, golden):
    _small_cnn(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative names, so the table does not depend on where tmp_path is
    golden("trace_small_cnn.txt", _render(trace.run("small-cnn.yaml", input="x.npy", target="2", steps=2)))


def test_trace_weights_go_through_checkpoint_load(tmp_path):
    """--weights is read by checkpoint.load: its format and corruption checks apply to the trace too."""
    from cnncli.records import checkpoint

    net = Network(graph.build(spec.load("slide-mlp")), dtype="float64")
    checkpoint.save(tmp_path / "new.npz", net.state_dict(), {}, {})
    with np.load(tmp_path / "new.npz") as f:
        state = {k: f[k] for k in f.files}
    state["meta.format"] = np.array(checkpoint.FORMAT + 1)
    np.savez(tmp_path / "newer.npz", **state)
    with pytest.raises(CheckpointError, match="newer version"):
        trace.run(weights=tmp_path / "newer.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match=r"single array \(.npy\)"):
        trace.run(weights=tmp_path / "one.npy")
    with pytest.raises(CheckpointError, match="folder"):
        trace.run(weights=tmp_path)
    assert trace.run(weights=tmp_path / "new.npz").model == "slide-mlp"


def test_a_sample_reaches_a_larger_colour_network_as_training_images_do(monkeypatch, tmp_path):
    from cnncli import data

    digits = np.random.default_rng(1).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    monkeypatch.setattr(data, "load", lambda *a, **k: (digits, np.arange(4)))
    model = tmp_path / "colour.yaml"
    model.write_text("input: [3, 32, 32]\nclasses: 10\ntrain: {dataset: mnist}\nlayers:\n"
                     "  - conv: {filters: 2, kernel: 5, stride: 4}\n  - flatten\n  - dense: {units: 10}\n")
    t = trace.run(str(model), sample=1)
    assert "28×28 padded to 32×32 with zeros, grey replicated into 3 channels" in t.input_source
    # the same pass by hand: the digit normalised, bordered with the normalised zero, in all three channels
    x = np.full((1, 3, 32, 32), (0 - 0.1307) / 0.3081)
    x[:, :, 2:30, 2:30] = data.normalise(digits[1:2], np.float64, "mnist")[0, 0]
    net = Network(graph.build(spec.load(str(model))), dtype="float64", seed=0)
    want, _ = net.loss_and_backward(x, np.array([1]), losses.get("cross_entropy"))
    assert t.loss == pytest.approx(want, rel=1e-12)
    assert t.predicted == int(net.values[net.graph.output].argmax())


def test_a_sample_comes_from_the_dataset_the_weights_were_trained_on(monkeypatch, tmp_path):
    """--sample with --weights takes the checkpoint's dataset (as eval, predict and features do), not the file's."""
    from cnncli import data
    from cnncli.records import checkpoint

    asked = []

    def load(name, *a, **k):
        asked.append(name)
        return np.zeros((4, 1, 28, 28), np.uint8), np.arange(4)

    monkeypatch.setattr(data, "load", load)
    net = Network(graph.build(spec.load("lenet5")), dtype="float64")
    checkpoint.save(tmp_path / "fashion.npz", net.state_dict(), {}, {"config": {"dataset": "fashion-mnist"}})
    t = trace.run("lenet5", sample=3, weights=tmp_path / "fashion.npz")
    assert asked == ["fashion-mnist"] and t.input_source.startswith("fashion-mnist test image 3")
    t = trace.run("lenet5", sample=3)  # without weights: the model file's dataset
    assert asked[-1] == "mnist" and t.input_source.startswith("mnist test image 3")
