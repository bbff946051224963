"""Install: a lock's verified files into a target venv, exactly (shared by sync and export-image).

Input: a lock, a venv path (created here when missing), and ``{sha256: path}`` of the lock's
files already fetched and hash-checked by :func:`envmgr.net.fetch.fetch`. Output: the venv holds
exactly the lock's packages for its interpreter (extras removed, nothing else installed).

The hard part is doing that without resolving and without trusting anything but the lock:
uv runs ``pip sync --require-hashes --offline`` over a generated PEP 751 lock
(:func:`local_lock`) that names, for each package, the verified copy in envmgr's cache
(``path``), so uv installs the lock as it stands, from the lock's own bytes, and checks each
size and hash again. (A requirements file would make uv resolve, reading every wheel's
metadata first.) Planning is separate and pure: :func:`plan` compares the lock with what is
installed. :func:`requirements` gives the same set as a hashed requirements file, for the
Containerfile builder (pip or uv inside an image build).

A cold sync need not wait for the last download to start unpacking: :class:`Staging` installs
each batch of files already verified into a scratch venv beside the target (in the sync's
own folder, :func:`envmgr.venv.uvtool.workdir`) while the rest download, so uv's cache holds
them unpacked, and the final exact ``uv pip sync`` of the target only links. The target
venv itself is touched only after every file is verified.

A venv may be built at a path other than the one it finally runs from (the image exporter
stages ``/opt/venv`` in a temp folder): ``relocatable=True`` creates it with
``uv venv --relocatable``, whose scripts find their interpreter relative to themselves.
"""

from __future__ import annotations

import shutil
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from ..core.errors import EnvmgrError, UserError
from ..model.lockfile import Lock, LockedPackage
from .uvtool import create_venv, pip_install_staged, pip_sync, workdir
from ..model.names import canonical
from .distinfo import broken, installed, is_venv, record_paths, site_packages, venv_python

# Run by a target interpreter (or, for the interpreter envmgr runs on, in-process): its version
# and PEP 508 marker environment.
_DESCRIBE = r"""
import os, platform, sys
def describe():
    impl = sys.implementation
    iv = "{0.major}.{0.minor}.{0.micro}".format(impl.version)
    if impl.version.releaselevel != "final":
        iv += impl.version.releaselevel[0] + str(impl.version.serial)
    return {
        "executable": sys.executable,
        "version": platform.python_version(),
        "markers": {
            "implementation_name": impl.name,
            "implementation_version": iv,
            "os_name": os.name,
            "platform_machine": platform.machine(),
            "platform_release": platform.release(),
            "platform_system": platform.system(),
            "platform_version": platform.version(),
            "python_full_version": platform.python_version(),
            "platform_python_implementation": platform.python_implementation(),
            "python_version": ".".join(platform.python_version_tuple()[:2]),
            "sys_platform": sys.platform,
        },
    }
"""


@dataclass(frozen=True)
class PythonInfo:
    executable: str
    version: str  # 3.11.7
    markers: dict = field(default_factory=dict, compare=False)

    @property
    def minor(self) -> str:
        """``3.11``: what a lock's ``python`` names."""
        return ".".join(self.version.split(".")[:2])


_queried: dict[tuple, PythonInfo] = {}


def query_python(path: str | Path) -> PythonInfo:
    """Version and marker environment of the interpreter at ``path``; a one-line error if it is not python.

    Asked once per binary: answered in-process for the interpreter envmgr runs on (a venv's
    python is its base binary), else by running it.
    """
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise UserError(f"{path}: cannot run it as python: {exc.strerror}")
    key = (real, st.st_ino, st.st_mtime_ns)
    if key in _queried:
        return _queried[key]
    if real == os.path.realpath(sys.executable):
        scope: dict = {}
        exec(_DESCRIBE, scope)
        data = scope["describe"]()
        data["executable"] = real
    else:
        script = _DESCRIBE + "\nimport json\nprint(json.dumps(describe()))\n"
        try:
            proc = subprocess.run([str(path), "-I", "-c", script], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(f"{path}: cannot run it as python: {exc.strerror if isinstance(exc, OSError) else 'timed out'}")
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"{path}: not a working python ({last})")
        try:
            data = json.loads(proc.stdout)
        except ValueError:
            raise UserError(f"{path}: not a working python (it printed no description)")
    info = PythonInfo(data["executable"], data["version"], data["markers"])
    _queried[key] = info
    return info


# -- what is installed: envmgr.venv.distinfo ----------------------------------------------------

def torn(why: str) -> bool:
    """A :func:`broken` reason that uv cannot repair by itself (it would not see or fully remove the dist)."""
    return not why.startswith("installed by ")


def remove_dist(site: Path, dist_info: str) -> None:
    """Uninstall one dist-info folder, crash-safe: its files first, RECORD last.

    A kill part-way leaves RECORD in place, so the next sync finds the package damaged and
    removes the rest. (uv removes in path order, and ``name-1.0.dist-info`` sorts before
    ``name/``: a killed uv leaves files that no RECORD names.)
    """
    root = os.path.normpath(site.parent.parent.parent)  # the venv: never delete outside it
    info = site / dist_info
    for name in record_paths(site, dist_info) or ():
        p = Path(name)
        if os.path.commonpath([root, p]) != root or os.path.commonpath([info, p]) == str(info):
            continue
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            continue
        if p.suffix == ".py":
            for pyc in (p.parent / "__pycache__").glob(f"{p.stem}.*.pyc"):
                pyc.unlink(missing_ok=True)
        _prune(p.parent, site)
    for name in sorted(os.listdir(info)) if info.is_dir() else ():
        target = info / name
        if name == "RECORD":
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    if info.is_dir():
        shutil.rmtree(info)


def _prune(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to ``stop`` while they are empty (or hold only __pycache__)."""
    while folder != stop and stop in folder.parents:
        try:
            entries = os.listdir(folder)
        except FileNotFoundError:
            folder = folder.parent
            continue
        if entries == ["__pycache__"] and not os.listdir(folder / "__pycache__"):
            os.rmdir(folder / "__pycache__")
            entries = []
        if entries:
            return
        os.rmdir(folder)
        folder = folder.parent


# -- plan ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What turns an installed set into the lock: pure data, computed without touching disk."""

    install: tuple[LockedPackage, ...]  # missing, other version, or to reinstall
    remove: tuple[str, ...]  # installed names the lock does not have (canonical)
    unchanged: tuple[LockedPackage, ...]
    previous: dict = field(default_factory=dict, compare=False)  # name -> installed version

    @property
    def empty(self) -> bool:
        return not self.install and not self.remove

    def lines(self) -> list[str]:
        """``+ name version``, ``~ name old -> new``, ``- name version``: one line per change, for logs."""
        out = []
        for p in self.install:
            old = self.previous.get(p.key)
            if old is None:
                out.append(f"+ {p.key} {p.version}")
            elif old == p.version:
                out.append(f"~ {p.key} {p.version} (reinstall)")
            else:
                out.append(f"~ {p.key} {old} -> {p.version}")
        out += [f"- {n} {self.previous.get(n, '')}".rstrip() for n in self.remove]
        return out

    def to_json(self) -> dict:
        return {
            "installed": [f"{p.key}=={p.version}" for p in self.install],
            "removed": [f"{n}=={self.previous[n]}" for n in self.remove],
            "unchanged": len(self.unchanged),
        }


def applies(pkg: LockedPackage, env: dict | None) -> bool:
    """Does the package's marker hold in ``env`` (a PEP 508 environment)? No env: every package."""
    if not pkg.marker or env is None:
        return True
    from packaging.markers import Marker

    return Marker(pkg.marker).evaluate({**env, "extra": ""})


def wanted(lock: Lock, env: dict | None = None) -> tuple[LockedPackage, ...]:
    """The lock's packages for an interpreter with marker environment ``env``."""
    return tuple(p for p in lock.packages if applies(p, env))


def plan(lock: Lock, installed: dict[str, str], *, env: dict | None = None,
         reinstall: Iterable[str] = ()) -> Plan:
    """Compare the lock with ``installed`` (name -> version): install, remove, unchanged."""
    installed = {canonical(n): v for n, v in installed.items()}
    redo = {canonical(n) for n in reinstall}
    want = wanted(lock, env)
    keys = {p.key for p in want}
    install, unchanged = [], []
    for p in want:
        if installed.get(p.key) == p.version and p.key not in redo:
            unchanged.append(p)
        else:
            install.append(p)
    remove = tuple(sorted(n for n in installed if n not in keys))
    return Plan(tuple(install), remove, tuple(unchanged), dict(installed))


# -- acting ----------------------------------------------------------------------------------

def requirements(packages: Iterable[LockedPackage]) -> str:
    """A ``--require-hashes`` requirements file pinning exactly these files."""
    lines = []
    for p in sorted(packages, key=lambda p: p.key):
        marker = f" ; {p.marker}" if p.marker else ""
        lines.append(f"{p.key}=={p.version}{marker} \\\n    --hash=sha256:{p.install_file.sha256}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class InstallResult:
    plan: Plan
    seconds: float
    python: PythonInfo
    output: str = ""  # uv's messages


def install(lock: Lock, venv: Path, *, python: str | Path | None = None, files: dict[str, Path],
            reporter=None, reinstall: Iterable[str] = (), relocatable: bool = False,
            link_mode: str | None = None, prompt: str | None = None, verbose: bool = False,
            keep_fds: tuple[int, ...] = (), python_platform: str | None = None) -> InstallResult:
    """Make ``venv`` hold exactly the lock's packages, from the verified ``files`` (sha256 -> path).

    ``python``: the interpreter for a venv that does not exist yet (it must then match the
    lock's python); an existing venv is used as it is. ``reporter`` (fetch's Reporter protocol)
    is told the number of packages uv installs, not bytes. ``files`` must hold every file the
    plan installs (what :func:`envmgr.net.fetch.fetch` returned). ``reinstall``: names installed
    but damaged. ``keep_fds``: descriptors uv inherits (sync passes its file lock, so a uv
    that outlives a killed envmgr finishes before the next sync starts). ``python_platform``:
    uv's ``--python-platform`` (``pip_sync``), for a staged venv of another machine's files.
    Raises before
    touching the venv when a file is missing; after uv ran, checks the venv really is the lock.
    """
    started = time.monotonic()
    venv = Path(venv)
    if not is_venv(venv):
        if python is None:
            raise UserError(f"{venv} is not a venv and no python was given to create it")
        _check_python(lock, query_python(python), python)
        create_venv(venv, python, relocatable=relocatable, prompt=prompt)
    info = query_python(venv_python(venv))
    _check_python(lock, info, venv)
    site = site_packages(venv)
    now = installed(site)
    damaged = broken(site, now.values())
    redo = set(canonical(n) for n in reinstall) | set(damaged)
    p = plan(lock, {n: d.version for n, d in now.items()}, env=info.markers, reinstall=redo)
    missing = [f"{q.key} ({q.install_file.filename})" for q in p.install if q.install_file.sha256 not in files]
    if missing:
        raise UserError(f"{len(missing)} file(s) to install were not fetched: {', '.join(missing)}")
    output = ""
    if not p.empty:
        if reporter is not None:
            reporter.start(len(p.install), f"installing {len(p.install)} package(s)")
        try:
            for name, why in sorted(damaged.items()):
                if torn(why):  # remove what uv would not see or would half-remove; it reinstalls if wanted
                    for dist_info in now[name].dist_infos:
                        remove_dist(site, dist_info)
            output = pip_sync(venv, local_lock(lock, wanted(lock, info.markers), files),
                              reinstall=sorted(redo & {q.key for q in p.install}), link_mode=link_mode,
                              verbose=verbose, keep_fds=keep_fds, python_platform=python_platform)
        finally:
            if reporter is not None:
                reporter.advance(len(p.install))
                reporter.finish()
    verify(lock, venv, info)
    return InstallResult(p, time.monotonic() - started, info, output)


class Staging:
    """uv's cache filled while the files still download: :meth:`ready` hands over one verified
    file; a thread installs what is ready, a batch at a time (``uv pip install --no-deps``),
    into a staging venv with interpreter ``python``, beside ``venv`` (never in it). ``counter``
    (``advance(n)``) is told each package unpacked. :meth:`close` waits for the batch running,
    drops the rest (the final sync unpacks those itself) and removes the staging venv; it
    returns the keys staged.

    ``direct``: ``venv`` is one this sync creates where nothing was (no previous venv to keep
    usable), so the batches go straight into it (``prompt``: its prompt): each package lands
    there once its own file is verified, and the final sync has nothing left to link. The
    caller removes ``venv`` when the sync fails.
    """

    def __init__(self, lock: Lock, venv: Path, python: str, *, counter=None, keep_fds: tuple[int, ...] = (),
                 direct: bool = False, prompt: str | None = None):
        import threading

        self.lock, self.venv, self.python, self.counter, self.keep_fds = lock, Path(venv), python, counter, keep_fds
        self.direct, self.prompt = direct, prompt
        self.stage = self.venv if direct else Path(workdir(venv)) / "stage"
        self.staged: set[str] = set()
        self._pending: list[tuple[LockedPackage, Path]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="envmgr-staging", daemon=True)
        self._thread.start()

    def ready(self, pkg: LockedPackage, path: Path) -> None:
        with self._cond:
            self._pending.append((pkg, path))
            self._cond.notify()

    def _run(self) -> None:
        try:
            create_venv(self.stage, self.python, allow_existing=True, keep_fds=self.keep_fds, prompt=self.prompt)
        except EnvmgrError:
            return  # no staging: the final sync unpacks everything itself
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch, self._pending = self._pending, []
            pylock = local_lock(self.lock, [q for q, _ in batch], {q.install_file.sha256: path for q, path in batch})
            if not pip_install_staged(self.stage, self.venv, pylock, keep_fds=self.keep_fds):
                return
            self.staged.update(q.key for q, _ in batch)
            if self.counter is not None:
                self.counter.advance(len(batch))

    def close(self) -> set[str]:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        if self.direct:
            return self.staged
        shutil.rmtree(self.stage, ignore_errors=True)
        try:
            os.rmdir(self.stage.parent)
        except OSError:
            pass
        return self.staged


def _check_python(lock: Lock, info: PythonInfo, where) -> None:
    if lock.meta.python and info.minor != lock.meta.python:
        raise UserError(f"{where} is Python {info.version}; the lock is for Python {lock.meta.python}",
                        hint="use an interpreter of the lock's version")


def local_lock(lock: Lock, want: Iterable[LockedPackage], files: dict[str, Path]) -> str:
    """A PEP 751 lock of exactly ``want``, one file each: the verified local copy (``path``)
    where ``files`` has one, else the recorded URL (a package the venv already holds)."""
    one = [replace(q, wheels=(q.install_file,), sdist=None) if q.install_file.is_wheel
           else replace(q, wheels=(), sdist=q.install_file) for q in want]
    return lock.with_packages(one).dumps(local={q.install_file.sha256: files[q.install_file.sha256]
                                                for q in one if q.install_file.sha256 in files})


def verify(lock: Lock, venv: Path, info: PythonInfo | None = None) -> None:
    """Raise unless ``venv`` holds exactly the lock's packages, each with one whole dist-info.

    Right after uv installed them every file is there; :func:`drift` checks each one.
    """
    problems = drift(lock, venv, info, files=False)
    if problems:
        raise EnvmgrError(f"{venv} does not match the lock after installing: {'; '.join(problems[:5])}",
                          hint="run the sync again; report a bug if it persists")


def drift(lock: Lock, venv: Path, info: PythonInfo | None = None, *, files: bool = True) -> list[str]:
    """How ``venv`` differs from the lock, one human line each; empty when it is exact.

    ``files``: also check that every file each RECORD lists is there.
    """
    if not is_venv(venv):
        return [f"{venv} is not a venv"]
    if info is None:
        try:
            info = query_python(venv_python(venv))
        except UserError as exc:
            return [f"its python does not run ({exc.message})"]
    out = []
    if lock.meta.python and info.minor != lock.meta.python:
        out.append(f"python is {info.version}, the lock needs {lock.meta.python}")
    site = site_packages(venv)
    now = installed(site)
    p = plan(lock, {n: d.version for n, d in now.items()}, env=info.markers)
    for q in p.install:
        old = p.previous.get(q.key)
        out.append(f"{q.key}: {old} installed, lock has {q.version}" if old else f"{q.key} {q.version} missing")
    out += [f"{n} {p.previous[n]} is not in the lock" for n in p.remove]
    damaged = broken(site, [now[q.key] for q in p.unchanged], files=files)
    out += [f"{n}: {why}" for n, why in sorted(damaged.items())]
    return out
