"""Tests of cnncli.data: IDX parsing, verification, file resolution, downloading.

Everything runs on small hand-made IDX files; downloads go to an HTTP server on
127.0.0.1 started by the test (conftest's ``server``). No test reaches the internet:
conftest's ``isolated_data``, used by every test here, points every mirror at a
closed local port.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, needs_mnist

from cnncli import data
from cnncli.errors import CnnError, DataError, UsageError

N_FAKE = 7  # examples per split in the fake datasets
TRAIN_IMAGES, TRAIN_LABELS = data.DATASETS["mnist"].splits["train"]
TEST_IMAGES, TEST_LABELS = data.DATASETS["mnist"].splits["test"]
_REAL_FASHION = data.DATASETS["fashion-mnist"]
pytestmark = pytest.mark.usefixtures("isolated_data")


# --------------------------------------------------------------------------- helpers


def idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    header = data.IMAGES_MAGIC.to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in (n, rows, cols)
    )
    return header + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return data.LABELS_MAGIC.to_bytes(4, "big") + len(labels).to_bytes(4, "big") + bytes(
        labels.astype(np.uint8).tolist()
    )


def fake_split(seed: int, n: int = N_FAKE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=n).astype(np.int64),
    )


def fake_files(seed: int = 0) -> dict[str, bytes]:
    """Uncompressed contents of all four files of a fake dataset."""
    tr_x, tr_y = fake_split(seed)
    te_x, te_y = fake_split(seed + 1000)
    return {
        TRAIN_IMAGES: idx_images(tr_x),
        TRAIN_LABELS: idx_labels(tr_y),
        TEST_IMAGES: idx_images(te_x),
        TEST_LABELS: idx_labels(te_y),
    }


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def write_files(folder: Path, files: dict[str, bytes], gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)
    return folder


@pytest.fixture
def fake_mnist(monkeypatch):
    """Register the sums of a fake dataset as MNIST's; return its uncompressed files."""
    files = fake_files()
    info = data.DATASETS["mnist"]
    monkeypatch.setitem(
        data.DATASETS,
        "mnist",
        dataclasses.replace(info, sha256={name: sha(content) for name, content in files.items()}),
    )
    return files


def cache_mnist() -> Path:
    return data.cache_dir("mnist")


# --------------------------------------------------------------------------- registry


def test_registry_and_class_names():
    assert set(data.DATASETS) == {"mnist", "fashion-mnist", "cifar10", "cifar100", "cifar100-coarse"}
    assert data.class_names("mnist") == [str(i) for i in range(10)]
    fashion = data.class_names("fashion-mnist")
    assert len(fashion) == 10 and fashion[0] == "T-shirt/top" and fashion[9] == "Ankle boot"
    assert data.get("Fashion_MNIST").name == "fashion-mnist"
    for info in (data.DATASETS["mnist"], data.DATASETS["fashion-mnist"]):
        assert len(info.files) == 4
        assert all(s is not None and len(s) == 64 for s in info.sha256.values())
        assert len(info.mirrors) >= 2
        channels = info.image_shape[0]
        assert len(info.mean) == len(info.std) == channels
        assert all(0 < m < 1 for m in info.mean) and all(0 < s < 1 for s in info.std)


def test_dataset_names_have_one_home():
    from cnncli import cli
    from cnncli.dataset_names import CHOICES, DATASET_NAMES, DETECTION, FOLDER, YOLO
    from cnncli.model import spec

    assert tuple(data.DATASETS) == DATASET_NAMES
    assert CHOICES == DATASET_NAMES + (FOLDER,) + DETECTION + (YOLO,)
    from cnncli.data import mnist_detect

    assert tuple(mnist_detect.DATASETS) == DETECTION
    assert tuple(d.value for d in cli.Dataset) == CHOICES
    assert tuple(spec.TRAIN_OPTIONS["dataset"].choices) == CHOICES
    # The CLI reads the names without the data code (nor numpy): --help stays fast.
    code = ("import sys, cnncli.cli, cnncli.model.spec; "
            "print(sorted(m for m in ('numpy', 'cnncli.data') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError) as err:
        data.load("imagenet", "train")
    assert "imagenet" in str(err.value)
    assert "Valid datasets: cifar10, cifar100, cifar100-coarse, fashion-mnist, mnist." in str(err.value)
    assert isinstance(err.value, CnnError) and err.value.exit_code == 2


def test_a_model_must_give_one_output_per_class():
    from cnncli.model import graph, spec
    from cnncli.records import inputs

    def output(layers: str):
        g = graph.build(spec.parse(f"input: [1, 12, 12]\nlayers:\n{layers}"))
        return g[g.output]

    inputs.check_outputs(output("  - flatten\n  - dense: {units: 10}"), len(data.get("mnist").classes), "MNIST", "m")
    with pytest.raises(UsageError, match="has 10 classes: the last layer needs 10 units"):
        inputs.check_outputs(output("  - flatten\n  - dense: {units: 100}"), 10, "MNIST", "m")
    # A yolo head scores the channels after its boxes' (5 a box): 2 boxes and 10 classes are 20 filters.
    inputs.check_outputs(output("  - conv: {filters: 20, kernel: 1}\n  - yolo: {boxes: 2}"), 10, "MNIST", "m")
    with pytest.raises(UsageError, match="scores 3 classes in its yolo head .* needs 20 filters"):
        inputs.check_outputs(output("  - conv: {filters: 13, kernel: 1}\n  - yolo: {boxes: 2}"), 10, "MNIST", "m")
    with pytest.raises(UsageError, match="only replicates a grey channel"):  # the input side: cnncli.records.inputs.plan
        inputs.plan("CIFAR-10", data.get("cifar10").image_shape, (1, 32, 32), "m")


def test_unknown_split():
    with pytest.raises(DataError, match="train, test"):
        data.load("mnist", "validation")


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("gz", [True, False])
def test_read_hand_made_idx(tmp_path, gz):
    x, y = fake_split(3, n=5)
    for name, content, kind in (("imgs", idx_images(x), "images"), ("labs", idx_labels(y), "labels")):
        path = tmp_path / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(content) if gz else content)
        array, digest = data.read_idx_file(path, kind, sha(content))
        assert digest == sha(content)
        expected = x if kind == "images" else y
        np.testing.assert_array_equal(array, expected)
        assert array.dtype == np.uint8


def test_gzip_detected_by_content_not_name(tmp_path):
    x, _ = fake_split(4, n=2)
    path = tmp_path / "plain-named"
    path.write_bytes(gzip.compress(idx_images(x)))
    array, _ = data.read_idx_file(path, "images")
    np.testing.assert_array_equal(array, x)


def test_wrong_magic(tmp_path):
    _, y = fake_split(0)
    path = tmp_path / TRAIN_IMAGES
    path.write_bytes(idx_labels(y))  # a labels file where images are expected
    with pytest.raises(DataError) as err:
        data.read_idx_file(path, "images")
    msg = str(err.value)
    assert str(path) in msg and "magic number 2049" in msg and "2051" in msg
    assert "swapped" in msg

    path.write_bytes(b"<html>Not Found</html>")
    with pytest.raises(DataError, match="web page"):
        data.read_idx_file(path, "images")


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file(tmp_path, gz):
    x, _ = fake_split(0)
    content = idx_images(x)[:-100]
    path = tmp_path / (TRAIN_IMAGES + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(DataError) as err:
        data.read_idx_file(path, "images")
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg and "100 missing" in msg
    assert "download" in msg


def test_truncated_gzip_stream(tmp_path):
    x, _ = fake_split(0)
    packed = gzip.compress(idx_images(x))
    path = tmp_path / (TRAIN_IMAGES + ".gz")
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError) as err:
        data.read_idx_file(path, "images")
    assert str(path) in str(err.value) and "truncated" in str(err.value)


def test_trailing_bytes_and_wrong_image_size(tmp_path):
    x, _ = fake_split(0)
    path = tmp_path / "f"
    path.write_bytes(idx_images(x) + b"\0\0\0")
    with pytest.raises(DataError, match="3 unexpected bytes"):
        data.read_idx_file(path, "images")
    path.write_bytes(idx_images(np.zeros((2, 32, 32), np.uint8)))
    with pytest.raises(DataError, match="32x32 pixels, expected 28x28"):
        data.read_idx_file(path, "images")


def test_checksum_mismatch(tmp_path, fake_mnist):
    files = dict(fake_mnist)
    tampered = bytearray(files[TEST_IMAGES])
    tampered[-1] ^= 0xFF
    files[TEST_IMAGES] = bytes(tampered)
    folder = write_files(tmp_path / "data", files)
    with pytest.raises(DataError) as err:
        data.load("mnist", "test", data_dir=folder)
    msg = str(err.value)
    assert str(folder / (TEST_IMAGES + ".gz")) in msg
    assert "checksum mismatch" in msg and sha(fake_mnist[TEST_IMAGES]) in msg
    assert sha(bytes(tampered)) in msg and "Delete it" in msg


def test_label_out_of_range(tmp_path, fake_mnist, monkeypatch):
    files = dict(fake_mnist)
    labels = np.frombuffer(files[TEST_LABELS], np.uint8, offset=8).copy()
    labels[3] = 12
    files[TEST_LABELS] = idx_labels(labels)
    info = data.DATASETS["mnist"]
    monkeypatch.setitem(
        data.DATASETS,
        "mnist",
        dataclasses.replace(info, sha256={**info.sha256, TEST_LABELS: sha(files[TEST_LABELS])}),
    )
    folder = write_files(tmp_path / "data", files, gz=False)
    with pytest.raises(DataError) as err:
        data.load("mnist", "test", data_dir=folder)
    msg = str(err.value)
    assert str(folder / TEST_LABELS) in msg and "out of range 0..9" in msg
    assert "12 at index 3" in msg


def test_count_mismatch(tmp_path, fake_mnist, monkeypatch):
    files = dict(fake_mnist)
    x, _ = fake_split(9, n=N_FAKE + 2)
    files[TEST_IMAGES] = idx_images(x)
    info = data.DATASETS["mnist"]
    monkeypatch.setitem(
        data.DATASETS,
        "mnist",
        dataclasses.replace(info, sha256={**info.sha256, TEST_IMAGES: sha(files[TEST_IMAGES])}),
    )
    folder = write_files(tmp_path / "data", files)
    with pytest.raises(DataError) as err:
        data.load("mnist", "test", data_dir=folder)
    msg = str(err.value)
    assert f"{N_FAKE + 2} images" in msg and f"{N_FAKE} labels" in msg
    assert TEST_IMAGES in msg and TEST_LABELS in msg


def test_unknown_checksum_warns(tmp_path, fake_mnist, monkeypatch):
    info = data.DATASETS["mnist"]
    monkeypatch.setitem(
        data.DATASETS, "mnist", dataclasses.replace(info, sha256={**info.sha256, TEST_IMAGES: None})
    )
    folder = write_files(tmp_path / "data", fake_mnist)
    with pytest.warns(data.DataWarning, match="no known SHA-256"):
        x, _ = data.load("mnist", "test", data_dir=folder)
    assert x.shape == (N_FAKE, 1, 28, 28)


# --------------------------------------------------------------------------- load + cache


@pytest.mark.parametrize("gz", [True, False])
def test_load_returns_typed_arrays(tmp_path, fake_mnist, gz):
    folder = write_files(tmp_path / "data" / "mnist", fake_mnist, gz=gz)
    x, y = data.load("mnist", "train", data_dir=folder.parent)
    ex, ey = fake_split(0)
    assert x.dtype == np.uint8 and x.shape == (N_FAKE, 1, 28, 28)
    assert y.dtype == np.int64 and y.shape == (N_FAKE,)
    np.testing.assert_array_equal(x[:, 0], ex)
    np.testing.assert_array_equal(y, ey)
    assert x.flags.writeable and y.flags.writeable


def test_decoded_cache_is_used_and_invalidated(tmp_path, fake_mnist, monkeypatch):
    folder = write_files(tmp_path / "data", fake_mnist)
    x1, y1 = data.load("mnist", "test", data_dir=folder)
    assert (cache_mnist() / "decoded" / "test-images.npy").is_file()

    def no_reading(*args, **kwargs):
        raise AssertionError("the decoded cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(data.idx, "read_idx_file", no_reading)
        x2, y2 = data.load("mnist", "test", data_dir=folder)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)

    # Replace the source with a corrupt file: the cache must not hide it.
    bad = bytearray(fake_mnist[TEST_IMAGES])
    bad[100] ^= 1
    (folder / (TEST_IMAGES + ".gz")).write_bytes(gzip.compress(bytes(bad)))
    with pytest.raises(DataError, match="checksum mismatch"):
        data.load("mnist", "test", data_dir=folder)


def test_corrupt_decoded_cache_is_rebuilt(tmp_path, fake_mnist):
    folder = write_files(tmp_path / "data", fake_mnist)
    x1, _ = data.load("mnist", "test", data_dir=folder)
    (cache_mnist() / "decoded" / "test-images.npy").write_bytes(b"garbage")
    x2, _ = data.load("mnist", "test", data_dir=folder)
    np.testing.assert_array_equal(x1, x2)


# --------------------------------------------------------------------------- resolution


def test_resolution_order(tmp_path, fake_mnist, monkeypatch):
    explicit = write_files(tmp_path / "explicit" / "mnist", fake_mnist)
    env = write_files(tmp_path / "env", fake_mnist, gz=False)  # files directly in DIR/
    cache = write_files(cache_mnist(), fake_mnist)
    monkeypatch.setenv("CNNCLI_DATA", str(tmp_path / "env"))

    paths = data.locate("mnist", "test", data_dir=tmp_path / "explicit", download=False)
    assert paths == {"images": explicit / (TEST_IMAGES + ".gz"), "labels": explicit / (TEST_LABELS + ".gz")}

    paths = data.locate("mnist", "test", download=False)
    assert paths == {"images": env / TEST_IMAGES, "labels": env / TEST_LABELS}

    monkeypatch.delenv("CNNCLI_DATA")
    paths = data.locate("mnist", "test", download=False)
    assert paths["images"] == cache / (TEST_IMAGES + ".gz")

    # An explicit directory without the files falls through to env, then the cache.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("CNNCLI_DATA", str(tmp_path / "env"))
    assert data.locate("mnist", "test", data_dir=empty, download=False)["images"] == env / TEST_IMAGES
    monkeypatch.setenv("CNNCLI_DATA", str(empty))
    assert data.locate("mnist", "test", data_dir=empty, download=False)["images"].parent == cache

    # And every source loads the same verified arrays.
    x, y = data.load("mnist", "test", data_dir=tmp_path / "explicit")
    assert x.shape == (N_FAKE, 1, 28, 28) and y.shape == (N_FAKE,)


def test_dataset_subfolder_preferred_over_flat(tmp_path, fake_mnist):
    root = tmp_path / "root"
    write_files(root, fake_mnist, gz=False)
    write_files(root / "mnist", fake_mnist)
    paths = data.locate("mnist", "train", data_dir=root, download=False)
    assert paths["images"] == root / "mnist" / (TRAIN_IMAGES + ".gz")


def test_search_dirs_order(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_DATA", str(tmp_path / "e"))
    places = data.search_dirs("fashion-mnist", tmp_path / "d")
    assert [p.origin for p in places] == ["--data-dir", "--data-dir", "CNNCLI_DATA", "CNNCLI_DATA", "cache"]
    assert places[0].path == tmp_path / "d" / "fashion-mnist"
    assert places[1].path == tmp_path / "d"
    assert places[4].path == tmp_path / "xdg-cache" / "cnncli" / "fashion-mnist"


def test_system_dir_for_fashion_mnist(monkeypatch):
    # isolated_data removed it; put back the registry's real record.
    monkeypatch.setitem(data.DATASETS, "fashion-mnist", _REAL_FASHION)
    places = data.search_dirs("fashion-mnist")
    assert places[-1].path == Path("/usr/share/datasets/fashion-mnist")
    assert places[-1].origin == "system"


def test_nothing_found_message_lists_places_and_remedies(tmp_path, monkeypatch):
    empty = tmp_path / "given"
    empty.mkdir()
    monkeypatch.setenv("CNNCLI_DATA", str(tmp_path / "envdir"))
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        data.load("mnist", "train", data_dir=empty)
    msg = str(err.value)
    for place in (empty / "mnist", empty, tmp_path / "envdir", cache_mnist()):
        assert str(place) in msg
    assert TRAIN_IMAGES in msg and TRAIN_LABELS in msg
    assert "--data-dir" in msg and "CNNCLI_DATA" in msg and "CNNCLI_OFFLINE" in msg
    assert "does not exist" in msg


# --------------------------------------------------------------------------- downloading


def serve(srv, prefix: str, files: dict[str, bytes], mode: str = "ok") -> str:
    for name, content in files.items():
        body = gzip.compress(content)
        if mode == "corrupt":
            raw = bytearray(content)
            raw[len(raw) // 2] ^= 0x55
            body, mode_ = gzip.compress(bytes(raw)), "ok"
        else:
            mode_ = mode
        srv.routes[f"/{prefix}/{name}.gz"] = (mode_, body)
    return f"{srv.url}/{prefix}/"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.part")) if folder.exists() else []


def test_download_success_is_atomic(server, fake_mnist, monkeypatch):
    good = serve(server, "good", fake_mnist)
    monkeypatch.setenv("CNNCLI_MIRRORS", good)
    events: list[data.DownloadEvent] = []
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy_replace(src, dst):
        replaced.append((os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    def progress(event):
        events.append(event)
        final = cache_mnist() / event.filename
        if event.status != "done":
            assert not final.exists(), "final name must appear only once verified"
        else:
            assert final.is_file()

    monkeypatch.setattr(os, "replace", spy_replace)
    x, y = data.load("mnist", "test", progress=progress)
    ex, ey = fake_split(1000)
    np.testing.assert_array_equal(x[:, 0], ex)
    np.testing.assert_array_equal(y, ey)

    for name in (TEST_IMAGES, TEST_LABELS):
        final = cache_mnist() / (name + ".gz")
        assert gzip.decompress(final.read_bytes()) == fake_mnist[name]
        moves = [(s, d) for s, d in replaced if d == str(final)]
        assert len(moves) == 1 and Path(moves[0][0]).parent == final.parent
    assert leftovers(cache_mnist()) == []

    by_file = {}
    for e in events:
        by_file.setdefault(e.filename, []).append(e.status)
    assert set(by_file) == {TEST_IMAGES + ".gz", TEST_LABELS + ".gz"}
    for statuses in by_file.values():
        assert statuses[0] == "start" and statuses[-1] == "done" and "failed" not in statuses
    last = [e for e in events if e.filename == TEST_IMAGES + ".gz"][-1]
    assert last.done == last.total == len(gzip.compress(fake_mnist[TEST_IMAGES]))

    # Second time: served from the cache, no request.
    server.hits.clear()
    data.load("mnist", "test")
    assert server.hits == []


def test_data_dir_without_files_falls_through_to_download(tmp_path, server, fake_mnist, monkeypatch):
    monkeypatch.setenv("CNNCLI_MIRRORS", serve(server, "good", fake_mnist))
    empty = tmp_path / "given"
    empty.mkdir()
    x, _ = data.load("mnist", "train", data_dir=empty)
    assert x.shape == (N_FAKE, 1, 28, 28)
    assert (cache_mnist() / (TRAIN_IMAGES + ".gz")).is_file()
    assert list(empty.iterdir()) == []


def test_corrupt_mirror_then_good(server, fake_mnist, monkeypatch):
    bad = serve(server, "bad", fake_mnist, mode="corrupt")
    good = serve(server, "good", fake_mnist)
    monkeypatch.setenv("CNNCLI_MIRRORS", f"{bad},{good}")
    events = []
    x, y = data.load("mnist", "test", progress=events.append)
    np.testing.assert_array_equal(x[:, 0], fake_split(1000)[0])
    failed = [e for e in events if e.status == "failed"]
    assert len(failed) == 2 and all("SHA-256" in e.message for e in failed)
    assert all(e.url.startswith(bad) for e in failed)
    assert leftovers(cache_mnist()) == []


def test_dropped_connection_then_good(server, fake_mnist, monkeypatch):
    drop = serve(server, "drop", fake_mnist, mode="drop")
    good = serve(server, "good", fake_mnist)
    monkeypatch.setenv("CNNCLI_MIRRORS", f"{drop},{good}")
    events = []
    x, _ = data.load("mnist", "test", progress=events.append)
    np.testing.assert_array_equal(x[:, 0], fake_split(1000)[0])
    failed = [e for e in events if e.status == "failed"]
    assert len(failed) == 2 and all("closed" in e.message for e in failed)
    assert leftovers(cache_mnist()) == []


def test_all_mirrors_bad(server, fake_mnist, monkeypatch):
    bad = serve(server, "bad", fake_mnist, mode="corrupt")
    drop = serve(server, "drop", fake_mnist, mode="drop")
    missing = f"{server.url}/nothing/"
    monkeypatch.setenv("CNNCLI_MIRRORS", f"{bad},{drop},{missing}")
    with pytest.raises(DataError) as err:
        data.load("mnist", "test")
    msg = str(err.value)
    assert f"{bad}{TEST_IMAGES}.gz: SHA-256" in msg
    assert f"{drop}{TEST_IMAGES}.gz: connection closed" in msg
    assert f"{missing}{TEST_IMAGES}.gz: HTTP 404" in msg
    assert TEST_IMAGES in msg and TEST_LABELS in msg  # both still missing
    assert "--data-dir" in msg and "CNNCLI_DATA" in msg and str(cache_mnist()) in msg
    cache = cache_mnist()
    for name in (TEST_IMAGES, TEST_LABELS):
        assert not (cache / name).exists() and not (cache / (name + ".gz")).exists()
    assert leftovers(cache) == []


def test_unreachable_mirror_is_reported(monkeypatch):
    # isolated_data's mirror is a closed local port.
    with pytest.raises(DataError) as err:
        data.load("mnist", "train")
    assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz: cannot connect" in str(err.value)


def test_mirrors_env_override(monkeypatch):
    monkeypatch.setenv("CNNCLI_MIRRORS", " http://a/{dataset}/ , http://b/ ")
    assert data.mirrors("fashion-mnist") == ["http://a/fashion-mnist/", "http://b/"]
    monkeypatch.delenv("CNNCLI_MIRRORS")
    assert data.mirrors("mnist") == list(data.DATASETS["mnist"].mirrors)


# --------------------------------------------------------------------------- splitting, normalising


def test_train_val_split_deterministic():
    tr1, va1 = data.train_val_split(100, 0.2, seed=5)
    tr2, va2 = data.train_val_split(100, 0.2, seed=5)
    tr3, va3 = data.train_val_split(100, 0.2, seed=6)
    np.testing.assert_array_equal(tr1, tr2)
    np.testing.assert_array_equal(va1, va2)
    assert not np.array_equal(va1, va3)
    assert len(va1) == 20 and len(tr1) == 80
    assert sorted(np.concatenate([tr1, va1]).tolist()) == list(range(100))
    assert tr1.dtype == np.int64 and np.all(np.diff(tr1) > 0)

    tr, va = data.train_val_split(10, 3, seed=0)
    assert len(va) == 3 and len(tr) == 7
    tr, va = data.train_val_split(10, 0.0, seed=0)
    assert len(va) == 0 and len(tr) == 10
    tr, va = data.train_val_split(10, 0.01, seed=0)
    assert len(va) == 1


@pytest.mark.parametrize("bad", [1.0, -0.1, 10, -1, True, "0.1"])
def test_train_val_split_rejects(bad):
    with pytest.raises(UsageError):
        data.train_val_split(10, bad, seed=0)


def test_normalise():
    x = np.array([[[0, 255], [128, 33]]], dtype=np.uint8)
    out = data.normalise(x, np.float32)
    assert out.shape == (1, 1, 2, 2) and out.dtype == np.float32
    expected = (x.astype(np.float64) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-5, atol=1e-6)
    out64 = data.normalise(x, np.float64, dataset="fashion-mnist")
    np.testing.assert_allclose(out64[:, 0], (x / 255 - 0.2860) / 0.3530, rtol=1e-12)
    # (N, 1, H, W), (N, H, W) and one (H, W) image give the same numbers.
    np.testing.assert_array_equal(data.normalise(x[:, None], np.float32), out)
    np.testing.assert_array_equal(data.normalise(x[0], np.float32), out)
    with pytest.raises(UsageError, match="uint8"):
        data.normalise(out, np.float32)
    with pytest.raises(UsageError, match="floating"):
        data.normalise(x, np.int32)
    with pytest.raises(UsageError, match=r"\(N, 1, H, W\).*\(1, 3, 2, 2\)"):
        data.normalise(np.zeros((1, 3, 2, 2), np.uint8), np.float32)


# --------------------------------------------------------------------------- real data


@needs_mnist
def test_real_mnist_test_split(monkeypatch):
    monkeypatch.setenv("CNNCLI_DATA", str(DATA))
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    x, y = data.load("mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x2, y2 = data.load("mnist", "test")  # from the decoded cache
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_test_split(monkeypatch):
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    x, y = data.load("fashion-mnist", "test", data_dir="/usr/share/datasets")
    assert x.shape == (10000, 1, 28, 28)
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10


@pytest.mark.parametrize("argv", [["eval", "lenet5", "--checkpoint", "{ckpt}", "--worst", "0"],
                                  ["backprop-trace", "lenet5", "--sample", "3"]],
                         ids=["eval", "backprop-trace"])
def test_commands_that_load_data_show_their_downloads(argv, server, fake_mnist, monkeypatch, tmp_path, capsys):
    from cnncli import cli
    from cnncli.engine.network import Network
    from cnncli.model import graph, spec
    from cnncli.records import checkpoint

    monkeypatch.setenv("CNNCLI_MIRRORS", serve(server, "good", fake_mnist))
    net = Network(graph.build(spec.load("lenet5"), aux=False), "float32", seed=0)
    ckpt = tmp_path / "w.npz"
    checkpoint.save(ckpt, net.state_dict(), {}, {})
    with pytest.raises(SystemExit) as done:
        cli.main([a.format(ckpt=ckpt) for a in argv])
    assert done.value.code in (0, None)
    out = capsys.readouterr().out
    # Not a terminal: a plain line per download event (wrapped between words at 80 columns, the URL kept
    # whole), before the command's own output.
    shown = " ".join(out.split())
    assert f"downloading {TEST_IMAGES}.gz from {server.url}/good/{TEST_IMAGES}.gz" in shown
    assert f"downloaded {TEST_LABELS}.gz" in out and f"{server.url}/good/{TEST_IMAGES}.gz" in out.split()


def test_a_mirror_that_fails_when_every_mirror_fails_is_printed_once(tmp_path, capsys):
    # isolated_data's mirror refuses connections: the error lists it, and nothing else prints it again.
    from cnncli import cli

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as done:
        cli.main(["backprop-trace", "lenet5", "--sample", "3", "--data-dir", str(empty)])
    assert done.value.code == 2
    out, err = capsys.readouterr()
    url = f"http://127.0.0.1:9/{TEST_IMAGES}.gz"
    assert f"{url}: cannot connect" in err
    assert (out + err).count(url) == 1, out + err


@pytest.mark.parametrize("terminal", [False, True], ids=["plain", "terminal"])
def test_a_mirror_that_failed_before_another_delivered_is_printed_once(terminal):
    from rich.console import Console

    from cnncli.render.downloads import Downloads

    buf = io.StringIO()
    bad, good = "http://bad.invalid/t.gz", "http://good.invalid/t.gz"
    with Downloads(Console(file=buf, force_terminal=terminal, width=150)) as shown:
        # refused before any answer (no "start"), then the next mirror delivers
        for event in (data.DownloadEvent("failed", "t.gz", bad, 0, None, "cannot connect: refused"),
                      data.DownloadEvent("start", "t.gz", good, 0, 10),
                      data.DownloadEvent("progress", "t.gz", good, 10, 10),
                      data.DownloadEvent("done", "t.gz", good, 10, 10)):
            shown(event)
    assert buf.getvalue().count(f"{bad} failed: cannot connect: refused") == 1, buf.getvalue()
