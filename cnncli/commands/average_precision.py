"""Average precision: how well a detector's boxes find the ground truth, scored as COCO scores it.

:func:`detection_scores` takes the ground-truth :class:`~cnncli.engine.boxes.Boxes` of ``N`` images, the
detections of the same images (``Boxes`` and a score per detection) and the number of classes, and returns a
:class:`DetectionScores`: mAP@0.5, mAP@0.5:0.95 and, per class, AP, counts and the precision–recall curve at
IoU 0.5. The numbers are those of pycocotools' ``COCOeval`` for ``iouType="bbox"``, area range "all" and no
crowd boxes (``stats[0]`` and ``stats[1]``); the tests compare them with pycocotools itself. COCO's rules, in
the order they are applied:

1. **Cap.** Per image *and class*, the detections are sorted by score (stable: equal scores keep their order)
   and only the first ``max_dets`` are scored. COCO's ``maxDets`` caps each (image, class) pair, not the image
   (``evaluateImg`` runs per pair; cocodataset/cocoapi issue #222); a per-image cap across classes is
   :func:`~cnncli.engine.boxes.nms`'s ``max_boxes``, applied before scoring.
2. **Matching** (:func:`_match`), per image, class and IoU threshold ``t`` in 0.50:0.05:0.95: the detections in
   that order each take the still-unmatched ground-truth box of highest IoU, provided the IoU is ``>= t``;
   between ground-truth boxes of equal IoU the *last* one (in the image's order) wins, because COCO's loop
   replaces its best match on ``>=``. A matched detection is a true positive, any other a false positive
   (also every detection of an image without ground truth of its class). A ground-truth box matches at most
   one detection, so a second detection of the same object is a false positive.
3. **Accumulation** (:func:`_curve`), per class over all images: the scored detections in image order, each
   image's in its sorted order, then sorted by score with a stable sort (COCO's mergesort), so equal scores
   keep image order. Cumulative true and false positives give recall ``tp / G`` (``G`` ground-truth boxes of
   the class) and precision ``tp / (tp + fp)``. COCO divides by ``tp + fp + eps`` (numpy's ``spacing(1)``),
   which only changes a precision of 1 after one detection, by 2e-16; here the division is exact.
4. **Envelope.** Precision is made non-increasing from the right: each value becomes the maximum of itself and
   every value after it.
5. **Sampling** at the 101 recall points 0:0.01:1 (:data:`RECALL_POINTS`): at each point ``r``, the enveloped
   precision of the first detection whose recall is ``>= r``, or 0 when recall never reaches ``r``.
6. **Means.** A class's AP at ``t`` is the mean of its 101 samples; AP50:95 the mean over the ten thresholds.
   A class without ground truth has no AP (COCO's -1), even with detections, and is left out of the means.
   mAP@0.5 and mAP@0.5:0.95 are means over the classes that have ground truth; with no such class they are
   ``None`` (COCO prints -1).

The thresholds are built with ``np.linspace`` as pycocotools builds them, so an IoU or a recall that lands
exactly on a threshold (0.5, 0.07, ...) falls on the same side as there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnncli.engine.boxes import Boxes, iou
from cnncli.errors import DataError, UsageError

__all__ = ["IOU_THRESHOLDS", "RECALL_POINTS", "MAX_DETS", "ClassAP", "DetectionScores", "detection_scores"]

#: The ten IoU thresholds 0.50:0.05:0.95 (T,), exactly as pycocotools' ``Params.iouThrs``.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
#: The 101 recall points 0:0.01:1 (R,) at which precision is sampled, exactly as ``Params.recThrs``.
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: COCO's default cap on scored detections per image and class.
MAX_DETS = 100


@dataclass(frozen=True)
class ClassAP:
    """One class's scores. ``ap50``, ``ap50_95``, ``recall50`` and ``precision50`` are None without ground truth.

    ``truths``: ground-truth boxes of the class over all images; ``detections``: its detections scored (after
    the ``max_dets`` cap); ``recall50``: the recall of all of them at IoU 0.5; ``precision50`` float64 (101,):
    the enveloped precision at :data:`RECALL_POINTS` at IoU 0.5, what a precision–recall chart draws.
    """

    cls: int
    truths: int
    detections: int
    ap50: float | None
    ap50_95: float | None
    recall50: float | None
    precision50: np.ndarray | None = field(repr=False, compare=False)


@dataclass(frozen=True)
class DetectionScores:
    """COCO's detection scores of ``images`` images; ``map50`` / ``map50_95`` are None when no class has ground truth."""

    images: int
    max_dets: int
    map50: float | None
    map50_95: float | None
    per_class: tuple[ClassAP, ...]


def detection_scores(truth: Boxes, detections: Boxes, scores: np.ndarray, num_classes: int,
                     max_dets: int = MAX_DETS) -> DetectionScores:
    """Score ``detections`` (with ``scores`` (D,), aligned with ``detections``' rows) against ``truth``.

    Both ``Boxes`` cover the same ``N`` images in the same order; classes are ``0 .. num_classes - 1``. A
    ground-truth class outside that range is a :class:`DataError` (the labels do not fit the classes); a bad
    ``max_dets`` or ``num_classes`` a :class:`UsageError`; detections that do not fit (a class out of range,
    scores of another length or not finite) are a ValueError, a bug of whatever made them.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise UsageError(f"num_classes {num_classes!r} must be a whole number >= 1")
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise UsageError(f"max_dets {max_dets!r} must be a whole number >= 1 (detections scored per image and class)")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(truth) != len(detections):
        raise ValueError(f"detection_scores: ground truth of {len(truth)} images, detections of {len(detections)}")
    if len(scores) != len(detections.classes):
        raise ValueError(f"detection_scores: {len(scores)} scores for {len(detections.classes)} detections")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"detection_scores: score {scores[~np.isfinite(scores)][0]} is not finite")
    bad = np.flatnonzero((truth.classes < 0) | (truth.classes >= num_classes))
    if len(bad):
        row = int(bad[0])
        image = int(np.searchsorted(truth.offsets, row, side="right") - 1)
        raise DataError(f"ground truth of image {image}, box {row - int(truth.offsets[image])}: class "
                        f"{int(truth.classes[row])} is not one of the {num_classes} classes 0..{num_classes - 1}")
    bad = np.flatnonzero((detections.classes < 0) | (detections.classes >= num_classes))
    if len(bad):
        raise ValueError(f"detection_scores: detection {int(bad[0])} has class {int(detections.classes[bad[0]])}, "
                         f"not one of 0..{num_classes - 1}")

    # One row per scored detection, in COCO's accumulation order before the score sort: image, then class, then
    # the (image, class) pair's sorted order. ``hits`` (D', T) says which thresholds it is a true positive at.
    det_class, det_score, det_hits = [], [], []
    for i in range(len(truth)):
        gt_xyxy, gt_cls = truth.image(i)
        a, b = int(detections.offsets[i]), int(detections.offsets[i + 1])
        dt_xyxy, dt_cls, dt_score = detections.xyxy[a:b], detections.classes[a:b], scores[a:b]
        for c in np.unique(dt_cls):
            mine = np.flatnonzero(dt_cls == c)
            mine = mine[np.argsort(-dt_score[mine], kind="stable")[:max_dets]]
            hits = _match(iou(dt_xyxy[mine], gt_xyxy[gt_cls == c]), IOU_THRESHOLDS)
            det_class.append(np.full(len(mine), c, np.int64))
            det_score.append(dt_score[mine])
            det_hits.append(hits)
    det_class = np.concatenate(det_class) if det_class else np.zeros(0, np.int64)
    det_score = np.concatenate(det_score) if det_score else np.zeros(0)
    det_hits = np.concatenate(det_hits) if det_hits else np.zeros((0, len(IOU_THRESHOLDS)), bool)

    truths = np.bincount(truth.classes, minlength=num_classes)
    per_class = []
    for c in range(num_classes):
        mine = det_class == c
        if truths[c] == 0:
            per_class.append(ClassAP(c, 0, int(mine.sum()), None, None, None, None))
            continue
        precision, recall = _curve(det_score[mine], det_hits[mine], int(truths[c]))
        ap = precision.mean(axis=1)
        per_class.append(ClassAP(c, int(truths[c]), int(mine.sum()), float(ap[0]), float(ap.mean()),
                                 float(recall[0]), precision[0]))
    scored = [p for p in per_class if p.ap50 is not None]
    return DetectionScores(
        images=len(truth), max_dets=int(max_dets),
        map50=float(np.mean([p.ap50 for p in scored])) if scored else None,
        map50_95=float(np.mean([p.ap50_95 for p in scored])) if scored else None,
        per_class=tuple(per_class))


def _match(ious: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Greedy matching of one image and class: which detections are true positives, bool (D, T).

    ``ious`` (D, G): the detections' rows already in score order. At each threshold (all T at once) detection
    ``d`` takes, among the ground-truth boxes not yet taken at that threshold with IoU ``>= t``, the one of
    highest IoU, the last one on a tie (COCO's loop replaces its best on ``>=``, walking the boxes in order).
    """
    n_det, n_gt = ious.shape
    hits = np.zeros((n_det, len(thresholds)), bool)
    if n_gt == 0:
        return hits
    # COCO starts its running best at min(t, 1 - 1e-10); the same here, though no threshold comes near 1.
    floor = np.minimum(thresholds, 1 - 1e-10)[:, None]
    taken = np.zeros((len(thresholds), n_gt), bool)
    rows = np.arange(len(thresholds))
    for d in range(n_det):
        candidates = ~taken & (ious[d][None, :] >= floor)                # (T, G)
        value = np.where(candidates, ious[d][None, :], -1.0)
        last_best = n_gt - 1 - np.argmax(value[:, ::-1], axis=1)         # argmax, ties to the last box
        found = candidates[rows, last_best]
        taken[rows[found], last_best[found]] = True
        hits[d] = found
    return hits


def _curve(score: np.ndarray, hits: np.ndarray, truths: int) -> tuple[np.ndarray, np.ndarray]:
    """One class's precision sampled at :data:`RECALL_POINTS` per threshold, (T, R), and final recall, (T,).

    ``score`` (D,) and ``hits`` (D, T) of the class's scored detections in image order; ``truths`` > 0.
    """
    order = np.argsort(-score, kind="mergesort")
    tp = np.cumsum(hits[order], axis=0, dtype=np.float64).T              # (T, D)
    n_det = tp.shape[1]
    if n_det == 0:
        return np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS))), np.zeros(len(IOU_THRESHOLDS))
    recall = tp / truths
    precision = tp / np.arange(1, n_det + 1, dtype=np.float64)            # tp + fp = detections so far
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    sampled = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    for t in range(len(IOU_THRESHOLDS)):
        first = np.searchsorted(recall[t], RECALL_POINTS, side="left")  # recall is non-decreasing
        reached = first < n_det
        sampled[t, reached] = envelope[t, first[reached]]
    return sampled, recall[:, -1]
