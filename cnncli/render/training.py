"""Drawing a training run: download bars, a live bar per epoch, a table row per finished epoch.

On a terminal the bar shows the running loss and accuracy, images per second
and the time left in the epoch, and each finished epoch is printed above it as
a row of one table. When stdout is not a terminal (a log file, CI), nothing is
redrawn: the same table, a row per epoch, and a plain line per download.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Column, Table
from rich.text import Text

from cnncli.commands import recipe
from cnncli.commands.training import EpochRecord, Frozen, Replan, RunResult, RunStart, Start, StepProgress
from cnncli.data import DownloadEvent
from cnncli.model.head import HeadChange
from cnncli.records import runs
from cnncli.render import head_sizes, say
from cnncli.render.downloads import Downloads
from cnncli.words import count

_COLUMNS = (("epoch", 7), ("train loss", 10), ("train acc", 9), ("val loss", 9), ("val acc", 8),
            ("lr", 9), ("img/s", 7), ("time", 7))


def _detection_columns(terms: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """A detector's table: its training loss, then the loss's terms (cnncli.engine.heads), in 80 columns (images a
    second are in metrics.csv and on the bar)."""
    return (("epoch", 5), ("loss", 6), *((t, 6) for t in terms), ("val loss", 8), ("mAP50", 5), ("lr", 7),
            ("time", 6))


def percent(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def advice(a: recipe.Advice) -> str:
    """One line on a recipe that does not fit its data (:func:`cnncli.commands.recipe.check`) and what to change."""
    if a.problem == recipe.SMALL_BATCH:
        text = (f"batches of {count(a.batch_size, 'image')} are too few for batch norm's statistics (fewer "
                f"than {a.wanted}): training normalises by a noisy batch, validation and test by running averages")
    else:
        why = (f"with batch norm, fewer than {a.wanted} steps per epoch leave its running statistics (what "
               "validation and test use) behind the weights, and their scores can collapse"
               if a.batchnorm else
               f"fewer than {a.wanted} and each epoch of the recipe is a handful of updates")
        text = (f"{count(a.n_train, 'training image')} in batches of {a.batch_size} are "
                f"{count(a.steps_per_epoch, 'step')} per epoch: {why}")
    if a.better_batch is not None:
        return f"{text}; --batch-size {a.better_batch} gives {count(a.better_steps, 'step')} per epoch"
    return f"{text}; no batch size fits {count(a.n_train, 'image')}: train on more images" + (
        ", or a model without batch norm" if a.batchnorm else "")


def head_line(changes: tuple[HeadChange, ...], title: str) -> str:
    """The model's heads sized to the data's classes: ``head: fc: 10 → 3 units for the 3 classes of ...``."""
    if changes[0].unit == "classes":  # a detector's head
        return f"head: {head_sizes(changes)}, those of {title}"
    return f"head: {head_sizes(changes)} for the {count(changes[0].after, 'class')} of {title}"


def replan_line(r: Replan) -> str:
    """A resumed run's schedule spread over another number of epochs: from where, at what rate."""
    epoch, step = divmod(r.step, r.steps_per_epoch)
    text = (f"--epochs {r.epochs} changes the run's plan of {count(r.planned, 'epoch')}: its {r.schedule} schedule "
            f"is spread over {r.epochs} instead, so step {step + 1} of epoch {epoch + 1} trains at learning rate "
            f"{r.lr:.3g}, where the {r.planned}-epoch plan gives {r.planned_lr:.3g}")
    if r.finished:
        return text + " (its descent starts again from part-way)"
    return text + f"; resume with --epochs {r.planned} to keep the plan"


def start_line(start: Start) -> str:
    """Where a fine-tuning run's weights came from, and what of them it does not use."""
    parts = [f"weights: {start.origin} (fine-tuning: a new run from epoch 0, a fresh optimizer state)"]
    if start.replaced:
        parts.append(f"{', '.join(start.replaced)} not taken from them ({start.units} units there): a fresh "
                     "one, initialised as the model file says")
    if start.fresh:
        parts.append(f"{', '.join(start.fresh)} not in them: fresh")
    return "; ".join(parts)


def frozen_line(frozen: Frozen) -> str:
    """What ``--freeze`` froze: how many parameters learn, and what batch norm does there."""
    what = frozen.value if frozen.value == frozen.last else f"{frozen.value} (up to {frozen.last})"
    line = (f"frozen: {what}, {count(frozen.params, 'parameter')} fixed; {frozen.trainable:,} train")
    if frozen.batchnorm:
        line += f"; batch norm there uses its running statistics ({count(frozen.batchnorm, 'layer')})"
    return line


def _row(r: EpochRecord, epochs: int) -> list[str]:
    if r.terms is not None:
        return [f"{r.epoch}/{epochs}", f"{r.train_loss:.4g}", *(f"{v:.3g}" for v in r.terms.values()),
                "—" if r.val_loss is None else f"{r.val_loss:.4g}", _map(r.val_map50), f"{r.lr:.2g}",
                duration(r.seconds)]
    return [f"{r.epoch}/{epochs}", _num(r.train_loss), percent(r.train_acc), _num(r.val_loss), percent(r.val_acc),
            f"{r.lr:.3g}", f"{r.images_per_s:,.0f}", duration(r.seconds)]


def _table(header: bool, terms: tuple[str, ...] | None = None) -> Table:
    """The epochs' table: a classifier's columns, or (``terms``) a detector's."""
    cols = [Column(name, width=w, justify="right", no_wrap=True)
            for name, w in (_COLUMNS if terms is None else _detection_columns(terms))]
    return Table(*cols, box=None, show_header=header, header_style="bold", pad_edge=False)


class _Progress(Progress):
    """The epoch's bar, under a line that says where a bigger job stands (its ``overall`` field, when
    not empty): on a line of its own, so that the bar keeps its numbers in 80 columns."""

    def get_renderables(self):
        overall = next((t.fields.get("overall") for t in self.tasks), "")
        if overall:
            yield Text(overall, no_wrap=True, overflow="ellipsis")
        yield self.make_tasks_table(self.tasks)


class Reporter:
    """Receives :mod:`cnncli.commands.training`'s events and draws them on ``console``.

    ``overall(epoch, batch, steps)``, when given, is text shown at the head of the
    bar: where a bigger job that this run is part of stands (``cnncli compare``).
    """

    def __init__(self, console: Console, overall: Callable[[int, int, int], str] | None = None):
        self.console = console
        self.overall = overall
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.downloads = Downloads(console)
        self.epochs = 0
        self.epoch = 0
        self.terms: tuple[str, ...] | None = None  # a detector's loss terms

    # -- downloads --
    def download(self, event: DownloadEvent) -> None:
        self.downloads(event)

    def _stop_downloads(self) -> None:
        self.downloads.close()

    # -- training --
    def start(self, run: RunStart) -> None:
        self._stop_downloads()
        c = run.config
        self.epochs = c.epochs
        self.terms = run.terms if run.task == "detection" else None
        title = run.inputs.dataset if run.inputs is not None else c.dataset
        opt = f"{c.optimizer} lr {c.lr:g}"
        if c.optimizer == "sgd" and c.momentum:
            opt += f" momentum {c.momentum:g}" + (" nesterov" if c.nesterov else "")
        if c.weight_decay:
            opt += f" weight decay {c.weight_decay:g}"
        sched = c.schedule + (f" after {count(c.warmup_epochs, 'warm-up epoch')}" if c.warmup_epochs else "")
        lines = [
            f"Training {c.name} on {title}: {run.n_train:,} training, {run.n_val:,} validation, "
            f"{count(run.n_test, 'test image')}; {count(run.params, 'parameter')} ({c.dtype})",
            f"{opt}, {sched} schedule, batch {c.batch_size}, {count(c.epochs, 'epoch')}, seed {c.seed}"
            f" → {run.run_dir}",
        ]
        lines += [f"data: {note}" for note in run.notes]
        if run.engine:
            lines.append(f"engine: {run.engine}")
        if run.inputs is not None and (not run.inputs.identity or run.inputs.augmentation.active):
            lines.append(f"input: {run.inputs.describe()}; augmentation: {run.inputs.augmentation.describe()}")
        if run.head:
            lines.append(head_line(run.head, title))
        if run.start is not None:
            lines.append(start_line(run.start))
        elif c.weights is not None:
            lines.append(f"weights: fine-tuning the weights of {c.weights}")
        if run.frozen is not None:
            lines.append(frozen_line(run.frozen))
        if c.resume is not None:
            at = (f"in epoch {run.start_epoch + 1} at step {run.start_batch} of {run.steps_per_epoch}"
                  if run.start_batch else f"after epoch {run.start_epoch}")
            lines.append(f"resuming from {c.resume} {at}")
        for line in lines:
            say(self.console, line)
        if run.replan is not None:
            say(self.console, f"warning: {replan_line(run.replan)}", "yellow")
        for a in run.advice:
            say(self.console, f"warning: {advice(a)}", "yellow")
        # The epochs' table, one row per finished epoch, on a terminal and in a log alike (80 columns).
        self.console.print(_table(header=True, terms=self.terms))
        if not self.live:
            return
        accuracy = () if self.terms is not None else (TextColumn("acc {task.fields[acc]:6.2%}"),)
        self.progress = _Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(bar_width=30), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), *accuracy,
            TextColumn("{task.fields[ips]:>6,.0f} img/s"), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("", total=run.steps_per_epoch, completed=run.start_batch,
                                           epoch=f"{run.start_epoch + 1}/{c.epochs}", loss=0.0, acc=0.0, ips=0.0,
                                           overall=self._overall(run.start_epoch + 1, run.start_batch,
                                                                 run.steps_per_epoch))
        self.epoch = run.start_epoch + 1

    def step(self, progress: StepProgress) -> None:
        if self.progress is None or self.task is None:
            return
        if progress.epoch != self.epoch:
            # A new epoch: restart the bar so its rate and ETA are the new epoch's own.
            self.epoch = progress.epoch
            self.progress.reset(self.task, total=progress.steps, completed=progress.batch - 1)
        # After the epoch's last step the bar stays up while the validation set is scored.
        label = f"{progress.epoch}/{progress.epochs}" + (" validating" if progress.batch == progress.steps else "")
        self.progress.update(self.task, completed=progress.batch, epoch=label,
                             loss=progress.loss, acc=progress.accuracy, ips=progress.images_per_s,
                             overall=self._overall(progress.epoch, progress.batch, progress.steps))

    def _overall(self, epoch: int, batch: int, steps: int) -> str:
        return self.overall(epoch, batch, steps) if self.overall else ""

    def epoch_end(self, record: EpochRecord) -> None:
        table = _table(header=False, terms=self.terms)
        table.add_row(*_row(record, self.epochs))
        (self.progress.console if self.progress is not None else self.console).print(table)

    def note(self, text: str) -> None:
        target = self.progress.console if self.progress is not None else self.console
        say(target, text)

    def close(self) -> None:
        self._stop_downloads()
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _score(score: runs.TestScore, same_as_best: bool) -> str:
    files = f"{runs.BEST} and {score.checkpoint}" if same_as_best else score.checkpoint
    epoch = f", epoch {score.epoch}" if score.epoch is not None else ""
    if score.accuracy is None:
        return (f"[bold]{_map(score.map50)}[/] mAP@0.5, {_map(score.map50_95)} mAP@0.5:0.95 ({files}{epoch}; "
                f"loss {_num(score.loss)})")
    return f"[bold]{percent(score.accuracy)}[/] ({files}{epoch}; loss {_num(score.loss)})"


def _map(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def test_line(scores: tuple[runs.TestScore, ...], n_test: int, title: str) -> str:
    """The test accuracy under each checkpoint, best.npz first (what `cnncli eval --weights .../best.npz`
    prints again); one number when the best epoch was the last. Console markup."""
    last = next(s for s in scores if s.checkpoint == runs.LAST)
    best = next((s for s in scores if s.checkpoint == runs.BEST), None)
    if best is not None and best.epoch is not None and best.epoch == last.epoch:
        shown = _score(last, same_as_best=True)
    else:
        shown = " · ".join(_score(s, False) for s in (best, last) if s is not None)
    what = "Test accuracy" if last.accuracy is not None else "Test"
    return f"[bold]{what}[/] {shown} on {count(n_test, 'test image')} of {escape(title)}"


def _files(result: RunResult) -> str:
    return f"run folder {result.run_dir}: {', '.join(result.files)}"


def _epochs_run(result: RunResult) -> str:
    """The epochs this invocation trained: all of them, or a resumed run's last few by number."""
    first, last = result.first_epoch, result.epochs_done
    if first <= 1:
        return count(last, "epoch")
    return f"epoch {last}" if first >= last else f"{count(last - first + 1, 'epoch')} ({first}–{last})"


def show_result(result: RunResult, console: Console) -> None:
    """The end of a run: the test accuracy, or how to continue an interrupted one."""
    if not result.lead:
        return  # a data-parallel worker: process 0 reports the run
    c = result.config
    title = result.dataset_title or c.dataset
    if result.status == "finished":
        say(console, f"{result.run_dir} has trained all its {count(result.epochs_done, 'epoch')} already: "
                     "nothing to do, and nothing in it was changed")
    if result.status in ("completed", "finished") and result.test_scores:
        say(console, Text.from_markup(test_line(result.test_scores, result.n_test, title)))
    if result.status == "finished":
        say(console, f"to train longer: cnncli train {c.model} --resume {result.checkpoint} --epochs N "
                     f"(N more than {result.epochs_done})")
        return
    if result.status == "completed":
        parts = [f"{_epochs_run(result)} in {duration(result.seconds)}"]
        if result.best_epoch is not None and result.best_val_acc is not None:
            value = percent(result.best_val_acc) if result.metric == "accuracy" else _map(result.best_val_acc)
            parts.append(f"best validation {result.metric} {value} at epoch {result.best_epoch}")
        say(console, "; ".join(parts))
        say(console, _files(result))
        return
    if result.status == "interrupted":
        where = (f"in epoch {result.epochs_done + 1} (step {result.batch} of {result.steps_per_epoch})"
                 if result.batch else f"after epoch {result.epochs_done}")
        say(console, Text.assemble((f"Interrupted by {result.signal_name}", "yellow"),
                                   f" {where}; checkpoint saved: {result.checkpoint}"))
        console.print(f"continue with: cnncli train {c.model} --resume {result.checkpoint}",
                      markup=False, highlight=False, soft_wrap=True)
        return
    if result.status == "stopped":
        where = f"in epoch {result.epochs_done + 1} (step {result.batch} of {result.steps_per_epoch})"
        say(console, Text.assemble(("Stopped", "red"), f" {where}: {result.reason}; checkpoint saved: "
                                                       f"{result.checkpoint}"))
        console.print(f"continue with: cnncli train {c.model} --resume {result.checkpoint}",
                      markup=False, highlight=False, soft_wrap=True)
        return
    last = result.last_path
    kept = f"the last checkpoint is {last}" if last.exists() else "no checkpoint was written"
    say(console, Text.assemble(("Stopped at once", "red"), f" without saving; {kept}"))
