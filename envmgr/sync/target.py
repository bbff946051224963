"""The venv a sync makes: where it is, what is there now, and the file lock beside it that
serialises the syncs of one venv. Standard library only: the no-op finds the venv through it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from ..core import settings
from .stamp import MARKER


def venv_path(project: Path, name: str, venv: Path | str | None = None) -> Path:
    """``--venv`` when given, else the documented default ``settings.venv_root(project)/NAME``."""
    return Path(os.path.abspath(venv if venv else settings.venv_root(project) / name))


def _flock_path(venv: Path) -> Path:
    return venv.parent / f".{venv.name}.envmgr-lock"


@contextmanager
def venv_lock(venv: Path, log: Callable[[str], None]):
    """Hold the venv's file lock (waiting, and saying so, while another sync holds it); yields
    its file descriptor, for the children that must keep it. What a killed sync of the venv
    left beside it is removed first."""
    path = _flock_path(venv)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another envmgr sync of {venv}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        from ..venv.uvtool import remove_orphans

        remove_orphans(venv)  # what a killed sync of this venv left beside it
        try:
            yield fh.fileno()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def state(venv: Path) -> str:
    """missing | empty | venv | ours (envmgr was creating it) | foreign (not a venv: never touched).

    Read from one listing of the folder: a sync that is creating the venv meanwhile (the folder
    made, then the marker put in it) is seen as empty or ours, never as foreign."""
    if venv.is_symlink():
        return "foreign"
    try:
        names = os.listdir(venv)
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:  # a file, or a path under one
        return "foreign" if os.path.lexists(venv) else "missing"
    if MARKER in names:
        return "ours"
    if "pyvenv.cfg" in names and (venv / "pyvenv.cfg").is_file():
        return "venv"
    return "foreign" if names else "empty"


def clear(venv: Path) -> None:
    """Empty a venv (ours or a real venv) but keep the marker that says it is ours."""
    import shutil

    for entry in venv.iterdir():
        if entry.name == MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
