"""``envmgr.net.http.small``: whole small answers on the standard library's client, with the
same rules as ``http.request`` (retries, credentials, redirects, proxies, one-line errors),
against scripted servers on 127.0.0.1."""

from __future__ import annotations

import base64
import gzip
import socket
import subprocess
import sys
import time

import pytest

from envmgr.core.errors import NetworkError
from envmgr.net import http


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(http, "BACKOFF", 0.01)
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "NO_PROXY", "NETRC"):
        monkeypatch.delenv(name, raising=False)


def test_a_whole_answer_and_a_kept_connection(scripted):
    srv = scripted((200, {"Content-Type": "text/html; charset=utf-8"}, "é".encode()), protocol="HTTP/1.1")
    first = http.small("GET", srv.url + "/simple/a/")
    second = http.small("GET", srv.url + "/simple/b/")
    assert first.status_code == 200 and first.text == "é" and first.content == "é".encode()
    assert first.url == srv.url + "/simple/a/"
    assert second.text == "é" and srv.seen[0].port == srv.seen[1].port  # one connection, kept


def test_a_kept_connection_the_server_closed_is_replaced_without_a_retry(scripted, monkeypatch):
    srv = scripted((200, {}, b"ok"), protocol="HTTP/1.1", close=True)
    monkeypatch.setenv("ENVMGR_HTTP_RETRIES", "0")
    assert http.small("GET", srv.url + "/a").text == "ok"
    time.sleep(0.05)
    assert http.small("GET", srv.url + "/b").text == "ok"
    assert [p for _, p, *_ in srv.seen] == ["/a", "/b"]


def test_503_with_retry_after_then_200(scripted):
    srv = scripted((503, {"Retry-After": "1"}, b"busy"), (200, {}, b"hello"))
    assert http.small("GET", srv.url + "/page").text == "hello"
    assert srv.seen[1].time - srv.seen[0].time >= 0.9


def test_retries_are_bounded_and_a_status_outside_ok_is_one_line(scripted, monkeypatch):
    srv = scripted((502, {}, b""))
    monkeypatch.setenv("ENVMGR_HTTP_RETRIES", "3")
    with pytest.raises(NetworkError, match=r"/x: HTTP 502$"):
        http.small("GET", srv.url + "/x")
    assert len(srv.seen) == 4
    srv.script[:] = [(404, {}, b"")]
    assert http.small("GET", srv.url + "/gone", ok={200, 404}).status_code == 404
    with pytest.raises(NetworkError, match=r"HTTP 404 \(not found\)"):
        http.small("GET", srv.url + "/gone")


def test_connection_refused_is_retried_then_one_redacted_line(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    calls = []
    real = http._pause
    monkeypatch.setattr(http, "_pause", lambda attempt, wait: (calls.append(attempt), real(attempt, wait)))
    with pytest.raises(http.BrokenConnection) as err:
        http.small("GET", f"http://bot:hunter2@127.0.0.1:{port}/simple/")
    line = str(err.value)
    assert line.startswith(f"cannot reach http://bot:****@127.0.0.1:{port}/simple/: ConnectionError")
    assert "hunter2" not in line and "check the network" in line
    assert calls == list(range(http.RETRIES))


def test_a_body_that_breaks_off_is_tried_again(scripted):
    srv = scripted((200, {"X-Promise": 1000}, b"x" * 100), (200, {}, b"whole"))
    assert http.small("GET", srv.url + "/p").text == "whole"
    assert len(srv.seen) == 2


def test_credentials_go_in_a_header_and_refusal_is_redacted(scripted):
    srv = scripted((401, {}, b""))
    with pytest.raises(NetworkError) as err:
        http.small("GET", srv.url.replace("http://", "http://bot:hunter2@") + "/simple/")
    assert srv.seen[0].authorization == "Basic " + base64.b64encode(b"bot:hunter2").decode()
    line = str(err.value)
    assert "HTTP 401 (credentials missing or refused)" in line and "bot:****@" in line and "hunter2" not in line
    assert "~/.netrc" in line


def test_netrc_gives_credentials_when_the_url_has_none(scripted, tmp_path, monkeypatch):
    srv = scripted((200, {}, b"ok"))
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login bot password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    http.small("GET", srv.url + "/simple/")
    assert srv.seen[0].authorization == "Basic " + base64.b64encode(b"bot:s3cret").decode()


def test_redirects_are_followed_and_credentials_stay_with_their_host(scripted):
    other = scripted((200, {}, b"there"))
    there = other.url.replace("127.0.0.1", "localhost") + "/files/f.whl"
    srv = scripted((302, {"Location": "/real"}, b""), (200, {}, b"here"), (301, {"Location": there}, b""))
    answer = http.small("GET", srv.url.replace("http://", "http://bot:pw@") + "/f")
    assert answer.text == "here" and answer.url == srv.url + "/real"
    assert [(p, a is not None) for _, p, _, a, *_ in srv.seen] == [("/f", True), ("/real", True)]
    moved = http.small("HEAD", srv.url.replace("http://", "http://bot:pw@") + "/g")
    assert moved.status_code == 200 and moved.url == there
    assert other.seen[0][:2] == ("HEAD", "/files/f.whl") and other.seen[0].authorization is None  # not sent to another host


def test_a_compressed_body_is_decoded(scripted):
    srv = scripted((200, {"Content-Encoding": "gzip", "Content-Type": "application/json"}, gzip.compress(b'{"a": 1}')))
    assert http.small("GET", srv.url + "/j").json() == {"a": 1}


def test_a_body_over_the_limit_is_not_read(scripted):
    srv = scripted((200, {}, b"x" * 5000), (206, {"Content-Range": "bytes 0-9/5000"}, b"y" * 10))
    assert http.small("GET", srv.url + "/f", limit=100).content is None
    got = http.small("GET", srv.url + "/f", limit=100, ok=(206,))
    assert got.content == b"y" * 10 and http.range_of(got) == (0, 10, 5000)


def test_a_plain_http_proxy_from_the_environment(scripted, monkeypatch):
    proxy = scripted((200, {}, b"via proxy"))
    monkeypatch.setenv("http_proxy", proxy.url)
    assert http.small("GET", "http://index.invalid/simple/x/").text == "via proxy"
    method, path, host, *_ = proxy.seen[0]
    assert (method, path, host) == ("GET", "http://index.invalid/simple/x/", "index.invalid")
    direct = scripted((200, {}, b"direct"))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert http.small("GET", direct.url + "/simple/").text == "direct" and len(proxy.seen) == 1


def test_through_a_proxy_the_standard_client_cannot_use_it_is_requests_answer(scripted, monkeypatch):
    srv = scripted((200, {"Content-Type": "text/html; charset=utf-8"}, b"page"), (200, {}, b"x" * 5000))
    monkeypatch.setattr(http, "_proxy_for", lambda url: "socks5://127.0.0.1:1")  # requests itself sees none
    answer = http.small("GET", srv.url + "/simple/")
    assert isinstance(answer, http.Answer) and answer.text == "page" and answer.url == srv.url + "/simple/"
    assert http.small("GET", srv.url + "/f", limit=100).content is None
    assert http.small("HEAD", srv.url + "/f").headers["Content-Length"] == "5000"


def test_pages_ranges_and_sizes_need_no_requests(tmp_path, monkeypatch):
    """The index client, the wheel reader's ranges and the size of a file answer on the
    standard library alone: a lock never imports requests for them."""
    code = """
import sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'<a href="/f/torch-1.0-py3-none-any.whl#sha256=00">torch-1.0-py3-none-any.whl</a>'
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_HEAD(self):
        self.send_response(200); self.send_header("Content-Length", "12345"); self.end_headers()
    def log_message(self, *a): pass
srv = HTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
url = "http://127.0.0.1:%d" % srv.server_address[1]
from envmgr.net import indexclient, fetch
files = indexclient.project_page(url + "/simple", "torch")
assert files[0].sha256 == "00", files
assert fetch.url_size(url + "/f/torch-1.0-py3-none-any.whl") == 12345
assert "requests" not in sys.modules, "requests was imported"
"""
    monkeypatch.setenv("ENVMGR_CACHE_DIR", str(tmp_path))
    subprocess.run([sys.executable, "-c", code], check=True)
