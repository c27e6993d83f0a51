"""Drawing ``cnncli compare``: each run as ``train`` draws it, under a bar for the whole experiment, then
a table of the runs and their error curves together (He et al. 2016, Figure 6)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from cnncli.commands.compare import CompareResult, Entry, Experiment, done_fraction
from cnncli.records.history import ERRORS_ON_LOG_AXIS, Curves
from cnncli.render import colour_on, say
from cnncli.render.charts import line_chart
from cnncli.render.plot import CHART_ROWS, save, series, width
from cnncli.render.training import Reporter, duration, percent


class ExperimentView:
    """Hands each run a training reporter whose bar also says where the experiment stands."""

    def __init__(self, experiment: Experiment, console: Console):
        self.experiment, self.console = experiment, console
        self.started = time.monotonic()
        self.first: float | None = None     # the experiment's share done when this invocation began

    def reporter(self, index: int, entry: Entry) -> Reporter:
        n = len(self.experiment.entries)
        self.console.rule(f"run {index + 1} of {n}: {entry.name}", style="dim")

        def overall(epoch: int, batch: int, steps: int) -> str:
            done = done_fraction(self.experiment, index, epoch - 1 + batch / max(steps, 1))
            if self.first is None:
                self.first = done
            gained = done - self.first
            left = ((time.monotonic() - self.started) / gained * (1 - done)) if gained > 1e-4 else None
            eta = duration(left) if left is not None else "…"
            return f"experiment {100 * done:4.1f} % eta {eta:>6} │ {entry.name}"

        return Reporter(self.console, overall)


def show(result: CompareResult, curves: Curves, fmt: str, console: Console, figure: Path | None = None) -> None:
    """The runs' final errors and their training and validation error curves (or JSON); ``figure``: a file."""
    from cnncli.render import figures

    path = save(lambda: figures.curves_figure(curves, error=True), figure, console, fmt) if figure else None
    experiment = result.experiment
    if fmt == "json":
        record = {"folder": str(experiment.folder), "status": result.status, "settings": experiment.settings,
                  "limit": experiment.limit, **curves.to_json(), **({"file": path} if path else {})}
        console.print(json.dumps(record, indent=2), markup=False, highlight=False, soft_wrap=True)
        return
    # The folder above the table, not as its title: Rich would wrap a long path to the table's width.
    say(console, f"{experiment.folder}: {result.status}", "italic")
    # The same weights compare scores every model by: the last epoch's (a run's best.npz is in test.json).
    table = Table(header_style="bold", caption="test acc: the last epoch's weights (last.npz)",
                  caption_justify="left")
    for name in ("model", "epochs", "train error", "val error", "test acc", "time"):
        table.add_column(name, justify="left" if name == "model" else "right")
    for run in result.results:
        last = run.history[-1] if run.history else None
        table.add_row(run.config.name, f"{run.epochs_done}/{experiment.epochs}",
                      percent(1 - last.train_acc) if last else "—",
                      percent(1 - last.val_acc) if last and last.val_acc is not None else "—",
                      percent(run.test_acc), duration(sum(r.seconds for r in run.history)))
    console.print(table)
    if not curves.runs:
        return
    colour, chart_width = colour_on(console), width(console)
    for key, title in (("train_acc", "training error (%)"), ("val_acc", "validation error (%)")):
        lines = series(curves, (key,), lambda v: 100 * (1 - v))
        if lines:
            console.print()
            console.print(line_chart(lines, width=chart_width, height=CHART_ROWS, colour=colour, title=title,
                                     x_range=curves.x_range, x_label="epoch", log_y=ERRORS_ON_LOG_AXIS))
