"""Immutable image values: ``Layer`` and ``Image``; functions return new images.

An ``Image`` is its config (canonical JSON bytes), its layers base-first and the manifest's
annotations. Every blob it names lies on local disk (``Layer.path``), so sinks (layout, tar,
registry) only copy files. The bytes written are the bytes hashed: manifests and configs are
canonical JSON (sorted keys, compact, UTF-8).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
# Docker layer types map onto OCI ones with the same bytes (so the same digests).
_TO_OCI_LAYER = {DOCKER_LAYER_GZIP: OCI_LAYER_GZIP, DOCKER_LAYER_TAR: OCI_LAYER_TAR}
SUPPORTED_LAYERS = (OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD)


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_layer_type(media_type: str) -> str:
    return _TO_OCI_LAYER.get(media_type, media_type)


def epoch_iso(epoch: int) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Layer:
    digest: str  # sha256 of the blob as stored
    diff_id: str  # sha256 of the uncompressed tar
    size: int
    media_type: str
    path: Path  # the blob on local disk
    created_by: str = ""  # history entry
    title: str = ""  # what the layer holds, for --json and progress
    uncompressed_size: int = 0
    cached: bool = False

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class _Manifested:
    """What an image and an image index share: a manifest (canonical JSON of ``media_type`` and
    ``_fields()``, with the ``annotations``), its digest, and the descriptor naming it."""

    media_type = OCI_MANIFEST
    annotations: tuple[tuple[str, str], ...]

    def manifest(self) -> bytes:
        m = {"schemaVersion": 2, "mediaType": self.media_type, **self._fields()}  # type: ignore[attr-defined]
        if self.annotations:
            m["annotations"] = dict(self.annotations)
        return canonical_json(m)

    def digest(self) -> str:
        return sha256_digest(self.manifest())

    def manifest_descriptor(self, annotations: dict | None = None) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest(), "size": len(self.manifest()),
             **self._platform()}  # type: ignore[attr-defined]
        if annotations:
            d["annotations"] = dict(sorted(annotations.items()))
        return d


@dataclass(frozen=True)
class Image(_Manifested):
    config: bytes  # canonical JSON
    layers: tuple[Layer, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    # -- derived ---------------------------------------------------------------------------
    @property
    def config_json(self) -> dict:
        return json.loads(self.config)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    def config_descriptor(self) -> dict:
        return {"mediaType": OCI_CONFIG, "digest": self.config_digest, "size": len(self.config)}

    def _fields(self) -> dict:
        return {"config": self.config_descriptor(), "layers": [layer.descriptor() for layer in self.layers]}

    def _platform(self) -> dict:
        cfg = self.config_json
        if not (cfg.get("architecture") and cfg.get("os")):
            return {}
        p = {"architecture": cfg["architecture"], "os": cfg["os"]}
        if cfg.get("variant"):
            p["variant"] = cfg["variant"]
        return {"platform": p}

    @property
    def platform(self) -> str:
        cfg = self.config_json
        return f"{cfg.get('os', '?')}/{cfg.get('architecture', '?')}" + (f"/{cfg['variant']}" if cfg.get("variant") else "")

    def blobs(self) -> list[tuple[str, int, Path | bytes]]:
        """Every blob (digest, size, path or bytes): layers, then config."""
        out: list[tuple[str, int, Path | bytes]] = [(layer.digest, layer.size, layer.path) for layer in self.layers]
        out.append((self.config_digest, len(self.config), self.config))
        return out


@dataclass(frozen=True)
class ImageIndex(_Manifested):
    """An OCI image index: one image a platform (their order is the index's), one reference.

    Its manifest lists each image's manifest descriptor with ``platform: {os, architecture}``;
    canonical JSON, so the same images give the same index digest."""

    images: tuple[Image, ...]
    annotations: tuple[tuple[str, str], ...] = ()

    media_type = OCI_INDEX

    def _fields(self) -> dict:
        return {"manifests": [i.manifest_descriptor() for i in self.images]}

    def _platform(self) -> dict:
        return {}

    def blobs(self) -> list[tuple[str, int, Path | bytes]]:
        """Every blob below the index, once: each image's layers and config, then its manifest."""
        out: dict[str, tuple[str, int, Path | bytes]] = {}
        for i in self.images:
            for digest, size, src in (*i.blobs(), (i.digest(), len(i.manifest()), i.manifest())):
                out.setdefault(digest, (digest, size, src))
        return list(out.values())

    def image_for(self, platform: str) -> Image | None:
        """The image for ``linux/amd64`` (an OCI platform name), None if the index has none."""
        return next((i for i in self.images if i.platform == platform), None)

    def shared_layers(self) -> int:
        """How many layer digests more than one of the images carries (stored once by a registry)."""
        from collections import Counter

        counts = Counter(d for i in self.images for d in {layer.digest for layer in i.layers})
        return sum(1 for n in counts.values() if n > 1)


# -- constructors and transforms ---------------------------------------------------------------

def from_parts(config: dict | bytes, layers) -> Image:
    """An image from a base's config and layers (Docker media types mapped to OCI)."""
    cfg = json.loads(config) if isinstance(config, (bytes, str)) else config
    layers = tuple(replace(layer, media_type=oci_layer_type(layer.media_type)) for layer in layers)
    return Image(config=canonical_json(cfg), layers=layers)


def append_layers(image: Image, layers, *, created: str) -> Image:
    """A new image with ``layers`` on top; config's diff_ids and history follow."""
    cfg = image.config_json
    rootfs = cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs.setdefault("type", "layers")
    rootfs.setdefault("diff_ids", [])
    history = cfg.setdefault("history", [])
    for layer in layers:
        rootfs["diff_ids"].append(layer.diff_id)
        history.append({"created": created, "created_by": layer.created_by or "envmgr", "comment": layer.title})
    return replace(image, config=canonical_json(cfg), layers=(*image.layers, *layers))


def with_config(image: Image, *, created: str, env: dict | None = None, user: str | None = None,
                workdir: str | None = None, entrypoint: list | None = None, cmd: list | None = None,
                labels: dict | None = None, exposed_ports=(), volumes=()) -> Image:
    """A new image with the runtime config changed. ``env`` entries replace same-named ones;
    ``exposed_ports`` ("8888/tcp") and ``volumes`` add to the base's."""
    cfg = image.config_json
    c = cfg.setdefault("config", {})
    if env:
        kept = [e for e in c.get("Env") or [] if e.split("=", 1)[0] not in env]
        c["Env"] = kept + [f"{k}={v}" for k, v in env.items()]
    if user is not None:
        c["User"] = user
    if workdir is not None:
        c["WorkingDir"] = workdir
    if entrypoint is not None:
        c["Entrypoint"] = list(entrypoint)
        if cmd is None:
            c.pop("Cmd", None)  # as Docker does: a new entrypoint resets the base's cmd
    if cmd is not None:
        c["Cmd"] = list(cmd)
    if labels:
        c["Labels"] = {**(c.get("Labels") or {}), **labels}
    for key, added in (("ExposedPorts", exposed_ports), ("Volumes", volumes)):
        if added:
            c[key] = {**(c.get(key) or {}), **{str(a): {} for a in added}}
    cfg["created"] = created
    # Drop fields that name the builder's host or a container: not reproducible, not needed.
    for key in ("container", "container_config", "docker_version", "id", "parent"):
        cfg.pop(key, None)
    return replace(image, config=canonical_json(cfg))


def with_annotations(image: Image, annotations: dict) -> Image:
    merged = {**dict(image.annotations), **annotations}
    return replace(image, annotations=tuple(sorted(merged.items())))
