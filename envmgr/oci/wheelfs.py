"""A wheel as the files it becomes in an image's venv, read straight from the wheel: no install.

Input: a verified wheel file, the image's venv path and its python version. Output: a
:class:`Layout`, the layer entries of every file the wheel installs (its zip members, streamed
from the wheel when the layer is written: :class:`Member`) plus the files an installer writes
(entry-point scripts, ``INSTALLER``, ``REQUESTED``, the rewritten ``RECORD``), and the ``.py``
sources to byte-compile.

Why: an export used to install the venv with uv into a staging folder, then read every file
back into the layers: 5.7 GB written and read again for the default lock, the slowest step of
a cold export on a small machine. A wheel is a zip whose members, for a venv, only move to
their places (the binary distribution format spec): ``.data/purelib|platlib`` to
site-packages, ``.data/scripts`` to ``bin`` (``#!python`` made the venv's interpreter),
``.data/headers`` to ``include/site/pythonX.Y/NAME``, ``.data/data`` to the venv's root, the
rest to site-packages; console and GUI entry points become scripts in ``bin``. The result is
what uv lays out in a venv at the image's path, with ``INSTALLER`` saying ``envmgr`` and no
machine-specific files (``direct_url.json``, caches). Every member is inflated with ISA-L and
its CRC and size checked as it streams; a member that does not match its directory entry, a
path that leaves the venv or an unknown ``.data`` folder is a one-line error naming the wheel.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import csv
import hashlib
import io
import posixpath
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

from ..core.errors import UserError

# Names this layout in the layer cache keys: bump when the bytes it gives for a wheel change.
LAYOUT = "envmgr-wheel-layout-1"
INSTALLER = b"envmgr\n"
READ = 1 << 20  # compressed bytes read at once
OUT = 1 << 20  # inflated bytes handed on at most at once (a highly compressed member stays bounded)

_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import sys
from {module} import {head}
if __name__ == "__main__":
    if sys.argv[0].endswith("-script.pyw"):
        sys.argv[0] = sys.argv[0][:-11]
    elif sys.argv[0].endswith(".exe"):
        sys.argv[0] = sys.argv[0][:-4]
    sys.exit({call}())
"""


class Damaged(UserError):
    pass


@dataclass(frozen=True)
class Member:
    """One file of a wheel, read (and checked) only when its layer is written."""

    wheel: str
    name: str
    offset: int  # of its local header
    method: int  # zip compression method
    compressed: int
    size: int
    crc: int

    def _damaged(self, why: str) -> Damaged:
        return Damaged(f"{Path(self.wheel).name}: {self.name} {why}",
                       hint="the wheel in the cache is damaged: remove it and fetch it again (envmgr sync or lock --verify)")

    def chunks(self, opened: "Opened | None" = None) -> Iterator[bytes]:
        """The member's bytes, inflated as they are read; raises Damaged unless size and CRC match.
        ``opened``: the wheels already open (a layer of one wheel opens it once, not once a member)."""
        from isal import isal_zlib

        if self.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            yield from self._other()
            return
        crc = out = 0
        with contextlib.nullcontext(opened) if opened is not None else Opened() as files:
            fh = files.get(self.wheel)
            fh.seek(self.offset)
            head = fh.read(30)
            if len(head) != 30 or head[:4] != b"PK\x03\x04":
                raise self._damaged("has no local header where the zip directory says")
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            fh.seek(name_len + extra_len, 1)
            left = self.compressed
            inflate = isal_zlib.decompressobj(-15) if self.method == zipfile.ZIP_DEFLATED else None
            pending = b""
            while left or pending:
                if not pending:
                    pending = fh.read(min(READ, left))
                    if not pending:
                        raise self._damaged("is cut short")
                    left -= len(pending)
                if inflate is None:
                    data, pending = pending, b""
                else:
                    try:
                        data = inflate.decompress(pending, OUT)
                    except isal_zlib.error:
                        raise self._damaged("is not valid deflate data") from None
                    pending = inflate.unconsumed_tail
                if data:
                    out += len(data)
                    if out > self.size:
                        raise self._damaged("inflates to more than its stated size")
                    crc = isal_zlib.crc32(data, crc)
                    yield data
            if inflate is not None and not inflate.eof:
                raise self._damaged("ends before its deflate stream does")
        if out != self.size or crc & 0xFFFFFFFF != self.crc:
            raise self._damaged("does not match its size and CRC in the zip directory")

    def _other(self) -> Iterator[bytes]:
        """A member compressed otherwise (bzip2, lzma: rare in wheels) through zipfile, which checks the CRC."""
        try:
            with zipfile.ZipFile(self.wheel) as zf, zf.open(self.name) as fh:
                while chunk := fh.read(OUT):
                    yield chunk
        except (zipfile.BadZipFile, NotImplementedError, OSError) as exc:
            raise self._damaged(f"cannot be read ({exc})") from None

    def read(self) -> bytes:
        return b"".join(self.chunks())


class Opened:
    """Wheel files kept open while a layer (or a wheel's sources) is read: path -> file."""

    def __init__(self) -> None:
        self.files: dict[str, BinaryIO] = {}

    def get(self, path: str) -> BinaryIO:
        fh = self.files.get(path)
        if fh is None:
            fh = self.files[path] = open(path, "rb")
        return fh

    def __enter__(self) -> "Opened":
        return self

    def __exit__(self, *exc) -> None:
        for fh in self.files.values():
            fh.close()
        self.files.clear()


@dataclass
class Layout:
    """What one wheel puts in the venv: (image path, Member | bytes, executable) per file, and
    the ``.py`` files under site-packages as (path relative to site-packages, Member)."""

    files: list[tuple[str, Member | bytes, bool]] = field(default_factory=list)
    sources: list[tuple[str, Member]] = field(default_factory=list)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _safe(wheel: Path, name: str) -> str:
    norm = posixpath.normpath(name)
    if name.startswith("/") or "\\" in name or norm == ".." or norm.startswith("../") or ":" in name.split("/")[0]:
        raise UserError(f"{wheel.name}: member {name!r} would land outside the venv",
                        hint="this wheel is malformed or hostile; lock another file")
    return norm


def _dist_info(wheel: Path, names: list[str]) -> str:
    tops = sorted({n.split("/", 1)[0] for n in names if "/" in n and n.split("/", 1)[0].endswith(".dist-info")})
    if len(tops) != 1 or f"{tops[0]}/METADATA" not in names or f"{tops[0]}/RECORD" not in names:
        raise UserError(f"{wheel.name}: not a wheel (it needs exactly one .dist-info folder with METADATA and RECORD)",
                        hint="lock another file for this package")
    return tops[0]


def _scripts(wheel: Path, text: str, python: str) -> dict[str, bytes]:
    """Entry points (console and GUI) -> script bytes, as an installer writes them."""
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment]
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise UserError(f"{wheel.name}: entry_points.txt cannot be read: {exc.message.splitlines()[0]}",
                        hint="lock another file for this package")
    out: dict[str, bytes] = {}
    for section in ("console_scripts", "gui_scripts"):
        if not parser.has_section(section):
            continue
        for name, value in parser.items(section):
            target = value.split("[", 1)[0].strip()
            module, _, attr = target.partition(":")
            module, attr = module.strip(), attr.strip()
            if not module or not attr or "/" in name:
                raise UserError(f"{wheel.name}: entry point {name} = {value!r} is not 'module:function'",
                                hint="lock another file for this package")
            out[name] = _SCRIPT.format(python=python, module=module, head=attr.split(".")[0], call=attr).encode()
    return out


def _shebang(data: bytes, python: str) -> bytes:
    """A ``.data/scripts`` file whose first line is ``#!python`` (or ``#!pythonw``) runs the venv's python."""
    for stub in (b"#!pythonw", b"#!python"):
        if data.startswith(stub) and data[len(stub):len(stub) + 1] in (b"", b"\n", b"\r", b" "):
            return b"#!" + python.encode() + data[len(stub):]
    return data


def layout(wheel: Path, *, venv: str, version: str) -> Layout:
    """The files ``wheel`` installs into the venv at ``venv`` (an absolute image path) for Python ``version``."""
    wheel = Path(wheel)
    try:
        with zipfile.ZipFile(wheel) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            names = [i.filename for i in infos]
            dist_info = _dist_info(wheel, names)
            record_text = zf.read(f"{dist_info}/RECORD").decode("utf-8")
            entry_points = zf.read(f"{dist_info}/entry_points.txt").decode("utf-8") \
                if f"{dist_info}/entry_points.txt" in names else ""
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, KeyError) as exc:
        raise UserError(f"{wheel.name}: not a readable wheel ({exc})",
                        hint="remove it from the cache and fetch it again, or lock another file")
    root = venv.strip("/")
    python = f"/{root}/bin/python"
    site = f"{root}/lib/python{version}/site-packages"
    data_dir = dist_info[: -len(".dist-info")] + ".data"
    dist_name = dist_info[: -len(".dist-info")].rsplit("-", 1)[0]
    places = {"purelib": site, "platlib": site, "scripts": f"{root}/bin", "data": root,
              "headers": f"{root}/include/site/python{version}/{dist_name}"}
    try:
        recorded = {row[0]: row[1:3] for row in csv.reader(io.StringIO(record_text)) if row}
    except csv.Error as exc:
        raise UserError(f"{wheel.name}: its RECORD cannot be read ({exc})", hint="lock another file for this package")

    out = Layout()
    rows: dict[str, tuple[str, str]] = {}
    skip = {f"{dist_info}/RECORD", f"{dist_info}/INSTALLER", f"{dist_info}/REQUESTED", f"{dist_info}/direct_url.json"}
    for info in infos:
        name = _safe(wheel, info.filename)
        if name in skip:
            continue
        member = Member(str(wheel), info.filename, info.header_offset, info.compress_type, info.compress_size,
                        info.file_size, info.CRC)
        content: Member | bytes = member
        executable = bool((info.external_attr >> 16) & 0o111)
        top, _, rest = name.partition("/")
        if top == data_dir:
            scheme, _, rest = rest.partition("/")
            if scheme not in places or not rest:
                raise UserError(f"{wheel.name}: {name} is in an unknown .data folder {scheme!r}",
                                hint="lock another file for this package")
            dest = f"{places[scheme]}/{rest}"
            if scheme == "scripts":
                content, executable = _shebang(member.read(), python), True
        else:
            dest = f"{site}/{name}"
        rel = posixpath.relpath(dest, site)
        if content is not member:
            rows[rel] = (_record_hash(content), str(len(content)))
        else:
            rows[rel] = tuple(recorded.get(info.filename, ("", str(info.file_size))))  # type: ignore[assignment]
        out.files.append((dest, content, executable))
        if dest.startswith(site + "/") and dest.endswith(".py"):
            out.sources.append((rel, member))
    for script, data in sorted(_scripts(wheel, entry_points, python).items()):
        dest = f"{root}/bin/{script}"
        out.files.append((dest, data, True))
        rows[posixpath.relpath(dest, site)] = (_record_hash(data), str(len(data)))
    for name, data in ((f"{dist_info}/INSTALLER", INSTALLER), (f"{dist_info}/REQUESTED", b"")):
        out.files.append((f"{site}/{name}", data, False))
        rows[name] = (_record_hash(data), str(len(data)))
    rows[f"{dist_info}/RECORD"] = ("", "")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for rel in sorted(rows):
        writer.writerow([rel, *rows[rel]])
    out.files.append((f"{site}/{dist_info}/RECORD", buf.getvalue().encode(), False))
    return out
