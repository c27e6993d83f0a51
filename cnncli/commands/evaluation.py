"""Evaluation: how good a checkpoint is and where it goes wrong.

:func:`evaluate` runs a checkpoint over one split of a dataset and returns an
:class:`EvalResult`: loss, accuracy, top-k accuracy, the confusion matrix,
per-class precision, recall and F1, the most confused pairs of classes and the
most confident mistakes (with their pixels, for drawing). :func:`scores` does
the arithmetic on labels and predictions alone, so it can be checked by hand.

A detector (:mod:`cnncli.commands.tasks`) is scored as COCO scores one instead: a
:class:`DetectionEvalResult` with mAP@0.5 and mAP@0.5:0.95, each class's AP and
its precision–recall curve (:mod:`cnncli.commands.average_precision`), and the
loss term by term.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncli import data
from cnncli.commands import tasks
from cnncli.commands.average_precision import ClassAP
from cnncli.engine import losses
from cnncli.errors import UsageError
from cnncli.model.head import HeadChange
from cnncli.records import trained
from cnncli.words import are

#: Most confused pairs listed.
CONFUSED_PAIRS = 5
#: How many of the worst mistakes a classifier's evaluation draws unless told (--worst).
WORST = 6
@dataclass(frozen=True)
class ClassScore:
    """Precision, recall and F1 of one class; ``support`` is how many images truly belong to it."""

    cls: int
    name: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class ConfusedPair:
    """``count`` images of class ``true`` were predicted as ``predicted``."""

    true: int
    predicted: int
    count: int


@dataclass(frozen=True)
class Mistake:
    """A misclassified image, with its raw pixels (uint8, H×W) for drawing."""

    index: int                # in the split
    true: int
    predicted: int
    confidence: float         # of the predicted class
    true_prob: float
    pixels: np.ndarray = field(repr=False, compare=False)


@dataclass
class Scores:
    """The label arithmetic of an evaluation."""

    n: int
    accuracy: float
    confusion: np.ndarray     # (K, K) int64: rows are true classes, columns predictions
    per_class: list[ClassScore]
    confused_pairs: list[ConfusedPair]


@dataclass
class EvalResult:
    """Everything ``cnncli eval`` shows."""

    model: str
    checkpoint: Path
    dataset: str
    split: str
    n: int
    loss: float
    accuracy: float
    top_k: int
    top_k_accuracy: float
    confusion: np.ndarray
    class_names: list[str]
    per_class: list[ClassScore]
    confused_pairs: list[ConfusedPair]
    worst: list[Mistake]
    dataset_title: str = ""   # a registered dataset's title, or an image folder's
    epoch: int | None = None  # epochs the checkpoint had trained (None: weights alone, no training state)
    step: int = 0             # steps into the next epoch (a checkpoint of an interrupted run)
    head: tuple[HeadChange, ...] = ()  # heads sized as the weights file holds them (it records no classes)


@dataclass
class DetectionEvalResult:
    """Everything ``cnncli eval`` shows of a detector: COCO's scores of the boxes it finds (every box scoring
    at least ``conf``, after non-maximum suppression at ``iou``: :data:`cnncli.commands.tasks.SCORE_CONF`)."""

    model: str
    checkpoint: Path
    dataset: str
    split: str
    n: int
    loss: float
    terms: dict[str, float]
    map50: float | None
    map50_95: float | None
    class_names: list[str]
    per_class: tuple[ClassAP, ...]
    objects: int               # ground-truth boxes in the split
    conf: float
    iou: float
    dataset_title: str = ""
    epoch: int | None = None
    step: int = 0
    head: tuple[HeadChange, ...] = ()


# --------------------------------------------------------------------------- arithmetic

def scores(y_true: np.ndarray, y_pred: np.ndarray, classes: int,
           names: list[str] | None = None) -> Scores:
    """Accuracy, confusion matrix and per-class scores of predictions; an empty class scores 0."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    names = names or [str(c) for c in range(classes)]
    confusion = np.bincount(y_true * classes + y_pred, minlength=classes * classes).reshape(classes, classes)
    hits = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros(classes), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros(classes), where=actual > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(classes), where=both > 0)
    per_class = [ClassScore(c, names[c], float(precision[c]), float(recall[c]), float(f1[c]), int(actual[c]))
                 for c in range(classes)]
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    # Stable order: most frequent first, then by class numbers.
    flat = np.argsort(-off, axis=None, kind="stable")
    pairs = [ConfusedPair(int(i // classes), int(i % classes), int(off.flat[i]))
             for i in flat[:CONFUSED_PAIRS] if off.flat[i] > 0]
    n = len(y_true)
    return Scores(n, float(hits.sum() / n) if n else 0.0, confusion, per_class, pairs)


def top_k_accuracy(scores_: np.ndarray, y_true: np.ndarray, k: int) -> float:
    """Share of samples whose true class is among the ``k`` highest scores."""
    if len(y_true) == 0:
        return 0.0
    k = min(k, scores_.shape[1])
    top = np.argpartition(-scores_, k - 1, axis=1)[:, :k]
    return float(np.mean((top == y_true[:, None]).any(axis=1)))



def worst_mistakes(probs: np.ndarray, y_true: np.ndarray, images: np.ndarray, count: int) -> list[Mistake]:
    """The ``count`` misclassified images the model was most sure about."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    conf = probs[wrong, pred[wrong]]
    order = wrong[np.argsort(-conf, kind="stable")][:count]
    return [Mistake(int(i), int(y_true[i]), int(pred[i]), float(probs[i, pred[i]]), float(probs[i, y_true[i]]),
                    images[i].copy()) for i in order]


# --------------------------------------------------------------------------- evaluate

def evaluate(model: str, checkpoint: Path, *, dataset: str | None = None, split: str = "test",
             data_dir: Path | None = None, batch_size: int = 500, top_k: int | None = None,
             worst: int | None = None, progress: data.ProgressCallback | None = None,
             skip_model_check: bool = False) -> EvalResult | DetectionEvalResult:
    """Score ``checkpoint`` (weights of ``model``, or the name of published weights) on ``split`` of ``dataset``.

    ``progress`` receives the download events of the dataset's files (and of published weights). ``top_k``
    defaults to :func:`~cnncli.records.trained.default_top_k`, ``worst`` to :data:`WORST`; a detector, scored by
    mAP, takes neither (UsageError when one is given).

    The dataset defaults to the one the checkpoint was trained on, else the
    model file's. A checkpoint that does not fit the model is a CheckpointError
    naming the parameter and both shapes; one trained for another network is refused
    unless ``skip_model_check`` (:meth:`~cnncli.records.checkpoint.Checkpoint.check_model`).
    """
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    if worst is not None and worst < 0:
        raise UsageError(f"--worst must not be negative, got {worst}")
    loaded = trained.load(model, checkpoint, dataset=dataset, data_dir=data_dir, progress=progress,
                          skip_model_check=skip_model_check)
    model_spec, graph, saved, net = loaded.spec, loaded.graph, loaded.checkpoint, loaded.network
    info, plan = loaded.source, loaded.plan
    task = tasks.of(graph)
    if isinstance(task, tasks.Detection):
        given = [name for name, value in (("--top-k", top_k), ("--worst", worst)) if value is not None]
        if given:
            raise UsageError(f"{are(given)} for a classifier: "
                             f"{model_spec.name} is a detector, scored by mAP (per class: its AP and recall)")
    classes = len(info.classes)
    top_k = trained.default_top_k(classes) if top_k is None else top_k
    worst = WORST if worst is None else worst
    images, labels = info.load(split, data_dir, progress=progress)
    loss = losses.get(model_spec.loss).bound(graph)
    outputs = net.predict(images, batch_size, loss.source(graph), plan.preparer(net.dtype, info.normalise))
    tasks.check_labels(task, labels, info.title, model_spec.name)
    if isinstance(task, tasks.Detection):
        s = task.score(outputs, labels, plan, loss)
        return DetectionEvalResult(
            model=model_spec.name, checkpoint=Path(checkpoint), dataset=info.name, dataset_title=info.title,
            split=split, n=len(labels), loss=s.loss, terms=s.terms.as_dict(), map50=s.details.map50,
            map50_95=s.details.map50_95, class_names=list(info.classes), per_class=s.details.per_class,
            objects=len(labels.classes), conf=tasks.SCORE_CONF, iou=tasks.SCORE_IOU,
            epoch=saved.epoch if "epoch" in saved.meta else None, step=int(saved.meta.get("batch", 0) or 0),
            head=loaded.head)
    loss_value, _ = loss.fn(outputs, labels) if len(labels) else (0.0, None)
    probs = loss.probabilities(outputs)
    s = scores(labels, probs.argmax(axis=1), classes, list(info.classes))
    return EvalResult(
        model=model_spec.name, checkpoint=Path(checkpoint), dataset=info.name, dataset_title=info.title,
        split=split, n=s.n,
        loss=float(loss_value), accuracy=s.accuracy, top_k=min(top_k, classes),
        top_k_accuracy=top_k_accuracy(probs, labels, top_k), confusion=s.confusion,
        class_names=list(info.classes), per_class=s.per_class, confused_pairs=s.confused_pairs,
        worst=worst_mistakes(probs, labels, images, worst),
        epoch=saved.epoch if "epoch" in saved.meta else None, step=int(saved.meta.get("batch", 0) or 0),
        head=loaded.head,
    )
