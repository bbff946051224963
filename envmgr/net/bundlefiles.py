"""Reading a bundle (``envmgr bundle``'s output): its manifest, and its files into the cache.

A bundle is a folder, or an uncompressed tar of one, holding ``bundle.json`` (the manifest),
``profiles/``, ``locks/``, every file the locks name at ``files/sha256/<hex>/<filename>``
(the cache's own layout), envmgr's wheels in ``tool/`` and ``bootstrap.sh``. Here, below
``sync``, so that ``sync --bundle`` can take its files from one: a file comes into the
content-addressed cache only after its bytes hashed to the lock's sha256 (the tampered file
is refused naming both hashes), a file the bundle lacks is exit 1 naming it, and anything
that is not a bundle (another file, a truncated tar, a manifest of another format, another
python or platform) is a one-line error before anything is written.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

from ..core.errors import CheckFailed, HashMismatchError, UserError
from ..model.lockfile import LockedFile
from .fetch import CHUNK, WrongBytes, cached_path, write_verified

MANIFEST = "bundle.json"
FORMAT = "envmgr-bundle/1"


def member(f: LockedFile) -> str:
    """Where a lock's file lives in a bundle (and below a cache root): ``files/sha256/<hex>/<filename>``."""
    return f"files/sha256/{f.sha256}/{f.filename}"




class Bundle:
    """An opened bundle: its manifest, checked, and its members by name (a folder or a tar)."""

    def __init__(self, path: Path, manifest: dict, tar: tarfile.TarFile | None,
                 members: dict[str, tarfile.TarInfo]):
        self.path, self.manifest, self._tar, self._members = path, manifest, tar, members

    @property
    def python(self) -> str:
        return self.manifest["python"]

    @property
    def platform(self) -> str:
        return self.manifest["platform"]

    @property
    def profiles(self) -> list[str]:
        return sorted(self.manifest["profiles"])

    def has(self, name: str) -> bool:
        return name in self._members if self._tar is not None else (self.path / name).is_file()

    def chunks(self, name: str) -> Iterable[bytes]:
        if self._tar is not None:
            fh = self._tar.extractfile(self._members[name])
        else:
            fh = open(self.path / name, "rb")
        with fh:
            yield from iter(lambda: fh.read(CHUNK), b"")

    def read(self, name: str) -> bytes:
        return b"".join(self.chunks(name))

    def check_target(self, python: str, platform_: str, what: str) -> None:
        """A one-line error unless the bundle is for ``python`` on ``platform_`` (``what`` names them)."""
        if (self.python, self.platform) != (python, platform_):
            raise UserError(f"bundle {self.path} is for Python {self.python} on {self.platform}; "
                            f"{what} is Python {python} on {platform_}",
                            hint="make the bundle for this machine's python and platform")

    def check_lock(self, lock, what: str):
        """The lock as this bundle serves it (for several platforms: the bundle's platform's view),
        after :meth:`check_target` of its python and platform."""
        if self.platform in lock.platforms:
            lock = lock.for_platform(self.platform)
        self.check_target(lock.meta.python, lock.meta.platform, what)
        return lock

    def seed(self, items: Iterable[tuple[str, LockedFile]], cache: Path | None = None) -> dict[str, Path]:
        """Every (package, file) into the cache from the bundle, hash-checked; sha256 -> cached path.

        Checks every file is there first (exit 1 naming the missing ones), then copies: a file
        whose bytes are not the lock's is refused naming both hashes, and never cached."""
        items = list(items)
        todo = [(n, f) for n, f in items if not cached_path(f, cache).exists()]
        missing = [f"{n} ({f.filename}, sha256:{f.sha256})" for n, f in todo if not self.has(member(f))]
        if missing:
            raise CheckFailed(f"bundle {self.path} lacks {len(missing)} file(s) the lock names: {', '.join(missing)}",
                              hint="make the bundle again from this lock")
        for name, f in todo:
            try:
                write_verified(self.chunks(member(f)), cached_path(f, cache), f.sha256)
            except WrongBytes as exc:
                raise HashMismatchError(
                    f"hash mismatch for {name} in bundle {self.path}: {member(f)} expected sha256:{f.sha256}, "
                    f"got sha256:{exc.actual}",
                    hint="the bundle was changed after it was made; nothing was installed or written") from None
            except (OSError, tarfile.TarError, EOFError) as exc:
                raise UserError(f"bundle {self.path}: cannot read {member(f)}: {exc}") from None
        return {f.sha256: cached_path(f, cache) for _, f in items}


def open_bundle(path: Path | str) -> Bundle:
    """The bundle at ``path`` (a folder or a tar), its manifest checked; a one-line error for anything else."""
    path = Path(path)
    tar, members = None, {}
    if path.is_dir():
        raw = _read_or_none(path / MANIFEST)
    elif path.is_file():
        try:
            tar = tarfile.open(path, "r:")
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            raw = tar.extractfile(members[MANIFEST]).read() if MANIFEST in members else None
            last = max((m.offset_data + m.size for m in members.values()), default=0)
            if last > os.path.getsize(path):
                raise tarfile.ReadError("unexpected end of data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise UserError(f"{path} is not a bundle: not a readable tar ({exc})",
                            hint="pass the tar or folder `envmgr bundle` wrote") from None
    else:
        raise UserError(f"bundle {path} does not exist")
    if raw is None:
        raise UserError(f"{path} is not a bundle: it has no {MANIFEST}", hint="pass the tar or folder `envmgr bundle` wrote")
    try:
        manifest = json.loads(raw)
        ok = (manifest.get("format") == FORMAT and isinstance(manifest.get("profiles"), dict)
              and isinstance(manifest.get("python"), str) and isinstance(manifest.get("platform"), str))
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise UserError(f"{path} is not a bundle: {MANIFEST} is not an {FORMAT} manifest")
    return Bundle(path, manifest, tar, members)


def _read_or_none(p: Path) -> bytes | None:
    try:
        return p.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
