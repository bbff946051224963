"""HTTP for all of envmgr: one session per thread, the timeouts, retries, and the one-line
errors a failed request becomes.

Every request envmgr makes (index pages, files, registry calls) goes through
:func:`request` and every body it reads through :func:`body`, so what is done on a bad
network is decided here once:

- a connection failure, and a status outside what the caller accepts, become one
  :class:`~envmgr.core.errors.NetworkError` line naming the server (a URL only ever
  through :func:`~envmgr.core.urls.redact`), with a hint fitting the server (:class:`Server`);
- a read (``GET``/``HEAD``) that meets a connection failure or a 429/5xx is tried again, at
  most ``ENVMGR_HTTP_RETRIES`` times (default 2), after an exponential back-off with jitter,
  or as long as the server's ``Retry-After`` asks (capped); requests with a body are sent once
  (a protocol that can resume an upload does so itself, with a :class:`Tries` of its own);
- a server may stay silent ``ENVMGR_HTTP_TIMEOUT`` seconds (default 60; 300 for registry
  calls, which may take in a blob for minutes) before a request counts as failed;
- a body that breaks off or stalls is resumed (:func:`body`): the same ``GET`` again with
  ``Range: bytes=N-`` (``If-Range`` when the first answer had a validator), its ``206``'s
  ``Content-Range`` checked; a server that answers ``200`` sends the file from its start and
  the ``N`` bytes already passed on are skipped. The caller sees one unbroken stream (its
  hash and its progress bar go on across resumes); the bytes are only as right as the
  caller's hash says they are. After ``ENVMGR_HTTP_RETRIES`` breaks in a row without a new
  byte (or :data:`MAX_RESUMES` in all) it is one error saying how far it got.

Whole small answers (an index page, a byte range of a wheel, a ``HEAD``) come through
:func:`small`, on the standard library's ``http.client`` with the same rules (credentials and
``~/.netrc``, proxies from the environment, retries, redirects, the one-line errors): a lock
reads pages and ranges while uv resolves, and ``requests`` (with urllib3, certifi and
charset-normalizer, ~50-80 ms of imports) would cost it more than the reading. Streams (a file
into the cache, a registry blob) and requests with a body go through :func:`request`, which
imports requests on first use.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Iterator

from ..core.errors import NetworkError, UserError
from ..core.urls import redact, strip_credentials
from .credentials import Auth

if TYPE_CHECKING:
    import requests

CONNECT_TIMEOUT = 10  # seconds to connect
READ_TIMEOUT = 60  # seconds between two reads (default of ENVMGR_HTTP_TIMEOUT)
LONG_READ_TIMEOUT = 300  # a registry may say nothing for minutes while it takes in a blob
MAX_TIMEOUT = 3600
CHUNK = 1 << 20

OK = range(200, 400)  # statuses a request returns by default; any other raises
ANY = range(100, 600)  # for a caller that looks at every status itself (then :func:`check`)

RETRIES = 2  # default of ENVMGR_HTTP_RETRIES
MAX_RETRIES = 10
BACKOFF = 0.5  # seconds before the first retry; doubled for each further one, with jitter
MAX_WAIT = 30.0  # the longest pause, whatever Retry-After says
MAX_RESUMES = 50  # breaks of one body, however much each resume brought
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Server:
    """Whom a request speaks to, as its error line names it, and what to tell the user."""

    name: str = ""  # "" names the request's URL (redacted)
    reach_hint: str = "check the network or the index URL"
    auth_hint: str = "put user:token in the index URL or in ~/.netrc"


INDEX = Server()

_local = threading.local()


def session() -> "requests.Session":
    """This thread's session: its connection pool is kept between requests."""
    s = getattr(_local, "session", None)
    if s is None:
        import requests

        s = _local.session = requests.Session()
        s.headers["User-Agent"] = "envmgr"
    return s


def _setting(name: str, default: int, low: int, high: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise UserError(f"{name}={text!r} is not a whole number from {low} to {high}")
    return int(text)


def retries() -> int:
    """How often a failed read is tried again (``ENVMGR_HTTP_RETRIES``)."""
    return _setting("ENVMGR_HTTP_RETRIES", RETRIES, 0, MAX_RETRIES)


def timeouts(long: bool = False) -> tuple[float, float]:
    """(connect, read) seconds; the read one is ``ENVMGR_HTTP_TIMEOUT`` when set, else 60
    (``long``: 300, for a registry taking in a blob)."""
    read = _setting("ENVMGR_HTTP_TIMEOUT", 0, 1, MAX_TIMEOUT)
    return (min(CONNECT_TIMEOUT, read or CONNECT_TIMEOUT), read or (LONG_READ_TIMEOUT if long else READ_TIMEOUT))


class Tries:
    """The tries again of one transfer: each failure pauses (back-off with jitter, or the
    server's ``Retry-After``) and is allowed while fewer than ``limit`` failures came in a
    row without progress (``ENVMGR_HTTP_RETRIES`` by default) and :data:`MAX_RESUMES` in all."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = retries() if limit is None else limit
        self.in_a_row = 0
        self.total = 0

    def failed(self, progressed: bool = False) -> bool:
        """Count a failure; True when it may be tried again."""
        self.in_a_row = 1 if progressed else self.in_a_row + 1
        self.total += 1
        return self.in_a_row <= self.limit and self.total <= MAX_RESUMES

    def pause(self, wait: float | None = None) -> None:
        _pause(self.in_a_row - 1, wait)

    def again(self, progressed: bool = False, wait: float | None = None) -> bool:
        """After a failure: pause and say True when it may be tried again, else False."""
        if not self.failed(progressed):
            return False
        self.pause(wait)
        return True


class BrokenConnection(NetworkError):
    """A request that got no answer: refused, reset, or timed out. A caller that can resume
    (an upload) catches this one; every other failure is final."""


def request(method: str, url: str, *, auth: Auth | tuple[str, str] | None = None, headers: dict | None = None,
            data=None, stream: bool = False, timeout: tuple[float, float] | None = None,
            ok: Collection[int] = OK, server: Server = INDEX, what: str = "") -> "requests.Response":
    """Send a request and return the response, whose status is in ``ok``; else raise NetworkError.

    Credentials in ``url`` never go on the wire as part of it: ``auth`` (credentials by host,
    or a user/password pair) is used, else those in ``url``; ``~/.netrc`` when there are none.
    ``what`` names the object in error lines ("blob sha256:..."); ``server`` says who is asked.
    ``timeout``: (connect, read) seconds, :func:`timeouts` by default.
    """
    import requests

    clean = strip_credentials(url)
    if not isinstance(auth, tuple):
        auth = (auth if auth is not None else Auth.from_urls([url])).for_url(clean)
    tries = Tries(None if method.upper() in RETRY_METHODS else 0)
    while True:
        try:
            resp = session().request(method, clean, auth=auth, headers=headers, data=data, stream=stream,
                                     timeout=timeout or timeouts(), allow_redirects=True)
        except (requests.ConnectionError, requests.Timeout) as exc:
            if not tries.again():
                raise _unreachable(exc, url, server, what, BrokenConnection) from None
        except requests.RequestException as exc:
            raise _unreachable(exc, url, server, what) from None
        else:
            if resp.status_code not in RETRY_STATUSES or not tries.failed():
                return check(resp, ok, server=server, what=what, url=url)
            resp.close()
            tries.pause(retry_after(resp))


def get(url: str, auth: Auth | tuple[str, str] | None = None, **kw) -> "requests.Response":
    """``request("GET", ...)``."""
    return request("GET", url, auth=auth, **kw)


# -- whole small answers on the standard library's client ----------------------------------

MAX_REDIRECTS = 30  # as requests allows
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Answer:
    """A whole answer of :func:`small`: what callers read of a ``requests.Response``
    (``status_code``, ``headers``, ``url`` after redirects, ``content``, ``text``, ``json()``),
    so :func:`check`, :func:`range_of` and :func:`validator_of` take either. ``content`` is
    None for a body over the caller's ``limit``, left unread."""

    __slots__ = ("status_code", "headers", "url", "content")

    def __init__(self, status_code: int, headers, url: str, content: bytes | None) -> None:
        self.status_code, self.headers, self.url, self.content = status_code, headers, url, content

    @property
    def text(self) -> str:
        params = self.headers.get("Content-Type", "").split(";")[1:]
        charset = next((p.split("=", 1)[1].strip().strip('"') for p in params if p.strip().lower().startswith("charset=")),
                       "utf-8")  # PEP 503 pages are UTF-8
        try:
            return (self.content or b"").decode(charset, errors="replace")
        except LookupError:
            return (self.content or b"").decode("utf-8", errors="replace")

    def json(self):
        import json

        return json.loads(self.content or b"")

    def close(self) -> None:
        pass

    def __enter__(self) -> "Answer":
        return self

    def __exit__(self, *exc) -> None:
        pass


class _Failed(Exception):
    """One exchange of :func:`small` that got no whole answer; ``name`` is what the error line
    calls it (requests' names: ConnectionError, ConnectTimeout, ReadTimeout, SSLError, ...)."""

    def __init__(self, name: str, retry: bool = True) -> None:
        super().__init__(name)
        self.name, self.retry = name, retry


def small(method: str, url: str, *, auth: Auth | tuple[str, str] | None = None, headers: dict | None = None,
          ok: Collection[int] = OK, server: Server = INDEX, what: str = "",
          timeout: tuple[float, float] | None = None, limit: int | None = None):
    """:func:`request` for a whole small answer (a page, a range, a ``HEAD``), read in full and
    returned as an :class:`Answer`, on the standard library's client (see the module doc).

    The same rules as :func:`request`: credentials by host (else ``~/.netrc``), never in the
    URL on the wire and not passed to another host a redirect leads to; proxies from the
    environment; a connection failure or a 429/5xx tried again with back-off (``GET``/``HEAD``);
    a status outside ``ok`` one NetworkError line. Idle connections are kept for the next
    request to the same server. A body over ``limit`` bytes is not read (``content`` None).
    Through a proxy the standard client cannot speak to (``https://``, SOCKS) it is
    :func:`request`'s answer, read in full.
    """
    clean = strip_credentials(url)
    if not isinstance(auth, tuple):
        auth = (auth if auth is not None else Auth.from_urls([url])).for_url(clean)
    proxy = _proxy_for(clean)
    if proxy and not proxy.startswith("http://"):
        return _through_requests(method, url, auth, headers, ok, server, what, timeout, limit)
    method = method.upper()
    tries = Tries(None if method in RETRY_METHODS else 0)
    while True:
        try:
            answer = _exchange(method, clean, auth, headers or {}, timeout or timeouts(), limit)
        except _Failed as exc:
            if not exc.retry or not tries.again():
                kind = BrokenConnection if exc.retry else NetworkError
                raise _unreachable(exc, url, server, what, kind, name=exc.name) from None
        else:
            if answer.status_code not in RETRY_STATUSES or not tries.failed():
                return check(answer, ok, server=server, what=what, url=url)
            tries.pause(retry_after(answer))


def _through_requests(method, url, auth, headers, ok, server, what, timeout, limit) -> Answer:
    """:func:`small`'s answer through :func:`request` (a proxy the standard client cannot use)."""
    with request(method, url, auth=auth, headers=headers, ok=ok, server=server, what=what, timeout=timeout,
                 stream=True) as resp:
        declared = resp.headers.get("Content-Length", "")
        content: bytes | None = b""
        if method.upper() == "HEAD":
            pass
        elif limit is not None and declared.isdigit() and int(declared) > limit:
            content = None
        else:
            pieces, size = [], 0
            for piece in body(resp, server=server, what=what):
                pieces.append(piece)
                size += len(piece)
                if limit is not None and size > limit:
                    break
            content = None if limit is not None and size > limit else b"".join(pieces)
        return Answer(resp.status_code, resp.headers, resp.url, content)


def _exchange(method: str, url: str, auth: tuple[str, str] | None, headers: dict, timeout: tuple[float, float],
              limit: int | None) -> Answer:
    """One request, its redirects followed (like requests: a 303 becomes a GET; the credentials
    given stay with their host, another host gets its ``~/.netrc`` entry)."""
    from urllib.parse import urljoin, urlsplit

    for _ in range(MAX_REDIRECTS + 1):
        answer = _once(method, url, auth, headers, timeout, limit)
        location = answer.headers.get("Location") if answer.status_code in REDIRECTS else None
        if not location:
            return answer
        target = strip_credentials(urljoin(url, location))
        if answer.status_code == 303 and method != "HEAD":
            method = "GET"
        before, after = urlsplit(url), urlsplit(target)
        if after.hostname != before.hostname or (before.scheme, after.scheme) == ("https", "http"):
            auth = None
        url = target
    raise _Failed("TooManyRedirects", retry=False)


_idle: dict[tuple, list] = {}  # (scheme, host, port, proxy) -> connections kept open
_idle_lock = threading.Lock()


def _once(method: str, url: str, auth: tuple[str, str] | None, headers: dict, timeout: tuple[float, float],
          limit: int | None) -> Answer:
    import http.client
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _Failed("InvalidURL", retry=False) from None
    if parts.scheme not in ("http", "https") or not host:
        raise _Failed("InvalidSchema" if host else "InvalidURL", retry=False)
    proxy = _proxy_for(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    sent = {"User-Agent": "envmgr", "Accept-Encoding": "gzip, deflate", "Accept": "*/*", **headers}
    creds = auth or _netrc(host)
    if creds:
        sent["Authorization"] = _basic(*creds)
    if proxy and parts.scheme == "http":  # a plain-HTTP proxy takes the whole URL
        target, sent["Host"] = url, parts.netloc.rpartition("@")[2]
        if _proxy_creds(proxy):
            sent["Proxy-Authorization"] = _basic(*_proxy_creds(proxy))
    key = (parts.scheme, host, port, proxy)
    with _idle_lock:
        kept = _idle.get(key)
        conn = kept.pop() if kept else None
    fresh = conn is None
    while True:
        if conn is None:
            conn = _connect(parts.scheme, host, port, proxy, timeout)
        try:
            conn.request(method, target, headers=sent)
            resp = conn.getresponse()
            break
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            if not fresh:  # a kept connection the server had closed meanwhile: once more on a new one
                conn, fresh = None, True
                continue
            raise _Failed(_name(exc, "ReadTimeout")) from None
    try:
        content = _read(resp, method, limit)
    except (OSError, http.client.HTTPException, EOFError) as exc:
        conn.close()
        raise _Failed(_name(exc, "ReadTimeout")) from None
    except ValueError:  # zlib.error is one: a body that does not decode
        conn.close()
        raise _Failed("ContentDecodingError", retry=False) from None
    if content is None or resp.will_close:
        conn.close()
    else:
        with _idle_lock:
            _idle.setdefault(key, []).append(conn)
    return Answer(resp.status, resp.headers, url, content)


def _read(resp, method: str, limit: int | None) -> bytes | None:
    """The body (decoded when the server compressed it); None past ``limit`` bytes (unread)."""
    import zlib

    if method == "HEAD" or resp.status in (204, 304):
        resp.read()
        return b""
    if limit is not None:
        declared = resp.getheader("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            return None
        data = resp.read(limit + 1)
        if len(data) > limit:
            return None
        data += resp.read()  # nothing left but the end of a chunked body
    else:
        data = resp.read()
    encoding = resp.getheader("Content-Encoding", "").strip().lower()
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(data, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            try:
                return zlib.decompress(data)
            except zlib.error:
                return zlib.decompress(data, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise ValueError(str(exc)) from None
    return data


def _connect(scheme: str, host: str, port: int, proxy: str | None, timeout: tuple[float, float]):
    """A connection to ``host`` (through ``proxy``: a ``CONNECT`` tunnel for https), its reads
    then allowed ``timeout[1]`` seconds."""
    import http.client
    from urllib.parse import urlsplit

    connect, read = timeout
    via = urlsplit(proxy) if proxy else None
    at = (via.hostname, via.port or 80) if via else (host, port)
    try:
        if scheme == "https":
            conn = http.client.HTTPSConnection(*at, timeout=connect, context=_tls())
            if via:
                creds = _proxy_creds(proxy)
                conn.set_tunnel(host, port, headers={"Proxy-Authorization": _basic(*creds)} if creds else None)
        else:
            conn = http.client.HTTPConnection(*at, timeout=connect)
        conn.connect()
    except (OSError, http.client.HTTPException) as exc:
        raise _Failed(_name(exc, "ConnectTimeout")) from None
    except ValueError:
        raise _Failed("InvalidURL", retry=False) from None
    conn.sock.settimeout(read)
    return conn


def _name(exc: BaseException, timeout: str) -> str:
    """What the error line calls a failure, in requests' words (one spelling whichever client)."""
    import ssl

    if isinstance(exc, TimeoutError):
        return timeout
    return "SSLError" if isinstance(exc, ssl.SSLError) else "ConnectionError"


def _basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _netrc(host: str) -> tuple[str, str] | None:
    """``~/.netrc``'s (or ``$NETRC``'s) login and password for ``host``, as requests reads them."""
    import netrc

    for path in ([os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]):
        path = os.path.expanduser(path)
        if not os.path.exists(path):
            continue
        try:
            found = netrc.netrc(path).authenticators(host)
        except (netrc.NetrcParseError, OSError):
            return None
        if found:
            return (found[0] or found[1] or "", found[2] or "")
        return None
    return None


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (``https_proxy``, ``no_proxy``, ...), or None."""
    if not any(name[-6:].lower() == "_proxy" for name in os.environ):
        return None  # the usual case, without importing urllib.request (~5 ms)
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2]):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _proxy_creds(proxy: str) -> tuple[str, str] | None:
    from urllib.parse import unquote, urlsplit

    p = urlsplit(proxy)
    return (unquote(p.username), unquote(p.password or "")) if p.username is not None else None


_tls_lock = threading.Lock()
_tls_context = None


def _tls():
    """The TLS context of every connection: the CA bundle requests would use
    (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, else certifi's), made once."""
    global _tls_context
    with _tls_lock:
        if _tls_context is None:
            import ssl

            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if not bundle:
                try:
                    import certifi

                    bundle = certifi.where()
                except ImportError:
                    bundle = None
            if bundle and os.path.isdir(bundle):
                ctx = ssl.create_default_context(capath=bundle)
            else:
                ctx = ssl.create_default_context(cafile=bundle or None)
            ctx.set_alpn_protocols(["http/1.1"])
            _tls_context = ctx
        return _tls_context


def check(resp: "requests.Response", ok: Collection[int] = OK, *, server: Server = INDEX, what: str = "",
          url: str | None = None) -> "requests.Response":
    """``resp`` when its status is in ``ok``; else the one-line NetworkError for that status."""
    code = resp.status_code
    if code in ok:
        return resp
    line = f"{_where(server, url or resp.url)}: HTTP {code}" + (f" for {what}" if what else "")
    hint = None
    if code in (401, 403):
        line += " (credentials missing or refused)"
        hint = server.auth_hint
    elif code == 404:
        line += " (not found)"
    elif resp.headers.get("Content-Type", "").startswith("application/json"):
        excerpt = " ".join(resp.text[:200].split())  # a registry says why in JSON
        if excerpt:
            line += f": {excerpt}"
    resp.close()
    raise NetworkError(line, hint=hint)


def body(resp: "requests.Response", *, server: Server = INDEX, what: str = "", chunk: int = CHUNK,
         timeout: tuple[float, float] | None = None) -> Iterator[bytes]:
    """The chunks (at most ``chunk`` bytes: what has come) of a response requested with
    ``stream=True``, resumed where it broke off or stalled (see the module's docstring); one
    that cannot be completed raises NetworkError."""
    import requests
    import urllib3

    done = 0  # bytes passed on
    skip = 0  # bytes of the current answer already passed on (a 200 to a Range request)
    tries = Tries(None if resp.request.method == "GET" else 0)
    current = resp
    while True:
        before = done
        try:
            for piece in _pieces(current, chunk):
                if skip:
                    cut = min(skip, len(piece))
                    skip -= cut
                    piece = piece[cut:]
                    if not piece:
                        continue
                done += len(piece)
                yield piece
            return
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            error = exc
        finally:
            if current is not resp:
                current.close()
        if not tries.again(progressed=done > before):
            subject = (what or redact(resp.url)) + (f" from {server.name}" if server.name else "")
            again = f", resumed {tries.total - 1} time(s)" if tries.total > 1 else ""
            raise NetworkError(f"download of {subject} broke off after {done} bytes{again}: {type(error).__name__}",
                               hint="retry when the network is back")
        current, skip = _resume(resp, done, server=server, what=what, timeout=timeout)


def _plain(resp: "requests.Response"):
    """The ``http.client`` response under urllib3's when the body comes as it is (no content
    coding, not chunked, a Content-Length): its ``read1`` gives the same bytes without
    urllib3's bookkeeping around every 16 KiB record (user CPU of reading a 539 MB wheel over
    TLS: 0.4 s instead of 0.6 s). None otherwise."""
    import http.client

    fp = getattr(resp.raw, "_fp", None)
    if not isinstance(fp, http.client.HTTPResponse) or fp.chunked or fp.length is None:
        return None
    return fp if (resp.headers.get("Content-Encoding") or "identity").lower() == "identity" else None


def _pieces(resp: "requests.Response", chunk: int) -> Iterator[bytes]:
    """What has come of the body, ``chunk`` bytes at most a piece: a break then loses nothing
    that had come (``iter_content`` waits for whole chunks, and drops the one it was filling)."""
    plain = _plain(resp)
    if plain is not None:
        read1 = plain.read1
    elif hasattr(resp.raw, "read1"):  # urllib3 >= 2
        def read1(n: int) -> bytes:
            return resp.raw.read1(n, decode_content=True)
    else:
        yield from resp.iter_content(chunk)
        return
    # read1 answers with what one TLS record held (16 KiB); a piece is gathered from them up to
    # ``chunk`` bytes, so that a consumer's per-piece work (a write, a hash update, a progress
    # tick, waking another thread) is paid per MiB, not per record. When the read breaks,
    # what had come is passed on before the error.
    parts: list[bytes] = []
    size = 0
    while True:
        try:
            piece = read1(chunk - size)
            if not piece and plain is not None and plain.length:  # (urllib3 says so itself)
                raise ConnectionResetError(f"the answer ended {plain.length} bytes before its Content-Length")
        except Exception:
            if parts:
                yield b"".join(parts)
            raise
        if not piece:
            break
        parts.append(piece)
        size += len(piece)
        if size >= chunk:
            yield b"".join(parts) if len(parts) > 1 else piece
            parts, size = [], 0
    if parts:
        yield b"".join(parts)


def _resume(first: "requests.Response", done: int, **kw) -> tuple["requests.Response", int]:
    """``first``'s request again from byte ``done``: (the answer, how many of its bytes to skip)."""
    headers = {k: v for k, v in first.request.headers.items() if k.lower() not in ("range", "if-range")}
    encoded = first.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    if done and not encoded:  # a range of an encoded body is not a range of its bytes
        headers["Range"] = f"bytes={done}-"
        validator = validator_of(first)
        if validator:
            headers["If-Range"] = validator
    resp = request("GET", first.url, headers=headers, stream=True, ok=(200, 206), **kw)
    if resp.status_code == 200:
        return resp, done
    start = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
    if not start or int(start.group(1)) > done:
        resp.close()
        raise NetworkError(f"{_where(kw['server'], first.url)}: resumed download of {kw['what'] or 'the file'} "
                           f"from byte {done} answered with Content-Range {resp.headers.get('Content-Range')!r}")
    return resp, done - int(start.group(1))


def retry_after(resp: "requests.Response") -> float | None:
    """Seconds the server asks to wait (``Retry-After``: seconds or an HTTP date), or None."""
    value = resp.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _pause(attempt: int, wait: float | None) -> None:
    if wait is None:
        step = BACKOFF * 2 ** attempt
        wait = random.uniform(step / 2, step)
    time.sleep(min(wait, MAX_WAIT))


def _where(server: Server, url: str) -> str:
    return server.name or redact(url)


def _unreachable(exc: Exception, url: str, server: Server, what: str,
                 kind: type[NetworkError] = NetworkError, name: str = "") -> NetworkError:
    return kind(f"cannot reach {_where(server, url)}" + (f" for {what}" if what else "")
                + f": {name or type(exc).__name__}", hint=server.reach_hint)


def get_range(url: str, start: int, stop: int, auth: Auth | tuple[str, str] | None = None, *,
              validator: str | None = None, **kw) -> "requests.Response":
    """``GET`` of bytes ``[start, stop)`` (``Range``, not encoded; ``If-Range: validator`` when
    given). The answer is a ``206`` or a ``200`` (a server that ignores ranges, or a changed
    file): :func:`range_of` says which range it holds."""
    headers = {"Range": f"bytes={start}-{stop - 1}", "Accept-Encoding": "identity"}
    if validator:
        headers["If-Range"] = validator
    return request("GET", url, auth=auth, headers=headers, stream=True, ok=(200, 206), **kw)


def range_of(resp: "requests.Response") -> tuple[int, int, int] | None:
    """(start, stop, total size) of a ``206`` answer's ``Content-Range``; None for anything else."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", resp.headers.get("Content-Range", "").strip())
    if resp.status_code != 206 or not m:
        return None
    return int(m.group(1)), int(m.group(2)) + 1, int(m.group(3))


def validator_of(resp: "requests.Response") -> str | None:
    """The strong ``ETag`` (else ``Last-Modified``) a later ``If-Range`` names."""
    etag = resp.headers.get("ETag", "")
    return etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified")


def range_body(resp: "requests.Response", url: str, start: int, stop: int, auth: Auth | tuple[str, str] | None = None,
               *, chunk: int = CHUNK, what: str = "") -> Iterator[bytes]:
    """Bytes ``[start, stop)`` of ``url`` from ``resp`` (a ``206`` holding them, from
    :func:`get_range`), resumed from the byte reached when it breaks off or stalls (a new
    ``Range`` request, same rules as :func:`body`); an answer for other bytes is an error."""
    import requests
    import urllib3

    pos, tries, current, validator = start, Tries(), resp, validator_of(resp)
    while True:
        before = pos
        error: BaseException | None = None
        try:
            for piece in _pieces(current, chunk):
                piece = piece[:stop - pos]
                pos += len(piece)
                yield piece
                if pos >= stop:
                    return
            error = EOFError("the answer ended early")
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            error = exc
        finally:
            current.close()
        if not tries.again(progressed=pos > before):
            raise NetworkError(f"download of {what or redact(url)} (bytes {start}-{stop - 1}) broke off at byte {pos}: "
                               f"{type(error).__name__}", hint="retry when the network is back")
        current = get_range(url, pos, stop, auth, validator=validator, what=what)
        got = range_of(current)
        if got is None or got[:2] != (pos, stop):
            current.close()
            raise NetworkError(f"{redact(url)}: resumed range {pos}-{stop - 1} answered with HTTP {current.status_code} "
                               f"{current.headers.get('Content-Range', '')!r} (the file changed?)")
