"""Where a run's images come from: a registered dataset, or a folder of the user's own pictures.

``train``, ``eval``, ``predict`` and ``backprop-trace --sample`` ask a
:class:`Source` for its title, class names, image shape, normalisation and
splits, whichever kind it is:

* a **registered dataset** (MNIST, Fashion-MNIST, CIFAR; :mod:`cnncli.data.registry`):
  its published statistics; files found or downloaded by :func:`cnncli.data.load`;
* an **image folder** (``--dataset image-folder --data-dir DIR``;
  :mod:`cnncli.data.folder`): class names from the subfolders, images decoded
  once at the model's input size (so nothing is adapted later), and the
  per-channel mean and standard deviation of its training images, computed
  when it is first opened. The test split is drawn with a fixed seed, not the
  run's, so runs with different seeds are scored on the same images.

* **boxes** (detection): ``mnist-detect`` (canvases of MNIST's digits drawn at the
  model's input size, :mod:`cnncli.data.mnist_detect`) and a **YOLO folder**
  (``--dataset yolo --data-dir DIR``, :mod:`cnncli.data.yolo`): labels are
  :class:`~cnncli.engine.boxes.Boxes`; images are letterboxed to the model's input,
  normalised with the training images' statistics; a YOLO folder's ``val`` split
  is the run's validation set (:meth:`Source.validation`) and its ``test`` split
  (else ``val``) the test set.

* the **classes of published weights** (``imagenet``; :mod:`cnncli.data.class_lists`):
  no images of their own, so not a dataset to load; an image folder laid out by
  their classes is read as them (:func:`open_source` with ``classes``): each
  class folder is the class it names, every image is a test image (the weights
  never saw the folder), and images are prepared as the weights expect
  (their mean, std and resize rule), not with the folder's own statistics.

A source's :meth:`~Source.to_config` record is saved in a run's config and
checkpoints; :meth:`Source.from_config` gives a checkpoint's classes and
statistics back without the data (what ``predict`` needs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli import data, extras
from cnncli.data import DownloadEvent, class_lists, folder, mnist_detect, yolo
from cnncli.dataset_names import DETECTION, FOLDER, YOLO
from cnncli.errors import CheckpointError, UsageError

__all__ = ["FOLDER", "Source", "open_source"]

#: The seed of an image folder's test split (see the module docstring).
FOLDER_SPLIT_SEED = 0


@dataclass
class Source:
    """A dataset as a run sees it; ``root`` is an image folder's, None for a registered dataset.

    ``resize``: an image file's shorter side is resized to this before the centre crop to ``image_shape``
    (published weights' rule, :func:`cnncli.data.folder.decode_image`); None: resized to cover it.
    ``folder_labels``: an image folder read as a class list's classes, each class folder's label.
    """

    name: str
    title: str
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    root: Path | None = None
    notes: tuple[str, ...] = ()
    resize: int | None = None
    folder_labels: tuple[int, ...] | None = None
    _splits: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def normalise(self, images: np.ndarray, dtype) -> np.ndarray:
        """uint8 (N, C, H, W) → float (N, C, H, W) with this source's per-channel statistics."""
        return data.scale(images, dtype, self.mean, self.std)

    def load(self, split: str, data_dir: Path | None = None, progress=None) -> tuple[np.ndarray, np.ndarray]:
        """Images uint8 (N, C, H, W) (a read-only memory map for a folder) and labels int64 (N,)."""
        if split in self._splits:
            return self._splits[split]
        if self.name == YOLO:
            dataset = yolo.scan(self.root)
            which = split if split != "test" or "test" in dataset.splits else "val"
            self._splits[split] = yolo.load(dataset, which, self.image_shape, progress=_decoding(progress, which,
                                                                                                   self.root))
            return self._splits[split]
        if self.name in DETECTION:
            base, digits = mnist_detect.DATASETS[self.name]
            return mnist_detect.load(split, data_dir, size=self.image_shape[1], base=base, progress=progress,
                                     digits=digits)
        if self.root is None:
            return data.load(self.name, split, data_dir, progress=progress)
        which = split if self.folder_labels is None else folder.ALL  # no image of it was trained on
        images, labels = folder.load(_scan(self.root, self.folder_labels is not None), which, self.image_shape, FOLDER_SPLIT_SEED,
                                     progress=_decoding(progress, split, self.root), resize=self.resize)
        if self.folder_labels is not None:
            labels = np.asarray(self.folder_labels, dtype=np.int64)[labels]
        self._splits[split] = (images, labels)
        return images, labels

    def validation(self) -> str | None:
        """The split that is this source's own validation set (a YOLO folder's ``val``), or None: the run carves
        one out of ``train``."""
        if self.name == YOLO and self.root is not None and "val" in yolo.scan(self.root).splits:
            return "val"
        return None

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "classes": list(self.classes),
                "image_shape": list(self.image_shape), "mean": list(self.mean), "std": list(self.std),
                "root": None if self.root is None else str(self.root), "resize": self.resize}

    @classmethod
    def from_config(cls, record: dict[str, Any]) -> Source:
        """A source as a checkpoint recorded it (its data need not be there)."""
        try:
            return cls(str(record["name"]), str(record["title"]), tuple(str(c) for c in record["classes"]),
                       tuple(int(d) for d in record["image_shape"]),  # type: ignore[arg-type]
                       tuple(float(m) for m in record["mean"]), tuple(float(s) for s in record["std"]),
                       None if record.get("root") is None else Path(record["root"]),
                       resize=None if record.get("resize") is None else int(record["resize"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"the checkpoint's record of its dataset is incomplete ({e})") from None


def _decoding(progress, split: str, root: Path):
    """A folder decode's ``(done, total)`` reports as DownloadEvents in files for ``progress`` (None: none)."""
    if progress is None:
        return None

    def report(done: int, total: int) -> None:
        status = "done" if done >= total > 0 else "start" if done == 0 else "progress"
        what = "images" if split == folder.ALL else f"{split} images"
        progress(DownloadEvent(status, what, str(root), done, total, unit="files"))

    return report


def check_readable(name: str) -> None:
    """What opening the dataset ``name`` will need, checked before any work: an image folder or a YOLO folder is
    decoded with Pillow (the images extra)."""
    if name in (FOLDER, YOLO):
        extras.require("images", "reading image folders" if name == FOLDER else "reading YOLO folders")


def open_source(name: str, data_dir: Path | None = None, input_shape: tuple[int, ...] | None = None,
                progress=None, classes: Source | None = None, prepared_as: Source | None = None,
                statistics_only: bool = False) -> Source:
    """The source ``name`` names; an image folder needs ``data_dir`` and the model's ``input_shape``.

    Opening an image folder decodes its training split (once: it is cached) to
    compute its statistics; ``progress`` receives DownloadEvents meanwhile.
    ``classes``: what the weights were trained on (a checkpoint's record); when
    that is a class list, an image folder is read as its classes (module docstring).
    ``prepared_as``: published weights a run fine-tunes; an image folder keeps its own classes but its
    images are prepared as those weights expect (their size, resize rule, mean and standard deviation),
    since the features the weights learnt are of images so prepared.
    ``statistics_only``: the caller needs the folder's classes and statistics, none of its images (``predict``
    of image files). The statistics are its training split's, as a run's are; a folder that has none (a class
    of one image: no test image can be split off) has them of all its images instead of being refused, since
    no test split is asked for.
    """
    check_readable(name)
    if class_lists.is_class_list(name):
        title = class_lists.get(name).title
        raise UsageError(f"{title} is not a dataset cnncli loads (it has only the class names): use the {title} "
                         "weights on your own images (predict's image files, features --image FILE) or on a folder "
                         f"of them (--dataset {FOLDER} --data-dir DIR, DIR holding one folder per {title} class, "
                         "named by its WordNet id, n02099601, or name, golden retriever)")
    if name in DETECTION:
        return _canvases(name, data_dir, input_shape, progress)
    if name == YOLO:
        return _yolo_folder(data_dir, input_shape, progress)
    if name != FOLDER:
        info = data.get(name)
        return Source(info.name, info.title, tuple(info.classes), tuple(info.image_shape),  # type: ignore[arg-type]
                      tuple(info.mean), tuple(info.std))
    if data_dir is None:
        raise UsageError(f"--dataset {FOLDER} needs --data-dir DIR: a folder with one subfolder of images per class "
                         "(or train/ and test/ folders holding them)")
    shape = _image_input(input_shape, "an image folder")
    listed = classes is not None and class_lists.is_class_list(classes.name)
    dataset = _scan(Path(data_dir), listed)
    if listed:
        return _as_classes(dataset, classes)  # type: ignore[arg-type]
    resize = None
    if prepared_as is not None:
        shape, resize = tuple(prepared_as.image_shape), prepared_as.resize
    split = folder.ALL if statistics_only and not dataset.splittable() else "train"
    images, labels = folder.load(dataset, split, shape, FOLDER_SPLIT_SEED,
                                 progress=_decoding(progress, split, Path(data_dir)), resize=resize)
    if prepared_as is None:
        mean, std = folder.pixel_stats(images)
        prepared = ()
    else:
        mean, std = prepared_as.mean, prepared_as.std
        prepared = (f"normalised with the {prepared_as.title} weights' statistics, as they were trained",)
    if split == folder.ALL:
        rule = (f"statistics of all its {len(labels)} images (a class of one image leaves no test split; "
                "none is needed here)")
    else:
        rule = dataset.split_rule(FOLDER_SPLIT_SEED)
    source = Source(FOLDER, dataset.title, tuple(dataset.classes), shape,  # type: ignore[arg-type]
                    tuple(mean), tuple(std), Path(data_dir).resolve(),
                    (rule, folder.describe(shape, resize), *prepared, *dataset.notes), resize)
    if split == "train":
        source._splits["train"] = (images, labels)
    return source


def _image_input(input_shape: tuple[int, ...] | None, what: str, square: bool = False) -> tuple[int, int, int]:
    """The model's input, which must be a grey or colour image (a square one when ``square``) for ``what``."""
    shape = tuple(input_shape or ())
    if len(shape) != 3 or shape[0] not in (1, 3) or (square and shape[1] != shape[2]):
        kind = "a square grey or colour image (1×S×S or 3×S×S)" if square else \
            "a grey or colour image (1×H×W or 3×H×W)"
        raise UsageError(f"{what} trains models whose input is {kind}, not {'×'.join(map(str, shape)) or 'nothing'}")
    return shape  # type: ignore[return-value]


def _canvases(name: str, data_dir: Path | None, input_shape: tuple[int, ...] | None, progress) -> Source:
    """``mnist-detect`` (or Fashion-MNIST's) at the model's input size; its statistics are its training canvases'."""
    shape = _image_input(input_shape, f"{name} (square canvases)", square=True)
    size = shape[1]
    base, digits = mnist_detect.DATASETS[name]
    images, boxes = mnist_detect.load("train", data_dir, size=size, base=base, progress=progress, digits=digits)
    mean, std = folder.pixel_stats(images)
    things = "digits" if base == "mnist" else "items"
    source = Source(name, f"{data.get(base).title} {things} on {size}×{size} canvases", mnist_detect.classes(base),
                    (1, size, size), mean, std,
                    notes=(f"{_how_many(digits)} {data.get(base).title} {things[:-1] if digits == (1, 1) else things} "
                           "a canvas, drawn from the seed 0 (training canvases from its training images, test "
                           "canvases from its test images)",))
    source._splits["train"] = (images, boxes)
    return source


def _how_many(digits: tuple[int, int]) -> str:
    return str(digits[0]) if digits[0] == digits[1] else f"{digits[0]} to {digits[1]}"


def _yolo_folder(data_dir: Path | None, input_shape: tuple[int, ...] | None, progress) -> Source:
    """A YOLO folder letterboxed to the model's input; its statistics are its training images'."""
    if data_dir is None:
        raise UsageError(f"--dataset {YOLO} needs --data-dir DIR: a folder in the YOLO layout (data.yaml with names "
                         "and the train and val image folders; labels/ beside images/)")
    shape = _image_input(input_shape, "a YOLO folder")
    root = Path(data_dir)
    dataset = yolo.scan(root)
    yolo.check_labels(dataset)
    images, boxes = yolo.load(dataset, "train", shape, progress=_decoding(progress, "train", root))
    mean, std = folder.pixel_stats(images)
    test = "test" if "test" in dataset.splits else "val" if "val" in dataset.splits else None
    split_notes = ["validation: its val split" if "val" in dataset.splits else
                   "validation: carved out of its train split (it has no val split)",
                   f"test: its {test} split" if test else "it has no val or test split to score on"]
    source = Source(YOLO, dataset.title, dataset.names, shape, tuple(mean), tuple(std),  # type: ignore[arg-type]
                    root.resolve(), (dataset.summary(), yolo.describe(shape), *split_notes, *dataset.notes))
    source._splits["train"] = (images, boxes)
    return source


def _scan(root: Path, listed: bool) -> folder.FolderDataset:
    """The folder's classes and files. One class folder is refused for a folder of its own classes (a classifier
    is trained on at least two), not for one read as a class list's (``listed``): scoring or predicting a
    folder of golden retrievers with ImageNet's weights is an ordinary use."""
    return folder.scan(root, min_classes=1 if listed else 2)


def _as_classes(dataset: folder.FolderDataset, trained: Source) -> Source:
    """An image folder read as the class list ``trained`` names, prepared as ``trained`` says."""
    listed = class_lists.get(trained.name)
    labels = class_lists.match_folders(dataset.classes, listed)
    title = f"{dataset.title} ({trained.title} classes)"
    notes = (f"its {len(dataset.classes)} class folders are {trained.title} classes: "
             + ", ".join(f"{name} = {label}" for name, label in zip(dataset.classes[:5], labels[:5]))
             + (", ..." if len(labels) > 5 else ""),
             f"every image is a test image (the {trained.title} weights never saw the folder), "
             f"normalised with the weights' statistics",
             folder.describe(trained.image_shape, trained.resize), *dataset.notes)
    return Source(FOLDER, title, trained.classes, trained.image_shape, trained.mean, trained.std,
                  dataset.root, notes, trained.resize, tuple(labels))
