"""Sinks and the layout reader: OCI layout directories and the one tar for Docker and OCI tools.

``write_dir`` writes ``oci-layout``, ``index.json`` and ``blobs/sha256/*``. ``write_tar``
streams the same layout into one tar, plus a Docker ``manifest.json`` and ``repositories``:
what Docker 25+ ``docker save`` writes, so ``docker load``, ``podman load`` and OCI tools
(``skopeo``, ``oci-archive:``) all read it. Both write to a temp sibling and rename, so a
failure (disk full included) leaves no half-written output. ``read_dir`` reads a layout
back into an ``Image`` (used for ``oci:DIR[:TAG]`` bases and round-trip tests); ``pick_manifest``
is its choice of image in a layout, also used by ``gpu.imagelock`` on layouts read in place.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence, Union

from ..core.errors import UserError
from ..core.files import atomic_path
from . import image as im
from .layers import Entry, with_parents
from .layers import write_tar as _write_tar

LAYOUT = im.canonical_json({"imageLayoutVersion": "1.0.0"})


def _blob_rel(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def split_name(name: str) -> tuple[str, str]:
    """``repo:tag`` -> (repo, tag); a digest or no tag gives tag ''."""
    if "@" in name:
        return name.split("@", 1)[0], ""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:]
    return name, ""


Names = Union[str, Sequence[str], None]


def names_of(name: Names) -> list[str]:
    """One name, several (an image's tags: the digest tag, then the human one) or none."""
    return [name] if isinstance(name, str) else [n for n in name or () if n]


Artifact = im.Image | im.ImageIndex  # what a layout or tar holds: one image, or an index of them


def index_json(image: Artifact, name: Names) -> bytes:
    """One descriptor a name (the same manifest or image index under each tag); one without a
    name if none."""
    descs = []
    for n in names_of(name) or [None]:
        ann = {"io.containerd.image.name": n, "org.opencontainers.image.ref.name": split_name(n)[1] or n} if n else {}
        descs.append(image.manifest_descriptor(ann))
    return im.canonical_json({"schemaVersion": 2, "mediaType": im.OCI_INDEX, "manifests": descs})


def host_platform() -> str:
    """This machine's platform in OCI words (``linux/amd64``): the image of an index that an
    engine here loads."""
    from ..model.platforms import host, oci_platform

    return oci_platform(host())


def docker_image(image: Artifact) -> im.Image | None:
    """The image Docker's ``manifest.json`` names: the image itself, or an index's image for this
    machine (``docker load`` takes one platform); None when the index has none for it."""
    return image if isinstance(image, im.Image) else image.image_for(host_platform())


def docker_manifest(image: im.Image, name: Names) -> bytes:
    return im.canonical_json([{
        "Config": _blob_rel(image.config_digest),
        "RepoTags": [n for n in names_of(name) if split_name(n)[1]],
        "Layers": [_blob_rel(layer.digest) for layer in image.layers],
    }])


def repositories(image: im.Image, name: Names) -> bytes:
    repos: dict = {}
    for n in names_of(name):
        repo, tag = split_name(n)
        if tag:
            repos.setdefault(repo, {})[tag] = image.config_digest.split(":", 1)[1]
    return im.canonical_json(repos)


def _out_of_space(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


@contextmanager
def _atomic(dest: Path, *, directory: bool):
    """Yield a temp sibling of ``dest``; rename it over ``dest`` on success, remove it on failure.
    A file goes through ``core.files.atomic_path`` (fsynced); an error writing either is one line,
    a full disk named as such."""
    dest = dest.absolute()
    parent = dest.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {dest}: {parent} is not a directory")
    if directory and dest.exists() and not (dest.is_dir() and ((dest / "oci-layout").is_file() or not any(dest.iterdir()))):
        raise UserError(f"{dest} exists and is not an OCI layout", hint="pick another --output or remove it")
    if not directory and dest.is_dir():
        raise UserError(f"{dest} is a directory", hint="name a .tar file, or a directory without .tar")
    try:
        with _atomic_dir(dest) if directory else atomic_path(dest) as tmp:
            yield tmp
    except OSError as exc:
        if _out_of_space(exc):
            raise UserError(f"no space left writing {dest}: nothing was written", hint="free space or pick another --output")
        raise UserError(f"cannot write {dest}: {exc.strerror or exc}")


@contextmanager
def _atomic_dir(dest: Path):
    """A directory's ``atomic_path``: the old one is moved aside, the new one renamed in."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / "x")
        os.replace(tmp, dest)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _place_blob(src: Path | bytes, dest: Path) -> None:
    if isinstance(src, bytes):
        dest.write_bytes(src)
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def write_dir(image: Artifact, dest: Path, *, name: Names = None) -> Path:
    with _atomic(dest, directory=True) as tmp:
        blobs = tmp / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        seen = set()
        for digest, _, src in image.blobs():
            if digest not in seen:
                seen.add(digest)
                _place_blob(src, blobs / digest.split(":", 1)[1])
        (blobs / image.digest().split(":", 1)[1]).write_bytes(image.manifest())
        (tmp / "oci-layout").write_bytes(LAYOUT)
        (tmp / "index.json").write_bytes(index_json(image, name))
        for p in (tmp, tmp / "blobs", blobs):
            os.chmod(p, 0o755)
    return dest


def tar_entries(image: Artifact, name: Names) -> list[Entry]:
    entries = {
        "oci-layout": Entry("oci-layout", data=LAYOUT),
        "index.json": Entry("index.json", data=index_json(image, name)),
        _blob_rel(image.digest()): Entry(_blob_rel(image.digest()), data=image.manifest()),
    }
    docker = docker_image(image)
    if docker is not None:
        entries["manifest.json"] = Entry("manifest.json", data=docker_manifest(docker, name))
        entries["repositories"] = Entry("repositories", data=repositories(docker, name))
    for digest, _, src in image.blobs():
        rel = _blob_rel(digest)
        entries[rel] = Entry(rel, data=src) if isinstance(src, bytes) else Entry(rel, src=src)
    return with_parents(entries.values())


class _FileSink:
    def __init__(self, fh) -> None:
        self.fh = fh

    def write(self, b) -> None:
        self.fh.write(b)


def write_tar(image: Artifact, dest: Path, *, name: Names = None, mtime: int = 0) -> Path:
    with _atomic(dest, directory=False) as tmp, open(tmp, "wb") as fh:
        _write_tar(tar_entries(image, name), _FileSink(fh), mtime=mtime)
    return dest


# -- reading --------------------------------------------------------------------------------

def pick_platform(index: dict, os_: str, arch: str, where: str) -> dict:
    """The manifest descriptor for os/arch in an image index; a clear error if it has none."""
    found = []
    for d in index.get("manifests", []):
        p = d.get("platform") or {}
        found.append(f"{p.get('os', '?')}/{p.get('architecture', '?')}")
        if p.get("os") == os_ and p.get("architecture") == arch and d.get("mediaType", im.OCI_MANIFEST) in im.MANIFEST_TYPES:
            return d
    have = ", ".join(sorted(set(found))) or "none"
    raise UserError(f"{where} has no {os_}/{arch} image (it has: {have})", hint="pick a base built for the lock's platform")


def pick_manifest(index: dict, tag: str | None, *, os_: str, arch: str, where: str, load) -> dict:
    """The descriptor of the image manifest a layout's ``index.json`` names: the one tagged
    ``tag``, else the only one, else the one for os/arch; nested indexes are read through
    ``load(digest) -> dict``."""
    manifests = index.get("manifests", [])
    if tag:
        manifests = [d for d in manifests if tag in ((d.get("annotations") or {}).get("org.opencontainers.image.ref.name"),
                                                     (d.get("annotations") or {}).get("io.containerd.image.name"))]
        if not manifests:
            raise UserError(f"{where}: no image tagged {tag!r}")
    if not manifests:
        raise UserError(f"{where}: the layout holds no image")
    if len({d.get("digest") for d in manifests}) == 1:
        manifests = manifests[:1]  # one image under several tags
    if len(manifests) > 1:
        if all((d.get("platform") or {}).get("architecture") for d in manifests):
            desc = pick_platform({"manifests": manifests}, os_, arch, where)
        else:
            names = ", ".join(sorted(str((d.get("annotations") or {}).get("org.opencontainers.image.ref.name")) for d in manifests))
            raise UserError(f"{where}: holds {len(manifests)} images; name one as oci:DIR:TAG (tags: {names})")
    else:
        desc = manifests[0]
    while desc.get("mediaType") in im.INDEX_TYPES:
        desc = pick_platform(load(desc["digest"]), os_, arch, where)
    return desc


def read_dir(root: Path, tag: str | None, *, os_: str, arch: str, where: str | None = None) -> tuple[im.Image, str]:
    """(image, manifest digest) from an OCI layout directory; the only image, or the tagged one."""
    where = where or f"oci:{root}"
    try:
        index = json.loads((root / "index.json").read_bytes())
    except FileNotFoundError:
        raise UserError(f"{where}: not an OCI layout (no index.json)")
    except ValueError as exc:
        raise UserError(f"{where}: index.json is not JSON: {exc}")

    def blob(digest: str) -> Path:
        p = root / _blob_rel(digest)
        if not p.is_file():
            raise UserError(f"{where}: blob {digest} is missing")
        return p

    desc = pick_manifest(index, tag, os_=os_, arch=arch, where=where, load=lambda d: json.loads(blob(d).read_bytes()))
    manifest_bytes = blob(desc["digest"]).read_bytes()
    return manifest_to_image(manifest_bytes, blob, where), im.sha256_digest(manifest_bytes)


def manifest_to_image(manifest_bytes: bytes, blob, where: str) -> im.Image:
    """An ``Image`` from a manifest whose blobs ``blob(digest) -> Path`` finds locally."""
    try:
        manifest = json.loads(manifest_bytes)
        config = json.loads(blob(manifest["config"]["digest"]).read_bytes())
        diff_ids = config["rootfs"]["diff_ids"]
        descs = manifest["layers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{where}: malformed manifest or config ({exc})")
    if len(diff_ids) != len(descs):
        raise UserError(f"{where}: config has {len(diff_ids)} diff_ids for {len(descs)} layers")
    layers = []
    for d, diff_id in zip(descs, diff_ids):
        mt = im.oci_layer_type(d.get("mediaType", im.OCI_LAYER_GZIP))
        if mt not in im.SUPPORTED_LAYERS:
            raise UserError(f"{where}: layer {d['digest']} has unsupported media type {mt}")
        layers.append(im.Layer(digest=d["digest"], diff_id=diff_id, size=int(d["size"]), media_type=mt,
                               path=blob(d["digest"]), title="base"))
    return im.from_parts(config, layers)
