"""Training: a model file's ``train:`` defaults plus flags → a run folder with checkpoints.

:func:`configure` resolves and checks every setting before any work starts
(a bad flag is a :class:`~cnncli.errors.UsageError`); :func:`train` runs it and
returns a :class:`RunResult`. Progress goes to a :class:`Reporter` as records.

The run folder's files (``config.yaml``, ``metrics.csv``, ``gradients.csv``,
``last.npz``, ``best.npz``, ``test.json``) are described in :mod:`cnncli.records.runs`.

Determinism: the seed fixes the initial weights, the validation split, the
order of every epoch (drawn from a generator seeded with ``(seed, epoch)``, so
nothing about it needs storing) and dropout (whose generator state is saved).
Learning rates are a function of the global step. A checkpoint therefore holds
everything a resumed run needs to continue bit for bit, including from the
middle of an epoch: weights, optimizer state, dropout state, the position in
the epoch and the running sums of its metrics.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml

from cnncli import __version__, atomic, data
from cnncli.atomic import write_text_atomic
from cnncli.commands import recipe, tasks
from cnncli.data import DownloadEvent, mnist_detect
from cnncli.data.source import FOLDER, Source, check_readable, open_source
from cnncli.dataset_names import YOLO
from cnncli.engine import losses, optim, rules
from cnncli.engine.network import Network
from cnncli.errors import CheckpointError, TrainingStopped, UsageError, WorkerLost
from cnncli.model import head, spec
from cnncli.model.graph import ancestors, build
from cnncli.records import checkpoint, inputs, runs, trained
from cnncli.records import freeze as freezing
from cnncli.records.gradflow import GradientFlow
from cnncli.records.schedule import Plan, first_change, learning_rate
from cnncli.words import count, plural

#: With ``--limit``, the validation set is at most this share of the images.
MAX_VAL_SHARE = 0.1

DTYPES = ("float32", "float64")
#: Engines that run a model's passes: cnncli's own (Numba kernels) and PyTorch (the torch extra).
ENGINES = ("numba", "torch")
DEVICES = ("cpu", "cuda")  # where the torch engine runs the passes


# --------------------------------------------------------------------------- records

@dataclass
class RunConfig:
    """Every setting of a run, resolved: file defaults, then flags (or a resumed run's own)."""

    model: str
    name: str
    dataset: str
    optimizer: str
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    warmup_epochs: float
    step_epochs: int
    step_gamma: float
    batch_size: int
    epochs: int
    val_size: int
    seed: int
    crop_padding: int
    flip: bool
    limit: int | None
    dtype: str
    out: Path
    engine: str = "numba"     # which engine runs the passes: ENGINES
    nproc: int = 1            # data-parallel processes (the torch engine)
    device: str = "cpu"       # where the torch engine runs the passes: DEVICES
    data_dir: Path | None = None
    resume: Path | None = None
    #: The classes the network's head is sized for (:mod:`cnncli.model.head`): the dataset's, set when the run
    #: opens it; what every command that loads the run's weights sizes the model to again.
    classes: int | None = None
    weights: str | None = None  # what a fine-tuning run started from (--weights)
    freeze: str | None = None   # the layers it does not train (--freeze, cnncli.records.freeze)
    spec: spec.ModelSpec | None = field(default=None, repr=False, compare=False)
    start: checkpoint.Checkpoint | None = field(default=None, repr=False, compare=False)  # --weights, loaded

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain values (what ``config.yaml`` and checkpoints hold)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("spec", "start")}
        for key in ("out", "data_dir", "resume"):
            d[key] = None if d[key] is None else str(d[key])
        return d


@dataclass(frozen=True)
class Start:
    """The weights a fine-tuning run started from (``--weights``)."""

    origin: str                    # as --weights gave it
    replaced: tuple[str, ...] = ()  # heads not taken from the weights (sized for other classes): fresh ones
    units: int | None = None       # the replaced heads' units in the weights
    fresh: tuple[str, ...] = ()    # heads and auxiliary layers the weights do not hold: fresh ones


@dataclass(frozen=True)
class Frozen:
    """What ``--freeze`` froze (:mod:`cnncli.records.freeze`)."""

    value: str                     # as --freeze gave it
    last: str                      # the last frozen layer
    params: int                    # parameters that do not learn
    trainable: int                 # parameters that do
    batchnorm: int                 # frozen batch-norm layers (normalising with their running statistics)


@dataclass(frozen=True)
class Replan:
    """A run resumed with another ``--epochs`` than it was planned for, whose schedule therefore gives other
    rates from ``step`` (0-based) on (:func:`cnncli.records.schedule.first_change`)."""

    schedule: str
    planned: int              # the epochs the run was planned for
    epochs: int               # the epochs it is planned for now
    step: int                 # the first step whose rate changes ...
    planned_lr: float         # ... its rate under the run's plan
    lr: float                 # ... and under the new one
    steps_per_epoch: int

    @property
    def finished(self) -> bool:
        """Whether the run had trained every step of its plan (it is being trained longer)."""
        return self.step >= self.planned * self.steps_per_epoch


@dataclass(frozen=True)
class RunStart:
    """Sent once before the first step."""

    config: RunConfig
    n_train: int
    n_val: int
    n_test: int
    params: int
    steps_per_epoch: int
    start_epoch: int          # epochs already done (resumed runs)
    start_batch: int          # steps already done inside that epoch
    run_dir: Path
    inputs: inputs.InputPlan | None = None  # how the dataset's images become the model's input
    notes: tuple[str, ...] = ()               # about the data (an image folder's split, skipped files)
    engine: str = ""                          # what runs the passes, when not cnncli's own engine
    advice: tuple[recipe.Advice, ...] = ()    # where the recipe does not fit the data (cnncli.commands.recipe)
    head: tuple[head.HeadChange, ...] = ()    # the model's heads sized to the dataset's classes
    start: Start | None = None                # the weights a fine-tuning run started from
    frozen: Frozen | None = None              # the layers that do not train
    replan: Replan | None = None              # a resumed run's schedule changed by another --epochs
    task: str = "classification"              # or "detection" (cnncli.commands.tasks)
    terms: tuple[str, ...] = ()               # a detector's loss terms, shown each epoch


@dataclass(frozen=True)
class StepProgress:
    """After every optimizer step: where the epoch stands and its running metrics."""

    epoch: int                # 1-based
    epochs: int
    batch: int                # steps done in this epoch
    steps: int                # steps per epoch
    loss: float               # mean over the epoch so far
    accuracy: float | None    # a classifier's, over the epoch so far (None: a detector)
    images_per_s: float
    lr: float


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: a row of ``metrics.csv``."""

    epoch: int                # 1-based
    train_loss: float
    train_acc: float | None   # a classifier's (None: a detector)
    val_loss: float | None
    val_acc: float | None
    lr: float                 # of the epoch's last step
    images_per_s: float
    seconds: float            # training and validation
    #: A detector's: the training loss by term (its head's, cnncli.engine.heads), the validation mAP@0.5 and mAP@0.5:0.95.
    terms: dict[str, float] | None = None
    val_map50: float | None = None
    val_map50_95: float | None = None

    @property
    def val_score(self) -> float | None:
        """The validation score: accuracy, or a detector's mAP@0.5; None without a validation set."""
        return self.val_map50 if self.terms is not None else self.val_acc

    @property
    def score(self) -> float | None:
        """What ranks the epochs for best.npz: the validation score; without a validation set, a classifier's
        training accuracy (a detector's: None, every epoch is the best so far)."""
        if self.val_score is not None or self.terms is not None:
            return self.val_score
        return self.train_acc


@dataclass
class RunResult:
    """What a run ended with."""

    config: RunConfig
    run_dir: Path
    status: str               # "completed", "finished" (had trained every epoch before), "interrupted"
                              # (checkpoint saved), "stopped" (a worker lost; checkpoint saved) or "aborted"
    epochs_done: int
    history: list[EpochRecord]
    best_epoch: int | None
    best_val_acc: float | None  # the best epoch's validation score: accuracy, or a detector's mAP@0.5 (``metric``)
    test_loss: float | None = None
    test_acc: float | None = None   # a classifier's
    test_map50: float | None = None     # a detector's
    test_map50_95: float | None = None
    metric: str = "accuracy"     # what ranks epochs and scores the test set (cnncli.commands.tasks)
    n_test: int = 0
    seconds: float = 0.0
    signal_name: str | None = None
    checkpoint: Path | None = None
    batch: int = 0            # steps done in the unfinished epoch (interrupted runs)
    steps_per_epoch: int = 0
    dataset_title: str = ""   # what the images were (a registered dataset's title, or an image folder)
    reason: str | None = None  # why a run "stopped" (a data-parallel worker process was lost)
    lead: bool = True         # False in a data-parallel worker, which neither scores nor writes
    test_scores: tuple[runs.TestScore, ...] = ()  # the test set under last.npz, then best.npz (test.json)
    files: tuple[str, ...] = ()                   # what the run folder holds at the end (runs.listing)
    first_epoch: int = 1      # the epoch this invocation started in: epochs first_epoch..epochs_done took `seconds`

    @property
    def exit_code(self) -> int:
        """0 when completed (or finished before); 128 + signal number when stopped by a signal, as shells
        report it; 1 when a worker process was lost."""
        if self.status in ("completed", "finished"):
            return 0
        if self.status == "stopped":
            return 1
        return 128 + (signal.SIGTERM if self.signal_name == "SIGTERM" else signal.SIGINT)

    @property
    def last_path(self) -> Path:
        return self.run_dir / "last.npz"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "best.npz"


class Reporter(Protocol):
    """Receives a run's events; ``render.training.Reporter`` draws them."""

    def download(self, event: DownloadEvent) -> None: ...
    def start(self, run: RunStart) -> None: ...
    def step(self, progress: StepProgress) -> None: ...
    def epoch_end(self, record: EpochRecord) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class SilentReporter:
    """A reporter that shows nothing (library use, tests)."""

    def download(self, event: DownloadEvent) -> None:
        pass

    def start(self, run: RunStart) -> None:
        pass

    def step(self, progress: StepProgress) -> None:
        pass

    def epoch_end(self, record: EpochRecord) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- configure

def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _check_setting(key: str, value: Any, where: str) -> Any:
    try:
        return spec.coerce(value, spec.TRAIN_OPTIONS[key])
    except ValueError as e:
        raise UsageError(f"{where} {e}") from None


def configure(model: str, overrides: dict[str, Any], *, limit: int | None = None,
              data_dir: Path | None = None, out: Path | None = None, resume: Path | None = None,
              dtype: str | None = None, engine: str | None = None, nproc: int | None = None,
              device: str | None = None, skip_model_check: bool = False,
              weights: str | os.PathLike[str] | None = None, freeze: str | None = None,
              progress: data.ProgressCallback | None = None) -> RunConfig:
    """Resolve a run's settings: defaults < the model file's ``train:`` < its entry for the dataset
    (``train: datasets:``) < flags (``None`` = unset).

    With ``resume`` the checkpoint's own settings (``limit`` and ``dtype`` too)
    are used; only ``epochs`` may change (to train longer, or to stop sooner: not before the epochs the
    checkpoint has trained, nor inside the epoch it is in), and a flag that contradicts the checkpoint is
    an error. A schedule spread over the run's length (cosine, onecycle) then follows the new length from
    where the run stands: :attr:`RunStart.replan` says from which step, at what rate. The run goes on in the checkpoint's
    folder unless ``out`` names a new one. ``dtype`` None: float32, or the
    checkpoint's. ``engine`` None: numba, or the checkpoint's; a resumed run may change it (the
    state is the same), though only the same engine repeats an uninterrupted run bit for bit.
    ``nproc``: data-parallel processes of the torch engine (1 by default; may change on resume).
    ``device``: where the torch engine runs (``cpu`` by default, or ``cuda``: one GPU per process; may
    change on resume). ``skip_model_check``: resume a checkpoint of another model, or start from its
    weights (:meth:`~cnncli.records.checkpoint.Checkpoint.check_model`).

    ``weights`` starts a new run from them (fine-tuning; not with ``resume``): a cnncli checkpoint or a
    PyTorch state dict, checked against the network they were trained as; their head is replaced by a
    fresh one when the dataset has other classes (:meth:`_Run.start_from`). ``freeze``: the layers that do
    not train (:func:`cnncli.records.freeze.choose`); a resumed run keeps its own. ``progress`` receives the download
    events of published weights (``--weights imagenet``), which are fetched here, before the run starts.
    """
    model_spec = spec.load(model)
    if out is not None:
        atomic.check_folder(out, "--out")
    if resume is not None and weights is not None:
        raise UsageError("--weights starts a new run from weights, --resume continues a run (its weights are in "
                         "its checkpoint): give one of them")
    if freeze is not None:
        freezing.choose(model_spec, freeze, model)  # an unknown layer is an error before any work
        if weights is None and resume is None:
            import warnings

            warnings.warn(f"--freeze {freeze} without --weights keeps the frozen layers at their random initial "
                          "weights (a random-features experiment); to fine-tune, add --weights FILE",
                          recipe.RecipeWarning, stacklevel=2)
    given = _given(overrides)
    check_limit_and_dtype(limit, dtype)
    if engine is not None and engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if nproc is not None and (isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1):
        raise UsageError(f"--nproc must be a positive number of processes, got {nproc!r}")

    if resume is not None:
        config = _configure_resume(model, model_spec, given, limit, data_dir, out, Path(resume), dtype,
                                   skip_model_check, freeze)
        config.engine = engine or config.engine
    else:
        settings = resolve(model_spec, given)
        # Under torchrun only process 0 writes the run folder; the others must not judge it (it is 0's by now).
        follower = engine == "torch" and os.environ.get("RANK", "0") != "0"
        config = RunConfig(model=model, name=model_spec.name, **settings, limit=limit, dtype=dtype or "float32",
                           out=Path(out or ".") if follower else _fresh_out(model_spec.name, out), data_dir=data_dir,
                           spec=model_spec, engine=engine or "numba", freeze=freeze)
        if weights is not None:
            config.weights, config.start = str(weights), _start(model_spec, weights, skip_model_check, progress)
    config.nproc = nproc or 1
    if config.nproc > 1 and config.engine != "torch":
        raise UsageError(f"--nproc {config.nproc} runs data-parallel processes of the torch engine: add "
                         "--engine torch (the Numba engine already uses every core of one machine)")
    if config.nproc > config.batch_size:
        raise UsageError(f"--nproc {config.nproc} is more than the batch of {count(config.batch_size, 'image')}: each "
                         "process needs at least one")
    config.device = _check_device(device or "cpu", config.engine, config.nproc)
    # The optional packages the run will need, before it downloads or decodes anything.
    if config.engine == "torch":
        from cnncli.exchange import torch_module

        torch_module.require(torch_module.ENGINE)
    check_readable(config.dataset)
    return config


def _check_not_behind(resume: Path, ckpt: checkpoint.Checkpoint) -> None:
    """Resuming in the run's own folder from a checkpoint behind the folder's last.npz (its best.npz, say)
    would write over the later epochs: refused, with the two ways that lose nothing."""
    last = resume.resolve().parent / runs.LAST
    if resume.resolve() == last or not last.is_file():
        return
    latest = checkpoint.load(last)
    if latest.step <= ckpt.step:
        return
    at = f"epoch {ckpt.epoch}" + (f", step {ckpt.meta.get('batch')}" if ckpt.meta.get("batch") else "")
    raise UsageError(f"{resume} was written at {at}, but its run folder's {runs.LAST} has gone on to epoch "
                     f"{latest.epoch}: resuming it there would write over the later epochs. Resume from {last}, "
                     "or add --out NEW_FOLDER to train on from it in a new run folder")


def _prepared_as(model_spec: spec.ModelSpec, weights: str | None) -> Source | None:
    """A run that fine-tunes published weights (``--weights imagenet``) prepares its image folder's images as
    those weights expect (:func:`cnncli.data.source.open_source`); None for any other run."""
    if weights is None or weights not in model_spec.weights:
        return None
    from cnncli.records import published

    return published.source(model_spec.weights[weights], model_spec)


def _start(model_spec: spec.ModelSpec, weights: str | os.PathLike[str], skip_model_check: bool,
           progress: data.ProgressCallback | None = None) -> checkpoint.Checkpoint:
    """The weights a fine-tuning run starts from, refused when trained for another network than the model
    (sized as they were trained, :func:`cnncli.records.trained.as_trained`) unless ``skip_model_check``; ``progress``
    receives the download's events when they are published weights not yet on this machine."""
    saved = trained.open_weights(weights, model_spec, progress)  # its load checks the file is there
    saved.check_model(trained.as_trained(model_spec, saved), skip_model_check)
    return saved


def _check_device(device: str, engine: str, nproc: int) -> str:
    """``--device``: one of :data:`DEVICES`; ``cuda`` needs the torch engine and a GPU per local process."""
    if device not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return device
    if engine != "torch":
        raise UsageError("--device cuda runs the torch engine on GPUs: add --engine torch (the Numba engine "
                         "runs on the CPU)")
    from cnncli.exchange import torch_module

    torch = torch_module.require(torch_module.ENGINE)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UsageError(f"--device cuda: PyTorch {torch.__version__} finds no CUDA GPU on this machine "
                         "(a CPU build of torch, or no driver); leave --device out to train on the CPU")
    if "LOCAL_RANK" not in os.environ and nproc > count:
        raise UsageError(f"--nproc {nproc} with --device cuda needs a GPU per process; this machine has {count}")
    return device


def check_limit_and_dtype(limit: int | None, dtype: str | None) -> None:
    """``--limit`` (a positive number of images) and ``--dtype`` (one of :data:`DTYPES`), when given."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"--limit must be a positive number of images, got {limit!r}")
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def _given(overrides: dict[str, Any]) -> dict[str, Any]:
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in given:
        if key not in spec.TRAIN_OPTIONS:
            raise UsageError(f"unknown training setting '{key}'")
    return given


def resolve(model_spec: spec.ModelSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    """Every training setting of a new run of ``model_spec``: the file's for the dataset, then ``overrides``."""
    given = _given(overrides)
    dataset = _check_setting("dataset", given["dataset"], "--dataset") if "dataset" in given else None
    settings = model_spec.train_settings(dataset)
    for key, value in given.items():
        settings[key] = _check_setting(key, value, _flag(key))
    if settings["flip"] and "flip" not in given and not _mirror_ok(settings["dataset"]):
        settings["flip"] = False  # the model file's flip is for photographs; --flip still forces it
    return settings


def _mirror_ok(dataset: str) -> bool:
    """Whether ``dataset``'s images may be flipped left-right (digits may not); a user's folder (of classes or of
    boxes) may; canvases of digits or items as their base dataset's images."""
    if dataset in (FOLDER, YOLO):
        return True
    if dataset in mnist_detect.DATASETS:
        return data.get(mnist_detect.DATASETS[dataset][0]).mirror_ok
    return data.get(dataset).mirror_ok


def _fresh_out(name: str, out: Path | None) -> Path:
    if out is not None:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            what = "is a file" if not out.is_dir() else "already exists and is not empty"
            hint = (f"; to continue that run use --resume {out / 'last.npz'}"
                    if (out / "last.npz").is_file() else "")
            raise UsageError(f"--out {out} {what}: choose a new folder{hint}")
        return out
    return runs.new_folder(name)


def _configure_resume(model: str, model_spec: spec.ModelSpec, given: dict[str, Any],
                      limit: int | None, data_dir: Path | None, out: Path | None,
                      resume: Path, dtype: str | None, skip_model_check: bool, freeze: str | None) -> RunConfig:
    ckpt = checkpoint.load(resume)
    saved = ckpt.meta.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{resume} holds weights but no training state, so it cannot be resumed "
                              f"(evaluate it with `cnncli eval {model} --weights {resume}`)")
    ckpt.check_model(trained.as_trained(model_spec, ckpt), skip_model_check)
    settings = {}
    for key, opt in spec.TRAIN_OPTIONS.items():
        try:
            settings[key] = spec.coerce(saved.get(key, opt.default), opt)
        except ValueError as e:
            raise CheckpointError(f"{resume}: its saved setting {key} {e}") from None
    for key, value in given.items():
        value = _check_setting(key, value, _flag(key))
        if key == "epochs":
            if value < ckpt.epoch:
                raise UsageError(f"--epochs {value} is fewer than the {count(ckpt.epoch, 'epoch')} {resume} "
                                 "has already trained")
            if value == ckpt.epoch and ckpt.meta.get("batch"):
                raise UsageError(f"--epochs {value} would end the run inside epoch {value + 1}, which {resume} "
                                 f"is {count(int(ckpt.meta['batch']), 'step')} into: give --epochs {value + 1} "
                                 "or more")
            settings[key] = value
        elif value != settings[key]:
            raise UsageError(f"{_flag(key)} {value} differs from the resumed run's {settings[key]}: "
                             "a resumed run keeps its settings (only --epochs may change); "
                             "start a new run to change it")
    origin, saved_freeze = saved.get("weights"), saved.get("freeze")
    if not isinstance(origin, (str, type(None))) or not isinstance(saved_freeze, (str, type(None))):
        raise CheckpointError(f"{resume}: its saved settings weights and freeze must be text")
    if freeze is not None and freeze != saved_freeze:
        raise UsageError(f"--freeze {freeze} differs from the resumed run's {saved_freeze or 'none'}: a resumed "
                         "run keeps its settings; start a new run to change it")
    saved_limit = saved.get("limit")
    if limit is not None and limit != saved_limit:
        raise UsageError(f"--limit {limit} differs from the resumed run's {saved_limit}")
    folder = resume.resolve().parent
    if out is not None and Path(out).resolve() != folder:
        out = _fresh_out(model_spec.name, out)
    else:
        _check_not_behind(resume, ckpt)
        out = resume.parent
    saved_dtype = saved.get("dtype", "float32")
    if saved_dtype not in DTYPES:
        raise CheckpointError(f"{resume}: unknown dtype {saved_dtype!r} in its configuration")
    if dtype is not None and dtype != saved_dtype:
        raise UsageError(f"--dtype {dtype} differs from the resumed run's {saved_dtype}")
    dtype = saved_dtype
    saved_engine = saved.get("engine", "numba")
    if data_dir is None and settings.get("dataset") in (FOLDER, YOLO) and isinstance(saved.get("data_dir"), str):
        data_dir = Path(saved["data_dir"])  # the folder the run trained on, as its config recorded it
    return RunConfig(model=model, name=model_spec.name, **settings, limit=saved_limit, dtype=dtype,
                     out=out, data_dir=data_dir, resume=resume, spec=model_spec,
                     engine=saved_engine if saved_engine in ENGINES else "numba", classes=ckpt.classes,
                     weights=origin, freeze=saved_freeze)


def validation_count(n: int, val_size: int) -> int:
    """How many of ``n`` training images are held out for validation: ``val_size``, but at most
    :data:`MAX_VAL_SHARE` of them (so that ``--limit`` keeps most images for training)."""
    return min(val_size, int(n * MAX_VAL_SHARE))


# --------------------------------------------------------------------------- signals

class _Interrupts:
    """Turns Ctrl-C and SIGTERM into a flag the loop checks between steps.

    Stopping between steps, never inside one, keeps the weights and the
    optimizer state consistent for the checkpoint. A second Ctrl-C stops at once.
    """

    def __init__(self, active: bool = True) -> None:
        self.signal_name: str | None = None
        self.active = active      # a data-parallel worker leaves signals to the lead
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle if self.active else signal.SIG_IGN)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- files

def _prepare_run_dir(out: Path, config: RunConfig, plan: inputs.InputPlan, source: Source) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        # A run killed while writing leaves its temporary file behind; the real files are whole.
        for stale in out.glob(".*.part"):
            stale.unlink(missing_ok=True)
        record = {**config.to_dict(), "input": plan.to_config(), "source": source.to_config()}
        write_text_atomic(out / runs.CONFIG, yaml.safe_dump(record, sort_keys=False))
    except OSError as e:
        raise UsageError(f"cannot write the run folder {out}: {e.strerror or e}") from None


# --------------------------------------------------------------------------- the run

def _shuffle(seed: int, epoch: int, n: int) -> np.ndarray:
    # Seeded by (seed, epoch) so that a resumed run finds every epoch's order again.
    return np.random.default_rng([seed, 2, epoch]).permutation(n)


class _Rows:
    """Rows ``index`` of an image array, read only when a batch asks for them (no copy of the whole split)."""

    def __init__(self, images: np.ndarray, index: np.ndarray):
        self.images, self.index = images, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows) -> np.ndarray:
        return self.images[self.index[rows]]


class _Run:
    """One training run; its fields are the state a checkpoint saves."""

    def __init__(self, config: RunConfig, reporter: Reporter, interrupts: _Interrupts, group=None):
        self.cfg = config
        self.group = group        # a data-parallel group (cnncli.exchange.torch_distributed), or None
        self.lead = group is None or group.lead  # the process that scores, reports and writes
        self.reporter = reporter
        self.interrupts = interrupts
        self.started = time.perf_counter()
        self.epoch = 0            # epochs completed
        self.batch = 0            # steps completed in the current epoch
        self.step = 0             # global step
        self.task: tasks.Classification | tasks.Detection = tasks.Classification()
        self.partial = self.fresh_partial()
        self.history: list[EpochRecord] = []
        self.best_epoch: int | None = None
        self.best_score: float | None = None
        self.last_lr = config.lr

    # -- setup --
    def prepare(self) -> None:
        cfg = self.cfg
        model_spec = cfg.spec or spec.load(cfg.model)
        tasks.check_dataset(model_spec, cfg.dataset)
        info = self.data_source = open_source(cfg.dataset, cfg.data_dir, model_spec.input,
                                              prepared_as=_prepared_as(model_spec, cfg.weights),
                                              progress=self.reporter.download)
        classes = len(info.classes)
        if cfg.classes is not None and cfg.classes != classes:
            raise UsageError(f"{info.title} has {count(classes, 'class')}, but the run being resumed was trained "
                             f"for {cfg.classes}: resume it on its own data, or start a new run")
        # The head sized to the dataset's classes: the network this run trains, and its fingerprint.
        sized = head.resize(model_spec, classes)
        model_spec, self.head = sized.spec, sized.changes
        self.fingerprint = model_spec.fingerprint()
        frozen = freezing.choose(model_spec, cfg.freeze).layers if cfg.freeze is not None else frozenset()
        self.graph = build(model_spec, aux=True, frozen=frozen)
        self.task = tasks.of(self.graph)
        self.partial = self.fresh_partial()
        self.inputs = inputs.plan(info.title, info.image_shape, self.graph.input_shape, cfg.name,
                                  inputs.Augmentation(cfg.crop_padding, cfg.flip))
        inputs.check_outputs(self.graph[self.graph.output], classes, info.title, cfg.name)
        cfg.classes = classes
        dtype = np.dtype(cfg.dtype)
        self.dtype = dtype
        if cfg.engine == "torch":
            from cnncli.exchange.torch_engine import TorchNetwork

            self.net = TorchNetwork(self.graph, build(model_spec, aux=False), model_spec.name, dtype, seed=cfg.seed,
                                    group=self.group, device=cfg.device)
        else:
            self.net = Network(self.graph, dtype, seed=cfg.seed, fast=True)
        self.frozen = self.freeze_record() if cfg.freeze is not None else None
        self.start = None
        if cfg.resume is None and cfg.start is not None:
            self.start = self.start_from(cfg.start, model_spec)
        # Worker processes boot while the data loads (until they are ready, threads split the batches).
        self.net.spawn_workers(cfg.batch_size)

        images, labels = info.load("train", cfg.data_dir, progress=self.reporter.download)
        tasks.check_labels(self.task, labels, info.title, cfg.name)
        test_images, test_labels = info.load("test", cfg.data_dir, progress=self.reporter.download)
        if cfg.limit is not None:
            if cfg.limit > len(images):
                raise UsageError(f"--limit {cfg.limit} is more than the {len(images)} "
                                 f"{plural(len(images), 'training image')} of {info.title}")
            images, labels = images[:cfg.limit], labels[:cfg.limit]
        n = len(images)
        own = info.validation()
        if own is None:
            train_idx, val_idx = data.train_val_split(n, validation_count(n, cfg.val_size), cfg.seed)
            val_images, val_labels = images, labels
        else:  # the dataset's own validation split (a YOLO folder's val)
            val_images, val_labels = info.load(own, cfg.data_dir, progress=self.reporter.download)
            train_idx, val_idx = np.arange(n), np.arange(len(val_images))
        # Images stay uint8, where they are (a memory map for a big folder), until a batch is made.
        self.x_train, self.y_train = _Rows(images, train_idx), labels[train_idx]
        self.x_val, self.y_val = _Rows(val_images, val_idx), val_labels[val_idx]
        self.test_images, self.test_labels = test_images, test_labels

        self.loss = losses.get(model_spec.loss).bound(self.graph)
        # Images per forward pass when scoring the validation and test sets (no gradients kept).
        self.score_batch = rules.score_batch(max(math.prod(n.out_shape) for n in self.graph.nodes)
                                             * np.dtype(cfg.dtype).itemsize)
        self.source = self.loss.source(self.graph)
        self.opt = optim.make(cfg.optimizer, self.net.trainable(), cfg.lr, momentum=cfg.momentum,
                              nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        self.flow = GradientFlow.of(self.net)
        self.steps_per_epoch = recipe.steps_per_epoch(len(self.x_train), cfg.batch_size)
        self.advice = tuple(recipe.check(len(self.x_train), cfg.batch_size, recipe.uses_batchnorm(self.graph)))
        self.plan = Plan(cfg.lr, cfg.epochs, self.steps_per_epoch, cfg.warmup_epochs,
                         cfg.step_epochs, cfg.step_gamma)
        self.replan = None
        if cfg.resume is not None:
            ckpt = checkpoint.load(cfg.resume)
            self.restore(ckpt)
            self.replan = self.replanned(ckpt.config.get("epochs"))
        if self.lead:
            _prepare_run_dir(cfg.out, cfg, self.inputs, self.data_source)
            if self.history:
                self.write_metrics()

    def replanned(self, planned: Any) -> Replan | None:
        """Where a resumed run's rates part from the ones of its plan of ``planned`` epochs (its checkpoint's
        setting), now that ``--epochs`` asks for another number; None when no rate changes."""
        cfg = self.cfg
        if not isinstance(planned, int) or isinstance(planned, bool) or planned < 1 or planned == cfg.epochs:
            return None
        before = Plan(cfg.lr, planned, self.steps_per_epoch, cfg.warmup_epochs, cfg.step_epochs, cfg.step_gamma)
        change = first_change(cfg.schedule, before, self.plan, self.step)
        if change is None:
            return None
        return Replan(cfg.schedule, planned, cfg.epochs, *change, self.steps_per_epoch)

    def start_from(self, saved: checkpoint.Checkpoint, model_spec: spec.ModelSpec) -> Start:
        """Load the weights a fine-tuning run starts from into the fresh network.

        A head whose units in the weights are not the dataset's classes is not loaded: it keeps the fresh
        values the model file's initialisation gave it. So is a head the weights do not hold at all (a
        backbone's weights), and so are the auxiliary heads when the weights hold none of their arrays
        (weights of the inference network). Anything else must fit: a missing, unexpected or misshapen array
        is a CheckpointError naming it.
        """
        weights = saved.weights_for(self.graph)
        own = self.net.state_dict()  # the fresh values, initialised as the model file says
        replaced, units, fresh = [], None, []
        for h in head.heads(model_spec):
            keys = [f"{h.name}.{suffix}" for suffix in self.graph[h.name].params]
            theirs = [weights.get(k) for k in keys]
            if all(t is None for t in theirs):
                fresh.append(h.name)
            elif any(t is None for t in theirs) or all(t.shape == own[k].shape for t, k in zip(theirs, keys)):
                continue  # loaded as it is (what is missing is named by the load)
            elif all(_but_units(t.shape, h.kind) == _but_units(own[k].shape, h.kind)
                     for t, k in zip(theirs, keys)):  # only the units differ
                replaced.append(h.name)
                units = int(theirs[0].shape[0 if h.kind == "conv" else -1])
            else:
                continue  # another input size: the load names it
            weights.update({k: own[k] for k in keys})
        main = ancestors({n.name: n.inputs for n in self.graph.nodes}, [self.graph.output])
        aux = [n for n in self.graph.nodes if n.name not in main]
        aux_keys = [f"{n.name}.{suffix}" for n in aux for suffix in (*n.params, *n.buffers)]
        if aux_keys and not any(k in weights for k in aux_keys):
            fresh += [n.name for n in aux if n.params and n.name not in fresh]
            weights.update({k: own[k] for k in aux_keys})
        self.net.load_state_dict(weights, source=str(saved.path))
        return Start(str(self.cfg.weights), tuple(replaced), units, tuple(fresh))

    def freeze_record(self) -> Frozen:
        frozen = [n for n in self.graph.nodes if n.frozen]
        return Frozen(str(self.cfg.freeze), frozen[-1].name, sum(n.n_params for n in frozen),
                      self.graph.trainable_params, sum(n.kind == "batchnorm" for n in frozen))

    def restore(self, ckpt: checkpoint.Checkpoint) -> None:
        self.net.load_state_dict(ckpt.weights(), source=str(ckpt.path))
        self.opt.load_state_dict(ckpt.optimizer())
        m = ckpt.meta
        try:
            self.epoch, self.batch, self.step = int(m["epoch"]), int(m["batch"]), int(m["step"])
            self.partial = {k: type(v)(m["partial"][k]) for k, v in self.partial.items()}
            # a checkpoint's record may hold a detector's terms in any order: the table's and metrics.csv's is the head's
            self.history = [EpochRecord(**{**r, "terms": None if r.get("terms") is None else
                                           {t: r["terms"][t] for t in self.task.terms}}) for r in m["history"]]
            self.best_epoch, self.best_score = m["best_epoch"], m["best_score"]
            self.flow.restore(m.get("gradient_flow"))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{ckpt.path}: its training state is incomplete ({e})") from None
        if self.step != self.epoch * self.steps_per_epoch + self.batch:
            raise CheckpointError(f"{ckpt.path} is at step {self.step}, which does not match epoch "
                                  f"{self.epoch} and batch {self.batch} of {count(self.steps_per_epoch, 'step')}: "
                                  "was the data or batch size different?")

    # -- checkpoints --
    def meta(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "partial": self.partial,
            "history": [asdict(r) for r in self.history], "best_epoch": self.best_epoch,
            "best_score": self.best_score, "gradient_flow": self.flow.state(),
            "config": self.cfg.to_dict(), "input": self.inputs.to_config(), "source": self.data_source.to_config(),
            "cnncli": __version__, checkpoint.NETWORK: self.fingerprint,
        }

    def save(self, name: str) -> Path:
        for key, arr in self.net.params.items():
            if not np.all(np.isfinite(arr)):
                raise TrainingStopped(f"parameter '{key}' holds NaN or infinite values; "
                                      f"not saving {name}. The last good checkpoint is kept.")
        try:
            return checkpoint.save(self.cfg.out / name, self.net.state_dict(), self.opt.state_dict(),
                                   self.meta())
        except OSError as e:
            raise TrainingStopped(f"cannot write {self.cfg.out / name}: {e.strerror or e}") from None

    def write_metrics(self) -> None:
        for name, text in ((runs.METRICS, runs.metrics_csv([asdict(r) for r in self.history])),
                           (runs.GRADIENTS, runs.gradients_csv(self.flow.history))):
            try:
                write_text_atomic(self.cfg.out / name, text)
            except OSError as e:
                raise TrainingStopped(f"cannot write {self.cfg.out / name}: {e.strerror or e}") from None

    # -- loop --
    def make_batch(self, images: np.ndarray, draws: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
        """uint8 images (n, C, H, W) → the model's float input, augmented when ``draws`` are given."""
        return self.inputs.batch(images, self.dtype, self.data_source.normalise, draws)

    def fresh_partial(self) -> dict[str, Any]:
        """The running sums of an epoch not yet begun (the task's own among them: :meth:`tasks.Classification.step`)."""
        return {"loss_sum": 0.0, "seen": 0, "seconds": 0.0, **self.task.sums()}

    def score(self, images: np.ndarray, y) -> tasks.Score:
        out = self.net.predict(images, self.score_batch, self.source, self.make_batch)
        return self.task.score(out, y, self.inputs, self.loss)

    def test_score(self, checkpoint_name: str, epoch: int) -> runs.TestScore:
        s = self.score(self.test_images, self.test_labels)
        if isinstance(self.task, tasks.Detection):
            return runs.TestScore(checkpoint_name, epoch, s.loss, None, s.value, s.map50_95)
        return runs.TestScore(checkpoint_name, epoch, s.loss, s.value)

    def run(self) -> RunResult:
        cfg = self.cfg
        self.first_epoch = self.epoch + 1  # the epoch this invocation starts in (resumed runs: a later one)
        self.reporter.start(RunStart(cfg, len(self.x_train), len(self.x_val), len(self.test_images),
                                     self.graph.total_params, self.steps_per_epoch, self.epoch,
                                     self.batch, cfg.out, self.inputs, self.data_source.notes,
                                     getattr(self.net, "description", ""), self.advice, self.head, self.start,
                                     self.frozen, self.replan, self.task.kind, self.task.terms))
        bs = cfg.batch_size
        n = len(self.x_train)
        augmentation = self.inputs.augmentation
        noted_fallback = False
        while self.epoch < cfg.epochs:
            order = _shuffle(cfg.seed, self.epoch, n)
            draws = augmentation.draws(cfg.seed, self.epoch, n) if augmentation.active else None
            p = self.partial
            t0 = time.perf_counter() - p["seconds"]
            for b in range(self.batch, self.steps_per_epoch):
                idx = order[b * bs:(b + 1) * bs]
                k = len(idx)
                drawn = None if draws is None else (draws.dy[idx], draws.dx[idx], draws.flip[idx])
                x = self.make_batch(self.x_train[idx], drawn)
                y = self.task.target(self.y_train[idx], self.inputs, drawn, self.dtype)
                self.opt.lr = self.last_lr = learning_rate(cfg.schedule, self.plan, self.step)
                self.net.passes = self.step  # dropout's masks are numbered by the step: a resumed run draws them again
                before = None if self.group is None else {k: v.copy() for k, v in self.net.buffers.items()}
                try:
                    loss_value, out = self.net.loss_and_backward(x, y, self.loss)
                except WorkerLost as e:
                    return self.worker_lost(e, before)
                if self.net.processes_failed and not noted_fallback:
                    noted_fallback = True
                    self.reporter.note(f"{self.net.processes_failed}; splitting batches across "
                                       "threads instead (slower)")
                if not math.isfinite(loss_value):
                    self.stop_non_finite(loss_value)
                self.flow.add(self.net.grads, self.net.params, self.last_lr)
                self.opt.step(self.net.grads)
                self.step += 1
                self.batch = b + 1
                p["loss_sum"] += loss_value * k
                for key, value in self.task.step(out, y).items():
                    p[key] += value
                p["seen"] += k
                elapsed = time.perf_counter() - t0
                p["seconds"] = elapsed
                self.reporter.step(StepProgress(self.epoch + 1, cfg.epochs, self.batch, self.steps_per_epoch,
                                                p["loss_sum"] / p["seen"],
                                                p["correct"] / p["seen"] if "correct" in p else None,
                                                p["seen"] / max(elapsed, 1e-9), self.last_lr))
                if self.interrupts.signal_name:
                    return self.interrupted()
            self.finish_epoch(t0)
            if self.interrupts.signal_name:
                return self.interrupted(saved=True)
        return self.complete()

    def finish_epoch(self, t0: float) -> None:
        p = self.partial
        train_seconds = p["seconds"]
        if not self.lead:
            # A data-parallel worker only computes: the lead scores, writes and reports.
            self.epoch, self.batch = self.epoch + 1, 0
            self.partial = self.fresh_partial()
            return
        val = self.score(self.x_val, self.y_val) if len(self.x_val) else None
        if val is not None and not math.isfinite(val.loss):
            self.stop_non_finite(val.loss, "validation ")
        seen = p["seen"]
        detecting = isinstance(self.task, tasks.Detection)
        record = EpochRecord(self.epoch + 1, p["loss_sum"] / seen, None if detecting else p["correct"] / seen,
                             None if val is None else val.loss, None if val is None or detecting else val.value,
                             self.last_lr, seen / max(train_seconds, 1e-9), time.perf_counter() - t0,
                             {t: p[t] / seen for t in self.task.terms} if detecting else None,
                             val.value if detecting and val is not None else None,
                             val.map50_95 if detecting and val is not None else None)
        self.flow.end_epoch(self.epoch + 1, self.net.params)
        self.epoch += 1
        self.batch = 0
        self.partial = self.fresh_partial()
        self.history.append(record)
        score = record.score
        improved = self.best_score is None or score is None or score > self.best_score
        if improved:
            self.best_epoch, self.best_score = record.epoch, score
        self.write_metrics()
        self.save("last.npz")
        if improved:
            self.save("best.npz")
        self.reporter.epoch_end(record)

    def stop_non_finite(self, value: float, what: str = "") -> None:
        last = self.cfg.out / "last.npz"
        kept = (f"the last good checkpoint, {last} (epoch {self.epoch}), is kept"
                if last.exists() else "no checkpoint had been written yet")
        raise TrainingStopped(
            f"the {what}loss became {value} at epoch {self.epoch + 1}, step {self.batch + 1} "
            f"(learning rate {self.last_lr:.4g}); training stopped and {kept}. "
            "A lower --lr (or a warm-up) usually helps.")

    def interrupted(self, saved: bool = False) -> RunResult:
        self.reporter.note(f"{self.interrupts.signal_name} received: saving a checkpoint")
        path = self.cfg.out / "last.npz" if saved else self.save("last.npz")
        return self.result("interrupted", checkpoint=path)

    def worker_lost(self, error: Exception, buffers: dict[str, np.ndarray] | None) -> RunResult:
        """Another process of the group stopped mid-step: the lead saves the state before that step."""
        reason = f"a data-parallel process stopped ({error})"
        if not self.lead:
            return self.result("stopped", reason=reason)
        for key, value in (buffers or {}).items():
            self.net.buffers[key][...] = value  # the failed step's forward had moved the running statistics
        path = self.save("last.npz")
        return self.result("stopped", checkpoint=path, reason=reason)

    def complete(self) -> RunResult:
        """Score the test set under last.npz (the weights now) and best.npz, and write test.json."""
        if not self.lead:
            return self.result("completed")
        last = self.test_score(runs.LAST, self.epoch)
        # best.npz holds last.npz's weights when the last epoch was the best: no second pass.
        best = (dataclasses.replace(last, checkpoint=runs.BEST) if self.best_epoch == self.epoch
                else self.score_best())
        scores = (last,) if best is None else (last, best)
        try:
            write_text_atomic(self.cfg.out / runs.TEST, runs.test_json(len(self.test_images), last, best))
        except OSError as e:
            raise TrainingStopped(f"cannot write {self.cfg.out / runs.TEST}: {e.strerror or e}") from None
        return self.result("completed", test_loss=last.loss, test_acc=last.accuracy, test_map50=last.map50,
                           test_map50_95=last.map50_95, n_test=len(self.test_images),
                           checkpoint=self.cfg.out / runs.LAST, test_scores=scores)

    def score_best(self) -> runs.TestScore | None:
        """The test set under this run folder's best.npz (loaded into the network: training is over); None
        when the folder has none (a run resumed into a new folder that has not improved there)."""
        path = self.cfg.out / runs.BEST
        if not path.is_file():
            return None
        best = checkpoint.load(path)
        self.net.load_state_dict(best.weights(), source=str(path))
        return self.test_score(runs.BEST, best.epoch)

    def result(self, status: str, **extra: Any) -> RunResult:
        best_val = _best_validation(self.history, self.best_epoch)
        return RunResult(self.cfg, self.cfg.out, status, self.epoch, list(self.history), self.best_epoch,
                         best_val, metric=self.task.metric, seconds=time.perf_counter() - self.started,
                         signal_name=self.interrupts.signal_name, batch=self.batch,
                         steps_per_epoch=getattr(self, "steps_per_epoch", 0),
                         dataset_title=self.data_source.title if hasattr(self, "data_source") else "",
                         lead=self.lead, files=tuple(runs.listing(self.cfg.out)) if self.lead else (),
                         first_epoch=getattr(self, "first_epoch", 1), **extra)


def _but_units(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    """A head parameter's shape without its units' axis: a dense head's last (in, units), a detector's
    convolution's first (filters, in, kh, kw)."""
    return tuple(shape[1:]) if kind == "conv" else tuple(shape[:-1])


def _best_validation(history: list[EpochRecord], best_epoch: int | None) -> float | None:
    """The best epoch's validation score (:attr:`EpochRecord.val_score`); None without one."""
    return None if best_epoch is None else history[best_epoch - 1].val_score


def finished(config: RunConfig) -> RunResult | None:
    """The record of a resumed run that has nothing left to do: its checkpoint has trained every epoch
    ``config`` asks for and its folder holds the test scores. None for any other run."""
    if config.resume is None:
        return None
    ckpt = checkpoint.load(config.resume)
    folder = Path(config.resume).parent
    if ckpt.epoch < config.epochs or ckpt.meta.get("batch", 0) or not (folder / runs.TEST).is_file():
        return None
    record = runs.load(folder)
    test = record.test or {}
    scores = runs.test_scores(test)
    source = record.config.get("source")
    try:
        history = [EpochRecord(**r) for r in ckpt.meta["history"]]
        best_epoch = ckpt.meta["best_epoch"]
        best_val = _best_validation(history, best_epoch)
    except (KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{ckpt.path}: its training state is incomplete ({e})") from None
    return RunResult(config, folder, "finished", ckpt.epoch, history, best_epoch, best_val,
                     test_loss=scores[0].loss if scores else None, test_acc=scores[0].accuracy if scores else None,
                     test_map50=scores[0].map50 if scores else None,
                     test_map50_95=scores[0].map50_95 if scores else None,
                     metric=tasks.Detection.metric if history and history[0].terms is not None else "accuracy",
                     n_test=int(test.get("n", 0)), checkpoint=Path(config.resume), test_scores=scores,
                     files=tuple(runs.listing(folder)),
                     dataset_title=str(source.get("title", "")) if isinstance(source, dict) else "")


def train(config: RunConfig, reporter: Reporter | None = None, group=None) -> RunResult:
    """Run the training ``config`` describes; progress goes to ``reporter``.

    Returns when the last epoch is done (status ``completed``, with the test
    scores), or after Ctrl-C/SIGTERM once a checkpoint is saved (``interrupted``).
    A second Ctrl-C stops at once (``aborted``); the previous checkpoint stays.
    A non-finite loss raises :class:`TrainingStopped`. With ``nproc`` > 1 the
    torch engine's processes are started here (or joined, under ``torchrun``);
    a lost process ends the run with status ``stopped`` and a checkpoint.
    A resumed run that had already finished returns at once (status ``finished``) and writes nothing.
    """
    done = finished(config)
    if done is not None:
        if reporter is not None:
            reporter.close()
        return done
    if group is None and config.engine == "torch":
        from cnncli.exchange import torch_distributed

        group = torch_distributed.from_environment(config.device)
        if group is None and config.nproc > 1:
            return torch_distributed.launch(config, reporter, train)
    if group is not None and not group.lead:
        reporter = None  # only the lead reports
    reporter = reporter or SilentReporter()
    interrupts = _Interrupts(active=group is None or group.lead)
    run = _Run(config, reporter, interrupts, group)
    try:
        with interrupts:
            try:
                run.prepare()
                return run.run()
            except KeyboardInterrupt:
                interrupts.signal_name = interrupts.signal_name or "SIGINT"
                return run.result("aborted")
    finally:
        if hasattr(run, "net"):
            run.net.close()
        reporter.close()
