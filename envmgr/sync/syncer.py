"""Sync: a profile's lock -> its venv, exactly; instant when nothing changed; safe under faults.

Input: ``locks/pylock.NAME.toml`` (re-locked first when stale, unless ``--locked`` or
``--frozen``). Output: the venv at ``--venv`` or ``settings.venv_root(project)/NAME`` holding
exactly the lock's packages, every file's sha256 verified, and a stamp recording what it holds.

The hard problems and how they are solved:

* **No-op in well under a second.** The stamp (:mod:`envmgr.sync.stamp`, ``VENV/.envmgr-sync.json``)
  records the lock file's sha256, the profile files it was fresh against, the interpreter,
  and the mtime of every folder the installed files live in. A sync whose stamp still
  matches returns without the network and without importing anything but the standard
  library (:func:`envmgr.sync.result.noop`): the replay and the slow path are imported only
  when needed, and keep their heavy imports inside their functions.
* **A warm sync costs little more than uv's own.** A venv that does not exist yet is made
  from the recipe an earlier sync of the same inputs left in the cache (:mod:`envmgr.sync.replay`):
  the same uv commands and checks, without the lock model's imports and reading.
* **A failed sync leaves the previous venv usable.** Every file is fetched and hash-checked
  into the cache first (:mod:`envmgr.sync.slow`); the venv is touched only after that. (Where
  there was no venv, each package goes into the new one once its own file is verified, and a
  failure removes the new venv: the path is as it was.)
* **kill -9 at any point.** The stamp is removed before the venv is touched and written last
  (atomically), so an interrupted sync is noticed and redone; damaged packages (files listed
  in RECORD but gone) are reinstalled, a half-created venv (marker file inside) recreated.
* **Concurrent syncs of one venv** serialise on a file lock beside it (:mod:`envmgr.sync.target`);
  the later ones find the stamp the first one wrote.
* **Hand edits** (pip upgrades, deleted files) change a folder's entries and so miss the
  stamp; the slow path then repairs them; ``check`` (:mod:`envmgr.sync.drift`) reports them
  without changing anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from . import target
from .options import SyncOptions
from .result import SyncResult, noop


def _nolog(_: str) -> None:
    pass


def sync(project: Path, name: str = "default", options: SyncOptions | None = None, *, reporter=None,
         log: Callable[[str], None] | None = None) -> SyncResult:
    """Make the profile's venv exactly its lock: nothing when its stamp says it is, else a missing
    venv from its recipe, else the slow path. See the module docstring for the guarantees."""
    started = time.monotonic()
    options = SyncOptions() if options is None else options
    log = log or _nolog
    venv = target.venv_path(project, name, options.venv)
    if not (options.locked and options.frozen):
        done = noop(project, name, venv, options, started)
        if done is not None:
            return done
        if not options.find_links and not os.path.lexists(venv):
            from . import replay

            made = replay.replay(project, name, venv, options, reporter=reporter, log=log, started=started)
            if made is not None:
                return made
    from ..lock.facts import warn_after_sync
    from . import slow

    result = slow.sync(project, name, venv, options, reporter=reporter, log=log, started=started)
    warning = warn_after_sync(result.lock)  # the torch binary's arch list (read once a wheel) vs the lock's
    if warning:
        log(f"warning: {warning} (`envmgr lock {name} --verify` records the binary's)")
    return result
