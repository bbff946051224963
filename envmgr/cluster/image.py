"""An image reference pinned by digest: what every node of a cluster pulls must be the same
bytes, so a tag is resolved to its manifest digest through the registry, once, here.

Input: ``HOST[:PORT]/REPO[:TAG][@sha256:...]`` (a name without a host uses
``ENVMGR_DEFAULT_REGISTRY``, as everywhere in envmgr). Output: ``HOST/REPO@sha256:...`` (the
tag is dropped: a pinned reference names one manifest). Anything else -- a local path, an
``oci:`` layout, a malformed name, a tag the registry does not have or cannot be asked about --
is exit 2 before anything is written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..core.errors import EnvmgrError, UserError
from ..oci import image as im
from ..oci import remote

ACCEPT = ", ".join((im.OCI_INDEX, im.DOCKER_LIST, im.OCI_MANIFEST, im.DOCKER_MANIFEST))


@dataclass(frozen=True)
class Pinned:
    host: str
    repo: str
    digest: str
    given: str  # the reference as the user wrote it
    resolved: bool  # the digest came from the registry (a tag was given)

    def __str__(self) -> str:
        return f"{self.host}/{self.repo}@{self.digest}"

    @property
    def enroot(self) -> str:
        """The same image as pyxis/enroot name it: ``HOST#REPO@DIGEST``."""
        return f"{self.host}#{self.repo}@{self.digest}"


def parse(text: str) -> remote.Ref:
    """A registry reference, or exit 2 naming what is wrong with it."""
    given = (text or "").strip()
    if not given:
        raise UserError("--image: empty image reference")
    if given.startswith(("oci:", "oci-archive:", "docker-archive:", "/", "./", "../")) or "://" in given:
        raise UserError(f"--image {given}: not a registry reference",
                        hint="clusters pull from a registry: push the image first (envmgr export-image --push HOST/NAME:TAG)")
    if any(c.isspace() for c in given):
        raise UserError(f"--image {given!r}: not an image reference (whitespace)")
    try:
        return remote.parse_ref(given)
    except UserError as exc:
        raise UserError(f"--image: not an image reference: {exc.message}", hint=exc.hint) from None


def pin(text: str, *, resolve=None) -> Pinned:
    """``text`` pinned by digest; a tag-only reference is resolved through the registry
    (``resolve(ref) -> digest``, default: ask the registry)."""
    ref = parse(text)
    if ref.digest:
        return Pinned(ref.host, ref.repo, ref.digest, text, False)
    digest = (resolve or resolve_tag)(ref)
    return Pinned(ref.host, ref.repo, digest, text, True)


def resolve_tag(ref: remote.Ref) -> str:
    """The digest of the manifest (or index, for a multi-platform image) ``ref``'s tag names:
    the bytes the registry serves, hashed here, so a registry's header is not taken on trust."""
    reg = remote.Registry.for_host(ref.host)
    try:
        resp = reg.request("GET", f"/v2/{ref.repo}/manifests/{ref.tag}", scope=f"repository:{ref.repo}:pull",
                           headers={"Accept": ACCEPT}, what=f"{ref.repo}:{ref.tag}")
    except EnvmgrError as exc:
        raise UserError(f"--image {ref}: cannot resolve the tag to a digest: {exc.message}",
                        hint="make the registry reachable, or pass the reference by digest (NAME@sha256:...)") from None
    digest = "sha256:" + hashlib.sha256(resp.content).hexdigest()
    echoed = resp.headers.get("Docker-Content-Digest", "")
    if echoed and echoed != digest:
        raise UserError(f"--image {ref}: the registry says {echoed} but served a manifest hashing to {digest}")
    return digest
