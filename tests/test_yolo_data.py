"""Tests of cnncli.data.yolo: YOLO folders (Ultralytics' layout) scanned, labels checked, images letterboxed.

Every dataset is a few tiny PNG files with coloured rectangles, written with Pillow into tmp_path, and their
label files; the cache goes to tmp_path too (XDG_CACHE_HOME). Expected boxes are worked out by hand from the
letterbox rule in the comments beside them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from helpers import count_image_opens  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from cnncli.data import DataWarning, folder, yolo  # noqa: E402
from cnncli.engine.boxes import Boxes  # noqa: E402
from cnncli.errors import DataError, UsageError  # noqa: E402

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
SHAPE = (3, 32, 48)  # C, H, W: a wide input, so that tall and wide images are padded on different sides


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home / "cnncli" / "yolo"


def picture(path: Path, size: tuple[int, int], rects=(), background=WHITE, **save) -> Path:
    """A ``size`` (width, height) image of ``background`` with rectangles ``(x0, y0, x1, y1, colour)`` covering
    the pixels x0 <= x < x1, y0 <= y < y1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1, colour in rects:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=colour)  # Pillow's rectangle includes its far corner
    img.save(path, **save)
    return path


def labels(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def write_yaml(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(text)
    return root


#: The rectangles of the standard dataset, in each image's own pixels.
TALL_RECT = (4, 6, 12, 18)     # in a 20 × 30 image: centre (8, 12), size 8 × 12
WIDE_RECT = (10, 4, 30, 12)    # in a 40 × 20 image: centre (20, 8), size 20 × 8


def dataset(root: Path, names="names: [red, blue]") -> Path:
    """train: a tall image with a red rectangle (class 0), a wide one with a blue rectangle (class 1), a wide one
    without a label file; val: a tall image with an empty label file."""
    picture(root / "images/train/a.png", (20, 30), [(*TALL_RECT, RED)])
    labels(root / "labels/train/a.txt", "0 0.4 0.4 0.4 0.4")           # 8/20, 12/30, 8/20, 12/30
    picture(root / "images/train/b.png", (40, 20), [(*WIDE_RECT, BLUE)])
    labels(root / "labels/train/b.txt", "1 0.5 0.4 0.5 0.4")           # 20/40, 8/20, 20/40, 8/20
    picture(root / "images/train/c.png", (40, 20))
    picture(root / "images/val/d.png", (20, 30), [(*TALL_RECT, RED)])
    labels(root / "labels/val/d.txt")
    return write_yaml(root, f"{names}\ntrain: images/train\nval: images/val\n")


# Where the rectangles land in a 48 × 32 input, by the letterbox rule (r = min(W / w, H / h), scaled size
# round(w r) × round(h r), offset ((W - w') // 2, (H - h') // 2), x → x · w'/w + left):
#   tall 20 × 30: r = min(48/20, 32/30) = 1.0667 → 21 × 32 (round(21.33) = 21), left (48 - 21) // 2 = 13, top 0;
#                 x 4 → 4 · 21/20 + 13 = 17.2, x 12 → 12.6 + 13 = 25.6; y 6 → 6 · 32/30 = 6.4, y 18 → 19.2
#   wide 40 × 20: r = min(48/40, 32/20) = 1.2 → 48 × 24, left 0, top (32 - 24) // 2 = 4;
#                 x 10 → 12, x 30 → 36; y 4 → 4 · 1.2 + 4 = 8.8, y 12 → 18.4
TALL_IN_INPUT = (17.2, 6.4, 25.6, 19.2)
WIDE_IN_INPUT = (12.0, 8.8, 36.0, 18.4)
TALL_PLACE = (13, 0, 21, 32)   # left, top, scaled width, scaled height
WIDE_PLACE = (0, 4, 48, 24)


def assert_lands(pixels: np.ndarray, box, place, colour, background=WHITE) -> None:
    """Pixels (C, H, W): a pixel whose centre is at least one pixel inside ``box`` is ``colour``; one at least one
    pixel outside it but inside the scaled image is ``background``; the padding around the image is grey 114."""
    c, h, w = pixels.shape
    cx = np.arange(w) + 0.5
    cy = np.arange(h) + 0.5
    x0, y0, x1, y1 = box
    inside = ((cx[None] >= x0 + 1) & (cx[None] <= x1 - 1)) & ((cy[:, None] >= y0 + 1) & (cy[:, None] <= y1 - 1))
    near = ((cx[None] > x0 - 1) & (cx[None] < x1 + 1)) & ((cy[:, None] > y0 - 1) & (cy[:, None] < y1 + 1))
    left, top, sw, sh = place
    image = np.zeros((h, w), bool)
    image[top:top + sh, left:left + sw] = True
    want = np.array(colour if c == 3 else colour[:1], dtype=np.int64)[:, None]
    assert inside.sum() > 20
    assert np.all(np.abs(pixels[:, inside].astype(np.int64) - want) <= 2)
    outside = image & ~near
    back = np.array(background if c == 3 else background[:1], dtype=np.int64)[:, None]
    assert outside.sum() > 20
    assert np.all(np.abs(pixels[:, outside].astype(np.int64) - back) <= 2)
    assert np.all(pixels[:, ~image] == yolo.PAD)


def loaded(ds, split="train", shape=SHAPE):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        return yolo.load_split(ds, split, shape)


# --------------------------------------------------------------------------- the letterbox


def test_boxes_land_on_the_drawn_rectangles(tmp_path):
    ds = yolo.scan(dataset(tmp_path / "shapes"))
    assert ds.names == ("red", "blue") and set(ds.splits) == {"train", "val"}
    part = loaded(ds)
    assert part.images.dtype == np.uint8 and part.images.shape == (3, *SHAPE)
    assert [f.name for f in part.files] == ["images/train/a.png", "images/train/b.png", "images/train/c.png"]
    assert part.sizes.tolist() == [[20, 30], [40, 20], [40, 20]]
    assert isinstance(part.boxes, Boxes) and part.boxes.counts.tolist() == [1, 1, 0]
    tall, tall_class = part.boxes.image(0)
    wide, wide_class = part.boxes.image(1)
    np.testing.assert_allclose(tall[0], TALL_IN_INPUT, atol=1e-4)
    np.testing.assert_allclose(wide[0], WIDE_IN_INPUT, atol=1e-4)
    assert tall_class.tolist() == [0] and wide_class.tolist() == [1]
    assert_lands(part.images[0], TALL_IN_INPUT, TALL_PLACE, RED)
    assert_lands(part.images[1], WIDE_IN_INPUT, WIDE_PLACE, BLUE)
    assert np.all(part.images[2][:, 4:28] == 255) and np.all(part.images[2][:, :4] == yolo.PAD)
    images, boxes = yolo.load(ds, "train", SHAPE)
    assert np.array_equal(images, part.images) and boxes == part.boxes


def test_letterbox_geometry_and_its_inverse():
    tall = yolo.letterbox(20, 30, SHAPE)
    assert (tall.left, tall.top, tall.scaled_width, tall.scaled_height) == TALL_PLACE
    wide = yolo.letterbox(40, 20, SHAPE)
    assert (wide.left, wide.top, wide.scaled_width, wide.scaled_height) == WIDE_PLACE
    # shrinking: 480 × 100 into 48 × 32: r = min(0.1, 0.32) = 0.1 → 48 × 10, top (32 - 10) // 2 = 11
    big = yolo.letterbox(480, 100, SHAPE)
    assert (big.left, big.top, big.scaled_width, big.scaled_height) == (0, 11, 48, 10)
    np.testing.assert_allclose(tall.to_input(np.array([TALL_RECT])), [TALL_IN_INPUT], atol=1e-4)
    np.testing.assert_allclose(tall.to_image(np.array([TALL_IN_INPUT])), [TALL_RECT], atol=1e-4)
    rng = np.random.default_rng(0)
    for box in (tall, wide, big):
        corners = np.sort(rng.uniform(0, 1, (50, 2, 2)), axis=1) * [box.width, box.height]
        xyxy = corners.reshape(50, 4)
        np.testing.assert_allclose(box.to_image(box.to_input(xyxy)), xyxy, atol=1e-3)
    # a model's box reaching into the padding is clipped to the image's edge
    np.testing.assert_allclose(tall.to_image(np.array([[0, 0, 48, 32]])), [[0, 0, 20, 30]], atol=1e-4)
    assert yolo.describe(SHAPE) == ("RGB, letterboxed to 32×48 (scaled to fit, aspect ratio kept, centred, padded "
                                    "with grey 114)")


def test_read_letterboxed_and_the_split_agree_and_grey_follows_the_folder_rule(tmp_path):
    ds = yolo.scan(dataset(tmp_path / "shapes"))
    pixels, box = yolo.read_letterboxed(ds.splits["train"][0].path, SHAPE)
    part = loaded(ds)
    assert np.array_equal(pixels, part.images[0]) and box == part.letterbox(0)
    grey = loaded(ds, shape=(1, 32, 48))
    assert grey.images.shape == (3, 1, 32, 48)
    assert grey.boxes == part.boxes  # the geometry does not depend on the colours
    # ITU-R 601-2 luma, as image folders convert: red → 0.299 × 255 = 76, blue → 0.114 × 255 = 29
    assert_lands(grey.images[0], TALL_IN_INPUT, TALL_PLACE, (76,), background=(255,))
    assert_lands(grey.images[1], WIDE_IN_INPUT, WIDE_PLACE, (29,), background=(255,))


def test_exif_orientation_turns_the_image_before_its_labels_apply(tmp_path):
    # stored 30 wide × 20 high; EXIF 6 turns it a quarter clockwise, so it is 20 × 30 upright, and the labels
    # (of the upright image) are those of the tall standard image
    upright = Image.new("RGB", (20, 30), WHITE)
    ImageDraw.Draw(upright).rectangle((4, 6, 11, 17), fill=RED)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what EXIF 6 turns back a quarter clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    root = tmp_path / "turned"
    (root / "images/train").mkdir(parents=True)
    stored.save(root / "images/train/t.jpg", exif=exif, quality=98)
    labels(root / "labels/train/t.txt", "0 0.4 0.4 0.4 0.4")
    write_yaml(root, "names: [red]\ntrain: images/train\n")
    part = loaded(yolo.scan(root))
    assert part.sizes.tolist() == [[20, 30]]
    np.testing.assert_allclose(part.boxes.xyxy[0], TALL_IN_INPUT, atol=1e-4)
    centre = part.images[0][:, 12, 21].astype(int)   # (21.4, 12.8) is the box's centre
    assert centre[0] > 200 and centre[1] < 60 and centre[2] < 60


def test_a_large_jpeg_is_drafted_but_keeps_its_own_size(tmp_path):
    # 400 × 300 into 48 × 32: r = min(0.12, 0.1067) → 43 × 32 (round(42.67)), left (48 - 43) // 2 = 2, top 0;
    # the rectangle x 100..300, y 75..225 → x 100 · 43/400 + 2 = 12.75 .. 34.25, y 75 · 32/300 = 8 .. 24.
    # Pillow decodes it at half size (twice 48 still fits in 150 rows), which must not change the geometry.
    root = tmp_path / "big"
    picture(root / "images/train/big.jpg", (400, 300), [(100, 75, 300, 225, RED)], quality=95)
    labels(root / "labels/train/big.txt", "0 0.5 0.5 0.5 0.5")
    write_yaml(root, "names: [red]\ntrain: images/train\n")
    part = loaded(yolo.scan(root))
    assert part.sizes.tolist() == [[400, 300]]
    np.testing.assert_allclose(part.boxes.xyxy, [[12.75, 8, 34.25, 24]], atol=1e-4)
    assert (part.letterbox(0).left, part.letterbox(0).scaled_width) == (2, 43)
    centre = part.images[0][:, 16, 23].astype(int)
    assert centre[0] > 200 and centre[1] < 60 and centre[2] < 60


# --------------------------------------------------------------------------- the yaml and the layout


def test_names_as_a_list_or_a_mapping(tmp_path):
    as_list = yolo.scan(dataset(tmp_path / "a"))
    as_map = yolo.scan(dataset(tmp_path / "b", names="names:\n  1: blue\n  0: red\nnc: 2"))
    quoted = yolo.scan(dataset(tmp_path / "c", names="names: {'0': red, '1': blue}"))
    assert as_list.names == as_map.names == quoted.names == ("red", "blue")


def test_missing_label_file_and_empty_label_file_mean_no_objects(tmp_path):
    ds = yolo.scan(dataset(tmp_path / "shapes"))
    assert ds.notes == ("train: 1 of 3 images have no label file and so no objects (e.g. labels/train/c.txt)",)
    assert loaded(ds).boxes.counts.tolist() == [1, 1, 0]
    val = loaded(ds, "val")
    assert len(val.files) == 1 and val.boxes.counts.tolist() == [0] and val.boxes.xyxy.shape == (0, 4)


def test_roboflow_and_cvat_layouts(tmp_path):
    # Roboflow: train/images beside train/labels, data.yaml saying ../train/images (Ultralytics drops the ../)
    robo = tmp_path / "robo"
    picture(robo / "train/images/a.png", (20, 30), [(*TALL_RECT, RED)])
    labels(robo / "train/labels/a.txt", "0 0.4 0.4 0.4 0.4")
    picture(robo / "valid/images/b.png", (40, 20), [(*WIDE_RECT, BLUE)])
    labels(robo / "valid/labels/b.txt", "1 0.5 0.4 0.5 0.4")
    write_yaml(robo, "train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['red', 'blue']\n")
    ds = yolo.scan(robo)
    assert ds.splits["train"][0].label_name == "train/labels/a.txt"
    np.testing.assert_allclose(loaded(ds, "val").boxes.xyxy, [WIDE_IN_INPUT], atol=1e-4)
    # CVAT: path: ./, train: train.txt listing images relative to path:, a mapping of names
    cvat = tmp_path / "cvat"
    picture(cvat / "images/train/a.png", (20, 30), [(*TALL_RECT, RED)])
    labels(cvat / "labels/train/a.txt", "0 0.4 0.4 0.4 0.4")
    picture(cvat / "images/train/unlisted.png", (20, 30))
    (cvat / "train.txt").write_text("images/train/a.png\n\n")
    write_yaml(cvat, "path: ./\ntrain: train.txt\nnames:\n  0: red\n")
    ds = yolo.scan(cvat)
    assert [f.name for f in ds.splits["train"]] == ["images/train/a.png"] and "val" not in ds.splits
    np.testing.assert_allclose(loaded(ds).boxes.xyxy, [TALL_IN_INPUT], atol=1e-4)
    with pytest.raises(DataError, match=r"names no val split .*add `val:"):
        yolo.load(ds, "val", SHAPE)
    # a list's ./ lines are relative to the list's folder (Ultralytics' rule); the same image in two splits is said
    (cvat / "lists").mkdir()
    (cvat / "lists/val.txt").write_text("./../images/train/a.png\n")
    write_yaml(cvat, "path: ./\ntrain: train.txt\nval: lists/val.txt\nnames:\n  0: red\n")
    ds = yolo.scan(cvat)
    assert [f.name for f in ds.splits["val"]] == ["images/train/a.png"]
    assert ds.notes == ("1 image is in both train and val: scores on val are then not of unseen images",)


def test_polygon_labels_are_read_as_their_box_and_repeated_lines_once(tmp_path):
    root = dataset(tmp_path / "shapes")
    # the tall rectangle as a polygon (x 4..12 of 20, y 6..18 of 30), given twice: one object
    polygon = "0 0.2 0.2 0.6 0.2 0.6 0.6 0.2 0.6"
    labels(root / "labels/train/a.txt", polygon, polygon)
    ds = yolo.scan(root)
    with pytest.warns(DataWarning, match=r"1 repeated line dropped \(labels/train/a.txt: 1\)"):
        part = yolo.load_split(ds, "train", SHAPE)
    assert part.boxes.counts.tolist() == [1, 1, 0]
    np.testing.assert_allclose(part.boxes.xyxy[0], TALL_IN_INPUT, atol=1e-4)


def test_a_box_within_the_tolerance_is_clipped(tmp_path):
    root = dataset(tmp_path / "shapes")
    # x from 0.5 - 0.5005 = -0.0005 to 1.0005: within 1e-3 of the image, clipped to 0..1 (the whole width)
    labels(root / "labels/train/b.txt", "1 0.5 0.4 1.001 0.4")
    part = loaded(yolo.scan(root))
    np.testing.assert_allclose(part.boxes.image(1)[0], [[0, 8.8, 48, 18.4]], atol=1e-4)


# --------------------------------------------------------------------------- errors


def test_yaml_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "coco8.yaml").write_text("names: [a]\n")
    with pytest.raises(DataError, match=r"empty has no data.yaml.*it holds coco8.yaml: give that file's path"):
        yolo.scan(empty)
    assert yolo.scan(dataset(tmp_path / "given")).yaml == (tmp_path / "given/data.yaml").resolve()
    assert yolo.scan(tmp_path / "given/data.yaml").names == ("red", "blue")
    with pytest.raises(DataError, match="does not exist"):
        yolo.scan(tmp_path / "nowhere")
    root = dataset(tmp_path / "shapes")
    cases = {
        "train: images/train\nval: images/val\n": r"has no names: list the class names",
        "train: images/train\nnc: 2\n": r"has no names: .*\(nc: 2 gives only their number\)",
        "names: {0: red, 2: blue}\ntrain: images/train\n": r"names: the keys must be the class indices 0..1.*2 is not",
        "names: [red, blue]\nnc: 3\ntrain: images/train\n": r"nc: 3 must be the number of names, 2",
        "names: [red, ~]\ntrain: images/train\n": r"names: class 1 has no name",
        "names: [red]\nval: images/val\n": r"names no train split",
        "names: [red]\ntrain: images/train\nval: images/nope\n":
            r"data.yaml: val: images/nope does not exist \(.*images/nope\); split paths are relative to .*shapes "
            r"\(the yaml file's folder",
        "names: [red]\npath: elsewhere\ntrain: images/train\n": r"path: elsewhere \(.*\) is not a folder",
        "names: [red]\ntrain: [images/train\n": r"data.yaml line 3 is not valid YAML",
        "- names\n": r"must be a YAML mapping",
    }
    for text, message in cases.items():
        (root / "data.yaml").write_text(text)
        with pytest.raises(DataError, match=message):
            yolo.scan(root)


def test_no_images_and_missing_listed_images(tmp_path):
    root = dataset(tmp_path / "shapes")
    (root / "images/empty").mkdir()
    (root / "images/empty/notes.md").write_text("x")
    (root / "data.yaml").write_text("names: [red]\ntrain: images/train\nval: images/empty\n")
    with pytest.raises(DataError, match=r"the val split \(images/empty\) holds no images \(.png, .jpg, .jpeg\) "
                                        r"\(1 other file found\)"):
        yolo.scan(root)
    (root / "val.txt").write_text("images/val/d.png\nimages/val/gone.png\n./also-gone.jpg\n")
    (root / "data.yaml").write_text("names: [red]\ntrain: images/train\nval: val.txt\n")
    with pytest.raises(DataError, match=r"val.txt \(the val list of .*\) names 2 images that do not exist: "
                                        r"images/val/gone.png, ./also-gone.jpg; a line ./x.jpg is relative"):
        yolo.scan(root)


def test_label_errors_are_reported_together_with_file_and_line(tmp_path):
    root = dataset(tmp_path / "shapes")
    labels(root / "labels/train/a.txt",
           "0 0.4 0.4 0.4 0.4",            # line 1: fine
           "0 0.5 0.5 0.2",                # 2: four numbers
           "0 0.5 0.5 0.2 0.2 0.9",        # 3: six numbers
           "cat 0.5 0.5 0.1 0.1",          # 4: not a number
           "2 0.5 0.5 0.1 0.1",            # 5: class outside names
           "0.5 0.5 0.5 0.1 0.1",          # 6: class not whole
           "0 0.9 0.5 0.4 0.2",            # 7: reaches x = 1.1
           "0 0.5 0.5 0 0.1",              # 8: width 0
           "",                             # 9: blank, skipped
           "1 0.5 0.5 0.1 nan")            # 10: not finite
    labels(root / "labels/train/b.txt", "1 0.5 0.5 0.3 -0.2")
    ds = yolo.scan(root)
    with pytest.raises(DataError) as caught:
        yolo.load(ds, "train", SHAPE)
    text = str(caught.value)
    assert text.startswith(f"9 problems in the label files of the train split of {ds.yaml}: ")
    expected = [
        "labels/train/a.txt line 2: 4 numbers; a box is 5 (class cx cy w h) and a polygon an odd number from 7 "
        "(class x1 y1 ...) (the class left out?)",
        "labels/train/a.txt line 3: 6 numbers; a box is 5 (class cx cy w h) and a polygon an odd number from 7 "
        "(class x1 y1 ...); a sixth number is a prediction's confidence, which a label has not",
        "labels/train/a.txt line 4: 'cat' is not a number",
        "labels/train/a.txt line 5: class 2 is not one of the 2 names (0..1)",
        "labels/train/a.txt line 6: class 0.5 is not a whole number",
        "labels/train/a.txt line 7: the box reaches 1.1, outside the image ([0, 1] as fractions of its width and "
        "height, with 0.001 of tolerance)",
        "labels/train/a.txt line 8: the box's width 0 is not positive",
        "labels/train/a.txt line 10: '1 0.5 0.5 0.1 nan' holds a number that is not finite",
        "labels/train/b.txt line 1: the box's height -0.2 is not positive",
    ]
    for problem in expected:
        assert problem in text
    assert "A label line is `class cx cy w h`: the class's index in names (0..1)" in text
    # nothing was decoded: the labels are checked first
    assert not yolo.cache_folder().exists() or not any(yolo.cache_folder().iterdir())


def test_many_label_errors_show_the_first_ten(tmp_path):
    root = dataset(tmp_path / "shapes")
    labels(root / "labels/train/a.txt", *["7 0.5 0.5 0.1 0.1"] * 14)
    with pytest.raises(DataError, match=r"^14 problems .*a.txt line 10: class 7 .*; and 4 more\. A label line"):
        yolo.load(yolo.scan(root), "train", SHAPE)


def test_unreadable_label_file_and_pose_labels(tmp_path):
    root = dataset(tmp_path / "shapes")
    (root / "labels/train/a.txt").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match=r"labels/train/a.txt: not a text file"):
        yolo.load(yolo.scan(root), "train", SHAPE)
    # pose labels: the box, then kpt_shape's numbers (2 keypoints × 3), which are not read
    labels(root / "labels/train/a.txt", "0 0.4 0.4 0.4 0.4 0.3 0.3 2 0.5 0.5 2")
    (root / "data.yaml").write_text("names: [red, blue]\nkpt_shape: [2, 3]\ntrain: images/train\n")
    np.testing.assert_allclose(loaded(yolo.scan(root)).boxes.xyxy[0], TALL_IN_INPUT, atol=1e-4)
    labels(root / "labels/train/a.txt", "0 0.4 0.4 0.4 0.4 0.3 0.3 2")
    with pytest.raises(DataError, match=r"a.txt line 1: 8 numbers; a pose label is 11 \(class cx cy w h, then 2×3 "
                                        r"keypoint numbers, as kpt_shape: \[2, 3\] says\)"):
        yolo.load(yolo.scan(root), "train", SHAPE)


def test_a_split_without_any_label_file_is_refused(tmp_path):
    root = dataset(tmp_path / "shapes")
    (root / "labels/val/d.txt").unlink()
    ds = yolo.scan(root)
    assert any(n.startswith("val: none of its 1 image has a label file (looked for at labels/val/d.txt") for n in
               ds.notes)
    with pytest.raises(DataError, match=r"no image of the val split of .* has a label file \(the first, "
                                        r"images/val/d.png, would have labels/val/d.txt"):
        yolo.load(ds, "val", SHAPE)


def test_argument_errors(tmp_path):
    ds = yolo.scan(dataset(tmp_path / "shapes"))
    with pytest.raises(UsageError, match="unknown split 'valid'"):
        yolo.load(ds, "valid", SHAPE)
    with pytest.raises(DataError, match="names no test split"):
        yolo.load(ds, "test", SHAPE)
    with pytest.raises(UsageError, match=r"model input must be shaped \(C, H, W\) with C 1 \(grey\) or 3"):
        yolo.load(ds, "train", (2, 32, 48))


def test_unreadable_images_are_left_out_with_their_labels(tmp_path):
    root = dataset(tmp_path / "shapes")
    (root / "images/train/a.png").write_bytes(b"not a png")
    ds = yolo.scan(root)
    for _ in range(2):  # decoded, then from the cache: the same warning, never silent
        with pytest.warns(DataWarning, match=r"1 of 3 train images .* left out with their labels: "
                                             r"images/train/a.png \("):
            part = yolo.load_split(ds, "train", SHAPE)
        assert [f.name for f in part.files] == ["images/train/b.png", "images/train/c.png"]
        assert part.boxes.counts.tolist() == [1, 0] and part.boxes.classes.tolist() == [1]
        np.testing.assert_allclose(part.boxes.xyxy, [WIDE_IN_INPUT], atol=1e-4)
    (root / "images/val/d.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"no image of the val split of .* could be read: images/val/d.png"):
        yolo.load(yolo.scan(root), "val", SHAPE)


# --------------------------------------------------------------------------- the cache


def test_the_cache_gives_identical_arrays_and_follows_changes(tmp_path, monkeypatch, cache_home):
    root = dataset(tmp_path / "shapes")
    first = loaded(yolo.scan(root))
    assert sorted(p.suffix for p in cache_home.iterdir()) == [".json", ".npy", ".npz"]
    opened = count_image_opens(monkeypatch)
    read = []
    real_read = yolo._read_labels
    monkeypatch.setattr(yolo, "_read_labels", lambda *args: read.append(args[1]) or real_read(*args))
    second = loaded(yolo.scan(root))
    assert opened == [] and read == [] and not second.images.flags.writeable
    assert np.array_equal(first.images, second.images) and first.boxes == second.boxes
    assert np.array_equal(first.sizes, second.sizes) and first.files == second.files
    # a label file changed: the labels are read again, no image is decoded again
    labels(root / "labels/train/c.txt", "0 0.5 0.5 0.5 0.5")
    os.utime(root / "labels/train/c.txt", ns=(1, 1))
    third = loaded(yolo.scan(root))
    assert opened == [] and read == ["train"] and third.boxes.counts.tolist() == [1, 1, 1]
    # c is 40 × 20 → 48 × 24 at top 4: the middle half is x 12..36, y 4 + 6..18 = 10..22
    np.testing.assert_allclose(third.boxes.image(2)[0], [[12, 10, 36, 22]], atol=1e-4)
    assert len(list(cache_home.glob("*.npz"))) == 1  # the boxes it replaces are removed
    # an image changed: the split is decoded again, the old entry removed
    picture(root / "images/train/c.png", (40, 20), [(0, 0, 40, 20, BLUE)])
    os.utime(root / "images/train/c.png", ns=(2, 2))
    fourth = loaded(yolo.scan(root))
    assert len(opened) == 3 and np.all(fourth.images[2][:, 4:28] == np.array(BLUE)[:, None, None])
    assert sorted(p.suffix for p in cache_home.iterdir()) == [".json", ".npy", ".npz"]


def test_progress_and_statistics(tmp_path):
    ds = yolo.scan(dataset(tmp_path / "shapes"))
    calls = []
    images, _ = yolo.load(ds, "train", SHAPE, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 3) and calls[-1] == (3, 3)
    mean, std = yolo.statistics(ds, SHAPE)
    pixels = np.asarray(images, np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), atol=1e-9)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3)), atol=1e-9)
    assert (mean, std) == folder.pixel_stats(images)


def test_label_path_rule():
    def path(*parts: str) -> str:
        return os.sep + os.sep.join(parts)

    assert str(yolo.label_path(path("d", "images", "train", "a.b.jpg"))) == path("d", "labels", "train", "a.b.txt")
    # the last images folder only
    assert str(yolo.label_path(path("images", "x", "images", "a.png"))) == path("images", "x", "labels", "a.txt")
    # no images folder: beside the image
    assert str(yolo.label_path(path("d", "train", "a.png"))) == path("d", "train", "a.txt")
