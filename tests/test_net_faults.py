"""Downloads on a bad network: a file server on 127.0.0.1 that, by design, resets connections
mid-file, answers 503 with Retry-After, stalls, ignores Range, or sends other bytes on a
resume. ``net.http.body`` resumes (``Range: bytes=N-``), ``net.fetch`` verifies the sha256 at
the end, and ``envmgr sync`` of a lock served that way completes with the bytes sent well
under 1.3x the files' total (resume, not restart)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urlsplit

import image_fixtures as fx
import pytest
from fixture_index import PYPI, FixtureIndex
from loopback import LoopbackServer
from test_sync import envmgr, failed, installed, ok, pins, vpy

from envmgr.core.errors import HashMismatchError, NetworkError
from envmgr.model import lockfile
from envmgr.model.lockfile import LockedFile
from envmgr.net import fetch, http

RESET, STALL, BUSY, IGNORE_RANGE, OTHER_BYTES = "reset", "stall", "503", "ignore-range", "other-bytes"


class FaultServer(LoopbackServer):
    """Serves the files under ``root`` (URL path = file path) with ``Range`` support.

    ``plan[name]`` is a list of faults, one taken per request for that file name:
    ``(RESET, fraction)`` sends that fraction of the answer's body, then a TCP reset;
    ``(STALL, fraction)`` sends it, then says nothing for :attr:`stall` seconds;
    ``(BUSY, seconds)`` answers 503 with ``Retry-After``; ``(IGNORE_RANGE, None)`` answers a
    Range request with the whole file; ``(OTHER_BYTES, None)`` answers a Range request from
    :attr:`other` (another file's bytes). ``None`` (or an empty plan) serves normally.
    :attr:`sent` counts body bytes written; :attr:`seen` logs (name, Range header, status)."""

    def __init__(self, root: Path, stall: float = 4.0) -> None:
        self.root, self.stall = root, stall
        self.plan: dict[str, list] = {}
        self.other: dict[str, bytes] = {}
        self.sent = 0
        self.seen: list[tuple[str, str | None, int]] = []
        self.lock = threading.Lock()
        self.start()

    protocol = "HTTP/1.1"

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(h.path).path)
        name = path.rsplit("/", 1)[-1]
        file = self.root / path.lstrip("/")
        rng = h.headers.get("Range")
        with self.lock:
            queue = self.plan.get(name) or [None]
            fault = queue.pop(0) if len(queue) > 1 or queue[0] is not None else None
        kind, arg = fault or (None, None)
        if not file.is_file():
            return self._send(h, name, rng, 404, b"", {})
        if kind == BUSY:
            return self._send(h, name, rng, 503, b"busy\n", {"Retry-After": str(arg)})
        data = file.read_bytes()
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng and kind != IGNORE_RANGE else 0
        if kind == OTHER_BYTES and rng:
            data = self.other[name]
        status, headers = 200, {"ETag": '"' + hashlib.sha256(data).hexdigest()[:16] + '"'}
        if start:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        cut = int(len(body) * arg) if kind in (RESET, STALL) else None
        self._send(h, name, rng, status, body, headers, cut=cut, reset=kind == RESET)

    def _send(self, h, name, rng, status, body, headers, cut=None, reset=False) -> None:
        with self.lock:
            self.seen.append((name, rng, status))
        h.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body)), "Content-Type": "application/octet-stream"}.items():
            h.send_header(k, v)
        h.end_headers()
        part = body if cut is None else body[:cut]
        h.wfile.write(part)
        h.wfile.flush()
        with self.lock:
            self.sent += len(part)
        if cut is None:
            return
        h.close_connection = True
        if reset:  # SO_LINGER 0: close() sends RST, as a dropped connection does; first the
            time.sleep(0.2)  # client reads what came (a RST drops what it has not read yet)
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
        else:
            time.sleep(self.stall)


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(http, "BACKOFF", 0.01)


@pytest.fixture
def files_server(tmp_path):
    (tmp_path / "f").mkdir()
    srv = FaultServer(tmp_path)
    yield srv
    srv.close()


def put(srv: FaultServer, name: str, size: int, seed: str = "x") -> tuple[bytes, str]:
    data = hashlib.shake_256(seed.encode()).digest(size)
    (srv.root / "f" / name).write_bytes(data)
    return data, f"{srv.url}/f/{name}"


CHUNK = 64 * 1024  # what read_all reads at a time: a break loses at most the chunk being read


def near(start: int, cut: int) -> bool:
    """A resume starts where the server cut, less the part of a chunk being read then."""
    return cut - CHUNK < start <= cut


def read_all(url: str, counted: list[int] | None = None) -> bytes:
    out = bytearray()
    with http.get(url, stream=True) as resp:
        for piece in http.body(resp, chunk=CHUNK):
            out += piece
            if counted is not None:
                counted.append(len(piece))
    return bytes(out)


# -- net.http.body: resume --------------------------------------------------------------------

def test_reset_mid_file_resumes_with_range(files_server, quick):
    data, url = put(files_server, "a.whl", 3_000_000)
    files_server.plan["a.whl"] = [(RESET, 0.4), (RESET, 0.5), None]
    counted: list[int] = []
    assert read_all(url, counted) == data
    assert sum(counted) == len(data)  # a progress bar fed from the chunks never counts a byte twice
    starts = [int(r[6:-1]) if r else None for _, r, _ in files_server.seen]
    assert starts[0] is None and near(starts[1], int(len(data) * 0.4))
    assert near(starts[2], starts[1] + int((len(data) - starts[1]) * 0.5))
    assert [s for *_, s in files_server.seen] == [200, 206, 206]
    assert files_server.sent < len(data) + 2 * CHUNK


def test_stall_past_the_read_timeout_resumes(files_server, quick, monkeypatch):
    monkeypatch.setenv("ENVMGR_HTTP_TIMEOUT", "1")
    data, url = put(files_server, "s.whl", 500_000)
    files_server.plan["s.whl"] = [(STALL, 0.3), None]
    t0 = time.monotonic()
    assert read_all(url) == data
    assert 0.9 < time.monotonic() - t0 < files_server.stall  # the timeout, not the server, ended the wait
    assert near(int(files_server.seen[1][1][6:-1]), int(len(data) * 0.3))


def test_503_with_retry_after_on_the_resume(files_server, quick):
    data, url = put(files_server, "b.whl", 400_000)
    files_server.plan["b.whl"] = [(RESET, 0.5), (BUSY, 1), None]
    t0 = time.monotonic()
    assert read_all(url) == data
    assert time.monotonic() - t0 >= 0.9
    assert [s for *_, s in files_server.seen] == [200, 503, 206]


def test_a_server_without_ranges_restarts_and_the_stream_stays_whole(files_server, quick):
    data, url = put(files_server, "n.whl", 1_000_000)
    files_server.plan["n.whl"] = [(RESET, 0.6), (IGNORE_RANGE, None)]
    counted: list[int] = []
    assert read_all(url, counted) == data
    assert sum(counted) == len(data)  # the resent first 60% is skipped, not passed on again
    assert [s for *_, s in files_server.seen] == [200, 200]


def test_breaks_without_progress_are_bounded(files_server, quick, monkeypatch):
    monkeypatch.setenv("ENVMGR_HTTP_RETRIES", "3")
    _, url = put(files_server, "c.whl", 200_000)
    files_server.plan["c.whl"] = [(RESET, 0.5)] + [(RESET, 0.0)] * 10
    with pytest.raises(NetworkError) as err:
        read_all(url)
    line = str(err.value)
    assert re.search(r"download of http://127\.0\.0\.1:\d+/f/c\.whl broke off after 100000 bytes, resumed 3 time\(s\)", line)
    assert len(files_server.seen) == 4 and "\n" not in line


def test_a_wrong_content_range_is_one_line(files_server, quick, monkeypatch):
    _, url = put(files_server, "w.whl", 100_000)
    files_server.plan["w.whl"] = [(RESET, 0.5)]

    real = FaultServer._send

    def skewed(self, h, name, rng, status, body, headers, **kw):
        if status == 206:
            headers["Content-Range"] = "bytes 90000-99999/100000"
        return real(self, h, name, rng, status, body, headers, **kw)

    monkeypatch.setattr(FaultServer, "_send", skewed)
    with pytest.raises(NetworkError, match=r"resumed download of the file from byte \d+ answered with Content-Range "
                                           r"'bytes 90000-99999/100000'$"):
        read_all(url)


# -- net.fetch: the sha256 at the end, nothing partial in the cache ----------------------------

def test_fetch_resumes_into_the_cache_and_other_bytes_never_enter_it(files_server, quick, tmp_path):
    cache = tmp_path / "cache"
    data, url = put(files_server, "good-1.0-py3-none-any.whl", 2_000_000, "good")
    good = LockedFile(url=url, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    files_server.plan[good.filename] = [(RESET, 0.5), None]
    path = fetch.fetch_one("good", good, cache=cache)
    assert path.read_bytes() == data and files_server.sent < 1.3 * len(data)

    data2, url2 = put(files_server, "bad-1.0-py3-none-any.whl", 300_000, "bad")
    bad = LockedFile(url=url2, sha256=hashlib.sha256(data2).hexdigest(), size=len(data2))
    files_server.other[bad.filename] = hashlib.shake_256(b"changed").digest(len(data2))
    files_server.plan[bad.filename] = [(RESET, 0.5), (OTHER_BYTES, None)]
    with pytest.raises(HashMismatchError) as err:
        fetch.fetch_one("bad", bad, cache=cache)
    mixed = hashlib.sha256(data2[:150_000] + files_server.other[bad.filename][150_000:]).hexdigest()
    assert str(err.value).startswith(f"hash mismatch for bad: {url2} expected sha256:{bad.sha256}, got sha256:{mixed}")
    assert [p.name for p in cache.rglob("*") if p.is_file()] == [good.filename]


# -- envmgr sync against the faulty server -----------------------------------------------------

class Served:
    """The fixture index as make_lock sees it, its files' URLs on the fault server."""

    def __init__(self, index: FixtureIndex, srv: FaultServer) -> None:
        self.index, self.srv = index, srv

    def __getattr__(self, name):
        return getattr(self.index, name)

    def file_url(self, filename: str, index: str | None = None) -> str:
        return self.index.file_url(filename, index).replace(self.index.url, self.srv.url)


@pytest.fixture
def faulty(fresh_index: FixtureIndex):
    fresh_index.add(PYPI, None, "bigpkg", "1.0.0", extra_size=3_000_000)
    srv = FaultServer(fresh_index.root, stall=6.0)
    yield Served(fresh_index, srv)
    srv.close()


def faulty_project(served: Served, root: Path) -> tuple[Path, lockfile.Lock]:
    lock = fx.make_lock(served, fx.DEFAULT_PICKS + ((PYPI, None, "bigpkg", "1.0.0"),), profile="default")
    return fx.write_project(root, lock), lock


def test_sync_completes_through_resets_503s_and_a_stall(faulty, tmp_path):
    proj, lock = faulty_project(faulty, tmp_path / "proj")
    srv = faulty.srv
    for pkg in lock.packages:
        srv.plan[pkg.install_file.filename] = [(RESET, 0.5), None]
    big = lock.package("bigpkg").install_file.filename
    srv.plan[big] = [(RESET, 0.3), (STALL, 0.4), (BUSY, 1), None]
    t0 = time.monotonic()
    ok(envmgr(proj, "sync", "--frozen", ENVMGR_HTTP_TIMEOUT="2"))
    took = time.monotonic() - t0
    total = sum(p.install_file.size for p in lock.packages)
    # every file was cut once, the big one three times; what was sent stays near one copy
    assert srv.sent < 1.3 * total, (srv.sent, total)
    ranged = {name for name, rng, status in srv.seen if rng and status == 206}
    assert ranged == {p.install_file.filename for p in lock.packages}
    venv = proj / ".envmgr" / "venvs" / "default"
    assert installed(venv) == pins(proj)
    assert vpy(venv, "import bigpkg, torch, fixture_app").returncode == 0
    cached = {p.name: p for p in (Path(os.environ["ENVMGR_CACHE_DIR"]) / "files" / "sha256").rglob("*.whl")}
    for pkg in lock.packages:  # every file in the cache is the lock's bytes
        f = pkg.install_file
        assert hashlib.sha256(cached[f.filename].read_bytes()).hexdigest() == f.sha256
    print(f"sync through faults: {srv.sent} bytes sent for {total} locked ({srv.sent / total:.3f}x), {took:.1f} s, "
          f"{len(srv.seen)} requests")


def test_sync_with_other_bytes_on_resume_is_one_line_and_nothing_cached(faulty, tmp_path):
    proj, lock = faulty_project(faulty, tmp_path / "proj")
    f = lock.package("bigpkg").install_file
    srv = faulty.srv
    srv.other[f.filename] = hashlib.shake_256(b"another build").digest(f.size)
    srv.plan[f.filename] = [(RESET, 0.5), (OTHER_BYTES, None)]
    line = failed(envmgr(proj, "sync", "--frozen"))
    assert f"hash mismatch for bigpkg: {f.url} expected sha256:{f.sha256}, got sha256:" in line
    got = re.search(r"got sha256:([0-9a-f]{64})", line).group(1)
    files = Path(os.environ["ENVMGR_CACHE_DIR"]) / "files" / "sha256"
    assert not (files / f.sha256).exists() and not (files / got).exists()
    assert not [p for p in files.rglob("*") if p.name.startswith(".") or p.name == f.filename]
    assert not (proj / ".envmgr" / "venvs" / "default").exists()
