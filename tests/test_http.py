"""``envmgr.net.http``: retries, Retry-After, and the one-line errors, against a scripted
server on 127.0.0.1."""

from __future__ import annotations

import base64
import socket
import time
from email.utils import formatdate

import pytest

from envmgr.core.errors import NetworkError, UserError
from envmgr.net import http


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(http, "BACKOFF", 0.01)


def test_503_with_retry_after_then_200(scripted):
    srv = scripted((503, {"Retry-After": "1"}, b"busy"), (200, {}, b"hello"))
    resp = http.get(srv.url + "/page")
    assert resp.status_code == 200 and resp.text == "hello"
    assert [m for m, *_ in srv.seen] == ["GET", "GET"]
    assert srv.seen[1].time - srv.seen[0].time >= 0.9  # Retry-After honoured, not the 10 ms back-off


def test_retry_after_as_a_date(scripted):
    srv = scripted((429, {"Retry-After": formatdate(time.time() + 2, usegmt=True)}, b""), (200, {}, b"ok"))
    assert http.get(srv.url + "/x").text == "ok"
    assert len(srv.seen) == 2
    assert srv.seen[1].time - srv.seen[0].time >= 0.9  # whole seconds: 1 to 2 s from now


def test_retries_are_bounded_and_configurable(scripted, monkeypatch):
    srv = scripted((502, {}, b""))
    monkeypatch.setenv("ENVMGR_HTTP_RETRIES", "3")
    with pytest.raises(NetworkError, match=r"/x: HTTP 502$"):
        http.get(srv.url + "/x")
    assert len(srv.seen) == 4
    srv.seen.clear()
    monkeypatch.setenv("ENVMGR_HTTP_RETRIES", "0")
    with pytest.raises(NetworkError, match="HTTP 502"):
        http.get(srv.url + "/x")
    assert len(srv.seen) == 1
    srv.seen.clear()
    monkeypatch.delenv("ENVMGR_HTTP_RETRIES")
    with pytest.raises(NetworkError):
        http.get(srv.url + "/x")
    assert len(srv.seen) == 1 + http.RETRIES


@pytest.mark.parametrize("value", ["-1", "two", "11"])
def test_bad_retry_setting_is_a_user_error(value, monkeypatch):
    monkeypatch.setenv("ENVMGR_HTTP_RETRIES", value)
    with pytest.raises(UserError, match="ENVMGR_HTTP_RETRIES"):
        http.retries()


def test_a_request_with_a_body_is_sent_once(scripted):
    srv = scripted((503, {}, b""), (200, {}, b""))
    with pytest.raises(NetworkError, match="HTTP 503"):
        http.request("POST", srv.url + "/upload", data=b"payload")
    assert len(srv.seen) == 1


def test_no_retry_on_a_client_error(scripted):
    srv = scripted((404, {}, b""), (200, {}, b""))
    with pytest.raises(NetworkError, match=r"HTTP 404 \(not found\)"):
        http.get(srv.url + "/gone")
    assert len(srv.seen) == 1
    srv.script[:] = [(404, {}, b"")]
    assert http.get(srv.url + "/gone", ok={200, 404}).status_code == 404


def test_connection_refused_is_retried_then_one_redacted_line(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    calls = []
    real = http._pause
    monkeypatch.setattr(http, "_pause", lambda attempt, wait: (calls.append(attempt), real(attempt, wait)))
    with pytest.raises(NetworkError) as err:
        http.get(f"http://bot:hunter2@127.0.0.1:{port}/simple/")
    line = str(err.value)
    assert line.startswith(f"cannot reach http://bot:****@127.0.0.1:{port}/simple/: ConnectionError")
    assert "hunter2" not in line and "check the network" in line
    assert calls == list(range(http.RETRIES))


def test_credentials_go_in_a_header_and_refusal_is_redacted(scripted):
    srv = scripted((401, {}, b""))
    with pytest.raises(NetworkError) as err:
        http.get(srv.url.replace("http://", "http://bot:hunter2@") + "/simple/")
    method, path, _, authorization, *_ = srv.seen[0]
    assert path == "/simple/" and authorization == "Basic " + base64.b64encode(b"bot:hunter2").decode()
    line = str(err.value)
    assert "HTTP 401 (credentials missing or refused)" in line and "bot:****@" in line and "hunter2" not in line
    assert "~/.netrc" in line


def test_a_named_server_and_a_json_reason(scripted):
    srv = scripted((400, {"Content-Type": "application/json"}, b'{"errors": [{"code": "DIGEST_INVALID"}]}'))
    server = http.Server("registry here", reach_hint="is it running?", auth_hint="log in")
    with pytest.raises(NetworkError) as err:
        http.request("PUT", srv.url + "/v2/x", server=server, what="upload of blob b")
    assert str(err.value) == 'registry here: HTTP 400 for upload of blob b: {"errors": [{"code": "DIGEST_INVALID"}]}'


def test_a_body_that_breaks_off(scripted):
    srv = scripted((200, {"X-Promise": 1000}, b"x" * 100))
    with http.get(srv.url + "/f.whl", stream=True) as resp:
        with pytest.raises(NetworkError, match=r"download of http://127\.0\.0\.1:\d+/f\.whl broke off after 100 bytes"):
            b"".join(http.body(resp, chunk=10))


def test_head_follows_redirects(scripted):
    srv = scripted((302, {"Location": "/real"}, b""), (200, {"X-Size": "5"}, b""))
    resp = http.request("HEAD", srv.url + "/f")
    assert resp.status_code == 200 and [p for _, p, *_ in srv.seen] == ["/f", "/real"]


def test_timeout_setting(monkeypatch):
    assert http.timeouts() == (http.CONNECT_TIMEOUT, http.READ_TIMEOUT)
    assert http.timeouts(long=True) == (http.CONNECT_TIMEOUT, http.LONG_READ_TIMEOUT)
    monkeypatch.setenv("ENVMGR_HTTP_TIMEOUT", "3")
    assert http.timeouts() == http.timeouts(long=True) == (3, 3)
    for bad in ("0", "1.5", "forever", "3601"):
        monkeypatch.setenv("ENVMGR_HTTP_TIMEOUT", bad)
        with pytest.raises(UserError, match="ENVMGR_HTTP_TIMEOUT"):
            http.timeouts()


class _Raw:
    """A response body whose ``read1`` gives TLS-record-sized pieces, then breaks."""

    def __init__(self, pieces, error=None):
        self.pieces, self.error = list(pieces), error

    def read1(self, n, decode_content=True):
        if not self.pieces:
            if self.error is not None:
                raise self.error
            return b""
        piece = self.pieces.pop(0)
        assert len(piece) <= n
        return piece


class _Resp:
    def __init__(self, raw):
        self.raw = raw


def test_pieces_are_gathered_up_to_the_chunk_and_what_came_before_a_break_is_passed_on():
    whole = [bytes([i]) * 4 for i in range(10)]  # 40 bytes in records of 4
    got = list(http._pieces(_Resp(_Raw(whole)), 16))
    assert [len(p) for p in got] == [16, 16, 8] and b"".join(got) == b"".join(whole)
    seen = []
    with pytest.raises(ConnectionResetError):
        for piece in http._pieces(_Resp(_Raw(whole[:5], ConnectionResetError())), 16):
            seen.append(piece)
    assert b"".join(seen) == b"".join(whole[:5])  # 16 bytes, then the 4 that had come


def test_a_plain_body_cut_short_goes_on_from_where_it_broke(scripted):
    """A body sent as it is is read below urllib3 (``_plain``); a cut-short answer is still noticed
    (urllib3 no longer says so) and resumed with a Range request from the byte reached."""
    whole = bytes(range(256)) * 40
    srv = scripted((200, {"X-Promise": len(whole), "ETag": '"v1"'}, whole[:3000]),
                   (206, {"Content-Range": f"bytes 3000-{len(whole) - 1}/{len(whole)}", "ETag": '"v1"'}, whole[3000:]))
    with http.get(srv.url + "/f.whl", stream=True) as resp:
        assert http._plain(resp) is not None
        assert b"".join(http.body(resp, chunk=1000)) == whole
    assert len(srv.seen) == 2


def test_a_content_coded_body_is_not_read_plainly(scripted):
    import gzip

    srv = scripted((200, {"Content-Encoding": "gzip"}, gzip.compress(b"hello " * 100)))
    with http.get(srv.url + "/page", stream=True) as resp:
        assert http._plain(resp) is None
        assert b"".join(http.body(resp)) == b"hello " * 100
