"""Terminal output shared by the command-line front ends (``entry`` and ``cli``).

Nothing here imports typer or, until something is printed, rich: the hot commands
(``lock``, ``sync``) start the resolver or answer a no-op before either would load.
"""

from __future__ import annotations

import json
import sys


class _Console:
    """A rich Console made on first use: importing rich costs a fast command ~20 ms."""

    def __init__(self, **kwargs) -> None:
        self._kwargs, self._console = kwargs, None

    def line(self, text: str) -> None:
        """``text`` as it is (no markup, highlighting or emoji codes) and a newline. While neither
        console has loaded rich, nothing of rich's (a progress bar) is live on the terminal, so it
        is written directly: ``lock`` says what it resolves before uv starts, not ~20 ms later."""
        if out._console is None and err._console is None:
            (sys.stderr if self._kwargs.get("stderr") else sys.stdout).write(text + "\n")
        else:
            self.print(text, markup=False, highlight=False, emoji=False)

    def __getattr__(self, name: str):
        if self._console is None:
            from rich.console import Console

            self._console = Console(soft_wrap=True, **self._kwargs)
        return getattr(self._console, name)


out = _Console()
err = _Console(stderr=True)


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def line_log(show: bool):
    """A log callback printing plain lines on stderr, or None (quiet)."""
    return err.line if show else None


def print_error(exc) -> None:
    """An EnvmgrError as users see it: one red line, then the tool's explanation if any."""
    from rich.text import Text

    err.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False)
    if exc.detail:
        err.print(exc.detail, highlight=False, markup=False)


def _columns() -> list:
    """Description, bar, amount and rate: bytes (MB of MB, MB/s) for a download, else a count (12/30, 2.5/s)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TransferSpeedColumn,
    )
    from rich.text import Text

    class PerSecond(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.1f}/s" if speed else "?/s", style="progress.data.speed")

    class ByKind(ProgressColumn):
        def __init__(self, of_bytes: ProgressColumn, of_count: ProgressColumn) -> None:
            super().__init__()
            self.of_bytes, self.of_count = of_bytes, of_count

        def render(self, task):
            return (self.of_bytes if task.fields.get("unit") == "bytes" else self.of_count).render(task)

    return [TextColumn("{task.description}"), BarColumn(), ByKind(DownloadColumn(), MofNCompleteColumn()),
            ByKind(TransferSpeedColumn(), PerSecond())]


class DownloadBar:
    """Progress on stderr, drawn only once something starts: fetch's Reporter (``start``,
    ``advance``, ``finish``) is the bar of bytes downloaded, and :meth:`count` adds one of
    things done (packages installed) beside it; each shows its rate, and the bars go when
    every one has finished. Advancing is thread-safe (downloads and installs advance them)."""

    def __init__(self) -> None:
        self._progress = None
        self._task = None
        self._live = 0

    def _add(self, label: str, total: int, unit: str):
        if not err.is_terminal:
            return None
        if self._progress is None:
            from rich.progress import Progress

            self._progress = Progress(*_columns(), console=err._console, transient=True)  # the rich Console itself
            self._progress.start()
        self._live += 1
        return self._progress.add_task(label, total=total, unit=unit)

    def _advance(self, task, n: int) -> None:
        if task is not None and self._progress is not None:
            self._progress.advance(task, n)

    def _done(self, task) -> None:
        if task is None or self._progress is None:
            return
        self._live -= 1
        if self._live <= 0:
            self._progress.stop()
            self._progress, self._live = None, 0

    def start(self, total: int, label: str) -> None:
        self.finish()
        self._task = self._add(label, total, "bytes")

    def advance(self, n: int) -> None:
        self._advance(self._task, n)

    def finish(self) -> None:
        task, self._task = self._task, None
        self._done(task)

    def count(self, total: int, label: str) -> "_Count":
        """A bar of ``total`` things (``advance(n)``, ``finish()``) beside the download's."""
        return _Count(self, self._add(label, total, "count"))


class _Count:
    def __init__(self, bar: DownloadBar, task) -> None:
        self._bar, self._task = bar, task

    def advance(self, n: int) -> None:
        self._bar._advance(self._task, n)

    def finish(self) -> None:
        task, self._task = self._task, None
        self._bar._done(task)
