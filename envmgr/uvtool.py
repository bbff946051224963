"""The uv binary: where it is, its version, an environment that only envmgr configures, and the
interpreter envmgr runs on (handed to uv instead of letting it search)."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading

from .errors import UserError

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
    from . import settings

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
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".uv-version.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": key, "version": version}))
            os.replace(tmp, memo)
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
