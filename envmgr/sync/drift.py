"""``envmgr sync --check``: how a venv differs from its lock (and whether the lock is stale),
changing nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core import settings
from ..core.errors import UserError
from . import target
from .options import SyncOptions


class DriftReport:
    def __init__(self, profile: str, venv: Path, lock: Path, problems: list[str]):
        self.profile, self.venv, self.lock, self.problems = profile, venv, lock, problems

    @property
    def exact(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        if self.exact:
            return f"{self.profile}: {self.venv} matches {self.lock}"
        return f"{self.profile}: {self.venv} differs from {self.lock}:\n" + "\n".join(f"  {p}" for p in self.problems)

    def to_json(self) -> dict:
        return {"profile": self.profile, "venv": str(self.venv), "lock": str(self.lock), "exact": self.exact,
                "problems": self.problems}


def check(project: Path, name: str = "default", options: SyncOptions | None = None) -> DriftReport:
    """How the venv differs from the lock (and whether the lock is stale, unless ``--frozen``);
    changes nothing. Of ``options``, only ``venv``, ``python`` and ``frozen`` matter."""
    from ..lock import locker
    from ..model import lockfile
    from ..venv import install

    options = SyncOptions() if options is None else options
    path = target.venv_path(project, name, options.venv)
    lock_file = settings.lock_path(project, name)
    problems: list[str] = []
    if not options.frozen:
        fresh = locker.check(project, [name])[0]
        if not fresh.fresh:
            problems.append(f"the lock is stale: {'; '.join(fresh.reasons)}")
    lock = lockfile.read(lock_file).for_host()
    state = target.state(path)
    if state == "foreign":
        raise UserError(f"{path} exists and is not a venv", hint="pass --venv with the venv's path")
    if state in ("missing", "empty"):
        problems.append(f"{path} does not exist (run `envmgr sync {name}`)")
        return DriftReport(name, path, lock_file, problems)
    if state == "ours":
        problems.append("an earlier sync was interrupted")
    try:
        info = install.query_python(install.venv_python(path))
    except UserError as exc:
        problems.append(f"its python does not run ({exc.message})")
        return DriftReport(name, path, lock_file, problems)
    if options.python:
        requested = install.query_python(options.python)
        if os.path.realpath(requested.executable) != os.path.realpath(info.executable):
            problems.append(f"it runs {os.path.realpath(info.executable)}, not --python {options.python}")
    problems += install.drift(lock, path, info)
    return DriftReport(name, path, lock_file, problems)
