"""PyTorch state dicts read without PyTorch (cnncli.exchange.pth): both formats of torch.save, every dtype,
views of one storage, wrappers; and the refusals: other Python objects (nothing imported or run), damage.

Where torch is installed the files come from ``torch.save`` and the arrays must equal ``tensor.numpy()`` and
``torch.load(weights_only=True)`` bit for bit. Elsewhere two small files committed under tests/data/ (written by
:func:`write_fixtures`: ``python tests/test_pth.py --write``) are read against :func:`expected`, the arrays the
generator saved. Other files are built here opcode by opcode (:func:`tensor_pickle`): big-endian storages, the
legacy format's storage views, globals that must be refused; torch, where installed, reads them alike.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from helpers import run_main

from cnncli.errors import CheckpointError
from cnncli.exchange import pth

DATA = Path(__file__).resolve().parent / "data"
FIXTURES = {"zip": DATA / "tensors-zip.pth", "legacy": DATA / "tensors-legacy.pth"}
LEGACY = {"_use_new_zipfile_serialization": False}
FORMATS = {"zip": {}, "legacy": LEGACY}


#: bfloat16 numbers by their bits: 1, -2.5, the largest, the smallest subnormal, -0, a NaN.
BF16_BITS = np.array([0x3F80, 0xC020, 0x7F7F, 0x0001, 0x8000, 0x7FC0], np.uint16)


def _matrix() -> np.ndarray:
    return np.arange(12, dtype=np.float32).reshape(3, 4) * 0.5 - 1


def expected() -> dict[str, np.ndarray]:
    """What the fixture files hold: every dtype the reader knows (bfloat16 as float32), a 0-d and an empty
    tensor, and views of one storage (the matrix, its transpose, a block at offset 5, a strided slice)."""
    return {
        "float32": np.array([1.5, -0.0, np.inf, -np.inf, np.nan, 1e-40], np.float32),
        "float64": np.array([[np.pi, -1e300], [5e-324, 0.0]], np.float64),
        "float16": np.array([65504, -6e-8, 0.333], np.float16),
        "bfloat16": (BF16_BITS.astype(np.uint32) << 16).view(np.float32),  # float32's upper half
        "int64": np.array([2**62, -2**63, 7], np.int64),
        "int32": np.array([[2**31 - 1], [-2**31]], np.int32),
        "int16": np.array([-32768, 32767, 1], np.int16),
        "int8": np.array([-128, 127, 0], np.int8),
        "uint8": np.array([0, 255, 7], np.uint8),
        "bool": np.array([True, False, True]),
        "scalar": np.array(3.25, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "matrix": _matrix(),
        "matrix.T": _matrix().T.copy(),
        "matrix.block": _matrix()[1:, 1:3].copy(),
        "matrix.stepped": _matrix().reshape(-1)[1::3].copy(),
    }


def generator_tensors(torch) -> collections.OrderedDict:
    """:func:`expected` as the tensors the generator saves: the matrix's views share its storage."""
    arrays = expected()
    out = collections.OrderedDict()
    for key, value in arrays.items():
        if key.startswith("matrix"):
            continue
        out[key] = torch.from_numpy(value.copy())
    out["bfloat16"] = torch.from_numpy(BF16_BITS.view(np.int16).copy()).view(torch.bfloat16)  # the bits exactly
    matrix = torch.from_numpy(_matrix())
    out["matrix"], out["matrix.T"], out["matrix.block"] = matrix, matrix.t(), matrix[1:, 1:3]
    out["matrix.stepped"] = matrix.view(-1)[1::3]
    out._metadata = collections.OrderedDict({"": {"version": 1}})  # what a module's state_dict() carries
    return out


def write_fixtures(torch, folder: Path = DATA) -> dict[str, Path]:
    """The committed files: the zip format holds the state dict, the legacy one wraps it (``state_dict``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / path.name for kind, path in FIXTURES.items()}
    torch.save(generator_tensors(torch), paths["zip"])
    torch.save({"state_dict": generator_tensors(torch), "epoch": 3}, paths["legacy"], **LEGACY)
    return paths


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Equal keys (in order), dtypes, shapes and bytes; every array C-contiguous, writeable and its own."""
    assert list(got) == list(want)
    for key, value in want.items():
        array = got[key]
        assert array.dtype == value.dtype and array.shape == value.shape, key
        assert array.tobytes() == np.ascontiguousarray(value).tobytes(), key
        assert array.flags.c_contiguous and array.flags.writeable, key
    shared = [(a, b) for a in got for b in got if a < b and np.shares_memory(got[a], got[b])]
    assert not shared, "arrays share memory"


# ---- hand-built files: torch.save's layout written opcode by opcode ----

class T(NamedTuple):
    """A tensor in a hand-built pickle: its storage (class, key, element count) and its geometry."""

    storage: str
    key: str
    numel: int
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    view: tuple[str, int, int] | None = None  # the legacy format's storage view (key, offset, numel)


def _text(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)  # BININT


def _global(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _ints(values) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def tensor_pickle(entries: dict[str, T | bytes], legacy: bool = False) -> bytes:
    """A protocol-2 pickle of a dict as torch.save writes it: ``_rebuild_tensor_v2`` calls on persistent
    storage ids (bytes values are put in as they are: other opcodes)."""
    out = [b"\x80\x02}("]
    for name, t in entries.items():
        out.append(_text(name))
        if isinstance(t, bytes):
            out.append(t)
            continue
        pid = b"(" + _text("storage") + _global("torch", t.storage) + _text(t.key) + _text("cpu") + _int(t.numel)
        if legacy:
            pid += b"N" if t.view is None else b"(" + _text(t.view[0]) + _int(t.view[1]) + _int(t.view[2]) + b"t"
        out += [_global("torch._utils", "_rebuild_tensor_v2"), b"(", pid, b"tQ", _int(t.offset), _ints(t.size),
                _ints(t.stride), b"\x89", _global("collections", "OrderedDict"), b")R", b"tR"]
    out.append(b"u.")
    return b"".join(out)


def zip_file(path: Path, pickled: bytes, storages: dict[str, bytes], byteorder: str | None = "little") -> Path:
    """The zip format: ``<stem>/data.pkl``, ``<stem>/data/<key>``, the byte order record unless None."""
    prefix = path.stem
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pickled)
        if byteorder is not None:
            z.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in storages.items():
            z.writestr(f"{prefix}/data/{key}", data)
        z.writestr(f"{prefix}/version", "3\n")
    return path


def legacy_file(path: Path, pickled: bytes, storages: dict[str, tuple[int, bytes]]) -> Path:
    """The legacy format: magic number, protocol, system information, the object, the keys, the storages."""
    header = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                            "type_sizes": {"short": 2, "int": 4, "long": 4}}]
    parts = [pickle.dumps(h, protocol=2) for h in header] + [pickled, pickle.dumps(list(storages), protocol=2)]
    parts += [count.to_bytes(8, "little") + data for count, data in storages.values()]
    path.write_bytes(b"".join(parts))
    return path


@pytest.fixture(scope="module")
def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _torch_agrees(torch, path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Where torch is installed: it reads the hand-built file as the reader did (the file is torch's format)."""
    if torch is None:
        return
    assert_same(arrays, {k: _numpy(torch, v) for k, v in torch.load(path, weights_only=True).items()})


# ---- the committed files, read without torch ----

@pytest.mark.parametrize("kind", FIXTURES)
def test_the_committed_files_read_as_the_arrays_they_were_written_from(kind, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # the reader never needs it
    assert FIXTURES[kind].stat().st_size < 8000
    assert_same(pth.read_state_dict(FIXTURES[kind]), expected())


def test_the_committed_files_are_what_the_generator_writes(tmp_path):
    """Byte for byte they cannot be (storage keys and ids differ per run): torch reads the same tensors from
    both, with the same strides, offsets and shared storages."""
    torch = pytest.importorskip("torch")
    fresh = write_fixtures(torch, tmp_path)
    for kind, committed in FIXTURES.items():
        written, new = torch.load(committed, weights_only=True), torch.load(fresh[kind], weights_only=True)
        assert type(written) is type(new) and set(written) == set(new)
        if kind == "legacy":
            assert written["epoch"] == new["epoch"]
            written, new = written["state_dict"], new["state_dict"]
        assert list(written) == list(new) and written._metadata == new._metadata
        for key, tensor in new.items():
            old = written[key]
            assert (old.dtype, old.shape, old.stride(), old.storage_offset()) == \
                   (tensor.dtype, tensor.shape, tensor.stride(), tensor.storage_offset()), key
            assert _numpy(torch, old).tobytes() == _numpy(torch, tensor).tobytes(), key
        pointer = written["matrix"].untyped_storage().data_ptr()
        assert all(written[k].untyped_storage().data_ptr() == pointer for k in written if k.startswith("matrix"))


# ---- files torch.save writes ----

def _every_kind(torch, seed: int = 0) -> dict:
    """Random tensors of every dtype, a 0-d, an empty, transposed, sliced and strided views of one storage."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(5, 6, generator=g)
    out = {dtype: torch.randn(3, 4, generator=g).to(getattr(torch, dtype)) * 100 for dtype in
           ("float32", "float64", "float16", "bfloat16")}
    for dtype in ("int64", "int32", "int16", "int8", "uint8"):
        info = torch.iinfo(getattr(torch, dtype))
        out[dtype] = torch.randint(info.min, info.max, (2, 3, 4), generator=g, dtype=getattr(torch, dtype))
    out["bool"] = torch.rand(7, generator=g) > 0.5
    out.update({"scalar": torch.tensor(2.5, dtype=torch.float64), "empty": torch.zeros(2, 0, 3),
                "base": base, "base.T": base.t(), "base.block": base[1:4, 2:5], "base.column": base[:, 3],
                "base.stepped": base.view(-1)[3::4], "half.T": out["float16"].t(),
                "bf16.block": out["bfloat16"][1:, ::2], "negated": torch.arange(6.0).reshape(2, 3)._neg_view()})
    return out


def _numpy(torch, tensor) -> np.ndarray:
    tensor = tensor.resolve_neg()
    return tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("kind", FORMATS)
def test_torch_save_files_read_bit_for_bit_as_torch_reads_them(kind, protocol, tmp_path):
    torch = pytest.importorskip("torch")
    tensors = _every_kind(torch, seed=protocol)
    path = tmp_path / "every.pth"
    torch.save({"state_dict": tensors, "epoch": 7}, path, pickle_protocol=protocol, **FORMATS[kind])
    got = pth.read_state_dict(path)
    assert_same(got, {k: _numpy(torch, v) for k, v in tensors.items()})
    if protocol == 2:  # torch's own weights-only unpickler knows protocol 2's opcodes only
        loaded = torch.load(path, weights_only=True)["state_dict"]
        assert_same(got, {k: _numpy(torch, v) for k, v in loaded.items()})


@pytest.mark.parametrize("kind", FORMATS)
def test_a_modules_state_dict_and_its_wrappings_read_as_torch_reads_them(kind, tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                 torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    module(torch.randn(2, 3, 3, 3)).sum().backward()
    optimizer.step()  # momentum buffers: the optimizer's state holds tensors too
    state = module.state_dict()
    want = {k: v.numpy().copy() for k, v in state.items()}
    parameters = dict(module.named_parameters())  # nn.Parameter objects, pickled as such
    wrapped = {"plain": state, "state_dict": {"state_dict": state, "epoch": 2},
               "model": {"model": state, "optimizer": optimizer.state_dict(), "epoch": 2, "lr": [0.1, 0.01]},
               "parameters": parameters}
    for name, obj in wrapped.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path, **FORMATS[kind])
        got = pth.read_state_dict(path)
        assert_same(got, {k: v for k, v in want.items() if name != "parameters" or k in parameters})


def test_a_zip_without_checksums_is_read(tmp_path):
    torch = pytest.importorskip("torch")
    tensors = {"w": torch.arange(10.0), "b": torch.ones(3, dtype=torch.int64)}
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(tensors, tmp_path / "fast.pth")
    finally:
        torch.serialization.set_crc32_options(True)
    assert zipfile.ZipFile(tmp_path / "fast.pth").getinfo("fast/data/0").CRC == 0
    assert_same(pth.read_state_dict(tmp_path / "fast.pth"), {k: v.numpy() for k, v in tensors.items()})


# ---- hand-built files ----

def _handmade_storages() -> tuple[dict[str, T], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Tensors on three storages (float32, int64, float16; one shared by a view), the storages' values and
    the arrays the tensors hold."""
    floats, longs, halves = (np.arange(6, dtype=np.float32) - 2.5, np.array([-(2**40), 5, 7], np.int64),
                             np.array([0.5, -1.0, 65504.0, 2.0], np.float16))
    entries = {"w": T("FloatStorage", "0", 6, 0, (2, 3), (3, 1)), "w.T": T("FloatStorage", "0", 6, 0, (3, 2), (1, 3)),
               "ids": T("LongStorage", "1", 3, 1, (2,), (1,)), "h": T("HalfStorage", "2", 4, 0, (2, 2), (1, 2))}
    want = {"w": floats.reshape(2, 3), "w.T": floats.reshape(2, 3).T.copy(), "ids": longs[1:],
            "h": halves.reshape(2, 2).T.copy()}
    return entries, {"0": floats, "1": longs, "2": halves}, want


@pytest.mark.parametrize("byteorder", ["little", "big", None])
def test_a_zip_in_either_byte_order_and_one_that_names_none(byteorder, tmp_path, torch_or_none):
    entries, storages, want = _handmade_storages()
    order = ">" if byteorder == "big" else "<"
    data = {k: v.astype(v.dtype.newbyteorder(order)).tobytes() for k, v in storages.items()}
    path = zip_file(tmp_path / "ordered.pth", tensor_pickle(entries), data, byteorder)
    got = pth.read_state_dict(path)
    assert_same(got, want)
    _torch_agrees(torch_or_none, path, got)


def test_a_legacy_file_with_a_storage_view_as_older_pytorch_wrote_it(tmp_path, torch_or_none):
    """A persistent id's sixth item: the tensor's storage is a window (offset 2, 3 elements) of the root's."""
    values = np.arange(8, dtype=np.float64) * 1.5
    entries = {"all": T("DoubleStorage", "10", 8, 0, (8,), (1,)),
               "window": T("DoubleStorage", "10", 8, 1, (2,), (1,), view=("11", 2, 3))}
    path = legacy_file(tmp_path / "views.pth", tensor_pickle(entries, legacy=True), {"10": (8, values.tobytes())})
    got = pth.read_state_dict(path)
    assert_same(got, {"all": values, "window": values[3:5]})
    _torch_agrees(torch_or_none, path, got)
    entries["window"] = T("DoubleStorage", "10", 8, 2, (2,), (1,), view=("11", 2, 3))  # past the window's end
    legacy_file(path, tensor_pickle(entries, legacy=True), {"10": (8, values.tobytes())})
    with pytest.raises(CheckpointError, match="damaged"):
        pth.read_state_dict(path)


class Evil:
    """Pickles as a call of ``os.system`` (this test never unpickles it with pickle's own loader)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _refused(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files the reader refuses, each with words its message must hold."""
    entries, storages, _ = _handmade_storages()
    marker = tmp_path / "ran"
    data = {k: v.tobytes() for k, v in storages.items()}
    files = {}
    for protocol in (2, 4):  # GLOBAL, STACK_GLOBAL
        evil = pickle.dumps({"w": Evil(marker)}, protocol=protocol)
        assert b"system" in evil
        files[f"os.system zip p{protocol}"] = (zip_file(tmp_path / f"evil{protocol}.pth", evil, {}),
                                               "Python objects other than tensors")
        files[f"os.system legacy p{protocol}"] = (legacy_file(tmp_path / f"evil-old{protocol}.pth", evil, {}),
                                                  "Python objects other than tensors")
    inside = dict(entries, exec=_global("builtins", "exec") + b"(" + _text(f"open('{marker}', 'w')") + b"tR")
    files["exec beside tensors"] = (zip_file(tmp_path / "exec.pth", tensor_pickle(inside), data),
                                    "builtins.exec")
    build = _global("torch", "FloatStorage") + b"}" + _text("stored") + _text("f8") + b"sb"  # BUILD on a class
    files["attributes set on a storage class"] = (zip_file(tmp_path / "build.pth", tensor_pickle(dict(entries, x=build)),
                                                           data), "damaged")
    complex_ = dict(entries, c=T("ComplexFloatStorage", "3", 2, 0, (2,), (1,)))
    files["complex tensor"] = (zip_file(tmp_path / "complex.pth", tensor_pickle(complex_), {**data, "3": bytes(16)}),
                               "a kind of tensor cnncli does not read")
    files["a list"] = (zip_file(tmp_path / "list.pth", pickle.dumps([1, 2], protocol=2), {}),
                       "no state dict of tensors")
    files["a missing storage"] = (zip_file(tmp_path / "missing.pth", tensor_pickle(entries), {"0": data["0"]}),
                                  "damaged")
    files["a short storage"] = (zip_file(tmp_path / "short.pth", tensor_pickle(entries), {**data, "1": bytes(1)}),
                                "damaged")
    too_far = dict(entries, far=T("FloatStorage", "0", 6, 4, (2, 2), (2, 1)))
    files["a view past its storage"] = (zip_file(tmp_path / "far.pth", tensor_pickle(too_far), data), "damaged")
    files["an empty data.pkl"] = (zip_file(tmp_path / "empty-pickle.pth", b"", {}), "damaged")
    with zipfile.ZipFile(tmp_path / "other.pth", "w") as z:
        z.writestr("w.npy", b"\x93NUMPY")
    files["a zip without data.pkl"] = (tmp_path / "other.pth", "not written by torch.save")
    fixture, legacy = FIXTURES["zip"].read_bytes(), FIXTURES["legacy"].read_bytes()
    for name, data_ in {"half a zip": fixture[:len(fixture) // 2], "a zip without its end": fixture[:-10],
                        "half a legacy file": legacy[:len(legacy) // 2],
                        "a legacy file without its last byte": legacy[:-1],
                        "a zip header then noise": b"PK\x03\x04" + np.random.default_rng(0).bytes(500),
                        "a pickle header then noise": b"\x80\x02" + np.random.default_rng(1).bytes(500),
                        "a plain pickle": pickle.dumps({"w": [1.0]}, protocol=2)}.items():
        (tmp_path / f"{len(files)}.pth").write_bytes(data_)
        files[name] = (tmp_path / f"{len(files)}.pth", "damaged (truncated?) or was not written by torch.save")
    altered = bytearray(fixture)
    entry = zipfile.ZipFile(FIXTURES["zip"]).getinfo("tensors-zip/data/0")
    name_length, extra_length = struct.unpack_from("<HH", fixture, entry.header_offset + 26)
    altered[entry.header_offset + 30 + name_length + extra_length] ^= 0xFF  # the storage's first byte
    (tmp_path / "altered.pth").write_bytes(bytes(altered))
    files["an altered storage"] = (tmp_path / "altered.pth", "checksum")
    return files


def test_every_refusal_is_a_checkpoint_error_that_says_why_and_runs_nothing(tmp_path):
    files = _refused(tmp_path)
    for name, (path, words) in files.items():
        with pytest.raises(CheckpointError) as raised:
            pth.read_state_dict(path)
        assert str(path) in str(raised.value) and words in str(raised.value), name
    assert not (tmp_path / "ran").exists()
    assert_same(pth.read_state_dict(FIXTURES["zip"]), expected())  # no refused file changed the reader


def test_refusals_through_the_cli_exit_2_without_a_traceback(tmp_path, capsys):
    files = _refused(tmp_path)
    files.update({"random bytes": (tmp_path / "noise.pth", "binary data"), "empty": (tmp_path / "empty.pth",
                                                                                      "an empty file")})
    (tmp_path / "noise.pth").write_bytes(b"\x07" + np.random.default_rng(2).bytes(300))
    (tmp_path / "empty.pth").write_bytes(b"")
    for name, (path, words) in files.items():
        code, out, err = run_main(["eval", "lenet5", "--weights", str(path)], capsys)
        assert code == 2 and words in err and "Traceback" not in out + err, (name, err)
        assert "weights_only" not in err and "trust" not in err
    assert not (tmp_path / "ran").exists()


def test_the_refused_globals_are_never_looked_up(tmp_path, monkeypatch):
    """A module the pickle names is not imported: refusing happens before any lookup."""
    name = "cnncli_test_module_that_must_not_be_imported"
    monkeypatch.delitem(sys.modules, name, raising=False)
    path = zip_file(tmp_path / "lookup.pth", b"\x80\x02" + _global(name, "anything") + b")R.", {})
    with pytest.raises(CheckpointError, match=f"{name}.anything"):
        pth.read_state_dict(path)
    assert name not in sys.modules


@pytest.mark.parametrize("kind", FIXTURES)
def test_altered_bytes_anywhere_give_the_arrays_or_a_checkpoint_error(kind, tmp_path):
    """Every flipped byte (200 places at random) either leaves a readable file or is named as damage."""
    data, rng = FIXTURES[kind].read_bytes(), np.random.default_rng(5)
    path = tmp_path / FIXTURES[kind].name
    for at in rng.integers(0, len(data), 200):
        altered = bytearray(data)
        altered[at] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(altered))
        try:
            pth.read_state_dict(path)
        except CheckpointError:
            pass


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit's: it still writes the archives users have
def test_a_whole_module_and_a_torchscript_archive_are_refused(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(2, 2))
    torch.save(module, tmp_path / "module.pth")
    torch.save(module, tmp_path / "module-old.pth", **LEGACY)
    torch.jit.save(torch.jit.script(module), tmp_path / "script.pt")
    for name, words in (("module.pth", "model.state_dict()"), ("module-old.pth", "model.state_dict()"),
                        ("script.pt", "TorchScript")):
        code, out, err = run_main(["eval", "lenet5", "--weights", str(tmp_path / name)], capsys)
        assert code == 2 and words in err and "Traceback" not in out + err, err



@pytest.mark.parametrize("shape", [(1, 1), (3, 700), (513, 257), (256, 512)])
def test_dense_weights_are_transposed_tile_by_tile_into_one_new_array(shape):
    """Import and export turn (out, in) into (in, out) and back: whole tiles, partial ones at the edges,
    a view that is not contiguous; the input is left as it was."""
    from cnncli.exchange.torch_module import transpose

    value = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for given in (value, value[:, ::2]):
        before = given.copy()
        got = transpose(given)
        assert got.flags.c_contiguous and got.dtype == given.dtype and not np.shares_memory(got, given)
        np.testing.assert_array_equal(got, given.T)
        np.testing.assert_array_equal(given, before)

if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_pth.py --write   (rewrites tests/data/tensors-*.pth with torch.save)")
    import torch

    for written in write_fixtures(torch).values():
        print(f"wrote {written} ({written.stat().st_size} bytes)")
    assert_same(pth.read_state_dict(FIXTURES["zip"]), expected())
    assert_same(pth.read_state_dict(FIXTURES["legacy"]), expected())


@pytest.mark.parametrize("name", ["weights.bin", "weights.pth.aside", "weights"])
def test_a_torch_zip_under_another_name_is_read_by_its_content(name, tmp_path, monkeypatch):
    """Other tools name torch.save's files .bin; a renamed copy is the same file. A plain zip of other files, or a
    legacy (pickle) file without .pt/.pth, is still refused as what it is."""
    from cnncli.records import checkpoint

    monkeypatch.setitem(sys.modules, "torch", None)
    copy = tmp_path / name
    copy.write_bytes(FIXTURES["zip"].read_bytes())
    assert_same(checkpoint.load(copy).state, expected())
    legacy = tmp_path / "legacy.bin"
    legacy.write_bytes(FIXTURES["legacy"].read_bytes())
    with pytest.raises(CheckpointError, match="pickle"):
        checkpoint.load(legacy)
    other = tmp_path / "other.bin"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    with pytest.raises(CheckpointError, match="zip archive of other files"):
        checkpoint.load(other)
