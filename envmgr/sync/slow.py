"""The slow path of a sync: the lock read and checked (re-locked when stale), the venv compared
with it, every missing file fetched and verified, then the venv changed, stamped and, when it
was made from nothing, its recipe kept (:mod:`envmgr.sync.recipe`).

A cold sync is a pipeline (:func:`_fetch`): the files download in parallel, each verified as
it streams, and every verified file is unpacked by uv into its cache through a staging venv
beside the target while the others still download (:class:`envmgr.venv.install.Staging`);
the venv itself is changed only once every file is verified, by one exact ``uv pip sync``
that then mostly links. A first sync (no venv at the path: nothing to keep usable) makes the
venv at once and unpacks each package straight into it once its own file is verified, so
nothing is linked twice; if a file fails, the new venv is removed again. Two bars tell the
truth: bytes downloaded, packages installed.

Read-only first: every input, the interpreter, the driver and (offline) the files are checked
before anything on disk changes, once before the venv's file lock is taken and again under it
(another sync may have changed the venv or the lock meanwhile). The lock model, packaging and
the network are imported inside the functions: a no-op sync loads this module not at all.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..core import settings
from ..core.errors import UserError
from . import stamp, target
from .options import SyncOptions
from .preflight import check_inputs, check_plan, driver_version, find_python, stale_reasons
from .result import SyncResult, noop


class _State:
    """What the venv holds now and what it takes to make it the lock (read-only inspection)."""

    def __init__(self, recreate: bool, python, base: str | None, damaged: dict, plan):
        self.recreate = recreate
        self.python = python  # install.PythonInfo the venv will run
        self.base = base  # interpreter to create the venv with, when recreating
        self.damaged = damaged
        self.plan = plan  # install.Plan


def _inspect(lock, venv: Path, requested, base: str | None) -> _State:
    from ..venv import install

    want = lock.meta.python
    current = None
    if target.state(venv) in ("venv", "ours"):
        try:
            current = install.query_python(install.venv_python(venv))
        except UserError:
            current = None  # a half-made venv: recreate it
    recreate = current is None or current.minor != want or (
        requested is not None and os.path.realpath(requested.executable) != os.path.realpath(current.executable))
    if recreate:
        base = requested.executable if requested else (base or find_python(want))
        python = requested or install.query_python(base)
    else:
        base, python = None, current
    site = None if recreate else install.site_packages(venv)
    now = install.installed(site)
    damaged = install.broken(site, now.values())
    plan = install.plan(lock, {n: d.version for n, d in now.items()}, env=python.markers, reinstall=damaged)
    return _State(recreate, python, base, damaged, plan)


def _ensure_fresh(project: Path, name: str, options: SyncOptions, log: Callable[[str], None]) -> tuple[bool, dict]:
    """Re-lock when stale (or fail with --locked). Returns (relocked, fresh key for the stamp)."""
    from ..lock import locker
    from ..model import lockfile, profiles

    why = stale_reasons(project, name, options)
    if why is not None:
        log(f"{name}: lock is stale ({why}); re-locking")
        locker.lock_profiles(project, [name], log=log)
    profile = profiles.load(project, name)
    lock = lockfile.read(settings.lock_path(project, name))
    return why is not None, stamp.fresh_key(profile.files, lock.meta.resolver)


def _record(name: str, lock_file: Path, lock_digest: str, lock, state: _State, result, fresh: dict | None,
            files: dict, requested: str | None, folders: list[str]) -> None:
    """Keep how this venv was made from nothing, for the next sync of a missing venv (:mod:`envmgr.sync.recipe`):
    the lock of every package it holds (the final install may have had none left to do, all of
    them unpacked into the new venv while the files downloaded)."""
    from ..venv import install
    from . import recipe

    recipe.record(
        recipe.key(profile=name, lock_path=lock_file, lock_digest=lock_digest, requested=requested),
        base=state.base, version=result.python.version, fresh=fresh, variant=lock.meta.variant,
        cuda=lock.meta.cuda, min_driver=lock.meta.min_driver, pylock=install.local_lock(lock, state.plan.install, files),
        files=sorted(str(files[p.install_file.sha256]) for p in state.plan.install),
        packages={p.key: p.version for p in state.plan.install}, lines=state.plan.lines(), folders=folders)


def _fetch(name: str, lock, state: _State, venv: Path, downloads: list, options: SyncOptions, auth, reporter, counter,
           log: Callable[[str], None], keep_fds: tuple[int, ...], direct: bool) -> tuple[dict, set[str]]:
    """Every file the plan installs, verified into the cache: (sha256 -> path, keys already unpacked
    by uv while the others downloaded). Staging runs only when something downloads; ``direct``
    (a venv made where there was none): into the venv itself, removed again if a file fails."""
    from ..net import fetch
    from ..venv import install

    items = [(p.key, p.install_file) for p in state.plan.install]
    if not items:
        return {}, set()
    staging = None
    if downloads and not options.offline:
        by_sha = {p.install_file.sha256: p for p in state.plan.install}
        if direct:
            log(f"{name}: creating {venv} with Python {state.python.version}")
            stamp.drop(venv)  # the folder and the marker that says it is ours, before uv makes the venv in it
        staging = install.Staging(lock, venv, state.base if direct else state.python.executable, counter=counter,
                                  keep_fds=keep_fds, direct=direct, prompt=name)
    t0 = time.monotonic()
    try:
        files = fetch.fetch(items, auth=auth, offline=options.offline, find_links=options.find_links,
                            reporter=reporter, on_ready=staging and (lambda _, f, path: staging.ready(by_sha[f.sha256], path)))
    except BaseException:
        if staging is not None:
            staging.close()
            if direct:  # there was no venv: none is left
                shutil.rmtree(venv, ignore_errors=True)
        raise
    staged = staging.close() if staging else set()
    if downloads:
        took, size = time.monotonic() - t0, sum(f.size for f in downloads)
        log(f"{name}: downloaded {len(downloads)} file(s), {size / 1e6:.0f} MB in {took:.1f} s "
            f"({size / 1e6 / max(took, 1e-3):.0f} MB/s); {len(staged)} package(s) unpacked meanwhile")
    return files, staged


def sync(project: Path, name: str, venv: Path, options: SyncOptions, *, reporter, log: Callable[[str], None],
         started: float) -> SyncResult:
    """Make ``venv`` exactly the profile's lock (see the module docstring for the order)."""
    from ..model import lockfile, profiles
    from ..net import fetch
    from ..net.credentials import profile_auth
    from ..venv import install, uvtool

    check_inputs(venv, options)
    driver = functools.cache(driver_version)  # asked once, by the first check that needs it
    python, frozen, offline, find_links = options.python, options.frozen, options.offline, options.find_links
    requested = install.query_python(python) if python else None
    lock_file = settings.lock_path(project, name)
    if frozen:
        lock = lockfile.read(lock_file).for_host()
        want = lock.meta.python
    else:
        want = profiles.load(project, name).python
        stale = stale_reasons(project, name, options)
        lock = None if stale else lockfile.read(lock_file).for_host()
    if requested is not None and requested.minor != want:
        raise UserError(f"--python {python} is Python {requested.version}; the lock needs Python {want}")
    base = None
    if lock is not None:
        pre = _inspect(lock, venv, requested, None)
        check_plan(lock, pre.plan, options, driver)
        base = pre.base
    elif requested is None:
        base = find_python(want)

    with target.venv_lock(venv, log) as lock_fd:
        done = noop(project, name, venv, options, started)
        if done is not None:  # another sync did it while we waited
            return done
        relocked, fresh = (False, None) if frozen else _ensure_fresh(project, name, options, log)
        lock_bytes = lock_file.read_bytes()
        lock = lockfile.loads(lock_bytes.decode("utf-8"), lock_file).for_host()
        state = _inspect(lock, venv, requested, base)  # again: the venv may have changed while we waited
        warnings = check_plan(lock, state.plan, options, driver)
        for w in warnings:
            log(f"warning: {w}")
        plan = state.plan

        # Fetch and verify every file first (unpacked by uv beside the venv meanwhile): a bad hash or a
        # dead network fails here, venv untouched.
        downloads = [p.install_file for p in plan.install if not fetch.cached_path(p.install_file).exists()
                     and not any((d / p.install_file.filename).is_file() for d in find_links)]
        # No venv yet (a first sync): nothing to keep usable, so each package goes into the new
        # venv once its own file is verified, not through a staging venv beside it.
        direct = state.recreate and bool(downloads) and not offline and target.state(venv) == "missing"
        with fetch.counter(reporter, len(plan.install), f"installing {len(plan.install)} package(s)") as counter:
            files, staged = _fetch(name, lock, state, venv, downloads, options,
                                   profile_auth(project, name) if downloads and not offline else None, reporter, counter, log,
                                   (lock_fd,), direct)

            if plan.empty and not state.recreate:
                log(f"{name}: {venv} already matches the lock")
            else:
                stamp.drop(venv)
                if state.recreate and not (direct and install.is_venv(venv)):  # (unless staging made it)
                    log(f"{name}: creating {venv} with Python {state.python.version}")
                    target.clear(venv)
                    uvtool.create_venv(venv, state.base, prompt=name, allow_existing=True, keep_fds=(lock_fd,))
                for line in plan.lines():
                    log(f"  {line}")
            # uv inherits the lock: if envmgr is killed, uv finishes before the next sync goes on
            t0 = time.monotonic()
            result = install.install(lock, venv, files=files, reinstall=state.damaged, keep_fds=(lock_fd,))
            if counter is not None:
                counter.advance(len(plan.install) - len(staged))
            if plan.install:
                log(f"{name}: installed {len(plan.install)} package(s) in {time.monotonic() - t0:.1f} s "
                    f"after the last file was verified")
        lock_digest = "sha256:" + stamp.sha256_of(lock_bytes)  # = Lock.digest()
        dirs = stamp.write(venv, profile=name, lock_path=lock_file, lock_digest=lock_digest, fresh=fresh,
                           version=result.python.version, requested=options.requested)
        if state.recreate and not find_links and state.plan.install:
            _record(name, lock_file, lock_digest, lock, state, result, fresh, files, options.requested, sorted(dirs))
    return SyncResult(
        profile=name, venv=venv, lock=lock_file, noop=plan.empty and not state.recreate,
        seconds=time.monotonic() - started,
        installed=[f"{p.key}=={p.version}" for p in plan.install],
        removed=plan.to_json()["removed"], unchanged=len(plan.unchanged),
        bytes_downloaded=0 if offline else sum(f.size for f in downloads),
        relocked=relocked, created=state.recreate, python=result.python.version, warnings=warnings,
    )
