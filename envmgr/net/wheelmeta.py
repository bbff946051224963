"""A few files out of a wheel without downloading it, and the GPU archs compiled into one.

:class:`RemoteZip` is a seekable, read-only file over HTTP range requests (``net.http``'s
whole small answers, :func:`~envmgr.net.http.small`, with a ``Range`` header): the standard library's ``zipfile`` reads the end of the
central directory, the directory and a member through it, and the blocks it asked for are
kept, so a 500 MB torch wheel gives up its METADATA and ``torch/version.py`` for a few
requests and a few hundred KB (the first request takes the file's tail, which holds the
directory and usually the ``.dist-info``). A server that ignores ``Range`` (answers 200)
raises :class:`NoRanges`: the caller then takes the whole file into the verified cache.

:func:`fatbin_archs` reads the SASS and PTX targets of the CUDA fat binaries in a stream
(``libtorch_cuda.so`` as it leaves the zip): each fat binary's header (magic ``0xBA55ED50``)
and each entry's (kind 1 PTX, 2 ELF; the ``sm_NN`` it was built for), skipping the payloads.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Iterable

from ..core.errors import NetworkError
from ..core.urls import redact
from . import http
from .credentials import Auth


TAIL = 2 << 20  # the first request: the zip's tail (directory, and the dist-info files)
BLOCK = 64 * 1024  # a later miss reads at least this much
FATBIN_MAGIC = b"\x50\xed\x55\xba"  # 0xBA55ED50, little-endian


class NoRanges(NetworkError):
    """The server sent the whole file to a range request."""


class RemoteZip(io.RawIOBase):
    """The file at ``url`` as a seekable stream, read by ranges; ``requests`` and ``received``
    count what it cost."""

    def __init__(self, url: str, auth: Auth | None = None, what: str = "") -> None:
        super().__init__()
        self.url, self.auth, self.what = url, auth, what or redact(url)
        self.segments: list[tuple[int, bytes]] = []
        self.pos = 0
        self.requests = 0
        self.received = 0
        start, data, self.size = self._get(f"bytes=-{TAIL}", TAIL)
        self.segments.append((start, data))

    def _get(self, spec: str, most: int) -> tuple[int, bytes, int]:
        """The range ``spec`` (at most ``most`` bytes): (its start, its bytes, the file's size)."""
        # A whole small answer (``http.small``: no requests to import); a body longer than the
        # range asked for (the whole file, from a server that ignores ranges) is left unread.
        resp = http.small("GET", self.url, auth=self.auth, ok=(200, 206), what=self.what, limit=most,
                          headers={"Range": spec, "Accept-Encoding": "identity"})
        self.requests += 1
        got = http.range_of(resp)
        if got is None or resp.content is None:
            raise NoRanges(f"{self.what}: the server does not answer range requests" if resp.status_code != 206
                           else f"{self.what}: a range answered without Content-Range" if got is None
                           else f"{self.what}: a range answered with more bytes than asked for")
        self.received += len(resp.content)
        return got[0], resp.content, got[2]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        for start, data in self.segments:
            if start <= self.pos and end <= start + len(data):
                out = data[self.pos - start:end - start]
                self.pos = end
                return out
        stop = min(self.size, max(end, self.pos + BLOCK))
        start, data, _ = self._get(f"bytes={self.pos}-{stop - 1}", stop - self.pos)
        if start != self.pos or len(data) < end - self.pos:
            raise NoRanges(f"{self.what}: a range answered with other bytes than asked for")
        self.segments.append((start, data))
        out = data[:end - start]
        self.pos = end
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def members(source, names: Iterable[str], *, dist_info_file: str = "METADATA") -> dict[str, bytes]:
    """The named members of a wheel (a path, or a seekable stream such as :class:`RemoteZip`),
    plus the ``*.dist-info/METADATA`` under the key ``METADATA``. Absent members are left out.
    Raises ``zipfile.BadZipFile``/``OSError``/``zlib.error``/``EOFError`` on a broken file."""
    out: dict[str, bytes] = {}
    with zipfile.ZipFile(source) as zf:
        listed = set(zf.namelist())
        for name in names:
            if name in listed:
                out[name] = zf.read(name)
        meta = sorted(n for n in listed if n.count("/") == 1 and n.endswith(f".dist-info/{dist_info_file}"))
        if meta:
            out[dist_info_file] = zf.read(meta[0])
    return out


BROKEN = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, struct.error, ValueError, KeyError)


def stream_member(path: Path, name: str, chunk: int = 1 << 22) -> Iterable[bytes] | None:
    """The bytes of member ``name`` of the zip at ``path``, in chunks (None if absent)."""
    zf = zipfile.ZipFile(path)
    if name not in zf.namelist():
        zf.close()
        return None

    def chunks() -> Iterable[bytes]:
        with zf, zf.open(name) as fh:
            while piece := fh.read(chunk):
                yield piece

    return chunks()


def fatbin_archs(chunks: Iterable[bytes]) -> tuple[set[int], set[int]]:
    """(SASS archs, PTX archs) of every CUDA fat binary in the stream, as integers (90 = sm_90).

    A candidate header must say version 1, header size 16; its entries (kind 1 or 2, a sane
    header size) must tile it to its end, or the candidate is dropped: bytes that only look
    like a fat binary add nothing.

    The build's arch list is what most kernels are built for: an arch counts when at least
    half as many fat binaries carry it as carry the commonest one. (torch 2.15.0+cu132: 476 of
    its 534 fat binaries carry sm_75 ... sm_120; a few kernels add sm_89, sm_103, sm_121.)
    """
    counts: dict[tuple[int, int], int] = {}
    buf = bytearray()
    base = 0  # absolute offset of buf[0]
    received = 0
    scan = 0  # where the next search for a header starts
    fat: tuple[int, int] | None = None  # (next entry's offset, the fat binary's end)
    found: list[tuple[int, int]] = []  # (kind, arch) of the current fat binary's entries
    for piece in chunks:
        start, received = received, received + len(piece)
        if received <= base:
            continue
        buf += piece[base - start:] if start < base else piece
        end = base + len(buf)
        while True:
            if fat is not None:
                entry, fat_end = fat
                if entry >= fat_end:
                    for key in set(found):
                        counts[key] = counts.get(key, 0) + 1
                    fat, found, scan = None, [], fat_end
                    continue
                if entry + 32 > end:
                    break
                kind, _, hsize, psize = struct.unpack_from("<HHIQ", buf, entry - base)
                arch = struct.unpack_from("<I", buf, entry - base + 28)[0]
                nxt = entry + hsize + psize
                if kind not in (1, 2) or not 32 <= hsize <= 4096 or nxt > fat_end or not 10 <= arch < 1000:
                    fat, found, scan = None, [], entry  # not a fat binary after all: look on from here
                    continue
                found.append((kind, arch))
                fat = (nxt, fat_end)
                continue
            i = buf.find(FATBIN_MAGIC, max(scan, base) - base)
            if i < 0:
                scan = max(scan, end - 3)
                break
            if base + i + 16 > end:
                scan = base + i
                break
            version, hsize, size = struct.unpack_from("<HHQ", buf, i + 4)
            scan = base + i + 1
            if version == 1 and hsize == 16 and 0 < size:
                fat = (base + i + 16, base + i + 16 + size)
        keep = fat[0] if fat else scan
        if keep > base:
            del buf[:keep - base]
            base = keep
    most = max(counts.values(), default=0)
    common = {key for key, n in counts.items() if 2 * n >= most}
    return {a for k, a in common if k == 2}, {a for k, a in common if k == 1}
