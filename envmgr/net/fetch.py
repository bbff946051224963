"""Fetch and verify: the lock's files into a content-addressed cache.

Shared by ``sync`` and ``export-image`` (and by ``lock`` for files whose hash the index
does not publish). A file lands in ``CACHE/files/sha256/<hex>/<filename>`` only after its
bytes hashed to ``<hex>``: a cached file is a verified file. Downloads run in parallel,
stream to a temp file in the same directory and are renamed into place, so a killed fetch
leaves no half-written file under a valid name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Protocol
from urllib.parse import unquote, urlsplit

from ..core import settings
from ..core.errors import HashMismatchError, NetworkError, UserError
from ..core.urls import redact, strip_credentials
from ..model.lockfile import LockedFile
from .credentials import Auth

if TYPE_CHECKING:
    import requests

# requests (and urllib3, certifi, charset-normalizer) is imported where it is used: a lock
# whose index publishes every hash and size, the usual case, never needs it, and importing
# it costs a command about 50 ms.

CHUNK = 1 << 20
TIMEOUT = (10, 60)


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


_local = threading.local()


def session() -> "requests.Session":
    s = getattr(_local, "session", None)
    if s is None:
        import requests

        s = requests.Session()
        s.headers["User-Agent"] = "envmgr"
        _local.session = s
    return s


def _get(url: str, auth: Auth | None, *, stream: bool = False, method: str = "GET") -> "requests.Response":
    import requests

    clean = strip_credentials(url)
    try:
        resp = session().request(method, clean, auth=(auth or Auth()).for_url(clean), stream=stream, timeout=TIMEOUT, allow_redirects=True)
    except requests.RequestException as exc:
        raise NetworkError(f"cannot reach {redact(url)}: {type(exc).__name__}", hint="check the network or the index URL")
    if resp.status_code in (401, 403):
        raise NetworkError(f"{redact(url)}: HTTP {resp.status_code} (credentials missing or refused)", hint="put user:token in the index URL or in ~/.netrc")
    if resp.status_code >= 400:
        raise NetworkError(f"{redact(url)}: HTTP {resp.status_code}")
    return resp


# -- the cache ----------------------------------------------------------------------------

def files_dir(cache: Path | None = None) -> Path:
    return (cache or settings.cache_dir()) / "files" / "sha256"


def cached_path(f: LockedFile, cache: Path | None = None) -> Path:
    return files_dir(cache) / f.sha256 / f.filename


def _stream_to(resp: "requests.Response", dest_dir: Path, on_chunk=None) -> tuple[Path, str, int]:
    """Stream a response body into a temp file in ``dest_dir``, hashing it on the way.

    Returns (temp path, sha256 hex, size); the caller renames it into place. ``on_chunk``
    sees every chunk (progress, or a reader the bytes are passed on to).
    """
    import requests

    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=dest_dir)
    h = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in resp.iter_content(CHUNK):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
    except requests.RequestException as exc:
        Path(tmp).unlink(missing_ok=True)
        raise NetworkError(f"download of {redact(resp.url)} broke off after {size} bytes: {type(exc).__name__}", hint="retry when the network is back")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp), h.hexdigest(), size


def _place(tmp: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return dest


def fetch_one(name: str, f: LockedFile, *, cache: Path | None = None, auth: Auth | None = None,
              reporter: Reporter | None = None) -> Path:
    dest = cached_path(f, cache)
    if dest.exists():
        return dest
    reporter = reporter or NullReporter()
    parts = urlsplit(f.url)
    if parts.scheme == "file":
        src = Path(unquote(parts.path))
        if not src.exists():
            raise NetworkError(f"{name}: {f.url} does not exist")
        tmp_path, actual = _copy_hashing(src, dest.parent.parent)
        reporter.advance(f.size)
    else:
        with _get(f.url, auth, stream=True) as resp:
            tmp_path, actual, _ = _stream_to(resp, dest.parent.parent, lambda chunk: reporter.advance(len(chunk)))
    if actual != f.sha256:
        tmp_path.unlink(missing_ok=True)
        raise HashMismatchError(
            f"hash mismatch for {name}: {redact(f.url)} expected sha256:{f.sha256}, got sha256:{actual}",
            hint="the bytes served are not the bytes the lock names; nothing was installed or written",
        )
    return _place(tmp_path, dest)


def _copy_hashing(src: Path, dest_dir: Path) -> tuple[Path, str]:
    """Copy a local file into a temp file in ``dest_dir``, hashing it in the same pass."""
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=_mkdir(dest_dir))
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                out.write(chunk)
                h.update(chunk)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp), h.hexdigest()


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def fetch(items: Iterable[tuple[str, LockedFile]], *, cache: Path | None = None, auth: Auth | None = None,
          offline: bool = False, find_links: Iterable[Path] = (), jobs: int = 8,
          reporter: Reporter | None = None) -> dict[str, Path]:
    """Make every (package name, file) available in the cache; return sha256 -> path.

    Offline, a file comes from the cache or a ``find_links`` folder (hash-verified) and a
    missing one is an error listing every missing file. Online, missing files download in
    parallel. Any hash mismatch raises before the caller installs anything.
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
    if not todo:
        return out
    reporter.start(sum(f.size for _, f in todo), f"downloading {len(todo)} file(s)")
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(todo)))) as pool:
            futures = [(f, pool.submit(fetch_one, name, f, cache=cache, auth=auth, reporter=reporter)) for name, f in todo]
            errors = []
            for f, fut in futures:
                try:
                    out[f.sha256] = fut.result()
                except Exception as exc:  # collect, then raise the first: all workers finish first
                    errors.append(exc)
            if errors:
                raise errors[0]
    finally:
        reporter.finish()
    return out


def _from_find_links(f: LockedFile, dirs: Iterable[Path], cache: Path | None) -> Path | None:
    for d in dirs:
        cand = Path(d) / f.filename
        if not cand.is_file():
            continue
        dest = cached_path(f, cache)
        tmp, actual = _copy_hashing(cand, dest.parent.parent)
        if actual == f.sha256:
            return _place(tmp, dest)
        tmp.unlink(missing_ok=True)
    return None


# -- hashes and sizes the index does not publish --------------------------------------------

def _url_cache_file(url: str, cache: Path | None) -> Path:
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

    with _get(url, auth, stream=True) as resp:
        if on_response:
            on_response(resp)
        tmp, digest, size = _stream_to(resp, _mkdir(files_dir(cache)), forward)
    path = _place(tmp, files_dir(cache) / digest / _url_filename(url))
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
    _write_json_atomic(_url_cache_file(url, cache), {"url": strip_credentials(url), "sha256": sha256, "size": size})


def url_size(url: str, *, cache: Path | None = None, auth: Auth | None = None) -> int:
    """Size of the file at ``url`` from a HEAD request (cached by URL): no download."""
    hit = cached_url_digest(url, cache=cache)
    if hit:
        return hit[1]
    entry = _url_cache_file(url, cache).with_suffix(".size")
    try:
        return int(entry.read_text())
    except (FileNotFoundError, ValueError):
        pass
    resp = _get(url, auth, method="HEAD")
    length = resp.headers.get("Content-Length")
    if length is None:
        return url_digest(url, cache=cache, auth=auth)[1]
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.write_text(length)
    return int(length)


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, sort_keys=True)
    os.replace(tmp, path)
