"""Deterministic layer tars, hashed and compressed in one streaming pass, and their cache.

Input: a list of ``Entry`` values (path in the image, kind, where the bytes come from).
Output: a gzip blob in the content-addressed blob store plus its ``diff_id`` (sha256 of the
uncompressed tar), ``digest`` (sha256 of the blob) and size.

The one hard problem is that a layer's digests are only known after all its bytes went
through, while its content must never sit in memory. It is solved by a single pass: the tar
stream is hashed, then cut into fixed-size blocks that go through the compressor (so the
deflate output depends on the content only, never on read sizes), and the compressed bytes
are hashed and written to a temp file in the blob store, renamed to their digest at the end.

All determinism sits in ``tar_header``: sorted paths, every parent directory emitted, mtime
from ``SOURCE_DATE_EPOCH`` (or 0), uid/gid 0 with empty names, modes normalised (0755 for
directories and executables, 0644 for files, 0777 for symlinks), PAX format, hardlinks
written as regular files. The gzip header is fixed (mtime 0, no name, OS unknown).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import isal
from isal import isal_zlib

from ..core.errors import UserError
from ..core.files import write_atomic

FORMAT_VERSION = 1  # bump when the bytes a layer holds for the same input change
BLOCK = 1 << 20  # compressor input block: fixed so output depends on content only
GZIP_LEVEL = 1
COMPRESSOR = f"isal-{isal.__version__}-deflate-{GZIP_LEVEL}"
MEDIA_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TAR = "application/vnd.oci.image.layer.v1.tar"
_GZIP_HEADER = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"  # no name, mtime 0, OS unknown


def source_date_epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    try:
        return max(0, int(raw))
    except ValueError:
        raise UserError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer", hint="unset it or set seconds since 1970")


@dataclass(frozen=True)
class Entry:
    """One path in a layer. ``src`` (a host file), ``data`` (bytes), ``member`` (a file of a
    wheel: ``envmgr.oci.wheelfs.Member``) or ``link`` (symlink)."""

    path: str  # absolute-free image path, e.g. "opt/venv/bin/python"
    kind: str = "file"  # file | dir | symlink
    src: Path | None = None
    data: bytes | None = None
    link: str = ""
    executable: bool = False
    uid: int = 0
    gid: int = 0
    member: object | None = None  # has .size and .chunks()

    @property
    def size(self) -> int:
        if self.kind != "file":
            return 0
        if self.data is not None:
            return len(self.data)
        if self.member is not None:
            return self.member.size  # type: ignore[attr-defined]
        return os.stat(self.src).st_size  # type: ignore[arg-type]


def file_entry(path: str, src: Path) -> Entry:
    st = os.stat(src)
    return Entry(path=path, src=src, executable=bool(st.st_mode & 0o111))


def with_parents(entries: Iterable[Entry], *, dir_owner: Callable[[str], tuple[int, int]] | None = None) -> list[Entry]:
    """Entries sorted bytewise by path, each parent directory present once, no duplicates."""
    by_path: dict[str, Entry] = {}
    implicit: set[str] = set()
    for e in entries:
        p = e.path.strip("/")
        if not p:
            continue
        if p in by_path and p not in implicit:
            if e.kind == "dir" and by_path[p].kind == "dir":
                continue
            raise ValueError(f"path {p!r} twice in one layer")
        implicit.discard(p)
        by_path[p] = e if e.path == p else Entry(**{**e.__dict__, "path": p})
        parts = p.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in by_path:
                uid, gid = dir_owner(parent) if dir_owner else (0, 0)
                by_path[parent] = Entry(path=parent, kind="dir", uid=uid, gid=gid)
                implicit.add(parent)
    return [by_path[k] for k in sorted(by_path, key=lambda s: s.encode("utf-8", "surrogateescape"))]


def tar_header(e: Entry, mtime: int) -> bytes:
    ti = tarfile.TarInfo(e.path + ("/" if e.kind == "dir" else ""))
    ti.mtime = mtime
    ti.uid, ti.gid = e.uid, e.gid
    ti.uname = ti.gname = ""
    if e.kind == "dir":
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    elif e.kind == "symlink":
        ti.type, ti.mode, ti.linkname = tarfile.SYMTYPE, 0o777, e.link
    else:
        ti.type, ti.mode, ti.size = tarfile.REGTYPE, (0o755 if e.executable else 0o644), e.size
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _Gzip:
    """Writes a deterministic gzip member to ``out``, hashing what it writes."""

    def __init__(self, out) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0
        self.crc = 0
        self.isize = 0
        self.comp = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, -15)
        self._emit(_GZIP_HEADER)

    def _emit(self, b: bytes) -> None:
        if b:
            self.out.write(b)
            self.sha.update(b)
            self.size += len(b)

    def feed(self, block: bytes) -> None:
        self.crc = isal_zlib.crc32(block, self.crc)
        self.isize += len(block)
        self._emit(self.comp.compress(block))

    def close(self) -> None:
        self._emit(self.comp.flush(isal_zlib.Z_FINISH))
        self._emit(struct.pack("<II", self.crc & 0xFFFFFFFF, self.isize & 0xFFFFFFFF))


class _Plain:
    def __init__(self, out) -> None:
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def feed(self, block: bytes) -> None:
        self.out.write(block)
        self.sha.update(block)
        self.size += len(block)

    def close(self) -> None:
        pass


class TarStream:
    """A write-only sink: hashes the tar (diff_id), cuts it into BLOCKs for the compressor.

    The blocks are filled in one reused buffer and whole blocks of a large write go to the
    compressor as views of it: the bytes are copied at most once on their way."""

    def __init__(self, out, *, compress: bool = True, progress: Callable[[int], None] | None = None) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.block = bytearray(BLOCK)
        self.fill = 0  # bytes of ``block`` holding data
        self.codec = _Gzip(out) if compress else _Plain(out)
        self.progress = progress

    def write(self, b) -> None:
        self.sha.update(b)
        n = len(b)
        self.size += n
        view = memoryview(b)
        pos = 0
        if self.fill:
            pos = min(BLOCK - self.fill, n)
            self.block[self.fill:self.fill + pos] = view[:pos]
            self.fill += pos
            if self.fill < BLOCK:
                return
            self.codec.feed(self.block)
            self.fill = 0
        while n - pos >= BLOCK:
            self.codec.feed(view[pos:pos + BLOCK])
            pos += BLOCK
        if pos < n:
            self.block[:n - pos] = view[pos:]
            self.fill = n - pos

    def close(self) -> None:
        if self.fill:
            self.codec.feed(memoryview(self.block)[:self.fill])
            self.fill = 0
        self.codec.close()


def write_tar(entries: list[Entry], sink, *, mtime: int, progress: Callable[[int], None] | None = None) -> None:
    """Stream ``entries`` (already sorted, see ``with_parents``) as a tar into ``sink``."""
    from .wheelfs import Opened

    with Opened() as opened:
        _write_entries(entries, sink, mtime, progress, opened)
    end = 2 * tarfile.BLOCKSIZE
    sink.write(b"\0" * end)


def _write_entries(entries: list[Entry], sink, mtime: int, progress, opened) -> None:
    for e in entries:
        sink.write(tar_header(e, mtime))
        if e.kind != "file":
            continue
        if e.data is not None:
            size = len(e.data)
            sink.write(e.data)
        elif e.member is not None:
            size = 0
            for chunk in e.member.chunks(opened):  # type: ignore[attr-defined]
                sink.write(chunk)
                size += len(chunk)
        else:
            size = 0
            with open(e.src, "rb") as fh:  # type: ignore[arg-type]
                while True:
                    chunk = fh.read(BLOCK)
                    if not chunk:
                        break
                    sink.write(chunk)
                    size += len(chunk)
            if size != e.size:
                raise OSError(f"{e.src} changed while being read")
        if progress:
            progress(size)
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            sink.write(b"\0" * pad)


# -- the blob store and the layer cache -------------------------------------------------------

@dataclass(frozen=True)
class BuiltLayer:
    digest: str
    diff_id: str
    size: int
    media_type: str
    path: Path
    uncompressed_size: int
    cached: bool = False


class BlobStore:
    """``ROOT/blobs/sha256/<hex>``: every blob under its digest, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"

    def path(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64:
            raise UserError(f"unsupported digest {digest!r}")
        return self.blobs / hexd

    def has(self, digest: str, size: int | None = None) -> bool:
        p = self.path(digest)
        try:
            return size is None or p.stat().st_size == size
        except FileNotFoundError:
            return False

    def temp(self):
        """A temp file for a blob whose digest is known once written (``commit`` names it); a
        blob known beforehand goes through ``core.files`` (``put_bytes``)."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".part-", dir=self.blobs)
        return os.fdopen(fd, "wb"), Path(tmp)

    def commit(self, tmp: Path, digest: str) -> Path:
        dest = self.path(digest)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        return dest

    def put_bytes(self, data: bytes) -> tuple[str, Path]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest, len(data)):
            write_atomic(self.path(digest), data, mode=0o444, fsync=False, skip_unchanged=False)
        return digest, self.path(digest)


def stream_layer(store: BlobStore, fill: Callable[["TarStream"], None], *, compress: bool = True) -> BuiltLayer:
    """One pass: ``fill`` writes tar bytes into a TarStream that hashes (diff_id),
    compresses and hashes again (digest) on the way into the blob store."""
    fh, tmp = store.temp()
    try:
        with fh:
            sink = TarStream(fh, compress=compress)
            fill(sink)
            sink.close()
        digest = "sha256:" + sink.codec.sha.hexdigest()
        path = store.commit(tmp, digest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return BuiltLayer(digest=digest, diff_id="sha256:" + sink.sha.hexdigest(), size=sink.codec.size,
                      media_type=MEDIA_GZIP if compress else MEDIA_TAR, path=path, uncompressed_size=sink.size)


def build_layer(entries: list[Entry], store: BlobStore, *, mtime: int, compress: bool = True,
                progress: Callable[[int], None] | None = None) -> BuiltLayer:
    return stream_layer(store, lambda sink: write_tar(entries, sink, mtime=mtime, progress=progress),
                        compress=compress)


class LayerCache:
    """Layer key -> built layer. A key names everything the layer's bytes depend on."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = BlobStore(root)
        self.index = root / "layers"

    @staticmethod
    def key(parts: dict) -> str:
        parts = {**parts, "format": FORMAT_VERSION, "compressor": COMPRESSOR}
        blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def get(self, key: str) -> BuiltLayer | None:
        try:
            data = json.loads((self.index / f"{key}.json").read_text())
            layer = BuiltLayer(**{**data, "path": self.store.path(data["digest"]), "cached": True})
        except (FileNotFoundError, ValueError, TypeError, KeyError):
            return None
        return layer if self.store.has(layer.digest, layer.size) else None

    def put(self, key: str, layer: BuiltLayer) -> None:
        data = {k: v for k, v in layer.__dict__.items() if k not in ("path", "cached")}
        write_atomic(self.index / f"{key}.json", json.dumps(data, sort_keys=True), fsync=False)  # read back verified


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(BLOCK), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def is_executable(mode: int) -> bool:
    return stat.S_ISREG(mode) and bool(mode & 0o111)
