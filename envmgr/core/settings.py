"""Every environment variable envmgr reads, and the paths derived from them.

One place, so ``--help`` and the docs can list them and tests can isolate them.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VARS = {
    "ENVMGR_PROJECT": "project root (holds profiles/ and locks/); default: search upwards from cwd",
    "ENVMGR_CACHE_DIR": "cache root: downloaded files by sha256, hashes by URL, layers, sync and lock recipes",
    "ENVMGR_RESOLVER": "default resolver for `envmgr lock` (uv or pip-tools)",
    "ENVMGR_VENV_DIR": "where profile venvs live (default: PROJECT/.envmgr/venvs)",
    "ENVMGR_NO_PROGRESS": "set to 1 to disable progress bars",
    "ENVMGR_HTTP_RETRIES": "how often a failed HTTP read (connection error, 429, 5xx) is tried again, and a broken "
                           "download or upload resumed without progress, 0-10 (default 2)",
    "ENVMGR_HTTP_TIMEOUT": "seconds a server may stay silent before a request is retried or resumed, 1-3600 "
                           "(default 60; 300 for registry calls)",
    "ENVMGR_DRIVER_VERSION": "pretend the NVIDIA driver is this version (testing, containers)",
    "ENVMGR_DEFAULT_REGISTRY": "registry for image references without a host (export-image --base/--push)",
    "ENVMGR_INSECURE_REGISTRIES": "comma-separated registries reached over plain HTTP (localhost/127.* always are)",
    "ENVMGR_REGISTRY_USERNAME": "registry user name; with ENVMGR_REGISTRY_PASSWORD it comes first, else per auth "
                                "file: credHelpers, credsStore, then auths",
    "ENVMGR_REGISTRY_PASSWORD": "registry password or token",
    "DOCKER_CONFIG": "folder of docker's config.json (default ~/.docker): registry credentials, looked in first",
    "REGISTRY_AUTH_FILE": "podman's auth file, looked in after docker's (then $XDG_RUNTIME_DIR/containers/auth.json, "
                          "~/.config/containers/auth.json)",
    "SOURCE_DATE_EPOCH": "timestamp for image layers and config (default 0): same lock, same digest",
    "DOCKER_HOST": "engine socket for export-image --load and check --image (podman's socket works)",
}


def cache_dir() -> Path:
    env = os.environ.get("ENVMGR_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "envmgr"


def find_project(start: Path | None = None) -> Path:
    """The project root: ``$ENVMGR_PROJECT``, else the nearest parent holding ``profiles/``."""
    env = os.environ.get("ENVMGR_PROJECT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "profiles").is_dir():
            return candidate
    return here


def lock_path(project: Path, profile: str) -> Path:
    """``PROJECT/locks/pylock.PROFILE.toml``: where a profile's lock lives."""
    return project / "locks" / f"pylock.{profile}.toml"


def venv_root(project: Path) -> Path:
    env = os.environ.get("ENVMGR_VENV_DIR")
    return Path(env) if env else project / ".envmgr" / "venvs"


def progress_enabled() -> bool:
    return os.environ.get("ENVMGR_NO_PROGRESS", "") not in ("1", "true", "yes")
