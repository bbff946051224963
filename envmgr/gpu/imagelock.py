"""The lock an ``envmgr export-image`` image carries: ``<venv>/pylock.toml`` plus ``io.envmgr.*`` labels.

``envmgr check --image REF`` without a profile name compares the image with this lock.

How it is found, cheapest first (no container is started for it where avoidable):

* ``oci:DIR[:TAG]`` / ``oci-archive:FILE[:TAG]``: read straight from the layout -- the config's
  labels, then the layers top-down for the file (an archive is read in place, never unpacked).
* anything else: the engine's image metadata (``podman image inspect``, docker SDK
  ``images.get``) for the labels -- no container (podman pulls an image not in its store
  first, as the probe run would); only when they name a lock is the file read,
  by podman with the image's own interpreter (one short ``podman run``) or by the docker SDK
  from a created, never started, container (``get_archive``).

An image "has an embedded lock" when its labels carry ``io.envmgr.lock.digest`` (envmgr sets it;
derived images inherit it) and the file is there. What is not found is
a note, never an error; a lock that is there but does not parse is a one-line error (exit 2).
"""

from __future__ import annotations

import io
import json
import platform
import posixpath
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..core.errors import EnvmgrError, UserError
from ..oci.assemble import LABEL
from ..oci.layerfs import clean, find_in_layers
from ..oci.layout import pick_manifest
from ..oci.plan import DEFAULT_VENV
from ..oci.sources import split_tag

LOCK_NAME = "pylock.toml"
READ_TIMEOUT = 120.0
# Run with the image's python: print the file's bytes, exit 3 when it is not there.
READER = ("import sys\ntry:\n    data = open(sys.argv[1], 'rb').read()\nexcept FileNotFoundError:\n    sys.exit(3)\n"
          "sys.stdout.buffer.write(data)\n")


@dataclass(frozen=True)
class Found:
    """What the image told: its ``io.envmgr.*`` labels (None: unknown) and the lock's text."""
    labels: dict | None
    path: str  # where the lock is (or would be) inside the image
    text: str | None = None
    notes: tuple[str, ...] = field(default=())


def venv_of(image_python: str | None, labels: dict | None) -> str:
    """The image's venv: its ``io.envmgr.venv`` label, else the interpreter's ``VENV/bin/python``."""
    if labels and labels.get(f"{LABEL}venv"):
        return "/" + labels[f"{LABEL}venv"].strip("/")
    if image_python:
        p = PurePosixPath(image_python)
        if p.parent.name == "bin" and p.name.startswith("python") and str(p.parent.parent) not in ("/", "/usr", "/usr/local"):
            return str(p.parent.parent)
    return DEFAULT_VENV


def lock_path(venv: str) -> str:
    return posixpath.join(venv, LOCK_NAME)


def envmgr_labels(labels: dict | None) -> dict | None:
    return None if labels is None else {k: v for k, v in labels.items() if k.startswith(LABEL)}


# -- OCI layouts: a directory or an archive, read in place -----------------------------------

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(":") if text else type(exc).__name__


class _Layout:
    """Blobs of an OCI layout, from a directory or a tar archive, by relative path."""

    def __init__(self, ref: str):
        self.ref = ref
        self.tar: tarfile.TarFile | None = None
        kind, rest = ref.split(":", 1)
        path, self.tag = split_tag(rest)
        self.root = Path(path).expanduser()
        if kind == "oci":
            if not self.root.is_dir():
                raise UserError(f"--image {ref}: {self.root} is not a directory", hint="oci:DIR[:TAG] names an OCI layout directory")
            return
        if not self.root.is_file():
            raise UserError(f"--image {ref}: {self.root} does not exist")
        try:
            self.tar = tarfile.open(self.root, "r:*")
            self.members = {clean(m.name): m for m in self.tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(f"--image {ref}: not a readable archive: {_first_line(exc)}")

    def open(self, rel: str):
        if self.tar is None:
            try:
                return open(self.root / rel, "rb")
            except FileNotFoundError:
                raise UserError(f"--image {self.ref}: {rel} is missing from the layout")
        m = self.members.get(rel)
        if m is None:
            raise UserError(f"--image {self.ref}: {rel} is missing from the archive")
        return self.tar.extractfile(m)

    def json(self, rel: str):
        with self.open(rel) as f:
            try:
                return json.loads(f.read())
            except ValueError as exc:
                raise UserError(f"--image {self.ref}: {rel} is not JSON: {_first_line(exc)}")

    def blob(self, digest: str) -> str:
        algo, _, hexd = str(digest).partition(":")
        return f"blobs/{algo}/{hexd}"

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def _arch() -> str:
    m = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


def _manifest(lay: _Layout) -> dict:
    desc = pick_manifest(lay.json("index.json"), lay.tag, os_="linux", arch=_arch(), where=f"--image {lay.ref}",
                         load=lambda digest: lay.json(lay.blob(digest)))
    return lay.json(lay.blob(desc["digest"]))


def from_layout(ref: str, image_python: str | None) -> Found:
    lay = _Layout(ref)
    try:
        manifest = _manifest(lay)
        try:
            config = lay.json(lay.blob(manifest["config"]["digest"]))
            descs = manifest["layers"]
        except (KeyError, TypeError) as exc:
            raise UserError(f"--image {ref}: malformed manifest ({exc})")
        labels = dict((config.get("config") or {}).get("Labels") or {})
        path = lock_path(venv_of(image_python, labels))
        if f"{LABEL}lock.digest" not in labels:
            return Found(envmgr_labels(labels), path)
        try:
            data = find_in_layers([(d.get("mediaType", ""), (lambda d=d: lay.open(lay.blob(d["digest"])))) for d in descs], path)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(f"--image {ref}: cannot read its layers: {_first_line(exc)}")
        return Found(envmgr_labels(labels), path, _text(data, ref, path))
    finally:
        lay.close()


def _text(data: bytes | None, ref: str, path: str) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--image {ref}: {path} is not UTF-8 text")


# -- engines -------------------------------------------------------------------------------------

def podman_labels(ref: str, podman: str) -> dict | None:
    """The image's labels from podman's store; None when it is not there (not pulled, a transport)."""
    try:
        r = subprocess.run([podman, "image", "inspect", "--format", "{{json .Config.Labels}}", ref],
                           capture_output=True, text=True, timeout=READ_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    try:
        return dict(json.loads(r.stdout.strip() or "null") or {})
    except (ValueError, TypeError):
        return None


def podman_read(ref: str, python: str, path: str, podman: str) -> bytes | None:
    """The file's bytes, read by the image's python in one short container; None if it is not
    there or the container does not run (the probe run then reports why)."""
    argv = [podman, "run", "--rm", "--entrypoint", python, ref, "-c", READER, path]
    try:
        r = subprocess.run(argv, capture_output=True, timeout=READ_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def from_podman(ref: str, image_python: str | None) -> Found:
    podman = shutil.which("podman") or "podman"
    labels = podman_labels(ref, podman)
    if labels is None:  # not in the store: pull it now (the probe run would), once, and read that
        try:
            r = subprocess.run([podman, "pull", "-q", ref], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(f"--image {ref}: podman could not run the image: {_first_line(exc)}")
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or [""])[-1]
            raise UserError(f"--image {ref}: podman could not run the image: {last}")
        ref = (r.stdout.strip().splitlines() or [ref])[-1]
        labels = podman_labels(ref, podman)
    path = lock_path(venv_of(image_python, labels))
    if labels is not None and f"{LABEL}lock.digest" not in labels:
        return Found(envmgr_labels(labels), path)
    python = image_python or posixpath.join(venv_of(None, labels), "bin", "python")
    return Found(envmgr_labels(labels), path, _text(podman_read(ref, python, path, podman), ref, path))


def from_docker(ref: str, image_python: str | None) -> Found:
    try:
        import docker
    except ImportError:
        return Found(None, lock_path(venv_of(image_python, None)))  # the probe run says what is missing
    try:
        client = docker.from_env()
        labels = dict(client.images.get(ref).labels or {})
    except Exception:  # not there / no daemon: the probe run reports it
        return Found(None, lock_path(venv_of(image_python, None)))
    path = lock_path(venv_of(image_python, labels))
    if f"{LABEL}lock.digest" not in labels:
        return Found(envmgr_labels(labels), path)
    data = None
    try:
        container = client.containers.create(ref, entrypoint=["/bin/true"])
        try:
            stream, _ = container.get_archive(path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tf:
                member = next((m for m in tf.getmembers() if m.isfile()), None)
                data = tf.extractfile(member).read() if member else None
        finally:
            container.remove(force=True)
    except docker.errors.NotFound:
        data = None
    except docker.errors.DockerException as exc:
        return Found(envmgr_labels(labels), path, None, (f"could not read {path} from the image: {_first_line(exc)[:200]}",))
    return Found(envmgr_labels(labels), path, _text(data, ref, path))


def read(ref: str, *, engine: str, image_python: str | None) -> Found:
    """The image's labels and embedded lock text, by the cheapest way the ref allows."""
    if ref.startswith(("oci:", "oci-archive:")):
        return from_layout(ref, image_python)
    if engine == "podman":
        return from_podman(ref, image_python)
    return from_docker(ref, image_python)


def expectations(ref: str, *, engine: str, image_python: str | None) -> tuple[dict, str | None, list[str], dict | None]:
    """(expectations, expect_source, notes, labels) from the image's embedded lock; empty
    expectations and a note saying why when it has none. A lock that does not parse: exit 2."""
    from ..model import lockfile
    from .expect import expectations_from_lock

    found = read(ref, engine=engine, image_python=image_python)
    notes = list(found.notes)
    if found.text is None:
        why = ("no io.envmgr.lock.digest label (not exported by envmgr)" if found.labels is not None
               and f"{LABEL}lock.digest" not in found.labels else f"no {found.path} in it")
        notes.append(f"image {ref} has no embedded lock ({why}): nothing to compare against; "
                     f"name a profile to check it against that profile's lock")
        return {}, None, notes, found.labels
    where = f"image {ref}:{found.path}"
    try:
        lock = lockfile.loads(found.text, where)
    except EnvmgrError as exc:
        raise UserError(f"--image {ref}: its embedded lock {found.path} is unreadable: {exc.message}",
                        hint="re-export the image, or name a profile to check against")
    label = (found.labels or {}).get(f"{LABEL}lock.digest")
    if label and label != lock.digest():
        notes.append(f"the embedded lock {found.path} is {lock.digest()[:19]}, the image's label says {label[:19]}")
    return expectations_from_lock(lock.for_host()), f"image lock {found.path}", notes, found.labels
