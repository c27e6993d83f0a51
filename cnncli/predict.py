"""``cnncli predict``: a trained checkpoint's top classes for image files.

Each image (PNG or JPEG, read with Pillow, the ``images`` extra) is made to
look like the images the checkpoint was trained on, decoded as image folders
are (:func:`cnncli.data.folder.decode_image`: turned upright, grey or RGB as
the dataset's images are, scaled so that it covers the dataset's image size
and centre-cropped to it), optionally inverted (MNIST's
digits are white on black; a scanned digit is usually black on white). From
there it goes the way the training's images went (:mod:`cnncli.inputs`:
adaptation to the model's input, the dataset's normalisation), so a checkpoint
from ``train`` predicts without further flags. The dataset is the one the
checkpoint was trained on (its run configuration), else the model file's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli import checkpoint as ckpt_io
from cnncli import extras, inputs
from cnncli.data import folder
from cnncli.data.source import FOLDER, Source, open_source
from cnncli.engine import losses
from cnncli.errors import UsageError
from cnncli.evaluation import inference_network, probabilities
from cnncli.model import spec
from cnncli.model.graph import build

__all__ = ["Guess", "ImagePrediction", "PredictResult", "IMAGE_SUFFIXES", "predict", "read_image"]

#: The files a folder argument contributes (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Guess:
    label: int
    name: str
    probability: float


@dataclass(frozen=True)
class ImagePrediction:
    """One image: what the network saw (uint8 (C, H, W), the dataset's size) and its top classes."""

    path: Path
    pixels: np.ndarray
    guesses: list[Guess]


@dataclass(frozen=True)
class PredictResult:
    model: str
    checkpoint: Path
    dataset: str
    dataset_title: str
    input: str                 # the adaptation, in words
    top_k: int
    predictions: list[ImagePrediction]


def read_image(path: Path, shape: tuple[int, int, int], invert: bool = False) -> np.ndarray:
    """An image file as uint8 (C, H, W) of ``shape``, decoded as image folders are (:func:`folder.decode_image`)."""
    if not Path(path).is_file():
        raise UsageError(f"image {path} does not exist")
    try:
        pixels = folder.decode_image(path, shape)
    except folder.unreadable_errors() as e:
        raise UsageError(f"cannot read {path} as an image (PNG or JPEG): {e}") from None
    return 255 - pixels if invert else pixels


def _files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"the folder {p} holds no {', '.join(IMAGE_SUFFIXES)} files")
            files += found
        else:
            files.append(p)
    if not files:
        raise UsageError("give at least one image file or folder")
    return files


def predict(model: str, checkpoint: Path, images: list[Path], *, top_k: int = 3, invert: bool = False,
            dataset: str | None = None) -> PredictResult:
    """The ``top_k`` classes of each image (files, or folders of them) under ``checkpoint``'s weights."""
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    extras.require("images", "reading image files")
    ckpt_io.check_readable(checkpoint)
    model_spec = spec.load(model)
    saved = ckpt_io.load(checkpoint)
    graph = build(model_spec, aux=False)
    recorded = saved.meta.get("source")
    if dataset is None and isinstance(recorded, dict):
        info = Source.from_config(recorded)  # classes and statistics as trained, the data not needed
    else:
        name, _ = saved.data_for(model_spec, dataset)
        if name == FOLDER:
            raise UsageError(f"{checkpoint} does not record its image folder's classes and statistics: "
                             "predict needs a checkpoint written by this version of train")
        info = open_source(name)
    plan = inputs.plan(info.title, info.image_shape, graph.input_shape, model_spec.name)
    inputs.check_outputs(graph.output_shape, len(info.classes), info.title, model_spec.name)
    files = _files(images)
    pixels = np.stack([read_image(f, info.image_shape, invert) for f in files])
    net = inference_network(model_spec, graph, saved)
    loss = losses.get(model_spec.loss)
    probs = probabilities(net.predict(pixels, 256, loss.source(graph), plan.preparer(net.dtype, info.normalise)),
                          loss)
    k = min(top_k, len(info.classes))
    predictions = []
    for f, img, p in zip(files, pixels, probs):
        order = np.argsort(-p, kind="stable")[:k]
        predictions.append(ImagePrediction(f, img, [Guess(int(i), info.classes[i], float(p[i])) for i in order]))
    return PredictResult(model_spec.name, Path(checkpoint), info.name, info.title, plan.describe(), k, predictions)
