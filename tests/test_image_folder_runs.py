"""Training, evaluating and predicting on a folder of the user's own images, end to end through the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from helpers import colour_folder, colour_picture, run_main

PIL = pytest.importorskip("PIL.Image")

MODEL = """\
name: colours
input: [3, 8, 8]
classes: 3
train: {dataset: image-folder, optimizer: sgd, lr: 0.1, momentum: 0.9, batch_size: 8, epochs: 8, val_size: 0}
layers:
  - conv: {filters: 4, kernel: 3}
  - relu
  - flatten
  - dense: {units: 3}
"""

COLOURS = {"blue": (0, 0, 255), "green": (0, 200, 0), "red": (230, 0, 0)}


@pytest.fixture
def folder(tmp_path):
    root = colour_folder(tmp_path / "pictures", COLOURS, per_class=15, size=(20, 14), noise=25, seed=0)
    model = tmp_path / "colours.yaml"
    model.write_text(MODEL)
    return root, model


def test_train_eval_and_predict_on_an_image_folder(folder, tmp_path, capsys, monkeypatch):
    root, model = folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = tmp_path / "run"
    code, out, err = run_main(["train", str(model), "--data-dir", str(root), "--out", str(run)], capsys)
    assert code == 0, err
    assert "Training colours on image folder pictures" in out
    assert "test: 20% of each class" in out and "centre-cropped to 8×8" in out
    # the first run decodes the folder into the cache, and says so (in files, not bytes); lines are wrapped
    # between words at 80 columns
    shown = " ".join((out + err).split())
    assert f"decoding the train images of {root} (36 files)" in shown and "decoded test images" in shown
    record = yaml.safe_load((run / "config.yaml").read_text())
    assert record["source"]["classes"] == ["blue", "green", "red"] and len(record["source"]["mean"]) == 3
    test = json.loads((run / "test.json").read_text())
    assert test["n"] == 9 and test["accuracy"] == 1.0  # three plain colours are easy

    code, out, err = run_main(["eval", str(model), "--checkpoint", str(run / "last.npz"), "--format", "json"], capsys)
    assert code == 0, err
    assert "decoding" not in out + err  # from the cache this time
    scored = json.loads(out)
    assert scored["accuracy"] == 1.0 and scored["n"] == 9

    code, out, err = run_main(["backprop-trace", str(model), "--sample", "0", "--data-dir", str(root), "--weights",
                               str(run / "last.npz"), "--format", "json"], capsys)
    assert code == 0, err
    assert "image-folder test image 0 (label 0)" in json.loads(out)["input"]

    # predict needs only the checkpoint: the folder may be gone
    new = tmp_path / "new-red.png"
    PIL.fromarray(colour_picture(COLOURS["red"], np.random.default_rng(5), (30, 30), noise=25), "RGB").save(new)
    shutil.rmtree(root)
    code, out, err = run_main(["predict", str(model), str(new), "--checkpoint", str(run / "last.npz"), "--format",
                               "json"], capsys)
    assert code == 0, err
    assert json.loads(out)["predictions"][0]["top"][0]["name"] == "red"


def test_an_image_folder_needs_its_folder(folder, tmp_path, capsys):
    _, model = folder
    code, _, err = run_main(["train", str(model), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "--dataset image-folder needs --data-dir DIR" in err
    code, _, err = run_main(["train", str(model), "--data-dir", str(tmp_path / "nowhere"), "--out",
                             str(tmp_path / "r")], capsys)
    assert code == 2 and "nowhere" in err


def test_images_left_out_are_a_plain_warning_line(folder, tmp_path, capsys, monkeypatch):
    root, model = folder
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (root / "red" / "broken.png").write_bytes(b"not a picture")
    code, out, err = run_main(["train", str(model), "--data-dir", str(root), "--out", str(tmp_path / "run"),
                               "--epochs", "1"], capsys)
    assert code == 0, err
    assert "warning: 1 of " in err and "broken.png" in err
    assert "DataWarning" not in err and "warnings.warn" not in err  # not Python's own display
