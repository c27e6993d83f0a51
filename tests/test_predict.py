"""``cnncli predict``: image files through a checkpoint, against the same pass done by hand."""

from __future__ import annotations

import builtins
import json
import sys

import numpy as np
import pytest
from helpers import DATA, mnist_checkpoint, run_main

from cnncli import data
from cnncli.commands import predict
from cnncli.data.source import Source, open_source
from cnncli.errors import UsageError
from cnncli.extras import install_hint

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
    ckpt = tmp_path / "tiny.npz"
    return model, ckpt, mnist_checkpoint(model, ckpt, seed=4)


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


def test_the_cli_prints_json_and_refuses_what_is_not_an_image(trained, tmp_path, capsys):
    model, ckpt, _ = trained
    f = _png(tmp_path / "d.png", np.zeros((28, 28), np.uint8), "L")
    code, out, _ = run_main(["predict", str(model), str(f), "--checkpoint", str(ckpt), "--format", "json",
                             "--top-k", "2"], capsys)
    assert code == 0
    record = json.loads(out)
    assert record["dataset"] == "mnist" and len(record["predictions"][0]["top"]) == 2
    code, out, _ = run_main(["predict", str(model), str(f), "--checkpoint", str(ckpt)], capsys)
    assert code == 0
    assert "d.png" in out
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    code, _, err = run_main(["predict", str(model), str(bad), "--checkpoint", str(ckpt)], capsys)
    assert code == 2
    assert "cannot read" in err
    code, _, err = run_main(["predict", str(model), str(tmp_path / "none.png"), "--checkpoint", str(ckpt)], capsys)
    assert code == 2
    assert "does not exist" in err


def test_without_pillow_the_message_names_the_extra(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    f = tmp_path / "x.png"
    f.write_bytes(b"")
    with pytest.raises(UsageError, match="needs Pillow") as raised:
        predict.read_image(f, (1, 28, 28))
    assert install_hint("images") in str(raised.value)


# --------------------------------------------------------------------------- images that look inverted


@pytest.fixture(scope="module")
def mnist_test():
    """The real MNIST test images (uint8 (N, 1, 28, 28)), as other tests find them."""
    if DATA is None:
        pytest.skip("real MNIST files not available")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNCLI_OFFLINE", "1")
        images, _ = data.load("mnist", "test", data_dir=DATA)
    return np.asarray(images)


def test_the_polarity_rule_is_quiet_on_every_real_mnist_digit_and_fires_on_every_inverted_one(mnist_test):
    mnist = open_source("mnist")
    assert [predict.polarity_warning(x, mnist) for x in mnist_test] == [None] * len(mnist_test)
    inverted = [predict.polarity_warning(255 - x, mnist) for x in mnist_test]
    assert all(w is not None and w.kind == "inverted" and "try --invert" in w.message for w in inverted)
    # with --invert, a digit that was light on dark already is the one that looks inverted
    (again,) = {predict.polarity_warning(255 - x, mnist, inverted=True).message.split(":")[0]
                for x in mnist_test[:50]}
    assert again == "looks inverted after --invert"


def test_the_polarity_rule_is_quiet_on_colour_photos_and_follows_the_training_images():
    cifar = open_source("cifar10")
    # CIFAR's mean is near the middle: no brightness, however dark or light, looks inverted
    for level in range(256):
        assert predict.polarity_warning(np.full((3, 32, 32), level, np.uint8), cifar) is None
    for channel in range(3):  # nor a photo in one strong colour
        strong = np.zeros((3, 32, 32), np.uint8)
        strong[channel] = 255
        assert predict.polarity_warning(strong, cifar) is None
    # a folder of dark-on-light scans: MNIST's light-on-dark digit is the inverted one
    scans = Source("image-folder", "image folder scans", tuple("0123456789"), (1, 28, 28), (0.87,), (0.31,))
    digit = np.zeros((1, 28, 28), np.uint8)
    digit[0, 6:22, 12:16] = 255
    warning = predict.polarity_warning(digit, scans)
    assert warning is not None and "dark overall" in warning.message and "image folder scans" in warning.message
    assert predict.polarity_warning(255 - digit, scans) is None


@pytest.fixture
def digits(tmp_path, mnist_test):
    """The real MNIST test digit with the most ink (the hardest to tell from an inverted one), as given and
    inverted (black on white, as drawn on paper)."""
    boldest = mnist_test[int(np.argmax(mnist_test.reshape(len(mnist_test), -1).sum(axis=1)))][0]
    return (_png(tmp_path / "a-real.png", boldest, "L"), _png(tmp_path / "b-paper.png", 255 - boldest, "L"))


def test_predict_warns_about_an_inverted_digit_in_the_table_and_the_json(trained, digits, capsys):
    model, ckpt, _ = trained
    real, paper = digits
    code, out, err = run_main(["predict", str(model), str(real), str(paper), "--checkpoint", str(ckpt)], capsys)
    assert code == 0, err
    assert out.count("warning: looks inverted") == 1
    assert out.index("b-paper.png") < out.index("warning: looks inverted: light overall")
    assert "1 of 2 images looks inverted" in out and "run again with --invert" in out
    code, out, err = run_main(["predict", str(model), str(real), str(paper), "--checkpoint", str(ckpt),
                               "--format", "json"], capsys)
    assert code == 0, err
    record = json.loads(out)
    assert record["invert"] is False and record["skipped"] == []
    by_file = {p["file"]: p["warnings"] for p in record["predictions"]}
    assert by_file[str(real)] == []
    ((warning,),) = [by_file[str(paper)]]
    assert warning["kind"] == "inverted" and "try --invert" in warning["message"]
    # with --invert the drawn digit is fine and the real one is flagged, suggesting to leave --invert out
    code, out, err = run_main(["predict", str(model), str(real), str(paper), "--checkpoint", str(ckpt),
                               "--format", "json", "--invert"], capsys)
    record = json.loads(out)
    by_file = {p["file"]: p["warnings"] for p in record["predictions"]}
    assert by_file[str(paper)] == [] and "try without --invert" in by_file[str(real)][0]["message"]
    assert record["input"] == "inverted"  # what the network saw, as the table's header says it


def test_features_warns_about_an_inverted_image_file(trained, digits):
    from cnncli.commands import features

    model, ckpt, _ = trained
    real, paper = digits
    assert features.features(str(model), ckpt, image=real, max_maps=1).warnings == ()
    (warning,) = features.features(str(model), ckpt, image=paper, max_maps=1).warnings
    assert warning.kind == "inverted" and "--invert" in warning.message
    assert features.features(str(model), ckpt, image=paper, max_maps=1, invert=True).warnings == ()


# --------------------------------------------------------------------------- files that cannot be read


@pytest.fixture
def mixed_folder(tmp_path):
    """A folder of two good images and a file named like an image that is not one."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("a.png", "c.png"):
        _png(folder / name, np.zeros((28, 28), np.uint8), "L")
    (folder / "b-notanimage.png").write_text("not an image")
    return folder


def test_a_bad_file_in_a_folder_is_left_out_named_and_ends_with_status_2(trained, mixed_folder, capsys):
    model, ckpt, _ = trained
    code, out, err = run_main(["predict", str(model), str(mixed_folder), "--checkpoint", str(ckpt)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "a.png" in out and "c.png" in out  # the table shows the images that worked
    assert f"left out: {mixed_folder / 'b-notanimage.png'} (not a PNG or JPEG image" in out
    assert "1 input left out (2 images predicted)" in err and "b-notanimage.png" in err
    code, out, err = run_main(["predict", str(model), str(mixed_folder), "--checkpoint", str(ckpt),
                               "--format", "json"], capsys)
    assert code == 2
    record = json.loads(out)
    assert [p["file"] for p in record["predictions"]] == [str(mixed_folder / n) for n in ("a.png", "c.png")]
    ((skipped),) = record["skipped"]
    assert skipped["path"] == str(mixed_folder / "b-notanimage.png")
    assert skipped["reason"].startswith("not a PNG or JPEG image")


def test_a_missing_file_is_left_out_by_the_same_rule(trained, mixed_folder, tmp_path, capsys):
    model, ckpt, _ = trained
    missing = tmp_path / "typo.png"
    code, out, err = run_main(["predict", str(model), str(mixed_folder / "a.png"), str(missing),
                               "--checkpoint", str(ckpt), "--format", "json"], capsys)
    assert code == 2 and f"{missing} (does not exist)" in err
    record = json.loads(out)
    assert [p["file"] for p in record["predictions"]] == [str(mixed_folder / "a.png")]
    assert record["skipped"] == [{"path": str(missing), "reason": "does not exist"}]


def test_a_folder_of_bad_files_only_is_an_error(trained, tmp_path, capsys):
    model, ckpt, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("x.png", "y.jpg"):
        (bad / name).write_bytes(b"\x89PNG broken")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run_main(["predict", str(model), str(bad), str(empty), "--checkpoint", str(ckpt)], capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith("error: cannot read any image: ")
    assert all(str(p) in err for p in (bad / "x.png", bad / "y.jpg", empty))
    assert "a folder without .png, .jpg, .jpeg files" in err


def test_without_pillow_predicting_one_file_names_image_files_and_the_extra(trained, tmp_path, monkeypatch, capsys):
    model, ckpt, _ = trained
    f = _png(tmp_path / "d.png", np.zeros((28, 28), np.uint8), "L")
    monkeypatch.setitem(sys.modules, "PIL", None)
    code, out, err = run_main(["predict", str(model), str(f), "--checkpoint", str(ckpt)], capsys)
    assert code == 2 and out == ""
    assert err == f"error: reading image files (PNG, JPEG) needs Pillow: {install_hint('images')}\n"
