"""The localize head (cnncli.engine.localize): its target, decoding and the loss's gradient."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import central_difference

from cnncli.engine import heads, localize
from cnncli.engine.boxes import Boxes
from cnncli.errors import DataError
from cnncli.model.kinds import KINDS

SIZE = (40, 80)  # input H, W


def _batch():
    return Boxes.of_images([(np.array([[8, 4, 24, 36]]), np.array([2])), (np.array([[40, 10, 80, 30]]), np.array([0]))])


def test_every_detection_head_is_a_layer_kind_with_the_same_functions():
    assert set(heads.HEADS) <= set(KINDS)
    for module in heads.HEADS.values():
        assert all(callable(getattr(module, f)) for f in ("encode", "loss", "decode")) and module.TERMS


def test_the_target_is_the_class_one_hot_then_the_box_as_fractions_of_the_input():
    target, dropped = localize.encode(_batch(), localize.Head(3), SIZE, np.float64)
    # Image 0: class 2; centre (16, 20) of an 80 × 40 input = (0.2, 0.5), size 16 × 32 = (0.2, 0.8).
    np.testing.assert_allclose(target[0], [0, 0, 1, 0.2, 0.5, 0.2, 0.8])
    np.testing.assert_allclose(target[1], [1, 0, 0, 0.75, 0.5, 0.5, 0.5])
    assert dropped == 0


def test_an_image_of_no_object_or_two_is_refused():
    two = Boxes.of_images([(np.array([[0, 0, 4, 4], [5, 5, 9, 9]]), np.array([0, 1]))])
    with pytest.raises(DataError, match="image 0 of the batch has 2"):
        localize.encode(two, localize.Head(3), SIZE)
    with pytest.raises(DataError, match="has 0"):
        localize.encode(Boxes.empty(1), localize.Head(3), SIZE)


def test_decode_gives_back_the_encoded_box():
    head = localize.Head(3)
    target, _ = localize.encode(_batch(), head, SIZE, np.float64)
    t = np.concatenate([np.where(target[:, :3] > 0, 5.0, -5.0), np.log(target[:, 3:] / (1 - target[:, 3:]))], axis=1)
    xyxy, score, classes = localize.decode(t, head, SIZE)
    np.testing.assert_allclose(xyxy[:, 0], _batch().xyxy, atol=1e-9)
    assert classes[:, 0].tolist() == [2, 0] and (score > 0.99).all()


def test_the_gradient_is_the_loss_s_by_finite_differences():
    head = localize.Head(3, box=5.0, cls=1.0)
    target, _ = localize.encode(_batch(), head, SIZE, np.float64)
    t = np.random.default_rng(0).normal(0, 1.5, target.shape)
    value, grad, terms = localize.loss(t, target, head)
    assert value == pytest.approx(terms.cls + terms.box)
    numeric = np.zeros_like(t)
    for idx in np.ndindex(t.shape):
        numeric[idx] = central_difference(t, idx, lambda: localize.loss(t, target, head)[0])
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
