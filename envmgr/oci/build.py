"""Engine builds: ``Containerfile.in`` filled from the lock, built through the docker SDK.

The build context holds the rendered ``Containerfile``, a ``wheelhouse/`` with every locked
file (from the verified fetch cache, hard-linked), a ``--require-hashes`` requirements file and
the uv binary, plus the lock and its SBOM: the build needs no network and installs the same
packages, with the same hashes, as the native builder. The native builder stays the default.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..core import settings
from ..core.errors import EnvmgrError, UserError
from ..model import lockfile
from .assemble import labels
from .export import Result
from .plan import DEFAULT_USER, Options, default_tag, image_venv, markers, profile_image

TEMPLATE = Path(__file__).resolve().parents[2] / "Containerfile.in"


def template_text(project: Path) -> str:
    for p in (project / "Containerfile.in", TEMPLATE):
        if p.is_file():
            return p.read_text()
    raise UserError("no Containerfile.in in the project", hint="copy it from envmgr's repository")


def _base_for_engine(ref: str, engine: str) -> str:
    if ref.startswith(("oci:", "oci-archive:", "docker-archive:")):
        if engine != "podman":
            raise UserError(f"docker cannot build FROM {ref}", hint="use a registry base or --builder podman")
        kind, _, rest = ref.partition(":")
        return f"{kind}:{Path(rest).expanduser().absolute()}" if not Path(rest).is_absolute() else ref
    return ref


def render(template: str, lock: lockfile.Lock, conf: dict, *, base: str, python: str) -> str:
    venv = image_venv(conf)
    user = conf.get("user", DEFAULT_USER)
    image_labels = sorted(labels(lock, conf, engine=True).items())
    label_lines = "LABEL " + " \\\n      ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in image_labels)
    root = user in ("root", "0")
    return template.format(
        base=base, python=python, venv=venv, lock_digest=lock.digest(),
        useradd="true" if root else f"useradd --create-home --uid 1000 --user-group {user}",
        path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        labels=label_lines, user="0:0" if root else "1000:1000",
        workdir=conf.get("workdir") or ("/root" if root else f"/home/{user}"),
    )


def context(project: Path, opts: Options, dest: Path, *, engine: str) -> tuple[Path, lockfile.Lock, str]:
    """Write the build context into ``dest``; returns (dest, lock, tag)."""
    from ..net import fetch
    from ..report import sbom
    from ..venv.install import requirements, wanted
    from ..venv.uvtool import uv_bin

    lock = lockfile.read(lockfile.lock_path(project, opts.name))
    conf = profile_image(project, opts.name)
    base_ref = opts.base or conf.get("base")
    if not base_ref:
        raise UserError(f"no base image for profile {opts.name!r}", hint="set [image] base or pass --base")
    python = conf.get("python") or f"python{lock.meta.python}"
    packages = wanted(lock, markers("linux-x86_64", lock.meta.python))  # as the engine's build has always assumed
    files = fetch.fetch([(p.key, p.install_file) for p in packages])
    house = dest / "wheelhouse"
    house.mkdir(parents=True)
    for p in packages:
        src = files[p.install_file.sha256]
        try:
            os.link(src, house / src.name)
        except OSError:
            shutil.copyfile(src, house / src.name)
    (house / "requirements.txt").write_text(requirements(packages))
    shutil.copy2(uv_bin(), house / "uv")
    (dest / "pylock.toml").write_text(lock.dumps())
    (dest / "sbom.cdx.json").write_text(sbom.cyclonedx_json(lock))
    text = render(template_text(project), lock, conf, base=_base_for_engine(base_ref, engine), python=python)
    (dest / "Containerfile").write_text(text)
    return dest, lock, opts.tag or conf.get("tag") or default_tag(lock)


def build(project: Path, opts: Options, *, engine: str, log=None, nocache: bool = False) -> Result:
    """Render and build through the docker SDK; the image lands in that engine's storage."""
    from . import engine as eng

    if opts.push or opts.output:
        raise UserError("--builder docker|podman builds into the engine only", hint="drop --output/--push, or use the native builder")
    started = time.monotonic()
    client = eng.client()
    res = Result()
    cache = settings.cache_dir() / "oci"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as tmp:
        ctx, lock, tag = context(project, opts, Path(tmp), engine=engine)
        res.seconds["context"] = round(time.monotonic() - started, 3)
        try:
            stream = client.api.build(path=str(ctx), dockerfile="Containerfile", tag=tag, rm=True, forcerm=True,
                                      decode=True, pull=False, nocache=nocache)
            image_id = ""
            for chunk in stream:
                if "error" in chunk:
                    raise EnvmgrError(f"{engine} build failed: {chunk['error'].strip()}")
                line = chunk.get("stream", "").rstrip()
                if line and log:
                    log(line)
                if "aux" in chunk and isinstance(chunk["aux"], dict):
                    image_id = chunk["aux"].get("ID", image_id)
        except EnvmgrError:
            raise
        except Exception as exc:
            raise EnvmgrError(f"{engine} build failed: {exc}")
    img = client.images.get(tag)
    res.digest, res.tag = img.id, tag
    res.base = opts.base or ""
    res.outputs = {"engine": os.environ.get("DOCKER_HOST", "default"), "id": image_id or img.id,
                   "size": img.attrs.get("Size", 0)}
    res.seconds["total"] = round(time.monotonic() - started, 3)
    return res
