"""``envmgr serve`` (issue 17): a read-only PEP 503/691 index of a bundle or the cache that pip
and uv install from, giving the same files as ``envmgr sync``; safe by default.

The server and its clients talk over 127.0.0.1 only: pip reads no config (``PIP_CONFIG_FILE``
is /dev/null) and uv none (``UV_NO_CONFIG``), and both are given the served index alone.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bundle import bundled, unpack  # noqa: F401 - the session fixture
from test_sync import cli_env, envmgr, failed, installed, ok

from envmgr.model import lockfile
from envmgr.venv import install

pytestmark = pytest.mark.timeout(900)


class Served:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}/simple"

    def get(self, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.putrequest(method, path, skip_accept_encoding=True)  # the path exactly as given: no normalising
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, dict(resp.getheaders()), body

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


def serve(cwd: Path, *args: str, **env: str) -> Served:
    proc = subprocess.Popen([sys.executable, "-m", "envmgr", "serve", "--port", "0", *args], cwd=cwd,
                            env=cli_env(cwd, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/simple/", line)
    assert m, line + proc.stderr.read() if proc.poll() is not None else line
    return Served(proc, int(m.group(1)))


@pytest.fixture
def site(bundled: dict, tmp_path: Path) -> Path:  # noqa: F811
    return unpack(bundled["tar"], tmp_path / "site")


@pytest.fixture
def served(site: Path):
    s = serve(site, "--bundle", str(site))
    yield s
    s.stop()


def _requirements(lock) -> str:
    return install.requirements(lock.packages)


def test_pip_and_uv_install_from_it_the_same_files_as_envmgr_sync(site: Path, served: Served, tmp_path: Path) -> None:
    lock = lockfile.read(site / "locks" / "pylock.default.toml")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(_requirements(lock))
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never",
           "PIP_NO_CACHE_DIR": "1"}
    uv = [sys.executable, "-m", "uv"]
    # pip
    subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(tmp_path / "pip-venv")], check=True, env=env)
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(tmp_path / "pip-venv" / "bin" / "python"), "install",
                           "-q", "--index-url", served.url, "--require-hashes", "-r", str(reqs)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # uv pip sync of the lock's requirements, with a cold cache
    subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(tmp_path / "uv-venv")], check=True, env=env)
    proc = subprocess.run([*uv, "pip", "sync", "-q", "--python", str(tmp_path / "uv-venv" / "bin" / "python"),
                           "--index-url", served.url, "--require-hashes", "--cache-dir", str(tmp_path / "uv-cache"),
                           str(reqs)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # envmgr sync, from the bundle
    ok(envmgr(site, "sync", "--bundle", str(site), "--frozen"))
    want = installed(site / ".envmgr" / "venvs" / "default")
    assert want == lock.pins
    assert installed(tmp_path / "pip-venv") == want
    assert installed(tmp_path / "uv-venv") == want
    log = served.stop()
    fetched = set(re.findall(r'"GET /files/([0-9a-f]{64})/[^ ]+ HTTP', log))
    assert fetched == {p.install_file.sha256 for p in lock.packages}


def test_pages_carry_hashes_metadata_and_both_formats(site: Path, served: Served) -> None:
    lock = lockfile.read(site / "locks" / "pylock.default.toml")
    torch = lock.package("torch").install_file
    code, headers, body = served.get("/simple/torch/", {"Accept": "application/vnd.pypi.simple.v1+json"})
    assert code == 200 and headers["Content-Type"] == "application/vnd.pypi.simple.v1+json"
    page = json.loads(body)
    entry = next(f for f in page["files"] if f["filename"] == torch.filename)
    assert entry["hashes"] == {"sha256": torch.sha256} and entry["size"] == torch.size
    meta_code, _, meta = served.get(f"/simple/torch/{entry['url']}.metadata".replace("/simple/torch/../../", "/"))
    assert meta_code == 200 and hashlib.sha256(meta).hexdigest() == entry["core-metadata"]["sha256"]
    assert meta.startswith(b"Metadata-Version")
    code, headers, body = served.get("/simple/torch/", {"Accept": "text/html"})
    assert code == 200 and f"#sha256={torch.sha256}".encode() in body and b"data-core-metadata=" in body
    code, _, body = served.get("/simple/")
    assert code == 200 and b'href="torch/"' in body
    assert served.get("/simple/Fixture_App/")[0] == 301  # names are normalised


@pytest.mark.parametrize("path", ["/files/../bundle.json", "/files/%2e%2e/%2e%2e/bundle.json", "/simple/../locks/",
                                  "/../../etc/passwd", "/bundle.json", "/locks/pylock.default.toml", "/files/",
                                  "/files/sha256/", "/profiles/default.toml", "/tool/requirements.txt", "/",
                                  "/files/..%2fbundle.json/x"])
def test_it_serves_nothing_outside_the_index(served: Served, path: str) -> None:
    code, _, body = served.get(path)
    assert code in (400, 404), (path, code, body[:200])
    assert b"format" not in body and b"root:" not in body


def test_it_is_read_only(served: Served) -> None:
    for method in ("POST", "PUT", "DELETE"):
        code, headers, _ = served.get("/simple/", method=method)
        assert code == 405 and headers["Allow"] == "GET, HEAD"


def test_a_token_is_required_when_given_and_for_other_binds(site: Path) -> None:
    err = failed(envmgr(site, "serve", "--bundle", str(site), "--bind", "0.0.0.0", "--port", "0"))
    assert "--token" in err
    s = serve(site, "--bundle", str(site), "--token", "s3cret")
    try:
        assert s.get("/simple/")[0] == 401
        assert s.get("/simple/", {"Authorization": "Bearer nope"})[0] == 401
        assert s.get("/simple/", {"Authorization": "Bearer s3cret"})[0] == 200
        basic = base64.b64encode(b"anyone:s3cret").decode()
        assert s.get("/simple/", {"Authorization": f"Basic {basic}"})[0] == 200
    finally:
        s.stop()


def test_bad_input_is_one_line_exit_2(site: Path, bundled: dict, tmp_path: Path) -> None:  # noqa: F811
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = failed(envmgr(site, "serve", "--bundle", str(site), "--port", str(port)))
        assert f"port {port}" in err and "in use" in err
    assert "not a bundle" in failed(envmgr(site, "serve", "--bundle", str(tmp_path)))
    assert "unpack it first" in failed(envmgr(site, "serve", "--bundle", str(bundled["tar"])))
    assert "contradict" in failed(envmgr(site, "serve", "--cache", "--bundle", str(site)))


def test_serve_cache_lists_what_a_sync_fetched(site: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ok(envmgr(site, "sync", "--bundle", str(site), "--frozen", ENVMGR_CACHE_DIR=str(cache)))
    s = serve(site, "--cache", ENVMGR_CACHE_DIR=str(cache))
    try:
        code, _, body = s.get("/simple/", {"Accept": "application/vnd.pypi.simple.v1+json"})
        names = {p["name"] for p in json.loads(body)["projects"]}
        assert code == 200 and names == set(lockfile.read(site / "locks" / "pylock.default.toml").pins)
        time.sleep(0)  # the index answers from its table: nothing else of the cache is reachable
        assert s.get("/url-hashes/")[0] == 404
    finally:
        s.stop()


def test_a_rendered_page_reads_back_as_the_files_it_lists() -> None:
    """The one PEP 503 page writer (serve and the lock's routing index) against the parser."""
    from envmgr.net.indexclient import IndexFile, parse_html, render_html

    page = "http://127.0.0.1:1/simple/a-b/"
    files = [IndexFile("a_b-1.0-py3-none-any.whl", page + "../../files/x/a_b-1.0-py3-none-any.whl", "ab" * 32, None,
                       ">=3.9,<4", "sha256=" + "cd" * 32),
             IndexFile("a_b-1.0.tar.gz", "http://files.example/a&b/a_b-1.0.tar.gz", None, None)]
    assert parse_html(render_html("a-b", files), page) == files
