"""The yolo head (cnncli.engine.yolo): targets, responsibility, decoding and the loss's gradient."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import central_difference

from cnncli.engine import yolo
from cnncli.engine.boxes import Boxes

SIZE = (48, 64)  # input H, W: a 3 × 4 grid of 16-pixel cells


def _head(anchors=None, boxes=2, classes=3, rescore=True):
    return yolo.Head(boxes, classes, (3, 4), anchors, coord=5.0, obj=1.0, noobj=0.5, cls=1.0, rescore=rescore)


def _logit(p):
    return np.log(p / (1 - p))


def _batch():
    # Image 0: two objects in cell (row 1, col 2) (pixels x 32..48, y 16..32) and one in cell (0, 0);
    # image 1: none; image 2: one big object.
    return Boxes.of_images([
        (np.array([[34, 18, 46, 30], [36, 20, 44, 28], [1, 2, 9, 14]]), np.array([2, 0, 1])),
        (np.zeros((0, 4)), np.zeros(0)),
        (np.array([[4, 4, 60, 44]]), np.array([1])),
    ])


def test_encode_puts_each_object_in_the_cell_of_its_centre():
    head = _head()
    target, dropped = yolo.encode(_batch(), head, SIZE, np.float64)
    assert target.shape == (3, 5 * 2 + 3, 3, 4) and dropped == 0
    slots = target[:, :10].reshape(3, 2, 5, 3, 4)
    # The bigger object of image 0 (12 × 12 px, centre (40, 24): cell col 2 = 40 // 16, row 1 = 24 // 16) takes
    # slot 0: offset in the cell ((40 - 32) / 16, (24 - 16) / 16) = (0.5, 0.5), size (12 / 64, 12 / 48).
    np.testing.assert_allclose(slots[0, 0, :, 1, 2], [0.5, 0.5, 12 / 64, 12 / 48, 1])
    np.testing.assert_allclose(slots[0, 1, :, 1, 2], [0.5, 0.5, 8 / 64, 8 / 48, 1])
    # Two objects of classes 2 and 0 share the cell: 1/2 each.
    np.testing.assert_allclose(target[0, 10:, 1, 2], [0.5, 0, 0.5])
    # Centre (5, 8) → cell (0, 0), offset (5/16, 8/16).
    np.testing.assert_allclose(slots[0, 0, :, 0, 0], [5 / 16, 0.5, 8 / 64, 12 / 48, 1])
    assert not target[1].any()
    assert slots[0, :, 4].sum() == 3 and slots[2, :, 4].sum() == 1


def test_a_cell_holds_at_most_its_boxes_objects_bigger_first():
    one_box = _head(boxes=1)
    target, dropped = yolo.encode(_batch(), one_box, SIZE, np.float64)
    assert dropped == 1
    np.testing.assert_allclose(target[0, :5, 1, 2], [0.5, 0.5, 12 / 64, 12 / 48, 1])  # the 12-pixel one stays


def test_anchors_take_the_object_closest_in_shape():
    # Anchors in cells: a wide one (2 × 0.5) and a tall one (0.5 × 2). A tall object (8 × 28 px = 0.5 × 1.75 cells)
    # goes to slot 1, a wide one (28 × 8 px) to slot 0.
    head = _head(anchors=((2.0, 0.5), (0.5, 2.0)))
    boxes = Boxes.of_images([(np.array([[4, 2, 12, 30], [34, 20, 62, 28]]), np.array([0, 1]))])
    target, _ = yolo.encode(boxes, head, SIZE, np.float64)
    slots = target[:, :10].reshape(1, 2, 5, 3, 4)
    assert slots[0, 1, 4, 1, 0] == 1 and slots[0, 0, 4, 1, 0] == 0   # tall: centre (8, 16) → row 1, col 0
    assert slots[0, 0, 4, 1, 3] == 1 and slots[0, 1, 4, 1, 3] == 0   # wide: centre (48, 24) → row 1, col 3


def _perfect(target, head):
    """A head map whose boxes are the target's slots exactly (σ(t) = the target), other boxes near zero."""
    n, _, sh, sw = target.shape
    b = head.boxes
    slots = target[:, :5 * b].reshape(n, b, 5, sh, sw)
    t = np.full_like(target, -8.0)
    p = t[:, :5 * b].reshape(n, b, 5, sh, sw)
    present = slots[:, :, 4] > 0
    for k in range(4):
        p[:, :, k] = np.where(present, _logit(np.clip(np.sqrt(slots[:, :, k]) if k >= 2 else slots[:, :, k],
                                                      1e-6, 1 - 1e-6)), 0.0)
    p[:, :, 4] = np.where(present, 8.0, -8.0)
    t[:, 5 * b:] = np.where(target[:, 5 * b:] > 0, 6.0, -6.0)
    return t


def test_decode_gives_back_the_encoded_boxes():
    head = _head()
    batch = _batch()
    target, _ = yolo.encode(batch, head, SIZE, np.float64)
    t = _perfect(target, head)
    xyxy, score, classes = yolo.decode(t, head, SIZE)
    for i in range(len(batch)):
        want, want_classes = batch.image(i)
        found = score[i] > 0.3
        assert found.sum() == len(want)
        got = xyxy[i][found]
        for box in want:
            assert np.abs(got - box).max(axis=1).min() < 1e-3
    # Image 2's object is alone in its cell: its box's class is its class.
    assert classes[2][score[2] > 0.3].tolist() == [1]


def test_responsibility_goes_to_the_box_of_highest_iou():
    head = _head()
    target, _ = yolo.encode(_batch(), head, SIZE, np.float64)
    t = _perfect(target, head)
    # Swap the two boxes of image 0's cell (1, 2): box 0 now predicts slot 1's object and box 1 slot 0's.
    p = t[:, :10].reshape(3, 2, 5, 3, 4)
    p[0, [0, 1], :4, 1, 2] = p[0, [1, 0], :4, 1, 2].copy()
    owner, c_hat = yolo.responsibility(t, target, head)
    assert owner[0, :, 1, 2].tolist() == [1, 0]
    np.testing.assert_allclose(c_hat[0, :, 1, 2], [1, 1], atol=1e-5)
    assert owner[0, :, 0, 0].tolist() == [0, -1] and (owner[1] == -1).all()


def test_a_perfect_prediction_costs_only_what_its_sharpness_leaves():
    head = _head()
    target, _ = yolo.encode(_batch(), head, SIZE, np.float64)
    value, _, terms = yolo.loss(_perfect(target, head), target, head)
    assert terms.coord < 1e-9 and terms.obj < 1e-4 and terms.noobj < 1e-4
    # A cell of two classes at 1/2 each keeps the entropy ln 2 whatever the scores: image 0's cell (1, 2), / 3 images.
    assert terms.cls == pytest.approx(np.log(2) / 3, abs=1e-4)
    assert value == pytest.approx(terms.total)


@pytest.mark.parametrize("anchors", [None, ((1.5, 1.0), (0.6, 1.4))], ids=["paper", "anchors"])
@pytest.mark.parametrize("rescore", [True, False])
def test_the_gradient_is_the_loss_s_by_finite_differences(anchors, rescore):
    head = _head(anchors=anchors, rescore=rescore)
    target, _ = yolo.encode(_batch(), head, SIZE, np.float64)
    t = np.random.default_rng(3).normal(0, 1.2, target.shape)
    fixed = yolo.responsibility(t, target, head)
    _, grad, _ = yolo.loss(t, target, head, fixed)
    numeric = np.zeros_like(t)
    for idx in np.ndindex(t.shape):
        numeric[idx] = central_difference(t, idx, lambda: yolo.loss(t, target, head, fixed)[0])
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_the_loss_of_a_batch_is_the_mean_of_its_images():
    head = _head()
    batch = _batch()
    target, _ = yolo.encode(batch, head, SIZE, np.float64)
    t = np.random.default_rng(4).normal(0, 1, target.shape)
    whole, grad, _ = yolo.loss(t, target, head)
    parts = [yolo.loss(t[i:i + 1], target[i:i + 1], head) for i in range(3)]
    assert whole == pytest.approx(np.mean([v for v, _, _ in parts]))
    np.testing.assert_allclose(grad, np.concatenate([g for _, g, _ in parts]) / 3)


@pytest.mark.parametrize("anchors", [None, ((1.5, 1.0), (0.6, 1.4))], ids=["paper", "anchors"])
def test_the_responsible_boxes_add_up_to_the_loss_s_terms(anchors):
    head = _head(anchors=anchors)
    batch = _batch()
    target, dropped = yolo.encode(batch, head, SIZE, np.float64)
    t = np.random.default_rng(5).normal(0, 1, target.shape)
    _, _, terms = yolo.loss(t, target, head)
    found = yolo.responsible(t, target, head)
    # Every object has its box but one with anchors: image 0's two objects in one cell both fit the wide anchor.
    assert (len(found), dropped) == ((len(batch.classes), 0) if anchors is None else (len(batch.classes) - 1, 1))
    assert sum(f.coord for f in found) == pytest.approx(terms.coord * len(batch))
    assert sum(f.obj for f in found) == pytest.approx(terms.obj * len(batch))
    # Each object's centre, as a fraction of the input, is the one encoded.
    centres = {(round(f.truth[0] * SIZE[1], 6), round(f.truth[1] * SIZE[0], 6)) for f in found}
    xyxy = batch.xyxy.astype(np.float64)
    assert centres <= {(round((a + c) / 2, 6), round((b + d) / 2, 6)) for a, b, c, d in xyxy}
