"""Base images: a registry reference, ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``,
``docker-archive:FILE[:NAME]``; and what an export needs to know about one (its python,
its users).

Every source ends as an ``Image`` whose blobs lie on local disk (archives are unpacked once
into the cache, keyed by their sha256; registry blobs are pulled into the blob store) and
the digest of the base's manifest, which the exported image records.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..core.files import write_atomic
from . import image as im
from .layerfs import merged
from .layers import BlobStore, sha256_file
from .layout import read_dir

ARCH_OF_PLATFORM = {"linux-x86_64": "amd64", "linux-aarch64": "arm64"}
PREFIXES = ("oci:", "oci-archive:", "docker-archive:", "docker://")


@dataclass(frozen=True)
class Base:
    image: im.Image
    name: str  # as the user wrote it
    digest: str  # the base manifest's digest


def split_tag(rest: str) -> tuple[str, str | None]:
    """``PATH[:TAG]``: a trailing ``:TAG`` when PATH alone does not exist."""
    if ":" in rest and not Path(rest).exists():
        path, tag = rest.rsplit(":", 1)
        if "/" not in tag:
            return path, tag or None
    return rest, None


def load(ref: str, *, platform: str, cache: Path, reporter=None, log=None) -> Base:
    """The base image ``ref`` for ``platform`` (``linux-x86_64``), blobs on local disk."""
    os_, arch = "linux", ARCH_OF_PLATFORM.get(platform, platform.split("-")[-1])
    if ref.startswith("oci:"):
        path, tag = split_tag(ref[4:])
        root = Path(path).expanduser()
        if not root.is_dir():
            raise UserError(f"base {ref}: {root} is not a directory", hint="oci:DIR[:TAG] names an OCI layout directory")
        image, digest = read_dir(root, tag, os_=os_, arch=arch, where=f"base {ref}")
    elif ref.startswith("oci-archive:"):
        path, tag = split_tag(ref[len("oci-archive:"):])
        root = _unpack(Path(path).expanduser(), cache, ref)
        image, digest = read_dir(root, tag, os_=os_, arch=arch, where=f"base {ref}")
    elif ref.startswith("docker-archive:"):
        path, tag = split_tag(ref[len("docker-archive:"):])
        root = _unpack(Path(path).expanduser(), cache, ref)
        image, digest = _read_docker_archive(root, tag, ref)
    else:
        from . import remote

        name = ref[len("docker://"):] if ref.startswith("docker://") else ref
        image, digest = remote.pull(remote.parse_ref(name), os_=os_, arch=arch, store=BlobStore(cache),
                                    reporter=reporter)
    check_platform(image, os_, arch, ref)
    return Base(image=image, name=ref, digest=digest)


def check_platform(image: im.Image, os_: str, arch: str, ref: str) -> None:
    cfg = image.config_json
    got = f"{cfg.get('os', '?')}/{cfg.get('architecture', '?')}"
    if got != f"{os_}/{arch}":
        raise UserError(f"base {ref} is a {got} image, the lock targets {os_}/{arch}",
                        hint="pick a base built for the lock's platform")


def _unpack(archive: Path, cache: Path, ref: str) -> Path:
    """Unpack an image archive once into ``cache/oci/archives/<sha256>``."""
    if not archive.is_file():
        raise UserError(f"base {ref}: {archive} does not exist")
    digest = sha256_file(archive).split(":", 1)[1]
    dest = cache / "oci" / "archives" / digest
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:*") as tf:
            tf.extractall(tmp, filter="data")
        os.replace(tmp, dest)
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"base {ref}: cannot unpack {archive}: {exc}")
    return dest


def _read_docker_archive(root: Path, tag: str | None, ref: str) -> tuple[im.Image, str]:
    try:
        entries = json.loads((root / "manifest.json").read_bytes())
    except FileNotFoundError:
        if (root / "index.json").is_file():  # an OCI archive named docker-archive: fine
            return read_dir(root, tag, os_="linux", arch="amd64", where=f"base {ref}")
        raise UserError(f"base {ref}: not a docker archive (no manifest.json)")
    except ValueError as exc:
        raise UserError(f"base {ref}: manifest.json is not JSON: {exc}")
    if tag:
        entries = [e for e in entries if any(t == tag or t.endswith("/" + tag) or t.split(":")[-1] == tag
                                             for t in e.get("RepoTags") or [])]
        if not entries:
            raise UserError(f"base {ref}: no image named {tag!r}")
    if len(entries) != 1:
        raise UserError(f"base {ref}: holds {len(entries)} images; name one as docker-archive:FILE:NAME")
    entry = entries[0]
    config_path = root / entry["Config"]
    config_bytes = config_path.read_bytes()
    config = json.loads(config_bytes)
    diff_ids = config.get("rootfs", {}).get("diff_ids", [])
    if len(diff_ids) != len(entry["Layers"]):
        raise UserError(f"base {ref}: config has {len(diff_ids)} diff_ids for {len(entry['Layers'])} layers")
    layers = []
    for rel, diff_id in zip(entry["Layers"], diff_ids):
        p = root / rel
        with open(p, "rb") as fh:
            magic = fh.read(4)
        digest = sha256_file(p)
        if magic[:2] == b"\x1f\x8b":
            mt = im.OCI_LAYER_GZIP
        elif magic == b"\x28\xb5\x2f\xfd":
            mt = im.OCI_LAYER_ZSTD
        else:
            mt = im.OCI_LAYER_TAR
        layers.append(im.Layer(digest=digest, diff_id=diff_id, size=p.stat().st_size, media_type=mt, path=p, title="base"))
    image = im.from_parts(config, layers)
    # An archive has no registry manifest: the digest of the OCI manifest for these blobs.
    manifest = {"schemaVersion": 2, "mediaType": im.OCI_MANIFEST,
                "config": {"mediaType": im.OCI_CONFIG, "digest": im.sha256_digest(config_bytes), "size": len(config_bytes)},
                "layers": [layer.descriptor() for layer in layers]}
    return image, im.sha256_digest(im.canonical_json(manifest))


# -- what is inside the base ---------------------------------------------------------------------

@dataclass(frozen=True)
class BaseFacts:
    python: str  # interpreter path in the image, e.g. /usr/bin/python3.11
    version: str  # MAJOR.MINOR
    passwd: bytes  # /etc/passwd ("" if none)
    group: bytes
    path_env: str  # the base's PATH
    sshd: str = ""  # /usr/sbin/sshd when the base has OpenSSH's server
    ld_library_path: str = ""  # the base's LD_LIBRARY_PATH


_PY_NAME = re.compile(r"python(\d+)\.(\d+)$")
_CANDIDATES = ("usr/local/bin/python3", "usr/bin/python3", "bin/python3", "opt/conda/bin/python3")


def _resolve(fs: dict, path: str) -> str | None:
    """Follow symlinks inside the image's filesystem; the final path, or None."""
    for _ in range(20):
        parts = path.split("/")
        # resolve parent directories that are symlinks (e.g. /bin -> usr/bin)
        for i in range(1, len(parts)):
            head = "/".join(parts[:i])
            kind, link = fs.get(head, ("dir", ""))
            if kind == "symlink":
                target = link.lstrip("/") if link.startswith("/") else posixpath.normpath(posixpath.join(posixpath.dirname(head), link))
                path = posixpath.normpath("/".join([target, *parts[i:]]))
                break
        else:
            kind, link = fs.get(path, (None, ""))
            if kind == "file":
                return path
            if kind != "symlink":
                return None
            path = link.lstrip("/") if link.startswith("/") else posixpath.normpath(posixpath.join(posixpath.dirname(path), link))
            continue
    return None


def inspect(image: im.Image, *, declared: str | None, ref: str, cache: Path) -> BaseFacts:
    """Find the base's python (``declared`` path, else the usual places) and its users."""
    key = cache / "oci" / "base-facts" / (image.digest().split(":", 1)[1] + f"-{declared or ''}".replace("/", "_") + ".json")
    try:
        d = json.loads(key.read_text())
        return BaseFacts(python=d["python"], version=d["version"], passwd=d["passwd"].encode("latin-1"),
                         group=d["group"].encode("latin-1"), path_env=d["path_env"], sshd=d["sshd"],
                         ld_library_path=d["ld_library_path"])
    except (FileNotFoundError, ValueError, KeyError):
        pass
    fs, etc = merged(image, frozenset({"etc/passwd", "etc/group"}), where="base")
    candidates = [declared.lstrip("/")] if declared else list(_CANDIDATES)
    found = None
    for cand in candidates:
        real = _resolve(fs, cand)
        if real and _PY_NAME.search(posixpath.basename(real)):
            found = ("/" + cand, real)
            break
        if real:  # python3 is a file, not a link to python3.X: look for a versioned sibling
            d = posixpath.dirname(cand)
            sibs = sorted(k for k in fs if posixpath.dirname(k) == d and _PY_NAME.search(posixpath.basename(k)))
            if sibs:
                found = ("/" + sibs[-1], sibs[-1])
                break
    if not found:
        what = f"no python at {declared}" if declared else "no python3 in /usr/local/bin, /usr/bin or /bin"
        raise UserError(f"base {ref} has {what}", hint="pick a base with python3, or set [image] python to its path")
    m = _PY_NAME.search(posixpath.basename(found[1]))
    version = f"{m.group(1)}.{m.group(2)}"  # type: ignore[union-attr]
    env = dict(e.split("=", 1) for e in (image.config_json.get("config") or {}).get("Env") or [] if "=" in e)
    path_env = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    sshd = "/usr/sbin/sshd" if _resolve(fs, "usr/sbin/sshd") else ""
    facts = BaseFacts(python="/" + found[1], version=version, passwd=etc.get("etc/passwd", b""),
                      group=etc.get("etc/group", b""), path_env=path_env, sshd=sshd,
                      ld_library_path=env.get("LD_LIBRARY_PATH", ""))
    write_atomic(key, json.dumps({"python": facts.python, "version": version, "passwd": facts.passwd.decode("latin-1"),
                                  "group": facts.group.decode("latin-1"), "path_env": path_env, "sshd": sshd,
                                  "ld_library_path": facts.ld_library_path}),
                 fsync=False)  # a cache: a torn file does not parse and is rebuilt
    return facts
