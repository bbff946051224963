"""The local container engine through the ``docker`` SDK: ``--load`` and engine builds.

Honours ``DOCKER_HOST`` (podman's Docker-compatible socket from ``podman system service``
counts). An unreachable engine is a one-line error before any work.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..core.errors import EnvmgrError, UserError
from . import image as im
from .layout import names_of, write_tar


def client():
    try:
        import docker
    except ImportError:  # pragma: no cover - a declared dependency
        raise UserError("the docker Python SDK is not installed", hint="pip install docker")
    where = os.environ.get("DOCKER_HOST") or "the default docker socket"
    try:
        c = docker.from_env(timeout=600)
        c.ping()
    except Exception as exc:  # docker.errors.DockerException and requests' errors
        raise UserError(f"cannot reach a container engine at {where}: {type(exc).__name__}",
                        hint="start docker, or run `podman system service --time=0 unix:///tmp/podman.sock` "
                             "and set DOCKER_HOST=unix:///tmp/podman.sock")
    return c


def load(image: im.Image, tags, *, cache: Path, epoch: int = 0, reporter=None) -> dict:
    """Write the image as one tar (streamed to a temp file), named by every one of ``tags``,
    and load it into the engine."""
    names = names_of(tags)
    tag = names[0] if names else ""
    c = client()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="load-", dir=cache) as tmp:
        tar = write_tar(image, Path(tmp) / "image.tar", name=names, mtime=epoch)
        size = tar.stat().st_size
        if reporter:
            reporter.start(size, f"loading into the engine ({tag})")
        try:
            with open(tar, "rb") as fh:
                out = c.api.load_image(fh)
                messages = list(out) if out is not None and not isinstance(out, (bytes, str)) else []
        except Exception as exc:
            raise EnvmgrError(f"the engine refused the image: {exc}")
        finally:
            if reporter:
                reporter.advance(size)
                reporter.finish()
    for m in messages:
        if isinstance(m, dict) and m.get("error"):
            raise EnvmgrError(f"the engine refused the image: {m['error']}")
    return {"tag": tag, "tags": names, "engine": os.environ.get("DOCKER_HOST", "default"), "id": image.config_digest}
