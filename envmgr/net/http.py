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
  or as long as the server's ``Retry-After`` asks (capped); requests with a body are sent once;
- a body that breaks off is one error saying how far it got. Resuming it with a ``Range``
  request belongs in :func:`body` (which has the request it came from in ``resp.request``).

requests (and urllib3, certifi, charset-normalizer) is imported on first use: a lock whose
index publishes every hash and size, the usual case, never needs it, and importing it costs
a command about 50 ms.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Collection, Iterator

from ..core.errors import NetworkError, UserError
from ..core.urls import redact, strip_credentials
from .credentials import Auth

if TYPE_CHECKING:
    import requests

TIMEOUT = (10, 60)  # seconds: to connect, and between two reads
LONG_TIMEOUT = (10, 300)  # a registry may say nothing for minutes while it takes in a blob
CHUNK = 1 << 20

OK = range(200, 400)  # statuses a request returns by default; any other raises
ANY = range(100, 600)  # for a caller that looks at every status itself (then :func:`check`)

RETRIES = 2  # default of ENVMGR_HTTP_RETRIES
MAX_RETRIES = 10
BACKOFF = 0.5  # seconds before the first retry; doubled for each further one, with jitter
MAX_WAIT = 30.0  # the longest pause, whatever Retry-After says
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


def retries() -> int:
    """How often a failed read is tried again (``ENVMGR_HTTP_RETRIES``)."""
    text = os.environ.get("ENVMGR_HTTP_RETRIES", "").strip()
    if not text:
        return RETRIES
    if not text.isdigit() or int(text) > MAX_RETRIES:
        raise UserError(f"ENVMGR_HTTP_RETRIES={text!r} is not a whole number from 0 to {MAX_RETRIES}")
    return int(text)


def request(method: str, url: str, *, auth: Auth | tuple[str, str] | None = None, headers: dict | None = None,
            data=None, stream: bool = False, timeout: tuple[float, float] = TIMEOUT,
            ok: Collection[int] = OK, server: Server = INDEX, what: str = "") -> "requests.Response":
    """Send a request and return the response, whose status is in ``ok``; else raise NetworkError.

    Credentials in ``url`` never go on the wire as part of it: ``auth`` (credentials by host,
    or a user/password pair) is used, else those in ``url``; ``~/.netrc`` when there are none.
    ``what`` names the object in error lines ("blob sha256:..."); ``server`` says who is asked.
    """
    import requests

    clean = strip_credentials(url)
    if not isinstance(auth, tuple):
        auth = (auth if auth is not None else Auth.from_urls([url])).for_url(clean)
    retry = retries() if method.upper() in RETRY_METHODS else 0
    attempt = 0
    while True:
        again = attempt < retry
        try:
            resp = session().request(method, clean, auth=auth, headers=headers, data=data, stream=stream,
                                     timeout=timeout, allow_redirects=True)
        except (requests.ConnectionError, requests.Timeout) as exc:
            if not again:
                raise _unreachable(exc, url, server, what) from None
            _pause(attempt, None)
        except requests.RequestException as exc:
            raise _unreachable(exc, url, server, what) from None
        else:
            if not (again and resp.status_code in RETRY_STATUSES):
                return check(resp, ok, server=server, what=what, url=url)
            resp.close()
            _pause(attempt, retry_after(resp))
        attempt += 1


def get(url: str, auth: Auth | tuple[str, str] | None = None, **kw) -> "requests.Response":
    """``request("GET", ...)``."""
    return request("GET", url, auth=auth, **kw)


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


def body(resp: "requests.Response", *, server: Server = INDEX, what: str = "",
         chunk: int = CHUNK) -> Iterator[bytes]:
    """The chunks of a streamed response's body; a body that breaks off raises NetworkError."""
    import requests

    done = 0
    try:
        for piece in resp.iter_content(chunk):
            done += len(piece)
            yield piece
    except requests.RequestException as exc:
        subject = (what or redact(resp.url)) + (f" from {server.name}" if server.name else "")
        raise NetworkError(f"download of {subject} broke off after {done} bytes: {type(exc).__name__}",
                           hint="retry when the network is back") from None


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


def _unreachable(exc: Exception, url: str, server: Server, what: str) -> NetworkError:
    return NetworkError(f"cannot reach {_where(server, url)}" + (f" for {what}" if what else "")
                        + f": {type(exc).__name__}", hint=server.reach_hint)
