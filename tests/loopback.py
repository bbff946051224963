"""Test helpers shared by the network tests: a threaded HTTP server on 127.0.0.1 whose
answers a subclass writes, and a progress reporter that counts what it is told."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
