"""PyTorch state dicts (``.pt``, ``.pth``) read without PyTorch: each tensor as a numpy array.

``torch.save`` pickles the object; in that pickle each tensor is a call
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])``
and each storage a persistent id ``('storage', torch.FloatStorage, key, location, numel)`` whose
bytes lie beside the pickle. Two layouts hold them:

- the zip format (PyTorch >= 1.6): one folder ``<prefix>/`` with ``data.pkl`` (the pickle),
  ``data/<key>`` (each storage's raw bytes, stored uncompressed; read when a tensor needs them,
  their checksums checked where written), ``byteorder`` (``little`` or ``big``; little when
  absent), ``version`` and others not needed here (``constants.pkl`` marks a TorchScript archive);
- the legacy format (``_use_new_zipfile_serialization=False``, and files of older PyTorch):
  pickles one after another, the magic number, the protocol version (1001), a dict of system
  information, the object (a legacy persistent id has a sixth item, a view of a storage:
  ``(view_key, offset, numel)`` or None), the list of storage keys; then for each key in that
  list its element count (8 bytes, little-endian) and its bytes, little-endian.

Reading is safe: the unpickler resolves only the globals a state dict names (:data:`_GLOBALS`),
each to a stand-in defined here; nothing is imported and no code of the file runs. Any other
global (a whole module's class, ``os.system``) stops the reading with a CheckpointError before it
is looked up, and BUILD (which sets attributes) reaches nothing but an OrderedDict. A damaged file
is a CheckpointError too, and never asks for more memory than the file's size. Tensors stay placeholders (:class:`_Tensor`) until the state dict is chosen (a
``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is opened, as training scripts write
them); then each of its tensors is copied out of its storage, honouring size, stride and offset,
into a C-contiguous array of its own (views of one storage give independent arrays). bfloat16
becomes float32 exactly: its 16 bits are the upper half of a float32's. OrderedDict's
``_metadata`` attribute (module versions) is dropped.

Shapes: a tensor of size ``(d0, ..., dn)`` gives an array of shape ``(d0, ..., dn)``; a 0-d
tensor an array of shape ``()``.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli.errors import CheckpointError, CnnError

SUFFIXES = (".pt", ".pth")
#: Keys whose dict is the state dict inside a file that holds more (epoch, optimizer...), in the order tried.
WRAPPERS = ("state_dict", "model")

_ZIP = b"PK\x03\x04"
_PICKLE = b"\x80"  # the PROTO opcode every torch.save pickle starts with (protocol 2 and later)
_MAGIC = 0x1950A86A20F9469CFC6C  # the legacy format's first pickle
_LEGACY_PROTOCOL = 1001
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # a zip entry's local header: signature ... name and extra lengths

#: Exceptions that a malformed file makes the unpickler, zipfile or numpy raise: the file is damaged.
_MALFORMED = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
              OverflowError, RecursionError, MemoryError, NotImplementedError, struct.error, zlib.error,
              zipfile.BadZipFile, zipfile.LargeZipFile)


class _Damaged(Exception):
    """Damage this module finds, with a reason worth naming (the message of :func:`_damaged`)."""


@dataclass(frozen=True)
class _Kind:
    """A storage class: how its bytes are stored (a numpy type without byte order) and the array's dtype."""

    name: str  # torch's storage class, e.g. FloatStorage
    stored: str
    dtype: str  # what the array holds: float32 for bfloat16, bool for BoolStorage's bytes

    @property
    def itemsize(self) -> int:
        return np.dtype(self.stored).itemsize

    def convert(self, raw: np.ndarray) -> np.ndarray:
        """A native-order copy of the stored values → the array (a new one only when the type changes)."""
        if self.name == "BFloat16Storage":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(self.dtype, copy=False)


#: torch's typed storage classes that cnncli reads; the dtype each tensor of them becomes.
KINDS: dict[str, _Kind] = {k.name: k for k in (
    _Kind("FloatStorage", "f4", "float32"),
    _Kind("DoubleStorage", "f8", "float64"),
    _Kind("HalfStorage", "f2", "float16"),
    _Kind("BFloat16Storage", "u2", "float32"),
    _Kind("LongStorage", "i8", "int64"),
    _Kind("IntStorage", "i4", "int32"),
    _Kind("ShortStorage", "i2", "int16"),
    _Kind("CharStorage", "i1", "int8"),
    _Kind("ByteStorage", "u1", "uint8"),
    _Kind("BoolStorage", "u1", "bool"),
)}


class _Storage:
    """A storage as the pickle names it: its kind, its key and element count; a legacy view is a window
    (``start``, ``numel``) into its ``root``."""

    def __init__(self, kind: _Kind, key: str, numel: int, root: _Storage | None = None, start: int = 0):
        self.kind, self.key, self.numel, self.start = kind, key, numel, start
        self.root = root or self


class _Tensor:
    """A tensor as the pickle describes it; :meth:`array` copies it out once the storages' bytes are known."""

    def __init__(self, storage, offset, size, stride, negative: bool = False):
        if not isinstance(storage, _Storage):
            raise _Damaged("a tensor without a storage")
        size, stride = tuple(size), tuple(stride)
        numbers = (offset, *size, *stride)
        if len(size) != len(stride) or not all(type(n) is int and n >= 0 for n in numbers):
            raise _Damaged("a tensor's size, stride or offset is malformed")
        self.storage, self.offset, self.size, self.stride, self.negative = storage, offset, size, stride, negative

    def array(self, buffer: np.ndarray) -> np.ndarray:
        """The tensor's values as a C-contiguous array; ``buffer``: its root storage's elements (stored type)."""
        kind, storage = self.storage.kind, self.storage
        if int(np.prod(self.size)) == 0:
            values = np.empty(self.size, buffer.dtype.newbyteorder("="))
        else:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= storage.numel:
                raise _Damaged("a tensor reaches past the end of its storage")
            start = storage.start + self.offset
            strides = tuple(s * buffer.itemsize for s in self.stride)
            view = np.lib.stride_tricks.as_strided(buffer[start:], self.size, strides, writeable=False)
            values = np.array(view, dtype=buffer.dtype.newbyteorder("="), order="C")  # the copy, native order
        values = kind.convert(values)
        return np.negative(values) if self.negative else values


# The stand-ins the pickle's globals resolve to. They check their arguments: what does not fit is damage.

class _OrderedDict(dict):
    """``collections.OrderedDict`` (dicts keep their order); the state BUILD gives it (``_metadata``) is dropped
    (:meth:`_Unpickler.load_build`)."""


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    metadata = metadata or {}
    if not isinstance(metadata, dict) or set(metadata) - {"neg", "conj"} or metadata.get("conj"):
        raise _Damaged("a tensor's metadata is malformed")  # conj is set on complex tensors only
    return _Tensor(storage, storage_offset, size, stride, negative=bool(metadata.get("neg")))


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """An ``nn.Parameter``: its tensor (``state``: the attributes a parameter was given, dropped)."""
    if not isinstance(data, _Tensor):
        raise _Damaged("a parameter without a tensor")
    return data


_GLOBALS: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    # Old PyTorch names the storage of a tensor saved from the GPU torch.cuda.FloatStorage.
    **{(module, name): kind for name, kind in KINDS.items() for module in ("torch", "torch.cuda")},
}


def _other_tensor(module: str, name: str) -> bool:
    """A global torch names for a tensor cnncli does not read: a storage of another type (complex, quantized,
    untyped), a rebuild function of another kind of tensor (sparse, quantized, uint16...)."""
    return (module in ("torch", "torch.cuda") and name.endswith("Storage")) or \
        (module == "torch._utils" and name.startswith("_rebuild_"))


class _Unpickler(pickle._Unpickler):
    """Resolves only :data:`_GLOBALS`; ``storages`` collects the storages by key as persistent ids name them
    (None: a pickle of the legacy format's header, which names no global and no storage).

    pickle's Python implementation, for two reasons: its opcodes can be replaced (BUILD, which sets an object's
    attributes, would otherwise reach this module's own objects), and its memo is a dict where the C one grows an
    array to the index a damaged LONG_BINPUT names (gigabytes). The pickles are small (the tensors' bytes lie
    beside them), so the slower implementation costs little.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: Path, storages: dict[str, _Storage] | None = None):
        super().__init__(file, encoding="utf-8")
        self.path, self.storages = path, storages

    def load_build(self):
        """BUILD: only an OrderedDict's state (a state dict's ``_metadata``), which is dropped."""
        self.stack.pop()
        if not self.stack or not isinstance(self.stack[-1], _OrderedDict):
            raise _Damaged("state given to an object that takes none")

    def load_bytearray8(self):
        raise _Damaged("a bytearray, which torch.save never writes")  # refused before its length is allocated

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def find_class(self, module, name):
        if self.storages is None:
            raise _Damaged("a global where torch.save writes none")
        found = _GLOBALS.get((module, name))
        if found is not None:
            return found
        if _other_tensor(module, name):
            readable = ", ".join(dict.fromkeys("bfloat16" if k.name == "BFloat16Storage" else k.dtype
                                               for k in KINDS.values()))
            raise CheckpointError(f"{self.path} holds a kind of tensor cnncli does not read ({module}.{name}); "
                                  f"it reads dense tensors of {readable}")
        raise CheckpointError(f"{self.path} holds Python objects other than tensors ({module}.{name}; a whole "
                              "module?), which cannot be loaded safely: save model.state_dict(), not the module")

    def persistent_load(self, pid):
        if self.storages is None or not isinstance(pid, tuple) or not pid:
            raise _Damaged("an unexpected persistent id")
        typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if typename == "module":  # the legacy format's reference to an nn.Module class
            raise CheckpointError(f"{self.path} holds a whole module, which cannot be loaded safely: save "
                                  "model.state_dict(), not the module")
        if typename != "storage" or len(pid) not in (5, 6):
            raise _Damaged("an unexpected persistent id")
        kind, key, _location, numel, *view = pid[1:]
        if not isinstance(kind, _Kind) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise _Damaged("a malformed storage id")
        storage = self.storages.setdefault(key, _Storage(kind, key, numel))
        if storage.kind is not kind or storage.numel != numel:
            raise _Damaged("one storage named with two types or sizes")
        if view and view[0] is not None:  # (view_key, offset, numel) in elements of the root storage
            _view_key, start, count = view[0]
            if type(start) is not int or type(count) is not int or start < 0 or count < 0 or start + count > numel:
                raise _Damaged("a storage view outside its storage")
            return _Storage(kind, key, count, root=storage, start=start)
        return storage


def _damaged(path: Path, why: str = "") -> CheckpointError:
    return CheckpointError(f"{path} cannot be read as a PyTorch state dict: it is damaged (truncated?) or was not "
                           f"written by torch.save{f' ({why})' if why else ''}")


def _native(kind: _Kind, order: str) -> np.dtype:
    return np.dtype(kind.stored).newbyteorder("<" if order == "little" else ">")


def _read(file, nbytes: int, what: str) -> bytes:
    """The next ``nbytes`` of ``file``; the file's size is checked first, so that a damaged length asks for no
    memory the file does not hold."""
    if file.tell() + nbytes > os.fstat(file.fileno()).st_size:
        raise _Damaged(f"{what} is cut short")
    data = file.read(nbytes)
    if len(data) != nbytes:
        raise _Damaged(f"{what} is cut short")
    return data


class _ZipFile:
    """The zip format: the pickle read at once, each storage's bytes when a tensor needs them."""

    def __init__(self, file, path: Path):
        self.file, self.path = file, path
        self.zip = zipfile.ZipFile(file)
        entries = self.zip.infolist()
        if not entries:
            raise _Damaged("an empty zip archive")
        self.prefix = entries[0].filename.split("/")[0]
        self.entries = {e.filename: e for e in entries}
        if f"{self.prefix}/constants.pkl" in self.entries:
            raise CheckpointError(f"{path} is a TorchScript archive (torch.jit.save), not a state dict: save "
                                  "model.state_dict() with torch.save")
        if f"{self.prefix}/data.pkl" not in self.entries:
            raise _Damaged("a zip archive without the data.pkl of torch.save")
        order = self._record("byteorder").decode("ascii") if f"{self.prefix}/byteorder" in self.entries else "little"
        if order not in ("little", "big"):
            raise _Damaged(f"byte order {order!r}")
        self.order = order
        self.storages: dict[str, _Storage] = {}
        self.object = _Unpickler(io.BytesIO(self._record("data.pkl")), path, self.storages).load()
        self.buffers: dict[str, np.ndarray] = {}

    def _record(self, name: str) -> bytes:
        """An entry's bytes, read from its place in the file (torch stores them uncompressed). The CRC is checked
        where one was written (torch.serialization.set_crc32_options(False) writes none)."""
        entry = self.entries.get(f"{self.prefix}/{name}")
        if entry is None:
            raise _Damaged(f"no entry {self.prefix}/{name}")
        if entry.compress_type != zipfile.ZIP_STORED:
            return self.zip.read(entry)
        self.file.seek(entry.header_offset)
        signature, name_length, extra_length = _LOCAL_HEADER.unpack(self.file.read(_LOCAL_HEADER.size))
        if signature != _ZIP:
            raise _Damaged(f"the entry {entry.filename} is not where the archive's directory says")
        self.file.seek(entry.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
        data = _read(self.file, entry.file_size, f"the entry {entry.filename}")
        if entry.CRC and zlib.crc32(data) != entry.CRC:
            raise _Damaged(f"the entry {entry.filename} was altered (its checksum differs)")
        return data

    def buffer(self, storage: _Storage) -> np.ndarray:
        if storage.key not in self.buffers:
            name, nbytes = f"data/{storage.key}", storage.numel * storage.kind.itemsize
            entry = self.entries.get(f"{self.prefix}/{name}")
            if entry is not None and entry.file_size != nbytes:
                raise _Damaged(f"the storage {name} holds {entry.file_size} bytes, not {nbytes}")
            data = self._record(name)
            self.buffers[storage.key] = np.frombuffer(data, _native(storage.kind, self.order))
        return self.buffers[storage.key]


class _LegacyFile:
    """The legacy format: the header, the pickle and the storage keys, then every storage's bytes."""

    def __init__(self, file, path: Path):
        whole = file.read()
        stream, data = io.BytesIO(whole), memoryview(whole)  # BytesIO shares a bytes object's memory
        if _Unpickler(stream, path).load() != _MAGIC:
            raise _Damaged("a pickle, not a file of torch.save")
        if _Unpickler(stream, path).load() != _LEGACY_PROTOCOL:
            raise _Damaged("an unknown version of torch.save's legacy format")
        _Unpickler(stream, path).load()  # system information: the data is little-endian whatever it says
        storages: dict[str, _Storage] = {}
        self.object = _Unpickler(stream, path, storages).load()
        keys = _Unpickler(stream, path).load()
        if not isinstance(keys, list):
            raise _Damaged("no list of storages")
        self.buffers: dict[str, np.ndarray] = {}
        at = stream.tell()
        for key in keys:
            storage = storages.get(key)
            if storage is None:
                raise _Damaged(f"the storage {key!r} is listed but never used")
            count, nbytes = int.from_bytes(data[at:at + 8], "little"), storage.numel * storage.kind.itemsize
            if count != storage.numel:
                raise _Damaged(f"the storage {key!r} has {count} elements, not {storage.numel}")
            if at + 8 + nbytes > len(data):
                raise _Damaged(f"the storage {key!r} is cut short")
            self.buffers[key] = np.frombuffer(data[at + 8:at + 8 + nbytes], _native(storage.kind, "little"))
            at += 8 + nbytes

    def buffer(self, storage: _Storage) -> np.ndarray:
        if storage.key not in self.buffers:
            raise _Damaged(f"the storage {storage.key!r} has no data")
        return self.buffers[storage.key]


def _state_dict(obj, path: Path) -> dict:
    """The dict of tensors in what the file holds: itself, or the dict under a :data:`WRAPPERS` key."""
    if isinstance(obj, dict):
        for key in WRAPPERS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, _Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; save model.state_dict(), not a whole "
                              "module (which cannot be loaded safely)")
    return obj


def is_torch_zip(path: str | Path) -> bool:
    """Whether ``path`` is a zip archive as ``torch.save`` writes it (one folder holding ``data.pkl``), whatever
    its name ends with (``.bin``, as other tools name these files, or a renamed copy)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.count("/") == 1 and name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError):
        return False


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict in a ``torch.save`` file (either format) as numpy arrays, with the keys as strings.

    Anything wrong is a CheckpointError: a damaged file, one not written by ``torch.save``, one that holds
    Python objects other than tensors (nothing of which is imported or run), or no dict of tensors.
    """
    path = Path(path)
    try:
        file = open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror or e}") from None
    with file:
        try:
            head = file.read(len(_ZIP))
            file.seek(0)
            if head.startswith(_ZIP):
                archive = _ZipFile(file, path)
            elif head.startswith(_PICKLE):
                archive = _LegacyFile(file, path)
            else:
                raise _Damaged("an empty file" if not head else "neither a zip archive nor a pickle")
            state = _state_dict(archive.object, path)
            return {str(key): tensor.array(archive.buffer(tensor.storage.root)) for key, tensor in state.items()}
        except CnnError:
            raise
        except _Damaged as e:
            raise _damaged(path, str(e)) from None
        except (*_MALFORMED, OSError):
            raise _damaged(path) from None
