"""Detection end to end: a small detector trained on mnist-detect and on a YOLO folder, resumed, scored, asked for
boxes and traced; and the mistakes a user can make with detectors (cnncli.commands.tasks)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import SignalAt, assert_same_weights, needs_mnist, run_main

from cnncli.commands import evaluation, tasks, training
from cnncli.data import mnist_detect
from cnncli.engine import yolo
from cnncli.records import runs

TINY = """
name: tiny-detector
input: [1, 64, 64]
classes: 10
loss: yolo
train: {dataset: mnist-detect, optimizer: adam, lr: 0.003, batch_size: 16, epochs: 2, crop_padding: 4, val_size: 64}
layers:
  - conv: {filters: 8, kernel: 3, padding: 1, stride: 2}
  - relu
  - maxpool: {kernel: 2}
  - conv: {filters: 16, kernel: 3, padding: 1}
  - relu
  - maxpool: {kernel: 2}
  - maxpool: {kernel: 2}
  - conv: {name: head, filters: 20, kernel: 1}
  - yolo: {boxes: 2}
"""

pytestmark = [needs_mnist, pytest.mark.usefixtures("mnist_env")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "tiny-detector.yaml"
    path.write_text(TINY)
    return str(path)


def run(model: str, out: Path, reporter=None, limit: int = 320, **overrides) -> training.RunResult:
    return training.train(training.configure(model, overrides, limit=limit, out=out), reporter)


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory) -> training.RunResult:
    """The tiny detector's run with the file's settings (2 epochs, seed 0) on 320 canvases, uninterrupted."""
    return run(tiny, tmp_path_factory.mktemp("reference") / "run")


def test_a_detector_trains_with_its_loss_terms_and_is_scored_by_map(reference):
    assert reference.status == "completed" and reference.metric == "mAP@0.5"
    folder = reference.run_dir
    lines = (folder / runs.METRICS).read_text().splitlines()
    assert tuple(lines[0].split(",")) == ("epoch", "train_loss", "coord", "obj", "noobj", "cls", "val_loss",
                                          "val_map50", "val_map50_95", "lr", "images_per_s", "seconds")
    assert len(lines) == 3
    first = reference.history[0]
    assert set(first.terms) == set(yolo.TERMS) and first.train_acc is None and first.val_acc is None
    assert first.train_loss == pytest.approx(sum(first.terms.values()))  # the loss is the sum of its terms
    assert 0 <= first.val_map50 <= 1 and 0 <= first.val_map50_95 <= first.val_map50
    assert reference.history[1].train_loss < first.train_loss
    test = json.loads((folder / runs.TEST).read_text())
    assert test["map50"] == reference.test_map50 and test["map50_95"] == reference.test_map50_95
    assert "accuracy" not in test and test["n"] == 2000


def test_an_interrupted_detector_resumes_bit_for_bit(tiny, reference, tmp_path):
    part = run(tiny, tmp_path / "part", reporter=SignalAt(1, 5))
    assert part.status == "interrupted"
    resumed = training.train(training.configure(tiny, {}, resume=tmp_path / "part" / "last.npz"))
    assert resumed.status == "completed"
    assert_same_weights(reference.last_path, tmp_path / "part" / "last.npz")
    assert [(r.train_loss, r.terms, r.val_map50) for r in resumed.history] == \
        [(r.train_loss, r.terms, r.val_map50) for r in reference.history]
    assert resumed.test_map50 == reference.test_map50
    # the terms keep the head's order through the checkpoint: the same metrics.csv but for the timings (img/s, s)
    def untimed(path):
        return [line.split(",")[:-2] for line in path.read_text().splitlines()]

    assert untimed(tmp_path / "part" / runs.METRICS) == untimed(reference.run_dir / runs.METRICS)


def test_eval_scores_a_detector_as_training_did(tiny, reference, capsys):
    scored = evaluation.evaluate(tiny, reference.last_path)
    assert isinstance(scored, evaluation.DetectionEvalResult)
    assert scored.map50 == pytest.approx(reference.test_map50) and scored.map50_95 == pytest.approx(
        reference.test_map50_95)
    code, out, _ = run_main(["eval", tiny, "--weights", str(reference.last_path), "--format", "json"], capsys)
    record = json.loads(out)
    assert code == 0 and list(record)[:2] == ["map50", "map50_95"]
    assert record["map50"] == pytest.approx(scored.map50)
    assert [c["objects"] for c in record["per_class"]] == [c.truths for c in scored.per_class]
    assert sum(c.truths for c in scored.per_class) == scored.objects
    assert all(len(p) == 101 for p in record["precision50"] if p is not None)
    code, out, _ = run_main(["eval", tiny, "--weights", str(reference.last_path)], capsys)
    assert code == 0 and "mAP@0.5" in out and "Precision–recall at IoU 0.5" in out


@pytest.mark.parametrize("options,named", [(["--top-k", "2"], "--top-k is"), (["--worst", "0"], "--worst is"),
                                           (["--worst", "3", "--top-k", "1"], "--top-k and --worst are")])
def test_eval_refuses_a_classifier_s_options_for_a_detector(tiny, reference, options, named, capsys):
    # Accepted and ignored, they would promise output that never comes.
    code, out, err = run_main(["eval", tiny, "--weights", str(reference.last_path), *options], capsys)
    assert code == 2 and out == ""
    assert f"error: {named} for a classifier" in err and "is a detector, scored by mAP" in err


def _canvas_files(folder: Path) -> tuple[Path, Path]:
    """Test canvas 0 as a PNG, and the same canvas twice as large (each pixel 2×2)."""
    from PIL import Image

    canvases, _ = mnist_detect.load("test", size=64)
    folder.mkdir(parents=True, exist_ok=True)
    one, two = folder / "canvas.png", folder / "canvas-2x.png"
    Image.fromarray(canvases[0, 0]).save(one)
    Image.fromarray(np.kron(canvases[0, 0], np.ones((2, 2), np.uint8))).save(two)
    return one, two


def test_predict_gives_boxes_in_each_file_s_own_pixels(tiny, reference, tmp_path, capsys):
    one, two = _canvas_files(tmp_path / "images")
    code, out, _ = run_main(["predict", tiny, "--weights", str(reference.last_path), str(one), str(two),
                             "--conf", "0", "--format", "json"], capsys)
    assert code == 0
    small, large = json.loads(out)["images"]
    assert (small["width"], large["width"]) == (64, 128)
    assert small["boxes"], "at --conf 0 every box that survives suppression is shown"
    # The large file is the small one scaled by 2: the network sees (nearly) the same input, the boxes come back
    # in the large file's pixels.
    top_small, top_large = small["boxes"][0], large["boxes"][0]
    assert top_small["class"] == top_large["class"]
    np.testing.assert_allclose(np.array(top_large["box"]), 2 * np.array(top_small["box"]), atol=1.0)
    assert set(top_small) == {"name", "class", "score", "box"}


def test_predict_out_draws_each_image_and_never_writes_over(tiny, reference, tmp_path, capsys):
    one, _ = _canvas_files(tmp_path / "images")
    out = tmp_path / "drawn"
    code, text, _ = run_main(["predict", tiny, "--weights", str(reference.last_path), str(one), "--out", str(out)],
                             capsys)
    assert code == 0 and (out / "canvas.png").is_file() and "drawn:" in text
    before = (out / "canvas.png").read_bytes()
    code, _, err = run_main(["predict", tiny, "--weights", str(reference.last_path), str(one), "--out", str(out)],
                            capsys)
    assert code == 2 and "exists already and is not written over" in err
    assert (out / "canvas.png").read_bytes() == before


def test_backprop_trace_of_a_detector_shows_each_object_s_box(tiny, reference, capsys):
    code, out, _ = run_main(["backprop-trace", tiny, "--weights", str(reference.last_path), "--sample", "3",
                             "--format", "json"], capsys)
    trace = json.loads(out)
    assert code == 0 and trace["mode"] == "detection"
    _, boxes = mnist_detect.load("test", size=64)
    assert len(trace["objects"]) + trace["dropped"] == boxes.counts[3]
    assert sum(o["coord"] for o in trace["objects"]) == pytest.approx(trace["terms"]["coord"])
    assert trace["loss"] == pytest.approx(sum(trace["terms"].values()))
    code, _, err = run_main(["backprop-trace", tiny, "--weights", str(reference.last_path)], capsys)
    assert code == 2 and "--sample" in err


def _shapes_folder(root: Path, n_train: int = 48, n_val: int = 16) -> Path:
    """A YOLO folder of squares (class 0) and discs (class 1) on images of several sizes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            w, h = int(rng.integers(40, 80)), int(rng.integers(40, 80))
            image = Image.new("RGB", (w, h), (20, 20, 20))
            draw, lines = ImageDraw.Draw(image), []
            for _ in range(int(rng.integers(1, 3))):
                c, s = int(rng.integers(0, 2)), int(rng.integers(10, 20))
                x0, y0 = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
                (draw.rectangle if c == 0 else draw.ellipse)([x0, y0, x0 + s - 1, y0 + s - 1], fill=(230, 230, 230))
                lines.append(f"{c} {(x0 + s / 2) / w:.6f} {(y0 + s / 2) / h:.6f} {s / w:.6f} {s / h:.6f}")
            image.save(root / "images" / split / f"{i:03d}.png")
            (root / "labels" / split / f"{i:03d}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("names: [square, disc]\ntrain: images/train\nval: images/val\n")
    return root


def test_a_yolo_folder_trains_a_detector_sized_to_its_classes(tiny, tmp_path, capsys):
    data = _shapes_folder(tmp_path / "shapes")
    code, out, _ = run_main(["train", tiny, "--dataset", "yolo", "--data-dir", str(data), "--epochs", "1",
                             "--out", str(tmp_path / "run")], capsys)
    assert code == 0, out
    assert "head: head: 10 → 2 classes, those of YOLO folder shapes" in out
    assert "validation: its val split" in out
    test = json.loads((tmp_path / "run" / runs.TEST).read_text())
    assert test["n"] == 16  # no test split: the val split scores the run
    # eval finds the folder the run trained on (its config), as --resume does
    code, out, _ = run_main(["eval", tiny, "--weights", str(tmp_path / "run" / "best.npz"), "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["map50"] == pytest.approx(test["best"]["map50"])
    code, out, _ = run_main(["predict", tiny, "--weights", str(tmp_path / "run" / "last.npz"),
                             str(data / "images" / "val" / "000.png"), "--conf", "0", "--format", "json"], capsys)
    boxes = json.loads(out)["images"][0]["boxes"]
    assert code == 0 and boxes and {b["name"] for b in boxes} <= {"square", "disc"}


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_bad_label_line_stops_the_run_naming_the_file_and_line(tiny, tmp_path, capsys, split):
    data = _shapes_folder(tmp_path / "shapes", 8, 4)
    (data / "labels" / split / "002.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    code, out, err = run_main(["train", tiny, "--dataset", "yolo", "--data-dir", str(data), "--epochs", "1",
                               "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and f"labels/{split}/002.txt" in err and "line 2" in err
    assert not (tmp_path / "run" / "last.npz").exists()
    assert "decod" not in out + err  # found before any image is decoded


@pytest.mark.parametrize("argv,fragment", [
    (["train", "{tiny}", "--dataset", "mnist", "--limit", "64"], "is a detection model"),
    (["train", "lenet5", "--dataset", "mnist-detect", "--limit", "64"], "is a classification model"),
    (["train", "{tiny}", "--dataset", "yolo"], "--dataset yolo needs --data-dir DIR"),
    (["predict", "lenet5", "x.png", "--out", "drawn"], "--out draws a detector's boxes"),
    (["predict", "lenet5", "x.png", "--conf", "0.5"], "--conf is for a detector's boxes: lenet5 is a classifier"),
    (["predict", "lenet5", "x.png", "--conf", "0.5", "--iou", "0.3"], "--conf and --iou are for a detector's boxes"),
    (["predict", "{tiny}", "x.png", "--top-k", "2"], "--top-k is for a classifier: tiny-detector is a detector"),
    (["compare", "lenet5", "{tiny}", "--epochs", "1"], "is a detector: train each detector"),
], ids=["detector-on-labels", "classifier-on-boxes", "yolo-without-folder", "classifier-out", "classifier-conf",
        "classifier-conf-iou", "detector-top-k", "compare-detector"])
def test_detection_mistakes_exit_2(tiny, tmp_path, capsys, argv, fragment, lenet_checkpoint, reference):
    argv = [a.replace("{tiny}", tiny) for a in argv]
    if argv[0] == "predict":
        argv += ["--weights", str(reference.last_path if argv[1] == tiny else lenet_checkpoint[0])]
    else:
        argv += ["--out", str(tmp_path / "run")]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and fragment in " ".join(err.split())


LOCATE = """
name: tiny-locator
input: [1, 64, 64]
classes: 10
loss: localize
train: {dataset: mnist-locate, optimizer: adam, lr: 0.003, batch_size: 32, epochs: 2, val_size: 64}
layers:
  - conv: {filters: 8, kernel: 3, padding: 1, stride: 2}
  - relu
  - maxpool: {kernel: 4}
  - flatten
  - dense: {units: 14}
  - localize
"""


def test_a_localizer_learns_one_box_an_image(tmp_path, capsys):
    model = tmp_path / "tiny-locator.yaml"
    model.write_text(LOCATE)
    result = run(str(model), tmp_path / "run")
    assert result.status == "completed" and set(result.history[0].terms) == {"cls", "box"}
    assert result.history[1].terms["box"] < result.history[0].terms["box"]
    one, _ = _canvas_files(tmp_path / "images")
    code, out, _ = run_main(["predict", str(model), "--weights", str(result.last_path), str(one), "--format", "json"],
                            capsys)
    assert code == 0 and len(json.loads(out)["images"][0]["boxes"]) == 1  # one box an image, whatever its score
    # a localizer on canvases of several digits is refused before any step: no run folder is left
    code, _, err = run_main(["train", str(model), "--dataset", "mnist-detect", "--limit", "64", "--out",
                             str(tmp_path / "many")], capsys)
    assert code == 2 and "finds one object an image" in err and not (tmp_path / "many").exists()
    code, out, _ = run_main(["backprop-trace", str(model), "--weights", str(result.last_path), "--sample", "0",
                             "--format", "json"], capsys)
    trace = json.loads(out)
    assert code == 0 and trace["located"]["iou"] >= 0 and set(trace["terms"]) == {"cls", "box"}
    # mnist-locate's canvases hold one digit each: the trace's object is the test canvas's only box.
    _, boxes = mnist_detect.load("test", size=64, digits=(1, 1))
    assert trace["located"]["truth"] == pytest.approx(boxes.xyxy[0].tolist())


def test_a_yolo_folder_may_be_flipped_and_canvases_of_digits_not():
    """A model file's flip is for pictures: kept for a YOLO folder, left off for digits (a mirrored digit is none)."""
    from cnncli.model import spec

    assert training.resolve(spec.load("yolo-resnet"), {"dataset": "yolo"})["flip"] is True
    assert training.resolve(spec.load("yolo-resnet"), {"dataset": "mnist-detect"})["flip"] is False
    assert training.resolve(spec.load("yolo-resnet"), {"dataset": "mnist-detect", "flip": True})["flip"] is True


def test_predict_s_help_gives_the_thresholds_the_task_uses(capsys):
    from cnncli.commands import tasks

    code, out, _ = run_main(["predict", "--help"], capsys)
    text = " ".join(out.replace("│", " ").split())
    assert code == 0 and f"(default: {tasks.CONF:g})" in text and f"(default: {tasks.IOU:g})" in text


def test_plot_draws_a_detector_s_loss_and_map(reference, capsys):
    code, out, _ = run_main(["plot", str(reference.run_dir), "--format", "json"], capsys)
    (curves,) = json.loads(out)["runs"]
    # metrics.csv keeps six significant digits
    assert code == 0 and curves["val_map50"] == pytest.approx([r.val_map50 for r in reference.history], rel=1e-5)
    assert curves["train_acc"] == [None, None] and curves["test_map50"] == reference.test_map50
    code, out, _ = run_main(["plot", str(reference.run_dir)], capsys)
    assert code == 0 and "validation mAP (%)" in out and "accuracy" not in out


def test_features_of_a_detector_name_its_boxes_and_explain_refuses_it(tiny, reference, capsys, monkeypatch):
    # every box that survives suppression, as predict --conf 0 shows them: the tiny detector scores low
    monkeypatch.setattr(tasks.Detection, "find", functools.partialmethod(tasks.Detection.find, conf=0.0))
    code, out, _ = run_main(["features", tiny, "--weights", str(reference.last_path), "--sample", "0",
                             "--format", "json"], capsys)
    record = json.loads(out)
    assert code == 0 and "objects" in record["image"] and "prediction" not in record
    # its boxes as predict names them, best first: a box's score is no class probability
    assert record["boxes"] and all(set(b) == {"name", "class", "score"} for b in record["boxes"])
    scores = [b["score"] for b in record["boxes"]]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    code, out, _ = run_main(["features", tiny, "--weights", str(reference.last_path), "--sample", "0"], capsys)
    assert code == 0 and "boxes (scores): " in out and "prediction" not in out and " %" not in out
    code, _, err = run_main(["explain", tiny, "--weights", str(reference.last_path), "--sample", "0"], capsys)
    assert code == 2 and "is a detector" in err
