"""Input adaptation and augmentation (cnncli.records.inputs) against slow, obvious references."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.errors import UsageError
from cnncli.records import inputs


def _images(n=5, c=1, h=6, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def _scale(images, dtype):
    """A stand-in for the dataset's normalisation: anything elementwise and exact."""
    return images.astype(dtype) / 255


def test_the_same_shape_is_used_as_is():
    p = inputs.plan("MNIST", (1, 28, 28), (1, 28, 28), "lenet5")
    assert p.identity and p.describe() == "as is"
    x = _images(3, 1, 28, 28)
    np.testing.assert_array_equal(p.batch(x, np.float64, _scale), x / 255)


def test_grey_digits_in_a_colour_network_are_padded_and_replicated():
    p = inputs.plan("MNIST", (1, 28, 28), (3, 32, 32), "resnet20")
    assert p.border == (2, 2, 2, 2) and p.crop is None and p.replicate
    assert p.describe() == "28×28 padded to 32×32 with zeros, grey replicated into 3 channels"
    x = _images(2, 1, 28, 28)
    got = p.batch(x, np.float32, _scale)
    want = np.zeros((2, 3, 32, 32), np.float32)
    for i in range(2):
        for ch in range(3):
            want[i, ch, 2:30, 2:30] = x[i, 0] / np.float32(255)
    np.testing.assert_array_equal(got, want)


def test_a_slightly_larger_image_is_centre_cropped():
    p = inputs.plan("CIFAR-10", (3, 32, 32), (3, 28, 28), "small")
    assert p.crop == (2, 2) and p.describe() == "32×32 centre-cropped to 28×28"
    x = _images(2, 3, 32, 32)
    np.testing.assert_array_equal(p.batch(x, np.float64, _scale), x[:, :, 2:30, 2:30] / 255)


def test_odd_differences_put_the_extra_pixel_after():
    p = inputs.plan("D", (1, 28, 28), (1, 31, 29), "m")
    assert p.border == (1, 2, 0, 1)


@pytest.mark.parametrize("source,target,fragment", [
    ((3, 32, 32), (1, 32, 32), "only replicates a grey channel"),
    ((1, 28, 28), (2, 28, 28), "only replicates a grey channel"),
    ((1, 28, 28), (1, 224, 224), "resizing is not done"),
    ((3, 32, 32), (3, 8, 8), "resizing is not done"),
    ((1, 28, 28), (784,), "not images"),
    ((1, 28, 28), (1, 32, 24), "one side would be padded and the other cropped"),
])
def test_impossible_combinations_say_why(source, target, fragment):
    with pytest.raises(UsageError, match=fragment):
        inputs.plan("D", source, target, "m")


def test_crop_padding_larger_than_half_the_input_is_refused():
    with pytest.raises(UsageError, match="--crop-padding 20"):
        inputs.plan("D", (3, 32, 32), (3, 32, 32), "m", inputs.Augmentation(20, False))
    with pytest.raises(UsageError, match="--crop-padding"):
        inputs.Augmentation(-1, False)


def _augment_reference(images, p, dy, dx, flip):
    n, c, h, w = images.shape
    out = np.empty_like(images)
    for i in range(n):
        padded = np.zeros((c, h + 2 * p, w + 2 * p), images.dtype)
        padded[:, p:p + h, p:p + w] = images[i]
        window = padded[:, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
        out[i] = window[:, :, ::-1] if flip[i] else window
    return out


@pytest.mark.parametrize("p,flip", [(4, True), (4, False), (0, True), (2, True)])
def test_augmentation_equals_pad_crop_and_flip_done_one_image_at_a_time(p, flip):
    aug = inputs.Augmentation(p, flip)
    x = _images(40, 3, 9, 7, seed=1)
    d = aug.draws(seed=3, epoch=2, n=len(x))
    assert d.dy.min() >= 0 and d.dy.max() <= 2 * p and d.dx.max() <= 2 * p
    if flip:
        assert 0 < d.flip.sum() < len(x)
    else:
        assert not d.flip.any()
    np.testing.assert_array_equal(aug.apply(x, d.dy, d.dx, d.flip), _augment_reference(x, p, d.dy, d.dx, d.flip))


def test_draws_depend_on_seed_and_epoch_only():
    aug = inputs.Augmentation(4, True)
    a, b = aug.draws(0, 5, 1000), aug.draws(0, 5, 1000)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("dy", "dx", "flip"))
    c = aug.draws(0, 6, 1000)
    assert not np.array_equal(a.dy, c.dy)
    d = aug.draws(1, 5, 1000)
    assert not np.array_equal(a.dx, d.dx)
    # every offset and both flips occur, about equally often
    assert set(np.unique(a.dy)) == set(range(9)) and 400 < a.flip.sum() < 600


def test_a_training_batch_is_augmented_then_normalised():
    p = inputs.plan("D", (3, 8, 8), (3, 8, 8), "m", inputs.Augmentation(2, True))
    x = _images(6, 3, 8, 8, seed=2)
    d = p.augmentation.draws(0, 0, 6)
    got = p.batch(x, np.float64, _scale, (d.dy, d.dx, d.flip))
    np.testing.assert_array_equal(got, _augment_reference(x, 2, d.dy, d.dx, d.flip) / 255)
    # without draws (validation, test) nothing is augmented
    np.testing.assert_array_equal(p.batch(x, np.float64, _scale), x / 255)


def test_boxes_move_with_their_pixels():
    """A box drawn as a filled rectangle, augmented (crop after a border, flip) and bordered: the moved box is the
    tight box of the moved pixels, or dropped when too little of it is left (KEEP_SHARE, MIN_SIDE)."""
    from cnncli.engine.boxes import Boxes

    rng = np.random.default_rng(0)
    augmentation = inputs.Augmentation(4, True)
    plan = inputs.plan("x", (1, 20, 24), (1, 24, 28), "m", augmentation)  # a 2-pixel border around the image
    kept = 0
    for trial in range(300):
        x0, y0 = int(rng.integers(0, 23)), int(rng.integers(0, 19))
        x1, y1 = int(rng.integers(x0 + 1, 25)), int(rng.integers(y0 + 1, 21))
        image = np.zeros((1, 1, 20, 24), np.uint8)
        image[0, 0, y0:y1, x0:x1] = 255
        d = augmentation.draws(trial, 0, 1)
        out = augmentation.apply(plan.adapt(image), d.dy, d.dx, d.flip)
        moved = plan.boxes(Boxes.of_images([(np.array([[x0, y0, x1, y1]]), np.array([3]))]), (d.dy, d.dx, d.flip))
        ys, xs = np.nonzero(out[0, 0])
        if not len(moved.classes):
            area = len(ys)
            assert area < inputs.KEEP_SHARE * (x1 - x0) * (y1 - y0) or len(set(xs)) < inputs.MIN_SIDE \
                or len(set(ys)) < inputs.MIN_SIDE
            continue
        kept += 1
        assert moved.classes.tolist() == [3]
        np.testing.assert_array_equal(moved.xyxy[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert kept > 200
