"""Run folders: the files ``cnncli train`` writes, and reading them back.

A run folder (``runs/<model>-<time>/`` unless ``--out``) holds

* ``config.yaml`` — the resolved configuration, written before the first step;
* ``metrics.csv`` — one row per finished epoch (:data:`METRIC_FIELDS`);
* ``gradients.csv`` — one row per finished epoch and parametrised layer
  (:data:`GRADIENT_FIELDS`; what the numbers are: :mod:`cnncli.records.gradflow`);
* ``last.npz`` — written at the end of every epoch and when interrupted;
* ``best.npz`` — the weights with the best validation accuracy so far;
* ``test.json`` — once the run is complete, the test set's loss and accuracy under each checkpoint:
  ``loss``, ``accuracy``, ``n`` (images), ``checkpoint`` (``last.npz``) and ``epoch`` are last.npz's,
  and ``best`` holds best.npz's (``checkpoint``, ``epoch``, ``loss``, ``accuracy``; the same numbers
  when the best epoch is the last). Files of older versions have the first three keys alone.

This module is the one home of the two CSV formats: training writes them with
:func:`metrics_csv` and :func:`gradients_csv`, and :func:`load` reads a folder,
also one that is still training: every file is replaced whole (atomically), so a
reader sees the previous version or the new one, never a torn one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnncli.errors import UsageError

METRIC_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "seconds")


def detection_fields(terms: tuple[str, ...]) -> tuple[str, ...]:
    """A detector's metrics.csv columns: the training loss, its terms (cnncli.engine.heads) and the validation mAP."""
    return ("epoch", "train_loss", *terms, "val_loss", "val_map50", "val_map50_95", "lr", "images_per_s", "seconds")
GRADIENT_FIELDS = ("epoch", "layer", "kind", "grad_norm", "update_ratio", "weight_norm")
_TEXT_FIELDS = ("layer", "kind")

CONFIG, METRICS, GRADIENTS, TEST = "config.yaml", "metrics.csv", "gradients.csv", "test.json"
LAST, BEST = "last.npz", "best.npz"
#: The files of a run folder in the order they are described above (what a listing shows first).
FILES = (CONFIG, METRICS, GRADIENTS, LAST, BEST, TEST)


def number(value: float | None) -> str:
    """A CSV cell: six significant digits, empty for a missing or undefined value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _csv(fields: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for row in rows:
        w.writerow([number(row[k]) if k not in _TEXT_FIELDS else row[k] for k in fields])
    return buf.getvalue()


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    """``metrics.csv``'s text: a header and one row per epoch record (a dict with :data:`METRIC_FIELDS`; a
    detector's, with its loss's ``terms``, :func:`detection_fields`)."""
    if rows and rows[0].get("terms") is not None:
        return _csv(detection_fields(tuple(rows[0]["terms"])), [{**row, **row["terms"]} for row in rows])
    return _csv(METRIC_FIELDS, rows)


def gradients_csv(rows: list[dict[str, Any]]) -> str:
    """``gradients.csv``'s text: a header and one row per (epoch, layer)."""
    return _csv(GRADIENT_FIELDS, rows)


@dataclass(frozen=True)
class TestScore:
    """The test set's scores under one checkpoint of a run (a line of ``test.json``): a classifier's loss and
    accuracy, or a detector's loss, mAP@0.5 and mAP@0.5:0.95 (its accuracy None)."""

    checkpoint: str           # the file in the run folder: LAST or BEST
    epoch: int | None         # epochs it had trained (None: a test.json of an older version)
    loss: float
    accuracy: float | None
    map50: float | None = None
    map50_95: float | None = None

    def fields(self) -> dict[str, Any]:
        """Its scores as test.json writes them (a detector's without ``accuracy``)."""
        if self.accuracy is None:
            return {"loss": self.loss, "map50": self.map50, "map50_95": self.map50_95}
        return {"loss": self.loss, "accuracy": self.accuracy}


def test_json(n: int, last: TestScore, best: TestScore | None) -> str:
    """``test.json``'s text: last.npz's scores at the top level (the keys older readers know), best.npz's
    under ``best``."""
    record: dict[str, Any] = {**last.fields(), "n": n, "checkpoint": last.checkpoint, "epoch": last.epoch}
    if best is not None:
        record["best"] = {"checkpoint": best.checkpoint, "epoch": best.epoch, **best.fields()}
    return json.dumps(record) + "\n"


def _score(record: dict[str, Any], default: str) -> TestScore | None:
    def value(key: str) -> float | None:
        v = record.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    accuracy, map50 = value("accuracy"), value("map50")
    if accuracy is None and map50 is None:
        return None
    loss = value("loss")
    return TestScore(str(record.get("checkpoint", default)), _int_or_none(record.get("epoch")),
                     math.nan if loss is None else loss, accuracy, map50, value("map50_95"))


def test_scores(test: dict[str, Any] | None) -> tuple[TestScore, ...]:
    """The scores a ``test.json`` record holds: last.npz's, then best.npz's when it says."""
    last = _score(test, LAST) if test else None
    if last is None:
        return ()
    best = test.get("best")
    best_score = _score(best, BEST) if isinstance(best, dict) else None
    return (last,) if best_score is None else (last, best_score)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def listing(folder: Path) -> list[str]:
    """The files in a run folder now: the known ones in :data:`FILES` order, then any others by name
    (temporary ``.*.part`` files of a write under way are not listed)."""
    try:
        names = [p.name for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")]
    except OSError:
        return []
    return [f for f in FILES if f in names] + sorted(n for n in names if n not in FILES)


def new_folder(name: str, parent: Path = Path("runs")) -> Path:
    """``runs/<name>-<time>``, never one that exists: a second folder in the same second gets a suffix."""
    base = parent / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


@dataclass
class RunFolder:
    """A run folder as read from disk; ``metrics`` and ``gradients`` hold the finished epochs so far."""

    path: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    gradients: list[dict[str, Any]] = field(default_factory=list)
    test: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """How charts and tables name the run: its folder's name."""
        return self.path.name

    @property
    def model(self) -> str:
        return str(self.config.get("name", "?"))

    @property
    def epochs_planned(self) -> int | None:
        value = self.config.get("epochs")
        return value if isinstance(value, int) else None

    @property
    def complete(self) -> bool:
        return self.test is not None


def _metric_fields(header: tuple[str, ...]) -> tuple[str, ...] | None:
    """The columns of a metrics.csv whose header is ``header``: a classifier's, or a detector's with its terms."""
    if header == METRIC_FIELDS:
        return header
    head, tail = detection_fields(())[:2], detection_fields(())[2:]
    if header[:2] == head and header[-len(tail):] == tail and len(header) > len(head) + len(tail):
        return header
    return None


def _read_csv(path: Path, fields) -> list[dict[str, Any]]:
    """The rows of a CSV file of ours; ``fields``: its columns, or a function of its header giving them (None: not
    one of ours)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []  # no epoch has finished yet
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return []
    expected = fields if isinstance(fields, tuple) else METRIC_FIELDS
    fields = fields(tuple(header)) if callable(fields) else fields
    if fields is None or tuple(header) != fields:
        raise UsageError(f"{path} is not a cnncli {path.name}: its header is {','.join(header)}, "
                         f"expected {','.join(expected)}")
    rows = []
    for line, cells in enumerate(reader, start=2):
        if len(cells) != len(fields):
            raise UsageError(f"{path}, line {line}: {len(cells)} values, expected {len(fields)}")
        row: dict[str, Any] = {}
        for key, cell in zip(fields, cells):
            try:
                row[key] = cell if key in _TEXT_FIELDS else (
                    int(cell) if key == "epoch" else None if cell == "" else float(cell))
            except ValueError:
                raise UsageError(f"{path}, line {line}: {key} is {cell!r}, not a number") from None
        rows.append(row)
    return rows


def load(path: str | Path) -> RunFolder:
    """Read the run folder ``path`` (or the folder of a file inside one, such as its ``last.npz``)."""
    path = Path(path)
    if path.is_file() and (path.parent / CONFIG).is_file():
        path = path.parent
    if not path.is_dir():
        raise UsageError(f"{path} is not a run folder: no such folder (`cnncli train` writes run folders "
                         "under runs/, or where --out says)")
    config_path = path / CONFIG
    if not config_path.is_file():
        raise UsageError(f"{path} is not a run folder: it has no {CONFIG} (`cnncli train` writes one into "
                         "every run folder, e.g. runs/lenet5-<time>/)")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UsageError(f"cannot read {config_path}: {e}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{config_path} is not a run's configuration (a mapping)")
    test = None
    try:
        test = json.loads((path / TEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {path / TEST}: {e}") from None
    return RunFolder(path, config, _read_csv(path / METRICS, _metric_fields),
                     _read_csv(path / GRADIENTS, GRADIENT_FIELDS), test if isinstance(test, dict) else None)
