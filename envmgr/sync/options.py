"""What the caller asks of a sync: the options ``envmgr sync``, ``sync --check`` and ``envmgr run``
share (declared for the command line once, in ``commands.SYNC_SHARED``), as one value that
every step of a sync is handed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


class SyncOptions:
    """A sync's options. A plain class with slots: dataclasses costs ~10 ms to import, half a no-op sync."""

    __slots__ = ("venv", "python", "locked", "frozen", "offline", "find_links", "skip_driver_check", "bundle")

    def __init__(self, *, venv: Path | str | None = None, python: str | None = None, locked: bool = False,
                 frozen: bool = False, offline: bool = False, find_links: Iterable[Path | str] | None = (),
                 skip_driver_check: bool = False, bundle: Path | str | None = None):
        self.venv = venv  # --venv as given; None: settings.venv_root(project)/NAME
        self.python = python  # --python as given; None: the lock's version, found
        self.locked = locked  # a stale lock fails instead of being re-locked
        self.frozen = frozen  # the lock as it is, not checked against the profile
        self.bundle = Path(bundle) if bundle else None  # a bundle (folder or tar) to take the files from
        self.offline = offline or self.bundle is not None  # files from the cache, --find-links or the bundle only
        self.find_links = [Path(d) for d in find_links or ()]
        self.skip_driver_check = skip_driver_check

    @property
    def requested(self) -> str | None:
        """``--python`` with its links resolved (what stamps and recipes record), or None."""
        return os.path.realpath(self.python) if self.python else None
