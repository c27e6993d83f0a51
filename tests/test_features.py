"""``cnncli features``: one image's activation maps against a slow reference, pictures, files, mistakes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, TINY_MAPS, blocks_checkpoint, mnist_checkpoint, needs_mnist, run_main
from rich.console import Console

from cnncli import data
from cnncli.commands import features
from cnncli.errors import UsageError
from cnncli.model import graph, spec
from cnncli.render import features as render

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture
def trained(tmp_path):
    """A model file and a checkpoint of random weights that says it was trained on MNIST."""
    model = tmp_path / "tiny.yaml"
    model.write_text(TINY_MAPS.format(c=1))
    ckpt = tmp_path / "tiny.npz"
    return model, ckpt, mnist_checkpoint(model, ckpt, seed=4)


@pytest.fixture
def digit(tmp_path):
    pixels = np.zeros((28, 28), np.uint8)
    pixels[6:22, 12:16] = 255   # a "1"
    pixels[6:9, 9:16] = 200
    path = tmp_path / "one.png"
    PIL.fromarray(pixels, mode="L").save(path)
    return path, pixels


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """A slow, obvious convolution: x (C, H, W), w (F, C, k, k) → (F, H', W')."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    f, _, k, _ = w.shape
    out = np.zeros((f, x.shape[1] - k + 1, x.shape[2] - k + 1))
    for o in range(f):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                out[o, i, j] = np.sum(x[:, i:i + k, j:j + k] * w[o]) + b[o]
    return out


def test_maps_are_the_layers_outputs_computed_by_hand(trained, digit):
    model, ckpt, net = trained
    path, pixels = digit
    result = features.features(str(model), ckpt, image=path)
    p = {k: v.astype(np.float64) for k, v in net.params.items()}
    x = data.normalise(pixels[None, None], np.float64, "mnist")[0]
    c1 = _conv(x, p["conv1.weight"], p["conv1.bias"], 2)
    pooled = np.maximum(c1, 0).reshape(3, 14, 2, 14, 2).max(axis=(2, 4))
    deep = _conv(pooled, p["deep.weight"], p["deep.bias"], 0)
    first, second = result.layers
    assert (first.name, first.shape, second.name, second.shape) == ("conv1", (3, 28, 28), "deep", (4, 12, 12))
    np.testing.assert_allclose(first.values, c1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(second.values, deep, rtol=1e-4, atol=1e-5)
    for s, m in zip(second.stats, deep):
        assert s.min == pytest.approx(m.min(), abs=1e-5) and s.max == pytest.approx(m.max(), abs=1e-5)
    np.testing.assert_array_equal(result.filters.values, p["conv1.weight"])
    assert result.guesses[0].probability >= result.guesses[1].probability


def test_each_map_is_scaled_from_its_min_to_its_max():
    a = np.array([[[1.0, 3.0], [2.0, 5.0]], [[7.0, 7.0], [7.0, 7.0]]])
    b = features.scale_to_bytes(a, (1, 2))
    assert b.dtype == np.uint8
    np.testing.assert_array_equal(b[0], [[0, 128], [64, 255]])
    np.testing.assert_array_equal(b[1], 0)  # a constant map is black


def test_a_colour_networks_filters_are_colour_pictures(tmp_path, digit):
    model = tmp_path / "colour.yaml"
    model.write_text(TINY_MAPS.format(c=3))
    ckpt = tmp_path / "c.npz"
    mnist_checkpoint(model, ckpt, seed=1)
    result = features.features(str(model), ckpt, image=digit[0], layers=["deep"], max_maps=2)
    assert result.filters.pictures.shape == (3, 3, 5, 5)
    assert [m.name for m in result.layers] == ["deep"] and result.layers[0].pictures.shape == (2, 12, 12)
    for f in result.filters.pictures:  # the three channels of a filter share one scale
        assert f.min() == 0 and f.max() == 255


def test_fit_enlarges_small_maps_and_shrinks_wide_ones():
    small = np.arange(25, dtype=np.uint8).reshape(1, 5, 5)
    assert render.fit(small, 80).shape == (1, 15, 15)  # ×3 to reach 12 columns
    wide = np.full((1, 10, 200), 100, np.uint8)
    assert render.fit(wide, 60).shape == (1, 3, 50) and (render.fit(wide, 60) == 100).all()


def test_terminal_snapshot(trained, digit, golden, tmp_path, monkeypatch):
    model, ckpt, _ = trained
    monkeypatch.chdir(tmp_path)  # relative paths: lines wrap at the same place wherever tmp_path is
    result = features.features(model.name, Path(ckpt.name), image=Path(digit[0].name), max_maps=3)
    buf = io.StringIO()
    render.show(result, "table", Console(file=buf, width=80, force_terminal=False, color_system=None))
    golden("features-tiny.txt", buf.getvalue())


def test_json_and_file(trained, digit, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model, ckpt, _ = trained
    out = tmp_path / "maps.png"
    code, stdout, err = run_main(["features", str(model), "--checkpoint", str(ckpt), "--image", str(digit[0]),
                                  "--format", "json", "--out", str(out)], capsys)
    assert code == 0, err
    record = json.loads(stdout)
    result = features.features(str(model), ckpt, image=digit[0])
    assert record["file"] == str(out)
    assert [layer["layer"] for layer in record["layers"]] == ["conv1", "deep"]
    np.testing.assert_allclose(record["layers"][1]["maps"][2]["values"], result.layers[1].values[2], atol=1e-6)
    assert record["prediction"][0]["class"] == result.guesses[0].label
    with PIL.open(out) as image:
        image.load()
        assert image.width > 300


@needs_mnist
def test_a_test_image_of_the_dataset(trained, capsys, monkeypatch):
    monkeypatch.setenv("CNNCLI_DATA", str(DATA))
    model, ckpt, _ = trained
    result = features.features(str(model), ckpt, sample=0, layers=["conv1"])
    images, labels = data.load("mnist", "test")
    np.testing.assert_array_equal(result.pixels, images[0])
    assert result.label == labels[0] and "MNIST test image 0" in result.source
    code, _, err = run_main(["features", str(model), "--checkpoint", str(ckpt), "--sample", "10000"], capsys)
    assert code == 2 and "--sample 10000 is out of range" in err


MISTAKES = [
    (["--layer", "conv"], "--layer conv: model 'tiny-maps' has no layer or block of that name — did you mean 'conv1'"),
    (["--layer", "dense1"], "--layer dense1: its output is 10, not maps"),
    (["--layer", "flatten1"], "not maps"),
    (["--max-maps", "0"], "--max-maps"),
]


@pytest.mark.parametrize("args,message", MISTAKES, ids=[m for _, m in MISTAKES])
def test_mistakes_exit_2(trained, digit, capsys, args, message):
    model, ckpt, _ = trained
    code, _, err = run_main(["features", str(model), "--checkpoint", str(ckpt), "--image", str(digit[0]), *args],
                            capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_block_is_shown_by_its_output(tmp_path, digit, capsys):
    """--layer names a layer or a block, as --freeze does; a block's maps are its output's, what the next layer
    reads. A name the model does not have gets the names it has, and the command that lists them all."""
    model, ckpt = blocks_checkpoint(tmp_path)
    g = graph.build(spec.load(str(model)))
    result = features.features(str(model), ckpt, image=digit[0], layers=["stage1", "stage2", "stage2.0.conv1"],
                               max_maps=1)
    assert [m.name for m in result.layers] == [*g["maxpool1"].inputs, *g["flatten1"].inputs, "stage2.0.conv1"]
    assert result.layers[1].name == "stage2.1.relu2"
    code, _, err = run_main(["features", str(model), "--weights", str(ckpt), "--image", str(digit[0]), "--layer",
                             "stage3"], capsys)
    text = " ".join(err.split())
    assert code == 2 and "--layer stage3: model 'tiny-blocks' has no layer or block of that name" in text
    assert ("Its layers and blocks: stem, stage1, maxpool1, stage2, flatten1, fc; a block's layers go on after a "
            "dot, as stage1.conv1.") in text
    assert f"`cnncli summarize {model}` lists every name" in text


def test_one_image_exactly(trained, digit, tmp_path, capsys):
    model, ckpt, _ = trained
    with pytest.raises(UsageError, match="give one image"):
        features.features(str(model), ckpt)
    with pytest.raises(UsageError, match="give one image"):
        features.features(str(model), ckpt, sample=0, image=digit[0])
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    code, _, err = run_main(["features", str(model), "--checkpoint", str(ckpt), "--image", str(text)], capsys)
    assert code == 2 and "cannot read" in err
