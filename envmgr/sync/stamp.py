"""The stamp: what a synced venv holds, checked again without the lock model or the network.

Input: a venv and the project's lock and profile files. Output: the stamp
(``VENV/.envmgr-sync.json``), written last by a sync, and the answer to "is this venv still
exactly what the stamp says, for the same fresh lock?", which lets a sync with nothing to
do return in a few milliseconds.

The stamp records the lock file's sha256, the profile files it was fresh against (with the
resolver's identity), the interpreter, and the mtime of every folder the installed files
live in (from the RECORDs), plus a hash of the entry names of ``bin/`` and site-packages.

The hard part is making the stamp cheap to write (it is on every sync's path) yet strict
to check. Reading each folder's entries at write time costs ~20 ms for a CUDA torch venv,
so only mtimes are recorded (~3 ms). When a folder's mtime moved, the check lists it and
compares its entries with what the RECORDs put there, ignoring ``__pycache__`` (so imports
do not count as edits): a file added or removed by hand, or a package pip upgraded (its
dist-info folder renamed), misses, and the slow path repairs it. A file's bytes edited in
place are not read: no check that must answer in milliseconds can hash a 5 GB venv. This
module imports only the standard library, :mod:`envmgr.venv.distinfo` and (to write)
:mod:`envmgr.core.files`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..core.errors import EnvmgrError
from ..venv.distinfo import absolute, installed, record_names, record_paths, site_packages

STAMP = ".envmgr-sync.json"
MARKER = ".envmgr-syncing"  # inside a venv envmgr is creating or changing; removed with the stamp written
FORMAT = 2

LISTED = ("bin",)  # folders whose entries are not all from RECORDs (besides site-packages): hashed


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path | str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return sha256_of(fh.read())
    except OSError:
        return None


def names_hash(folder: str) -> str | None:
    """Hash of a folder's entry names, ``__pycache__`` left out; None when it cannot be read."""
    try:
        names = sorted(n for n in os.listdir(folder) if n != "__pycache__")
    except OSError:
        return None
    return hashlib.sha1("\0".join(names).encode()).hexdigest()


def resolver_key(resolver: str) -> list:
    """Changes when the resolver the lock was made with is upgraded (its version is a lock input)."""
    try:
        if resolver == "uv":
            from ..venv.uvtool import uv_bin

            st = os.stat(uv_bin())
        else:
            import importlib.util

            spec = importlib.util.find_spec("piptools")
            st = os.stat(spec.origin) if spec and spec.origin else None
    except (OSError, EnvmgrError, ImportError):  # no resolver found: a key that matches nothing recorded
        st = None
    return [resolver, st.st_size, st.st_mtime_ns] if st else [resolver]


def fresh_key(files, resolver: str) -> dict:
    """What a lock was fresh against: the profile files' sha256 and the resolver's identity."""
    return {"files": {str(p): file_sha(p) for p in files}, "resolver": resolver_key(resolver)}


def still_fresh(fresh: dict | None) -> bool:
    """Are the profile files and the resolver what they were when ``fresh`` was taken?"""
    if not fresh:
        return False
    if any(file_sha(p) != h for p, h in fresh["files"].items()):
        return False
    return resolver_key(fresh["resolver"][0]) == fresh["resolver"]


# -- reading and checking -----------------------------------------------------------------

def read(venv: Path) -> dict | None:
    try:
        with open(venv / STAMP, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def matches(stamp: dict, *, profile: str, lock_path: Path, venv: Path, python: str | None, frozen: bool) -> bool:
    """Does the venv still hold what the stamp says, for the same lock (and fresh profile)?"""
    lock = stamp.get("lock", {})
    if stamp.get("profile") != profile or lock.get("path") != str(lock_path):
        return False
    if f"sha256:{file_sha(lock['path'])}" != lock.get("digest"):
        return False
    if not frozen and not still_fresh(stamp.get("fresh")):
        return False
    py = stamp.get("python", {})
    if file_sha(venv / "pyvenv.cfg") != py.get("cfg") or os.path.realpath(venv / "bin" / "python") != py.get("base"):
        return False
    if python and os.path.realpath(python) not in (py.get("base"), py.get("requested")):
        return False
    return folders_match(venv, stamp.get("dirs", {}), stamp.get("listed", {}))


def folders_match(venv: Path, dirs: dict, listed: dict) -> bool:
    moved = []
    for rel, mtime in dirs.items():
        try:
            if os.stat(os.path.join(venv, rel)).st_mtime_ns != mtime:
                moved.append(rel)
        except OSError:
            return False
    if not moved:
        return True
    for rel in [r for r in moved if r in listed]:
        if names_hash(os.path.join(venv, rel)) != listed[rel]:
            return False
    rest = [r for r in moved if r not in listed]
    if not rest:
        return True
    root = f"{venv}/"
    expected = record_children(site_packages(venv), {root + r for r in rest})
    for rel in rest:
        try:
            actual = {n for n in os.listdir(root + rel) if n != "__pycache__"}
        except OSError:
            return False
        if actual != expected.get(root + rel, set()):
            return False
    return True


def up_to_date(venv: Path, *, profile: str, lock_path: Path, python: str | None = None,
               frozen: bool = False) -> dict | None:
    """The stamp when the venv is exactly the (fresh) lock; None when a sync has work to do."""
    stamp = read(venv)
    if stamp is None or os.path.exists(venv / MARKER):
        return None
    try:
        return stamp if matches(stamp, profile=profile, lock_path=lock_path, venv=venv, python=python,
                                frozen=frozen) else None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):  # edited by hand: redo the sync
        return None


# -- the folders --------------------------------------------------------------------------

def _dist_infos(site: Path) -> list[str]:
    return [e for e in os.listdir(site) if e.endswith(".dist-info")]


def _record_files(site: Path | None) -> list[str]:
    """Every file the RECORDs in ``site`` list, absolute and normalised."""
    if site is None:
        return []
    return [f for d in _dist_infos(site) for f in record_paths(site, d) or ()]


def record_folders(site: Path | None) -> set[str]:
    """The folders the RECORDs in ``site`` put files in (absolute). Read by the slow path only:
    a replayed recipe brings its folders (see :func:`folder_state`)."""
    if site is None:
        return set()
    rel = {n.rpartition("/")[0] for d in _dist_infos(site) for n in record_names(site, d) or ()}
    base = os.fspath(site)
    return {absolute(base, r) for r in rel}


def record_children(site: Path | None, wanted: set[str]) -> dict[str, set[str]]:
    """For each folder in ``wanted``: the entry names the RECORDs put in it (files and folders)."""
    out: dict[str, set[str]] = {w: set() for w in wanted}
    parents: set[str] = set()
    for path in _record_files(site):
        parent, _, name = path.rpartition("/")
        if parent in out:
            out[parent].add(name)
        parents.add(parent)
    for folder in parents:  # folders holding only folders (namespaces, lib/pythonX.Y) get them too
        while True:
            parent, _, name = folder.rpartition("/")
            if not parent:
                break
            if parent in out:
                if name in out[parent]:
                    break
                out[parent].add(name)
            folder = parent
    out.pop("", None)
    return {k: {n for n in v if n != "__pycache__"} for k, v in out.items()}


def folder_state(venv: Path, site: Path | None, folders: list[str] | None = None) -> tuple[dict, dict]:
    """(mtimes, listed) for a stamp: every folder the RECORDs put files in, ``bin/`` and
    site-packages -> mtime; ``bin/`` and site-packages -> hash of their entry names.

    ``folders``: those folders (relative to the venv) as an earlier sync of the same inputs
    found them (a replayed recipe), which saves reading every RECORD; read anyway when one
    of them is not there.
    """
    root = f"{venv}/"
    listed_abs = {root + r for r in LISTED}
    if site is not None:
        listed_abs.add(os.fspath(site))
    if folders is not None:
        found = {root + f for f in folders}
    else:
        found = {f for f in record_folders(site) if f.startswith(root) and "/__pycache__" not in f}
    dirs, listed = {}, {}
    for folder in sorted(found | listed_abs):
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            if folders is not None:
                return folder_state(venv, site)
            continue
        rel = folder[len(root):]
        dirs[rel] = mtime
        if folder in listed_abs:
            listed[rel] = names_hash(folder)
    return dirs, listed


# -- writing --------------------------------------------------------------------------------

def write(venv: Path, *, profile: str, lock_path: Path, lock_digest: str, fresh: dict | None, version: str,
          requested: str | None, packages: dict | None = None, folders: list[str] | None = None) -> dict:
    """Write the stamp of a venv that now is the lock (the last step of every sync that changed
    it), then drop the marker. Returns the folders' mtimes. ``packages`` (name -> version) when
    already read; ``folders``: see :func:`folder_state`; ``requested``: ``--python`` resolved.

    Atomic against a killed sync (rename). Not fsynced: uv does not fsync the venv's files
    either, so after a power loss a durable stamp would vouch for nothing more.
    """
    from ..core.files import write_atomic  # here: tempfile is no import for the no-op to pay

    site = site_packages(venv)
    if packages is None:
        packages = {d.name: d.version for d in installed(site).values()}
    dirs, listed = folder_state(venv, site, folders)
    data = {
        "format": FORMAT,
        "profile": profile,
        "lock": {"path": str(lock_path), "digest": lock_digest},
        "fresh": fresh,
        "python": {
            "version": version,
            "cfg": file_sha(venv / "pyvenv.cfg"),
            "base": os.path.realpath(venv / "bin" / "python"),
            "requested": requested,
        },
        "packages": packages,
        "dirs": dirs,
        "listed": listed,
    }
    write_atomic(venv / STAMP, json.dumps(data, sort_keys=True), fsync=False, skip_unchanged=False)
    try:
        os.unlink(venv / MARKER)
    except FileNotFoundError:
        pass
    return dirs


def drop(venv: Path) -> None:
    """Mark the venv as being changed: no stamp (so no no-op) and the marker (so it is ours)."""
    try:
        os.unlink(venv / STAMP)
    except FileNotFoundError:
        pass
    venv.mkdir(parents=True, exist_ok=True)
    (venv / MARKER).write_text("envmgr sync in progress or interrupted\n")
