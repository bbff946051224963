"""uv started before envmgr has read the profile: a warm ``envmgr lock NAME``'s head start.

A lock spends ~20 ms importing and reading its profile before uv can start, on a resolution
of ~0.4 s. When the profile's files are byte for byte those of the last lock of that profile,
the resolver command that lock ran (its *recipe*: the uv command line and the pyproject it
gave uv, kept in the cache) is started at once, from the standard library alone, and the
profile and lock modules load while it runs.

Nothing is trusted from the recipe: the lock goes on as always, builds its own command, and
:func:`take` hands it the running uv only when the command line, the pyproject text, the
environment and the previous lock it would start uv with are exactly those of the early one.
Anything else (an edited profile, another uv, a changed knowledge base or overlay, a lock
written meanwhile) stops the early uv, removes its folder and starts its own: the lock is the
same either way, only later. Only the plain one-profile ``lock NAME`` (no upgrade, verify or
resolver option) starts early; :func:`discard` (called however the command ends) stops an
early uv nobody took.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zlib
from pathlib import Path

FORMAT = 1
KEEP = 64  # recipes kept in the cache (the oldest go first)
PYLOCK = "pylock.toml"  # uv's output, relative to its folder (a command line without the folder's path)

_early: dict | None = None  # the running early uv: proc, dir, argv, env, pyproject, previous, recipe
_taken: dict | None = None  # the recipe of the early uv a resolution took


def _recipe(project: Path, name: str) -> Path:
    from ..core.settings import cache_dir

    key = zlib.crc32(os.fsencode(os.path.abspath(project / "profiles" / f"{name}.toml")))
    return cache_dir() / "lock-recipes" / f"{name}-{key:08x}.json"


def _digest(files) -> str | None:
    """A fingerprint of the files' bytes (a change detector: what runs is checked in full by
    :func:`take`), or None when one cannot be read."""
    crc = 0
    try:
        for f in files:
            with open(f, "rb") as fh:
                crc = zlib.crc32(fh.read(), zlib.crc32(os.fsencode(str(f)), crc))
    except OSError:
        return None
    return f"{crc:08x}"


def start(project: Path, name: str) -> None:
    """Start the recipe's uv if the profile's files are as it recorded them; else nothing."""
    global _early
    if os.environ.get("ENVMGR_RESOLVER", "uv") != "uv" or "/" in name or name.startswith("."):
        return  # (a name that is no profile's: the lock says so itself)
    try:
        with open(_recipe(project, name), encoding="utf-8") as fh:
            recipe = json.load(fh)
        if recipe.get("format") != FORMAT or _digest(recipe["files"]) != recipe["digest"]:
            return
        argv, pyproject = list(recipe["argv"]), recipe["pyproject"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    from ..venv.uvtool import clean_env, uv_bin

    try:
        if not argv or argv[0] != uv_bin():  # only ever the uv this envmgr would run
            return
    except Exception:  # no uv at all: the lock says so itself
        return
    lock_file = project / "locks" / f"pylock.{name}.toml"
    try:
        previous = lock_file.read_text("utf-8")
    except FileNotFoundError:
        previous = None
    except (OSError, UnicodeDecodeError):
        return
    folder = os.path.join(os.environ.get("TMPDIR") or "/tmp", f"envmgr-lock-{name}-{os.getpid()}")
    try:
        os.mkdir(folder, 0o700)
    except OSError:
        return
    env = clean_env()
    try:
        with open(os.path.join(folder, "pyproject.toml"), "w", encoding="utf-8") as fh:
            fh.write(pyproject)
        if previous is not None:
            with open(os.path.join(folder, PYLOCK), "w", encoding="utf-8") as fh:
                fh.write(previous)
        proc = subprocess.Popen(argv, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return
    _early = {"proc": proc, "dir": Path(folder), "argv": argv, "env": env, "pyproject": pyproject,
              "previous": previous, "recipe": recipe}


def take(argv: list[str], env: dict, pyproject: str, previous: str | None):
    """(the running uv, its folder) when it was started with exactly these; else None (and an
    early uv started otherwise is stopped). The caller removes the folder when done."""
    global _early, _taken
    early, _early = _early, None
    if early is None:
        return None
    if (early["argv"], early["env"], early["pyproject"], early["previous"]) == (argv, env, pyproject, previous):
        _taken = early["recipe"]
        return early["proc"], early["dir"]
    _stop(early)
    return None


def _stop(early: dict) -> None:
    proc = early["proc"]
    if proc.poll() is None:
        proc.kill()
    proc.communicate()
    shutil.rmtree(early["dir"], ignore_errors=True)


def discard() -> None:
    """Stop an early uv that no resolution took (the lock failed first, or went another way)."""
    global _early
    early, _early = _early, None
    if early is not None:
        _stop(early)


def remember(project: Path, name: str, files, argv: list[str], pyproject: str) -> None:
    """Keep the command a one-platform lock of ``name`` started uv with first, for the next
    lock of the same profile files (written only when it changed)."""
    recipe = {"format": FORMAT, "files": [str(f) for f in files], "digest": _digest(files), "argv": argv,
              "pyproject": pyproject}
    if recipe["digest"] is None or recipe == _taken:  # (the one this lock started from: unchanged)
        return
    path = _recipe(project, name)
    from ..core.files import keep_newest, write_atomic

    try:  # a hint: a lost or torn one is read as none, so no fsync
        write_atomic(path, json.dumps(recipe, sort_keys=True), fsync=False)
        keep_newest(path.parent, KEEP)
    except OSError:
        pass

