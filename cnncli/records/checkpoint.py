"""Checkpoints: one ``.npz`` file with weights, optimizer state and where training stood.

Keys are the network's ``state_dict`` (``<node>.weight``, ``<node>.running_mean``),
the optimizer's (``optim.steps``, ``optim.momentum.<param>``) and ``meta.*``
entries: ``meta.format``, ``meta.epoch``, ``meta.step`` and ``meta.json`` — one
JSON string holding the run configuration, the fingerprint of the trained network
(:data:`NETWORK`), the generator states, the metrics history and the position
inside an interrupted epoch. Every entry is a plain
array, so ``np.load(path)`` reads a checkpoint without pickle.

Files are written through :func:`cnncli.atomic.write_atomic`: whenever the
process dies, even by SIGKILL in the middle of a write, the file under the
final name is either the previous checkpoint or the new one, never a torn mix.
"""

from __future__ import annotations

import codecs
import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.atomic import write_atomic
from cnncli.dataset_names import FOLDER, YOLO
from cnncli.errors import CheckpointError, ModelMismatch
from cnncli.exchange import pth

FORMAT = 1
#: The ``meta`` entry holding the fingerprint of the trained network (:meth:`ModelSpec.fingerprint`). Should
#: what the fingerprint covers ever change, it must be stored under a new name: older checkpoints then fall
#: back to the check of the model's name instead of being refused.
NETWORK = "network"
#: The flag of every command that reads weights, to load a checkpoint of another model anyway.
SKIP_MODEL_CHECK = "--skip-model-check"

_HEAD = 512  # bytes read to tell what a file is
_ZIP = b"PK\x03\x04"
NPY = b"\x93NUMPY"
_PICKLES = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))  # what torch.save's older format starts with
#: File signatures, for the message that refuses a file as a checkpoint.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (_ZIP, "a zip archive"),
    (b"PK\x05\x06", "an empty zip archive"),
    (NPY, "a single NumPy array (.npy)"),
    *((p, "a Python pickle") for p in _PICKLES),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x1f\x8b", "a gzip file"),
    (b"\x89HDF", "an HDF5 file (Keras weights?)"),
    (b"%PDF", "a PDF document"),
)


class CheckpointWarning(UserWarning):
    """Something about a checkpoint a user should know that does not stop the command."""

    label = "warning"


class CheckpointNote(CheckpointWarning):
    """How a checkpoint was read, when that is not what its file says by itself (a state dict read as
    published weights): information, not a warning."""

    label = "note"


@dataclass
class Checkpoint:
    """A checkpoint read from disk: state arrays and the ``meta`` record."""

    path: Path
    state: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def epoch(self) -> int:
        """Epochs completed when it was written."""
        return int(self.meta.get("epoch", 0))

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))

    @property
    def config(self) -> dict[str, Any]:
        """The configuration of the run that wrote it; empty for a file of weights alone."""
        config = self.meta.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def classes(self) -> int | None:
        """The classes its network's head was sized for (:mod:`cnncli.model.head`), as its run recorded them;
        None for a checkpoint that records none (weights alone, or written before heads were sized)."""
        classes = self.config.get("classes")
        return classes if isinstance(classes, int) and not isinstance(classes, bool) and classes > 0 else None

    def data_for(self, model_spec, dataset: str | None = None,
                 data_dir: Path | None = None) -> tuple[str | None, Path | None]:
        """The dataset (and folder) this checkpoint is used with: ``dataset`` if given, else the one it was
        trained on (published weights: their class list, ``imagenet``), else the model file's; an image
        folder's place is the run's unless ``data_dir`` says."""
        config = self.config
        recorded = self.meta.get("source")
        trained_on = recorded.get("name") if isinstance(recorded, dict) else None  # published weights' classes
        name = dataset or config.get("dataset") or trained_on or model_spec.train_setting("dataset")
        if name in (FOLDER, YOLO) and data_dir is None and config.get("data_dir"):
            data_dir = Path(config["data_dir"])  # the folder the checkpoint was trained on
        return name, data_dir

    def check_model(self, model_spec, skip: bool = False) -> None:
        """Refuse (:class:`ModelMismatch`) weights trained for another network than ``model_spec``'s.

        The network's fingerprint decides, not the name: the same network under another name (a renamed
        copy of the model file) is used, with a warning; another network is refused even when its parameters
        have the same names and shapes (``plain20`` and ``resnet20``: only the wiring differs). A checkpoint
        written before fingerprints were recorded is judged by the model's name; a PyTorch state dict or a
        file of weights alone records no model and is not checked. ``skip``: the user says the weights are
        meant for this model (:data:`SKIP_MODEL_CHECK`). Whether they fit is checked when they are loaded.
        """
        trained, recorded, name = self.config.get("name"), self.meta.get(NETWORK), model_spec.name
        if not isinstance(trained, str):
            return
        if not isinstance(recorded, str):  # written before fingerprints were recorded: the name decides
            if trained == name:
                return
            why = ""
        elif recorded == model_spec.fingerprint():
            if trained != name:
                warnings.warn(f"{self.path} was trained for model '{trained}'; '{name}' is the same network (the "
                              "same layers, wired the same way), so its weights are used", CheckpointWarning,
                              stacklevel=2)
            return
        elif trained == name:
            if skip:
                return self._skipped(f"a model '{name}' with other layers or wiring than {model_spec.source} has")
            raise ModelMismatch(f"{self.path} was trained for a model '{name}' with other layers or wiring than "
                                f"{model_spec.source} has (was the file changed since?). Give the model file it was "
                                f"trained with, or add {SKIP_MODEL_CHECK} to load its weights anyway")
        else:
            why = " (the two networks differ in their layers or wiring)"
        if skip:
            return self._skipped(f"model '{trained}', not '{name}'")
        raise ModelMismatch(f"{self.path} was trained for model '{trained}', not '{name}'{why}. Give the model it "
                            f"was trained for, or add {SKIP_MODEL_CHECK} to load its weights into '{name}' anyway")

    def _skipped(self, what: str) -> None:
        """Say that weights of another network are used as the user asked: the results are theirs to judge."""
        warnings.warn(f"{self.path} was trained for {what}; its weights are used as {SKIP_MODEL_CHECK} asks",
                      CheckpointWarning, stacklevel=3)

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.state.items() if not k.startswith(("optim.", "meta."))}

    def weights_for(self, graph, only: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """The weights with cnncli's names and layouts for ``graph``: a PyTorch state dict's are mapped
        (:func:`cnncli.exchange.torch_module.to_cnncli`), a checkpoint's are as they are; ``only``: just
        these keys (cnncli's names)."""
        if self.meta.get("origin") == "torch":
            from cnncli.exchange.torch_module import to_cnncli

            return to_cnncli(self.weights(), graph, only)
        weights = self.weights()
        return weights if only is None else {k: v for k, v in weights.items() if k in only}

    def optimizer(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.state.items() if k.startswith("optim.")}


def save(path: str | os.PathLike[str], weights: dict[str, np.ndarray],
         optimizer: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write a checkpoint atomically; ``meta`` must be JSON-serialisable."""
    path = Path(path)
    entries: dict[str, np.ndarray] = {**weights, **optimizer}
    entries["meta.format"] = np.array(FORMAT, dtype=np.int64)
    entries["meta.epoch"] = np.array(int(meta.get("epoch", 0)), dtype=np.int64)
    entries["meta.step"] = np.array(int(meta.get("step", 0)), dtype=np.int64)
    entries["meta.json"] = np.array(json.dumps(meta, sort_keys=True))
    write_atomic(path, lambda out: np.savez(out, **entries))
    return path


def check_readable(path: str | os.PathLike[str]) -> None:
    """What reading ``path`` needs, checked before any work: a file there (a checkpoint or a PyTorch state
    dict, both read with the core packages). A bare name that is no file (``imagenet``) may name published
    weights: :func:`cnncli.records.trained.open_weights` decides, with the model at hand."""
    path = Path(path)
    if not path.exists() and bare_name(path):
        return
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        hint = " (give a file in it, e.g. last.npz)" if (path / "last.npz").exists() else ""
        raise CheckpointError(f"checkpoint {path} is a folder, not a .npz file{hint}")


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and check a checkpoint (or a PyTorch state dict, ``.pt``/``.pth``, or any name in torch.save's zip
    format: :mod:`cnncli.exchange.pth`).
    Anything wrong is a :class:`CheckpointError`."""
    path = Path(path)
    check_readable(path)
    head = _head(path)
    if (path.suffix.lower() in pth.SUFFIXES and head.startswith((_ZIP, *_PICKLES))
            or head.startswith(_ZIP) and pth.is_torch_zip(path)):
        # A PyTorch state dict (weights only, e.g. from `cnncli export --to torch` or a run elsewhere); by its
        # content also under another name (.bin), in torch.save's zip format.
        return Checkpoint(path, pth.read_state_dict(path), {"origin": "torch"})
    if head.startswith(NPY):
        raise CheckpointError(f"checkpoint {path} is a single array (.npy), not a .npz checkpoint")
    if not head.startswith(_ZIP):
        raise not_a_checkpoint(path, head)
    state = _read_npz(path)
    meta: dict[str, Any] = {}
    if "meta.json" in state:
        try:
            meta = json.loads(str(state["meta.json"]))
        except ValueError as e:
            raise CheckpointError(f"checkpoint {path}: its meta.json entry is not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"checkpoint {path}: its meta.json entry is not a JSON object")
    fmt = int(state["meta.format"]) if "meta.format" in state else FORMAT
    if fmt > FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {fmt}; this cnncli reads up to {FORMAT} "
                              "(it was written by a newer version)")
    return Checkpoint(path, state, meta)


def bare_name(path: Path) -> bool:
    """A name without a folder or a suffix, as published weights have (``imagenet``), not a file's path."""
    return not path.suffix and path.parent == Path(".")


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_HEAD)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a zip file that starts like a ``.npz``. NumPy's own messages are not passed on: for a file
    of pickled objects they advise loading it unsafely, which cnncli never does."""
    damaged = f"checkpoint {path} is corrupt (a truncated or altered .npz file)"
    try:
        with np.load(path, allow_pickle=False) as npz:
            others = [name for name in npz.zip.namelist() if not name.endswith(".npy")]
            if others:
                raise CheckpointError(f"{path} is not a cnncli checkpoint (.npz) or a PyTorch state dict "
                                      f"(.pt/.pth): it is a zip archive of other files ({others[0]}, ...)")
            state = {}
            for key in npz.files:
                try:
                    # Reading every array checks each entry's CRC: a torn or altered file fails here.
                    state[key] = np.array(npz[key])
                except ValueError:
                    raise CheckpointError(f"checkpoint {path}: its entry '{key}' is not an array of numbers (it "
                                          "holds Python objects, which a checkpoint never does, or is damaged)") from None
                except (zipfile.BadZipFile, EOFError, zlib.error) as e:
                    raise CheckpointError(f"{damaged}: its entry '{key}' cannot be read ({e})") from None
            return state
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError):
        raise CheckpointError(damaged) from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None


def not_a_checkpoint(path: Path, head: bytes) -> CheckpointError:
    """The error for a file that is neither kind of weights cnncli reads, saying what it is instead."""
    return CheckpointError(f"{path} is not a cnncli checkpoint (.npz) or a PyTorch state dict (.pt/.pth): "
                           f"it is {describe(head)}")


def describe(head: bytes) -> str:
    """What a file is, in words, from its first bytes: a known signature, else text or other data."""
    if not head:
        return "an empty file"
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            return what
    if b"\0" not in head:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a character may be cut off
            return "a text file"
        except UnicodeDecodeError:
            pass
    return "binary data of no format cnncli recognises"
