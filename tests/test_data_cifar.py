"""Tests of CIFAR-10 and CIFAR-100 in cnncli.data: the archive, its verification and extraction, parsing.

Everything runs on small archives built here in CIFAR's exact binary layout
(a few records per file, the real member paths, the real class-name files);
their checksums are registered in place of the official ones for the test
(the production check itself is unchanged). Downloads come from an HTTP server
on 127.0.0.1 (conftest's ``server``); as in test_data.py, conftest's ``isolated_data``
gives every test a private cache and mirrors that cannot reach the internet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from helpers import run_main

from cnncli import data
from cnncli.data import cifar
from cnncli.errors import DataError

C10 = data.DATASETS["cifar10"]
C100 = data.DATASETS["cifar100"]
C10_COUNTS = {**{f"data_batch_{i}.bin": 3 for i in range(1, 6)}, "test_batch.bin": 4}
C100_COUNTS = {"train.bin": 6, "test.bin": 4}
pytestmark = pytest.mark.usefixtures("isolated_data")


# --------------------------------------------------------------------------- building archives


def record(labels: tuple[int, ...], red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> bytes:
    """One record as the authors describe it: the label bytes, then the red, green and blue 32×32 planes."""
    return bytes(labels) + red.astype(np.uint8).tobytes() + green.astype(np.uint8).tobytes() + \
        blue.astype(np.uint8).tobytes()


@dataclass
class Fake:
    """A fake archive and what loading it must give."""

    archive: bytes
    files: dict[str, bytes]               # data file -> its bytes
    images: dict[str, np.ndarray]         # data file -> (n, 3, 32, 32)
    labels: dict[str, np.ndarray]         # data file -> (n, label bytes)


def fake_files(counts: dict[str, int], label_classes: tuple[int, ...], seed: int = 0) -> Fake:
    rng = np.random.default_rng(seed)
    files, images, labels = {}, {}, {}
    for name, n in counts.items():
        planes = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labs = np.stack([rng.integers(0, k, size=n) for k in label_classes], axis=1).astype(np.uint8)
        files[name] = b"".join(record(tuple(labs[i]), *planes[i]) for i in range(n))
        images[name], labels[name] = planes, labs
    return Fake(b"", files, images, labels)


def tar_gz(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                name, content = member
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def archive_members(info: data.DatasetInfo, files: dict[str, bytes]) -> list:
    arch = info.archive
    root = tarfile.TarInfo(arch.root)
    root.type = tarfile.DIRTYPE
    names = [(f"{arch.root}/{name}", "\n".join(listed).encode() + b"\n\n")
             for name, listed in arch.label_files.items()]
    readme = [(f"{arch.root}/readme.html", b"<html>not read</html>")]
    return [root, *[(f"{arch.root}/{n}", c) for n, c in files.items()], *names, *readme]


def register(monkeypatch, archive: bytes, counts: dict[str, int], names=("cifar10",)) -> None:
    """Make ``archive`` the official archive of ``names`` for this test (checksums, size, record counts)."""
    for name in names:
        info = data.DATASETS[name]
        arch = dataclasses.replace(info.archive, md5=hashlib.md5(archive).hexdigest(),
                                   sha256=hashlib.sha256(archive).hexdigest(), size=len(archive), records=counts)
        monkeypatch.setitem(data.DATASETS, name, dataclasses.replace(info, archive=arch))


@pytest.fixture
def fake10(monkeypatch) -> Fake:
    fake = fake_files(C10_COUNTS, (10,))
    fake.archive = tar_gz(archive_members(C10, fake.files))
    register(monkeypatch, fake.archive, C10_COUNTS)
    return fake


@pytest.fixture
def fake100(monkeypatch) -> Fake:
    fake = fake_files(C100_COUNTS, (20, 100), seed=1)
    fake.archive = tar_gz(archive_members(C100, fake.files))
    register(monkeypatch, fake.archive, C100_COUNTS, names=("cifar100", "cifar100-coarse"))
    return fake


def serve_archive(srv, name: str, body: bytes, prefix: str = "kriz") -> str:
    srv.routes[f"/{prefix}/{name}"] = ("ok", body)
    return f"{srv.url}/{prefix}/"


def leftovers(folder: Path) -> list[str]:
    """Temporary downloads and extractions left behind."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def expected(fake: Fake, names: tuple[str, ...], byte: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([fake.images[n] for n in names]),
            np.concatenate([fake.labels[n][:, byte] for n in names]).astype(np.int64))


# --------------------------------------------------------------------------- registry


def test_registry():
    for name, classes, directory in (("cifar10", 10, "cifar10"), ("cifar100", 100, "cifar100"),
                                     ("cifar100-coarse", 20, "cifar100")):
        info = data.get(name)
        assert info.image_shape == (3, 32, 32) and len(info.mean) == len(info.std) == 3
        assert len(info.classes) == len(set(info.classes)) == classes
        assert info.directory == directory and data.cache_dir(name).name == directory
        assert info.classes in info.archive.label_files.values()
        assert len(info.archive.md5) == 32 and len(info.archive.sha256) == 64
        assert sum(info.archive.records[f] for f in info.splits["train"]) == 50_000
        assert sum(info.archive.records[f] for f in info.splits["test"]) == 10_000
    assert data.class_names("cifar10")[0] == "airplane" and data.class_names("cifar10")[9] == "truck"
    assert data.get("CIFAR-10").name == "cifar10" and data.get("cifar_100_coarse").name == "cifar100-coarse"
    assert data.get("cifar100").label_byte == 1 and data.get("cifar100-coarse").label_byte == 0


# --------------------------------------------------------------------------- parsing


def test_pixel_order_is_red_then_green_then_blue_planes_row_major():
    red = np.arange(1024).reshape(32, 32) % 251
    green, blue = np.full((32, 32), 7), np.zeros((32, 32))
    blue[0, 1] = 200  # first row, second column
    raw = record((3,), red, green, blue) + record((9,), blue, red, green)
    x, y = cifar.parse_records(raw, (10,), (3, 32, 32))
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.uint8 and y.tolist() == [[3], [9]]
    np.testing.assert_array_equal(x[0, 0], red)
    np.testing.assert_array_equal(x[0, 1], green)
    assert x[0, 2, 0, 1] == 200 and x[0, 2].sum() == 200
    np.testing.assert_array_equal(x[1, 2], green)


def test_parsing_is_strict():
    one = record((1, 42), *np.zeros((3, 32, 32)))
    x, y = cifar.parse_records(one * 3, (20, 100), (3, 32, 32), "f.bin", records=3)
    assert y.tolist() == [[1, 42]] * 3
    with pytest.raises(DataError, match=r"f\.bin: 10,221 bytes is not a whole number of 3074-byte records .*\(3 records and 999 bytes over\); the file is truncated"):
        cifar.parse_records(one * 3 + b"\0" * 999, (20, 100), (3, 32, 32), "f.bin")
    with pytest.raises(DataError, match=r"f\.bin: 0 bytes"):
        cifar.parse_records(b"", (20, 100), (3, 32, 32), "f.bin")
    with pytest.raises(DataError, match=r"holds 3 records, the official file has 4"):
        cifar.parse_records(one * 3, (20, 100), (3, 32, 32), "f.bin", records=4)
    bad = one + record((1, 100), *np.zeros((3, 32, 32)))
    with pytest.raises(DataError, match=r"label byte 2 of 2 out of range 0\.\.99, the first is 100 in record 1"):
        cifar.parse_records(bad, (20, 100), (3, 32, 32), "f.bin")
    with pytest.raises(DataError, match=r"1 record\(s\) with label out of range 0\.\.9"):
        cifar.parse_records(record((10,), *np.zeros((3, 32, 32))), (10,), (3, 32, 32), "f.bin")


# --------------------------------------------------------------------------- downloading


def test_download_verify_extract_and_cache(server, fake10, monkeypatch):
    monkeypatch.setenv("CNNCLI_MIRRORS", serve_archive(server, "cifar-10-binary.tar.gz", fake10.archive))
    events: list[data.DownloadEvent] = []
    x, y = data.load("cifar10", "train", progress=events.append)
    ex, ey = expected(fake10, C10.splits["train"])
    assert x.dtype == np.uint8 and x.shape == (15, 3, 32, 32) and y.dtype == np.int64
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)
    assert x.flags.writeable and y.flags.writeable
    assert [e.status for e in events][0] == "start" and events[-1].status == "done"
    assert {e.filename for e in events} == {"cifar-10-binary.tar.gz"}
    assert events[-1].done == events[-1].total == len(fake10.archive)

    cache = data.cache_dir("cifar10")
    extracted = cache / "cifar-10-batches-bin"
    assert sorted(p.name for p in extracted.iterdir()) == sorted(
        [*C10_COUNTS, "batches.meta.txt", cifar.MANIFEST])  # the readme is not extracted
    assert not (cache / "cifar-10-binary.tar.gz").exists()  # the extraction is what is kept
    assert leftovers(cache) == []

    # The test split comes from the same extraction, with no further request.
    server.hits.clear()
    x, y = data.load("cifar10", "test")
    np.testing.assert_array_equal(x, fake10.images["test_batch.bin"])
    assert server.hits == []

    # Loaded again: the decoded cache, without reading the files.
    def no_parsing(*args, **kwargs):
        raise AssertionError("the decoded cache should have been used")

    monkeypatch.setattr(cifar, "parse_records", no_parsing)
    x2, y2 = data.load("cifar10", "train")
    np.testing.assert_array_equal(x2, ex)
    np.testing.assert_array_equal(y2, ey)


def test_wrong_archive_is_refused_and_not_kept(server, fake10, monkeypatch):
    wrong = bytearray(fake10.archive)
    wrong[len(wrong) // 2] ^= 0xFF  # same size: the MD5 tells
    bad = serve_archive(server, "cifar-10-binary.tar.gz", bytes(wrong), prefix="bad")
    short = serve_archive(server, "cifar-10-binary.tar.gz", fake10.archive[:-10], prefix="short")
    monkeypatch.setenv("CNNCLI_MIRRORS", f"{bad},{short}")
    with pytest.raises(DataError) as err:
        data.load("cifar10", "test")
    msg = str(err.value)
    assert f"{bad}cifar-10-binary.tar.gz: its MD5 is {hashlib.md5(wrong).hexdigest()}" in msg
    assert f"{short}cifar-10-binary.tar.gz: it is {len(fake10.archive) - 10:,} bytes long" in msg
    cache = data.cache_dir("cifar10")
    assert not (cache / "cifar-10-batches-bin").exists() and not (cache / "cifar-10-binary.tar.gz").exists()
    assert leftovers(cache) == []

    # Then a good mirror: downloaded and extracted after all.
    good = serve_archive(server, "cifar-10-binary.tar.gz", fake10.archive, prefix="good")
    monkeypatch.setenv("CNNCLI_MIRRORS", f"{bad},{good}")
    x, _ = data.load("cifar10", "test")
    assert x.shape == (4, 3, 32, 32) and leftovers(cache) == []


def test_interrupted_download_or_extraction_leaves_nothing(server, fake10, monkeypatch):
    monkeypatch.setenv("CNNCLI_MIRRORS", serve_archive(server, "cifar-10-binary.tar.gz", fake10.archive))
    cache = data.cache_dir("cifar10")

    def ctrl_c(event):
        if event.status == "progress":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        data.load("cifar10", "test", progress=ctrl_c)
    assert list(cache.iterdir()) == []

    real_copy = cifar._copy_member
    copied = []

    def copy_then_ctrl_c(tar, member, target):
        copied.append(real_copy(tar, member, target))
        if len(copied) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(cifar, "_copy_member", copy_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        data.load("cifar10", "test")
    assert list(cache.iterdir()) == []


def test_offline_message_says_where_to_put_the_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_OFFLINE", "1")
    monkeypatch.setenv("CNNCLI_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as err:
        data.load("cifar100-coarse", "train", data_dir=tmp_path / "given")
    msg = str(err.value)
    assert "CIFAR-100 (20 superclasses) file(s) not found: cifar-100-binary.tar.gz, or a folder " \
           "cifar-100-binary/ holding train.bin" in msg
    for place in (tmp_path / "given" / "cifar100", tmp_path / "given", tmp_path / "env" / "cifar100",
                  data.cache_dir("cifar100")):
        assert f"  - {place}  [" in msg
    assert "Downloading is disabled (CNNCLI_OFFLINE is set)" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz" in msg
    assert "03b5dce01913d631647c71ecec9e9cb8" in msg  # the MD5 to check a copy made elsewhere
    assert "--data-dir DIR, with cifar-100-binary.tar.gz in DIR/cifar100/" in msg and "CNNCLI_DATA=DIR" in msg


def test_unreachable_mirror_is_reported():
    # isolated_data's mirror is a closed local port.
    with pytest.raises(DataError) as err:
        data.load("cifar10", "test")
    assert "http://127.0.0.1:9/cifar-10-binary.tar.gz: cannot connect" in str(err.value)


# --------------------------------------------------------------------------- files on disk


def test_archive_in_data_dir_is_verified_and_extracted_into_the_cache(tmp_path, fake10, server):
    given = tmp_path / "given" / "cifar10"
    given.mkdir(parents=True)
    (given / "cifar-10-binary.tar.gz").write_bytes(fake10.archive)
    x, y = data.load("cifar10", "test", data_dir=tmp_path / "given")
    np.testing.assert_array_equal(x, fake10.images["test_batch.bin"])
    assert sorted(p.name for p in given.iterdir()) == ["cifar-10-binary.tar.gz"]  # the user's folder is untouched
    assert (data.cache_dir("cifar10") / "cifar-10-batches-bin" / cifar.MANIFEST).is_file()
    assert server.hits == []

    # With no extraction in the cache yet, a bad archive given by the user is an error naming it,
    # and is left where it is.
    shutil.rmtree(data.cache_dir("cifar10"))
    (given / "cifar-10-binary.tar.gz").write_bytes(fake10.archive[:-1])
    with pytest.raises(DataError) as err:
        data.load("cifar10", "test", data_dir=tmp_path / "given")
    msg = str(err.value)
    assert f"{given / 'cifar-10-binary.tar.gz'}: checksum mismatch: it is {len(fake10.archive) - 1:,} bytes" in msg
    assert "Delete it" in msg and (given / "cifar-10-binary.tar.gz").is_file()


def test_a_verified_extraction_in_the_cache_is_reused(tmp_path, fake10, monkeypatch):
    given = tmp_path / "given"
    given.mkdir()
    (given / "cifar-10-binary.tar.gz").write_bytes(fake10.archive)
    data.load("cifar10", "test", data_dir=given)

    def no_hashing(*args, **kwargs):
        raise AssertionError("the cache's verified extraction should have been used")

    monkeypatch.setattr(cifar, "archive_fault", no_hashing)
    x, _ = data.load("cifar10", "train", data_dir=given)
    assert x.shape == (15, 3, 32, 32)


def test_a_changed_extracted_file_is_detected(tmp_path, fake10):
    given = tmp_path / "given"
    given.mkdir()
    (given / "cifar-10-binary.tar.gz").write_bytes(fake10.archive)
    data.load("cifar10", "test", data_dir=given)
    path = data.cache_dir("cifar10") / "cifar-10-batches-bin" / "test_batch.bin"
    raw = bytearray(path.read_bytes())
    raw[5] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        data.load("cifar10", "test", data_dir=given)
    msg = str(err.value)
    assert f"{path}: changed since cnncli extracted it from the verified cifar-10-binary.tar.gz" in msg
    assert "Delete the folder" in msg


def test_a_folder_extracted_by_hand_is_used_with_a_warning(tmp_path, fake10):
    folder = tmp_path / "given" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, content in fake10.files.items():
        (folder / name).write_bytes(content)
    (folder / "batches.meta.txt").write_text("\n".join(C10.classes) + "\n\n")
    with pytest.warns(data.DataWarning, match="checked for structure only"):
        x, y = data.load("cifar10", "train", data_dir=tmp_path / "given")
    ex, ey = expected(fake10, C10.splits["train"])
    np.testing.assert_array_equal(x, ex)
    np.testing.assert_array_equal(y, ey)

    (folder / "batches.meta.txt").write_text("\n".join(["aeroplane", *C10.classes[1:]]))
    with pytest.warns(data.DataWarning), pytest.raises(DataError, match="line 1 is 'aeroplane' where 'airplane'"):
        data.load("cifar10", "train", data_dir=tmp_path / "given")

    (folder / "batches.meta.txt").unlink()
    (folder / "test_batch.bin").write_bytes(fake10.files["test_batch.bin"][:-5])
    with pytest.warns(data.DataWarning), pytest.raises(DataError, match="not a whole number of 3073-byte records"):
        data.load("cifar10", "test", data_dir=tmp_path / "given")


def _member(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("bad, reason", [
    (("../evil.bin", b"x"), "points outside"),
    (("cifar-10-batches-bin/../../evil.bin", b"x"), "points outside"),
    (("/tmp/evil.bin", b"x"), "absolute path"),
    (_member("cifar-10-batches-bin/test_batch.bin", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    (_member("cifar-10-batches-bin/extra", tarfile.LNKTYPE, "cifar-10-batches-bin/batches.meta.txt"), "is a link"),
    (_member("cifar-10-batches-bin/fifo", tarfile.FIFOTYPE), "special file"),
], ids=["dotdot", "dotdot-inside", "absolute", "symlink", "hardlink", "fifo"])
def test_unsafe_archives_are_refused(tmp_path, monkeypatch, bad, reason):
    fake = fake_files(C10_COUNTS, (10,))
    members = archive_members(C10, fake.files)
    if isinstance(bad, tarfile.TarInfo) and bad.name.endswith("test_batch.bin"):
        members = [m for m in members if not (isinstance(m, tuple) and m[0] == bad.name)]
    archive = tar_gz([*members[:3], bad, *members[3:]])
    register(monkeypatch, archive, C10_COUNTS)  # the checksums pass: only the members are at fault
    given = tmp_path / "deep" / "given"
    given.mkdir(parents=True)
    (given / "cifar-10-binary.tar.gz").write_bytes(archive)
    with pytest.raises(DataError) as err:
        data.load("cifar10", "test", data_dir=given)
    assert f"{given / 'cifar-10-binary.tar.gz'}: refused to extract: member" in str(err.value)
    assert reason in str(err.value)
    cache = data.cache_dir("cifar10")
    assert not (cache / "cifar-10-batches-bin").exists() and leftovers(cache) == []
    assert not any(p.name == "evil.bin" for p in tmp_path.rglob("*"))


def test_an_archive_missing_a_member_is_refused(tmp_path, monkeypatch):
    fake = fake_files(C10_COUNTS, (10,))
    members = [m for m in archive_members(C10, fake.files)
               if not (isinstance(m, tuple) and m[0].endswith("data_batch_3.bin"))]
    archive = tar_gz(members)
    register(monkeypatch, archive, C10_COUNTS)
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(archive)
    with pytest.raises(DataError, match="lacks cifar-10-batches-bin/data_batch_3.bin"):
        data.load("cifar10", "test", data_dir=tmp_path)
    assert leftovers(data.cache_dir("cifar10")) == []


# --------------------------------------------------------------------------- CIFAR-100


def test_cifar100_fine_and_coarse_labels_share_one_download(server, fake100, monkeypatch):
    monkeypatch.setenv("CNNCLI_MIRRORS", serve_archive(server, "cifar-100-binary.tar.gz", fake100.archive))
    x_fine, fine = data.load("cifar100", "train")
    x_coarse, coarse = data.load("cifar100-coarse", "train")
    assert server.hits == ["/kriz/cifar-100-binary.tar.gz"]
    np.testing.assert_array_equal(x_fine, fake100.images["train.bin"])
    np.testing.assert_array_equal(x_coarse, x_fine)
    np.testing.assert_array_equal(fine, fake100.labels["train.bin"][:, 1])
    np.testing.assert_array_equal(coarse, fake100.labels["train.bin"][:, 0])
    assert fine.dtype == coarse.dtype == np.int64
    decoded_files = sorted(p.name for p in (data.cache_dir("cifar100") / "decoded").iterdir())
    assert "train-labels.npy" in decoded_files and "cifar100-coarse-train-labels.npy" in decoded_files
    # Each reads its own decoded labels back.
    assert data.load("cifar100-coarse", "train")[1].tolist() == coarse.tolist()
    assert data.load("cifar100", "train")[1].tolist() == fine.tolist()
    _, test_coarse = data.load("cifar100-coarse", "test")
    assert test_coarse.tolist() == fake100.labels["test.bin"][:, 0].tolist()


def test_normalise_per_channel():
    x = np.zeros((2, 3, 2, 2), np.uint8)
    x[:, 1] = 255
    x[1, 2] = 128
    out = data.normalise(x, np.float64, "cifar10")
    assert out.shape == (2, 3, 2, 2) and out.dtype == np.float64
    mean, std = np.array(C10.mean), np.array(C10.std)
    np.testing.assert_allclose(out, (x / 255 - mean[None, :, None, None]) / std[None, :, None, None], rtol=1e-12)
    with pytest.raises(Exception, match=r"\(N, 3, H, W\)"):
        data.normalise(np.zeros((2, 32, 32), np.uint8), np.float32, "cifar10")


# --------------------------------------------------------------------------- through the CLI

TINY_RGB = """\
name: tiny-rgb
input: [3, 32, 32]
classes: 10
train: {dataset: cifar10, optimizer: sgd, lr: 0.05, batch_size: 4, epochs: 1, val_size: 2}
layers:
  - conv: {filters: 4, kernel: 5, stride: 2}
  - relu
  - maxpool: {kernel: 2}
  - flatten
  - dense: {units: 10}
"""


def test_train_eval_and_trace_a_colour_model_on_cifar10(tmp_path, server, fake10, monkeypatch, capsys):
    monkeypatch.setenv("CNNCLI_MIRRORS", serve_archive(server, "cifar-10-binary.tar.gz", fake10.archive))
    model = tmp_path / "tiny-rgb.yaml"
    model.write_text(TINY_RGB.replace("dataset: cifar10", "dataset: mnist"))  # --dataset decides
    run = tmp_path / "run"
    code, out, err = run_main(["train", str(model), "--dataset", "cifar10", "--epochs", "1", "--limit", "12",
                               "--out", str(run)], capsys)
    assert code == 0, out + err
    assert "downloading cifar-10-binary.tar.gz" in out and "downloaded cifar-10-binary.tar.gz" in out
    assert (run / "last.npz").is_file() and (run / "test.json").is_file()

    code, out, err = run_main(["eval", str(model), "--checkpoint", str(run / "last.npz"), "--dataset", "cifar10",
                               "--worst", "2"], capsys)
    assert code == 0, out + err
    assert "CIFAR-10 test (4 images)" in out
    for name in C10.classes:  # the per-class table names every class
        assert name in out
    assert server.hits == ["/kriz/cifar-10-binary.tar.gz"]  # downloaded once

    model.write_text(TINY_RGB)
    code, out, err = run_main(["backprop-trace", str(model), "--sample", "3", "--format", "json"], capsys)
    assert code == 0, out + err
    assert "cifar10 test image 3" in out

    # An MNIST model on CIFAR-10: the tool's own error, exit 2.
    code, out, err = run_main(["eval", "lenet5", "--checkpoint", str(run / "last.npz"), "--dataset", "cifar10"], capsys)
    assert code == 2 and "error:" in err
