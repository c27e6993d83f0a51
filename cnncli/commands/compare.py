"""``cnncli compare``: several models trained with one recipe, then their curves together.

The experiment of He et al. 2016 (Figures 1 and 6, the lecture's slides 41–42):
train plain and residual networks of two depths the same way and compare their
training error. One recipe — the first model's ``train:`` settings for the
dataset, then the flags — is resolved once and given to every model, with the
same seed; each model trains into its own run folder ``<out>/<model name>/``.

The experiment folder holds ``compare.yaml`` (the models and the recipe). Run
the command again with the same models and ``--out`` and it goes on with the
recipe the folder holds (flags left out keep it): finished runs are kept, an
interrupted one resumes from its ``last.npz`` (exactly, as ``train --resume``
does), ``--epochs`` may grow, which trains every run further, and models may
be added, which train with the folder's recipe. A model left out or another
recipe in an existing folder is an error, never an overwrite.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnncli import atomic
from cnncli.atomic import write_text_atomic
from cnncli.commands import tasks, training
from cnncli.data.source import open_source
from cnncli.errors import ModelMismatch, UsageError
from cnncli.model import head, spec
from cnncli.model.graph import build
from cnncli.records import inputs, runs

RECORD = "compare.yaml"
#: Settings that may differ when an experiment goes on: more epochs train every run further.
_MAY_GROW = ("epochs",)


@dataclass(frozen=True)
class Entry:
    """One model of the experiment: how the user named it, its name, its run folder and its cost."""

    model: str
    name: str
    folder: Path
    macs: int                 # per image, forward: the share of the experiment's time it will take


@dataclass
class Experiment:
    folder: Path
    entries: list[Entry]
    settings: dict[str, Any]   # the recipe: every training setting
    limit: int | None
    dtype: str
    data_dir: Path | None = None

    @property
    def epochs(self) -> int:
        return int(self.settings["epochs"])

    def record(self) -> dict[str, Any]:
        return {"models": [e.model for e in self.entries], "settings": self.settings, "limit": self.limit,
                "dtype": self.dtype}


@dataclass
class CompareResult:
    experiment: Experiment
    results: list[training.RunResult]   # in model order, as far as the experiment got
    status: str                         # "completed" or the stopped run's status

    @property
    def exit_code(self) -> int:
        return next((r.exit_code for r in self.results if r.exit_code), 0)


def plan(models: list[str], overrides: dict[str, Any], *, limit: int | None = None, data_dir: Path | None = None,
         out: Path | None = None, dtype: str | None = None) -> Experiment:
    """Check the models and the recipe before anything trains; an existing ``out`` must be this experiment."""
    if len(models) < 2:
        raise UsageError(f"compare needs at least two models, got {len(models)}: e.g. "
                         "cnncli compare plain20 plain56 resnet20 resnet56")
    specs = [spec.load(m) for m in models]
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"model {twice[0]} is given twice: give each model once")
    folder = atomic.check_folder(out, "--out") if out is not None else runs.new_folder("compare")
    saved = _saved(folder)
    if saved is not None:
        # Going on: what the command line leaves out is what the experiment was started with.
        overrides = {**(saved.get("settings") or {}), **{k: v for k, v in overrides.items() if v is not None}}
        limit = saved.get("limit") if limit is None else limit
        dtype = saved.get("dtype") if dtype is None else dtype
    training.check_limit_and_dtype(limit, dtype)
    # The recipe: the first model's settings for the dataset, then the flags (checked as train checks them).
    settings = training.resolve(specs[0], overrides)
    entries = []
    for model, model_spec in zip(models, specs):
        if tasks.detects(model_spec):
            raise UsageError(f"compare sets classifiers' errors side by side; {model_spec.name} is a detector: train "
                             "each detector with `cnncli train` and draw their runs together with `cnncli plot RUN...`")
        source = open_source(settings["dataset"], data_dir, model_spec.input)
        # Every model must take the dataset before any trains (train would find out only when it starts),
        # its head sized to the dataset's classes as train sizes it.
        graph = build(head.resize(model_spec, len(source.classes)).spec, aux=True)
        inputs.plan(source.title, source.image_shape, graph.input_shape, model_spec.name)
        inputs.check_outputs(graph[graph.output], len(source.classes), source.title, model_spec.name)
        entries.append(Entry(model, model_spec.name, folder / model_spec.name, graph.macs))
    experiment = Experiment(folder, entries, settings, limit, dtype or "float32", data_dir)
    if saved is not None:
        _check_same(experiment, saved)
    return experiment


def _saved(folder: Path) -> dict[str, Any] | None:
    """The record of the experiment in ``folder``; None for a new or empty folder; a foreign folder is an error."""
    path = folder / RECORD
    if not folder.exists():
        return None
    if not path.is_file():
        if any(folder.iterdir()):
            raise UsageError(f"--out {folder} exists and is not an experiment folder (it has no "
                             f"{RECORD}): choose a new folder")
        return None
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    if (not isinstance(saved, dict) or not isinstance(saved.get("models"), list)
            or not isinstance(saved.get("settings", {}), dict)):
        raise UsageError(f"{path} is not an experiment record (models, settings, limit, dtype): choose a new --out")
    return saved


def _check_same(experiment: Experiment, saved: dict[str, Any]) -> None:
    """An experiment goes on with its models and recipe: models may be added, and of the recipe only the
    epochs may grow."""
    mine = experiment.record()
    missing = [m for m in saved["models"] if m not in mine["models"]]
    if missing:
        raise UsageError(f"{experiment.folder} holds the experiment {saved['models']}; {mine['models']} leaves out "
                         f"{missing[0]}: go on with its models (more may be added), or choose a new --out")
    for key in ("limit", "dtype"):
        if saved.get(key) != mine[key]:
            raise UsageError(f"{experiment.folder} was started with {key} {saved.get(key)}, not {mine[key]}: "
                             "an experiment keeps its recipe; choose a new --out to change it")
    old = saved.get("settings") or {}
    for key, value in mine["settings"].items():
        if key in _MAY_GROW and isinstance(old.get(key), int) and value >= old[key]:
            continue
        if old.get(key) != value:
            raise UsageError(f"{experiment.folder} was started with {key} {old.get(key)}, not {value}: an "
                             "experiment keeps its recipe (only --epochs may grow); choose a new --out")


def _config(experiment: Experiment, entry: Entry) -> training.RunConfig:
    """How ``entry`` goes on: a fresh run, or a resumed one (:func:`training.finished` when it has trained
    every epoch)."""
    last = entry.folder / runs.LAST
    if last.is_file():
        return _resume(entry, {"epochs": experiment.epochs}, data_dir=experiment.data_dir)
    if entry.folder.exists():
        # Stopped before its first checkpoint: only the configuration (and temporary files) were written.
        leftovers = [p for p in entry.folder.iterdir() if p.name != runs.CONFIG and not p.name.endswith(".part")]
        if leftovers:
            raise UsageError(f"{entry.folder} holds {leftovers[0].name} but no last.npz: it is not a run this "
                             "experiment can continue; move it away or choose a new --out")
        for p in entry.folder.iterdir():
            p.unlink()
        entry.folder.rmdir()
    overrides = {k: v for k, v in experiment.settings.items()}
    return training.configure(entry.model, overrides, limit=experiment.limit, data_dir=experiment.data_dir,
                              out=entry.folder, dtype=experiment.dtype)


def _resume(entry: Entry, overrides: dict[str, Any], **options: Any) -> training.RunConfig:
    """The configuration of ``entry``'s run from its ``last.npz``; a model file changed since is an error."""
    try:
        return training.configure(entry.model, overrides, resume=entry.folder / runs.LAST, **options)
    except ModelMismatch:
        # train's advice (--skip-model-check) is not compare's: an experiment's runs must stay what they were.
        raise UsageError(f"{entry.folder} holds a run of another network than {entry.model} describes now (its "
                         "layers or wiring changed since): restore the model file, or choose a new --out") from None


def run(experiment: Experiment, reporter: Callable[[int, Entry], training.Reporter] | None = None) -> CompareResult:
    """Train every model in turn (``reporter(i, entry)`` draws run i); stops at the first interrupted run."""
    experiment.folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(experiment.folder / RECORD, yaml.safe_dump(experiment.record(), sort_keys=False))
    results = []
    for i, entry in enumerate(experiment.entries):
        config = _config(experiment, entry)
        done = training.finished(config)
        if done is not None:
            results.append(done)
            continue
        result = training.train(config, reporter(i, entry) if reporter else None)
        results.append(result)
        if result.status != "completed":
            return CompareResult(experiment, results, result.status)
    return CompareResult(experiment, results, "completed")


def done_fraction(experiment: Experiment, index: int, epochs_done: float) -> float:
    """How much of the experiment's work (epochs × MACs) is done when run ``index`` is ``epochs_done`` in."""
    total = sum(e.macs for e in experiment.entries) * experiment.epochs
    before = sum(e.macs for e in experiment.entries[:index]) * experiment.epochs
    return (before + experiment.entries[index].macs * epochs_done) / total if total else 0.0
