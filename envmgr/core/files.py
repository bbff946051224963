"""Atomic file writes: the one way envmgr puts a file where a reader (or a killed process's
successor) may find it. A reader sees the old file or the whole new one, never a part; a
failure or a kill leaves at most a hidden ``.NAME.*.tmp`` beside it, never the target half
written. Standard library only (the fast paths write stamps and recipes through it).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(dest: Path | str, *, mode: int = 0o644, fsync: bool = True):
    """Yield a temporary path beside ``dest``; on a clean exit it is fsynced (unless ``fsync``
    is false: caches whose every read is verified), given ``mode`` and renamed over ``dest``.
    On any exception it is removed and ``dest`` is left as it was."""
    import tempfile  # here, not above: a fast path that only reads never pays for it (~4 ms)

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_atomic(path: Path | str, data: str | bytes, *, mode: int = 0o644, fsync: bool = True,
                 skip_unchanged: bool = True) -> bool:
    """Write ``data`` (text as UTF-8 with ``\\n`` line ends, or bytes) to ``path`` atomically.
    With ``skip_unchanged`` (the default), a file that already holds exactly ``data`` is left alone (its
    mtime too) and False is returned; True when written."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path = Path(path)
    if skip_unchanged:
        try:
            if path.read_bytes() == raw:
                return False
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            pass
    with atomic_path(path, mode=mode, fsync=fsync) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(raw)
    return True


def keep_newest(folder: Path | str, keep: int, suffix: str = ".json") -> None:
    """Remove all but the ``keep`` most recently written ``*suffix`` files of ``folder`` (a cache
    of recipes: best effort, a file that cannot be read or removed is left)."""
    entries = []
    for e in os.scandir(folder):
        if e.name.endswith(suffix):
            try:
                entries.append((e.stat().st_mtime_ns, e.path))
            except OSError:
                pass
    for _, path in sorted(entries)[:-keep]:
        try:
            os.unlink(path)
        except OSError:
            pass
