"""Pushes over a bad network and credentials as docker and podman find them, with real
components: docker-registry (htpasswd auth) behind a small proxy on 127.0.0.1 that resets a
connection mid-upload, skopeo reading what was pushed, and a real ``docker-credential-*``
helper on PATH speaking the helper protocol."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import image_fixtures as fx
import pytest
from loopback import CountingReporter

from envmgr.core.errors import UserError
from envmgr.net import http, registryauth
from envmgr.net.registryauth import RegistryCreds
from envmgr.oci import image as im
from envmgr.oci import layers as ly
from envmgr.oci import remote

SECRET = "helper-S3cret-9f2c71"  # the registry password only the credential helper knows
pytestmark = pytest.mark.timeout(600)


# -- a proxy that drops one upload mid-body -------------------------------------------------------

class UploadProxy:
    """An HTTP/1.1 proxy in front of ``upstream``, buffering each request as nginx does.

    The ``cut``-th request with a body (PATCH or PUT, counted from 1) is read half-way, then
    the client's connection is reset (SO_LINGER 0). With ``forward_partial`` the half that came
    is first sent on to the registry and its connection dropped too, as a plain TCP proxy would.
    :attr:`log` holds (method, path, body bytes forwarded); :attr:`forwarded` sums the blobs'."""

    def __init__(self, upstream: int, cut: int | None = None, forward_partial: bool = False,
                 always: bool = False) -> None:
        self.upstream, self.cut, self.forward_partial, self.always = upstream, cut, forward_partial, always
        self.log: list[tuple[str, str, int]] = []
        self.statuses: list[tuple[str, str, int]] = []
        self.uploads = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def forwarded(self) -> int:
        return sum(n for m, path, n in self.log if m in ("PATCH", "PUT") and "/blobs/uploads/" in path)

    def close(self) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        up = socket.create_connection(("127.0.0.1", self.upstream))
        cf, uf = client.makefile("rb"), up.makefile("rb")
        try:
            while True:
                head = _head(cf)
                if head is None:
                    return
                method, path = head.split(b" ", 2)[:2]
                length = int(_header(head, b"content-length") or 0)
                cut = False
                if length:
                    with self.lock:
                        self.uploads += 1
                        cut = self.always or self.uploads == self.cut
                if cut:
                    part = cf.read(length // 2)
                    if self.forward_partial:  # the registry gets half, then its connection closes
                        up.sendall(head + part)
                        up.close()
                        time.sleep(0.3)
                        self.log.append((method.decode(), path.decode(), len(part)))
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                body = cf.read(length)
                up.sendall(head + body)
                self.log.append((method.decode(), path.decode(), len(body)))
                rhead = _head(uf)
                if rhead is None:
                    return
                client.sendall(rhead)
                status = int(rhead.split(b" ", 2)[1])
                self.statuses.append((method.decode(), path.decode(), status))
                if method != b"HEAD" and status not in (204, 304) and status >= 200:
                    client.sendall(uf.read(int(_header(rhead, b"content-length") or 0)))
        except OSError:
            pass
        finally:
            client.close()
            up.close()


def _head(f) -> bytes | None:
    lines = []
    while True:
        line = f.readline()
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _header(head: bytes, name: bytes) -> bytes | None:
    m = re.search(rb"\r\n" + name + rb":\s*([^\r\n]*)", head, re.IGNORECASE)
    return m.group(1).strip() if m else None


# -- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture
def registry(tmp_path):
    reg = fx.Registry(tmp_path / "registry", password=SECRET)
    yield reg
    reg.stop()


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(http, "BACKOFF", 0.01)


def big_image(tmp_path: Path, size: int) -> im.Image:
    """Two layers: /etc/passwd, and ``size`` random bytes (a gzip layer of about that size)."""
    store = ly.BlobStore(tmp_path / "blobs")
    layers = []
    for title, entries in [("base", [ly.Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")]),
                           ("big", [ly.Entry("opt/big.bin", data=hashlib.shake_256(b"big").digest(size))])]:
        b = ly.build_layer(ly.with_parents(entries), store, mtime=0)
        layers.append(im.Layer(digest=b.digest, diff_id=b.diff_id, size=b.size, media_type=b.media_type, path=b.path,
                               title=title))
    cfg = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]}}
    return im.Image(config=im.canonical_json(cfg), layers=tuple(layers))


def skopeo_digest(registry, ref: str) -> str:
    fx.need("skopeo")
    proc = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", f"{registry.user}:{registry.password}",
                           f"docker://{ref}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["Digest"]


# -- chunked uploads, resumed ---------------------------------------------------------------------

def push_through(proxy: UploadProxy, image: im.Image, name: str, monkeypatch) -> tuple[remote.PushResult, CountingReporter]:
    monkeypatch.setenv("ENVMGR_REGISTRY_USERNAME", "tester")
    monkeypatch.setenv("ENVMGR_REGISTRY_PASSWORD", SECRET)
    monkeypatch.setattr(remote, "CHUNKED_OVER", 1 << 20)
    monkeypatch.setattr(remote, "UPLOAD_CHUNK", 512 << 10)
    rep = CountingReporter()
    return remote.push(image, remote.parse_ref(f"{proxy.host}/envmgr/{name}"), reporter=rep), rep


def test_chunked_push_resumes_from_the_registrys_offset(registry, tmp_path, quick, monkeypatch):
    image = big_image(tmp_path, 3_000_000)
    big = image.layers[1]
    proxy = UploadProxy(registry.port, cut=4)  # base PUT, config PUT, then the big layer's 2nd PATCH (any order)
    try:
        t0 = time.monotonic()
        result, rep = push_through(proxy, image, "big:1", monkeypatch)
        took = time.monotonic() - t0
    finally:
        proxy.close()
    assert sorted(result.uploaded) == sorted(d for d, _, _ in image.blobs())
    patches = [(p, n) for m, p, n in proxy.log if m == "PATCH"]
    chunks = -(-big.size // (512 << 10))
    statuses = [p for m, p, _ in proxy.log if m == "GET" and "/blobs/uploads/" in p]
    assert len(statuses) == 1 and len(patches) == chunks, proxy.log
    # every byte of the big layer reached the registry once: resumed, not restarted
    assert sum(n for _, n in patches) == big.size
    assert proxy.forwarded == sum(s for _, s, _ in image.blobs())
    assert rep.advanced == rep.total  # progress: every byte once, across the break
    assert skopeo_digest(registry, f"{registry.host}/envmgr/big:1") == result.digest
    print(f"chunked push: {big.size} byte layer in {len(patches)} PATCHes of {512 << 10}, "
          f"{len(statuses)} offset query, {proxy.forwarded} body bytes forwarded for "
          f"{sum(s for _, s, _ in image.blobs())}, {took:.2f} s")


def test_a_registry_that_drops_the_session_gets_a_new_one(registry, tmp_path, quick, monkeypatch):
    """distribution 2.x cancels an upload whose chunk broke off half-written: the push starts
    that blob again in a new session, and still completes."""
    image = big_image(tmp_path, 2_000_000)
    cuts = []
    for blob_order in range(3, 6):  # some request with a body is a PATCH of the big layer
        proxy = UploadProxy(registry.port, cut=blob_order, forward_partial=True)
        try:
            result, rep = push_through(proxy, image, f"drop{blob_order}:1", monkeypatch)
        finally:
            proxy.close()
        assert skopeo_digest(registry, f"{registry.host}/envmgr/drop{blob_order}:1") == result.digest
        assert rep.advanced == rep.total
        queried = [st for m, path, st in proxy.statuses if m == "GET" and "/blobs/uploads/" in path]
        cuts.append((blob_order, queried, sum(m == "POST" for m, _, _ in proxy.log)))
    print("dropped sessions (cut, offset queries, POSTs):", cuts)
    # where the cut hit a half-written PATCH, the registry refused to resume (400) and a new session
    # (a 4th POST for 3 blobs) carried the layer
    assert any(q and q[0] != 204 and posts == 4 for _, q, posts in cuts), cuts


def test_small_blob_put_broken_once_is_sent_again(registry, tmp_path, quick, monkeypatch):
    image = big_image(tmp_path, 100_000)
    proxy = UploadProxy(registry.port, cut=1)
    try:
        result, rep = push_through(proxy, image, "small:1", monkeypatch)
    finally:
        proxy.close()
    assert not [m for m, _, _ in proxy.log if m == "PATCH"]
    assert skopeo_digest(registry, f"{registry.host}/envmgr/small:1") == result.digest
    assert rep.advanced == rep.total


def test_broken_uploads_are_bounded(registry, tmp_path, quick, monkeypatch):
    image = big_image(tmp_path, 10_000)

    proxy = UploadProxy(registry.port, always=True)
    monkeypatch.setenv("ENVMGR_HTTP_RETRIES", "1")
    try:
        with pytest.raises(http.NetworkError) as err:
            push_through(proxy, image, "never:1", monkeypatch)
    finally:
        proxy.close()
    assert re.fullmatch(r"cannot reach registry 127\.0\.0\.1:\d+ for upload of sha256:[0-9a-f]{64}: ConnectionError "
                        r"\(check the address and that the registry runs\)", str(err.value))


# -- credentials ----------------------------------------------------------------------------------

HELPER = """#!/bin/sh
# docker-credential-envmgrtest: the credential-helper protocol, for one registry
read host
echo "$1 $host" >> "{log}"
[ "$1" = get ] || exit 1
case "$host" in
  {host}) printf '{{"ServerURL": "%s", "Username": "tester", "Secret": "{secret}"}}\\n' "$host" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


@pytest.fixture
def helper_env(tmp_path, registry):
    """A PATH with docker-credential-envmgrtest, a DOCKER_CONFIG naming it, a clean HOME."""
    bin_dir, cfg, home = tmp_path / "bin", tmp_path / "docker", tmp_path / "home"
    for d in (bin_dir, cfg, home):
        d.mkdir()
    log = tmp_path / "helper.log"
    script = bin_dir / "docker-credential-envmgrtest"
    script.write_text(HELPER.format(log=log, host=registry.host, secret=SECRET))
    script.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "DOCKER_CONFIG": str(cfg), "HOME": str(home),
           "XDG_RUNTIME_DIR": str(tmp_path / "run"), "REGISTRY_AUTH_FILE": ""}
    return env, cfg / "config.json", log, script


@pytest.fixture
def tiny_project(tmp_path, fixture_index):
    from test_image import _tiny_base

    base = _tiny_base(tmp_path / "base", tmp_path / "base-cache", python=True)
    return fx.write_project(tmp_path / "proj", fx.make_lock(fixture_index), image={"base": f"oci:{base}"})


def files_holding(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]


@pytest.mark.parametrize("config", ["credHelpers", "credsStore"])
def test_a_credential_helper_supplies_the_password_for_a_push(config, registry, tiny_project, helper_env, tmp_path):
    env, config_json, log, _ = helper_env
    config_json.write_text(json.dumps({"credHelpers": {registry.host: "envmgrtest"}} if config == "credHelpers"
                                      else {"credsStore": "envmgrtest", "auths": {}}))
    cache = tmp_path / "cache"
    ref = f"{registry.host}/envmgr/helper:{config.lower()}"
    proc = fx.envmgr("export-image", "imgtest", "--push", ref, "--json", cwd=tiny_project,
                     env={**env, "ENVMGR_CACHE_DIR": str(cache), "ENVMGR_NO_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().splitlines()[0] == f"get {registry.host}"
    digest = json.loads(proc.stdout)["digest"]
    assert skopeo_digest(registry, ref) == digest
    # the secret: in no output, in no file envmgr wrote (project, cache, HOME)
    assert SECRET not in proc.stdout + proc.stderr
    for root in (tiny_project, cache, Path(env["HOME"]), Path(os.environ["TMPDIR"])):
        assert files_holding(root, SECRET.encode()) == [], root
    assert files_holding(tmp_path, SECRET.encode()) == [tmp_path / "bin" / "docker-credential-envmgrtest"]


def one_line_failure(proc, *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    return lines[0]


def test_a_helper_that_fails_is_one_line(registry, tiny_project, helper_env, tmp_path):
    env, config_json, _, script = helper_env
    script.write_text("#!/bin/sh\necho 'keychain is locked' >&2\nexit 1\n")
    config_json.write_text(json.dumps({"credHelpers": {registry.host: "envmgrtest"}}))
    proc = fx.envmgr("export-image", "imgtest", "--push", f"{registry.host}/envmgr/x:1", cwd=tiny_project,
                     env={**env, "ENVMGR_CACHE_DIR": str(tmp_path / "cache")})
    one_line_failure(proc, "credential helper docker-credential-envmgrtest failed for", "(exit 1): keychain is locked",
                     str(config_json))
    # a helper that is not there
    config_json.write_text(json.dumps({"credsStore": "nosuchhelper"}))
    proc = fx.envmgr("export-image", "imgtest", "--push", f"{registry.host}/envmgr/x:1", cwd=tiny_project,
                     env={**env, "ENVMGR_CACHE_DIR": str(tmp_path / "cache")})
    one_line_failure(proc, "docker-credential-nosuchhelper, which is not on PATH")


def test_a_config_json_that_is_not_json_is_one_line(registry, tiny_project, helper_env, tmp_path):
    env, config_json, _, _ = helper_env
    config_json.write_text('{"auths": {"%s": {"auth": "dGVzdGVy' % registry.host)
    proc = fx.envmgr("export-image", "imgtest", "--push", f"{registry.host}/envmgr/x:1", cwd=tiny_project,
                     env={**env, "ENVMGR_CACHE_DIR": str(tmp_path / "cache")})
    one_line_failure(proc, f"{config_json}: not valid JSON")


# -- the lookup order, in-process -------------------------------------------------------------------

def test_lookup_order_and_formats(helper_env, monkeypatch, tmp_path, registry):
    env, config_json, log, _ = helper_env
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    host = registry.host
    basic = base64.b64encode(b"fileuser:filepass").decode()
    podman = tmp_path / "run" / "containers" / "auth.json"
    podman.parent.mkdir(parents=True)
    podman.write_text(json.dumps({"auths": {f"https://{host}/v1/": {"auth": base64.b64encode(b"pod:man").decode()}}}))
    assert registryauth.lookup(host) == RegistryCreds("pod", "man", source=f"{podman} (auths)")
    config_json.write_text(json.dumps({"auths": {host: {"auth": basic}}}))
    assert registryauth.lookup(host).basic == ("fileuser", "filepass")  # docker's file before podman's
    config_json.write_text(json.dumps({"auths": {host: {"identitytoken": "refresh-me"}}}))
    found = registryauth.lookup(host)
    assert found.identity_token == "refresh-me" and found.basic is None and "refresh-me" not in repr(found)
    config_json.write_text(json.dumps({"credsStore": "envmgrtest", "auths": {host: {"auth": basic}}}))
    assert registryauth.lookup(host).basic == ("tester", SECRET)  # the helper before auths
    assert registryauth.lookup("other.example:5000") is None  # helper: "not found"; no auths there
    assert SECRET not in repr(registryauth.lookup(host))
    monkeypatch.setenv("ENVMGR_REGISTRY_USERNAME", "envuser")
    monkeypatch.setenv("ENVMGR_REGISTRY_PASSWORD", "envpass")
    n = len(log.read_text().splitlines())
    assert registryauth.lookup(host).basic == ("envuser", "envpass")
    assert len(log.read_text().splitlines()) == n  # explicit settings: no helper runs
    monkeypatch.delenv("ENVMGR_REGISTRY_USERNAME")
    auth_file = tmp_path / "auth.json"
    auth_file.write_text(json.dumps({"auths": {host: {"auth": "not base64!"}}}))
    config_json.write_text("{}")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    with pytest.raises(UserError, match=r"auth\.json: auths\['127\.0\.0\.1:\d+'\]\.auth is not base64 of user:password"):
        registryauth.lookup(host)


def test_identity_token_is_exchanged_for_a_bearer_token():
    """A helper's ``<token>`` answer: an OAuth2 refresh-token grant at the realm, then Bearer."""
    seen: list[tuple[str, str, dict, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: bytes, headers: dict) -> None:
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            seen.append(("GET", self.path, {}, self.headers.get("Authorization")))
            if self.headers.get("Authorization") == "Bearer access-1":
                return self._reply(200, b"{}", {"Content-Type": "application/json"})
            realm = f"http://{self.headers['Host']}/token"
            self._reply(401, b"", {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'})

        def do_POST(self) -> None:  # noqa: N802
            form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            seen.append(("POST", self.path, form, self.headers.get("Authorization")))
            ok = form.get("grant_type") == ["refresh_token"] and form.get("refresh_token") == ["refresh-me"]
            self._reply(200 if ok else 401, json.dumps({"access_token": "access-1"}).encode(),
                        {"Content-Type": "application/json"})

        def log_message(self, *args) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        reg = remote.Registry(f"127.0.0.1:{srv.server_address[1]}", RegistryCreds(identity_token="refresh-me"))
        assert reg.request("GET", "/v2/", scope="repository:a/b:pull").status_code == 200
    finally:
        srv.shutdown()
        srv.server_close()
    assert [s[:2] for s in seen] == [("GET", "/v2/"), ("POST", "/token"), ("GET", "/v2/")]
    form = seen[1][2]
    assert form["service"] == ["reg"] and form["scope"] == ["repository:a/b:pull"] and seen[1][3] is None
