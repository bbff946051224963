"""The venv in layers: which packages share a layer (a pure plan), staging, byte-compiling and
the entries of each layer.

Plan (from the lock alone, before anything is installed, so cached layers need no install):
one layer per large package (``nvidia-*``, ``torch``, ``triton``, any wheel of at least
``threshold`` bytes), stable families first; the other packages share one layer; the top
layer (built by the exporter) holds what no package owns. A layer's cache key names every
input of its bytes: the packages' hashes, the venv path, the interpreters, the installer,
the epoch, the compressor.

Staging: only the packages of layers that miss the cache are installed (the shared install
step, into a relocatable venv in a temp folder), then byte-compiled with
``UNCHECKED_HASH`` pycs whose recorded source paths are the final ones in the image.
Ownership comes from each ``*.dist-info/RECORD``; a ``.pyc`` belongs to its source's owner.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import posixpath
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..core.files import write_atomic
from ..model.lockfile import LockedPackage
from .layers import Entry, file_entry

DEFAULT_THRESHOLD = 1 << 20  # wheel bytes: a package this big gets its own layer
MAX_ENV_LAYERS = 40
_FAMILY = re.compile(r"^(nvidia-.*|torch|triton|pytorch-triton.*)$")


@dataclass(frozen=True)
class Group:
    title: str  # "torch", "nvidia-cublas", "small packages"
    packages: tuple[LockedPackage, ...]

    @property
    def wheel_bytes(self) -> int:
        return sum(p.size for p in self.packages)

    def key_parts(self) -> list:
        return sorted((p.key, p.version, p.install_file.sha256) for p in self.packages)


def _order(p: LockedPackage) -> tuple:
    if p.key.startswith("nvidia-"):
        return (0, p.key)
    if p.key in ("triton", "pytorch-triton") or p.key.startswith("pytorch-triton"):
        return (1, p.key)
    if p.key == "torch":
        return (2, p.key)
    return (3, p.key)


def is_pure(p: LockedPackage) -> bool:
    """A pure-python wheel (``-none-any``): the same bytes installed on every platform."""
    return p.install_file.filename.endswith("-none-any.whl")


def plan(packages, *, threshold: int = DEFAULT_THRESHOLD, max_layers: int = MAX_ENV_LAYERS,
         split_pure: bool = False) -> list[Group]:
    """Packages -> layer groups, base-most first. Pure: the same lock gives the same plan.

    ``split_pure`` (an image a platform): the small packages' layer becomes two, the pure-python
    wheels' (the same bytes on every platform: one blob in the registry for all of them) and
    the binary ones'."""
    own = [p for p in packages if _FAMILY.match(p.key) or p.size >= threshold]
    rest = [p for p in packages if p not in own]
    budget = max(1, max_layers - 2 - split_pure)  # the shared layer(s) and the top layer
    if len(own) > budget:
        own.sort(key=lambda p: (-p.size, p.key))
        rest += own[budget:]
        own = own[:budget]
    groups = [Group(p.key, (p,)) for p in sorted(own, key=_order)]
    shared = [("small packages", rest)]
    if split_pure:
        shared = [("small packages", [p for p in rest if is_pure(p)]),
                  ("small binary packages", [p for p in rest if not is_pure(p)])]
    groups += [Group(title, tuple(sorted(ps, key=lambda p: p.key))) for title, ps in shared if ps]
    return groups


# -- staging ----------------------------------------------------------------------------------

# Run by the staging interpreter. marshal format 2 has no back-references: format 3+ flags an
# object for reuse when its refcount is above one, which depends on what else the compiling
# process holds, so the same source can give different pyc bytes. Format 2 is read by every
# python 3; with PYTHONHASHSEED=0 (set ordering) the bytes depend on the source only.
_COMPILE = r"""
import importlib.util, json, marshal, os, sys
from concurrent.futures import ProcessPoolExecutor

job = json.loads(sys.stdin.readline())
site, image_site = job["site"], job["image_site"]
tag = sys.implementation.cache_tag

def one(path):
    try:
        with open(path, "rb") as fh:
            source = fh.read()
        code = compile(source, image_site + "/" + os.path.relpath(path, site), "exec", dont_inherit=True)
    except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
        return 0
    head, name = os.path.split(path)
    out_dir = os.path.join(head, "__pycache__")
    os.makedirs(out_dir, exist_ok=True)
    data = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + importlib.util.source_hash(source) + marshal.dumps(code, 2)
    dest = os.path.join(out_dir, name[:-3] + "." + tag + ".pyc")
    with open(dest + ".tmp", "wb") as fh:
        fh.write(data)
    os.replace(dest + ".tmp", dest)
    return 1

with ProcessPoolExecutor(max_workers=job["jobs"]) as pool:
    for line in sys.stdin:  # one group a line, as its files are at hand
        i, paths = json.loads(line)
        n = sum(pool.map(one, sorted(paths), chunksize=32)) if paths else 0
        print(i, n, flush=True)
"""


class Compiler:
    """Byte-compiles groups of ``.py`` files under ``site`` with ``python`` (unchecked-hash pycs
    naming ``image_site`` paths) in one subprocess, fed a group at a time: :meth:`add` queues
    group ``i`` (from any thread, as its files come), ``on_done(i)`` is called from a reader
    thread as each is compiled, in the order added. :meth:`close` waits for every group and
    raises what went wrong (in the subprocess or in ``on_done``); :meth:`kill` stops it."""

    def __init__(self, python: Path, site: Path, image_site: str, on_done, jobs: int = 0) -> None:
        if site.is_dir():
            for pyc in site.rglob("*.pyc"):
                pyc.unlink()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PYTHONHASHSEED"] = "0"
        # -W ignore: a source's SyntaxWarnings would fill the stderr pipe read at the end.
        self.proc = subprocess.Popen([str(python), "-I", "-W", "ignore", "-c", _COMPILE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)  # its own group: kill() stops its workers too
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # lines to send; None: no more
        self.on_done, self.count, self.error = on_done, 0, None
        self._queue.put({"site": str(site), "image_site": image_site, "jobs": jobs or os.cpu_count() or 1})
        # A writer thread: the pipe takes only a few groups' paths while the subprocess compiles
        # one, and whoever adds a group (the downloads) must not wait for that.
        self._writer = threading.Thread(target=self._write, name="envmgr-compile-in", daemon=True)
        self._reader = threading.Thread(target=self._read, name="envmgr-compile-out", daemon=True)
        self._writer.start()
        self._reader.start()

    def _write(self) -> None:
        stdin = self.proc.stdin
        try:
            while (obj := self._queue.get()) is not None:
                stdin.write(json.dumps(obj) + "\n")  # type: ignore[union-attr]
                stdin.flush()  # type: ignore[union-attr]
            stdin.close()  # type: ignore[union-attr]
        except (BrokenPipeError, ValueError, OSError):
            pass  # it died: close() says why

    def add(self, i: int, paths: list[Path]) -> None:
        self._queue.put([i, [str(p) for p in paths]])

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            i, n = line.split()
            self.count += int(n)
            if self.error is None:
                try:
                    self.on_done(int(i))
                except BaseException as exc:  # raised by close()
                    self.error = exc

    def close(self) -> int:
        """Wait for every group added; the number of pycs written."""
        self._queue.put(None)
        self._writer.join()
        self._reader.join()
        err = self.proc.stderr.read()  # type: ignore[union-attr]
        if self.error is not None:
            raise self.error
        if self.proc.wait() != 0:
            raise UserError(f"byte-compiling the staged venv failed: {(err.strip().splitlines() or ['?'])[-1]}")
        return self.count

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the pool's workers hold its stdout open too
        self._queue.put(None)
        self._writer.join()
        self._reader.join()
        self.proc.wait()


def _record(dist: Path) -> list[str]:
    try:
        with open(dist / "RECORD", newline="", encoding="utf-8") as fh:
            return [row[0] for row in csv.reader(fh) if row and row[0]]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{dist}: cannot read RECORD: {exc}")


# Installer bookkeeping that names this machine (cache timestamps, local file URLs): dropped,
# with its RECORD rows, so the same lock gives the same bytes anywhere.
_MACHINE_FILES = ("uv_cache.json", "direct_url.json")


def normalize_dist_info(dist: Path) -> None:
    drop = {f"{dist.name}/{name}" for name in _MACHINE_FILES if (dist / name).exists()}
    if not drop:
        return
    record = dist / "RECORD"
    lines = record.read_text("utf-8").splitlines(keepends=True)
    kept = [line for line in lines if next(csv.reader([line]), [""])[0] not in drop]
    write_atomic(record, "".join(kept), fsync=False)  # the staged venv lives for one export
    for name in _MACHINE_FILES:
        (dist / name).unlink(missing_ok=True)


def pyc_of(rel_py: str, cache_tag: str) -> str:
    head, name = posixpath.split(rel_py)
    return posixpath.join(head, "__pycache__", f"{name[:-3]}.{cache_tag}.pyc")


def owned_entries(venv: Path, site: Path, packages, *, image_venv: str, cache_tag: str) -> dict[str, list[Entry]]:
    """Package key -> the entries (image paths) of the files its RECORD lists, plus its pycs."""
    from ..model.names import canonical

    by_key = {p.key: p for p in packages}
    out: dict[str, list[Entry]] = {k: [] for k in by_key}
    venv_root = venv.absolute()
    root = image_venv.strip("/")
    for dist in sorted(site.glob("*.dist-info")):
        name = canonical(dist.name[: -len(".dist-info")].rsplit("-", 1)[0])
        if name not in out:
            continue
        normalize_dist_info(dist)
        seen = set()
        for rel in _record(dist):
            src = Path(os.path.normpath(site / rel))
            try:
                inside = src.relative_to(venv_root)
            except ValueError:
                continue  # RECORD pointing outside the venv: not ours to ship
            rel_venv = inside.as_posix()
            for path in (rel_venv, pyc_of(rel_venv, cache_tag) if rel_venv.endswith(".py") else None):
                if not path or path in seen:
                    continue
                full = venv_root / path
                if not full.is_file():
                    continue
                seen.add(path)
                out[name].append(file_entry(f"{root}/{path}", full))
    missing = [k for k, v in out.items() if not v]
    if missing:
        raise UserError(f"the staged venv lacks files of {', '.join(sorted(missing))}")
    return out


def host_cache_tag(python: Path) -> str:
    proc = subprocess.run([str(python), "-c", "import sys; print(sys.implementation.cache_tag)"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or sys.implementation.cache_tag
