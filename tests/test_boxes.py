"""Boxes' geometry: ``iou`` against a per-pair loop and hand cases, ``nms`` against the obvious greedy loop.

Random boxes sit on a coarse grid (whole and half pixels, zero widths allowed) so that equal IoUs, IoUs exactly
at a threshold, empty boxes and equal scores come up often: the cases where a rule's edge shows.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnncli.engine.boxes import iou, nms

# --- slow obvious references --------------------------------------------------------------------------


def iou_pair(a, b) -> float:
    """IoU of two xyxy boxes, one pair at a time in Python floats (0 when they do not overlap)."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def nms_reference(xyxy, scores, threshold, classes=None, max_boxes=None) -> list[int]:
    """Visit boxes by score (ties: lower index first); keep a box unless a kept box of its class overlaps it by
    more than the threshold."""
    keep: list[int] = []
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if not any((classes is None or classes[i] == classes[k]) and iou_pair(xyxy[i], xyxy[k]) > threshold
                   for k in keep):
            keep.append(i)
    return keep if max_boxes is None else keep[:max_boxes]


def grid_boxes(n_max: int = 12):
    """(m, 4) float32 xyxy boxes on a half-pixel grid, zero widths and heights included."""
    coord = st.integers(0, 16).map(lambda v: v / 2)
    size = st.integers(0, 8).map(lambda v: v / 2)
    box = st.tuples(coord, coord, size, size).map(lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3]))
    return st.lists(box, max_size=n_max).map(lambda b: np.asarray(b, np.float32).reshape(-1, 4))


# --- iou ----------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(a=grid_boxes(), b=grid_boxes())
def test_iou_equals_the_per_pair_loop(a, b):
    got = iou(a, b)
    assert got.shape == (len(a), len(b)) and got.dtype == np.float64
    want = np.array([[iou_pair(p, q) for q in b] for p in a]).reshape(len(a), len(b))
    np.testing.assert_array_equal(got, want)
    assert np.all(np.isfinite(got)) and np.all((got >= 0) & (got <= 1))


def test_iou_of_random_real_boxes_equals_the_per_pair_loop():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 50, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0, 20, (40, 2))], axis=1).astype(np.float32)
    want = np.array([[iou_pair(p, q) for q in boxes[25:]] for p in boxes[:25]])
    np.testing.assert_array_equal(iou(boxes[:25], boxes[25:]), want)


@pytest.mark.parametrize("a,b,want", [
    ((0, 0, 2, 2), (0, 0, 2, 2), 1.0),             # the same box
    ((0, 0, 2, 2), (1, 0, 3, 2), 2 / 6),           # half shifted: intersection 1×2 = 2, union 4 + 4 - 2 = 6
    ((0, 0, 4, 4), (1, 1, 3, 3), 4 / 16),          # contained: the small box's area over the large one's
    ((0, 0, 2, 2), (2, 0, 4, 2), 0.0),             # sharing an edge only: no area in common
    ((0, 0, 2, 2), (5, 5, 6, 6), 0.0),             # apart
    ((1, 1, 1, 3), (0, 0, 2, 2), 0.0),             # a zero-width box overlaps nothing
    ((1, 1, 1, 1), (1, 1, 1, 1), 0.0),             # two empty boxes: union 0, IoU 0, not NaN
    ((0, 0, 2, 1), (0, 0, 1, 1), 0.5),             # exactly one half: intersection 1, union 2
])
def test_iou_hand_cases(a, b, want):
    got = iou(np.array([a], np.float32), np.array([b], np.float32))
    assert got.shape == (1, 1) and got[0, 0] == want
    assert iou(np.array([b]), np.array([a]))[0, 0] == want


def test_iou_of_no_boxes_has_an_empty_side_and_a_bad_shape_is_refused():
    assert iou(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)
    assert iou(np.ones((2, 4)), np.zeros((0, 4))).shape == (2, 0)
    with pytest.raises(ValueError, match=r"shape \(m, 4\)"):
        iou(np.zeros((2, 5)), np.zeros((1, 4)))


# --- nms ----------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=st.data(), boxes=grid_boxes(16),
       threshold=st.sampled_from([0.0, 0.25, 1 / 3, 0.5, 0.7, 1.0]), class_aware=st.booleans())
def test_nms_equals_the_greedy_loop(data, boxes, threshold, class_aware):
    n = len(boxes)
    # Few distinct scores, so equal scores are common and the index order among them is exercised.
    scores = np.asarray(data.draw(st.lists(st.sampled_from([0.2, 0.5, 0.9]), min_size=n, max_size=n)))
    classes = np.asarray(data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))) if class_aware else None
    max_boxes = data.draw(st.none() | st.integers(0, 5))
    got = nms(boxes, scores, threshold, classes=classes, max_boxes=max_boxes)
    assert got.dtype == np.int64
    assert got.tolist() == nms_reference(boxes, scores, threshold, classes, max_boxes)


def test_nms_of_many_random_boxes_equals_the_greedy_loop():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 60, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(2, 25, (300, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, 300).round(2)          # rounding leaves some equal scores
    classes = rng.integers(0, 4, 300)
    assert nms(boxes, scores, 0.45).tolist() == nms_reference(boxes, scores, 0.45)
    assert nms(boxes, scores, 0.45, classes).tolist() == nms_reference(boxes, scores, 0.45, classes)


def test_nms_hand_cases():
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1], [0, 0, 2, 1], [5, 5, 6, 6]], np.float32)
    scores = np.array([0.5, 0.9, 0.5, 0.1])
    # Box 1 (0.9) first; box 0 and box 2 have IoU 0.5 with it (intersection 1, union 2), not > 0.5, so both
    # stay, 0 before 2 (equal scores, lower index first); box 0 and 2 are the same box (IoU 1 > 0.5), so
    # box 2 goes. Box 3 overlaps nothing.
    assert nms(boxes, scores, 0.5).tolist() == [1, 0, 3]
    # Just below 0.5, box 1 suppresses boxes 0 and 2.
    assert nms(boxes, scores, 0.49).tolist() == [1, 3]
    # Box 2 of another class than box 0: nothing suppresses it.
    assert nms(boxes, scores, 0.5, classes=np.array([0, 0, 1, 0])).tolist() == [1, 0, 2, 3]
    assert nms(boxes, scores, 0.5, max_boxes=2).tolist() == [1, 0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    with pytest.raises(ValueError, match="3 scores for 4 boxes"):
        nms(boxes, scores[:3], 0.5)
