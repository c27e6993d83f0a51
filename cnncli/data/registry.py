"""The registry: every dataset cnncli can load, what its files are and how they are checked.

Sources of the numbers:

* MNIST's and Fashion-MNIST's SHA-256 are of the uncompressed IDX files (see
  each entry); their mean and std are computed over the training images.
* CIFAR's archives: the MD5 of each binary archive is the one its authors
  publish on https://www.cs.toronto.edu/~kriz/cifar.html (torchvision's
  ``torchvision/datasets/cifar.py`` lists only the pickled Python archives,
  which cnncli does not read); the SHA-256 and the size in bytes are those of
  TensorFlow Datasets' ``tensorflow_datasets/url_checksums/cifar10.txt`` and
  ``cifar100.txt``. The record counts (10,000 per CIFAR-10 file; 50,000 and
  10,000 in CIFAR-100's train and test) and the class names are the authors'.
  No checksum of the extracted ``.bin`` files is published, so they are
  trusted as far as the verified archive they came from (see :mod:`.cifar`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cnncli.errors import DataError

SPLITS: tuple[str, ...] = ("train", "test")


class DataWarning(UserWarning):
    """Something about the data a user should know that does not stop the run."""


@dataclass(frozen=True)
class Archive:
    """A dataset published as one ``.tar.gz`` of binary record files (CIFAR's layout).

    Each record is one byte per label, ``len(label_classes)`` of them (the
    classes each can take, in record order), then the image's pixels, one
    channel plane after the other, each row-major. ``records`` gives every
    data file (inside the archive's folder ``root``) and its number of records;
    ``label_files`` every class-name file and the names it lists, one a line.
    """

    filename: str
    md5: str
    sha256: str
    size: int
    root: str
    label_classes: tuple[int, ...]
    records: Mapping[str, int]
    label_files: Mapping[str, tuple[str, ...]]

    @property
    def members(self) -> tuple[str, ...]:
        """The files extracted from ``root/``: the data files, then the class-name files."""
        return (*self.records, *self.label_files)


@dataclass(frozen=True)
class DatasetInfo:
    """Everything cnncli knows about one dataset.

    ``sha256`` maps each file's name (without ``.gz``) to the SHA-256 of its
    uncompressed bytes, or to ``None`` when it is not known (the file is then
    only checked structurally, with a :class:`DataWarning`). ``image_shape`` is
    one image's (C, H, W); ``mean`` and ``std`` are per channel, of the training
    pixels scaled to [0, 1].

    ``directory`` names the dataset's folder in data directories and in the
    cache (the dataset's name unless it shares another one's files). A dataset
    with an ``archive`` is read from that (its ``splits`` list data files in
    it, and ``label_byte`` says which of a record's labels is the class);
    otherwise from IDX files, ``splits`` giving each split's (images, labels).
    """

    name: str
    title: str
    splits: Mapping[str, tuple[str, ...]]  # split -> (images file, labels file), or its archive's data files
    sha256: Mapping[str, str | None]
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int] = (1, 28, 28)
    system_dirs: tuple[str, ...] = ()
    directory: str = ""
    archive: Archive | None = None
    label_byte: int = 0
    #: Whether a left-right mirror image is still an image of its class (a mirrored digit is not).
    mirror_ok: bool = True

    def __post_init__(self) -> None:
        if not self.directory:
            object.__setattr__(self, "directory", self.name)

    @property
    def files(self) -> tuple[str, ...]:
        """All of the dataset's file names (IDX: without ``.gz``; an archive's: its data files)."""
        return tuple(f for names in self.splits.values() for f in names)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

#: CIFAR-100's classes as its ``fine_label_names.txt`` lists them (label order).
CIFAR100_FINE = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

#: CIFAR-100's 20 superclasses as its ``coarse_label_names.txt`` lists them.
CIFAR100_COARSE = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)

_CIFAR10_ARCHIVE = Archive(
    filename="cifar-10-binary.tar.gz",
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    size=170_052_171,
    root="cifar-10-batches-bin",
    label_classes=(10,),
    records={**{f"data_batch_{i}.bin": 10_000 for i in range(1, 6)}, "test_batch.bin": 10_000},
    label_files={"batches.meta.txt": CIFAR10_CLASSES},
)

_CIFAR100_ARCHIVE = Archive(
    filename="cifar-100-binary.tar.gz",
    md5="03b5dce01913d631647c71ecec9e9cb8",
    sha256="58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
    size=168_513_733,
    root="cifar-100-binary",
    label_classes=(20, 100),  # coarse, fine
    records={"train.bin": 50_000, "test.bin": 10_000},
    label_files={"coarse_label_names.txt": CIFAR100_COARSE, "fine_label_names.txt": CIFAR100_FINE},
)

_CIFAR100_SPLITS = {"train": ("train.bin",), "test": ("test.bin",)}
# Per-pixel statistics of the 50,000 training images, as published in weiaicunzai/pytorch-cifar100,
# conf/global_settings.py: mean 0.5070751592371323, 0.48654887331495095, 0.4409178433670343;
# std 0.2673342858792401, 0.2564384629170883, 0.27615047132568404.
_CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
_CIFAR100_STD = (0.2673, 0.2564, 0.2762)

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
        mirror_ok=False,
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
    "cifar10": DatasetInfo(
        name="cifar10",
        title="CIFAR-10",
        splits={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
        sha256={},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        classes=CIFAR10_CLASSES,
        # Per-pixel statistics of the 50,000 training images, as published (to ten
        # digits) in tensorflow/swift-models, Datasets/CIFAR10/CIFAR10.swift:
        # mean 0.4913996898, 0.4821584196, 0.4465309242; std 0.2470322324, 0.2434851280, 0.2615878417.
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        image_shape=(3, 32, 32),
        archive=_CIFAR10_ARCHIVE,
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        title="CIFAR-100",
        splits=_CIFAR100_SPLITS,
        sha256={},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        classes=CIFAR100_FINE,
        mean=_CIFAR100_MEAN,
        std=_CIFAR100_STD,
        image_shape=(3, 32, 32),
        archive=_CIFAR100_ARCHIVE,
        label_byte=1,  # a record's labels are (coarse, fine)
    ),
    "cifar100-coarse": DatasetInfo(
        name="cifar100-coarse",
        title="CIFAR-100 (20 superclasses)",
        splits=_CIFAR100_SPLITS,
        sha256={},
        mirrors=("https://www.cs.toronto.edu/~kriz/",),
        classes=CIFAR100_COARSE,
        mean=_CIFAR100_MEAN,
        std=_CIFAR100_STD,
        image_shape=(3, 32, 32),
        directory="cifar100",  # the same files as cifar100
        archive=_CIFAR100_ARCHIVE,
        label_byte=0,
    ),
}

_ALIASES = {
    "fashion": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "cifar-100-coarse": "cifar100-coarse",
}


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
