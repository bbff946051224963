"""The ``envmgr`` front door: ``lock`` and ``sync`` without typer, everything else through ``cli``.

The hot commands' parameters and bodies are in ``commands``. Anything its plain parser does
not read exactly (--help, --opt=value, -qU, an unknown option, a bad number, an extra
argument) goes through typer as usual; both paths run the same command body.
"""

from __future__ import annotations

import gc
import os
import sys

from . import commands
from .core.console import err, print_error
from .core.errors import EnvmgrError

FAST = {"lock": (commands.LOCK, commands.lock), "sync": (commands.SYNC, commands.sync)}


def main() -> None:
    """The console script: a hot command parsed here, anything else handed to typer.

    A hot command is short-lived and makes almost no cyclic garbage, so the cyclic
    collector stays off (its passes over the ~100 modules being imported cost ~4 ms),
    and it ends with ``os._exit`` once its output is flushed: tearing the interpreter
    down costs another ~10 ms, and every file it wrote is closed by then (``with``
    blocks, atomic renames), every worker thread joined.
    """
    argv = sys.argv[1:]
    command = FAST.get(argv[0]) if argv else None
    args = commands.parse(command[0], argv[1:]) if command else None
    if args is None:
        from .cli import main as typer_main

        typer_main()
        return
    gc.disable()
    try:
        rc = command[1](**args)
    except EnvmgrError as exc:
        print_error(exc)
        rc = exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        rc = 130
    _exit(rc)


def _exit(rc: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach the reader
            pass
    os._exit(rc)
