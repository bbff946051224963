"""A routing simple index on 127.0.0.1, for resolvers that have no per-package index.

pip-compile sees one index. For a torch-family project the page comes from the torch
index only; for any other project from the default index (then the extra indexes, first
one with the project wins). Hrefs are rewritten to absolute upstream URLs, so files and
PEP 658 metadata are fetched from the real index, and the ``#sha256`` fragments and
``data-*`` attributes pass through untouched.

With ``serve_unhashed`` (the uv backend), a file the index publishes no hash for is served
through this index instead: the first request downloads it from upstream once, passing the
bytes on while they arrive and keeping them, hashed, in envmgr's file cache (hash cached by
URL); any later request (uv asks twice while writing a pylock) is answered from the cache.
``original(url)`` maps such a local URL back to the upstream one.

The index listens from the moment it is entered (its socket is bound before the resolver is
started), while the HTTP server machinery is imported and started in its own thread: the
resolver's first request waits in the socket's queue for those ~20 ms instead of the
resolver's start waiting for them.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from packaging.utils import canonicalize_name

from ..core.errors import EnvmgrError
from ..net.credentials import Auth

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

    from ..net import indexclient


class RoutingIndex:
    """Serve a routed view of upstream indexes; ``known_hash(url)`` fills unpublished hashes.

    ``unhashed`` collects the upstream file URLs served without a published hash, so the
    caller can cache the hash the resolver computes for them (download once, by URL).
    ``prefetch``: projects whose pages the resolver will ask first (the torch family): they
    are read and rendered as soon as the index starts, while the resolver starts, and the
    first request for each is answered with that page. ``hashed`` and ``partly_hashed``: the
    projects whose pages were read, split by whether the index published a hash for every
    file listed (the caller remembers this per index: see ``resolve``).
    """

    def __init__(self, default: str, extra: tuple[str, ...] = (), torch: str | None = None,
                 family: set[str] = frozenset(), known_hash=None, serve_unhashed: bool = False,
                 prefetch: tuple[str, ...] = ()):
        self.default, self.extra, self.torch, self.family = default, extra, torch, family
        self.prefetch = tuple(dict.fromkeys(canonicalize_name(n) for n in prefetch))
        # project -> (set once read, [its page or the error reading it met]); a first request pops its entry
        self._early: dict[str, tuple[threading.Event, list]] = {n: (threading.Event(), []) for n in self.prefetch}
        self.known_hash = known_hash or (lambda url: None)
        self.serve_unhashed = serve_unhashed
        self.unhashed: set[str] = set()
        self.hashed: set[str] = set()
        self.partly_hashed: set[str] = set()
        self.errors: list[str] = []  # unexpected failures while serving (shown with the resolver's)
        self._files: dict[str, str] = {}  # token -> upstream URL (with credentials) of a served file
        self._file_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._server = None  # the http.server, once its thread has made it
        self._closing = False

    def sources(self, project: str) -> list[str]:
        if self.torch and canonicalize_name(project) in self.family:
            return [self.torch]
        return [self.default, *self.extra]

    def first_page(self, project: str) -> str | None:
        """``page(project)``; for a prefetched project's first request, the page read ahead."""
        with self._lock:
            early = self._early.pop(canonicalize_name(project), None)
        if early is not None:
            ready, result = early
            ready.wait()
            if result:  # the page, or the one-line error reading it met
                if isinstance(result[0], EnvmgrError):
                    raise result[0]
                return result[0]
        return self.page(project)

    def _read_ahead(self, early: list[tuple[str, threading.Event, list]]) -> None:
        for project, ready, result in early:
            try:
                result.append(self.page(project))
            except EnvmgrError as exc:
                result.append(exc)
            except Exception:  # noqa: BLE001 - anything else: the request reads the page itself, and meets it there
                pass
            finally:
                ready.set()

    def page(self, project: str) -> str | None:
        from ..net import indexclient

        for url in self.sources(project):
            files = indexclient.project_page(url, project)
            if files:
                name = canonicalize_name(project)
                with self._lock:
                    (self.hashed if all(f.sha256 for f in files) else self.partly_hashed).add(name)
                return indexclient.render_html(project, [self._local(_with_credentials(self._fill(f), url)) for f in files])
        return None

    def _local(self, f: indexclient.IndexFile) -> indexclient.IndexFile:
        """An unhashed file, when serving them, gets a URL on this index (see the module doc)."""
        if not self.serve_unhashed or f.sha256:
            return f
        import hashlib

        token = hashlib.sha256(f.url.encode()).hexdigest()[:24]
        with self._lock:
            self._files[token] = f.url
        return replace(f, url=f"{self.base}/files/{token}/{quote(f.filename)}")

    def original(self, url: str) -> str:
        """The upstream URL of a file this index served itself (other URLs unchanged)."""
        prefix = f"{self.base}/files/"
        if not url.startswith(prefix):
            return url
        token = url[len(prefix):].split("/", 1)[0]
        with self._lock:
            return self._files.get(token, url)

    def _serve_file(self, handler: BaseHTTPRequestHandler, token: str, name: str) -> None:
        import shutil

        from ..net import fetch, http

        with self._lock:
            upstream = self._files.get(token)
            lock = self._file_locks.setdefault(token, threading.Lock())
        if upstream is None:
            handler.send_error(404)
            return
        auth = Auth.from_urls([upstream])
        if name.endswith(".metadata"):  # PEP 658: small, passed through
            _send(handler, http.small("GET", upstream + ".metadata", auth=auth).content, "application/octet-stream")
            return
        with lock:  # one download per file, however many requests
            cached = fetch.cached_url_file(upstream)
            if cached is not None:
                handler.send_response(200)
                handler.send_header("Content-Type", "application/octet-stream")
                handler.send_header("Content-Length", str(cached.stat().st_size))
                handler.end_headers()
                with cached.open("rb") as fh:
                    shutil.copyfileobj(fh, handler.wfile)
                return

            started = []

            def start(resp) -> None:
                started.append(True)
                handler.send_response(200)
                handler.send_header("Content-Type", "application/octet-stream")
                if resp.headers.get("Content-Length"):
                    handler.send_header("Content-Length", resp.headers["Content-Length"])
                else:
                    handler.close_connection = True
                handler.end_headers()

            try:
                fetch.download_to_cache(upstream, auth=auth, sink=handler.wfile.write, on_response=start)
            except EnvmgrError:
                if not started:
                    raise
                handler.close_connection = True  # the body stops short: the client sees the break

    def _fill(self, f: indexclient.IndexFile) -> indexclient.IndexFile:
        if f.sha256:
            return f
        cached = self.known_hash(f.url)
        if cached:
            return replace(f, sha256=cached)
        self.unhashed.add(f.url)
        return f

    def __enter__(self) -> "RoutingIndex":
        self._socket = socket.create_server(("127.0.0.1", 0))  # listening: requests queue until served
        self._port = self._socket.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()
        if self._early:
            early = [(project, *entry) for project, entry in self._early.items()]
            threading.Thread(target=self._read_ahead, args=(early,), daemon=True).start()
        return self

    def _serve(self) -> None:
        """The server's thread: make the HTTP server on the bound socket, then serve each request
        (in a thread of its own) until ``__exit__`` shuts the socket, which wakes the wait at once
        (``serve_forever``'s ``shutdown()`` would wait for its next poll)."""
        try:
            self._server = _server(self)
        except Exception as exc:  # the resolver's requests then fail, and its error shows this
            self.errors.append(f"routing index: {type(exc).__name__}: {exc}")
            self._socket.close()
            return
        while not self._closing:
            try:
                self._server.handle_request()
            except (OSError, ValueError):  # the socket is shut
                return

    @property
    def base(self) -> str:
        assert self._socket is not None
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return f"{self.base}/simple"

    def __exit__(self, *exc) -> None:
        if self._socket is None:
            return
        self._closing = True
        try:
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the server's thread (Linux)
        except OSError:
            pass
        self._socket.close()


def _server(router: RoutingIndex):
    """The http.server of ``router`` on its bound socket (imported here, in the server's thread)."""
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            parts = [p for p in self.path.split("?")[0].split("/") if p]
            if len(parts) == 3 and parts[0] == "files":
                try:
                    router._serve_file(self, parts[1], unquote(parts[2]))
                except EnvmgrError as exc:
                    self.send_error(502, str(exc)[:200])
                return
            if len(parts) != 2 or parts[0] != "simple":
                self.send_error(404)
                return
            try:
                body = router.first_page(parts[1])
            except EnvmgrError as exc:
                self.send_error(502, str(exc)[:200])
                return
            if body is None:
                self.send_error(404)
                return
            _send(self, body.encode(), "text/html; charset=utf-8")

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        """No traceback on the user's terminal when a resolver hangs up mid-answer (it gave up:
        its own error says why); anything unexpected is kept in ``router.errors``."""

        daemon_threads = True
        timeout = 0.5  # where shutting the socket wakes no waiting thread, it looks again this often

        def handle_error(self, request, client_address) -> None:
            exc = sys.exc_info()[1]
            if isinstance(exc, (ConnectionError, TimeoutError)):
                return
            router.errors.append(f"routing index: {type(exc).__name__}: {exc}")

    server = Server(router._socket.getsockname(), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = router._socket
    return server


def _send(handler: BaseHTTPRequestHandler, data: bytes, content_type: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _with_credentials(f: indexclient.IndexFile, index_url: str) -> indexclient.IndexFile:
    """Files on the index's own host need its credentials too (the resolver fetches them)."""
    idx, file = urlsplit(index_url), urlsplit(f.url)
    if idx.username is None or file.hostname != idx.hostname or file.username is not None:
        return f
    return replace(f, url=urlunsplit(file._replace(netloc=idx.netloc)))
