"""Recipes: how a sync made a venv from nothing, kept so the next one can do it again cheaply.

Input: a sync that created a venv (the slow path: lock read and checked, interpreter and
driver checked, every file fetched and verified). Output: a recipe in the cache,
``CACHE/sync-recipes/KEY.json``: the PEP 751 lock uv installed (naming envmgr's verified
copies), the interpreter, the files, and the packages the venv must then hold. A later
sync of a venv that does not exist yet (a second checkout, a CI runner with the cache
restored, a deleted venv) finds the recipe by its key and replays it: ``uv venv`` and
``uv pip sync`` with the same arguments, then the same checks of the result.

The hard part is trusting a recipe no more than the slow path would trust its inputs.
The key holds everything the slow path's decisions depend on that is cheap to read: the
lock's sha256 and path, the profile, the requested interpreter, envmgr's own code and the
kernel (marker values). The recipe then holds what must still be true, checked before
anything on disk changes: the profile files and the resolver are what the lock was fresh
against (unless ``--frozen``), the interpreter is the same binary, uv is the same binary,
every file is still in the cache at its size. The driver is asked again, as the slow path
asks it. Any doubt returns None and the slow path runs. uv checks every hash again, as it
does on the slow path; the result is checked the same way and stamped the same way.

What this buys is the slow path's imports and reading (the lock model, packaging, TOML):
~40 ms of a warm sync's ~60 ms before uv starts. It imports only the standard library and
envmgr's light modules (stamp, distinfo, uvtool, core.files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core import settings
from ..core.errors import EnvmgrError
from ..core.files import keep_newest, write_atomic
from .stamp import sha256_of

FORMAT = 1
KEEP = 64  # recipes kept in the cache (the oldest go first)


def folder() -> Path:
    return settings.cache_dir() / "sync-recipes"


def _code_identity() -> list:
    """envmgr's own modules (name, size, mtime): a changed envmgr never replays an old recipe."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = []
    for folder, dirs, names in os.walk(package):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if name.endswith(".py"):
                st = os.stat(os.path.join(folder, name))
                out.append([os.path.relpath(os.path.join(folder, name), package), st.st_size, st.st_mtime_ns])
    return out


def key(*, profile: str, lock_path: Path, lock_digest: str, requested: str | None) -> str:
    """The name of the recipe for these inputs (see the module docstring for what it covers)."""
    uname = os.uname()
    parts = {"format": FORMAT, "code": _code_identity(), "profile": profile, "lock": [str(lock_path), lock_digest],
             "requested": requested, "kernel": [uname.release, uname.version, uname.machine]}
    return sha256_of(json.dumps(parts, sort_keys=True).encode())[:40]


def _binary(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


def record(recipe_key: str, *, base: str, version: str, fresh: dict | None, variant: str, cuda: str,
           min_driver: str, pylock: str, files: list[str], packages: dict[str, str], lines: list[str],
           folders: list[str]) -> None:
    """Keep how this venv was made (best effort: a cache that cannot be written is no error)."""
    from ..venv.uvtool import uv_bin

    try:
        data = {
            "format": FORMAT,
            "python": {"base": os.path.realpath(base), "binary": _binary(base), "version": version},
            "fresh": fresh,
            "uv": _binary(uv_bin()),
            "driver": {"variant": variant, "cuda": cuda, "min_driver": min_driver},
            "files": [[f, os.stat(f).st_size] for f in files],
            "pylock": pylock,
            "packages": packages,
            "lines": lines,
            "folders": folders,  # the stamp's (relative to the venv): the same inputs make the same tree
        }
        d = folder()
        # A cache every read of which is checked: not fsynced; rewritten even when the same, as
        # its mtime is its age for keep_newest.
        write_atomic(d / f"{recipe_key}.json", json.dumps(data, sort_keys=True), fsync=False, skip_unchanged=False)
        keep_newest(d, KEEP)
    except OSError:
        pass


def load(recipe_key: str, *, frozen: bool, requested: str | None) -> dict | None:
    """The recipe under ``recipe_key`` when everything it relies on still holds; else None."""
    from ..venv.uvtool import running_python, uv_bin
    from .stamp import still_fresh

    try:
        with open(folder() / f"{recipe_key}.json", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    try:
        if data.get("format") != FORMAT:
            return None
        py = data["python"]
        # The interpreter the slow path would pick: --python, else envmgr's own when it is
        # the lock's version (otherwise it asks uv, which only the slow path does).
        base = requested or running_python(".".join(py["version"].split(".")[:2]))
        if base is None or os.path.realpath(base) != py["base"] or _binary(base) != py["binary"]:
            return None
        if _binary(uv_bin()) != data["uv"]:
            return None
        if not frozen and not still_fresh(data["fresh"]):
            return None
        for path, size in data["files"]:
            if os.stat(path).st_size != size:
                return None
    except (OSError, EnvmgrError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return data
