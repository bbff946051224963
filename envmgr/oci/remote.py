"""A registry client over the OCI distribution API: pull and push, no daemon.

Auth: on a 401 the ``WWW-Authenticate`` challenge is followed, Bearer (a token from the realm:
with basic credentials when there are any, or an OAuth2 refresh-token grant for an identity
token) or Basic. Credentials are looked up on the first challenge, as docker and podman find
them (``net.registryauth``: envmgr's variables, then credential helpers and the ``auths`` of
docker's config.json and podman's auth.json). Registries on localhost/127.0.0.1 (and those in
``ENVMGR_INSECURE_REGISTRIES``) are spoken to over plain HTTP. A reference without a registry
host uses ``ENVMGR_DEFAULT_REGISTRY``.

Push, per blob: ``HEAD`` (skip when present), a cross-repository mount for blobs the base
came with, else an upload (:func:`_upload`: one streamed ``PUT``, or ``PATCH`` chunks for a
blob over :data:`CHUNKED_OVER`, resumed from the offset the registry reports after a broken
connection); then the manifest, whose digest the registry must echo. Pulled blobs are
verified against their digest before they enter the blob store (a pull that breaks off is
resumed by ``net.http.body``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urljoin

from ..core.errors import NetworkError, UserError
from ..net import http, registryauth
from ..net.fetch import NullReporter
from ..net.registryauth import RegistryCreds
from . import image as im
from .layers import BlobStore
from .layout import manifest_to_image, pick_platform

if TYPE_CHECKING:
    import requests

CHUNK = http.CHUNK
AUTH_HINT = "docker login / podman login, or set ENVMGR_REGISTRY_USERNAME and ENVMGR_REGISTRY_PASSWORD"
ACCEPT = ", ".join((im.OCI_INDEX, im.DOCKER_LIST, im.OCI_MANIFEST, im.DOCKER_MANIFEST))


@dataclass(frozen=True)
class Ref:
    host: str
    repo: str
    tag: str = ""
    digest: str = ""

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = f"{self.host}/{self.repo}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def parse_ref(text: str) -> Ref:
    """``[HOST[:PORT]/]REPO[:TAG][@sha256:...]``."""
    rest, digest = (text.split("@", 1) + [""])[:2]
    if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise UserError(f"{text!r}: bad digest {digest!r}")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        host, path = first, remainder
    else:
        host = os.environ.get("ENVMGR_DEFAULT_REGISTRY", "")
        if not host:
            raise UserError(f"image reference {text!r} names no registry host",
                            hint="write HOST/NAME:TAG, use oci:DIR or docker-archive:FILE, or set ENVMGR_DEFAULT_REGISTRY")
        path = rest if "/" in rest else f"library/{rest}"
    tag = ""
    if ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise UserError(f"{text!r}: bad tag {tag!r}")
    if not _REPO.match(path):
        raise UserError(f"{text!r}: bad repository name {path!r}", hint="lowercase letters, digits, '.', '_', '-', '/'")
    if not tag and not digest:
        raise UserError(f"{text!r} has no tag or digest", hint="name a tag explicitly (envmgr never assumes 'latest')")
    return Ref(host=host, repo=path, tag=tag, digest=digest)


# -- the client -------------------------------------------------------------------------------

def _insecure(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    extra = [h.strip() for h in os.environ.get("ENVMGR_INSECURE_REGISTRIES", "").split(",") if h.strip()]
    return name in ("localhost", "[::1]") or name.startswith("127.") or host in extra or name in extra


_UNSET = object()


@dataclass
class Registry:
    host: str
    _creds: object = field(default=_UNSET, repr=False)  # RegistryCreds | None, looked up on the first challenge
    _auth: dict = field(default_factory=dict, repr=False)  # scope -> Authorization header value

    @classmethod
    def for_host(cls, host: str) -> "Registry":
        return cls(host=host)

    @property
    def creds(self) -> RegistryCreds | None:
        """The host's credentials (``net.registryauth``): only looked for when a registry asks,
        so an anonymous pull runs no credential helper."""
        if self._creds is _UNSET:
            self._creds = registryauth.lookup(self.host)
        return self._creds  # type: ignore[return-value]

    @property
    def base(self) -> str:
        return f"{'http' if _insecure(self.host) else 'https'}://{self.host}"

    @property
    def server(self) -> http.Server:
        return http.Server(f"registry {self.host}", reach_hint="check the address and that the registry runs",
                           auth_hint=AUTH_HINT)

    def _authorize(self, challenge: str, scope: str) -> str:
        scheme, _, params = challenge.partition(" ")
        creds = self.creds
        if scheme.lower() == "basic":
            if not creds or not creds.basic:
                raise NetworkError(f"registry {self.host}: HTTP 401, " + (
                    f"a user name and password required ({creds.source} has an identity token)" if creds
                    else "credentials required"), hint=AUTH_HINT)
            return "Basic " + base64.b64encode(":".join(creds.basic).encode()).decode()
        if scheme.lower() != "bearer":
            raise NetworkError(f"registry {self.host}: unsupported auth scheme {scheme!r}")
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', params))
        if "realm" not in attrs:
            raise NetworkError(f"registry {self.host}: Bearer challenge without realm")
        query = [("service", attrs["service"])] if "service" in attrs else []
        query += [("scope", s) for s in scope.split(" ") if s]
        if creds and creds.identity_token:  # OAuth2 refresh-token grant, as docker does
            form = query + [("grant_type", "refresh_token"), ("refresh_token", creds.identity_token),
                            ("client_id", "envmgr")]
            resp = http.request("POST", attrs["realm"], data=form, timeout=http.timeouts(long=True),
                                server=self.server, what="a token")
        else:
            resp = http.get(attrs["realm"] + ("&" if "?" in attrs["realm"] else "?") + urlencode(query),
                            creds.basic if creds else None, timeout=http.timeouts(long=True), server=self.server,
                            what="a token")
        data = resp.json()
        token = data.get("token") or data.get("access_token")
        if not token:
            raise NetworkError(f"registry {self.host}: token response without a token")
        return f"Bearer {token}"

    def request(self, method: str, path: str, *, scope: str, headers: dict | None = None, body=None,
                stream: bool = False, ok=(200,), what: str = "") -> requests.Response:
        """``body`` is bytes or a callable returning a fresh file object (retried after auth)."""
        url = path if path.startswith("http") else self.base + path
        for attempt in range(2):
            h = dict(headers or {})
            if scope in self._auth:
                h["Authorization"] = self._auth[scope]
            data = body() if callable(body) else body
            try:
                resp = http.request(method, url, headers=h, data=data, stream=stream, timeout=http.timeouts(long=True),
                                    ok=http.ANY, server=self.server, what=what or path)
            finally:
                if hasattr(data, "close"):
                    data.close()
            if resp.status_code == 401 and attempt == 0 and "WWW-Authenticate" in resp.headers:
                self._auth[scope] = self._authorize(resp.headers["WWW-Authenticate"], scope)
                continue
            break
        return http.check(resp, ok, server=self.server, what=what or path)


# -- pull -------------------------------------------------------------------------------------

def _download(reg: Registry, ref: Ref, digest: str, size: int, store: BlobStore, scope: str, reporter) -> Path:
    if store.has(digest, size):
        reporter.advance(size)
        return store.path(digest)
    what = f"blob {digest}"
    resp = reg.request("GET", f"/v2/{ref.repo}/blobs/{digest}", scope=scope, stream=True, what=what)
    fh, tmp = store.temp()
    h = hashlib.sha256()
    try:
        with fh, resp:
            for chunk in http.body(resp, server=reg.server, what=what):
                fh.write(chunk)
                h.update(chunk)
                reporter.advance(len(chunk))
        if "sha256:" + h.hexdigest() != digest:
            raise NetworkError(f"registry {reg.host}: blob {digest} arrived with a different digest")
        return store.commit(tmp, digest)
    finally:
        tmp.unlink(missing_ok=True)


def pull(ref: Ref, *, os_: str, arch: str, store: BlobStore, reporter=None) -> tuple[im.Image, str]:
    """The image ``ref`` for os/arch, its blobs in ``store``; returns (image, manifest digest)."""
    reporter = reporter or NullReporter()
    reg = Registry.for_host(ref.host)
    scope = f"repository:{ref.repo}:pull"
    where = f"base {ref}"
    resp = reg.request("GET", f"/v2/{ref.repo}/manifests/{ref.reference}", scope=scope, headers={"Accept": ACCEPT},
                       what=f"image {ref}")
    body = resp.content
    if ref.digest and im.sha256_digest(body) != ref.digest:
        raise NetworkError(f"registry {reg.host}: {ref} answered with a manifest of another digest")
    mt = json.loads(body).get("mediaType") or resp.headers.get("Content-Type", "").split(";")[0]
    if mt in im.INDEX_TYPES:
        desc = pick_platform(json.loads(body), os_, arch, where)
        resp = reg.request("GET", f"/v2/{ref.repo}/manifests/{desc['digest']}", scope=scope,
                           headers={"Accept": ACCEPT}, what=f"image {ref} ({os_}/{arch})")
        body = resp.content
        if im.sha256_digest(body) != desc["digest"]:
            raise NetworkError(f"registry {reg.host}: manifest {desc['digest']} arrived with a different digest")
    manifest = json.loads(body)
    blobs = [(manifest["config"]["digest"], int(manifest["config"]["size"]))]
    blobs += [(d["digest"], int(d["size"])) for d in manifest.get("layers", [])]
    reporter.start(sum(s for _, s in blobs), f"pulling {ref}")
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda b: _download(reg, ref, b[0], b[1], store, scope, reporter), blobs))
    finally:
        reporter.finish()
    return manifest_to_image(body, store.path, where), im.sha256_digest(body)


# -- push -------------------------------------------------------------------------------------

@dataclass
class PushResult:
    digest: str
    ref: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)


def _with_query(location: str, base: str, **params) -> str:
    url = urljoin(base + "/", location)
    return url + ("&" if "?" in url else "?") + urlencode(params)


def push(image: im.Image, ref: Ref, *, mount_from: Ref | None = None, reporter=None) -> PushResult:
    reporter = reporter or NullReporter()
    reg = Registry.for_host(ref.host)
    scope = f"repository:{ref.repo}:pull,push"
    if mount_from and mount_from.host == ref.host and mount_from.repo != ref.repo:
        scope += f" repository:{mount_from.repo}:pull"
    else:
        mount_from = None
    result = PushResult(digest=image.digest(), ref=str(ref))
    base_digests = {layer.digest for layer in image.layers if layer.title == "base"}
    lock = threading.Lock()

    def one(blob) -> None:
        digest, size, src = blob
        head = reg.request("HEAD", f"/v2/{ref.repo}/blobs/{digest}", scope=scope, ok=(200, 404), what=f"blob {digest}")
        if head.status_code == 200:
            with lock:
                result.skipped.append(digest)
            reporter.advance(size)
            return
        if mount_from and digest in base_digests:
            resp = reg.request("POST", f"/v2/{ref.repo}/blobs/uploads/?" + urlencode({"mount": digest, "from": mount_from.repo}),
                               scope=scope, ok=(201, 202), what=f"mount of {digest}")
            if resp.status_code == 201:
                with lock:
                    result.mounted.append(digest)
                reporter.advance(size)
                return
            location = resp.headers["Location"]
        else:
            location = None
        _upload(reg, ref.repo, scope, digest, size, src, location, _Progress(reporter))
        with lock:
            result.uploaded.append(digest)

    blobs = image.blobs()
    reporter.start(sum(s for _, s, _ in blobs), f"pushing {ref}")
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(one, blobs))
    finally:
        reporter.finish()
    _put_manifest(reg, ref, image, scope)
    return result


def _put_manifest(reg: Registry, ref: Ref, image, scope: str) -> None:
    """PUT ``image``'s manifest (an image's or an index's) under ``ref``'s tag, else its digest;
    the registry must echo the digest."""
    resp = reg.request("PUT", f"/v2/{ref.repo}/manifests/{ref.tag or ref.digest}", scope=scope, body=image.manifest(),
                       headers={"Content-Type": image.media_type}, ok=(201, 200), what=f"manifest {ref}")
    echoed = resp.headers.get("Docker-Content-Digest")
    if echoed and echoed != image.digest():
        raise NetworkError(f"registry {reg.host} stored the manifest as {echoed}, expected {image.digest()}")


def push_index(index: im.ImageIndex, ref: Ref, *, mount_from: Ref | None = None, reporter=None) -> PushResult:
    """Each image of ``index`` by its digest (a blob two images share goes up once: the second
    finds it there), then the index under ``ref``."""
    result = PushResult(digest=index.digest(), ref=str(ref))
    for image in index.images:
        one = push(image, Ref(host=ref.host, repo=ref.repo, digest=image.digest()), mount_from=mount_from, reporter=reporter)
        result.uploaded += one.uploaded
        result.skipped += one.skipped
        result.mounted += one.mounted
    _put_manifest(Registry.for_host(ref.host), ref, index, f"repository:{ref.repo}:pull,push")
    return result


# -- uploads ----------------------------------------------------------------------------------

CHUNKED_OVER = 64 << 20  # a blob larger than this is uploaded in chunks
UPLOAD_CHUNK = 64 << 20  # bytes a PATCH


class _Progress:
    """A blob's progress: a byte sent again after a break is not counted again."""

    def __init__(self, reporter) -> None:
        self.reporter = reporter
        self.counted = 0

    def at(self, offset: int) -> None:
        if offset > self.counted:
            self.reporter.advance(offset - self.counted)
            self.counted = offset


class _Reading:
    """``length`` bytes of a file from ``start``, as a body requests streams (and reports)."""

    def __init__(self, path: Path, start: int, length: int, progress: _Progress) -> None:
        self.fh = open(path, "rb")
        self.fh.seek(start)
        self.pos, self.left, self.progress = start, length, progress

    def __len__(self) -> int:
        return self.left

    def read(self, n: int = -1) -> bytes:
        b = self.fh.read(min(self.left, CHUNK if n is None or n < 0 else n))
        self.left -= len(b)
        self.pos += len(b)
        self.progress.at(self.pos)
        return b

    def close(self) -> None:
        self.fh.close()


def _upload(reg: Registry, repo: str, scope: str, digest: str, size: int, src, location: str | None,
            progress: _Progress) -> None:
    """One blob into an upload session (``location``, or a new one).

    Up to :data:`CHUNKED_OVER` bytes: one ``PUT ?digest=``; on a broken connection, a new session
    and the ``PUT`` again. Larger: ``PATCH`` chunks with ``Content-Range``, then an empty
    ``PUT ?digest=``; on a broken connection the registry is asked how far it got (``GET`` on
    the session: ``Range: 0-N``) and the upload goes on from there; a registry that dropped
    the session (distribution 2.x does when a chunk broke off half-written) gets a new one.
    Tries are bounded as every HTTP use's are (``http.Tries``).
    """
    what = f"upload of {digest}"
    tries = http.Tries()
    chunked = isinstance(src, Path) and size > CHUNKED_OVER
    offset = mark = 0
    while True:
        try:
            if location is None:
                resp = reg.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, ok=(202,), what="blob upload")
                location, offset = resp.headers["Location"], 0
            while chunked and offset < size:
                n = min(UPLOAD_CHUNK, size - offset)
                resp = reg.request("PATCH", urljoin(reg.base + "/", location), scope=scope, ok=(202,), what=what,
                                   body=lambda start=offset, n=n: _Reading(src, start, n, progress),
                                   headers={"Content-Type": "application/octet-stream",
                                            "Content-Range": f"{offset}-{offset + n - 1}"})
                location, offset = resp.headers["Location"], _uploaded(resp, offset + n)
            if chunked:
                body = b""
            elif isinstance(src, Path):
                body = lambda: _Reading(src, 0, size, progress)  # noqa: E731
            else:
                body = src
            reg.request("PUT", _with_query(location, reg.base, digest=digest), scope=scope, body=body, ok=(201, 204),
                        headers={"Content-Type": "application/octet-stream"}, what=what)
            progress.at(size)
            return
        except http.BrokenConnection:
            if not tries.again(progressed=offset > mark):
                raise
            mark = offset
        if chunked and location is not None:
            status = reg.request("GET", urljoin(reg.base + "/", location), scope=scope, ok=(204, 400, 404, 416),
                                 what=what)
            if status.status_code == 204:
                location, offset = status.headers.get("Location", location), _uploaded(status, 0)
                continue
        location = None  # a new session, from the first byte


def _uploaded(resp: "requests.Response", default: int) -> int:
    """How many bytes the registry holds: the end of its ``Range: 0-N`` header, plus one."""
    m = re.fullmatch(r"(?:bytes=)?0-(\d+)", resp.headers.get("Range", "").strip())
    return int(m.group(1)) + 1 if m else default
