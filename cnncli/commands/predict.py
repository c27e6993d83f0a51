"""``cnncli predict``: a trained checkpoint's top classes for image files.

Each image (PNG or JPEG, read with Pillow, the ``images`` extra) is made to
look like the images the checkpoint was trained on, decoded as image folders
are (:func:`cnncli.data.folder.decode_image`: turned upright, grey or RGB as
the dataset's images are, scaled so that it covers the dataset's image size
and centre-cropped to it; for published weights, torchvision's rule: the
shorter side resized to 256, the centre 224 × 224 cut out), optionally inverted (MNIST's
digits are white on black; a scanned digit is usually black on white). From
there it goes the way the training's images went (:mod:`cnncli.records.inputs`:
adaptation to the model's input, the dataset's normalisation), so a checkpoint
from ``train`` predicts without further flags. The dataset is the one the
checkpoint was trained on (its run configuration), else the model file's.

A detector (:mod:`cnncli.commands.tasks`) finds boxes instead: each image is
letterboxed to the model's input as YOLO folders are (:mod:`cnncli.data.yolo`:
scaled to fit, aspect kept, centred on grey), its boxes scoring at least
``--conf`` kept after non-maximum suppression at ``--iou``, and given back in the
image file's own pixels (:class:`DetectResult`); ``--out DIR`` writes each image
with its boxes drawn (:func:`draw_boxes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli import atomic, extras
from cnncli.commands import tasks
from cnncli.data import folder, yolo
from cnncli.data.source import Source
from cnncli.engine import heads, losses
from cnncli.engine.boxes import Boxes
from cnncli.errors import UsageError
from cnncli.model.head import HeadChange
from cnncli.records import inputs, trained
from cnncli.words import are, count

__all__ = ["Guess", "ImagePrediction", "InputWarning", "OneImage", "PredictResult", "Skipped", "UnreadableImage",
           "IMAGE_SUFFIXES", "POLARITY_FAR", "POLARITY_NEAR", "check_complete", "one_image", "polarity_warning", "predict",
           "read_image"]

#: The files a folder argument contributes (case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: An image's mean brightness this many training pixel standard deviations from the training mean is far off
#: (MNIST's 70,000 digits lie within 0.9 of it; inverted, beyond 1.5).
POLARITY_FAR = 1.5
#: ... and inverted it must come within this many: inversion, not just lighting, explains the difference.
POLARITY_NEAR = 1.0
#: Skipped inputs named in the closing error before "and N more" (the table and the JSON list them all).
_NAMED = 5


@dataclass(frozen=True)
class Guess:
    label: int
    name: str
    probability: float


@dataclass(frozen=True)
class InputWarning:
    """Something about an image that makes its prediction doubtful, and what to do about it."""

    kind: str                  # a stable name for scripts: "inverted"
    message: str               # one sentence for the user, naming the fix


@dataclass(frozen=True)
class Skipped:
    """An argument that contributed no image: a file that cannot be read, or a folder without images."""

    path: Path
    reason: str                # "does not exist", "not a PNG or JPEG image Pillow can read: ...", ...

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


class UnreadableImage(UsageError):
    """An image file that does not exist or cannot be decoded."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read {path}: {reason}")
        self.skipped = Skipped(Path(path), reason)


@dataclass(frozen=True)
class ImagePrediction:
    """One image: what the network saw (uint8 (C, H, W), the dataset's size) and its top classes."""

    path: Path
    pixels: np.ndarray
    guesses: list[Guess]
    warnings: tuple[InputWarning, ...] = ()


@dataclass(frozen=True)
class PredictResult:
    model: str
    checkpoint: Path
    dataset: str
    dataset_title: str
    input: str                 # the adaptation, in words
    top_k: int
    predictions: list[ImagePrediction]
    invert: bool = False       # --invert was given
    skipped: tuple[Skipped, ...] = ()
    head: tuple[HeadChange, ...] = ()  # heads sized as the weights file holds them (it records no classes)


@dataclass(frozen=True)
class Found:
    """One object found: its class, score (objectness × class probability) and box (x0, y0, x1, y1) in the image
    file's pixels."""

    name: str
    cls: int
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageDetections:
    """One image: what the network saw (uint8 (C, H, W), letterboxed), where the image lies in it, what it found
    (best first) and the same boxes in the network's input pixels (for drawing what it saw)."""

    path: Path
    pixels: np.ndarray
    letterbox: yolo.Letterbox
    found: list[Found]
    input_boxes: np.ndarray          # (m, 4) xyxy in the input's pixels
    warnings: tuple[InputWarning, ...] = ()


@dataclass(frozen=True)
class DetectResult:
    model: str
    checkpoint: Path
    dataset: str
    dataset_title: str
    input: str                       # the letterbox, in words
    conf: float
    iou: float
    images: list[ImageDetections]
    invert: bool = False
    skipped: tuple[Skipped, ...] = ()
    written: tuple[Path, ...] = ()   # --out: the pictures written
    head: tuple[HeadChange, ...] = ()
    one_object: bool = False         # a localizer: one box an image, its class's probability its score


def polarity_warning(pixels: np.ndarray, source: Source, inverted: bool = False) -> InputWarning | None:
    """A warning if ``pixels`` (uint8 (C, H, W), as the network sees them) look inverted against ``source``.

    The rule: the image's mean brightness (all channels, in [0, 1]) is more than
    :data:`POLARITY_FAR` training standard deviations from the training images'
    mean, and ``1 - mean`` is within :data:`POLARITY_NEAR` of it. The statistics
    are the checkpoint's (per channel; pooled here, as polarity is a matter of
    brightness, not of colour). Both conditions together need a training mean
    off the middle by more than (FAR - NEAR) / 2 standard deviations: dark
    MNIST digits, Fashion-MNIST's dark backgrounds, a folder of dark-on-light
    scans; never CIFAR's photos (mean 0.47 ± 0.25), for which inversion is no
    plausible mistake and a dark or bright photo is no reason to doubt.
    """
    mean_c = np.asarray(source.mean, dtype=np.float64)
    std_c = np.asarray(source.std, dtype=np.float64)
    mu = float(mean_c.mean())
    sigma = float(np.sqrt(np.mean(std_c ** 2 + (mean_c - mu) ** 2)))  # all channels' pixels together
    m = float(np.mean(pixels, dtype=np.float64)) / 255.0
    if sigma <= 0 or abs(m - mu) <= POLARITY_FAR * sigma or abs(1.0 - m - mu) >= POLARITY_NEAR * sigma:
        return None
    this, those = ("light", "dark") if m > mu else ("dark", "light")
    fix = "try without --invert" if inverted else "try --invert"
    after = " after --invert" if inverted else ""
    return InputWarning("inverted", f"looks inverted{after}: {this} overall (mean brightness {m:.2f}) where the "
                                    f"training images ({source.title}) are {those} (mean {mu:.2f}); {fix}")


def input_words(plan: inputs.InputPlan, invert: bool, resize: int | None = None) -> str:
    """What was done to the image files before the network saw them, in words: ``--invert``, the resize and
    centre crop published weights expect (:func:`read_image`), then the input plan's adaptation."""
    words = ["inverted"] if invert else []
    if resize is not None:
        words.append(f"shorter side to {resize}, centre crop")
    adapted = plan.describe()
    if adapted != "as is" or not words:
        words.append(adapted)
    return ", ".join(words)


def read_image(path: Path, shape: tuple[int, int, int], invert: bool = False, resize: int | None = None) -> np.ndarray:
    """An image file as uint8 (C, H, W) of ``shape``, decoded as image folders are (:func:`folder.decode_image`;
    ``resize``: its shorter side resized to this before the crop, as published weights expect).

    Raises :class:`UnreadableImage` (a :class:`UsageError`) if it does not exist or cannot be decoded, and a
    :class:`UsageError` if Pillow is not installed.
    """
    pixels = _decoded(path, lambda p: folder.decode_image(p, shape, resize))
    return 255 - pixels if invert else pixels


def _decoded(path: Path, decode):
    """``decode(path)`` of an image file that exists; :class:`UnreadableImage` when it does not or Pillow cannot read
    it (a :class:`UsageError` first when Pillow is not installed)."""
    unreadable = folder.unreadable_errors()  # first: without Pillow, that is the message
    path = Path(path)
    if not path.exists():
        raise UnreadableImage(path, "does not exist")
    if not path.is_file():
        raise UnreadableImage(path, "is not a file")
    try:
        return decode(path)
    except unreadable as e:
        # Pillow's reason, without the file name it repeats ("cannot identify image file '...'")
        text = (str(e).replace(repr(str(path)), "").strip() or type(e).__name__).splitlines()[0][:200]
        raise UnreadableImage(path, f"not a PNG or JPEG image Pillow can read: {text}") from None


@dataclass(frozen=True)
class OneImage:
    """One image for a trained network (``features``, ``explain``): uint8 (C, H, W) as the dataset has it."""

    pixels: np.ndarray
    label: int | None                 # the true class of a test image; None for a file
    what: str                         # what the image is, in words
    warnings: tuple[InputWarning, ...]


def one_image(info: Source, *, sample: int | None, image: Path | None, invert: bool = False,
              data_dir: Path | None = None, progress=None) -> OneImage:
    """Test image ``sample`` of ``info``'s dataset, or the file ``image`` prepared as the weights expect
    (:func:`read_image`, with :func:`polarity_warning`)."""
    if (sample is None) == (image is None):
        raise UsageError("give one image: --sample I (a test image of the dataset) or --image FILE")
    if sample is not None:
        images, labels = info.load("test", data_dir, progress=progress)
        if not 0 <= sample < len(images):
            raise UsageError(f"--sample {sample} is out of range: the {info.title} test set has "
                             f"{count(len(images), 'image')} (0..{len(images) - 1})")
        if isinstance(labels, Boxes):  # a dataset of boxes: the image's objects, no one class
            _, classes = labels.image(sample)
            what = ", ".join(info.classes[c] for c in classes) or "none"
            return OneImage(np.asarray(images[sample]), None,
                            f"{info.title} test image {sample} ({count(len(classes), 'object')}: {what})", ())
        label = int(labels[sample])
        return OneImage(np.asarray(images[sample]), label,
                        f"{info.title} test image {sample} (class {info.classes[label]})", ())
    pixels = read_image(Path(image), info.image_shape, invert, info.resize)
    warning = polarity_warning(pixels, info, invert)
    return OneImage(pixels, None, f"{image}" + (" (inverted)" if invert else ""), (warning,) if warning else ())


def _files(paths: list[Path]) -> list[Path | Skipped]:
    """The image files the arguments name, in order (a folder's in name order); a folder without any: Skipped."""
    if not paths:
        raise UsageError("give at least one image file or folder")
    files: list[Path | Skipped] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            files += found or [Skipped(p, f"a folder without {', '.join(IMAGE_SUFFIXES)} files")]
        else:
            files.append(p)
    return files


def _listing(skipped: tuple[Skipped, ...] | list[Skipped]) -> str:
    more = len(skipped) - _NAMED
    return "; ".join(map(str, skipped[:_NAMED])) + (f"; and {more} more" if more > 0 else "")


def check_complete(result: PredictResult | DetectResult) -> None:
    """Raise :class:`UsageError` (exit status 2) naming what was left out, if anything was."""
    if result.skipped:
        n = len(result.skipped)
        done = len(result.images if isinstance(result, DetectResult) else result.predictions)
        raise UsageError(f"{count(n, 'input')} left out ({count(done, 'image')} predicted): "
                         f"{_listing(result.skipped)}")


def _check_thresholds(conf: float, iou: float) -> None:
    if not 0 <= conf <= 1:
        raise UsageError(f"--conf must be a score between 0 and 1, got {conf}")
    if not 0 <= iou <= 1:
        raise UsageError(f"--iou must be an overlap between 0 and 1, got {iou}")


def _out_files(out: Path | None, files: list[Path | Skipped]) -> dict[Path, Path]:
    """Where ``--out`` writes each image's picture (``OUT/<name>.png``), checked before any work: a folder that
    can be made, no two images to one file, and no file of the user's written over."""
    if out is None:
        return {}
    atomic.check_folder(out, "--out")
    targets: dict[Path, Path] = {}
    for f in files:
        if isinstance(f, Skipped):
            continue
        target = Path(out) / f"{Path(f).stem}.png"
        if target in targets.values():
            first = next(src for src, t in targets.items() if t == target)
            raise UsageError(f"--out {out}: two images would be drawn to {target.name} ({first} and {f}): give them "
                             "from separate runs")
        if target.exists():
            raise UsageError(f"--out {out}: {target} exists already and is not written over; choose another folder")
        targets[Path(f)] = target
    return targets


#: The colours of the classes' boxes (RGB), by class number.
PALETTE = ((0, 200, 255), (255, 80, 200), (80, 220, 80), (255, 200, 0), (90, 120, 255), (255, 90, 60),
           (0, 255, 200), (200, 120, 255))


def draw_boxes(path: Path, found: list[Found], target: Path) -> None:
    """The image file at ``path`` with each object's box, class and score drawn, written whole to ``target`` (PNG)."""
    from PIL import Image, ImageDraw, ImageOps

    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(image.size) / 300))
    for f in found:
        colour = PALETTE[f.cls % len(PALETTE)]
        draw.rectangle(f.box, outline=colour, width=width)
        label = f"{f.name} {f.score:.2f}"
        corner = (f.box[0], max(0.0, f.box[1] - 11))
        draw.rectangle(draw.textbbox(corner, label), fill=colour)
        draw.text(corner, label, fill=(0, 0, 0))
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_atomic(target, lambda handle: image.save(handle, format="PNG"))


def detect(loaded: trained.Trained, files: list[Path | Skipped], *, conf: float | None, iou: float | None,
           invert: bool, out: Path | None, checkpoint: Path) -> DetectResult:
    """The boxes a detector finds in each image file (module docstring). ``conf`` None: :data:`tasks.CONF`, or 0 for
    a localizer, whose one box an image is always shown; ``iou`` None: :data:`tasks.IOU`."""
    model_spec, graph, info, plan, net = loaded.spec, loaded.graph, loaded.source, loaded.plan, loaded.network
    task = tasks.Detection.of(graph)
    one_object = task.module.ONE_OBJECT
    conf = (0.0 if one_object else tasks.CONF) if conf is None else conf
    iou = tasks.IOU if iou is None else iou
    _check_thresholds(conf, iou)
    targets = _out_files(out, files)
    read: list[tuple[Path, np.ndarray, yolo.Letterbox]] = []
    skipped: list[Skipped] = []
    for f in files:
        if isinstance(f, Skipped):
            skipped.append(f)
            continue
        try:
            pixels, box = _decoded(f, lambda p: yolo.read_letterboxed(p, info.image_shape))
        except UnreadableImage as e:
            skipped.append(e.skipped)
            continue
        read.append((f, 255 - pixels if invert else pixels, box))
    if not read:
        raise UsageError(f"cannot read any image: {_listing(skipped)}")
    pixels = np.stack([p for _, p, _ in read])
    raw = net.predict(pixels, 32, graph.output, plan.preparer(net.dtype, info.normalise))
    boxes, scores = task.find(raw, conf, iou)
    results, written = [], []
    for i, (f, px, box) in enumerate(read):
        xyxy, classes = boxes.image(i)
        score = scores[boxes.offsets[i]:boxes.offsets[i + 1]]
        found = [Found(info.classes[c], int(c), float(s), tuple(float(v) for v in b))  # type: ignore[arg-type]
                 for c, s, b in zip(classes, score, box.to_image(xyxy))]
        warning = polarity_warning(px, info, invert)
        results.append(ImageDetections(f, px, box, found, np.asarray(xyxy), (warning,) if warning else ()))
        if f in targets:
            draw_boxes(f, found, targets[f])
            written.append(targets[f])
    return DetectResult(model_spec.name, Path(checkpoint), info.name, info.title, yolo.describe(info.image_shape),
                        conf, iou, results, invert, tuple(skipped), tuple(written), loaded.head, one_object)


def predict(model: str, checkpoint: Path, images: list[Path], *, top_k: int | None = None, invert: bool = False,
            dataset: str | None = None, data_dir: Path | None = None, skip_model_check: bool = False,
            progress=None, conf: float | None = None, iou: float | None = None,
            out: Path | None = None) -> PredictResult | DetectResult:
    """The ``top_k`` classes (default :func:`~cnncli.records.trained.default_top_k`) of each image (files, or folders
    of them) under ``checkpoint``'s weights, or published weights by name (``progress`` receiving their
    download's events); refused when trained for another network, unless ``skip_model_check``.

    The classes and the images' preparation are the ones the checkpoint recorded; ``dataset`` (and
    ``data_dir``) name the data they come from instead, for weights that record none (a PyTorch state dict).
    A detector's weights give a :class:`DetectResult` (``conf``, ``iou``, ``out``: :func:`detect`); ``out`` is a
    detector's alone."""
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {top_k}")
    extras.require("images", "reading image files (PNG, JPEG)")
    loaded = trained.load(model, checkpoint, dataset=dataset, data_dir=data_dir, data=trained.RECORDED,
                          skip_model_check=skip_model_check, progress=progress)
    model_spec, graph, info, plan, net = loaded.spec, loaded.graph, loaded.source, loaded.plan, loaded.network
    if heads.of(graph[graph.output]) is not None:
        if top_k is not None:
            raise UsageError(f"--top-k is for a classifier: {model_spec.name} is a detector (the boxes shown are "
                             "the ones scoring at least --conf)")
        return detect(loaded, _files(images), conf=conf, iou=iou, invert=invert, out=out, checkpoint=checkpoint)
    if out is not None:
        raise UsageError(f"--out draws a detector's boxes; {model_spec.name} is a classifier (its classes of each "
                         "image are shown in the terminal, or with --format json)")
    given = [name for name, value in (("--conf", conf), ("--iou", iou)) if value is not None]
    if given:
        raise UsageError(f"{are(given)} for a detector's boxes: "
                         f"{model_spec.name} is a classifier (--top-k says how many classes to show)")
    read: list[Path] = []
    decoded: list[np.ndarray] = []
    skipped: list[Skipped] = []
    for f in _files(images):
        if isinstance(f, Skipped):
            skipped.append(f)
            continue
        try:
            decoded.append(read_image(f, info.image_shape, invert, info.resize))
            read.append(f)
        except UnreadableImage as e:
            skipped.append(e.skipped)
    if not read:
        raise UsageError(f"cannot read any image: {_listing(skipped)}")
    files, pixels = read, np.stack(decoded)
    loss = losses.get(model_spec.loss)
    probs = loss.probabilities(net.predict(pixels, 256, loss.source(graph), plan.preparer(net.dtype, info.normalise)))
    k = min(trained.default_top_k(len(info.classes)) if top_k is None else top_k, len(info.classes))
    predictions = []
    for f, img, p in zip(files, pixels, probs):
        order = np.argsort(-p, kind="stable")[:k]
        warning = polarity_warning(img, info, invert)
        predictions.append(ImagePrediction(f, img, [Guess(int(i), info.classes[i], float(p[i])) for i in order],
                                           (warning,) if warning else ()))
    return PredictResult(model_spec.name, Path(checkpoint), info.name, info.title, input_words(plan, invert, info.resize), k,
                         predictions,
                         invert, tuple(skipped), loaded.head)
