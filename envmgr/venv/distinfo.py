"""What a venv holds, read with the standard library only: its site-packages, the dist-info
folders there, and the files their RECORDs list.

Input: a venv or its site-packages folder. Output: installed distributions by canonical
name, the paths and folders their RECORDs name, and which are not installed whole.

The point of a module of its own is what it does not import: ``sync``'s fast paths (the
stamp check of a no-op, a venv made again from a recorded sync) read the venv through this
module without loading packaging or the lock model, which would cost more than their work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..model.names import canonical


def site_packages(venv: Path) -> Path | None:
    """``VENV/lib/pythonX.Y/site-packages`` of a POSIX venv, or None when there is none."""
    lib = venv / "lib"
    try:
        names = sorted(n for n in os.listdir(lib) if n.startswith("python"))
    except OSError:
        return None
    for n in names:
        sp = lib / n / "site-packages"
        if sp.is_dir():
            return sp
    return None


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def is_venv(venv: Path) -> bool:
    return (venv / "pyvenv.cfg").is_file()


class Installed:
    """One distribution in site-packages (a plain class: dataclasses costs ~10 ms to import)."""

    __slots__ = ("name", "version", "dist_info", "installer", "extra")

    def __init__(self, name: str, version: str, dist_info: str, installer: str, extra: tuple[str, ...] = ()):
        self.name = name  # canonical
        self.version = version
        self.dist_info = dist_info  # folder name under site-packages
        self.installer = installer  # "uv", "pip", ... ("" when not recorded)
        self.extra = extra  # further dist-info folders of the same name (a torn upgrade)

    @property
    def dist_infos(self) -> tuple[str, ...]:
        return (self.dist_info, *self.extra)

    def _key(self) -> tuple:
        return (self.name, self.version, self.dist_info, self.installer, self.extra)

    def __eq__(self, other) -> bool:
        return isinstance(other, Installed) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Installed{self._key()!r}"


def installed(site: Path | None) -> dict[str, Installed]:
    """Every distribution in ``site`` by canonical name (from dist-info/egg-info folder names)."""
    out: dict[str, Installed] = {}
    if site is None:
        return out
    try:
        entries = os.listdir(site)
    except OSError:
        return out
    for entry in entries:
        if entry.endswith(".dist-info"):
            stem = entry[: -len(".dist-info")]
            if "-" not in stem:
                continue
            name, version = stem.rsplit("-", 1)
        elif entry.endswith(".egg-info"):
            parts = entry[: -len(".egg-info")].split("-")
            if len(parts) < 2:
                continue
            name, version = parts[0], parts[1]
        else:
            continue
        try:
            installer = (site / entry / "INSTALLER").read_text().strip()
        except OSError:
            installer = ""
        key = canonical(name)
        seen = out.get(key)
        out[key] = Installed(key, version, entry, installer, seen.dist_infos if seen else ())
    return out


def record_names(site: Path, dist_info: str) -> list[str] | None:
    """The paths a distribution's RECORD lists, as written (relative to ``site``); None without RECORD."""
    try:
        with open(os.path.join(site, dist_info, "RECORD"), encoding="utf-8", newline="") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        return None
    names = (_quoted(line) if line[0] == '"' else line.split(",", 1)[0]
             for line in text.splitlines() if line)
    return [n for n in names if n]


def _quoted(line: str) -> str:
    import csv  # a path with a comma or quote in it: rare, so csv is loaded only for it

    return next(csv.reader([line]))[0]


def absolute(base: str, rel: str) -> str:
    """A RECORD path ``rel`` (relative to site-packages ``base``) made absolute and normal."""
    if rel.startswith(("../", "./")) or "/." in rel or "//" in rel:
        return os.path.normpath(os.path.join(base, rel))
    return f"{base}/{rel}" if rel else base


def record_paths(site: Path, dist_info: str) -> list[str] | None:
    """Files a distribution's RECORD lists (absolute, normalised), or None when RECORD is missing."""
    names = record_names(site, dist_info)
    base = os.fspath(site)
    return None if names is None else [absolute(base, rel) for rel in names]


def broken(site: Path | None, dists: Iterable[Installed], *, files: bool = True) -> dict[str, str]:
    """Distributions not installed whole, or installed by another tool: name -> why.

    Whole means one dist-info folder with METADATA and RECORD, and (``files``) every file
    RECORD lists.
    """
    out: dict[str, str] = {}
    if site is None:
        return out
    for d in dists:
        if d.extra:
            out[d.name] = f"several versions installed ({', '.join(sorted(d.dist_infos))})"
            continue
        paths = record_paths(site, d.dist_info) if files else []
        if paths is None or not (files or os.path.isfile(os.path.join(site, d.dist_info, "RECORD"))):
            out[d.name] = "RECORD missing"
        elif not os.path.isfile(os.path.join(site, d.dist_info, "METADATA")):
            out[d.name] = "METADATA missing"
        elif missing := [p for p in paths if not os.path.lexists(p)]:
            rel = os.path.relpath(missing[0], site)
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            out[d.name] = f"{rel}{more} missing"
        elif d.installer not in ("uv", "envmgr", ""):  # envmgr: an image's venv laid out from the wheels
            out[d.name] = f"installed by {d.installer}"
    return out
