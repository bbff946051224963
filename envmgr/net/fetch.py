"""Fetch and verify: the lock's files into a content-addressed cache.

Shared by ``sync`` and ``export-image`` (and by ``lock`` for files whose hash the index
does not publish). A file lands in ``CACHE/files/sha256/<hex>/<filename>`` only after its
bytes hashed to ``<hex>``: a cached file is a verified file. Downloads run in parallel,
stream to a temp file beside their place and are renamed into it (``core.files``), so a
killed fetch leaves no half-written file under a valid name. HTTP itself (session, timeouts,
retries, errors) is ``net.http``; a download that breaks off or stalls goes on from the bytes
it has (``http.body``), hashed as they stream, so the sha256 at the end covers every resume
and progress is counted once.

For line rate: the largest files start first, and a file of :data:`SPLIT_MIN` bytes or more
comes in :data:`PARTS` ``Range`` requests at once where the server answers them (``206``),
written in place at their offsets while this thread hashes the bytes in order as they land
(read back from the page cache). ``fetch(on_ready=...)`` hands each file on the moment it is
verified, so a caller can install it while the others still download.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Protocol
from urllib.parse import unquote, urlsplit

from ..core import settings
from ..core.errors import HashMismatchError, NetworkError, UserError
from ..core.files import atomic_path, write_atomic
from ..core.urls import redact, strip_credentials
from ..model.lockfile import LockedFile
from . import http
from .credentials import Auth

CHUNK = http.CHUNK
SPLIT_MIN = 64 << 20  # a file this big downloads in parts, over several connections
PARTS = 4


class Reporter(Protocol):
    def start(self, total: int, label: str) -> None: ...
    def advance(self, n: int) -> None: ...
    def finish(self) -> None: ...


class NullReporter:
    def start(self, total: int, label: str) -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def finish(self) -> None:
        pass


@contextlib.contextmanager
def counter(reporter, n: int, label: str):
    """A bar of ``n`` things (packages installed, layers built) beside the reporter's bar of
    bytes, when it draws one (``count``: the console's), finished however the work ends; else
    None."""
    bar = reporter.count(n, label) if n and hasattr(reporter, "count") else None
    try:
        yield bar
    finally:
        if bar is not None:
            bar.finish()


# -- the cache ----------------------------------------------------------------------------

def files_dir(cache: Path | None = None) -> Path:
    return (cache or settings.cache_dir()) / "files" / "sha256"


def cached_path(f: LockedFile, cache: Path | None = None) -> Path:
    return files_dir(cache) / f.sha256 / f.filename


class WrongBytes(Exception):
    def __init__(self, actual: str) -> None:
        self.actual = actual


def _write_hashing(chunks: Iterable[bytes], path: Path, on_chunk=None) -> tuple[str, int]:
    """Write ``chunks`` to ``path``, hashing them on the way: (sha256 hex, size).
    ``on_chunk`` sees every chunk (progress, or a reader the bytes are passed on to)."""
    import hashlib

    h = hashlib.sha256()
    size = 0
    with open(path, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
            h.update(chunk)
            size += len(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    return h.hexdigest(), size


def _read(src: Path) -> Iterable[bytes]:
    with src.open("rb") as fh:
        yield from iter(lambda: fh.read(CHUNK), b"")


def write_verified(chunks: Iterable[bytes], dest: Path, sha256: str, on_chunk=None) -> Path:
    """``dest`` holding ``chunks``, if they hash to ``sha256``; else WrongBytes and no file."""
    return _into_place(dest, sha256, lambda tmp: _write_hashing(chunks, tmp, on_chunk)[0])


def _into_place(dest: Path, sha256: str, write) -> Path:
    """``write(tmp)`` (which returns the sha256 of what it wrote) renamed to ``dest`` when that is
    ``sha256``; else WrongBytes and no file. Not fsynced: every file in the cache is hashed
    again when it is used."""
    try:
        with atomic_path(dest, fsync=False) as tmp:
            actual = write(tmp)
            if actual != sha256:
                raise WrongBytes(actual)
    except BaseException:
        with contextlib.suppress(OSError):
            dest.parent.rmdir()  # the <hex> folder made for it, when nothing else is in it
        raise
    return dest


def fetch_one(name: str, f: LockedFile, *, cache: Path | None = None, auth: Auth | None = None,
              reporter: Reporter | None = None) -> Path:
    dest = cached_path(f, cache)
    if dest.exists():
        return dest
    reporter = reporter or NullReporter()
    parts = urlsplit(f.url)
    try:
        if parts.scheme == "file":
            src = Path(unquote(parts.path))
            if not src.exists():
                raise NetworkError(f"{name}: {f.url} does not exist")
            write_verified(_read(src), dest, f.sha256)
            reporter.advance(f.size)
        elif f.size >= SPLIT_MIN:
            _into_place(dest, f.sha256, lambda tmp: _download_split(f, tmp, auth, reporter))
        else:
            with http.get(f.url, auth, stream=True) as resp:
                write_verified(http.body(resp), dest, f.sha256, lambda chunk: reporter.advance(len(chunk)))
    except WrongBytes as exc:
        raise HashMismatchError(
            f"hash mismatch for {name}: {redact(f.url)} expected sha256:{f.sha256}, got sha256:{exc.actual}",
            hint="the bytes served are not the bytes the lock names; nothing was installed or written",
        ) from None
    return dest


def _download_split(f: LockedFile, tmp: Path, auth: Auth | None, reporter: Reporter) -> str:
    """The file at ``f.url`` into ``tmp`` in :data:`PARTS` ranges at once; returns its sha256,
    hashed here in order as the parts land. A server that answers the first range with the
    whole file (``200``) is read as one stream."""
    step = -(-f.size // PARTS)
    bounds = [(a, min(a + step, f.size)) for a in range(0, f.size, step)]
    first = http.get_range(f.url, *bounds[0], auth)
    if http.range_of(first) != (*bounds[0], f.size):
        if first.status_code != 200:
            first.close()
            first = http.get(f.url, auth, stream=True)
        with first:
            return _write_hashing(http.body(first), tmp, lambda chunk: reporter.advance(len(chunk)))[0]
    validator = http.validator_of(first)
    landed = [0] * len(bounds)  # bytes of each part written
    failed: list[BaseException] = []
    cond = threading.Condition()

    def part(i: int, resp) -> None:
        a, b = bounds[i]
        try:
            if resp is None:
                resp = http.get_range(f.url, a, b, auth, validator=validator)
                if http.range_of(resp) != (a, b, f.size):
                    resp.close()
                    raise NetworkError(f"{redact(f.url)}: range {a}-{b - 1} answered with HTTP {resp.status_code} "
                                       f"{resp.headers.get('Content-Range', '')!r} (the file changed?)")
            for piece in http.range_body(resp, f.url, a, b, auth, what=f.filename):
                if failed:
                    return
                os.pwrite(fd, piece, a + landed[i])
                reporter.advance(len(piece))
                with cond:
                    landed[i] += len(piece)
                    cond.notify_all()
        except BaseException as exc:  # handed to the hashing thread, which raises it
            with cond:
                failed.append(exc)
                cond.notify_all()

    import hashlib
    import mmap

    h = hashlib.sha256()
    fd = os.open(tmp, os.O_RDWR | os.O_TRUNC)
    os.ftruncate(fd, f.size)  # sparse until the parts land: mapped whole, hashed in place as they do
    threads = [threading.Thread(target=part, args=(i, first if i == 0 else None), daemon=True)
               for i in range(len(bounds))]
    try:
        with mmap.mmap(fd, f.size, prot=mmap.PROT_READ) as mapped, memoryview(mapped) as view:
            for t in threads:
                t.start()
            for i, (a, b) in enumerate(bounds):
                pos = a
                while pos < b:
                    with cond:
                        while not failed and a + landed[i] <= pos:
                            cond.wait()
                        if failed:
                            raise failed[0]
                        ready = a + landed[i]
                    h.update(view[pos:ready])  # the page cache's bytes, not a copy read back
                    pos = ready
    finally:
        with cond:
            failed.append(_Stop())
        for t in threads:
            if t.ident is not None:  # (started)
                t.join()
        os.close(fd)
    return h.hexdigest()


class _Stop(Exception):
    """Tells the part threads of a split download to stop (the download ended or failed)."""


def fetch(items: Iterable[tuple[str, LockedFile]], *, cache: Path | None = None, auth: Auth | None = None,
          offline: bool = False, find_links: Iterable[Path] = (), jobs: int = 8,
          reporter: Reporter | None = None, on_ready=None) -> dict[str, Path]:
    """Make every (package name, file) available in the cache; return sha256 -> path.

    Offline, a file comes from the cache or a ``find_links`` folder (hash-verified) and a
    missing one is an error listing every missing file. Online, missing files download in
    parallel, the largest first. Any hash mismatch or network failure raises (the downloads
    not yet started are dropped, the running ones end) before the caller installs anything.
    ``on_ready(name, file, path)`` is called (from any thread) for each file once it is in the
    cache, verified: at once for those already there.
    """
    items = list(items)
    reporter = reporter or NullReporter()
    out: dict[str, Path] = {}
    todo: list[tuple[str, LockedFile]] = []
    for name, f in items:
        p = cached_path(f, cache)
        if p.exists():
            out[f.sha256] = p
        else:
            todo.append((name, f))
    if find_links and todo:
        remaining = []
        for name, f in todo:
            found = _from_find_links(f, find_links, cache)
            if found:
                out[f.sha256] = found
            else:
                remaining.append((name, f))
        todo = remaining
    if offline and todo:
        missing = ", ".join(f"{name} ({f.filename})" for name, f in todo)
        raise UserError(f"offline and {len(todo)} locked file(s) are not in the cache or --find-links: {missing}",
                        hint="run once online, or pass --find-links DIR holding them")
    if on_ready is not None:
        for name, f in items:
            if f.sha256 in out:
                on_ready(name, f, out[f.sha256])
    if not todo:
        return out
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    # Files of SPLIT_MIN bytes or more come one after the other, largest first, each over PARTS
    # connections: they finish one by one (a caller installs each while the next downloads)
    # rather than all near the end. The smaller ones share the other connections meanwhile.
    todo.sort(key=lambda item: -item[1].size)
    big = [item for item in todo if item[1].size >= SPLIT_MIN and not item[1].url.startswith("file:")]
    small = [item for item in todo if item not in big]
    lanes = [(lane, n) for lane, n in ((big, 1), (small, max(1, jobs - PARTS) if big else jobs)) if lane]

    def one(name: str, f: LockedFile) -> Path:
        path = out[f.sha256] = fetch_one(name, f, cache=cache, auth=auth, reporter=reporter)
        if on_ready is not None:
            on_ready(name, f, path)
        return path

    reporter.start(sum(f.size for _, f in todo), f"downloading {len(todo)} file(s)")
    pools = [ThreadPoolExecutor(max_workers=min(n, len(lane))) for lane, n in lanes]
    try:
        futures = [pool.submit(one, name, f) for pool, (lane, _) in zip(pools, lanes) for name, f in lane]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [fut for fut in futures if fut in done and fut.exception() is not None]
        if failed:  # drop what has not started; the running ones finish, then the first failure is raised
            for fut in futures:
                fut.cancel()
            wait(futures)
            raise failed[0].exception()
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
        reporter.finish()
    return out


def _from_find_links(f: LockedFile, dirs: Iterable[Path], cache: Path | None) -> Path | None:
    for d in dirs:
        cand = Path(d) / f.filename
        if not cand.is_file():
            continue
        try:
            return write_verified(_read(cand), cached_path(f, cache), f.sha256)
        except WrongBytes:
            continue
    return None


# -- hashes and sizes the index does not publish --------------------------------------------

def _url_cache_file(url: str, cache: Path | None) -> Path:
    import hashlib

    key = hashlib.sha256(strip_credentials(url).encode()).hexdigest()
    return (cache or settings.cache_dir()) / "url-hashes" / key[:2] / f"{key}.json"


def url_digest(url: str, *, cache: Path | None = None, auth: Auth | None = None) -> tuple[str, int]:
    """sha256 and size of the file at ``url``: downloaded once, then cached by URL.

    The downloaded bytes also land in the file cache, so a later sync or export does not
    download them again.
    """
    hit = cached_url_digest(url, cache=cache)
    if hit:
        return hit
    download_to_cache(url, auth=auth, cache=cache)
    return cached_url_digest(url, cache=cache)  # type: ignore[return-value]


def _url_filename(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


def cached_url_file(url: str, *, cache: Path | None = None) -> Path | None:
    """The verified cached copy of the file at ``url``, if its bytes were kept."""
    hit = cached_url_digest(url, cache=cache)
    if not hit:
        return None
    path = files_dir(cache) / hit[0] / _url_filename(url)
    return path if path.is_file() else None


def download_to_cache(url: str, *, auth: Auth | None = None, cache: Path | None = None,
                      sink=None, on_response=None) -> Path:
    """Download ``url`` once into the file cache, remembering its hash by URL.

    ``on_response(resp)`` is called before the body is read and ``sink(chunk)`` with every
    chunk, so a caller can pass the bytes on while they arrive (the routing index does,
    for a resolver that hashes a file the index publishes no hash for). A sink that fails
    (its reader went away) is dropped; the download still completes into the cache.
    """
    def forward(chunk: bytes) -> None:
        nonlocal sink
        if sink is not None:
            try:
                sink(chunk)
            except OSError:
                sink = None

    folder = files_dir(cache)
    folder.mkdir(parents=True, exist_ok=True)
    # The place is named by the bytes' hash, known only once they are all in: they are
    # staged beside it, then moved into place through core.files like any other file.
    with tempfile.TemporaryDirectory(prefix=".part-", dir=folder) as stage:
        staged = Path(stage) / "body"
        with http.get(url, auth, stream=True) as resp:
            if on_response:
                on_response(resp)
            digest, size = _write_hashing(http.body(resp), staged, forward)
        path = folder / digest / _url_filename(url)
        with atomic_path(path, fsync=False) as tmp:
            os.replace(staged, tmp)
    remember_url_digest(url, digest, size, cache=cache)
    return path


def cached_url_digest(url: str, *, cache: Path | None = None) -> tuple[str, int] | None:
    """The cached (sha256, size) of ``url``, or None: never touches the network."""
    try:
        data = json.loads(_url_cache_file(url, cache).read_text())
        return data["sha256"], int(data["size"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def remember_url_digest(url: str, sha256: str, size: int, *, cache: Path | None = None) -> None:
    """Record a hash computed from the bytes of ``url`` (by envmgr or by the resolver)."""
    record = {"url": strip_credentials(url), "sha256": sha256, "size": size}
    write_atomic(_url_cache_file(url, cache), json.dumps(record, sort_keys=True), fsync=False)


def url_size(url: str, *, cache: Path | None = None, auth: Auth | None = None) -> int:
    """Size of the file at ``url`` from a HEAD request (cached by URL): no download."""
    hit = cached_url_digest(url, cache=cache)
    if hit:
        return hit[1]
    try:
        return int(_url_cache_file(url, cache).with_suffix(".size").read_text())
    except (FileNotFoundError, ValueError):
        pass
    length = http.small("HEAD", url, auth=auth).headers.get("Content-Length", "")
    if not length.isdigit():
        return url_digest(url, cache=cache, auth=auth)[1]
    remember_url_size(url, int(length), cache=cache)
    return int(length)


def remember_url_size(url: str, size: int, *, cache: Path | None = None) -> None:
    """Record the size of the file at ``url`` (a HEAD's Content-Length, or the total a range
    answer's Content-Range gave), for :func:`url_size`."""
    write_atomic(_url_cache_file(url, cache).with_suffix(".size"), str(size), fsync=False)

