"""The command line: the only module that imports Typer.

Each command is thin: it turns flags into arguments, calls one function that
returns records, and hands them to :mod:`cnncli.render`. Modules are imported
inside the commands so that ``cnncli --help`` stays fast and never loads Numba.
The tool's own errors (:class:`~cnncli.errors.CnnError`) become a message and
exit status 2 here, at the edge; ``--debug`` shows their traceback too.
"""

from __future__ import annotations

import copy
import inspect
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from cnncli import __version__
from cnncli.dataset_names import CHOICES
from cnncli.errors import CnnError
from cnncli.model.spec import LOSS_ALIASES, LOSSES, OPTIMIZERS, SCHEDULES
from cnncli.words import either


def _placeholders(params: list) -> list:
    """``params`` as help shows them: a flag takes no value, so no placeholder follows it (Typer's type column
    would show ``<bool>``). An option that takes a value names it where it is declared (``metavar``: N, FILE,
    NAME), a word that help never cuts; one with choices lists them in its help, since Typer's own placeholder
    joins them with ``|`` into one word that 80 columns cut in the middle."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


def _flowing(text: str) -> str:
    """A docstring as help: each paragraph one line, which help wraps to the terminal's width (Rich help keeps
    the source's line breaks, which end lines short in the middle of a sentence)."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


class _Command(TyperCommand):
    """A command of the app (every ``app.command`` names this class): its help as :func:`_flowing` and
    :func:`_placeholders` say."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = _flowing(self.help)

    def get_params(self, ctx):
        return _placeholders(super().get_params(ctx))


class _Commands(TyperGroup):
    """The app's commands; an option a command does not have gets a hint besides Click's close names."""

    def get_params(self, ctx):
        return _placeholders(super().get_params(ctx))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            # Click's NoSuchOption (Typer may carry its own copy of Click, so matched by name).
            if type(e).__name__ == "NoSuchOption" and getattr(e, "ctx", None) is not None:
                _hint_unknown_option(e, self)
            raise


def _hint_unknown_option(error, group) -> None:
    """Reword ``error``: Click's close names as "did you mean" (without ``--help``: the usage line points
    there already), and what the option is elsewhere: an argument of the command given with a flag
    (``train --model lenet5``), or another command's option (``eval --epochs``)."""
    command, name = error.ctx.command, error.option_name
    close = [p for p in error.possibilities or () if p not in ("--help", "-h")]
    message = error.message + (f" — did you mean {' or '.join(close)}?" if close else "")
    bare = name.lstrip("-").replace("-", "_")
    others = sorted(n for n, c in group.commands.items() if c is not command
                    and any(name in p.opts + p.secondary_opts for p in c.params))
    if any(p.param_type_name == "argument" and p.name == bare for p in command.params):
        message += f" ({bare} is an argument: give it without {name})"
    elif others:
        message += f" ({name} is an option of {', '.join(others)})"
    error.message, error.possibilities = message, None


app = typer.Typer(
    name="cnncli",
    cls=_Commands,
    help="Train, evaluate, trace and summarize convolutional neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_DEBUG = False


class Format(str, Enum):
    table = "table"
    json = "json"


class SummaryFormat(str, Enum):
    table = "table"
    json = "json"
    markdown = "markdown"


def _choices(name: str, names) -> type[Enum]:
    """An option's choices as the Enum Typer wants, from the one list that owns them."""
    return Enum(name, {n.replace("-", "_"): n for n in names}, type=str)


# The loss's command-line spellings: the short aliases, then the names that have none.
LossName = _choices("LossName", [*LOSS_ALIASES, *(n for n in LOSSES if n not in LOSS_ALIASES.values())])
Optimizer = _choices("Optimizer", OPTIMIZERS)
Schedule = _choices("Schedule", SCHEDULES)


class Engine(str, Enum):
    numba = "numba"
    torch = "torch"


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


# The registry's names (cnncli.dataset_names), so that a new dataset needs no edit here.
Dataset = _choices("Dataset", CHOICES)


class Split(str, Enum):
    test = "test"
    train = "train"


# The names --dataset takes, as help lists them.
_DATASETS = either(CHOICES)

# The panels of the help of commands with many options (options without one are under "Options").
_RECIPE, _DATA_AUGMENT, _RUN_FOLDER, _ENGINE = "Recipe", "Data and augmentation", "Run folder", "Engine"
_DATA, _INPUT, _OUTPUT, _STEP, _SLIDES = "Data", "Input", "Output", "Network and step", "Slides 26–28"
_DETECTORS = "Detectors (yolo and localize heads)"
_FINE_TUNE = "Fine-tuning"

# The training recipe's flags, declared once: train and compare take the same ones.
_BATCH_SIZE = typer.Option(None, "--batch-size", metavar="N", help="Images per step.", rich_help_panel=_RECIPE)
_LR = typer.Option(None, "--lr", metavar="NUMBER", help="Learning rate.", rich_help_panel=_RECIPE)
_OPTIMIZER = typer.Option(None, "--optimizer", metavar="NAME", help="sgd or adam.", rich_help_panel=_RECIPE)
_MOMENTUM = typer.Option(None, "--momentum", metavar="NUMBER", help="SGD momentum.", rich_help_panel=_RECIPE)
_WEIGHT_DECAY = typer.Option(None, "--weight-decay", metavar="NUMBER", help="L2 weight decay.",
                             rich_help_panel=_RECIPE)
_SCHEDULE = typer.Option(None, "--schedule", metavar="NAME",
                         help=f"Learning-rate schedule: {either([s.value for s in Schedule])}.",
                         rich_help_panel=_RECIPE)
_SEED = typer.Option(None, "--seed", metavar="N", help="Seed for weights, shuffling and the split.",
                     rich_help_panel=_RECIPE)
_CROP_PADDING = typer.Option(None, "--crop-padding", metavar="N",
                             help="Augment: random crop after a border of N pixels (0: off).",
                             rich_help_panel=_DATA_AUGMENT)
_FLIP = typer.Option(None, "--flip/--no-flip", help="Augment: flip half the images.", rich_help_panel=_DATA_AUGMENT)
_LIMIT = typer.Option(None, "--limit", metavar="N", help="Use only the first N training images.",
                      rich_help_panel=_DATA_AUGMENT)
_DATA_DIR = typer.Option(None, "--data-dir", metavar="DIR", help="Folder holding the dataset files.",
                         rich_help_panel=_DATA_AUGMENT)
# The weights of every command that reads them; --checkpoint is the same option by its older name.
_WEIGHTS = typer.Option(..., "--weights", "--checkpoint", metavar="WEIGHTS", help="Weights: a checkpoint from "
                        "train (.npz), a PyTorch state dict (.pt, .pth), or imagenet: torchvision's published "
                        "weights, for the models whose file lists them (downloaded once).")
# Every command that reads weights takes it: the check it skips is cnncli.records.checkpoint.Checkpoint.check_model.
_SKIP_MODEL_CHECK = typer.Option(False, "--skip-model-check", help="Use weights trained for another model "
                                 "(their names and shapes must still fit).")

# One image for a trained network (features, explain): a test image of the dataset, or a file.
_SAMPLE = typer.Option(None, "--sample", metavar="I", help="Use test image I of the dataset.", rich_help_panel=_INPUT)
_IMAGE = typer.Option(None, "--image", metavar="FILE", help="Use an image file (PNG, JPEG; images extra).",
                      rich_help_panel=_INPUT)
_IMAGE_DATASET = typer.Option(None, "--dataset", metavar="NAME",
                              help=f"The dataset: {_DATASETS} (the checkpoint's by default).", rich_help_panel=_INPUT)
_INVERT = typer.Option(False, "--invert", help="Invert --image (dark digits on light paper).", rich_help_panel=_INPUT)


def _variant(option, **changes):
    """A shared option declaration with other attributes (``default``, ``rich_help_panel``) for one command."""
    option = copy.copy(option)
    for key, value in changes.items():
        setattr(option, key, value)
    return option


def _recipe(*, dataset, epochs, batch_size, lr, optimizer, momentum, weight_decay, schedule, seed,
            crop_padding, flip) -> dict:
    """The recipe flags as the overrides :func:`cnncli.commands.training.resolve` takes (None: the file's value)."""
    return {
        "dataset": dataset.value if dataset else None, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "optimizer": optimizer.value if optimizer else None, "momentum": momentum,
        "weight_decay": weight_decay, "schedule": schedule.value if schedule else None, "seed": seed,
        "crop_padding": crop_padding, "flip": flip,
    }


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnncli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of errors, for bug reports."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    global _DEBUG
    _DEBUG = debug or _DEBUG


def _console():
    from cnncli.render import console

    return console()


def _downloads(fmt, console):
    """The download bars of a command: on its console, or on stderr when it prints JSON (which must be all
    that stdout holds)."""
    from cnncli.render import console as make_console
    from cnncli.render import downloads

    return downloads.Downloads(make_console(stderr=True) if fmt.value == "json" else console)


@app.command(cls=_Command)
def models(
    fmt: SummaryFormat = typer.Option(SummaryFormat.table, "--format", metavar="FORMAT",
                                      help="table, json or markdown."),
) -> None:
    """List the built-in models with their input size and parameter count."""
    from cnncli.commands import summary
    from cnncli.render import summary as render

    render.show_models(summary.builtin_models(), fmt.value, _console())


@app.command(cls=_Command)
def summarize(
    model: str = typer.Argument(..., help="A built-in model name (see `cnncli models`) or a YAML file."),
    input: Optional[str] = typer.Option(None, "--input", metavar="CxHxW", help="Input size CxHxW, e.g. 3x224x224."),
    depth: Optional[int] = typer.Option(None, "--depth", metavar="N", min=0,
                                        help="Fold blocks nested deeper than this into one row."),
    batch: int = typer.Option(1, "--batch", metavar="N", min=1,
                              help="Batch size for the activation-memory estimate."),
    aux: bool = typer.Option(True, "--aux/--no-aux", help="Include auxiliary training heads."),
    fmt: SummaryFormat = typer.Option(SummaryFormat.table, "--format", metavar="FORMAT",
                                      help="table, json or markdown."),
    paths: bool = typer.Option(False, "--paths",
                               help="Also say which convolution strategy each conv layer takes on this machine "
                                    "(train, eval, predict; float32, a batch of --batch)."),
) -> None:
    """Layers, output shapes, parameter counts and MACs of a model, without running it."""
    from cnncli.commands import summary
    from cnncli.render import summary as render

    result = summary.summarize(model, input_size=input, batch=batch, aux=aux, paths=paths)
    render.show_summary(result, fmt.value, depth, _console())


@app.command(cls=_Command)
def train(
    model: str = typer.Argument(..., help="A built-in model name or a YAML file."),
    epochs: Optional[int] = typer.Option(None, "--epochs", metavar="N", help="Epochs to train (file's default).",
                                         rich_help_panel=_RECIPE),
    batch_size: Optional[int] = _BATCH_SIZE,
    lr: Optional[float] = _LR,
    optimizer: Optional[Optimizer] = _OPTIMIZER,
    momentum: Optional[float] = _MOMENTUM,
    weight_decay: Optional[float] = _WEIGHT_DECAY,
    schedule: Optional[Schedule] = _SCHEDULE,
    seed: Optional[int] = _SEED,
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", metavar="NAME",
                                              help=f"The dataset: {_DATASETS} (the model file's by default).",
                                              rich_help_panel=_DATA_AUGMENT),
    crop_padding: Optional[int] = _CROP_PADDING,
    flip: Optional[bool] = _FLIP,
    limit: Optional[int] = _LIMIT,
    data_dir: Optional[Path] = _DATA_DIR,
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Run folder (default runs/<model>-<time>).",
                                       rich_help_panel=_RUN_FOLDER),
    resume: Optional[Path] = typer.Option(None, "--resume", metavar="FILE",
                                          help="Continue from a checkpoint (last.npz).", rich_help_panel=_RUN_FOLDER),
    dtype: Optional[DType] = typer.Option(None, "--dtype", metavar="TYPE", help="float32 (default) or float64.",
                                          rich_help_panel=_ENGINE),
    engine: Optional[Engine] = typer.Option(None, "--engine", metavar="NAME", help="numba (cnncli's kernels, "
                                            "default) or torch (PyTorch runs the passes; the torch extra).",
                                            rich_help_panel=_ENGINE),
    nproc: Optional[int] = typer.Option(None, "--nproc", metavar="N", help="With --engine torch: data-parallel "
                                        "processes on this machine (several machines: see README, torchrun).",
                                        rich_help_panel=_ENGINE),
    device: Optional[Device] = typer.Option(None, "--device", metavar="DEVICE", help="With --engine torch: cpu "
                                            "(default) or cuda (one GPU per process).", rich_help_panel=_ENGINE),
    skip_model_check: bool = _SKIP_MODEL_CHECK,
    weights: Optional[Path] = _variant(_WEIGHTS, default=None, rich_help_panel=_FINE_TUNE,
                                       help="Start from these weights (fine-tuning; a new run, not --resume): a "
                                       "checkpoint (.npz), a PyTorch state dict (.pt, .pth), or imagenet: "
                                       "torchvision's published weights, for the models whose file lists them. A "
                                       "head sized for other classes is replaced by a fresh one."),
    freeze: Optional[str] = typer.Option(None, "--freeze", help="Train only what follows layer (or block) NAME: "
                                         "it and every layer before it do not learn; 'backbone': every layer but "
                                         "the head.", metavar="NAME", rich_help_panel=_FINE_TUNE),
) -> None:
    """Train a model; writes a run folder with metrics and checkpoints."""
    from cnncli.commands import training
    from cnncli.render import training as render

    overrides = _recipe(dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        momentum=momentum, weight_decay=weight_decay, schedule=schedule, seed=seed,
                        crop_padding=crop_padding, flip=flip)
    console = _console()
    with _downloads(Format.table, console) as shown:  # published weights (--weights imagenet) are fetched here
        config = training.configure(model, overrides, limit=limit, data_dir=data_dir, out=out,
                                    resume=resume, dtype=dtype.value if dtype else None,
                                    engine=engine.value if engine else None, nproc=nproc,
                                    device=device.value if device else None, skip_model_check=skip_model_check,
                                    weights=weights, freeze=freeze, progress=shown)
    result = training.train(config, render.Reporter(console))
    render.show_result(result, console)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@app.command("eval", cls=_Command)
def evaluate(
    model: str = typer.Argument(..., help="A built-in model name or a YAML file."),
    checkpoint: Path = _WEIGHTS,
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", metavar="NAME", help=f"The dataset: {_DATASETS} "
                                              "(the checkpoint's, else the model file's).", rich_help_panel=_DATA),
    split: Split = typer.Option(Split.test, "--split", metavar="SPLIT", help="test or train.", rich_help_panel=_DATA),
    data_dir: Optional[Path] = _variant(_DATA_DIR, rich_help_panel=_DATA),
    batch_size: int = typer.Option(500, "--batch-size", metavar="N", min=1, help="Images per forward pass."),
    top_k: Optional[int] = typer.Option(None, "--top-k", metavar="K", min=1, help="Also report top-k accuracy "
                                        "(default: 3; 5 for 100 classes or more).", show_default=False,
                                        rich_help_panel=_OUTPUT),
    worst: Optional[int] = typer.Option(None, "--worst", metavar="N", min=0, help="How many of the worst mistakes "
                                        "to draw (default: 6).", show_default=False, rich_help_panel=_OUTPUT),
    fmt: Format = typer.Option(Format.table, "--format", metavar="FORMAT", help="table or json.",
                               rich_help_panel=_OUTPUT),
    skip_model_check: bool = _SKIP_MODEL_CHECK,
) -> None:
    """Accuracy, confusion matrix, per-class scores and the worst mistakes of a checkpoint; a detector's COCO mAP,
    per-class AP and precision-recall chart."""
    from cnncli.commands import evaluation
    from cnncli.render import evaluation as render

    console = _console()
    with _downloads(fmt, console) as shown:
        result = evaluation.evaluate(model, checkpoint, dataset=dataset.value if dataset else None,
                                     split=split.value, data_dir=data_dir, batch_size=batch_size,
                                     top_k=top_k, worst=worst, progress=shown, skip_model_check=skip_model_check)
    render.show(result, fmt.value, console)


@app.command("backprop-trace", cls=_Command)
def backprop_trace(
    model: str = typer.Argument("slide-mlp", help="slide-mlp (the lecture's example), slide-conv, "
                                                  "slide-maxpool, slide-avgpool, or any model."),
    loss: Optional[LossName] = typer.Option(None, "--loss", metavar="NAME", help="ce, bce or mse; a detector's, "
                                            "yolo or localize (the model's by default).",
                                            rich_help_panel=_STEP),
    lr: Optional[float] = typer.Option(None, "--lr", metavar="NUMBER", help="Learning rate of the shown update.",
                                       rich_help_panel=_STEP),
    input: Optional[str] = typer.Option(None, "--input", metavar="VALUES",
                                        help="Input values (comma-separated) or a .npy file.", rich_help_panel=_INPUT),
    target: Optional[str] = typer.Option(None, "--target", metavar="VALUES",
                                         help="Target: comma-separated values or a class index.",
                                         rich_help_panel=_INPUT),
    sample: Optional[int] = typer.Option(None, "--sample", metavar="I", help="Use test image I of the model's dataset.",
                                         rich_help_panel=_INPUT),
    weights: Optional[Path] = _variant(_WEIGHTS, default=None, rich_help_panel=_STEP),
    filter: Optional[str] = typer.Option(None, "--filter", metavar="VALUES",
                                         help="slide-conv: filter values, comma-separated.", rich_help_panel=_SLIDES),
    upstream: Optional[str] = typer.Option(None, "--upstream", metavar="VALUES",
                                           help="slide-conv/pool: ∂E/∂O values, comma-separated.",
                                           rich_help_panel=_SLIDES),
    steps: int = typer.Option(1, "--steps", metavar="N", min=1, help="Repeat the training step N times.",
                              rich_help_panel=_STEP),
    compare_slides: bool = typer.Option(False, "--compare-slides",
                                        help="Check every number the lecture prints (slides 5–24).",
                                        rich_help_panel=_OUTPUT),
    dump: Optional[Path] = typer.Option(None, "--dump", metavar="FILE", help="Write all gradients to this .npz file.",
                                        rich_help_panel=_OUTPUT),
    data_dir: Optional[Path] = _variant(_DATA_DIR, rich_help_panel=_INPUT),
    fmt: Format = typer.Option(Format.table, "--format", metavar="FORMAT", help="table or json.",
                               rich_help_panel=_OUTPUT),
    skip_model_check: bool = _SKIP_MODEL_CHECK,
) -> None:
    """One exact forward and backward pass, shown layer by layer (the lecture's derivative tables)."""
    from cnncli.lecture import trace
    from cnncli.render import trace as render

    console = _console()
    with _downloads(fmt, console) as shown:
        result = trace.run(model, loss=loss.value if loss else None, lr=lr, input=input, target=target,
                           sample=sample, weights=weights, filter=filter, upstream=upstream, steps=steps,
                           compare_slides=compare_slides, dump=dump, data_dir=data_dir, progress=shown,
                           skip_model_check=skip_model_check)
    render.show(result, fmt.value, console)


@app.command(cls=_Command)
def predict(
    model: str = typer.Argument(..., help="A built-in model name or a YAML file."),
    images: list[Path] = typer.Argument(..., help="Image files (PNG, JPEG) or folders of them."),
    checkpoint: Path = _WEIGHTS,
    top_k: Optional[int] = typer.Option(None, "--top-k", metavar="K", min=1, help="How many classes to show per image "
                                        "(default: 3; 5 for 100 classes or more).", show_default=False),
    invert: bool = typer.Option(False, "--invert", help="Invert the images (dark digits on light paper)."),
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", metavar="NAME", help=f"The dataset whose classes "
                                              f"and statistics the weights were trained with: {_DATASETS} (the "
                                              "checkpoint records them; a PyTorch state dict does not).",
                                              rich_help_panel=_INPUT),
    data_dir: Optional[Path] = _variant(_DATA_DIR, rich_help_panel=_INPUT),
    fmt: Format = typer.Option(Format.table, "--format", metavar="FORMAT", help="table or json."),
    conf: Optional[float] = typer.Option(None, "--conf", metavar="SCORE", help="The least score of a box shown, "
                                         "objectness × class probability, 0 to 1 (default: 0.25).",
                                         show_default=False, rich_help_panel=_DETECTORS),
    iou: Optional[float] = typer.Option(None, "--iou", metavar="IOU", help="Boxes of a class overlapping a better one "
                                        "by more than this are suppressed, 0 to 1 (default: 0.45).",
                                        show_default=False, rich_help_panel=_DETECTORS),
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Write each image with its boxes drawn to "
                                       "DIR/<name>.png.", rich_help_panel=_DETECTORS),
    skip_model_check: bool = _SKIP_MODEL_CHECK,
) -> None:
    """The top classes of image files under a checkpoint, each image drawn as the network saw it; a detector's
    boxes, drawn on the image.

    An image that looks inverted against the training images gets a warning suggesting --invert; files
    that cannot be read are left out, named, and make the exit status 2.
    """
    from cnncli.commands import predict as predict_mod
    from cnncli.render import predict as render

    console = _console()
    with _downloads(fmt, console) as shown:
        result = predict_mod.predict(model, checkpoint, images, top_k=top_k, invert=invert,
                                     dataset=dataset.value if dataset else None, data_dir=data_dir,
                                     skip_model_check=skip_model_check, progress=shown, conf=conf, iou=iou, out=out)
    render.show(result, fmt.value, console)
    predict_mod.check_complete(result)  # files left out: named above, and status 2


class GradientMetric(str, Enum):
    grad_norm = "grad_norm"
    update_ratio = "update_ratio"
    weight_norm = "weight_norm"


@app.command(cls=_Command)
def plot(
    runs: list[Path] = typer.Argument(..., help="Run folders (from `cnncli train`), drawn together."),
    gradients: bool = typer.Option(False, "--gradients",
                                   help="Draw one run's gradient flow (layers × epochs) instead of its curves."),
    metric: GradientMetric = typer.Option(GradientMetric.grad_norm, "--metric", metavar="NAME",
                                          help="With --gradients: grad_norm, update_ratio or weight_norm."),
    all_layers: bool = typer.Option(False, "--all-layers",
                                    help="With --gradients: batch norm and other parametrised layers too."),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE",
                                       help="Also write the picture to a .png, .svg or .pdf file."),
    fmt: Format = typer.Option(Format.table, "--format", metavar="FORMAT",
                               help="table (charts) or json (the numbers)."),
) -> None:
    """Training curves of runs (loss, accuracy per epoch), or a run's gradient flow as a heat map."""
    from cnncli.errors import UsageError
    from cnncli.records import history as plot_mod
    from cnncli.render import figures
    from cnncli.render import plot as render

    figures.check_out(out)
    if gradients:
        if len(runs) != 1:
            raise UsageError(f"--gradients draws one run, got {len(runs)}: plot them one at a time")
        render.show_gradients(plot_mod.gradient_map(runs[0], metric.value, all_layers), fmt.value, _console(), out)
    else:
        render.show_curves(plot_mod.curves(runs), fmt.value, _console(), out)


@app.command(cls=_Command)
def features(
    model: str = typer.Argument(..., help="A built-in model name or a YAML file."),
    checkpoint: Path = _WEIGHTS,
    sample: Optional[int] = _SAMPLE,
    image: Optional[Path] = _IMAGE,
    layer: Optional[list[str]] = typer.Option(None, "--layer", metavar="NAME", help="A layer to show, or a block: "
                                              "its output (repeatable; default: every convolution).",
                                              rich_help_panel=_OUTPUT),
    max_maps: int = typer.Option(16, "--max-maps", metavar="N", min=1, help="Channels shown per layer.",
                                 rich_help_panel=_OUTPUT),
    dataset: Optional[Dataset] = _IMAGE_DATASET,
    data_dir: Optional[Path] = _variant(_DATA_DIR, rich_help_panel=_INPUT),
    invert: bool = _INVERT,
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE",
                                       help="Also write the grid to a .png, .svg or .pdf file.",
                                       rich_help_panel=_OUTPUT),
    fmt: Format = typer.Option(Format.table, "--format", metavar="FORMAT",
                               help="table (pictures) or json (the numbers).", rich_help_panel=_OUTPUT),
    skip_model_check: bool = _SKIP_MODEL_CHECK,
) -> None:
    """The feature maps each layer makes of one image, and the first layer's filters (slide 39)."""
    from cnncli.commands import features as features_mod
    from cnncli.render import features as render
    from cnncli.render.figures import check_out

    check_out(out)
    console = _console()
    with _downloads(fmt, console) as shown:
        result = features_mod.features(model, checkpoint, sample=sample, image=image, layers=layer,
                                       max_maps=max_maps, dataset=dataset.value if dataset else None,
                                       data_dir=data_dir, invert=invert, progress=shown,
                                       skip_model_check=skip_model_check)
    render.show(result, fmt.value, console, out)


class ExplainMethod(str, Enum):
    gradcam = "gradcam"
    saliency = "saliency"
    occlusion = "occlusion"


_EXPLANATION = "Explanation"


@app.command(cls=_Command)
def explain(
    model: str = typer.Argument(..., help="A built-in model name or a YAML file."),
    weights: Path = _WEIGHTS,
    sample: Optional[int] = _SAMPLE,
    image: Optional[Path] = _IMAGE,
    target: Optional[str] = typer.Option(None, "--class", metavar="CLASS", help="The class to explain, by name or "
                                         "index (default: the predicted one).", rich_help_panel=_EXPLANATION),
    method: ExplainMethod = typer.Option(ExplainMethod.gradcam, "--method", metavar="NAME", help="gradcam "
                                         "(Selvaraju et al. 2017), saliency (the input gradient) or occlusion (a "
                                         "square of the training mean slid over the image).", rich_help_panel=_EXPLANATION),
    layer: Optional[str] = typer.Option(None, "--layer", metavar="NAME", help="gradcam: the layer, or a block: its "
                                        "output (default: the last convolutional block's output).",
                                        rich_help_panel=_EXPLANATION),
    patch: Optional[int] = typer.Option(None, "--patch", metavar="N", help="occlusion: the square's side in pixels "
                                        "(default: an eighth of the input's).", rich_help_panel=_EXPLANATION),
    stride: Optional[int] = typer.Option(None, "--stride", metavar="N", help="occlusion: its step in pixels "
                                         "(default: half the square).", rich_help_panel=_EXPLANATION),
    dataset: Optional[Dataset] = _IMAGE_DATASET,
    data_dir: Optional[Path] = _variant(_DATA_DIR, rich_help_panel=_INPUT),
    invert: bool = _INVERT,
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE",
                                       help="Also write the picture to a .png, .svg or .pdf file.",
                                       rich_help_panel=_OUTPUT),
    fmt: Format = typer.Option(Format.table, "--format", metavar="FORMAT",
                               help="table (pictures) or json (the raw map).", rich_help_panel=_OUTPUT),
    skip_model_check: bool = _SKIP_MODEL_CHECK,
) -> None:
    """Which parts of an image a decision rests on: Grad-CAM, saliency or occlusion, drawn over the image."""
    from cnncli.commands import explain as explain_mod
    from cnncli.render import explain as render
    from cnncli.render.figures import check_out

    check_out(out)
    console = _console()
    with _downloads(fmt, console) as shown:
        result = explain_mod.explain(model, weights, sample=sample, image=image, method=method.value,
                                     target=target, layer=layer, patch=patch, stride=stride,
                                     dataset=dataset.value if dataset else None, data_dir=data_dir,
                                     invert=invert, progress=shown, skip_model_check=skip_model_check)
    render.show(result, fmt.value, console, out)


@app.command(cls=_Command)
def compare(
    models: list[str] = typer.Argument(..., help="Two or more models (built-in names or YAML files)."),
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", metavar="NAME",
                                              help=f"The dataset: {_DATASETS} (the first model's by default).",
                                              rich_help_panel=_DATA_AUGMENT),
    epochs: Optional[int] = typer.Option(None, "--epochs", metavar="N",
                                         help="Epochs for every model (the first model's default).",
                                         rich_help_panel=_RECIPE),
    limit: Optional[int] = _LIMIT,
    batch_size: Optional[int] = _BATCH_SIZE,
    lr: Optional[float] = _LR,
    optimizer: Optional[Optimizer] = _OPTIMIZER,
    momentum: Optional[float] = _MOMENTUM,
    weight_decay: Optional[float] = _WEIGHT_DECAY,
    schedule: Optional[Schedule] = _SCHEDULE,
    seed: Optional[int] = _SEED,
    crop_padding: Optional[int] = _CROP_PADDING,
    flip: Optional[bool] = _FLIP,
    data_dir: Optional[Path] = _DATA_DIR,
    out: Optional[Path] = typer.Option(None, "--out", metavar="DIR", help="Experiment folder (default "
                                       "runs/compare-<time>); run the command again with it to go on.",
                                       rich_help_panel=_OUTPUT),
    figure: Optional[Path] = typer.Option(None, "--figure", metavar="FILE", help="Also write the error curves to a "
                                          ".png, .svg or .pdf file.", rich_help_panel=_OUTPUT),
    fmt: Format = typer.Option(Format.table, "--format", metavar="FORMAT", help="table (charts) or json (the numbers).",
                               rich_help_panel=_OUTPUT),
) -> None:
    """Train models with one recipe and seed, then draw their error curves together (the depth experiment)."""
    from cnncli.commands import compare as compare_mod
    from cnncli.records import history as plot_mod
    from cnncli.render import compare as render
    from cnncli.render import figures

    figures.check_out(figure, "--figure")
    overrides = _recipe(dataset=dataset, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        momentum=momentum, weight_decay=weight_decay, schedule=schedule, seed=seed,
                        crop_padding=crop_padding, flip=flip)
    experiment = compare_mod.plan(models, overrides, limit=limit, data_dir=data_dir, out=out)
    console = _console()
    view = render.ExperimentView(experiment, console)
    result = compare_mod.run(experiment, view.reporter)
    folders = [r.run_dir for r in result.results if r.history]
    curves = plot_mod.curves(folders) if folders else plot_mod.Curves([])
    render.show(result, curves, fmt.value, console, figure)
    if result.exit_code:
        if fmt.value != "json":
            console.print(f"stopped; run the same command with --out {experiment.folder} to go on",
                          markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(result.exit_code)


class ExportTarget(str, Enum):
    onnx = "onnx"
    torch = "torch"


@app.command(cls=_Command)
def export(
    model: str = typer.Argument(..., help="A built-in model name or a YAML file."),
    checkpoint: Path = _WEIGHTS,
    to: ExportTarget = typer.Option(..., "--to", metavar="FORMAT",
                                    help="onnx (the onnx extra) or torch (the torch extra)."),
    out: Path = typer.Option(..., "-o", "--output", metavar="FILE", help="The file to write: model.onnx, or model.py "
                             "(with model.pt beside it)."),
    fmt: Format = typer.Option(Format.table, "--format", metavar="FORMAT", help="table or json."),
    skip_model_check: bool = _SKIP_MODEL_CHECK,
) -> None:
    """Write a trained model for another engine: an ONNX graph, or a PyTorch module and its weights."""
    from cnncli.commands import export as export_mod
    from cnncli.render import export as render

    console = _console()
    with _downloads(fmt, console) as shown:
        result = export_mod.export(model, checkpoint, to.value, out, skip_model_check=skip_model_check,
                                   progress=shown)
    render.show(result, fmt.value, console)


def _warning_shower(original):
    """Python's warning display, except the tool's own warnings (images left out, ...): one plain line each."""

    if getattr(original, "cnncli", False):
        return original

    def show(message, category, filename, lineno, file=None, line=None):
        if not category.__module__.startswith("cnncli"):
            return original(message, category, filename, lineno, file, line)
        (file or sys.stderr).write(f"{getattr(category, 'label', 'warning')}: {message}\n")

    show.cnncli = True
    return show


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning the tool's own errors into exit status 2."""
    global _DEBUG
    import warnings

    args = sys.argv[1:] if argv is None else argv
    _DEBUG = "--debug" in args or os.environ.get("CNNCLI_DEBUG") == "1"
    if not _DEBUG:
        warnings.showwarning = _warning_shower(warnings.showwarning)
    try:
        app(args=args, prog_name="cnncli", standalone_mode=True)
    except CnnError as e:
        if _DEBUG:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"error: {e}\n")
        sys.exit(e.exit_code)
