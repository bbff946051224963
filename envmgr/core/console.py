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
    return (lambda line: err.print(line, markup=False, highlight=False)) if show else None


def print_error(exc) -> None:
    """An EnvmgrError as users see it: one red line, then the tool's explanation if any."""
    from rich.text import Text

    err.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False)
    if exc.detail:
        err.print(exc.detail, highlight=False, markup=False)


class DownloadBar:
    """fetch's Reporter as a rich progress bar on stderr, drawn only once a download starts."""

    def __init__(self) -> None:
        self._progress = None

    def start(self, total: int, label: str) -> None:
        if not err.is_terminal:
            return
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                  console=err, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(label, total=total)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
