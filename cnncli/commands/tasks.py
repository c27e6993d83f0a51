"""What a model is trained to do: name a class (classification) or find the objects (detection).

A model's task follows from its output (:func:`of`): a detection head (:mod:`cnncli.engine.heads`: ``yolo``,
``localize``) detects, anything else classifies. The two
differ in what a dataset's labels are (class indices (N,), or :class:`~cnncli.engine.boxes.Boxes`), in the target
a loss reads, in what a step adds up and in what scores a model; training, ``eval`` and ``predict`` ask the task
rather than testing for it:

* ``target(labels, plan, draws, dtype)``: the loss's target for a batch of labels (boxes move with their pixels
  through the input plan, then are encoded for the head);
* ``step(out, target)``: the sums a step adds to the epoch's running totals (correct answers; the loss's terms);
* ``score(out, labels, plan, loss)``: a :class:`Score` of a set of images from the network's outputs;
* ``metric``: the name of the score that picks ``best.npz`` (accuracy; mAP@0.5).

The detection task also finds the boxes (:meth:`Detection.find`): decoding, a score threshold, non-maximum
suppression. Thresholds: scoring ranks every box down to :data:`SCORE_CONF` (COCO ranks them all; the floor
bounds the work), suppressing at :data:`SCORE_IOU`; ``predict`` shows what passes ``--conf`` and ``--iou``
(defaults :data:`CONF`, :data:`IOU`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnncli.commands.average_precision import MAX_DETS, DetectionScores, detection_scores
from cnncli.dataset_names import of_boxes
from cnncli.engine import heads
from cnncli.engine.boxes import Boxes, nms
from cnncli.errors import UsageError

__all__ = ["CONF", "IOU", "SCORE_CONF", "SCORE_IOU", "Classification", "Detection", "Score", "of"]

#: The lowest score of a box that scoring ranks, and the IoU at which it suppresses ...
SCORE_CONF = 0.001
SCORE_IOU = 0.6
#: ... and predict's defaults (--conf, --iou): the boxes worth drawing.
CONF = 0.25
IOU = 0.45


@dataclass(frozen=True)
class Score:
    """A model on a set of images: the loss, the score that ranks checkpoints (``value``: accuracy or mAP@0.5) and,
    for a detector, mAP@0.5:0.95, the loss by term and the per-class details."""

    loss: float
    value: float | None
    map50_95: float | None = None
    terms: object | None = None          # the head module's Terms
    details: DetectionScores | None = None


class Classification:
    """One class per image: labels are class indices (N,); the score is the accuracy."""

    kind = "classification"
    metric = "accuracy"
    labels = "class indices"
    terms: tuple[str, ...] = ()  # its loss has no terms to show

    def sums(self) -> dict[str, int]:
        """What :meth:`step` adds up over an epoch, at zero."""
        return {"correct": 0}

    def target(self, labels: np.ndarray, plan=None, draws=None, dtype=None) -> np.ndarray:
        return labels

    def step(self, out: np.ndarray, target: np.ndarray) -> dict[str, float]:
        return {"correct": int(np.count_nonzero(out.argmax(axis=1) == target))}

    def score(self, out: np.ndarray, labels: np.ndarray, plan, loss) -> Score:
        value, _ = loss.fn(out, labels) if len(labels) else (0.0, None)
        return Score(float(value), float(np.mean(out.argmax(axis=1) == labels)) if len(labels) else None)


class Detection:
    """The objects of an image: labels are :class:`Boxes` in the dataset's pixels; the score is COCO's mAP."""

    kind = "detection"
    metric = "mAP@0.5"
    labels = "boxes"

    def __init__(self, module, head, size: tuple[int, int]):
        self.module = module  # the head's module (cnncli.engine.heads)
        self.head = head
        self.size = size  # the input's (H, W): where the boxes' pixels are
        self.terms: tuple[str, ...] = module.TERMS

    @classmethod
    def of(cls, graph) -> Detection:
        node = graph[graph.output]
        module = heads.of(node)
        return cls(module, module.Head.of(node), tuple(graph.input_shape[1:]))

    def target(self, labels: Boxes, plan, draws=None, dtype=np.float32) -> np.ndarray:
        """The head's target (N, 5B + C, S_h, S_w) of a batch's boxes, moved as ``plan`` moves their pixels."""
        target, _ = self.module.encode(plan.boxes(labels, draws), self.head, self.size, dtype)
        return target

    def sums(self) -> dict[str, float]:
        """What :meth:`step` adds up over an epoch (each term of the loss times the images), at zero."""
        return {name: 0.0 for name in self.terms}

    def step(self, out: np.ndarray, target: np.ndarray) -> dict[str, float]:
        _, _, terms = self.module.loss(out, target, self.head)
        return {name: value * len(out) for name, value in terms.as_dict().items()}

    def find(self, out: np.ndarray, conf: float = CONF, iou: float = IOU, max_dets: int = MAX_DETS
             ) -> tuple[Boxes, np.ndarray]:
        """The boxes the head's outputs (N, 5B + C, S_h, S_w) find, in the input's pixels: those scoring at least
        ``conf``, after class-wise non-maximum suppression at ``iou``, at most ``max_dets`` an image, best first;
        (Boxes of N images, scores (M,))."""
        xyxy, score, classes = self.module.decode(out, self.head, self.size)
        found, kept_scores = [], []
        for i in range(len(out)):
            keep = np.flatnonzero(score[i] >= conf)
            order = keep[nms(xyxy[i][keep], score[i][keep], iou, classes[i][keep], max_dets)]
            found.append((xyxy[i][order], classes[i][order]))
            kept_scores.append(score[i][order])
        return Boxes.of_images(found), np.concatenate(kept_scores) if kept_scores else np.zeros(0)

    def score(self, out: np.ndarray, labels: Boxes, plan, loss) -> Score:
        truth = plan.boxes(labels)
        target, _ = self.module.encode(truth, self.head, self.size, out.dtype)
        value, _, terms = self.module.loss(out, target, self.head)
        found, scores = self.find(out, SCORE_CONF, SCORE_IOU)
        details = detection_scores(truth, found, scores, self.head.classes)
        return Score(float(value), details.map50, details.map50_95, terms, details)


def of(graph) -> Classification | Detection:
    """The task of the network ``graph``: detection when its output is a detection head."""
    return Detection.of(graph) if heads.of(graph[graph.output]) is not None else Classification()


def detects(model_spec) -> bool:
    """Whether the model a file describes is a detector (its output a detection head), known before any graph is
    built."""
    return model_spec.node(model_spec.output).kind in heads.HEADS


def check_dataset(model_spec, dataset: str) -> None:
    """A detector trains on a dataset of boxes, a classifier on one of classes (:func:`cnncli.dataset_names.of_boxes`),
    checked before the dataset is opened."""
    if of_boxes(dataset) != detects(model_spec):
        raise _mismatch(model_spec.name, detects(model_spec), dataset, of_boxes(dataset))


def check_labels(task: Classification | Detection, labels, dataset: str, model: str) -> None:
    """The same rule for labels loaded (``dataset`` its title); and a head that finds one object an image
    (``localize``) wants images of one object each. Checked before any step, so no run folder is left behind."""
    if isinstance(labels, Boxes) != isinstance(task, Detection):
        raise _mismatch(model, isinstance(task, Detection), dataset, isinstance(labels, Boxes))
    if isinstance(task, Detection) and task.module.ONE_OBJECT and len(labels) and (labels.counts != 1).any():
        i = int(np.flatnonzero(labels.counts != 1)[0])
        raise UsageError(f"model '{model}' finds one object an image (a localize head), but image {i} of {dataset} "
                         f"has {int(labels.counts[i])}: train a detector with a yolo head on it (yolo-mnist, "
                         "yolo-resnet), or a localizer on images of one object each (mnist-locate)")


def _mismatch(model: str, detector: bool, dataset: str, boxes: bool) -> UsageError:
    task = Detection if detector else Classification
    what = "boxes" if boxes else "one class an image"
    return UsageError(f"model '{model}' is a {task.kind} model (it learns {task.labels}), but {dataset} labels its "
                      f"images with {what}: train a {'detector' if boxes else 'classifier'} on it (cnncli models "
                      "lists them)")
