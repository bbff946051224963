"""The checks that stop a sync before it changes anything: its inputs, the lock's freshness,
the interpreter, the NVIDIA driver and (offline) whether every file is at hand. Each either
passes, returns a warning, or raises the one-line error the user sees.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..core.errors import CheckFailed, StaleError, UserError
from . import target
from .options import SyncOptions


def check_inputs(venv: Path, options: SyncOptions) -> None:
    if options.locked and options.frozen:
        raise UserError("--locked and --frozen contradict each other", hint="--locked checks the lock; --frozen skips the check")
    for d in options.find_links:
        if not d.is_dir():
            raise UserError(f"--find-links {d}: not a folder")
    if options.bundle is not None:
        opened(options.bundle)
    if target.state(venv) == "foreign":
        raise UserError(f"{venv} exists and is not a venv; refusing to touch it", hint="pass --venv with another path")


def stale_reasons(project: Path, name: str, options: SyncOptions) -> str | None:
    """Why the lock is stale (None when fresh); raise when --locked or --offline forbid re-locking."""
    from ..lock import locker

    result = locker.check(project, [name])[0]
    if result.fresh:
        return None
    why = "; ".join(result.reasons)
    if options.locked:
        raise StaleError(f"{name}: {result.path} is stale ({why}) and --locked forbids re-locking",
                         hint=f"run `envmgr lock {name}` and commit the lock")
    if options.offline:
        raise UserError(f"{name}: {result.path} is stale ({why}) and --offline cannot re-lock",
                        hint="re-lock online, or pass --frozen to use the lock as it is")
    return why


def opened(path: Path):
    """The bundle at ``path``, opened and its manifest checked once per process (a one-line error if it is not one)."""
    from ..net import bundlefiles

    key = os.path.abspath(path)
    if key not in _bundles:
        _bundles[key] = bundlefiles.open_bundle(path)
    return _bundles[key]


_bundles: dict = {}


def check_bundle(lock, options: SyncOptions):
    """``--bundle``: the bundle, if it is for the lock's python and platform, and this machine's."""
    from ..model.platforms import host

    bundle = opened(options.bundle)
    bundle.check_lock(lock, f"the lock {lock.meta.profile}")
    bundle.check_target(bundle.python, host(), "this machine")
    return bundle


def seed_from_bundle(lock, packages, options: SyncOptions) -> None:
    """``packages``' files into the cache from the bundle, hash-checked (exit 1 naming a file it lacks)."""
    check_bundle(lock, options).seed([(p.key, p.install_file) for p in packages])


# -- python ----------------------------------------------------------------------------------

def find_python(version: str) -> str:
    """An interpreter for ``version`` (``3.11``): the one envmgr runs on when it is that version, else
    ``uv python find``'s; a one-line error naming the interpreters found when none is."""
    import json
    import subprocess

    from ..venv.uvtool import clean_env, running_python, uv_bin

    running = running_python(version)
    if running:
        return running

    env = clean_env({"UV_PYTHON_DOWNLOADS": "never"})
    proc = subprocess.run([uv_bin(), "python", "find", "--system", "--no-config", "--no-project", version],
                          capture_output=True, text=True, env=env)
    if proc.returncode == 0 and proc.stdout.strip():
        return proc.stdout.strip().splitlines()[-1]
    listed = subprocess.run([uv_bin(), "python", "list", "--only-installed", "--output-format", "json",
                             "--no-config"], capture_output=True, text=True, env=env)
    found: dict[str, str] = {}
    try:
        for entry in json.loads(listed.stdout or "[]"):
            found.setdefault(entry["version"], entry["path"])
    except (ValueError, KeyError, TypeError):
        pass
    seen = ", ".join(f"{v} ({p})" for v, p in list(found.items())[:6]) or "none"
    raise UserError(f"no Python {version} found (found: {seen})",
                    hint=f"install one (`uv python install {version}`) or pass --python PATH")


# -- driver ----------------------------------------------------------------------------------

def driver_version() -> str | None:
    """The host's NVIDIA driver version, or None when there is no driver.

    :func:`envmgr.host.detect.detect`'s order (``ENVMGR_DRIVER_VERSION``, NVML, nvidia-smi,
    /proc); ``ENVMGR_DRIVER_VERSION=none`` pretends there is no driver (a CPU host).
    """
    forced = os.environ.get("ENVMGR_DRIVER_VERSION", "").strip().lower()
    if forced == "none":
        return None
    from ..host import driver_absent

    if not forced and driver_absent():
        return None  # a CPU host: no need to load NVML or look for nvidia-smi
    from ..host import detect

    return detect.detect().driver


def check_driver(variant: str, cuda: str, min_driver: str, driver: str | None) -> str | None:
    """None when ``driver`` can run the variant; a warning string for no driver; raise when too old."""
    if not cuda or not min_driver:
        return None
    if driver is None:
        return (f"no NVIDIA driver found; installing {variant} (CUDA {cuda}) anyway: it needs driver "
                f">= {min_driver} to run")
    from ..model.variants import driver_at_least, kb

    if driver_at_least(driver, min_driver):
        return None
    can = kb().variants_for_driver(driver)
    raise CheckFailed(
        f"NVIDIA driver {driver} is too old for {variant} (CUDA {cuda} needs >= {min_driver}); "
        f"this driver can run: {', '.join(can) if can else 'no CUDA variant (cpu only)'}",
        hint="update the driver, pick another variant, or pass --skip-driver-check",
    )


# -- a plan ----------------------------------------------------------------------------------

def check_plan(lock, plan, options: SyncOptions, driver: Callable[[], str | None] = driver_version) -> list[str]:
    """What must hold before ``plan`` (an ``install.Plan`` of ``lock``) runs: the driver can run
    the lock's variant, and offline, every file to install is in the cache or ``--find-links``.
    Returns the warnings."""
    from ..net import fetch

    warnings = []
    if plan.install and not options.skip_driver_check:
        warning = check_driver(lock.meta.variant, lock.meta.cuda, lock.meta.min_driver, driver())
        if warning:
            warnings.append(warning)
    if options.bundle is not None:
        seed_from_bundle(lock, plan.install, options)
    if options.offline:
        missing = [p for p in plan.install if not fetch.cached_path(p.install_file).exists()
                   and not any((d / p.install_file.filename).is_file() for d in options.find_links)]
        if missing:
            fetch.fetch([(p.key, p.install_file) for p in missing], offline=True)  # raises, listing them all
    return warnings
