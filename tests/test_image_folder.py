"""Tests of cnncli.data.folder: image folders scanned, split, decoded once into a memory-mapped cache.

Every folder is a few dozen tiny PNG and JPEG files written with Pillow into
tmp_path; the cache goes to tmp_path too (XDG_CACHE_HOME).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from helpers import count_image_opens  # noqa: E402
from PIL import Image  # noqa: E402

from cnncli.data import DataWarning, folder  # noqa: E402
from cnncli.errors import UsageError  # noqa: E402

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
COLOURS = {"cat": RED, "dog": BLUE, "emu": GREEN}


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(home))
    return home / "cnncli" / "image-folder"


def solid(path: Path, colour, size=(20, 14), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def flat_folder(root: Path, counts=None) -> Path:
    """One solid-colour image per file, the class's colour; sizes differ; PNG and JPEG mixed."""
    counts = counts or {"cat": 10, "dog": 6, "emu": 5}
    for cls, n in counts.items():
        for i in range(n):
            suffix = ".png" if i % 3 else ".jpg"
            solid(root / cls / f"{cls}{i:02d}{suffix}", COLOURS[cls], size=(12 + i, 10 + 2 * (i % 2)))
    return root


def split_folder(root: Path) -> Path:
    for part, n in (("train", 4), ("test", 2)):
        for cls in COLOURS:
            for i in range(n):
                solid(root / part / cls / f"{i}.png", COLOURS[cls])
    return root


def colour_label(images: np.ndarray) -> np.ndarray:
    """The class whose colour each image's centre pixel has (classes sorted: cat, dog, emu; JPEG within 4)."""
    palette = np.array([COLOURS[n] for n in sorted(COLOURS)], dtype=np.int64)       # (3 classes, 3 channels)
    centre = images[:, :, images.shape[2] // 2, images.shape[3] // 2].astype(np.int64)  # (N, 3)
    distance = np.abs(centre[:, None, :] - palette[None]).max(axis=2)
    assert np.all(distance.min(axis=1) <= 4), "an image is not one of the classes' colours"
    return distance.argmin(axis=1)


def decode(tmp_path, image: Image.Image, shape, name="x.png", **save) -> np.ndarray:
    path = tmp_path / "single" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save)
    return folder.decode_image(path, shape)


def cached_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


# --------------------------------------------------------------------------- layouts, classes, labels


def test_flat_layout_classes_labels_and_seeded_split(tmp_path):
    ds = folder.scan(flat_folder(tmp_path / "pets"))
    assert ds.classes == ("cat", "dog", "emu")
    assert not ds.has_test_folder and ds.root == (tmp_path / "pets").resolve()
    assert ds.per_class() == [10, 6, 5] and ds.notes == ()
    train_x, train_y = folder.load(ds, "train", (3, 8, 8), seed=3)
    test_x, test_y = folder.load(ds, "test", (3, 8, 8), seed=3)
    assert train_x.dtype == np.uint8 and train_x.shape == (17, 3, 8, 8)
    assert test_x.shape == (4, 3, 8, 8)
    assert train_y.dtype == np.int64 and test_y.dtype == np.int64
    # max(1, round(0.2 n)) of each class: 2 of 10, 1 of 6, 1 of 5
    assert np.bincount(test_y).tolist() == [2, 1, 1]
    assert np.bincount(train_y).tolist() == [8, 5, 4]
    # every image is its class's solid colour, so the labels can be read off the pixels
    assert np.array_equal(colour_label(np.asarray(train_x)), train_y)
    assert np.array_equal(colour_label(np.asarray(test_x)), test_y)
    assert "20% of each class" in ds.split_rule(3, 0.2) and "seed 3" in ds.split_rule(3, 0.2)


def test_train_test_layout(tmp_path):
    ds = folder.scan(split_folder(tmp_path / "pets"))
    assert ds.has_test_folder and ds.classes == ("cat", "dog", "emu")
    assert "12 in train/, 6 in test/" in ds.summary()
    x, y = folder.load(ds, "train", (3, 6, 6), seed=0)
    xt, yt = folder.load(ds, "test", (3, 6, 6), seed=0)
    assert x.shape == (12, 3, 6, 6) and xt.shape == (6, 3, 6, 6)
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and yt.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.array_equal(colour_label(np.asarray(x)), y)
    # the folders are the split: the seed and the share change nothing
    assert ds.split_files("test", 0) == ds.split_files("test", 99, 0.5)
    assert all(f.name.startswith("test/") for f in ds.split_files("test", 0))
    assert "test/ folder" in ds.split_rule(0)


def test_class_names_sorted_and_labels_follow(tmp_path):
    root = tmp_path / "d"
    for cls in ("zebra", "Apple", "mango"):
        for i in range(2):
            solid(root / cls / f"{i}.png", (10, 10, 10))
    ds = folder.scan(root)
    assert ds.classes == ("Apple", "mango", "zebra")
    assert [f.label for f in ds.files] == [0, 0, 1, 1, 2, 2]
    assert [f.name for f in ds.files][:2] == ["Apple/0.png", "Apple/1.png"]


def test_suffixes_hidden_entries_and_notes(tmp_path):
    root = tmp_path / "d"
    for cls in ("a", "b"):
        solid(root / cls / "one.PNG", RED)
        solid(root / cls / "two.JpEg", RED)
        solid(root / cls / "three.jpg", RED)
    (root / "a" / "notes.txt").write_text("x")
    solid(root / "a" / "anim.gif", RED)
    (root / "b" / ".DS_Store").write_text("x")             # hidden: not even counted
    solid(root / "b" / ".hidden.png", RED)                  # hidden image: not read
    solid(root / ".thumbnails" / "x.png", RED)              # hidden folder: not a class
    solid(root / "a" / "more" / "deep.png", RED)            # nested folder: not read, noted
    (root / "README.md").write_text("x")                    # outside the classes: noted
    ds = folder.scan(root)
    assert ds.classes == ("a", "b") and ds.per_class() == [3, 3]
    notes = " | ".join(ds.notes)
    assert "2 files in class folders are not PNG or JPEG and were ignored (1 .gif, 1 .txt)" in notes
    assert "a/more/" in notes and "README.md" in notes
    assert ".DS_Store" not in notes and "hidden" not in notes


# --------------------------------------------------------------------------- pixels


@pytest.mark.parametrize("size", [(5, 7), (7, 5), (40, 30), (120, 64), (16, 16)])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_solid_colour_stays_that_colour(tmp_path, size, suffix):
    pixels = decode(tmp_path, Image.new("RGB", size, (12, 200, 77)), (3, 16, 16), name="x" + suffix)
    assert pixels.shape == (3, 16, 16) and pixels.dtype == np.uint8
    assert np.array_equal(pixels, np.broadcast_to(np.array([12, 200, 77], np.uint8)[:, None, None], (3, 16, 16)))


def thirds(width: int, height: int, horizontal: bool) -> Image.Image:
    """Red, green, blue thirds, side by side (horizontal) or stacked."""
    a = np.zeros((height, width, 3), np.uint8)
    for k, colour in enumerate((RED, GREEN, BLUE)):
        if horizontal:
            a[:, k * width // 3:(k + 1) * width // 3] = colour
        else:
            a[k * height // 3:(k + 1) * height // 3] = colour
    return Image.fromarray(a)


def test_centre_crop_keeps_the_middle(tmp_path):
    # 48 wide × 16 high: the shorter side is already 16, the crop is exactly the green third
    wide = decode(tmp_path, thirds(48, 16, horizontal=True), (3, 16, 16), name="wide.png")
    assert np.all(wide.transpose(1, 2, 0) == GREEN)
    tall = decode(tmp_path, thirds(16, 48, horizontal=False), (3, 16, 16), name="tall.png")
    assert np.all(tall.transpose(1, 2, 0) == GREEN)
    # halved first (96×32 → 48×16), the middle stays green away from the edges
    wide2 = decode(tmp_path, thirds(96, 32, horizontal=True), (3, 16, 16), name="wide2.png")
    assert np.all(wide2.transpose(1, 2, 0)[:, 2:-2] == GREEN)
    assert wide2[0, :, 0].max() <= 128  # a little red blurred in at the very edge at most


def test_quadrants_land_where_expected(tmp_path):
    a = np.zeros((32, 32, 3), np.uint8)
    a[:16, :16], a[:16, 16:], a[16:, :16], a[16:, 16:] = RED, GREEN, BLUE, (255, 255, 255)
    pixels = decode(tmp_path, Image.fromarray(a), (3, 8, 8)).transpose(1, 2, 0)  # (H, W, C)
    assert np.array_equal(pixels[1, 1], RED) and np.array_equal(pixels[1, 6], GREEN)
    assert np.array_equal(pixels[6, 1], BLUE) and np.array_equal(pixels[6, 6], (255, 255, 255))
    # non-square target: 8 high × 4 wide keeps the middle 4 columns of an 8 × 8 image, not resized
    b = np.zeros((8, 8), np.uint8)
    b[:, 3:5] = 200
    narrow = decode(tmp_path, Image.fromarray(b), (1, 8, 4), name="b.png")
    assert narrow.shape == (1, 8, 4)
    assert np.all(narrow[0, :, 1:3] == 200) and np.all(narrow[0, :, 0] == 0) and np.all(narrow[0, :, 3] == 0)
    assert "to cover 8×4" in folder.describe((1, 8, 4))


def test_grey_and_rgb_conversion(tmp_path):
    grey_of_red = decode(tmp_path, Image.new("RGB", (8, 8), RED), (1, 8, 8))
    assert grey_of_red.shape == (1, 8, 8) and np.all(grey_of_red == 76)  # ITU-R 601-2 luma: 0.299 × 255
    rgb_of_grey = decode(tmp_path, Image.new("L", (8, 8), 100), (3, 8, 8), name="g.png")
    assert rgb_of_grey.shape == (3, 8, 8) and np.all(rgb_of_grey == 100)
    assert folder.describe((1, 28, 28)) == "grey, resized (shorter side to 28) and centre-cropped to 28×28"
    assert folder.describe((3, 32, 32)) == "RGB, resized (shorter side to 32) and centre-cropped to 32×32"


def test_transparency_16_bit_and_exif_orientation(tmp_path):
    clear = decode(tmp_path, Image.new("RGBA", (8, 8), (0, 0, 0, 0)), (3, 8, 8), name="clear.png")
    assert np.all(clear == 255)  # transparent parts are laid on white
    deep = np.full((8, 8), 0x8080, np.uint16)
    assert np.all(decode(tmp_path, Image.fromarray(deep), (1, 8, 8), name="deep.png") == 0x80)
    # stored 32 wide × 16 high, red left half, blue right; EXIF 6 shows it turned a quarter clockwise:
    # 16 wide × 32 high with red on top
    a = np.zeros((16, 32, 3), np.uint8)
    a[:, :16], a[:, 16:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = decode(tmp_path, Image.fromarray(a), (3, 8, 8), name="turned.jpg", exif=exif, quality=95)
    assert turned[0, 1, 4] > 200 and turned[2, 1, 4] < 50    # top: red
    assert turned[2, 6, 4] > 200 and turned[0, 6, 4] < 50    # bottom: blue


def test_large_jpeg_is_reduced_then_resized(tmp_path):
    a = np.zeros((300, 400, 3), np.uint8)
    a[:, :200], a[:, 200:] = RED, BLUE
    pixels = decode(tmp_path, Image.fromarray(a), (3, 8, 8), name="big.jpg", quality=95).astype(int)
    assert np.all(np.abs(pixels[:, :, :3].transpose(1, 2, 0) - RED) <= 8)
    assert np.all(np.abs(pixels[:, :, 5:].transpose(1, 2, 0) - BLUE) <= 8)


# --------------------------------------------------------------------------- the split


def test_split_is_stratified_deterministic_and_disjoint(tmp_path):
    ds = folder.scan(flat_folder(tmp_path / "pets", {"cat": 10, "dog": 9, "emu": 3}))
    for share in (0.1, 0.2, 0.5, 0.9):
        test = ds.split_files("test", 7, share)
        train = ds.split_files("train", 7, share)
        assert set(test).isdisjoint(train) and set(test) | set(train) == set(ds.files)
        for label, n in enumerate(ds.per_class()):
            k = sum(f.label == label for f in test)
            assert k == min(n - 1, max(1, round(share * n)))
        assert test == ds.split_files("test", 7, share)  # the same seed, the same split
    assert {ds.split_files("test", s, 0.5) for s in range(6)}.__len__() > 1  # seeds differ
    # one image added to a class leaves the other classes' splits as they were
    before = ds.split_files("test", 7, 0.2)
    solid(tmp_path / "pets" / "cat" / "cat99.png", RED)
    after = folder.scan(tmp_path / "pets").split_files("test", 7, 0.2)
    assert [f.name for f in before if f.label != 0] == [f.name for f in after if f.label != 0]


def test_split_is_the_same_on_any_machine(tmp_path):
    # The order is a keyed BLAKE2 hash of (seed, file name), not Python's salted hash(): pinned here.
    root = tmp_path / "d"
    for cls in ("a", "b"):
        for i in range(10):
            solid(root / cls / f"{i}.png", RED, size=(2, 2))
    test = [f.name for f in folder.scan(root).split_files("test", 0, 0.3)]
    code = ("import sys; from cnncli.data import folder; "
            "print(' '.join(f.name for f in folder.scan(sys.argv[1]).split_files('test', 0, 0.3)))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    assert out == test
    # pinned: a change here re-splits every user's folder (a test image may become a training image)
    assert test == ["a/3.png", "a/4.png", "a/8.png", "b/2.png", "b/4.png", "b/7.png"]


# --------------------------------------------------------------------------- the cache


def test_second_load_reads_the_cache(tmp_path, monkeypatch, cache_home):
    ds = folder.scan(flat_folder(tmp_path / "pets"))
    x1, y1 = folder.load(ds, "train", (3, 8, 8), seed=1)
    assert isinstance(x1, np.memmap) and not x1.flags.writeable
    assert len([n for n in cached_files(cache_home) if n.endswith(".npy")]) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(Image, "open", no_decoding)
    x2, y2 = folder.load(folder.scan(tmp_path / "pets"), "train", (3, 8, 8), seed=1)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert isinstance(x2, np.memmap) and not x2.flags.writeable
    with pytest.raises(ValueError):
        x2[0, 0, 0, 0] = 1
    # another shape, split or seed is another entry
    with pytest.raises(AssertionError, match="decoded again"):
        folder.load(ds, "train", (1, 8, 8), seed=1)


def test_a_changed_folder_decodes_again(tmp_path, monkeypatch, cache_home):
    root = flat_folder(tmp_path / "pets")
    x, _ = folder.load(folder.scan(root), "train", (3, 8, 8), seed=1)
    opened = count_image_opens(monkeypatch)
    folder.load(folder.scan(root), "train", (3, 8, 8), seed=1)
    assert opened == []
    touched = root / folder.scan(root).split_files("train", 1)[9].name
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    x2, _ = folder.load(folder.scan(root), "train", (3, 8, 8), seed=1)
    assert len(opened) == len(x2) and np.array_equal(x, x2)
    # the entry it replaces is gone: one array per folder, split, shape and rule
    assert len([n for n in cached_files(cache_home) if n.endswith(".npy")]) == 1
    opened.clear()
    solid(root / "emu" / "emu99.png", GREEN)
    x3, y3 = folder.load(folder.scan(root), "train", (3, 8, 8), seed=1)
    assert len(opened) == len(x3) and np.bincount(y3).tolist() == [8, 5, 4 + 1]
    opened.clear()
    (root / "emu" / "emu99.png").unlink()
    (root / "cat" / "cat01.png").unlink()
    x4, y4 = folder.load(folder.scan(root), "train", (3, 8, 8), seed=1)
    assert len(opened) == len(x4) and len(x4) == 16


def test_decoding_holds_one_image_at_a_time(tmp_path):
    import tracemalloc

    root = tmp_path / "big"
    for cls in ("a", "b"):
        for i in range(30):
            solid(root / cls / f"{i}.png", (i, 2 * i, 3 * i), size=(80, 64))
    ds = folder.scan(root)
    whole = 48 * 3 * 64 * 64  # the train split's uint8 bytes
    folder.decode_image(root / "a" / "0.png", (3, 64, 64))  # Pillow's plugins imported before measuring
    tracemalloc.start()
    try:
        x, _ = folder.load(ds, "train", (3, 64, 64), seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.shape == (48, 3, 64, 64) and isinstance(x, np.memmap)
    # one image at a time, and Pillow's 64 kB read buffer: far less than the split
    assert peak < whole / 3, f"decoding held {peak} bytes, the split is {whole}"


def test_progress_is_reported_while_decoding(tmp_path):
    ds = folder.scan(flat_folder(tmp_path / "pets"))
    calls: list[tuple[int, int]] = []
    folder.load(ds, "train", (3, 8, 8), seed=0, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 17) and calls[-1] == (17, 17)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    calls.clear()
    folder.load(ds, "train", (3, 8, 8), seed=0, progress=lambda done, total: calls.append((done, total)))
    assert calls == []  # from the cache: nothing to report


def test_crash_mid_decode_leaves_no_file(tmp_path, monkeypatch, cache_home):
    ds = folder.scan(flat_folder(tmp_path / "pets"))
    real = folder.decode_image
    seen = []

    def crashing(path, shape, *rest):
        seen.append(path)
        if len(seen) == 5:
            raise KeyboardInterrupt
        return real(path, shape, *rest)

    monkeypatch.setattr(folder, "decode_image", crashing)
    with pytest.raises(KeyboardInterrupt):
        folder.load(ds, "train", (3, 8, 8), seed=0)
    assert cached_files(cache_home) == []  # no final file, no record, no temporary file
    monkeypatch.setattr(folder, "decode_image", real)
    x, y = folder.load(ds, "train", (3, 8, 8), seed=0)
    assert len(x) == len(y) == 17


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_decode_leaves_no_final_file_and_its_leftover_is_removed(tmp_path, cache_home):
    root = flat_folder(tmp_path / "pets")
    child = textwrap.dedent("""
        import sys, time
        from cnncli.data import folder
        real, seen = folder.decode_image, []
        def slow(path, shape, *rest):
            seen.append(path)
            if len(seen) == 4:
                print("decoding", flush=True)
                time.sleep(120)
            return real(path, shape, *rest)
        folder.decode_image = slow
        folder.load(folder.scan(sys.argv[1]), "train", (3, 8, 8), seed=0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child, str(root)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ})
    try:
        assert proc.stdout.readline().strip() == "decoding"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    left = cached_files(cache_home)
    assert len(left) == 1 and left[0].startswith(".") and left[0].endswith(".part")
    x, _ = folder.load(folder.scan(root), "train", (3, 8, 8), seed=0)
    assert len(x) == 17
    names = cached_files(cache_home)
    assert not any(n.endswith(".part") for n in names) and len(names) == 2  # the array and its record


def test_unwritable_cache_or_full_disk_is_a_usage_error(tmp_path, monkeypatch):
    ds = folder.scan(flat_folder(tmp_path / "pets"))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(UsageError, match="cannot create the cache folder .*XDG_CACHE_HOME"):
        folder.load(ds, "train", (3, 8, 8), seed=0)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ok"))
    monkeypatch.setattr(folder.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    with pytest.raises(UsageError, match="needs .* MB in the cache folder .* free"):
        folder.load(ds, "train", (3, 8, 8), seed=0)


# --------------------------------------------------------------------------- unreadable files


def test_unreadable_files_are_left_out_with_a_warning(tmp_path, monkeypatch):
    root = split_folder(tmp_path / "pets")
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    good = (root / "train" / "cat" / "0.png").read_bytes()
    (root / "train" / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    jpeg = root / "train" / "emu" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:400])
    (root / "train" / "emu" / "text.jpeg").write_text("not an image")
    ds = folder.scan(root)
    assert len(ds.split_files("train", 0)) == 16
    with pytest.warns(DataWarning, match=r"4 of 16 train images .* could not be read and are left out") as rec:
        x, y = folder.load(ds, "train", (3, 8, 8), seed=0)
    message = str(rec[0].message)
    for name in ("train/dog/broken.png", "train/cat/truncated.png", "train/emu/cut.jpg", "train/emu/text.jpeg"):
        assert name in message
    assert x.shape == (12, 3, 8, 8) and np.array_equal(colour_label(np.asarray(x)), y)
    # from the cache, the same warning again: never silent
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("decoded again"))
    with pytest.warns(DataWarning, match="4 of 16 train images"):
        x2, y2 = folder.load(folder.scan(root), "train", (3, 8, 8), seed=0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folder.load(ds, "test", (3, 8, 8), seed=0)  # a clean split warns nothing


def test_a_class_with_no_readable_image_is_an_error(tmp_path, cache_home):
    root = tmp_path / "d"
    for cls in ("a", "b"):
        solid(root / "test" / cls / "0.png", RED)
    solid(root / "train" / "a" / "0.png", RED)
    (root / "train" / "b").mkdir()
    (root / "train" / "b" / "x.png").write_text("no")
    (root / "train" / "b" / "y.jpg").write_text("no")
    ds = folder.scan(root)
    with pytest.raises(UsageError, match=r"no image of class 'b' .* could be read: train/b/x.png .*; train/b/y.jpg"):
        folder.load(ds, "train", (3, 8, 8), seed=0)
    assert cached_files(cache_home) == []


# --------------------------------------------------------------------------- errors


def test_scan_errors(tmp_path):
    with pytest.raises(UsageError, match=r"image folder .*nowhere does not exist"):
        folder.scan(tmp_path / "nowhere")
    (tmp_path / "file.png").write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        folder.scan(tmp_path / "file.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="holds no class folders: put each class's images in a subfolder"):
        folder.scan(empty)
    loose = tmp_path / "loose"
    solid(loose / "a.png", RED)
    with pytest.raises(UsageError, match="holds no class folders"):
        folder.scan(loose)
    noimg = tmp_path / "noimg"
    for cls in ("a", "b"):
        (noimg / cls).mkdir(parents=True)
        (noimg / cls / "x.txt").write_text("x")
    with pytest.raises(UsageError, match=r"hold no images .*2 other files found; only .png, .jpg, .jpeg"):
        folder.scan(noimg)
    single = tmp_path / "single"
    solid(single / "only" / "0.png", RED)
    with pytest.raises(UsageError, match="single class, 'only': a classifier needs at least two"):
        folder.scan(single)
    hole = tmp_path / "hole"
    solid(hole / "a" / "0.png", RED)
    (hole / "b").mkdir()
    with pytest.raises(UsageError, match=r"class folder .*hole/b holds no images"):
        folder.scan(hole)


def test_train_test_layout_errors(tmp_path):
    half = tmp_path / "half"
    solid(half / "train" / "a" / "0.png", RED)
    solid(half / "train" / "b" / "0.png", RED)
    with pytest.raises(UsageError, match="has a train/ folder but no test/ folder: give both"):
        folder.scan(half)
    other = tmp_path / "other"
    solid(other / "test" / "a" / "0.png", RED)
    with pytest.raises(UsageError, match="has a test/ folder but no train/ folder"):
        folder.scan(other)
    differ = tmp_path / "differ"
    for part, classes in (("train", ("a", "b", "c")), ("test", ("a", "b", "d"))):
        for cls in classes:
            solid(differ / part / cls / "0.png", RED)
    with pytest.raises(UsageError, match=r"same class folders \(only in train/: c; only in test/: d\)"):
        folder.scan(differ)
    hole = tmp_path / "hole"
    for part in ("train", "test"):
        for cls in ("a", "b"):
            solid(hole / part / cls / "0.png", RED)
    (hole / "test" / "b" / "0.png").unlink()
    with pytest.raises(UsageError, match=r"class folder .*hole/test/b holds no images"):
        folder.scan(hole)


def test_train_and_test_without_class_folders(tmp_path):
    root = tmp_path / "d"
    for part in ("train", "test"):
        solid(root / part / "loose.png", RED)
    with pytest.raises(UsageError, match=r"d/train holds no class folders"):
        folder.scan(root)


def test_load_argument_errors(tmp_path):
    ds = folder.scan(flat_folder(tmp_path / "pets"))
    with pytest.raises(UsageError, match="unknown split 'val'"):
        folder.load(ds, "val", (3, 8, 8), seed=0)
    for shape in ((2, 8, 8), (3, 0, 8), (8, 8), (3, 8.0, 8)):
        with pytest.raises(UsageError, match=r"shaped \(C, H, W\) with C 1 \(grey\) or 3"):
            folder.load(ds, "train", shape, seed=0)
    for share in (0, 1, 1.5, -0.1, True):
        with pytest.raises(UsageError, match="test share .* between 0 and 1"):
            folder.load(ds, "train", (3, 8, 8), seed=0, test_share=share)
    lonely = tmp_path / "lonely"
    solid(lonely / "a" / "0.png", RED)
    solid(lonely / "a" / "1.png", RED)
    solid(lonely / "b" / "0.png", BLUE)
    with pytest.raises(UsageError, match="class 'b' .* has only 1 image: splitting off a test set needs at least two"):
        folder.load(folder.scan(lonely), "train", (3, 8, 8), seed=0)


# --------------------------------------------------------------------------- statistics


def test_pixel_stats_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 3, 5, 4), dtype=np.uint8)
    mean, std = folder.pixel_stats(images, chunk_bytes=100)  # many small chunks
    ref = images.astype(np.float64) / 255
    assert np.allclose(mean, ref.mean(axis=(0, 2, 3))) and np.allclose(std, ref.std(axis=(0, 2, 3)))
    ds = folder.scan(split_folder(tmp_path / "pets"))
    x, _ = folder.load(ds, "train", (3, 4, 4), seed=0)
    mean, _ = folder.pixel_stats(x)
    assert np.allclose(mean, (1 / 3, 1 / 3, 1 / 3))
    with pytest.raises(UsageError):
        folder.pixel_stats(images.astype(np.float32))
