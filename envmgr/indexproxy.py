"""A routing simple index on 127.0.0.1, for resolvers that have no per-package index.

pip-compile sees one index. For a torch-family project the page comes from the torch
index only; for any other project from the default index (then the extra indexes, first
one with the project wins). Hrefs are rewritten to absolute upstream URLs, so files and
PEP 658 metadata are fetched from the real index, and the ``#sha256`` fragments and
``data-*`` attributes pass through untouched.
"""

from __future__ import annotations

import html
import threading
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from packaging.utils import canonicalize_name

from . import indexclient
from .errors import EnvmgrError


class RoutingIndex:
    """Serve a routed view of upstream indexes; ``known_hash(url)`` fills unpublished hashes.

    ``unhashed`` collects the upstream file URLs served without a published hash, so the
    caller can cache the hash the resolver computes for them (download once, by URL).
    """

    def __init__(self, default: str, extra: tuple[str, ...] = (), torch: str | None = None,
                 family: set[str] = frozenset(), known_hash=None):
        self.default, self.extra, self.torch, self.family = default, extra, torch, family
        self.known_hash = known_hash or (lambda url: None)
        self.unhashed: set[str] = set()
        self._server: ThreadingHTTPServer | None = None

    def sources(self, project: str) -> list[str]:
        if self.torch and canonicalize_name(project) in self.family:
            return [self.torch]
        return [self.default, *self.extra]

    def page(self, project: str) -> str | None:
        for url in self.sources(project):
            files = indexclient.project_page(url, project)
            if files:
                return _render(project, [_with_credentials(self._fill(f), url) for f in files])
        return None

    def _fill(self, f: indexclient.IndexFile) -> indexclient.IndexFile:
        if f.sha256:
            return f
        cached = self.known_hash(f.url)
        if cached:
            return replace(f, sha256=cached)
        self.unhashed.add(f.url)
        return f

    def __enter__(self) -> "RoutingIndex":
        router = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                parts = [p for p in self.path.split("?")[0].split("/") if p]
                if len(parts) != 2 or parts[0] != "simple":
                    self.send_error(404)
                    return
                try:
                    body = router.page(parts[1])
                except EnvmgrError as exc:
                    self.send_error(502, str(exc)[:200])
                    return
                if body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/simple"

    def __exit__(self, *exc) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


def _with_credentials(f: indexclient.IndexFile, index_url: str) -> indexclient.IndexFile:
    """Files on the index's own host need its credentials too (the resolver fetches them)."""
    idx, file = urlsplit(index_url), urlsplit(f.url)
    if idx.username is None or file.hostname != idx.hostname or file.username is not None:
        return f
    return replace(f, url=urlunsplit(file._replace(netloc=idx.netloc)))


def _render(project: str, files: list[indexclient.IndexFile]) -> str:
    rows = []
    for f in files:
        href = f.url + (f"#sha256={f.sha256}" if f.sha256 else "")
        attrs = f' href="{html.escape(href)}"'
        if f.requires_python:
            attrs += f' data-requires-python="{html.escape(f.requires_python)}"'
        if f.metadata:
            # PEP 658: pip reads METADATA without downloading the wheel (upstream serves it).
            m = html.escape(f.metadata)
            attrs += f' data-dist-info-metadata="{m}" data-core-metadata="{m}"'
        rows.append(f"<a{attrs}>{html.escape(f.filename)}</a><br/>")
    return f"<!DOCTYPE html><html><body><h1>{html.escape(project)}</h1>\n" + "\n".join(rows) + "\n</body></html>\n"
