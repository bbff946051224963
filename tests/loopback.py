"""Test helpers shared by the network tests: a threaded HTTP server on 127.0.0.1 whose
answers a subclass writes, a scripted one (``Scripted``, the ``scripted`` fixture in
conftest), and a progress reporter that counts what it is told."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (a reset, a stall it timed out on) is part of the test


class LoopbackServer:
    """Serves on 127.0.0.1 (``url``) in a thread; every request of ``methods`` goes to the
    subclass's ``answer(handler)``. ``protocol``: the handler's HTTP version (1.1 keeps
    connections)."""

    methods: tuple[str, ...] = ("GET",)
    protocol = "HTTP/1.0"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = owner.protocol

            def _dispatch(self) -> None:
                owner.answer(self)

            def log_message(self, *args) -> None:
                pass

        for method in self.methods:
            setattr(Handler, f"do_{method}", Handler._dispatch)
        self.server = _Quiet(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Seen(NamedTuple):
    """One request a ``Scripted`` server answered."""

    method: str
    path: str
    host: str | None
    authorization: str | None
    port: int  # the client's: the same port, the same (kept) connection
    time: float


class Scripted(LoopbackServer):
    """Answers each request with the next (status, headers, body) of ``script`` (the last one
    repeated) and records a ``Seen`` of it in ``seen``. A header ``X-Promise: N`` sends
    ``Content-Length: N`` whatever the body (an answer cut short); ``close``: HTTP/1.1 without
    saying so, the connection just ends."""

    methods = ("GET", "HEAD", "POST", "PUT")

    def __init__(self, *script: tuple[int, dict, bytes], protocol: str = "HTTP/1.0", close: bool = False) -> None:
        self.script = list(script)
        self.protocol = protocol
        self.close_after = close
        self.seen: list[Seen] = []
        self.start()

    def answer(self, h) -> None:
        self.seen.append(Seen(h.command, h.path, h.headers.get("Host"), h.headers.get("Authorization"),
                              h.client_address[1], time.monotonic()))
        status, headers, body = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        headers = dict(headers)
        h.send_response(status)
        length = headers.pop("X-Promise", len(body))
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(length))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
        if length != len(body) or self.close_after:
            h.close_connection = True


class CountingReporter:
    """A progress reporter (``start``/``advance``/``finish``) that keeps the totals it is given."""

    def __init__(self) -> None:
        self.total = 0
        self.advanced = 0

    def start(self, total: int, label: str) -> None:
        self.total = total

    def advance(self, n: int) -> None:
        self.advanced += n

    def finish(self) -> None:
        pass
