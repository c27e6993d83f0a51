"""Drawing dataset downloads: a bar per file on a terminal, a plain line per event elsewhere.

:class:`Downloads` is the ``progress`` callback that :func:`cnncli.data.load`
takes; ``train``, ``eval`` and ``backprop-trace --sample`` all pass one, so a
first run on a new machine shows what it fetches, from where, and how fast.
An image folder decoded into the cache is shown the same way, counted in files.

A mirror that fails is shown once: when another mirror then delivers the file,
its failure is printed as the file is done; when none does, the error that
ends the command lists every mirror and why it failed, and nothing is printed
here.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from cnncli.data import DownloadEvent
from cnncli.render import say
from cnncli.words import count


class _Amount(ProgressColumn):
    """Bytes and speed for a download, files and files per second for a folder being decoded."""

    def __init__(self):
        super().__init__()
        self.size, self.speed = DownloadColumn(), TransferSpeedColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("unit") == "files":
            rate = f" {task.speed:,.0f} files/s" if task.speed else ""
            total = "?" if task.total is None else f"{int(task.total):,}"
            files = "file" if task.total == 1 else "files"
            return Text(f"{int(task.completed):,}/{total} {files}{rate}", style="progress.download")
        return Text.assemble(self.size.render(task), " ", self.speed.render(task))


class Downloads:
    """Receives :class:`~cnncli.data.DownloadEvent`s and draws them on ``console``; :meth:`close` (or a
    ``with`` block) ends the bars."""

    def __init__(self, console: Console):
        self.console = console
        self.live = console.is_terminal
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.failed: dict[str, list[DownloadEvent]] = {}  # by file: mirrors that failed, shown once it is done

    def __call__(self, event: DownloadEvent) -> None:
        files = event.unit == "files"
        if event.status == "failed":
            self.failed.setdefault(event.filename, []).append(event)
            return
        if event.status == "done":
            for failure in self.failed.pop(event.filename, []):
                self._print_failure(failure)
        if not self.live:
            if event.status == "start" and files:
                say(self.console, f"decoding the {event.filename} of {event.url} ({count(event.total, 'file')}) "
                                  "into the cache")
            elif event.status == "start":
                size = f" ({event.total / 1e6:.1f} MB)" if event.total else ""
                say(self.console, f"downloading {event.filename} from {event.url}{size}")
            elif event.status == "done":
                say(self.console, f"{'decoded' if files else 'downloaded'} {event.filename}")
            return
        if self.progress is None:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), _Amount(),
                                     TimeRemainingColumn(), console=self.console)
            self.progress.start()
        task = self.tasks.get(event.filename)
        if event.status == "start":
            if task is None:
                task = self.tasks[event.filename] = self.progress.add_task(
                    f"{'decoding' if files else 'downloading'} {event.filename}", total=event.total,
                    unit=event.unit)
            else:
                self.progress.reset(task, total=event.total)
        elif task is None:
            return
        if event.status in ("start", "progress"):
            self.progress.update(task, completed=event.done, total=event.total)
        elif event.status == "done":
            self.progress.update(task, description=f"[green]✓[/] {event.filename}",
                                 completed=event.total or event.done)

    def _print_failure(self, event: DownloadEvent) -> None:
        console = self.progress.console if self.progress is not None else self.console
        console.print(f"{event.url} failed: {event.message}", style="yellow" if self.live else None, markup=False,
                      highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __enter__(self) -> Downloads:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
