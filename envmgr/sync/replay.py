"""A missing venv made again from the recipe an earlier sync of the same inputs left (see
:mod:`envmgr.sync.recipe` for what a recipe holds and when it is trusted).

Same order as the slow path: every check before anything on disk changes, the venv created
under its file lock with the marker in place, the result checked, then stamped. Without the
slow path's imports: the lock model is loaded only when the result differs from the recipe.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ..core import settings
from . import recipe, stamp, target
from .options import SyncOptions
from .preflight import check_driver, driver_version
from .result import SyncResult


def replay(project: Path, name: str, venv: Path, options: SyncOptions, *, reporter, log: Callable[[str], None],
           started: float) -> SyncResult | None:
    """The venv made from its recipe; None when there is none that still holds (the slow path then runs)."""
    from ..venv import uvtool
    from ..venv.distinfo import broken, installed, site_packages

    lock_file = settings.lock_path(project, name)
    lock_bytes = _read_or_none(lock_file)
    if lock_bytes is None:
        return None
    requested = options.requested
    lock_digest = "sha256:" + stamp.sha256_of(lock_bytes)  # = Lock.digest()
    r = recipe.load(recipe.key(profile=name, lock_path=lock_file, lock_digest=lock_digest, requested=requested),
                    frozen=options.frozen, requested=requested)
    if r is None:
        return None
    d = r["driver"]
    warning = None if options.skip_driver_check else check_driver(d["variant"], d["cuda"], d["min_driver"],
                                                                  driver_version())
    with target.venv_lock(venv, log) as lock_fd:
        # Another sync made the venv, or re-locked, while we waited: the slow path decides.
        if os.path.lexists(venv) or _read_or_none(lock_file) != lock_bytes:
            return None
        if warning:
            log(f"warning: {warning}")
        log(f"{name}: creating {venv} with Python {r['python']['version']}")
        for line in r["lines"]:
            log(f"  {line}")
        stamp.drop(venv)
        uvtool.create_venv(venv, r["python"]["base"], prompt=name, allow_existing=True, keep_fds=(lock_fd,))
        if reporter is not None:
            reporter.start(len(r["packages"]), f"installing {len(r['packages'])} package(s)")
        try:
            uvtool.pip_sync(venv, r["pylock"], keep_fds=(lock_fd,))
        finally:
            if reporter is not None:
                reporter.advance(len(r["packages"]))
                reporter.finish()
        site = site_packages(venv)
        now = installed(site)
        packages = {n: i.version for n, i in now.items()}
        if (packages != r["packages"] or broken(site, now.values(), files=False)
                or os.path.realpath(venv / "bin" / "python") != r["python"]["base"]):
            from ..model import lockfile
            from ..venv import install

            install.verify(lockfile.read(lock_file).for_host(), venv)  # raises, naming what differs
        stamp.write(venv, profile=name, lock_path=lock_file, lock_digest=lock_digest,
                    fresh=None if options.frozen else r["fresh"], version=r["python"]["version"],
                    requested=requested, packages=packages, folders=r["folders"])
    return SyncResult(profile=name, venv=venv, lock=lock_file, noop=False, seconds=time.monotonic() - started,
                      installed=[f"{n}=={v}" for n, v in sorted(r["packages"].items())], created=True,
                      python=r["python"]["version"], warnings=[warning] if warning else [])


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
