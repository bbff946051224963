"""``envmgr serve``: a read-only PEP 503/691 simple index of the cache's or a bundle's files.

So that the nodes of a cluster without the internet sync from one host: ``index-url`` pointing
at ``http://HOST:PORT/simple``, or pip and uv directly. The files are the ones below
``ROOT/files/sha256/<hex>/<filename>`` (the cache's layout and a bundle's), grouped by the
project their filename names; each link carries its ``#sha256=``, pages carry
``data-requires-python`` and PEP 658/714 metadata (read from the wheel's ``METADATA``).

Safe by default: it binds to 127.0.0.1; another address needs ``--token`` (asked as a Bearer
token or as the password of Basic auth); it answers GET and HEAD only; it serves only the
pages and files of its index, found by name in a table built from the folder, so no request
path ever reaches the file system (``..``, encoded or not, is refused with 400).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import html
import ipaddress
import json
import re
import threading
import time
import zipfile
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from ..core.errors import UserError
from ..model.names import canonical
from ..net.indexclient import IndexFile, render_html

JSON = "application/vnd.pypi.simple.v1+json"
HTML = "application/vnd.pypi.simple.v1+html"
_HEX = re.compile(r"[0-9a-f]{64}")
RESCAN_SECONDS = 5.0


class Dist:
    __slots__ = ("project", "filename", "sha256", "path", "_meta")

    def __init__(self, project: str, filename: str, sha256: str, path: Path):
        self.project, self.filename, self.sha256, self.path, self._meta = project, filename, sha256, path, None

    def metadata(self) -> bytes | None:
        """The wheel's METADATA (PEP 658), read once; None for an sdist or an unreadable wheel."""
        if self._meta is None:
            self._meta = b""
            if self.filename.endswith(".whl"):
                try:
                    with zipfile.ZipFile(self.path) as z:
                        name = next((n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
                        self._meta = z.read(name) if name else b""
                except (OSError, zipfile.BadZipFile):
                    pass
        return self._meta or None

    def requires_python(self) -> str:
        meta = self.metadata() or b""
        m = re.search(rb"^Requires-Python:\s*(.+?)\s*$", meta, re.M)
        return m.group(1).decode("utf-8", "replace") if m else ""


def project_of(filename: str) -> str | None:
    """The canonical project a wheel or sdist filename names; None for anything else."""
    from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

    try:
        if filename.endswith(".whl"):
            return canonical(parse_wheel_filename(filename)[0])
        if filename.endswith((".tar.gz", ".zip")):
            return canonical(parse_sdist_filename(filename)[0])
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None
    return None


class Index:
    """The files below ``root/files/sha256``, by project and by URL path; rescanned when asked for
    something it lacks, at most every few seconds (files a sync adds to a served cache appear)."""

    def __init__(self, root: Path):
        self.root = root
        self.projects: dict[str, list[Dist]] = {}
        self.by_path: dict[str, Dist] = {}
        self._scanned = 0.0
        self._lock = threading.Lock()
        self.scan()

    def scan(self) -> None:
        projects: dict[str, list[Dist]] = {}
        by_path: dict[str, Dist] = {}
        top = self.root / "files" / "sha256"
        for d in sorted(top.iterdir()) if top.is_dir() else ():
            if not _HEX.fullmatch(d.name) or not d.is_dir():
                continue
            for f in sorted(d.iterdir()):
                project = project_of(f.name)
                if project is None or not f.is_file() or f.name.startswith("."):
                    continue
                dist = Dist(project, f.name, d.name, f)
                projects.setdefault(project, []).append(dist)
                by_path[f"{d.name}/{f.name}"] = dist
        self.projects, self.by_path, self._scanned = projects, by_path, time.monotonic()

    def refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._scanned > RESCAN_SECONDS:
                self.scan()

    @property
    def files(self) -> int:
        return len(self.by_path)


# -- pages -------------------------------------------------------------------------------------

def _href(d: Dist) -> str:
    return f"../../files/{d.sha256}/{quote(d.filename)}"


def root_page(index: Index, as_json: bool) -> bytes:
    names = sorted(index.projects)
    if as_json:
        return json.dumps({"meta": {"api-version": "1.1"}, "projects": [{"name": n} for n in names]}).encode()
    links = "".join(f'<a href="{quote(n)}/">{html.escape(n)}</a><br>\n' for n in names)
    return f"<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.1\"><title>Simple index</title></head><body>\n{links}</body></html>\n".encode()


def project_page(index: Index, name: str, as_json: bool) -> bytes:
    dists = index.projects[name]
    if as_json:
        files = []
        for d in dists:
            meta = d.metadata()
            core = {"sha256": hashlib.sha256(meta).hexdigest()} if meta else False
            entry = {"filename": d.filename, "url": _href(d), "hashes": {"sha256": d.sha256}, "size": d.path.stat().st_size,
                     "core-metadata": core, "dist-info-metadata": core, "yanked": False}
            if d.requires_python():
                entry["requires-python"] = d.requires_python()
            files.append(entry)
        return json.dumps({"meta": {"api-version": "1.1"}, "name": name, "files": files, "versions": _versions(dists)}).encode()
    files = []
    for d in dists:
        meta = d.metadata()
        files.append(IndexFile(filename=d.filename, url=_href(d), sha256=d.sha256, size=None,
                               requires_python=d.requires_python() or None,
                               metadata=f"sha256={hashlib.sha256(meta).hexdigest()}" if meta else None))
    return render_html(name, files).encode()


def _versions(dists: list[Dist]) -> list[str]:
    from packaging.utils import parse_sdist_filename, parse_wheel_filename

    found = {str((parse_wheel_filename if d.filename.endswith(".whl") else parse_sdist_filename)(d.filename)[1]) for d in dists}
    return sorted(found)


def wants_json(accept: str) -> bool:
    """Content negotiation (PEP 691): JSON when the client ranks it at least as high as HTML."""
    ranks: dict[str, float] = {}
    for part in accept.split(","):
        kind, *params = [p.strip() for p in part.split(";")]
        q = next((float(p[2:]) for p in params if p.startswith("q=") and _number(p[2:])), 1.0)
        ranks[kind] = max(q, ranks.get(kind, 0.0))
    html_rank = max(ranks.get(HTML, 0.0), ranks.get("text/html", 0.0), ranks.get("*/*", 0.0))
    return ranks.get(JSON, 0.0) > 0 and ranks.get(JSON, 0.0) >= html_rank


def _number(text: str) -> bool:
    return bool(re.fullmatch(r"[01](\.\d{0,3})?", text))


# -- the server --------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    server_version = "envmgr-serve"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        self.server.log(f"{self.address_string()} {format % args}")  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _refuse_method(self) -> None:
        self._send(405, b"read-only index: GET and HEAD only\n", "text/plain", head=False, extra={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    def _send(self, code: int, body: bytes, ctype: str, *, head: bool, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _authorized(self) -> bool:
        token = self.server.token  # type: ignore[attr-defined]
        if not token:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        elif scheme.lower() == "basic":
            try:
                given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        else:
            return False
        return hmac.compare_digest(given.encode(), token.encode())

    def _answer(self, head: bool) -> None:
        if not self._authorized():
            self._send(401, b"token required\n", "text/plain", head=head, extra={"WWW-Authenticate": 'Basic realm="envmgr"'})
            return
        raw = urlsplit(self.path).path
        parts = raw.split("/")
        decoded = [unquote(p) for p in parts]
        if any(p in (".", "..") or "/" in p or "\\" in p or "\0" in p for p in decoded):
            self._send(400, b"bad path\n", "text/plain", head=head)
            return
        index: Index = self.server.index  # type: ignore[attr-defined]
        as_json = wants_json(self.headers.get("Accept", ""))
        ctype = JSON if as_json else "text/html; charset=utf-8"
        if decoded == ["", "simple", ""] or decoded == ["", "simple"]:
            index.refresh()
            self._send(200, root_page(index, as_json), ctype, head=head)
            return
        if len(decoded) in (3, 4) and decoded[1] == "simple" and decoded[3:] in ([], [""]):
            name = canonical(decoded[2])
            if name not in index.projects:
                index.refresh()
            if name in index.projects:
                if name != decoded[2]:
                    self._send(301, b"", "text/plain", head=head, extra={"Location": f"/simple/{name}/"})
                else:
                    self._send(200, project_page(index, name, as_json), ctype, head=head)
                return
        if len(decoded) == 4 and decoded[1] == "files":
            key = f"{decoded[2]}/{decoded[3]}"
            meta = key.endswith(".metadata")
            dist = index.by_path.get(key[: -len(".metadata")] if meta else key)
            if dist is not None and meta and dist.metadata():
                self._send(200, dist.metadata(), "text/plain; charset=utf-8", head=head)
                return
            if dist is not None and not meta:
                self._file(dist, head)
                return
        self._send(404, b"not found\n", "text/plain", head=head)

    def _file(self, dist: Dist, head: bool) -> None:
        try:
            fh = open(dist.path, "rb")
        except OSError:
            self._send(404, b"not found\n", "text/plain", head=head)
            return
        with fh:
            size = dist.path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if not head:
                while chunk := fh.read(1 << 20):
                    self.wfile.write(chunk)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(root: Path, bind: str, port: int, token: str | None, log: Callable[[str], None]) -> ThreadingHTTPServer:
    """The server, bound (a one-line error for a port in use or a public bind without a token)."""
    if not _loopback(bind) and not token:
        raise UserError(f"--bind {bind} is not a loopback address: refusing to serve without --token",
                        hint="pass --token T (clients send it as a Bearer token or the password of USER:T@)")
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number")
    index = Index(root)
    ThreadingHTTPServer.allow_reuse_address = False
    try:
        server = ThreadingHTTPServer((bind, port), _Handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {bind} is in use", hint="pick another --port, or 0 for any free one") from None
        raise UserError(f"cannot listen on {bind}:{port}: {exc.strerror}") from None
    server.daemon_threads = True
    server.index, server.token, server.log = index, token, log  # type: ignore[attr-defined]
    return server


def root_of(bundle: Path | None) -> Path:
    """The folder whose ``files/sha256`` is served: a bundle folder's, else the cache's."""
    from ..core import settings
    from ..net.bundlefiles import open_bundle

    if bundle is None:
        return settings.cache_dir()
    if not bundle.is_dir():
        open_bundle(bundle)  # a one-line error for what is not a bundle at all
        raise UserError(f"--bundle {bundle} is a tar: serve reads a folder", hint=f"unpack it first (tar -xf {bundle} -C DIR)")
    open_bundle(bundle)
    return bundle


def serve(*, bundle: Path | None, cache: bool, bind: str, port: int, token: str | None,
          log: Callable[[str], None] | None) -> None:
    """Serve until interrupted (Ctrl-C ends it cleanly)."""
    if cache and bundle is not None:
        raise UserError("--cache and --bundle contradict each other", hint="serve one of them")
    log = log or (lambda _: None)
    server = make_server(root_of(bundle), bind, port, token, log)
    host, bound = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    log(f"serving {server.index.files} file(s) of {len(server.index.projects)} project(s) "  # type: ignore[attr-defined]
        f"read-only at http://{shown}:{bound}/simple/")
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
