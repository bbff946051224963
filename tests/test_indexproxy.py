"""``envmgr.lock.indexproxy.RoutingIndex``: the local index a resolver is pointed at, against an
upstream index on 127.0.0.1 (pages read through ``net.http.small``)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from loopback import LoopbackServer

from envmgr.lock.indexproxy import RoutingIndex

PAGE = ('<a href="/files/torch-2.0.0-cp311-cp311-manylinux_2_28_x86_64.whl#sha256={h}">'
        "torch-2.0.0-cp311-cp311-manylinux_2_28_x86_64.whl</a>")


class Upstream(LoopbackServer):
    """A PEP 503 index with a ``torch`` and a ``triton`` page; counts the requests per path."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.lock = threading.Lock()
        self.start()

    def answer(self, h) -> None:
        with self.lock:
            self.seen.append(h.path)
        if h.path not in ("/simple/torch/", "/simple/triton/"):
            h.send_error(404)
            return
        body = PAGE.format(h="ab" * 32).replace("torch-", h.path.split("/")[2] + "-").encode()
        h.send_response(200)
        h.send_header("Content-Type", "text/html")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


@pytest.fixture
def upstream():
    srv = Upstream()
    yield srv
    srv.close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def test_pages_are_routed_with_absolute_links(upstream):
    with RoutingIndex(upstream.url + "/simple") as proxy:
        page = _get(proxy.url + "/torch/")
        with pytest.raises(urllib.error.HTTPError) as missing:
            _get(proxy.url + "/nothing/")
    assert f'href="{upstream.url}/files/torch-2.0.0-cp311' in page and "#sha256=" + "ab" * 32 in page
    assert missing.value.code == 404


def test_prefetched_pages_answer_the_first_request_and_later_ones_read_again(upstream):
    with RoutingIndex(upstream.url + "/simple", prefetch=("Triton", "torch")) as proxy:
        deadline = time.monotonic() + 5
        while len(upstream.seen) < 2 and time.monotonic() < deadline:  # both read before anyone asks
            time.sleep(0.01)
        assert sorted(upstream.seen) == ["/simple/torch/", "/simple/triton/"]
        assert "triton-2.0.0" in _get(proxy.url + "/triton/") and "torch-2.0.0" in _get(proxy.url + "/torch/")
        assert len(upstream.seen) == 2  # answered with the pages read ahead
        _get(proxy.url + "/torch/")
        assert len(upstream.seen) == 3  # a second request reads the page again


def test_a_request_made_at_once_waits_for_the_server_and_the_end_is_quick(upstream):
    proxy = RoutingIndex(upstream.url + "/simple", prefetch=("torch",))
    with proxy:
        assert "torch-2.0.0" in _get(proxy.url + "/torch/")  # right after entering: queued, then served
        port = int(proxy.base.rsplit(":", 1)[1])
        started = time.monotonic()
    assert time.monotonic() - started < 0.2  # no poll interval to wait out
    with socket.socket() as s, pytest.raises(OSError):
        s.settimeout(1)
        s.connect(("127.0.0.1", port))
