"""COCO's average precision: hand-computed cases, then pycocotools' COCOeval itself on the same boxes.

In the hand cases a detection is a copy of a ground-truth box (IoU 1, a true positive at every threshold) or a
box far from everything (a false positive), unless the case says otherwise, so AP50 = AP50:95 there. Notation:
``tp``/``fp`` are cumulative counts in score order, ``P`` precision and ``R`` recall after each detection,
``env`` the enveloped precision; AP is the mean over the 101 recall points r = 0, 0.01, ..., 1 of ``env`` at
the first detection with ``R >= r`` (0 if none).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from cnncli.commands.average_precision import RECALL_POINTS, detection_scores
from cnncli.engine.boxes import Boxes
from cnncli.errors import DataError, UsageError

A = (0, 0, 10, 10)
B = (20, 0, 30, 10)
C = (40, 0, 50, 10)
FAR = (100, 100, 110, 110)


def boxes(*images) -> Boxes:
    """``boxes([(xyxy, cls), ...], ...)``: one list of (box, class) per image."""
    return Boxes.of_images([(np.array([b for b, _ in im], np.float32).reshape(-1, 4), np.array([c for _, c in im]))
                            for im in images])


def scored(*images) -> tuple[Boxes, np.ndarray]:
    """Detections: one list of (box, class, score) per image."""
    return boxes(*[[(b, c) for b, c, _ in im] for im in images]), np.array([s for im in images for _, _, s in im])


# Each case: (ground truth, (detections, scores), num_classes, max_dets, expected {class: (ap50, ap50_95)}).
CASES = {}

# Every object found once: at each detection P = 1, the last R = 1, so every recall point reads 1.
CASES["perfect"] = (boxes([(A, 0), (B, 1)], [(C, 0)]),
                    scored([(A, 0, 0.3), (B, 1, 0.9)], [(C, 0, 0.6)]), 2, 100, {0: (1.0, 1.0), 1: (1.0, 1.0)})

# Nothing detected: R stays 0 (< every r > 0) and r = 0 has no detection to read either, so AP = 0.
CASES["none"] = (boxes([(A, 0)], [(B, 0)]), scored([], []), 1, 100, {0: (0.0, 0.0)})

# Two objects; the first is detected twice. In score order 0.9 (takes A), 0.8 (A is taken: fp), 0.7 (takes B):
# tp 1 1 2, fp 0 1 1, P 1 1/2 2/3, R 1/2 1/2 1, env 1 2/3 2/3. r = 0..0.50 (51 points) read env[0] = 1,
# r = 0.51..1 (50 points) read env[2] = 2/3: AP = (51 + 50 * 2/3) / 101.
CASES["duplicate"] = (boxes([(A, 0), (B, 0)]),
                      scored([(A, 0, 0.9), (A, 0, 0.8), (B, 0, 0.7)]), 1, 100,
                      {0: ((51 + 50 * 2 / 3) / 101,) * 2})

# Equal scores keep image order (a stable sort): image 0's false positive comes before image 1's true
# positive. P 0 1/2, R 0 1, env 1/2 1/2: every r reads 1/2 (r = 0 at the first detection, R 0 >= 0).
# The other order would give AP 1.
CASES["tie across images"] = (boxes([], [(A, 0)]), scored([(FAR, 0, 0.5)], [(A, 0, 0.5)]), 1, 100,
                              {0: (0.5, 0.5)})

# Within an image equal scores keep index order, for matching too: the first copy of A takes it, the second
# is a false positive; then the same as a duplicate of lower score: P 1 1/2, R 1 1, env 1 1/2, AP 1.
# Before them, a false positive of the same score (index 0): P 0 1/2 1/3, R 0 1 1, env 1/2 1/2 1/3, AP 1/2.
CASES["tie in an image"] = (boxes([(A, 0)]), scored([(FAR, 0, 0.5), (A, 0, 0.5), (A, 0, 0.5)]), 1, 100,
                            {0: (0.5, 0.5)})

# Class 1 has detections but no ground truth and class 2 nothing: neither has an AP nor enters the mean;
# class 0 is perfect, so mAP = 1.
CASES["class without truth"] = (boxes([(A, 0)]), scored([(A, 0, 0.9), (B, 1, 0.95)]), 3, 100,
                                {0: (1.0, 1.0), 1: (None, None), 2: (None, None)})

# Image 1 has no ground truth but a detection of score 0.95, ahead of image 0's true positive (0.9):
# P 0 1/2, R 0 1, env 1/2 1/2, AP 1/2.
CASES["image without truth"] = (boxes([(A, 0)], []), scored([(A, 0, 0.9)], [(B, 0, 0.95)]), 1, 100,
                                {0: (0.5, 0.5)})

# max_dets = 2 caps each (image, class) pair: class 0's third detection (score 0.7) is not scored, so
# tp 1 2, R 1/3 2/3, P 1 1, and r = 0..0.66 (67 points) read 1, r = 0.67..1 read 0: AP = 67/101.
# Class 1 in the same image has its 2 detections, both scored although the image already has 3: AP 1.
CASES["max_dets"] = (boxes([(A, 0), (B, 0), (C, 0), (A, 1), (B, 1)]),
                     scored([(A, 0, 0.9), (B, 0, 0.8), (C, 0, 0.7), (A, 1, 0.6), (B, 1, 0.5)]), 2, 2,
                     {0: (67 / 101,) * 2, 1: (1.0, 1.0)})

# IoU exactly 0.5 (intersection 50, union 100) matches at t = 0.5 (IoU >= t) and at no other threshold:
# AP50 = 1, and over the ten thresholds (1 + 9 * 0) / 10.
CASES["iou at threshold"] = (boxes([((0, 0, 10, 10), 0)]), scored([((0, 0, 5, 10), 0, 0.9)]), 1, 100,
                             {0: (1.0, 0.1)})

# Matching ties go to the last ground-truth box. G0 = (0,0,10,10), G1 = (1,0,11,10); D1 = (0.5,0,10.5,10)
# (score 0.9) has IoU 95/105 = 0.905 with both; D2 = (-1,0,9,10) (0.8) has 90/110 = 0.818 with G0 and
# 80/120 = 0.667 with G1. D1 takes G1 (the tie's last box) at t <= 0.9, so D2 takes G0 at t <= 0.8:
#   t = 0.50 .. 0.80 (7 thresholds): tp 1 2, R 1/2 1, P 1 1: AP 1;
#   t = 0.85, 0.90: D2 (0.818 < t) is a false positive: R 1/2 1/2, env 1 1/2: r = 0..0.5 read 1, AP 51/101;
#   t = 0.95: both false positives, AP 0.
# (Taking G0 on the tie would leave D2 only G1 at 0.667 and lose it at t = 0.75 and 0.8 too.)
CASES["matching tie"] = (boxes([((0, 0, 10, 10), 0), ((1, 0, 11, 10), 0)]),
                         scored([((0.5, 0, 10.5, 10), 0, 0.9), ((-1, 0, 9, 10), 0, 0.8)]), 1, 100,
                         {0: (1.0, (7 + 2 * 51 / 101) / 10)})


@pytest.mark.parametrize("name", list(CASES))
def test_hand_computed_cases(name):
    truth, (dets, scores), num_classes, max_dets, want = CASES[name]
    got = detection_scores(truth, dets, scores, num_classes, max_dets=max_dets)
    assert len(got.per_class) == num_classes and got.images == len(truth)
    for cls, (ap50, ap50_95) in want.items():
        c = got.per_class[cls]
        assert c.cls == cls and c.truths == int(np.sum(truth.classes == cls))
        if ap50 is None:
            assert c.ap50 is None and c.ap50_95 is None and c.precision50 is None and c.recall50 is None
        else:
            assert c.ap50 == pytest.approx(ap50, abs=1e-12) and c.ap50_95 == pytest.approx(ap50_95, abs=1e-12)
            assert c.precision50.shape == RECALL_POINTS.shape and c.precision50.mean() == c.ap50
    scored_classes = [v for v in want.values() if v[0] is not None]
    assert got.map50 == pytest.approx(np.mean([v[0] for v in scored_classes]), abs=1e-12)
    assert got.map50_95 == pytest.approx(np.mean([v[1] for v in scored_classes]), abs=1e-12)


def test_counts_curves_and_recall_of_a_case():
    got = detection_scores(*_args("duplicate"))
    c = got.per_class[0]
    assert (c.truths, c.detections, c.recall50) == (2, 3, 1.0)
    # env 1 up to R = 1/2, then 2/3 (the duplicate case above).
    np.testing.assert_allclose(c.precision50, np.where(RECALL_POINTS <= 0.5, 1.0, 2 / 3), rtol=0, atol=1e-15)
    capped = detection_scores(*_args("max_dets")).per_class
    assert (capped[0].detections, capped[1].detections) == (2, 2) and capped[0].recall50 == 2 / 3
    unscored = detection_scores(*_args("class without truth")).per_class[1]
    assert (unscored.truths, unscored.detections) == (0, 1)


def test_no_class_with_ground_truth_has_no_mean():
    dets, scores = scored([(A, 0, 0.9)])
    got = detection_scores(Boxes.empty(1), dets, scores, 2)
    assert got.map50 is None and got.map50_95 is None
    assert [c.ap50 for c in got.per_class] == [None, None] and got.per_class[0].detections == 1


def test_mistakes_are_refused_with_the_value_and_the_rule():
    dets, scores = scored([(A, 0, 0.9)], [])
    with pytest.raises(DataError, match=r"image 1, box 0: class 3 is not one of the 2 classes"):
        detection_scores(boxes([(A, 0)], [(B, 3)]), dets, scores, 2)
    with pytest.raises(UsageError, match="max_dets 0"):
        detection_scores(boxes([(A, 0)], []), dets, scores, 2, max_dets=0)
    with pytest.raises(ValueError, match="2 scores for 1 detections"):
        detection_scores(boxes([(A, 0)], []), dets, np.array([0.9, 0.8]), 2)
    with pytest.raises(ValueError, match="ground truth of 1 images, detections of 2"):
        detection_scores(boxes([(A, 0)]), dets, scores, 2)


# --- against pycocotools ------------------------------------------------------------------------------


def _args(name):
    truth, (dets, scores), num_classes, max_dets, _ = CASES[name]
    return truth, dets, scores, num_classes, max_dets


def coco_eval(truth: Boxes, dets: Boxes, scores: np.ndarray, num_classes: int, max_dets: int = 100):
    """pycocotools' COCOeval (bbox) of the same boxes, evaluated and accumulated, its prints swallowed.

    COCO boxes are [x, y, w, h]; pycocotools' IoU (maskApi's bbIou) takes x + w as the right edge and has no
    ``+ 1``, like ours, and ``w = x1 - x0`` of float32 corners is exact in float64, so the IoUs are the same
    numbers. Ids start at 1 (COCOeval reads a match id of 0 as "unmatched"); class c is category c + 1.
    """
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, truths, results = [], [], []
    for i in range(len(truth)):
        images.append({"id": i + 1, "width": 640, "height": 640})
        for (x0, y0, x1, y1), c in zip(truth.image(i)[0].astype(np.float64).tolist(), truth.image(i)[1].tolist()):
            # area: pycocotools' area ranges read the ground truth's 'area' field ("all" is [0, 1e10]).
            truths.append({"id": len(truths) + 1, "image_id": i + 1, "category_id": c + 1, "iscrowd": 0,
                           "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
        first = int(dets.offsets[i])
        for j, ((x0, y0, x1, y1), c) in enumerate(zip(dets.image(i)[0].astype(np.float64).tolist(),
                                                      dets.image(i)[1].tolist())):
            results.append({"image_id": i + 1, "category_id": c + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(scores[first + j])})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": truths,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(num_classes)]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        if max_dets != 100:
            # One cap only: COCOeval sorts maxDets, and accumulate's last index is then this cap.
            evaluation.params.maxDets = [max_dets]
        evaluation.evaluate()
        evaluation.accumulate()
        if max_dets == 100:
            evaluation.summarize()
    return evaluation


def check_against_coco(truth, dets, scores, num_classes, max_dets=100):
    ours = detection_scores(truth, dets, scores, num_classes, max_dets=max_dets)
    evaluation = coco_eval(truth, dets, scores, num_classes, max_dets)
    precision = evaluation.eval["precision"][:, :, :, 0, -1]          # (T, R, K): area "all", the cap
    recall = evaluation.eval["recall"][:, :, 0, -1]                   # (T, K)
    if max_dets == 100:
        # stats[0] = mAP@0.5:0.95, stats[1] = mAP@0.5; -1 when no class has ground truth.
        want = [None if s == -1 else s for s in evaluation.stats[:2]]
    else:
        # What summarize() does with the precision array: the mean of the entries that are not -1.
        want = [precision[precision > -1].mean() if np.any(precision > -1) else None,
                precision[0][precision[0] > -1].mean() if np.any(precision[0] > -1) else None]
    for got, expected in zip([ours.map50_95, ours.map50], want):
        assert (got is None) == (expected is None)
        if got is not None:
            assert abs(got - expected) <= 1e-9
    for c in ours.per_class:
        if c.ap50 is None:
            assert np.all(precision[:, :, c.cls] == -1)
        else:
            np.testing.assert_allclose(c.precision50, precision[0, :, c.cls], rtol=0, atol=1e-9)
            assert abs(c.ap50_95 - precision[:, :, c.cls].mean()) <= 1e-9
            assert abs(c.recall50 - recall[0, c.cls]) <= 1e-12


@pytest.mark.parametrize("name", [n for n in CASES if n != "none"])   # COCO.loadRes refuses no detections
def test_hand_cases_agree_with_pycocotools(name):
    check_against_coco(*_args(name))


def random_detection_set(rng, grid: bool):
    """2–5 images, 1–3 classes; about half the detections are jittered copies of ground-truth boxes (same
    class), the rest anywhere with any class; scores rounded to 0.1, so equal scores are common. With
    ``grid`` every coordinate is a whole pixel, so equal IoUs and IoUs exactly at a threshold come up."""
    n_images, num_classes = int(rng.integers(2, 6)), int(rng.integers(1, 4))
    span, size = (6, 5) if grid else (40, 15)

    def some(n):
        xy = rng.integers(0, span, (n, 2)).astype(float) if grid else rng.uniform(0, span, (n, 2))
        wh = rng.integers(1, size, (n, 2)).astype(float) if grid else rng.uniform(1, size, (n, 2))
        return np.concatenate([xy, xy + wh], axis=1)

    truths, dets, scores = [], [], []
    for i in range(n_images):
        m = int(rng.integers(0, 6))
        g, gc = some(m), rng.integers(0, num_classes, m)
        n = int(rng.integers(1 if i == 0 else 0, 10))      # one detection at least: loadRes needs one
        d, dc = some(n), rng.integers(0, num_classes, n)
        if m:
            k = n // 2
            pick = rng.integers(0, m, k)
            jitter = rng.integers(-1, 2, (k, 4)) if grid else rng.normal(0, 1.5, (k, 4))
            d[:k] = g[pick] + jitter
            d[:k, 2:] = np.maximum(d[:k, 2:], d[:k, :2] + 1)
            dc[:k] = gc[pick]
        truths.append((g, gc))
        dets.append((d, dc))
        scores.append(rng.integers(1, 10, n) / 10)
    return Boxes.of_images(truths), Boxes.of_images(dets), np.concatenate(scores), num_classes


@pytest.mark.parametrize("grid", [False, True], ids=["real", "grid"])
def test_random_detections_agree_with_pycocotools(grid):
    rng = np.random.default_rng(7 + grid)
    for _ in range(25):
        check_against_coco(*random_detection_set(rng, grid))


def test_random_detections_with_a_small_cap_agree_with_pycocotools():
    rng = np.random.default_rng(11)
    for _ in range(25):
        truth, dets, scores, num_classes = random_detection_set(rng, grid=bool(rng.integers(0, 2)))
        check_against_coco(truth, dets, scores, num_classes, max_dets=int(rng.integers(1, 4)))
