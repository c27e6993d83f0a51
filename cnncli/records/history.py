"""A run's history, read from its folder: the numbers behind ``plot``'s and ``compare``'s pictures.

:func:`curves` gathers loss and accuracy per epoch of one or more runs (training
and validation); :func:`gradient_map` gathers one run's gradient flow as a
layers × epochs table (:mod:`cnncli.records.gradflow` says what the numbers are).
Both read what the folder holds now, so a run that is still training shows its
finished epochs and a resumed one all of them. Drawing is
:mod:`cnncli.render.plot`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnncli.errors import UsageError
from cnncli.records import runs

#: Columns of a run's curves: (metrics.csv field, what it is); a classifier has the accuracies, a detector the mAPs.
CURVES = (("train_loss", "training loss"), ("val_loss", "validation loss"),
          ("train_acc", "training accuracy"), ("val_acc", "validation accuracy"),
          ("val_map50", "validation mAP@0.5"), ("val_map50_95", "validation mAP@0.5:0.95"))
#: The charts of ``plot``: (the fields drawn together, the title); a chart none of the runs has is left out.
PANELS = ((("train_loss", "val_loss"), "loss"), (("train_acc", "val_acc"), "accuracy (%)"),
          (("val_map50", "val_map50_95"), "validation mAP (%)"))
#: The fields drawn as percentages.
PERCENT = ("train_acc", "val_acc", "val_map50", "val_map50_95")
#: Gradient-flow values a heat map can show: gradients.csv field -> its title.
GRADIENT_METRICS = {"grad_norm": "gradient norm ‖∂E/∂W‖", "update_ratio": "update ratio lr·‖∂E/∂W‖/‖W‖",
                    "weight_norm": "weight norm ‖W‖"}
#: Layer kinds a gradient map shows unless asked for every parametrised layer: the ones that
#: transform (their gradient is the lecture's ∂E/∂W), not the normalisations between them.
WEIGHT_KINDS = ("conv", "dense", "subsample")
#: Error curves (``compare``'s) are drawn on a logarithmic axis: errors fall geometrically in training, and
#: the depth experiment asks which model is lower at the end, where a linear axis squeezes them together.
ERRORS_ON_LOG_AXIS = True


@dataclass
class RunCurves:
    """One run's per-epoch metrics; a value is None where the run has none (no validation set)."""

    label: str
    folder: str
    model: str
    dataset: str
    complete: bool
    epochs_planned: int | None
    epochs: list[int]
    values: dict[str, list[float | None]]      # CURVES field -> one value per epoch
    test_acc: float | None = None
    test_map50: float | None = None            # a detector's

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "folder": self.folder, "model": self.model, "dataset": self.dataset,
                "complete": self.complete, "epochs_planned": self.epochs_planned, "epochs": self.epochs,
                **self.values, "test_acc": self.test_acc, "test_map50": self.test_map50}


@dataclass
class Curves:
    runs: list[RunCurves]
    empty: list[str] = field(default_factory=list)   # runs with no finished epoch yet

    def panels(self) -> list[tuple[tuple[str, ...], str]]:
        """The charts (:data:`PANELS`) some run has values for."""
        return [(keys, title) for keys, title in PANELS
                if any(v is not None for r in self.runs for k in keys for v in r.values[k])]

    @property
    def x_range(self) -> tuple[int, int]:
        """Epoch 1 to the last one planned or done, so that a run in progress shows what is left."""
        last = max([r.epochs_planned or 0 for r in self.runs] + [r.epochs[-1] for r in self.runs])
        return 1, max(last, 1)

    def to_json(self) -> dict[str, Any]:
        return {"runs": [r.to_json() for r in self.runs], "without_epochs": self.empty}


@dataclass
class GradientMap:
    """One run's gradient flow: ``values[layer][epoch]`` of ``metric``, layers in network order."""

    label: str
    folder: str
    model: str
    metric: str
    layers: list[str]
    kinds: list[str]
    epochs: list[int]
    values: list[list[float | None]]

    @property
    def title(self) -> str:
        return f"{self.label} ({self.model}): {GRADIENT_METRICS[self.metric]} by layer (input on top) and epoch"

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "folder": self.folder, "model": self.model, "metric": self.metric,
                "epochs": self.epochs, "layers": [{"layer": name, "kind": kind, "values": row}
                                                  for name, kind, row in zip(self.layers, self.kinds, self.values)]}


def _labels(folders: Sequence[runs.RunFolder]) -> list[str]:
    # Folder names, unless two runs share one (runs/a/x and runs/b/x): then parent/name.
    names = [f.label for f in folders]
    return [f"{f.path.parent.name}/{f.label}" if names.count(f.label) > 1 else f.label for f in folders]


def curves(paths: Sequence[str | Path]) -> Curves:
    """The training curves of the run folders ``paths``, in the order given."""
    if not paths:
        raise UsageError("give at least one run folder, e.g. cnncli plot runs/lenet5-<time>")
    folders = [runs.load(p) for p in paths]
    out, empty = [], []
    for folder, label in zip(folders, _labels(folders)):
        if not folder.metrics:
            empty.append(label)
            continue
        out.append(RunCurves(
            label=label, folder=str(folder.path), model=folder.model, dataset=str(folder.config.get("dataset", "")),
            complete=folder.complete, epochs_planned=folder.epochs_planned,
            epochs=[row["epoch"] for row in folder.metrics],
            values={key: [row.get(key) for row in folder.metrics] for key, _ in CURVES},
            test_acc=folder.test.get("accuracy") if folder.test else None,
            test_map50=folder.test.get("map50") if folder.test else None))
    if not out:
        which = ", ".join(str(p) for p in paths)
        raise UsageError(f"{which}: no epoch has finished yet (metrics.csv gets a row at the end of each "
                         "epoch); plot again once one has")
    return Curves(out, empty)


def gradient_map(path: str | Path, metric: str = "grad_norm", all_layers: bool = False) -> GradientMap:
    """One run's gradient flow; by default only the layers of :data:`WEIGHT_KINDS`."""
    if metric not in GRADIENT_METRICS:
        raise UsageError(f"--metric must be one of {', '.join(GRADIENT_METRICS)}, got {metric!r}")
    folder = runs.load(path)
    if not folder.gradients:
        why = ("no epoch has finished yet" if not folder.metrics
               else "the run was trained by a cnncli that did not record gradient flow")
        raise UsageError(f"{folder.path} has no gradient records ({runs.GRADIENTS}): {why}")
    layers: dict[str, str] = {}
    table: dict[tuple[str, int], float | None] = {}
    for row in folder.gradients:
        layers.setdefault(row["layer"], row["kind"])
        table[(row["layer"], row["epoch"])] = row[metric]
    shown = [name for name, kind in layers.items() if all_layers or kind in WEIGHT_KINDS]
    if not shown:
        shown = list(layers)  # a network without weight layers of those kinds: show what it has
    epochs = sorted({row["epoch"] for row in folder.gradients})
    return GradientMap(folder.label, str(folder.path), folder.model, metric, shown, [layers[n] for n in shown],
                       epochs, [[table.get((name, e)) for e in epochs] for name in shown])
