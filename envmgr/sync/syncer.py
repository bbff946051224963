"""Sync: a profile's lock -> its venv, exactly; instant when nothing changed; safe under faults.

Input: ``locks/pylock.NAME.toml`` (re-locked first when stale, unless ``--locked`` or
``--frozen``). Output: the venv at ``--venv`` or ``settings.venv_root(project)/NAME`` holding
exactly the lock's packages, every file's sha256 verified, and a stamp recording what it holds.

The hard problems and how they are solved:

* **No-op in well under a second.** The stamp (:mod:`envmgr.sync.stamp`, ``VENV/.envmgr-sync.json``)
  records the lock file's sha256, the profile files it was fresh against, the interpreter,
  and the mtime of every folder the installed files live in. A sync whose stamp still
  matches returns without the network and without importing anything but the standard
  library: this module keeps heavy imports inside the functions of the slow path.
* **A warm sync costs little more than uv's own.** A venv that does not exist yet is made
  from the recipe an earlier sync of the same inputs left in the cache (:mod:`envmgr.sync.recipe`):
  the same uv commands and checks, without the lock model's imports and reading.
* **A failed sync leaves the previous venv usable.** Every file is fetched and hash-checked
  into the cache first (:func:`envmgr.net.fetch.fetch`); the venv is touched only after that.
* **kill -9 at any point.** The stamp is removed before the venv is touched and written last
  (atomically), so an interrupted sync is noticed and redone; damaged packages (files listed
  in RECORD but gone) are reinstalled, a half-created venv (marker file inside) recreated.
* **Concurrent syncs of one venv** serialise on a file lock beside it; the later ones find
  the stamp the first one wrote.
* **Hand edits** (pip upgrades, deleted files) change a folder's entries and so miss the
  stamp; the slow path then repairs them; ``check`` reports them without changing anything.
"""

from __future__ import annotations

import fcntl
import functools
import os
import time
from contextlib import contextmanager
from pathlib import Path

from ..core import settings
from ..core.errors import CheckFailed, EnvmgrError, StaleError, UserError
from . import stamp

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)
if TYPE_CHECKING:
    from typing import Callable, Iterable

    Log = Callable[[str], None]


def _nolog(_: str) -> None:
    pass


# -- locations -----------------------------------------------------------------------------

def venv_path(project: Path, name: str, venv: Path | str | None = None) -> Path:
    """``--venv`` when given, else the documented default ``settings.venv_root(project)/NAME``."""
    return Path(os.path.abspath(venv if venv else settings.venv_root(project) / name))


def _flock_path(venv: Path) -> Path:
    return venv.parent / f".{venv.name}.envmgr-lock"


# -- results -------------------------------------------------------------------------------

class SyncResult:
    """What a sync did (a plain class: dataclasses costs ~10 ms to import, a no-op ~20 ms in all)."""

    def __init__(self, profile: str, venv: Path, lock: Path, noop: bool, seconds: float = 0.0,
                 installed: list[str] | None = None, removed: list[str] | None = None, unchanged: int = 0,
                 bytes_downloaded: int = 0, relocked: bool = False, created: bool = False, python: str = "",
                 warnings: list[str] | None = None):
        self.profile, self.venv, self.lock, self.noop, self.seconds = profile, venv, lock, noop, seconds
        self.installed = installed or []  # name==version
        self.removed = removed or []
        self.unchanged, self.bytes_downloaded = unchanged, bytes_downloaded
        self.relocked, self.created, self.python = relocked, created, python
        self.warnings = warnings or []

    def describe(self) -> str:
        if self.noop:
            return f"{self.profile}: {self.venv} is up to date ({self.unchanged} packages, {self.seconds:.2f}s)"
        what = [f"{len(self.installed)} installed", f"{len(self.removed)} removed", f"{self.unchanged} unchanged"]
        mb = f", {self.bytes_downloaded / 1e6:.1f} MB downloaded" if self.bytes_downloaded else ""
        return f"{self.profile}: synced {self.venv} ({', '.join(what)}{mb}, {self.seconds:.1f}s)"

    def to_json(self) -> dict:
        return {
            "profile": self.profile,
            "venv": str(self.venv),
            "lock": str(self.lock),
            "noop": self.noop,
            "relocked": self.relocked,
            "created": self.created,
            "python": self.python,
            "installed": self.installed,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "bytes_downloaded": self.bytes_downloaded,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }


# -- the fast path ---------------------------------------------------------------------------

def up_to_date(project: Path, name: str, *, venv: Path | str | None = None, python: str | None = None,
               frozen: bool = False) -> dict | None:
    """The stamp when the venv is exactly the (fresh) lock; None when a sync has work to do."""
    return stamp.up_to_date(venv_path(project, name, venv), profile=name, lock_path=settings.lock_path(project, name),
                            python=python, frozen=frozen)


def _noop_result(found: dict, project: Path, name: str, venv: Path, started: float) -> SyncResult:
    return SyncResult(profile=name, venv=venv, lock=settings.lock_path(project, name), noop=True,
                      unchanged=len(found.get("packages", {})), python=found.get("python", {}).get("version", ""),
                      seconds=time.monotonic() - started)


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


# -- sync ------------------------------------------------------------------------------------

@contextmanager
def _venv_lock(venv: Path, log: Log):
    path = _flock_path(venv)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another envmgr sync of {venv}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        from ..venv.uvtool import remove_orphans

        remove_orphans(venv)  # what a killed sync of this venv left beside it
        try:
            yield fh.fileno()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _venv_state(venv: Path) -> str:
    """missing | empty | venv | ours (envmgr was creating it) | foreign (not a venv: never touched)."""
    if venv.is_symlink() or venv.is_file():
        return "foreign"
    if not venv.exists():
        return "missing"
    if (venv / stamp.MARKER).exists():
        return "ours"
    if (venv / "pyvenv.cfg").is_file():
        return "venv"
    return "empty" if not any(venv.iterdir()) else "foreign"


def _clear(venv: Path) -> None:
    """Empty a venv (ours or a real venv) but keep the marker that says it is ours."""
    import shutil

    for entry in venv.iterdir():
        if entry.name == stamp.MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_inputs(venv: Path, find_links: Iterable[Path], locked: bool, frozen: bool) -> None:
    if locked and frozen:
        raise UserError("--locked and --frozen contradict each other", hint="--locked checks the lock; --frozen skips the check")
    for d in find_links:
        if not Path(d).is_dir():
            raise UserError(f"--find-links {d}: not a folder")
    if _venv_state(venv) == "foreign":
        raise UserError(f"{venv} exists and is not a venv; refusing to touch it", hint="pass --venv with another path")


def _stale_reasons(project: Path, name: str, *, locked: bool, offline: bool) -> str | None:
    """Why the lock is stale (None when fresh); raise when --locked or --offline forbid re-locking."""
    from ..lock import locker

    result = locker.check(project, [name])[0]
    if result.fresh:
        return None
    why = "; ".join(result.reasons)
    if locked:
        raise StaleError(f"{name}: {result.path} is stale ({why}) and --locked forbids re-locking",
                         hint=f"run `envmgr lock {name}` and commit the lock")
    if offline:
        raise UserError(f"{name}: {result.path} is stale ({why}) and --offline cannot re-lock",
                        hint="re-lock online, or pass --frozen to use the lock as it is")
    return why


def _ensure_fresh(project: Path, name: str, *, locked: bool, offline: bool, log: Log) -> tuple[bool, dict]:
    """Re-lock when stale (or fail with --locked). Returns (relocked, fresh key for the stamp)."""
    from ..lock import locker
    from ..model import lockfile, profiles

    why = _stale_reasons(project, name, locked=locked, offline=offline)
    if why is not None:
        log(f"{name}: lock is stale ({why}); re-locking")
        locker.lock_profiles(project, [name], log=log)
    profile = profiles.load(project, name)
    lock = lockfile.read(settings.lock_path(project, name))
    return why is not None, stamp.fresh_key(profile.files, lock.meta.resolver)


def _auth(project: Path, name: str):
    """Credentials from the profile's index URLs (``user:token@host``, ``${VAR}`` expanded)."""
    from ..core.urls import expand_env
    from ..model import profiles
    from ..net.credentials import Auth

    try:
        p = profiles.load(project, name)
    except EnvmgrError:
        return Auth()
    urls = [u for u in (p.index_url, p.torch_index, *p.extra_index_urls) if "://" in u]
    return Auth.from_urls(expand_env(u) for u in urls if "@" in u)


def sync(project: Path, name: str = "default", *, venv: Path | str | None = None, python: str | None = None,
         locked: bool = False, frozen: bool = False, offline: bool = False, find_links: Iterable[Path] = (),
         skip_driver_check: bool = False, reporter=None, log: Log | None = None) -> SyncResult:
    """Make the profile's venv exactly its lock. See the module docstring for the guarantees."""
    started = time.monotonic()
    log = log or _nolog
    path = venv_path(project, name, venv)
    find_links = [Path(d) for d in find_links]
    if not (locked and frozen):
        found = up_to_date(project, name, venv=path, python=python, frozen=frozen)
        if found is not None:
            return _noop_result(found, project, name, path, started)
        if not find_links and not os.path.lexists(path):
            made = _replay(project, name, path, python=python, frozen=frozen, skip_driver_check=skip_driver_check,
                           reporter=reporter, log=log, started=started)
            if made is not None:
                return made
    return _sync_slow(project, name, path, python=python, locked=locked, frozen=frozen, offline=offline,
                      find_links=find_links, skip_driver_check=skip_driver_check, reporter=reporter, log=log,
                      started=started)


def _replay(project: Path, name: str, venv: Path, *, python, frozen, skip_driver_check, reporter, log: Log,
            started: float) -> SyncResult | None:
    """Make a missing venv from the recipe an earlier sync of the same inputs left (see
    :mod:`envmgr.sync.recipe`); None when there is none that still holds (the slow path then runs).

    Same order as the slow path: every check before anything on disk changes, the venv
    created under its file lock with the marker in place, the result checked, then stamped.
    """
    from ..venv import uvtool
    from ..venv.distinfo import broken, installed, site_packages
    from . import recipe

    lock_file = settings.lock_path(project, name)
    lock_bytes = _read_or_none(lock_file)
    if lock_bytes is None:
        return None
    requested = os.path.realpath(python) if python else None
    lock_digest = "sha256:" + stamp.sha256_of(lock_bytes)  # = Lock.digest()
    r = recipe.load(recipe.key(profile=name, lock_path=lock_file, lock_digest=lock_digest, requested=requested),
                    frozen=frozen, requested=requested)
    if r is None:
        return None
    d = r["driver"]
    warning = None if skip_driver_check else check_driver(d["variant"], d["cuda"], d["min_driver"], driver_version())
    with _venv_lock(venv, log) as lock_fd:
        # Another sync made the venv, or re-locked, while we waited: the slow path decides.
        if os.path.lexists(venv) or _read_or_none(lock_file) != lock_bytes:
            return None
        if warning:
            log(f"warning: {warning}")
        log(f"{name}: creating {venv} with Python {r['python']['version']}")
        for line in r["lines"]:
            log(f"  {line}")
        stamp.drop(venv)
        uvtool.create_venv(venv, r["python"]["base"], prompt=name, allow_existing=True, keep_fds=(lock_fd,))
        if reporter is not None:
            reporter.start(len(r["packages"]), f"installing {len(r['packages'])} package(s)")
        try:
            uvtool.pip_sync(venv, r["pylock"], keep_fds=(lock_fd,))
        finally:
            if reporter is not None:
                reporter.advance(len(r["packages"]))
                reporter.finish()
        site = site_packages(venv)
        now = installed(site)
        packages = {n: i.version for n, i in now.items()}
        if (packages != r["packages"] or broken(site, now.values(), files=False)
                or os.path.realpath(venv / "bin" / "python") != r["python"]["base"]):
            from ..model import lockfile
            from ..venv import install

            install.verify(lockfile.read(lock_file), venv)  # raises, naming what differs
        _stamp_venv(venv, name, lock_file, lock_digest, None if frozen else r["fresh"], r["python"]["version"], python,
                    packages=packages, folders=r["folders"])
    return SyncResult(profile=name, venv=venv, lock=lock_file, noop=False, seconds=time.monotonic() - started,
                      installed=[f"{n}=={v}" for n, v in sorted(r["packages"].items())], created=True,
                      python=r["python"]["version"], warnings=[warning] if warning else [])


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


class _State:
    """What the venv holds now and what it takes to make it the lock (read-only inspection)."""

    def __init__(self, recreate: bool, target, base: str | None, damaged: dict, plan):
        self.recreate = recreate
        self.target = target  # install.PythonInfo the venv will run
        self.base = base  # interpreter to create the venv with, when recreating
        self.damaged = damaged
        self.plan = plan  # install.Plan


def _inspect(lock, venv: Path, requested, base: str | None) -> _State:
    from ..venv import install

    want = lock.meta.python
    current = None
    if _venv_state(venv) in ("venv", "ours"):
        try:
            current = install.query_python(install.venv_python(venv))
        except UserError:
            current = None  # a half-made venv: recreate it
    recreate = current is None or current.minor != want or (
        requested is not None and os.path.realpath(requested.executable) != os.path.realpath(current.executable))
    if recreate:
        base = requested.executable if requested else (base or find_python(want))
        target = requested or install.query_python(base)
    else:
        base, target = None, current
    site = None if recreate else install.site_packages(venv)
    now = install.installed(site)
    damaged = install.broken(site, now.values())
    plan = install.plan(lock, {n: d.version for n, d in now.items()}, env=target.markers, reinstall=damaged)
    return _State(recreate, target, base, damaged, plan)


def _preflight(lock, state: _State, *, offline: bool, find_links: list[Path], skip_driver_check: bool,
               driver=driver_version) -> list[str]:
    """Checks that stop a sync before it changes anything: driver, offline availability. Returns warnings."""
    from ..net import fetch

    warnings = []
    if state.plan.install and not skip_driver_check:
        warning = check_driver(lock.meta.variant, lock.meta.cuda, lock.meta.min_driver, driver())
        if warning:
            warnings.append(warning)
    if offline:
        missing = [p for p in state.plan.install if not fetch.cached_path(p.install_file).exists()
                   and not any((d / p.install_file.filename).is_file() for d in find_links)]
        if missing:
            fetch.fetch([(p.key, p.install_file) for p in missing], offline=True)  # raises, listing them all
    return warnings


def _stamp_venv(venv: Path, name: str, lock_file: Path, lock_digest: str, fresh: dict | None, version: str,
                python: str | None, *, packages: dict | None = None, folders: list[str] | None = None) -> dict:
    """Write the stamp of a venv that now is the lock (the last step of every sync that changed
    it); returns its folders' mtimes. ``packages`` (name -> version) when already read."""
    from ..venv.distinfo import installed, site_packages

    if packages is None:
        packages = {d.name: d.version for d in installed(site_packages(venv)).values()}
    return stamp.write(venv, {
        "profile": name,
        "lock": {"path": str(lock_file), "digest": lock_digest},
        "fresh": fresh,
        "python": {
            "version": version,
            "cfg": stamp.file_sha(venv / "pyvenv.cfg"),
            "base": os.path.realpath(venv / "bin" / "python"),
            "requested": os.path.realpath(python) if python else None,
        },
        "packages": packages,
    }, folders)


def _record(name: str, lock_file: Path, lock_digest: str, lock, state: _State, result, fresh: dict | None,
            files: dict, python: str | None, folders: list[str]) -> None:
    """Keep how this venv was made from nothing, for the next sync of a missing venv (:mod:`envmgr.sync.recipe`)."""
    from . import recipe

    requested = os.path.realpath(python) if python else None
    recipe.record(
        recipe.key(profile=name, lock_path=lock_file, lock_digest=lock_digest, requested=requested),
        base=state.base, version=result.python.version, fresh=fresh, variant=lock.meta.variant,
        cuda=lock.meta.cuda, min_driver=lock.meta.min_driver, pylock=result.pylock,
        files=sorted(str(files[p.install_file.sha256]) for p in result.plan.install),
        packages={p.key: p.version for p in result.plan.install}, lines=state.plan.lines(), folders=folders)


def _sync_slow(project: Path, name: str, venv: Path, *, python, locked, frozen, offline, find_links,
               skip_driver_check, reporter, log: Log, started: float) -> SyncResult:
    from ..model import lockfile, profiles
    from ..net import fetch
    from ..venv import install, uvtool

    # Read-only first: every input, the interpreter, the driver and (offline) the files are
    # checked before anything on disk changes.
    _check_inputs(venv, find_links, locked, frozen)
    driver = functools.cache(driver_version)  # asked once, by the first check that needs it
    requested = install.query_python(python) if python else None
    lock_file = settings.lock_path(project, name)
    if frozen:
        lock = lockfile.read(lock_file)
        want = lock.meta.python
    else:
        want = profiles.load(project, name).python
        stale = _stale_reasons(project, name, locked=locked, offline=offline)
        lock = None if stale else lockfile.read(lock_file)
    if requested is not None and requested.minor != want:
        raise UserError(f"--python {python} is Python {requested.version}; the lock needs Python {want}")
    base = None
    if lock is not None:
        pre = _inspect(lock, venv, requested, None)
        _preflight(lock, pre, offline=offline, find_links=find_links, skip_driver_check=skip_driver_check,
                   driver=driver)
        base = pre.base
    elif requested is None:
        base = find_python(want)

    with _venv_lock(venv, log) as lock_fd:
        found = up_to_date(project, name, venv=venv, python=python, frozen=frozen)
        if found is not None:  # another sync did it while we waited
            return _noop_result(found, project, name, venv, started)
        relocked, fresh = (False, None) if frozen else _ensure_fresh(project, name, locked=locked, offline=offline, log=log)
        lock_bytes = lock_file.read_bytes()
        lock = lockfile.loads(lock_bytes.decode("utf-8"), lock_file)
        state = _inspect(lock, venv, requested, base)  # again: the venv may have changed while we waited
        warnings = _preflight(lock, state, offline=offline, find_links=find_links, skip_driver_check=skip_driver_check,
                              driver=driver)
        for w in warnings:
            log(f"warning: {w}")
        plan = state.plan

        # Fetch and verify every file first: a bad hash or a dead network fails here, venv untouched.
        items = [(p.key, p.install_file) for p in plan.install]
        downloads = [f for _, f in items if not fetch.cached_path(f).exists()
                     and not any((d / f.filename).is_file() for d in find_links)]
        files = fetch.fetch(items, auth=_auth(project, name) if downloads and not offline else None,
                            offline=offline, find_links=find_links, reporter=reporter) if items else {}

        if plan.empty and not state.recreate:
            log(f"{name}: {venv} already matches the lock")
        else:
            stamp.drop(venv)
            if state.recreate:
                log(f"{name}: creating {venv} with Python {state.target.version}")
                _clear(venv)
                uvtool.create_venv(venv, state.base, prompt=name, allow_existing=True, keep_fds=(lock_fd,))
            for line in plan.lines():
                log(f"  {line}")
        # uv inherits the lock: if envmgr is killed, uv finishes before the next sync goes on
        result = install.install(lock, venv, files=files, reinstall=state.damaged, keep_fds=(lock_fd,))
        lock_digest = "sha256:" + stamp.sha256_of(lock_bytes)  # = Lock.digest()
        dirs = _stamp_venv(venv, name, lock_file, lock_digest, fresh, result.python.version, python)
        if state.recreate and not find_links and result.pylock:
            _record(name, lock_file, lock_digest, lock, state, result, fresh, files, python, sorted(dirs))
    return SyncResult(
        profile=name, venv=venv, lock=lock_file, noop=plan.empty and not state.recreate,
        seconds=time.monotonic() - started,
        installed=[f"{p.key}=={p.version}" for p in plan.install],
        removed=plan.to_json()["removed"], unchanged=len(plan.unchanged),
        bytes_downloaded=0 if offline else sum(f.size for f in downloads),
        relocked=relocked, created=state.recreate, python=result.python.version, warnings=warnings,
    )


# -- check -----------------------------------------------------------------------------------

class DriftReport:
    def __init__(self, profile: str, venv: Path, lock: Path, problems: list[str]):
        self.profile, self.venv, self.lock, self.problems = profile, venv, lock, problems

    @property
    def exact(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        if self.exact:
            return f"{self.profile}: {self.venv} matches {self.lock}"
        return f"{self.profile}: {self.venv} differs from {self.lock}:\n" + "\n".join(f"  {p}" for p in self.problems)

    def to_json(self) -> dict:
        return {"profile": self.profile, "venv": str(self.venv), "lock": str(self.lock), "exact": self.exact,
                "problems": self.problems}


def check(project: Path, name: str = "default", *, venv: Path | str | None = None, python: str | None = None,
          frozen: bool = False) -> DriftReport:
    """How the venv differs from the lock (and whether the lock is stale, unless ``frozen``); changes nothing."""
    from ..lock import locker
    from ..model import lockfile
    from ..venv import install

    path = venv_path(project, name, venv)
    lock_file = settings.lock_path(project, name)
    problems: list[str] = []
    if not frozen:
        fresh = locker.check(project, [name])[0]
        if not fresh.fresh:
            problems.append(f"the lock is stale: {'; '.join(fresh.reasons)}")
    lock = lockfile.read(lock_file)
    state = _venv_state(path)
    if state == "foreign":
        raise UserError(f"{path} exists and is not a venv", hint="pass --venv with the venv's path")
    if state in ("missing", "empty"):
        problems.append(f"{path} does not exist (run `envmgr sync {name}`)")
        return DriftReport(name, path, lock_file, problems)
    if state == "ours":
        problems.append("an earlier sync was interrupted")
    try:
        info = install.query_python(install.venv_python(path))
    except UserError as exc:
        problems.append(f"its python does not run ({exc.message})")
        return DriftReport(name, path, lock_file, problems)
    if python:
        requested = install.query_python(python)
        if os.path.realpath(requested.executable) != os.path.realpath(info.executable):
            problems.append(f"it runs {os.path.realpath(info.executable)}, not --python {python}")
    problems += install.drift(lock, path, info)
    return DriftReport(name, path, lock_file, problems)


# -- run -------------------------------------------------------------------------------------

def activated_env(venv: Path, base: dict | None = None) -> dict:
    """The environment a command sees inside ``venv`` (as ``source VENV/bin/activate`` sets it)."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONHOME", None)
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    return env


def run(project: Path, name: str, cmd: list[str], *, log: Log | None = None, **options) -> None:
    """Sync when needed, then replace this process with ``cmd`` inside the venv (like ``uv run``)."""
    import shutil

    if not cmd:
        raise UserError("no command given", hint=f"envmgr run {name} -- python -c 'import torch'")
    result = sync(project, name, log=log, **options)
    env = activated_env(result.venv)
    exe = shutil.which(cmd[0], path=env["PATH"])
    if exe is None:
        raise UserError(f"{cmd[0]}: command not found in {result.venv}/bin or on PATH")
    os.execve(exe, cmd, env)
