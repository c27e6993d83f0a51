"""``cnncli explain``: each method against an independent computation, the command, its mistakes and files.

The references: Grad-CAM's channel weights from central differences of the class score with respect to the
layer's activations, the rest of the network run from that layer as a model of its own; the saliency map from
central differences with respect to the input pixels; occlusion from plain forward passes of the occluded
images one at a time. All in float64, on a tiny model with batch norm (running statistics far from the batch's)
and dropout, so that a pass in training mode would not match.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, blocks_checkpoint, mnist_checkpoint, needs_mnist, run_main
from rich.cells import cell_len
from rich.console import Console

from cnncli import data
from cnncli.commands import explain
from cnncli.engine.network import Network
from cnncli.errors import UsageError
from cnncli.model import graph, spec
from cnncli.records import checkpoint
from cnncli.render import explain as render

PIL = pytest.importorskip("PIL.Image")

TINY = """
name: tiny-explain
input: [3, 28, 28]
classes: 10
train: {dataset: mnist}
layers:
  - conv: {name: c1, filters: 3, kernel: 5, stride: 2}      # 3×12×12
  - batchnorm: {name: bn1}
  - relu
  - maxpool: {kernel: 2}                                     # 3×6×6
  - conv: {name: deep, filters: 4, kernel: 3, padding: 1}    # 4×6×6
  - batchnorm: {name: bn2}
  - tanh: {name: act}
  - dropout: {rate: 0.5}
  - flatten
  - dense: {name: out, units: 10}
"""

#: The layers after ``deep`` as a model of their own: the class scores as a function of deep's output.
REST = """
name: rest
input: [4, 6, 6]
classes: 10
layers:
  - batchnorm: {name: bn2}
  - tanh: {name: act}
  - dropout: {rate: 0.5}
  - flatten
  - dense: {name: out, units: 10}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model's file, a float64 checkpoint of it (batch norm with made-up running statistics), its
    network and a digit picture; the checkpoint says it was trained on MNIST (grey, replicated into 3)."""
    folder = tmp_path_factory.mktemp("explain")
    model = folder / "tiny.yaml"
    model.write_text(TINY)
    net = Network(graph.build(spec.load(str(model))), "float64", seed=5)
    rng = np.random.default_rng(7)
    for name in ("bn1", "bn2"):
        c = net.buffers[f"{name}.running_mean"].shape
        net.buffers[f"{name}.running_mean"][...] = rng.normal(0, 0.5, c)
        net.buffers[f"{name}.running_var"][...] = rng.uniform(0.3, 2.0, c)
        net.params[f"{name}.weight"][...] = rng.uniform(0.5, 1.5, c)
        net.params[f"{name}.bias"][...] = rng.normal(0, 0.3, c)
    ckpt = folder / "tiny.npz"
    checkpoint.save(ckpt, net.state_dict(), {}, {"config": {"dataset": "mnist", "dtype": "float64"}})
    # A stroke on noise: no two pixels alike, so no max pooling window has a tie (where the gradient jumps)
    pixels = rng.integers(0, 60, (28, 28)).astype(np.uint8)
    pixels[5:23, 12:16] += 190
    pixels[5:9, 8:12] += 120
    image = folder / "one.png"
    PIL.fromarray(pixels, mode="L").save(image)
    return model, ckpt, net, image, pixels


def _input(pixels: np.ndarray) -> np.ndarray:
    """The network's input for the picture: MNIST's normalisation, grey into three channels, (1, 3, 28, 28)."""
    return np.repeat(data.normalise(pixels[None, None], np.float64, "mnist"), 3, axis=1)


def _scores(net: Network, x: np.ndarray) -> np.ndarray:
    """Class scores of a batch, a plain forward pass in inference mode."""
    return net.forward(x, train=False)


def _central_differences(f, x: np.ndarray, target: int, eps: float = 1e-6) -> np.ndarray:
    """∂ f(x)[target] / ∂x by central differences, every entry of x (1, ...) perturbed in one batch."""
    n = x[0].size
    steps = np.eye(n).reshape(n, *x.shape[1:]) * eps
    up, down = f(x + steps)[:, target], f(x - steps)[:, target]
    return ((up - down) / (2 * eps)).reshape(x.shape[1:])


def test_grad_cam_weights_are_the_mean_gradient_of_the_class_score(tiny):
    model, ckpt, net, image, pixels = tiny
    result = explain.explain(str(model), ckpt, image=image, method="gradcam", layer="deep", target="3")
    x = _input(pixels)
    _scores(net, x)
    a = net.values["deep"].copy()                                       # (1, 4, 6, 6)
    own = ("bn2.", "out.")
    rest = Network(graph.build(_rest_spec(model)), "float64",
                   params={k: v for k, v in net.params.items() if k.startswith(own)},
                   buffers={k: v for k, v in net.buffers.items() if k.startswith(own)})
    np.testing.assert_allclose(_scores(rest, a), _scores(net, x), rtol=1e-12)  # the rest is the rest
    grad = _central_differences(lambda b: _scores(rest, b), a, 3)          # ∂y_3/∂A, (4, 6, 6)
    alpha = grad.mean(axis=(1, 2))
    cam = np.maximum(np.tensordot(alpha, a[0], axes=1), 0)
    assert (result.layer, result.layer_shape, result.target) == ("deep", (4, 6, 6), 3)
    np.testing.assert_allclose(result.channel_weights, alpha, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(result.raw, cam, rtol=1e-6, atol=1e-9)
    assert result.map.shape == (28, 28)
    assert cam.max() > 0  # the check above compared something


def _rest_spec(model: Path):
    path = model.parent / "rest.yaml"
    path.write_text(REST)
    return spec.load(str(path))


def test_saliency_is_the_largest_input_gradient_over_the_channels(tiny):
    model, ckpt, net, image, pixels = tiny
    result = explain.explain(str(model), ckpt, image=image, method="saliency")
    x = _input(pixels)
    predicted = int(np.argmax(_scores(net, x)[0]))
    grad = _central_differences(lambda b: _scores(net, b), x, predicted)   # (3, 28, 28)
    assert result.target == predicted and result.guesses[0].label == predicted
    assert not np.allclose(grad[0], grad[1])  # the three channels differ: the max over them is tested
    np.testing.assert_allclose(result.raw, np.abs(grad).max(axis=0), rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(result.map, result.raw)


def test_occlusion_is_the_drop_of_the_class_probability_image_by_image(tiny):
    model, ckpt, net, image, pixels = tiny
    result = explain.explain(str(model), ckpt, image=image, method="occlusion", patch=5, stride=3, target="2")
    x = _input(pixels)

    def probability(batch):
        z = _scores(net, batch)[0]
        e = np.exp(z - z.max())
        return (e / e.sum())[2]

    base = probability(x)
    starts = [0, 3, 6, 9, 12, 15, 18, 21, 23]  # every 3 pixels, the last flush with the border
    drops = np.zeros((len(starts), len(starts)))
    for i, y in enumerate(starts):
        for j, x0 in enumerate(starts):
            hidden = x.copy()
            hidden[:, :, y:y + 5, x0:x0 + 5] = 0   # the training mean after normalisation
            drops[i, j] = base - probability(hidden)
    assert (result.patch, result.stride, result.target) == (5, 3, 2)
    assert result.probability == pytest.approx(base, rel=1e-12)
    np.testing.assert_allclose(result.raw, drops, rtol=1e-9, atol=1e-12)
    for py, px in [(0, 0), (4, 10), (22, 23), (27, 27)]:
        covering = [drops[i, j] for i, y in enumerate(starts) for j, x0 in enumerate(starts)
                    if y <= py < y + 5 and x0 <= px < x0 + 5]
        assert result.map[py, px] == pytest.approx(np.mean(covering), rel=1e-9, abs=1e-12)


def test_upsampling_is_pytorchs_bilinear():
    torch = pytest.importorskip("torch")
    a = np.random.default_rng(0).normal(size=(5, 7))
    want = torch.nn.functional.interpolate(torch.tensor(a)[None, None], size=(28, 31), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(explain.upsample(a, (28, 31)), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model,layer", [
    ("lenet5", "tanh2"), ("lenet5-1998", "tanh4"), ("resnet20", "layer3.1.relu2"), ("resnet18", "layer4.1.relu2"),
    ("resnet50", "layer4.2.relu3"), ("vgg16", "relu5_3"), ("alexnet", "relu5"), ("googlenet", "inception5b.cat"),
])
def test_the_default_layer_is_the_last_convolutional_blocks_output(model, layer):
    from cnncli.engine import losses

    g = graph.build(spec.load(model), aux=False)
    chosen = explain.default_layer(g, explain.score_node(g, losses.get(g.spec.loss)))
    assert chosen.name == layer


def test_the_class_is_a_name_or_an_index():
    classes = ["cat", "dog", "bird"]
    assert explain.choose_class(None, classes, 2) == 2
    assert explain.choose_class("dog", classes, 0) == 1
    assert explain.choose_class("2", classes, 0) == 2
    with pytest.raises(UsageError, match=r"--class 3 is out of range: the model has 3 classes \(0..2\)"):
        explain.choose_class("3", classes, 0)
    with pytest.raises(UsageError, match="did you mean 'dog'"):
        explain.choose_class("dgo", classes, 0)


# ----------------------------------------------------------------------------------------- the command

@needs_mnist
@pytest.mark.parametrize("method", list(explain.METHODS))
def test_lenet5_on_a_test_image(method, lenet_checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("CNNCLI_DATA", str(DATA))
    path, net = lenet_checkpoint
    code, out, err = run_main(["explain", "lenet5", "--weights", str(path), "--sample", "0", "--method", method],
                              capsys)
    assert code == 0, err
    words = " ".join(out.split())
    assert "MNIST test image 0 (class 7)" in words and f"{explain.METHODS[method].title} of class" in words
    # Within 80 columns, but for a word longer than a line (the checkpoint's path), which stands alone whole.
    assert max(cell_len(line) for line in out.splitlines() if len(line.split()) > 1) <= 80
    code, out, err = run_main(["explain", "lenet5", "--weights", str(path), "--sample", "0", "--method", method,
                               "--class", "4", "--format", "json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    size = {"gradcam": [10, 10], "saliency": [28, 28], "occlusion": [13, 13]}[method]
    assert (record["method"], record["class"], record["name"]) == (method, 4, "4")
    assert record["map_shape"] == size and np.array(record["map"]).shape == tuple(size)
    assert record["upsampled_shape"] == [28, 28] and record["label"] == 7
    assert record["layer"] == ("tanh2" if method == "gradcam" else None)
    z = net.forward(data.normalise(data.load("mnist", "test")[0][:1], np.float32, "mnist"))[0].astype(np.float64)
    assert record["probability"] == pytest.approx(np.exp(z[4] - z.max()) / np.exp(z - z.max()).sum(), rel=1e-5)


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    """ResNet-20 of random weights (seed 2) that says it was trained on MNIST (28×28 padded to 32, grey in 3)."""
    path = tmp_path_factory.mktemp("resnet20") / "resnet20.npz"
    mnist_checkpoint("resnet20", path, seed=2)
    return path


@needs_mnist
@pytest.mark.parametrize("method,extra,size", [
    ("gradcam", [], [8, 8]), ("saliency", [], [32, 32]), ("occlusion", ["--patch", "8", "--stride", "8"], [4, 4])])
def test_resnet20_on_a_test_image(method, extra, size, resnet20, capsys, monkeypatch):
    monkeypatch.setenv("CNNCLI_DATA", str(DATA))
    code, out, err = run_main(["explain", "resnet20", "--weights", str(resnet20), "--sample", "3",
                               "--method", method, *extra, "--format", "json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["map_shape"] == size and record["upsampled_shape"] == [32, 32]
    assert record["input"] == "28×28 padded to 32×32 with zeros, grey replicated into 3 channels"
    if method == "gradcam":
        assert record["layer"] == "layer3.1.relu2" and record["layer_shape"] == [64, 8, 8]
        assert len(record["channel_weights"]) == 64


def test_the_picture_file(tiny, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model, ckpt, _, image, _ = tiny
    out = tmp_path / "cam.png"
    code, stdout, err = run_main(["explain", str(model), "--weights", str(ckpt), "--image", str(image),
                                  "--out", str(out)], capsys)
    assert code == 0, err
    assert f"wrote {out}" in stdout.replace("\n", " ")
    with PIL.open(out) as picture:
        picture.load()
        assert picture.format == "PNG" and picture.width > 600


MISTAKES = [
    (["--layer", "dep"], "--layer dep: model 'tiny-explain' has no layer or block of that name — did you mean 'deep'"),
    (["--layer", "out"], "--layer out: its output is 10, not maps"),
    (["--class", "10"], "--class 10 is out of range: the model has 10 classes (0..9)"),
    (["--class", "seven"], "--class seven: not a class name or index"),
    (["--method", "saliency", "--layer", "deep"], "--layer is an option of --method gradcam, not of saliency"),
    (["--patch", "4"], "--patch is an option of --method occlusion, not of gradcam"),
    (["--method", "occlusion", "--patch", "40"], "--patch 40 is larger than the model's 28×28 input"),
    (["--method", "occlusion", "--patch", "4", "--stride", "5"], "--stride 5 is more than the square's side (4)"),
    (["--method", "occlusion", "--stride", "0"], "--stride must be at least 1 pixel"),
    (["--out", "cam.gif"], "--out cam.gif: the file type"),
]


@pytest.mark.parametrize("args,message", MISTAKES, ids=[m for _, m in MISTAKES])
def test_mistakes_exit_2(tiny, capsys, args, message):
    model, ckpt, _, image, _ = tiny
    code, out, err = run_main(["explain", str(model), "--weights", str(ckpt), "--image", str(image), *args], capsys)
    assert code == 2 and message in " ".join(err.split()) and "Traceback" not in err, err


def test_a_block_is_explained_at_its_output(tiny, tmp_path, capsys):
    """--layer stage2 (a group of two blocks) is Grad-CAM at the group's output, what the layers after it read:
    the same map as naming that layer."""
    model, ckpt = blocks_checkpoint(tmp_path, "float64")
    image = tiny[3]
    code, out, err = run_main(["explain", str(model), "--weights", str(ckpt), "--image", str(image), "--layer",
                               "stage2", "--format", "json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    g = graph.build(spec.load(str(model)))
    assert [record["layer"]] == list(g["flatten1"].inputs) == ["stage2.1.relu2"]
    assert record["layer_shape"] == list(g["stage2.1.relu2"].out_shape)
    named = explain.explain(str(model), ckpt, image=image, layer="stage2.1.relu2")
    np.testing.assert_allclose(record["map"], named.raw, atol=1e-8)


def test_a_file_that_is_not_an_image(tiny, tmp_path, capsys):
    model, ckpt, _, _, _ = tiny
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    code, _, err = run_main(["explain", str(model), "--weights", str(ckpt), "--image", str(text)], capsys)
    assert code == 2 and f"cannot read {text}" in err and "Traceback" not in err
    with pytest.raises(UsageError, match="give one image"):
        explain.explain(str(model), ckpt)


def test_the_colour_picture_keeps_to_80_columns(tiny):
    model, ckpt, _, image, _ = tiny
    result = explain.explain(str(model), ckpt, image=image)
    buf = io.StringIO()
    render.show(result, "table", Console(file=buf, width=80, force_terminal=True, color_system="truecolor"))
    text = buf.getvalue()
    assert "\x1b[38;2;" in text  # drawn in colour
    lines = re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines()
    assert max(cell_len(line) for line in lines) <= 80


def test_grad_cam_needs_a_spatial_layer(tiny, tmp_path, capsys):
    _, _, _, image, _ = tiny
    model = tmp_path / "flat.yaml"
    model.write_text("name: flat\ninput: [1, 28, 28]\nclasses: 10\ntrain: {dataset: mnist}\n"
                     "layers:\n  - flatten\n  - dense: {units: 10}\n")
    ckpt = tmp_path / "flat.npz"
    mnist_checkpoint(model, ckpt, seed=1)
    code, _, err = run_main(["explain", str(model), "--weights", str(ckpt), "--image", str(image)], capsys)
    assert code == 2 and "no layer whose output is a spatial map" in " ".join(err.split())
    code, out, err = run_main(["explain", str(model), "--weights", str(ckpt), "--image", str(image),
                               "--method", "saliency", "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["map_shape"] == [28, 28], err
