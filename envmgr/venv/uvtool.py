"""The uv binary: where it is, its version, an environment that only envmgr configures, the
interpreter envmgr runs on (handed to uv instead of letting it search), and the uv commands
that build a venv (``uv venv``, ``uv pip sync`` of a PEP 751 lock, and ``uv pip install`` of
part of one into a staging venv, which unpacks its files into uv's cache ahead of the sync).

What a sync writes beside the venv lives in one folder of its process (:func:`workdir`), which
the next sync removes when that process is gone (:func:`remove_orphans`)."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import threading

from ..core.errors import EnvmgrError, UserError

# Variables that would make uv or pip resolve against something the profile does not say.
_LEAKY_PREFIXES = ("UV_INDEX", "UV_EXTRA_INDEX", "UV_DEFAULT_INDEX", "UV_FIND_LINKS", "UV_NO_INDEX",
                   "UV_CONSTRAINT", "UV_OVERRIDE", "UV_TORCH_BACKEND", "UV_PYTHON", "UV_CONFIG_FILE",
                   "UV_NO_CONFIG", "UV_OFFLINE", "UV_PRERELEASE", "UV_RESOLUTION", "UV_EXCLUDE_NEWER",
                   "PIP_")


# Threads (profiles locked at once, the version asked alongside a resolution) call these
# concurrently; find_uv_bin() reads sysconfig, whose first use is not thread-safe (a racing
# reader sees EXE as None), so each runs under a lock of its own.
_bin_lock = threading.Lock()
_version_lock = threading.Lock()


def uv_bin() -> str:
    with _bin_lock:
        return _uv_bin()


@functools.cache
def _uv_bin() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        import shutil

        found = shutil.which("uv")
        if not found:
            raise UserError("uv is not installed", hint="pip install uv")
        return found


def uv_version() -> str:
    binary = uv_bin()
    with _version_lock:
        return _uv_version(binary)


@functools.cache
def _uv_version(binary: str) -> str:
    # Remembered per binary (path, size, mtime) in the cache: one process less per lock.
    from ..core import settings

    try:
        st = os.stat(binary)
        key = f"{os.path.realpath(binary)}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        key = None
    memo = settings.cache_dir() / "uv-version.json"
    if key:
        try:
            data = json.loads(memo.read_text())
            if data.get("key") == key and data.get("version"):
                return data["version"]
        except (OSError, ValueError, AttributeError):
            pass
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"uv (\d+\.\d+\.\d+\S*)", out)
    version = m.group(1) if m else out.strip()
    if key:
        from ..core.files import write_atomic

        try:  # a memo: a torn or lost one is read as no memo, so no fsync
            write_atomic(memo, json.dumps({"key": key, "version": version}), fsync=False)
        except OSError:
            pass
    return version


def running_python(version: str) -> str | None:
    """The interpreter envmgr runs on (its base binary, not a venv's link) when it is Python
    ``version`` (``3.11``); None otherwise."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != version:
        return None
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def clean_env(extra: dict | None = None) -> dict:
    """This process's environment without index/resolution settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LEAKY_PREFIXES)}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["NO_COLOR"] = "1"
    env.update(extra or {})
    return env


def create_venv(venv, python, *, relocatable: bool = False, prompt: str | None = None,
                allow_existing: bool = False, keep_fds: tuple[int, ...] = ()) -> None:
    """``uv venv`` at ``venv`` with interpreter ``python`` (no pip: the venv holds only the lock).

    ``allow_existing``: ``venv`` may be a folder already (one the caller emptied or marked).
    """
    cmd = [uv_bin(), "venv", "--no-config", "--no-project", "--python", str(python), "--quiet"]
    if relocatable:
        cmd.append("--relocatable")
    if allow_existing:
        cmd.append("--allow-existing")
    if prompt:
        cmd += ["--prompt", prompt]
    cmd.append(str(venv))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env({"UV_PYTHON_DOWNLOADS": "never"}),
                          pass_fds=keep_fds)
    if proc.returncode != 0:
        raise EnvmgrError(f"cannot create a venv at {venv} with {python}", detail=proc.stderr.strip())


def workdir(venv) -> str:
    """The folder beside ``venv`` where this process keeps what it hands uv (a lock, a staging venv)."""
    parent, base = os.path.split(os.fspath(venv).rstrip("/"))
    return os.path.join(parent, f".{base}.envmgr-{os.getpid()}")


def _uv_pip(args: list[str], venv, pylock: str, *, where: str, verbose: bool = False,
            keep_fds: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    """``uv pip ARGS --python VENV/bin/python [-r] FOLDER/pylock.toml`` (``-r`` for ``install``;
    the lock text written in the
    :func:`workdir` of ``where``'s venv, removed afterwards) in envmgr's clean environment."""
    venv = os.fspath(venv)
    cmd = [uv_bin(), "pip", *args, "--no-config", *([] if verbose else ["--no-progress"]),
           "--python", os.path.join(venv, "bin", "python"), "--require-hashes", "--offline",
           "--preview-features", "pylock"]
    folder = workdir(where)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "pylock.toml")
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(pylock)
        return subprocess.run([*cmd, *(["-r"] if args[0] == "install" else []), path], stdout=subprocess.PIPE, stderr=None if verbose else subprocess.STDOUT,
                              text=True, env=clean_env(), pass_fds=keep_fds)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        try:
            os.rmdir(folder)
        except OSError:  # a staging venv is still in it
            pass


def pip_sync(venv, pylock: str, *, reinstall=(), link_mode: str | None = None, verbose: bool = False,
             keep_fds: tuple[int, ...] = (), python_platform: str | None = None) -> str:
    """``uv pip sync`` of the PEP 751 lock text ``pylock`` into ``venv``: installed as it stands (no
    resolution), every size and hash checked, nothing fetched (``--offline``: its ``path``
    entries name files already verified). Returns uv's messages (shown instead, ``verbose``).

    The lock is written beside the venv (uv knows the format by the name ``pylock.toml``), in
    a folder of this process's own, removed afterwards. ``python_platform`` (uv's
    ``--python-platform``, e.g. ``aarch64-manylinux_2_28``): install another platform's files
    with this machine's interpreter (an image's venv laid out without running its code).
    """
    args = ["sync", *(["--python-platform", python_platform] if python_platform else [])]
    for name in reinstall:
        args += ["--reinstall-package", name]
    if link_mode:
        args += ["--link-mode", link_mode]
    proc = _uv_pip(args, venv, pylock, where=venv, verbose=verbose, keep_fds=keep_fds)
    if proc.returncode != 0:
        out = (proc.stdout or "").strip()
        raise EnvmgrError(f"uv pip sync on {os.fspath(venv)} failed (exit {proc.returncode})", detail=out or None,
                          hint="the files were verified; see uv's message below")
    return proc.stdout or ""


def pip_install_staged(stage, venv, pylock: str, *, keep_fds: tuple[int, ...] = ()) -> bool:
    """``uv pip install --no-deps`` of the lock text ``pylock`` (verified local files) into the
    staging venv ``stage`` of ``venv``'s sync: uv unpacks them into its cache, so the sync of
    ``venv`` that follows only links. ``stage`` may be ``venv`` itself (a venv the sync is
    creating: linked as the final sync would, uv's own link mode). True when uv succeeded (a
    failure here is not the sync's: the sync does the work itself and reports what goes wrong)."""
    link = [] if os.fspath(stage) == os.fspath(venv) else ["--link-mode", "hardlink"]
    return _uv_pip(["install", "--no-deps", *link], stage, pylock, where=venv, keep_fds=keep_fds).returncode == 0


def remove_orphans(venv) -> None:
    """Remove the :func:`workdir` folders a killed sync left beside ``venv`` (their process is
    gone): a lock, a staging venv. Call it holding the venv's file lock, as sync does."""
    parent, base = os.path.split(os.fspath(venv).rstrip("/"))
    prefix = f".{base}.envmgr-"
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix) and n[len(prefix):].isdigit()]
    except OSError:
        return
    for name in names:
        try:
            os.kill(int(name[len(prefix):]), 0)
            continue  # its process lives (or belongs to someone else): not ours to remove
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        import shutil

        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
