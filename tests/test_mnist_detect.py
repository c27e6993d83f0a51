"""Tests of cnncli.data.mnist_detect: canvases of 1 to 4 digits, their boxes, the splits' sources and the cache.

Most tests use small synthetic sources (12 × 12 "digits" whose pixels tell which source and class they are);
the splits and the cache use fake MNIST files written into tmp_path and registered with their own checksums;
one test uses the real MNIST test files when they are present.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, needs_mnist

from cnncli import data
from cnncli.data import mnist_detect as md
from cnncli.engine.boxes import Boxes
from cnncli.errors import UsageError

H = 12      # side of the synthetic sources
SIZE = 48   # canvas side in most tests
SIDES = (0.25, 0.5)  # 12 to 24 px on a 48 canvas (at least H / 2)


# --------------------------------------------------------------------------- synthetic sources


def blob_sources(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sources of random ink (30..255) in a random rectangle of the 12 × 12 frame, some holes; labels 0..9."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, H, H), dtype=np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(0, 6, 2)
        y1, x1 = y0 + rng.integers(3, H - y0 + 1), x0 + rng.integers(3, H - x0 + 1)
        ink = rng.integers(30, 256, (y1 - y0, x1 - x0)) * (rng.random((y1 - y0, x1 - x0)) < 0.8)
        ink[0, 0] = ink[-1, -1] = 255  # the rectangle's corners inked: its tight box is the rectangle
        images[i, y0:y1, x0:x1] = ink
    return images, rng.integers(0, 10, n)


def value_of(label: int) -> int:
    return 40 + 20 * int(label)


def solid_sources(labels: np.ndarray, h: int = H) -> np.ndarray:
    """Each source a solid block of ``value_of(label)``: the block's inside keeps that value when resized (a
    weighted mean of equal pixels), so the brightest pixel of a digit on a canvas tells its class."""
    images = np.zeros((len(labels), h, h), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, h // 6: h - h // 6, h // 4: h - h // 4] = value_of(label)
    return images


def ink_box(window: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight box (x0, y0, x1, y1), exclusive ends, of a 2-D window's non-zero pixels (slow and obvious)."""
    ys, xs = np.nonzero(window)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def isolated(boxes: np.ndarray, j: int) -> bool:
    """Whether box ``j`` grown by one pixel meets no other box of its canvas."""
    x0, y0, x1, y1 = boxes[j] + np.array([-1, -1, 1, 1])
    return all(not (b[0] < x1 and x0 < b[2] and b[1] < y1 and y0 < b[3]) for i, b in enumerate(boxes) if i != j)


# --------------------------------------------------------------------------- generate


def test_same_seed_same_canvases_other_seed_others():
    images, labels = blob_sources(30, seed=1)
    a = md.generate(images, labels, 40, SIZE, seed=5, sides=SIDES)
    b = md.generate(images.copy(), labels.copy(), 40, SIZE, seed=5, sides=SIDES)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    c = md.generate(images, labels, 40, SIZE, seed=6, sides=SIDES)
    assert not np.array_equal(a[0], c[0])
    assert a[1] != c[1]
    d = md.generate(images, labels, 40, SIZE, seed=(5, 1), sides=SIDES)
    assert not np.array_equal(a[0], d[0])


def test_shapes_counts_and_boxes_inside_the_canvas():
    images, labels = blob_sources(30, seed=2)
    canvases, boxes = md.generate(images[:, None], labels, 300, SIZE, seed=0, sides=SIDES)
    assert canvases.shape == (300, 1, SIZE, SIZE) and canvases.dtype == np.uint8
    assert isinstance(boxes, Boxes) and len(boxes) == 300
    assert boxes.counts.min() >= 1 and boxes.counts.max() <= 4
    assert set(np.unique(boxes.counts)) == {1, 2, 3, 4}
    xyxy = boxes.xyxy
    assert np.array_equal(xyxy, np.round(xyxy))  # whole pixel edges
    assert (xyxy[:, :2] >= 0).all() and (xyxy[:, 2:] <= SIZE).all()
    assert (xyxy[:, 2] > xyxy[:, 0]).all() and (xyxy[:, 3] > xyxy[:, 1]).all()
    # the digit's side is within the sides asked for: its box is no larger than the frame
    assert (xyxy[:, 2:] - xyxy[:, :2]).max() <= 24


def test_boxes_are_tight_around_the_digits_ink():
    images, labels = blob_sources(40, seed=3)
    canvases, boxes = md.generate(images, labels, 200, SIZE, seed=1, sides=SIDES)
    checked = singles = 0
    for i in range(len(boxes)):
        canvas = canvases[i, 0]
        xyxy = boxes.image(i)[0].astype(np.int64)
        # no ink outside the boxes
        covered = np.zeros_like(canvas, dtype=bool)
        for x0, y0, x1, y1 in xyxy:
            covered[y0:y1, x0:x1] = True
        assert not canvas[~covered].any(), i
        if len(xyxy) == 1:
            assert ink_box(canvas) == tuple(xyxy[0]), i
            singles += 1
        for j, (x0, y0, x1, y1) in enumerate(xyxy):
            if isolated(xyxy, j):
                # the box's own ink reaches each of its four edges
                assert ink_box(canvas[y0:y1, x0:x1]) == (0, 0, x1 - x0, y1 - y0), (i, j)
                checked += 1
    assert singles > 20 and checked > 200


def test_classes_are_the_source_digits_labels():
    labels = np.arange(20) % 10
    images = solid_sources(labels)
    canvases, boxes = md.generate(images, labels, 200, SIZE, seed=2, sides=SIDES)
    checked = 0
    for i in range(len(boxes)):
        xyxy, classes = boxes.image(i)
        xyxy = xyxy.astype(np.int64)
        for j, ((x0, y0, x1, y1), cls) in enumerate(zip(xyxy, classes)):
            if isolated(xyxy, j):
                assert canvases[i, 0, y0:y1, x0:x1].max() == value_of(cls), (i, j)
                checked += 1
    assert checked > 200


def test_boxes_of_a_canvas_overlap_less_than_the_rule():
    images, labels = blob_sources(30, seed=4)
    for max_overlap in (0.3, 0.05):
        _, boxes = md.generate(images, labels, 200, SIZE, seed=3, sides=SIDES, max_overlap=max_overlap)
        for i in range(len(boxes)):
            b = boxes.image(i)[0].astype(np.int64).tolist()
            for p in range(len(b)):
                for q in range(p):
                    iw = max(0, min(b[p][2], b[q][2]) - max(b[p][0], b[q][0]))
                    ih = max(0, min(b[p][3], b[q][3]) - max(b[p][1], b[q][1]))
                    smaller = min((b[p][2] - b[p][0]) * (b[p][3] - b[p][1]), (b[q][2] - b[q][0]) * (b[q][3] - b[q][1]))
                    assert iw * ih < max_overlap * smaller, (i, p, q)


def test_draws_follow_the_documented_order():
    """The module docstring's derivation, computed here from the generator: each canvas's classes are those of its
    drawn sources, in slot order, with the first digit always kept; its first digit sits at its first position
    draw; a canvas never holds more digits than it drew."""
    labels = np.arange(23) % 10
    images = solid_sources(labels)
    count, tries = 120, 20
    canvases, boxes = md.generate(images, labels, count, SIZE, seed=(7, 1), sides=SIDES, tries=tries)
    bits = np.random.PCG64(np.random.SeedSequence([7, 1]))

    def uniform(*shape):
        return np.array([(int(w) >> 11) / 2**53 for w in bits.random_raw(int(np.prod(shape)))]).reshape(shape)

    u_count = uniform(count)
    wanted = 1 + np.minimum(np.floor(u_count * 4).astype(int), 3)
    source = np.minimum(np.floor(uniform(count, 4) * 23).astype(int), 22)
    side = 12 + np.minimum(np.floor(uniform(count, 4) * 13).astype(int), 12)
    first_position = uniform(count, tries, 2)[:, 0]  # slot 0's draws
    # the same numbers as numpy's own doubles of this stream today
    np.testing.assert_array_equal(np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, 1]))).random(count),
                                  u_count)
    dropped = 0
    for i in range(count):
        _, classes = boxes.image(i)
        drawn = labels[source[i, :wanted[i]]].tolist()
        assert len(classes) <= wanted[i]
        # classes are a subsequence of the drawn ones that starts with the first
        assert classes[0] == drawn[0]
        it = iter(drawn)
        assert all(any(c == d for d in it) for c in classes.tolist()), i
        dropped += wanted[i] - len(classes)
        # the first digit: its frame at the first draw, its box the resized source's ink moved there
        s = side[i, 0]
        corner = np.minimum(np.floor(first_position[i] * (SIZE - s + 1)).astype(int), SIZE - s)
        x0, y0, x1, y1 = ink_box(md.resize(images[source[i, 0]][None], s)[0])
        expected = [corner[0] + x0, corner[1] + y0, corner[0] + x1, corner[1] + y1]
        assert boxes.image(i)[0][0].tolist() == expected, i
    assert dropped < 0.05 * wanted.sum()


def test_a_digit_without_a_place_is_left_out_and_the_first_always_stays():
    images, labels = blob_sources(10, seed=5)
    _, boxes = md.generate(images, labels, 100, SIZE, seed=0, digits=(4, 4), sides=(0.5, 0.5), tries=1,
                           max_overlap=0.05)
    assert boxes.counts.min() >= 1 and boxes.counts.max() <= 4
    assert boxes.counts.mean() < 4  # 24 px frames, one try each: some digits found no place


def test_resize_is_pillows_bilinear():
    pil = pytest.importorskip("PIL.Image")
    images, _ = blob_sources(6, seed=6)
    for side in (6, 7, 9, 11, 13, 17, 24, 31, 40):
        ours = md.resize(images, side)
        theirs = np.stack([np.asarray(pil.fromarray(im).resize((side, side), pil.Resampling.BILINEAR))
                           for im in images])
        # Pillow rounds to 8 bits between its two passes, resize at the end only
        assert np.abs(ours.astype(int) - theirs).max() <= 1, side


def test_no_source_pixel_vanishes_in_resizing():
    """The guarantee behind MIN_INK: a lone pixel of MIN_INK, anywhere in the frame, survives every side from
    half the frame up."""
    lone = np.zeros((H * H, H, H), dtype=np.uint8)
    lone[np.arange(H * H), np.arange(H * H) // H, np.arange(H * H) % H] = md.MIN_INK
    for side in range(H // 2, 4 * H + 1):
        assert md.resize(lone, side).reshape(H * H, -1).max(axis=1).min() > 0, side


@pytest.mark.parametrize("call, words", [
    (lambda x, y: md.generate(x, y, 0), "count 0"),
    (lambda x, y: md.generate(x, y, 5, seed=-1), "seed -1"),
    (lambda x, y: md.generate(x, y, 5, seed="a"), "seed 'a'"),
    (lambda x, y: md.generate(x, y[:-1], 5), "one per image"),
    (lambda x, y: md.generate(x.astype(np.float32), y, 5), "uint8"),
    (lambda x, y: md.generate(x[:, :, :10], y, 5), "(n, h, h)"),
    (lambda x, y: md.generate(x, y, 5, size=20), "half the source's 12"),
    (lambda x, y: md.generate(x, y, 5, size=48, sides=(0.5, 1.5)), "canvas's 48"),
    (lambda x, y: md.generate(x, y, 5, digits=(0, 4)), "digits (0, 4)"),
    (lambda x, y: md.generate(x, y, 5, max_overlap=0), "max_overlap 0"),
    (lambda x, y: md.generate(x, y, 5, tries=0), "tries 0"),
    (lambda x, y: md.generate(np.concatenate([x, np.zeros((1, H, H), np.uint8)]), np.append(y, 1), 5),
     "index 10"),
])
def test_mistakes_are_usage_errors(call, words):
    images, labels = blob_sources(10, seed=7)
    with pytest.raises(UsageError) as e:
        call(images, labels)
    assert words in str(e.value)


def test_class_names_are_the_base_datasets():
    assert md.classes() == tuple(str(d) for d in range(10))
    assert md.classes("fashion-mnist") == tuple(data.class_names("fashion-mnist"))
    with pytest.raises(UsageError, match="cifar10"):
        md.classes("cifar10")


# --------------------------------------------------------------------------- splits and the cache


def idx_file(array: np.ndarray, magic: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch, isolated_data) -> Path:
    """A data folder of fake MNIST files, registered with their checksums: train sources solid blocks of classes
    0..4, test sources of classes 5..9 (so a canvas's pixels and classes tell which split it was drawn from)."""
    folder = tmp_path / "data"
    folder.mkdir()
    sums = {}
    info = data.DATASETS["mnist"]
    for split, classes in (("train", np.arange(5)), ("test", np.arange(5, 10))):
        labels = np.tile(classes, 3).astype(np.uint8)
        files = {"images": idx_file(solid_sources(labels, 28), data.IMAGES_MAGIC),
                 "labels": idx_file(labels, data.LABELS_MAGIC)}
        for kind, name in zip(("images", "labels"), info.splits[split]):
            (folder / f"{name}.gz").write_bytes(gzip.compress(files[kind]))
            sums[name] = hashlib.sha256(files[kind]).hexdigest()
    monkeypatch.setitem(data.DATASETS, "mnist", dataclasses.replace(info, sha256=sums))
    return folder


def test_each_split_is_drawn_from_its_own_sources(fake_mnist):
    for split, allowed in (("train", range(5)), ("test", range(5, 10))):
        canvases, boxes = md.load(split, fake_mnist, count=40, size=56)
        assert canvases.shape == (40, 1, 56, 56) and len(boxes) == 40
        assert set(boxes.classes.tolist()) <= set(allowed)
        for i in range(len(boxes)):
            xyxy, classes = boxes.image(i)
            xyxy = xyxy.astype(np.int64)
            for j, ((x0, y0, x1, y1), cls) in enumerate(zip(xyxy, classes)):
                if isolated(xyxy, j):
                    assert canvases[i, 0, y0:y1, x0:x1].max() == value_of(cls)


def test_load_seeds_each_split_as_documented(fake_mnist):
    for split, stream in (("train", 0), ("test", 1)):
        images, labels = data.load("mnist", split, fake_mnist)
        expected = md.generate(images, labels, 30, 56, seed=(3, stream))
        got = md.load(split, fake_mnist, count=30, size=56, seed=3)
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[1] == expected[1]


def test_the_cache_round_trip(fake_mnist, monkeypatch):
    first = md.load("test", fake_mnist, count=25, size=56)
    entries = sorted(md.cache_folder().glob("*.npz"))
    assert len(entries) == 1 and entries[0].name.startswith("mnist-test-")

    real_generate = md.generate

    def refuse(*args, **kwargs):
        raise AssertionError("generated again instead of reading the cache")

    monkeypatch.setattr(md, "generate", refuse)
    again = md.load("test", fake_mnist, count=25, size=56)
    np.testing.assert_array_equal(again[0], first[0])
    assert again[1] == first[1]
    assert again[0].flags.writeable

    # another count, size or seed is another entry
    monkeypatch.setattr(md, "generate", real_generate)
    md.load("test", fake_mnist, count=26, size=56)
    other = set(md.cache_folder().glob("*.npz")) - set(entries)
    assert len(other) == 1

    # a changed base file: made again, and the entry it replaces is gone
    images_file = fake_mnist / "t10k-images-idx3-ubyte.gz"
    st = images_file.stat()
    os.utime(images_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    monkeypatch.setattr(md, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    remade = md.load("test", fake_mnist, count=25, size=56)
    assert calls == [1] and remade[1] == first[1]
    (entry,) = set(md.cache_folder().glob("*.npz")) - other
    assert entry != entries[0] and not entries[0].exists()

    # a damaged entry is made again, without an error
    entry.write_bytes(entry.read_bytes()[:100])
    repaired = md.load("test", fake_mnist, count=25, size=56)
    assert calls == [1, 1] and repaired[1] == first[1]
    md.load("test", fake_mnist, count=25, size=56)
    assert calls == [1, 1]


def test_an_unwritable_cache_costs_only_time(fake_mnist, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    canvases, boxes = md.load("train", fake_mnist, count=10, size=56)
    assert canvases.shape == (10, 1, 56, 56) and len(boxes) == 10


def test_load_mistakes_are_usage_errors(fake_mnist):
    with pytest.raises(UsageError, match="unknown split 'val'"):
        md.load("val", fake_mnist)
    with pytest.raises(UsageError, match="unknown base dataset 'cifar10'"):
        md.load("train", fake_mnist, base="cifar10")
    with pytest.raises(UsageError, match="count 0"):
        md.load("train", fake_mnist, count=0)
    with pytest.raises(UsageError, match="half the source's 28"):
        md.load("train", fake_mnist, count=5, size=32)


@needs_mnist
def test_real_mnist_test_canvases(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNCLI_DATA", str(DATA))
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    canvases, boxes = md.load("test", count=200)
    assert canvases.shape == (200, 1, 96, 96) and len(boxes) == 200
    assert 1 <= boxes.counts.min() and boxes.counts.max() <= 4
    assert set(boxes.classes.tolist()) <= set(range(10))
    images, labels = data.load("mnist", "test")
    expected = md.generate(images, labels, 200, 96, seed=(0, 1))
    np.testing.assert_array_equal(canvases, expected[0])
    assert boxes == expected[1]
    # a real digit's box is its ink: check the single-digit canvases
    for i in np.flatnonzero(boxes.counts == 1):
        assert ink_box(canvases[i, 0]) == tuple(boxes.image(i)[0][0].astype(int).tolist())
