"""``envmgr run``: sync when needed, then the command inside the venv (like ``uv run``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..core.errors import UserError
from .options import SyncOptions
from .syncer import sync


def activated_env(venv: Path, base: dict | None = None) -> dict:
    """The environment a command sees inside ``venv`` (as ``source VENV/bin/activate`` sets it)."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return env


def run(project: Path, name: str, cmd: list[str], options: SyncOptions | None = None, *,
        log: Callable[[str], None] | None = None) -> None:
    """Sync when needed, then replace this process with ``cmd`` inside the venv."""
    import shutil

    if not cmd:
        raise UserError("no command given", hint=f"envmgr run {name} -- python -c 'import torch'")
    result = sync(project, name, options, log=log)
    env = activated_env(result.venv)
    exe = shutil.which(cmd[0], path=env["PATH"])
    if exe is None:
        raise UserError(f"{cmd[0]}: command not found in {result.venv}/bin or on PATH")
    os.execve(exe, cmd, env)
