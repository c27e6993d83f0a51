"""The registry: every dataset cnncli can load, what its files are and how they are checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cnncli.errors import DataError

SPLITS: tuple[str, ...] = ("train", "test")


class DataWarning(UserWarning):
    """Something about the data a user should know that does not stop the run."""


@dataclass(frozen=True)
class DatasetInfo:
    """Everything cnncli knows about one dataset.

    ``sha256`` maps each file's name (without ``.gz``) to the SHA-256 of its
    uncompressed bytes, or to ``None`` when it is not known (the file is then
    only checked structurally, with a :class:`DataWarning`). ``image_shape`` is
    one image's (C, H, W); ``mean`` and ``std`` are per channel, of the training
    pixels scaled to [0, 1].
    """

    name: str
    title: str
    splits: Mapping[str, tuple[str, str]]  # split -> (images file, labels file)
    sha256: Mapping[str, str | None]
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int] = (1, 28, 28)
    system_dirs: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        """All of the dataset's file names, without ``.gz``."""
        return tuple(f for pair in self.splits.values() for f in pair)


_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

#: The datasets cnncli can load, by name.
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        title="MNIST",
        splits=_IDX_SPLITS,
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        classes=tuple(str(d) for d in range(10)),
        mean=(0.1307,),  # 0.13066047627...
        std=(0.3081,),  # 0.30810780385...
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        title="Fashion-MNIST",
        splits=_IDX_SPLITS,
        # Computed from Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1);
        # their MD5s equal the MD5s of the uncompressed files published upstream.
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=(0.2860,),  # 0.28604059698...
        std=(0.3530,),  # 0.35302424451...
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}

_ALIASES = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist"}


def get(name: str) -> DatasetInfo:
    """The registry record of dataset ``name`` (case and ``_``/``-`` insensitive).

    Raises :class:`DataError` listing the valid names when there is no such dataset.
    """
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    try:
        return DATASETS[key]
    except KeyError:
        valid = ", ".join(sorted(DATASETS))
        raise DataError(f"Unknown dataset {name!r}. Valid datasets: {valid}.") from None


def class_names(name: str) -> list[str]:
    """The names of dataset ``name``'s classes, indexed by label."""
    return list(get(name).classes)


def check_split(info: DatasetInfo, split: str) -> str:
    """``split`` normalised, or a DataError listing the dataset's splits."""
    key = str(split).strip().lower()
    if key not in info.splits:
        valid = ", ".join(info.splits)
        raise DataError(
            f"Unknown split {split!r} of {info.title}. Valid splits: {valid} "
            "(a validation set is carved out of 'train' with a validation fraction)."
        )
    return key
