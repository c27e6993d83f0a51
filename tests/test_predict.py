"""``cnncli predict``: image files through a checkpoint, against the same pass done by hand."""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest

from cnncli import checkpoint, data, predict
from cnncli.cli import main
from cnncli.engine.network import Network
from cnncli.errors import UsageError
from cnncli.model import graph, spec

PIL = pytest.importorskip("PIL.Image")

TINY = """
name: tiny-digits
input: [1, 28, 28]
classes: 10
train: {dataset: mnist}
layers:
  - conv: {filters: 2, kernel: 5, stride: 3}
  - relu
  - flatten
  - dense: {units: 10}
"""


@pytest.fixture
def trained(tmp_path):
    """A model file and a checkpoint of random weights that says it was trained on MNIST."""
    model = tmp_path / "tiny.yaml"
    model.write_text(TINY)
    net = Network(graph.build(spec.load(str(model))), "float32", seed=4)
    ckpt = tmp_path / "tiny.npz"
    checkpoint.save(ckpt, net.state_dict(), {}, {"config": {"dataset": "mnist", "dtype": "float32"}})
    return model, ckpt, net


def _png(path, array, mode):
    PIL.fromarray(array, mode=mode).save(path)
    return path


def test_an_image_of_the_datasets_size_is_predicted_as_the_network_computes_it(trained, tmp_path):
    model, ckpt, net = trained
    rng = np.random.default_rng(0)
    digit = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    f = _png(tmp_path / "digit.png", digit, "L")
    result = predict.predict(str(model), ckpt, [f], top_k=3)
    logits = net.forward(data.normalise(digit[None, None], np.float32, "mnist"))[0].astype(np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = np.argsort(-p, kind="stable")[:3]
    (got,) = result.predictions
    np.testing.assert_array_equal(got.pixels[0], digit)
    assert [g.label for g in got.guesses] == list(top)
    np.testing.assert_allclose([g.probability for g in got.guesses], p[top], rtol=1e-5)
    assert [g.name for g in got.guesses] == [str(i) for i in top]
    assert result.dataset == "mnist" and result.input == "as is"


def test_images_are_converted_scaled_and_cropped_to_the_datasets_images(tmp_path):
    rgb = np.zeros((60, 90, 3), np.uint8)
    rgb[:, 15:75] = 255  # the centred 60×60 square is white, the side strips black
    f = _png(tmp_path / "wide.png", rgb, "RGB")
    grey = predict.read_image(f, (1, 28, 28))
    assert grey.shape == (1, 28, 28) and grey.dtype == np.uint8
    # the centre crop of the scaled image is the white square (its edge columns blend with the black strips)
    assert grey[:, :, 1:-1].min() >= 250 and grey.min() >= 128
    assert predict.read_image(f, (1, 28, 28), invert=True)[:, :, 1:-1].max() <= 5
    colour = predict.read_image(f, (3, 32, 32))
    assert colour.shape == (3, 32, 32)


def test_folders_contribute_their_images_in_name_order(trained, tmp_path):
    model, ckpt, _ = trained
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt"):
        if name.endswith("txt"):
            (folder / name).write_text("not an image")
        else:
            PIL.fromarray(np.zeros((28, 28), np.uint8), mode="L").save(folder / name)
    result = predict.predict(str(model), ckpt, [folder])
    assert [p.path.name for p in result.predictions] == ["a.jpg", "b.png"]


def _cli(args) -> int:
    try:
        main(args)
    except SystemExit as e:
        return e.code or 0
    return 0


def test_the_cli_prints_json_and_refuses_what_is_not_an_image(trained, tmp_path, capsys):
    model, ckpt, _ = trained
    f = _png(tmp_path / "d.png", np.zeros((28, 28), np.uint8), "L")
    assert _cli(["predict", str(model), str(f), "--checkpoint", str(ckpt), "--format", "json", "--top-k", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["dataset"] == "mnist" and len(record["predictions"][0]["top"]) == 2
    assert _cli(["predict", str(model), str(f), "--checkpoint", str(ckpt)]) == 0
    assert "d.png" in capsys.readouterr().out
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    assert _cli(["predict", str(model), str(bad), "--checkpoint", str(ckpt)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert _cli(["predict", str(model), str(tmp_path / "none.png"), "--checkpoint", str(ckpt)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_without_pillow_the_message_names_the_extra(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    f = tmp_path / "x.png"
    f.write_bytes(b"")
    with pytest.raises(UsageError, match=r"pip install 'cnncli\[images\]'"):
        predict.read_image(f, (1, 28, 28))
