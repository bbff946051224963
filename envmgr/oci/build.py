"""Engine builds: ``Containerfile.in`` filled from the lock, built through the docker SDK.

The build context holds the rendered ``Containerfile``, a ``wheelhouse/`` with every locked
file (from the verified fetch cache, hard-linked), a ``--require-hashes`` requirements file and
the uv binary, plus the lock and its SBOM and the entrypoint's files (``modes``): the build
needs no network and installs the same packages, with the same hashes, as the native builder,
with the same runtime config. The native builder stays the default.

A local base (``oci:``, ``oci-archive:``, ``docker-archive:``) is not something an engine can
name in ``FROM`` (podman 4.3's API refuses ``oci:...`` as "invalid reference format"): it is
read as the native export reads it, loaded into the engine through the SDK once (as
``localhost/envmgr-base:DIGEST``), and the build starts ``FROM`` that.
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
from . import modes as md
from .assemble import labels
from .export import Result
from .plan import DEFAULT_USER, Options, default_tag, image_venv, markers, profile_image, project_relative, tags_of

TEMPLATE = Path(__file__).resolve().parents[2] / "Containerfile.in"


def template_text(project: Path) -> str:
    for p in (project / "Containerfile.in", TEMPLATE):
        if p.is_file():
            return p.read_text()
    raise UserError("no Containerfile.in in the project", hint="copy it from envmgr's repository")


LOCAL_BASES = ("oci:", "oci-archive:", "docker-archive:")


def local_base(ref: str, *, platform: str, cache: Path, client):
    """A local base read, checked and loaded into the engine: (name to build FROM, its facts)."""
    from . import engine as eng
    from . import sources

    base = sources.load(ref, platform=platform, cache=cache / "oci")
    facts = sources.inspect(base.image, declared=None, ref=ref, cache=cache)
    name = f"localhost/envmgr-base:{base.digest.split(':', 1)[1][:16]}"
    try:
        client.images.get(name)
    except Exception:  # docker.errors.ImageNotFound, or an engine that answers otherwise: load it
        eng.load(base.image, name, cache=cache / "oci")
    return name, facts


def _env_lines(env: dict) -> str:
    return "".join(f"ENV {k}={json.dumps(v)}\n" for k, v in env.items())


def render(template: str, lock: lockfile.Lock, conf: dict, *, base: str, python: str, sshd: str | None = None) -> str:
    """The Containerfile. ``sshd``: the base's sshd ("" none; None not known: checked in the build)."""
    venv = image_venv(conf)
    user = conf.get("user", DEFAULT_USER)
    image_labels = sorted(labels(lock, conf, engine=True).items())
    label_lines = "LABEL " + " \\\n      ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in image_labels)
    root = user in ("root", "0")
    modes = md.modes_of(conf)
    run = md.config(modes, python=f"{venv}/bin/python", lock=lock, conf=conf)
    checks = "true"
    if "ssh" in modes:
        if sshd is not None:
            md.check_base(modes, sshd, base)
        checks = f"test -x {md.SSHD} || {{ echo 'the ssh mode needs sshd in the base: add openssh-server'; exit 1; }}"
    return template.format(
        base=base, python=python, venv=venv, lock_digest=lock.digest(),
        useradd="true" if root else f"useradd --create-home --uid 1000 --user-group {user}",
        path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        labels=label_lines, user="0:0" if root else "1000:1000", owner="0:0" if root else "1000:1000",
        workdir=run["workdir"], checks=checks, workspace=md.WORKSPACE, env=_env_lines(run["env"]),
        expose=" ".join(run["exposed_ports"]) or "", entrypoint=json.dumps(run["entrypoint"]),
        cmd=f"CMD {json.dumps(run['cmd'])}" if run["cmd"] else "", volume=json.dumps(run["volumes"]),
    ).replace("\nEXPOSE \n", "\n")


def context(project: Path, opts: Options, dest: Path, *, client=None) -> tuple[Path, lockfile.Lock, tuple[str, ...]]:
    """Write the build context into ``dest``; returns (dest, lock, tags). A local base is
    loaded into ``client``'s engine first (``local_base``)."""
    from ..net import fetch
    from ..report import sbom
    from ..venv.install import requirements, wanted
    from ..venv.uvtool import uv_bin

    lock = lockfile.read(lockfile.lock_path(project, opts.name))
    conf = profile_image(project, opts.name)
    base_ref = opts.base or project_relative(conf.get("base"), project)
    if not base_ref:
        raise UserError(f"no base image for profile {opts.name!r}", hint="set [image] base or pass --base")
    modes = md.modes_of(conf)
    md.check_lock(modes, lock)
    sshd = None
    if base_ref.startswith(LOCAL_BASES):
        base_ref, facts = local_base(base_ref, platform=lock.meta.platform, cache=settings.cache_dir(), client=client)
        sshd = facts.sshd
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
    for path, data in md.files(modes, image_venv(conf)).items():
        (dest / "envmgr").mkdir(exist_ok=True)
        (dest / "envmgr" / Path(path).name).write_bytes(data)
    text = render(template_text(project), lock, conf, base=base_ref, python=python, sshd=sshd)
    (dest / "Containerfile").write_text(text)
    return dest, lock, tags_of(lock, opts.tag or conf.get("tag") or default_tag(lock))


def build(project: Path, opts: Options, *, engine: str, log=None, nocache: bool = False) -> Result:
    """Render and build through the docker SDK; the image lands in that engine's storage."""
    from . import engine as eng

    if opts.push or opts.output:
        raise UserError("--builder docker|podman builds into the engine only", hint="drop --output/--push, or use the native builder")
    platforms = lockfile.read(lockfile.lock_path(project, opts.name)).platforms
    if len(platforms) > 1:
        raise UserError(f"--builder docker|podman builds one image for this machine; the lock of {opts.name!r} is for "
                        f"{', '.join(platforms)}", hint="use the native builder (the default): it writes an image index")
    started = time.monotonic()
    client = eng.client()
    res = Result()
    cache = settings.cache_dir() / "oci"
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as tmp:
        ctx, lock, tags = context(project, opts, Path(tmp), client=client)
        tag = tags[0]
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
    for also in tags[1:]:
        img.tag(*also.rsplit(":", 1))
    res.digest, res.tag, res.tags = img.id, tag, list(tags)
    res.base = opts.base or ""
    res.outputs = {"engine": os.environ.get("DOCKER_HOST", "default"), "id": image_id or img.id,
                   "size": img.attrs.get("Size", 0)}
    res.seconds["total"] = round(time.monotonic() - started, 3)
    return res
