"""Checkpoints: one ``.npz`` file with weights, optimizer state and where training stood.

Keys are the network's ``state_dict`` (``<node>.weight``, ``<node>.running_mean``),
the optimizer's (``optim.steps``, ``optim.momentum.<param>``) and ``meta.*``
entries: ``meta.format``, ``meta.epoch``, ``meta.step`` and ``meta.json`` — one
JSON string holding the run configuration, the generator states, the metrics
history and the position inside an interrupted epoch. Every entry is a plain
array, so ``np.load(path)`` reads a checkpoint without pickle.

Files are written through :func:`cnncli.atomic.write_atomic`: whenever the
process dies, even by SIGKILL in the middle of a write, the file under the
final name is either the previous checkpoint or the new one, never a torn mix.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli import extras
from cnncli.atomic import write_atomic
from cnncli.dataset_names import FOLDER
from cnncli.errors import CheckpointError

FORMAT = 1


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

    def data_for(self, model_spec, dataset: str | None = None,
                 data_dir: Path | None = None) -> tuple[str | None, Path | None]:
        """The dataset (and folder) this checkpoint is used with: ``dataset`` if given, else the one it was
        trained on, else the model file's; an image folder's place is the run's unless ``data_dir`` says."""
        config = self.config
        name = dataset or config.get("dataset") or model_spec.train_setting("dataset")
        if name == FOLDER and data_dir is None and config.get("data_dir"):
            data_dir = Path(config["data_dir"])  # the folder the checkpoint was trained on
        return name, data_dir

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.state.items() if not k.startswith(("optim.", "meta."))}

    def weights_for(self, graph) -> dict[str, np.ndarray]:
        """The weights with cnncli's names and layouts for ``graph``: a PyTorch state dict's are mapped
        (:func:`cnncli.exchange.torch_module.to_cnncli`), a checkpoint's are as they are."""
        if self.meta.get("origin") == "torch":
            from cnncli.exchange.torch_module import to_cnncli

            return to_cnncli(self.weights(), graph)
        return self.weights()

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
    """What reading ``path`` will need, checked before any work: a PyTorch state dict (``.pt``, ``.pth``)
    needs the torch extra."""
    from cnncli.exchange import torch_module

    if Path(path).suffix.lower() in torch_module.SUFFIXES:
        extras.require("torch", torch_module.reading(Path(path)))


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and check a checkpoint (or a PyTorch state dict, ``.pt``/``.pth``, when torch is installed).
    Anything wrong is a :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        hint = " (give a file in it, e.g. last.npz)" if (path / "last.npz").exists() else ""
        raise CheckpointError(f"checkpoint {path} is a folder, not a .npz file{hint}")
    from cnncli.exchange import torch_module

    if path.suffix.lower() in torch_module.SUFFIXES:
        # A PyTorch state dict (weights only, e.g. from `cnncli export --to torch` or a run elsewhere).
        return Checkpoint(path, torch_module.read_state_dict(path), {"origin": "torch"})
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise CheckpointError(f"checkpoint {path} is a single array (.npy), not a .npz checkpoint")
        with loaded as npz:
            # Reading every array checks each entry's CRC: a torn or altered file fails here.
            state = {k: np.array(npz[k]) for k in npz.files}
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a .npz file ({e})") from None
    except (ValueError, EOFError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a .npz file ({e})") from None
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
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
