"""Tests of evaluation: the arithmetic on hand-made cases, then a checkpoint end to end."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import needs_mnist, run_main
from rich.console import Console

from cnncli import cli
from cnncli.commands import evaluation
from cnncli.engine.network import Network
from cnncli.errors import CheckpointError
from cnncli.model import spec
from cnncli.model.graph import build
from cnncli.records import checkpoint
from cnncli.render import evaluation as render

TINY = """\
name: tiny
input: [1, 28, 28]
classes: 10
layers:
  - conv: {filters: FILTERS, kernel: 5, stride: 2}
  - relu
  - maxpool: {kernel: 2}
  - flatten
  - dense: {units: 10}
"""


pytestmark = pytest.mark.usefixtures("mnist_env")


def tiny_model(folder: Path, filters: int = 4) -> str:
    path = folder / f"tiny{filters}.yaml"
    path.write_text(TINY.replace("FILTERS", str(filters)))
    return str(path)


def saved_weights(model: str, path: Path, seed: int = 0) -> Path:
    net = Network(build(spec.load(model)), seed=seed)
    checkpoint.save(path, net.state_dict(), {}, {"epoch": 0})
    return path


# --------------------------------------------------------------------------- arithmetic

def test_scores_on_a_hand_made_confusion():
    # true:  0 0 0 1 1 2      predicted: 0 0 1 1 2 2
    s = evaluation.scores(np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]), 3)
    assert s.confusion.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert s.n == 6 and s.accuracy == pytest.approx(4 / 6)
    p = {c.cls: (c.precision, c.recall, c.f1, c.support) for c in s.per_class}
    assert p[0] == pytest.approx((1.0, 2 / 3, 0.8, 3))
    assert p[1] == pytest.approx((0.5, 0.5, 0.5, 2))
    assert p[2] == pytest.approx((0.5, 1.0, 2 / 3, 1))
    assert [(q.true, q.predicted, q.count) for q in s.confused_pairs] == [(0, 1, 1), (1, 2, 1)]


def test_a_class_never_predicted_or_absent_scores_zero_not_nan():
    s = evaluation.scores(np.array([0, 0, 1]), np.array([0, 0, 0]), 3)
    p = {c.cls: (c.precision, c.recall, c.f1) for c in s.per_class}
    assert p[1] == (0.0, 0.0, 0.0) and p[2] == (0.0, 0.0, 0.0)
    assert p[0] == pytest.approx((2 / 3, 1.0, 0.8))


def test_top_k_and_worst_mistakes():
    probs = np.array([[0.7, 0.2, 0.1],    # true 0: right
                      [0.1, 0.3, 0.6],    # true 1: wrong, 2nd → top-2 hit
                      [0.05, 0.9, 0.05],  # true 2: wrong and sure; 3rd → top-2 miss
                      [0.2, 0.5, 0.3]])   # true 2: wrong, 2nd
    y = np.array([0, 1, 2, 2])
    assert evaluation.top_k_accuracy(probs, y, 1) == 0.25
    assert evaluation.top_k_accuracy(probs, y, 2) == 0.75
    assert evaluation.top_k_accuracy(probs, y, 5) == 1.0
    images = np.arange(4 * 4, dtype=np.uint8).reshape(4, 2, 2)
    worst = evaluation.worst_mistakes(probs, y, images, 2)
    assert [(m.index, m.true, m.predicted) for m in worst] == [(2, 2, 1), (1, 1, 2)]
    assert worst[0].confidence == pytest.approx(0.9) and worst[0].true_prob == pytest.approx(0.05)
    assert worst[0].pixels.tolist() == images[2].tolist()


# --------------------------------------------------------------------------- end to end

@needs_mnist
def test_evaluate_a_checkpoint_and_show_it(tmp_path):
    model = tiny_model(tmp_path)
    ckpt = saved_weights(model, tmp_path / "w.npz")
    result = evaluation.evaluate(model, ckpt, split="test", batch_size=2000, top_k=3, worst=4)
    assert result.n == 10000 and result.dataset == "mnist"
    assert result.confusion.sum() == 10000
    assert result.accuracy == pytest.approx(np.trace(result.confusion) / 10000)
    assert result.top_k_accuracy >= result.accuracy
    assert len(result.worst) == 4 and all(m.true != m.predicted for m in result.worst)
    assert [m.confidence for m in result.worst] == sorted((m.confidence for m in result.worst), reverse=True)
    assert [c.support for c in result.per_class] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

    buf = io.StringIO()
    render.show(result, "table", Console(file=buf, force_terminal=True, width=120))
    text = buf.getvalue()
    assert "Confusion matrix" in text and "Per class" in text and "▀" in text

    plain = io.StringIO()
    render.show(result, "table", Console(file=plain, force_terminal=False, width=100))
    assert "\x1b[" not in plain.getvalue() and "Most confident mistakes" in plain.getvalue()


@needs_mnist
def test_json_format_through_the_cli(tmp_path, capsys):
    model = tiny_model(tmp_path)
    ckpt = saved_weights(model, tmp_path / "w.npz")
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", model, "--checkpoint", str(ckpt), "--format", "json", "--worst", "0"])
    out = capsys.readouterr().out
    assert e.value.code == 0, out
    record = json.loads(out)
    assert isinstance(record["accuracy"], float) and isinstance(record["loss"], float)
    assert record["n"] == 10000
    confusion = np.array(record["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 10000
    assert record["accuracy"] == pytest.approx(np.trace(confusion) / 10000)
    assert [c["class"] for c in record["per_class"]] == list(range(10))
    assert set(record["per_class"][0]) == {"class", "precision", "recall", "f1"}


@needs_mnist
def test_checkpoint_that_does_not_fit_names_parameter_and_shapes(tmp_path, capsys):
    four, eight = tiny_model(tmp_path, 4), tiny_model(tmp_path, 8)
    ckpt = saved_weights(four, tmp_path / "four.npz")
    with pytest.raises(CheckpointError) as e:
        evaluation.evaluate(eight, ckpt)
    assert "conv1.weight" in str(e.value) and "4×1×5×5" in str(e.value) and "8×1×5×5" in str(e.value)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["eval", eight, "--checkpoint", str(ckpt)])
    assert exit_.value.code == 2
    assert "conv1.weight" in capsys.readouterr().err


def test_corrupt_or_missing_checkpoint_exits_2(tmp_path, capsys):
    model = tiny_model(tmp_path)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x00" * 100)
    for path in (bad, tmp_path / "missing.npz"):
        with pytest.raises(SystemExit) as e:
            cli.main(["eval", model, "--checkpoint", str(path)])
        assert e.value.code == 2
        assert "checkpoint" in capsys.readouterr().err


def test_many_classes_are_scored_without_drawing_their_matrix():
    from cnncli.render import evaluation as render

    k = 25
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, k, 400), rng.integers(0, k, 400)
    names = [f"class{i}" for i in range(k)]
    s = evaluation.scores(y_true, y_pred, k, names)
    result = evaluation.EvalResult(
        model="m", checkpoint=Path("c.npz"), dataset="cifar100", split="test", n=s.n, loss=1.0,
        accuracy=s.accuracy, top_k=3, top_k_accuracy=0.5, confusion=s.confusion, class_names=names,
        per_class=s.per_class, confused_pairs=s.confused_pairs, worst=[], dataset_title="CIFAR-100")
    buf = io.StringIO()
    render.show(result, "table", Console(file=buf, width=120, force_terminal=False))
    text = buf.getvalue()
    assert "25 classes, too many to draw" in text and "Confusion matrix (rows" not in text
    assert "class24" in text  # the per-class table still lists every class


def test_weights_scored_on_another_dataset_than_they_were_trained_on_are_said_to_be(lenet_checkpoint, capsys):
    """Both have 10 classes, so nothing else would stop it: every number is then of the mismatch."""
    path, _ = lenet_checkpoint  # trained on MNIST, says its record
    code, out, err = run_main(["eval", "lenet5", "--weights", str(path), "--dataset", "fashion-mnist",
                               "--worst", "0", "--format", "json"], capsys)
    if code == 2 and "not found" in err:
        pytest.skip("Fashion-MNIST is not installed here")
    assert code == 0, err
    assert err.count("warning:") == 1 and "was trained on mnist, not fashion-mnist" in err
    code, out, err = run_main(["eval", "lenet5", "--weights", str(path), "--worst", "0", "--format", "json"],
                              capsys)
    assert code == 0 and "warning" not in err
