"""Drawing an evaluation: scores, a coloured confusion matrix, per-class table, worst mistakes.

Mistakes are drawn as pictures in the terminal (:mod:`cnncli.render.pictures`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from rich import box
from rich.columns import Columns
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from cnncli.commands.average_precision import RECALL_POINTS
from cnncli.commands.evaluation import DetectionEvalResult, EvalResult, Mistake
from cnncli.render import colour_on, head_record, say, tables, weights_head
from cnncli.render.charts import Series, line_chart
from cnncli.render.pictures import picture, shrink
from cnncli.words import count


def as_dict(result: EvalResult) -> dict[str, Any]:
    """The JSON record: the documented keys first, then the extra details."""
    return {
        "accuracy": result.accuracy,
        "loss": result.loss,
        "n": result.n,
        "confusion": result.confusion.astype(int).tolist(),
        "per_class": [{"class": c.cls, "precision": c.precision, "recall": c.recall, "f1": c.f1}
                      for c in result.per_class],
        "top_k": {"k": result.top_k, "accuracy": result.top_k_accuracy},
        "dataset": result.dataset,
        "split": result.split,
        "model": result.model,
        "checkpoint": str(result.checkpoint),
        "epoch": result.epoch,
        "step": result.step,
        "head": head_record(result.head),
    }


def detection_dict(result: DetectionEvalResult) -> dict[str, Any]:
    """A detector's JSON record: ``map50`` and ``map50_95`` first, then the loss, the classes' AP (null for a
    class without objects in the split) and their precision at the 101 recall points 0, 0.01, ..., 1 at IoU 0.5."""
    return {
        "map50": result.map50,
        "map50_95": result.map50_95,
        "loss": result.loss,
        "terms": result.terms,
        "n": result.n,
        "objects": result.objects,
        "per_class": [{"class": c.cls, "name": result.class_names[c.cls], "objects": c.truths,
                       "detections": c.detections, "ap50": c.ap50, "ap50_95": c.ap50_95, "recall50": c.recall50}
                      for c in result.per_class],
        "precision50": [None if c.precision50 is None else [round(float(p), 6) for p in c.precision50]
                        for c in result.per_class],
        "conf": result.conf,
        "iou": result.iou,
        "dataset": result.dataset,
        "split": result.split,
        "model": result.model,
        "checkpoint": str(result.checkpoint),
        "epoch": result.epoch,
        "step": result.step,
    }


def _dumps(record: dict[str, Any]) -> str:
    """Indented JSON with each confusion row and each per-class record kept on one line."""
    rows = {k: record[k] for k in ("confusion", "per_class", "precision50") if k in record}
    marked = {k: [f"@row{i}" for i in range(len(v))] if k in rows else v for k, v in record.items()}
    text = json.dumps(marked, indent=2)
    for key, values in rows.items():
        # Placeholders of one key are unique within that key's list, so search from its start.
        start = text.index(f'"{key}"')
        for i, value in enumerate(values):
            token = f'"@row{i}"'
            at = text.index(token, start)
            text = text[:at] + json.dumps(value) + text[at + len(token):]
            start = at
    return text


def _cell_style(count: int, row_total: int, diagonal: bool) -> str:
    if count == 0:
        return "dim"
    share = count / max(row_total, 1)
    if diagonal:
        return "bold green" if share >= 0.98 else "green" if share >= 0.9 else "yellow"
    return "bold red" if share >= 0.02 else "red" if share >= 0.005 else "yellow"


#: Columns of a mistake's picture at most (a 224×224 photo is shrunk to it; MNIST's and CIFAR's are smaller).
_MISTAKE_CELLS = 36

#: Up to this many classes the confusion matrix is drawn (one column each).
MAX_MATRIX_CLASSES = 20


#: Printed above the matrix rather than as its title, which Rich would wrap to the width of a narrow matrix.
CONFUSION_TITLE = "Confusion matrix (rows: true class, columns: predicted)"


def _confusion_table(result: EvalResult) -> Table:
    k = len(result.class_names)
    # No vertical rules: ten 4-digit columns and the row labels fit an 80-column terminal; more classes
    # are printed in blocks of columns (render.tables).
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("true", justify="right", no_wrap=True)
    for c in range(k):
        table.add_column(str(c), justify="right", no_wrap=True)
    for t in range(k):
        row = result.confusion[t]
        total = int(row.sum())
        cells = [Text(str(int(v)), style=_cell_style(int(v), total, p == t)) for p, v in enumerate(row)]
        table.add_row(f"{t} {_short(result.class_names[t])}".strip(), *cells)
    return table


def _short(name: str) -> str:
    return "" if name.isdigit() else name[:11]


def _per_class_table(result: EvalResult) -> Table:
    table = Table(title="Per class", title_justify="left", header_style="bold", show_edge=False,
                  pad_edge=False)
    # Only a class name may wrap (an image folder's names can be long); the numbers never do.
    table.add_column("class", overflow="fold")
    for name in ("precision", "recall", "F1", "images"):
        table.add_column(name, justify="right", no_wrap=True)
    rows = _listed(result)
    worst_f1 = min((c.f1 for c in rows), default=0.0)
    for c in rows:
        label = c.name if c.name == str(c.cls) else f"{c.cls} {c.name}"
        style = "red" if c.f1 == worst_f1 else ""
        table.add_row(label, f"{100 * c.precision:.2f} %", f"{100 * c.recall:.2f} %",
                      f"{100 * c.f1:.2f} %", f"{c.support:,}", style=style)
    return table


def _listed(result: EvalResult) -> list:
    """The per-class rows drawn: every class, except, past :data:`MAX_MATRIX_CLASSES` classes, those without
    an image in the split (a folder of a few ImageNet classes scored by 1000-class weights)."""
    if len(result.per_class) <= MAX_MATRIX_CLASSES:
        return list(result.per_class)
    return [c for c in result.per_class if c.support > 0]


def _mistake(m: Mistake, names: list[str], colour: bool) -> Group:
    caption = Text(f"#{m.index}: {names[m.true]} → {names[m.predicted]}\n", style="bold", no_wrap=True)
    caption.append(f"{100 * m.confidence:.1f} % sure (true {100 * m.true_prob:.1f} %)", style="")
    return Group(caption, picture(shrink(np.asarray(m.pixels), _MISTAKE_CELLS), colour, crop=True))


def _trained(result: EvalResult) -> str:
    """Where training stood when the checkpoint was written: what `cnncli train` calls it."""
    if result.epoch is None:
        return ""
    return f" (epoch {result.epoch + 1}, step {result.step})" if result.step else f" (epoch {result.epoch})"


def _ap(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def _ap_table(result: DetectionEvalResult) -> Table:
    table = Table(title="Per class", title_justify="left", header_style="bold", show_edge=False, pad_edge=False)
    table.add_column("class", overflow="fold")
    for name in ("objects", "found", "AP@0.5", "AP@.5:.95", "recall@0.5"):
        table.add_column(name, justify="right", no_wrap=True)
    scored = [c.ap50 for c in result.per_class if c.ap50 is not None]
    worst = min(scored, default=None)
    for c in result.per_class:
        name = result.class_names[c.cls]
        label = name if name == str(c.cls) else f"{c.cls} {name}"
        table.add_row(label, f"{c.truths:,}", f"{c.detections:,}", _ap(c.ap50), _ap(c.ap50_95), _ap(c.recall50),
                      style="red" if worst is not None and c.ap50 == worst else "")
    return table


def _pr_chart(result: DetectionEvalResult, colour: bool, width: int) -> Text:
    """Precision against recall at IoU 0.5: the mean over the classes (whose area is mAP@0.5) and the best and
    worst classes."""
    curves = [c for c in result.per_class if c.precision50 is not None]
    mean = np.mean([c.precision50 for c in curves], axis=0)
    series = [Series("all classes", list(zip(RECALL_POINTS, mean)))]
    best, worst = max(curves, key=lambda c: c.ap50), min(curves, key=lambda c: c.ap50)
    for label, c in (("best", best), ("worst", worst))[:1 if best is worst else 2]:
        series.append(Series(f"{label}: {result.class_names[c.cls]}", list(zip(RECALL_POINTS, c.precision50))))
    return line_chart(series, width=min(width, 72), height=10, colour=colour,
                      title="Precision–recall at IoU 0.5", x_range=(0.0, 1.0), x_label="recall", integer_x=False)


def show_detection(result: DetectionEvalResult, fmt: str, console: Console) -> None:
    """Print a detector's evaluation: its mAP, the loss by term, each class's AP and the precision–recall chart."""
    if fmt == "json":
        console.print(_dumps(detection_dict(result)), markup=False, highlight=False, soft_wrap=True)
        return
    title = result.dataset_title or result.dataset
    say(console, Text.assemble((result.model, "bold"), f" · {result.checkpoint}{_trained(result)} · {title} "
                                                       f"{result.split} ({count(result.n, 'image')}, "
                                                       f"{count(result.objects, 'object')})"))
    say(console, Text.assemble("mAP@0.5 ", (_ap(result.map50), "bold"), " · mAP@0.5:0.95 ",
                               (_ap(result.map50_95), "bold"), f" · loss {result.loss:.4f} (",
                               ", ".join(f"{k} {v:.3f}" for k, v in result.terms.items()), ")"))
    say(console, f"boxes scoring at least {result.conf:g}, after non-maximum suppression at IoU {result.iou:g}, "
                 "ranked as COCO ranks them (101-point interpolated precision)")
    console.print()
    console.print(_ap_table(result))
    if any(c.precision50 is not None for c in result.per_class):
        console.print()
        console.print(_pr_chart(result, colour_on(console), console.width))


def show(result: EvalResult | DetectionEvalResult, fmt: str, console: Console) -> None:
    """Print an evaluation as tables and pictures (``table``) or as one JSON object (``json``)."""
    if isinstance(result, DetectionEvalResult):
        show_detection(result, fmt, console)
        return
    if fmt == "json":
        console.print(_dumps(as_dict(result)), markup=False, highlight=False, soft_wrap=True)
        return
    title = result.dataset_title or result.dataset
    # Text.assemble, not markup: a path or a class name may hold square brackets.
    say(console, Text.assemble((result.model, "bold"), f" · {result.checkpoint}{_trained(result)} · {title} "
                                                       f"{result.split} ({count(result.n, 'image')})"))
    if result.head:
        say(console, weights_head(result.head))
    say(console, Text.assemble("accuracy ", (f"{100 * result.accuracy:.2f} %", "bold"),
                               f" ({result.n - int(np.trace(result.confusion)):,} wrong) · top-{result.top_k} "
                               f"{100 * result.top_k_accuracy:.2f} % · loss {result.loss:.4f}"))
    console.print()
    if len(result.class_names) <= MAX_MATRIX_CLASSES:
        say(console, CONFUSION_TITLE, "bold")
        tables.print_table(console, _confusion_table(result))
    else:  # a 100×100 matrix is no use in a terminal: the per-class table and the confused pairs say it
        say(console, f"Confusion matrix: {len(result.class_names)} classes, too many to draw "
                     "(it is in --format json)")
    console.print()
    console.print(_per_class_table(result))
    left = len(result.per_class) - len(_listed(result))
    if left:
        say(console, f"({count(left, 'class')} without an image in the split not listed; all are in "
                     "--format json)")
    if result.confused_pairs:
        console.print()
        console.print("[bold]Most confused[/] (true → predicted):", highlight=False)
        for p in result.confused_pairs:
            say(console, f"  {result.class_names[p.true]} → {result.class_names[p.predicted]}: "
                         f"{count(p.count, 'image')}")
    if result.worst:
        console.print()
        console.print("[bold]Most confident mistakes[/] (#index in the split):", highlight=False)
        colour = colour_on(console)
        console.print(Columns([_mistake(m, result.class_names, colour) for m in result.worst], padding=(1, 2)))
