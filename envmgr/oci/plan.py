"""The plan step of ``envmgr export-image``: what to build, decided before anything is built.

``request`` reads what was asked (the lock, the profile's ``[image]`` table, the options) and
checks it; ``load_base`` brings the base image and what is inside it (its python must be the
lock's); ``plan`` turns both into a ``Plan``: the packages by layer with each layer's cache
key, the staging interpreter, the image's user. A ``Plan`` is a value: the build step
(``buildlayers``) and the assemble step (``assemble``) read it, nothing changes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.errors import UserError
from ..model import lockfile
from . import layers as ly
from . import modes as md
from . import sources, venvlayers, wheelfs

DEFAULT_VENV = "/opt/venv"
DEFAULT_USER = "envmgr"
DEFAULT_UID = 1000


@dataclass(frozen=True)
class Options:
    name: str = "default"
    base: str | None = None
    output: Path | None = None
    push: str | None = None
    load: bool = False
    tag: str | None = None
    threshold: int = venvlayers.DEFAULT_THRESHOLD
    jobs: int = 0  # 0: one per CPU
    compile: bool = True
    platforms: tuple[str, ...] = ()  # --platform: linux/arm64 or linux-aarch64 (default: every one of the lock's)


# -- what was asked ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    lock: lockfile.Lock  # what the venv holds: the lock, or one platform's view of it (``for_platform``)
    conf: dict  # the profile's [image] table ({} without a profile)
    base_ref: str  # as given, ``oci:``/archive paths made relative to the project
    venv: str  # absolute, e.g. /opt/venv
    tag: str
    epoch: int  # SOURCE_DATE_EPOCH (0 if unset): every timestamp in the image
    modes: tuple[str, ...] = md.DEFAULT  # [image] modes, checked against the lock
    tags: tuple[str, ...] = ()  # ``tag``, then the human tag (torch2.7.1-cu118-py3.11): never "latest"
    platforms: tuple[str, ...] = ()  # the platforms to export, the lock's order (``linux-x86_64``)
    whole: lockfile.Lock | None = None  # the lock file, when ``lock`` is one platform's view of it

    @property
    def lock_file(self) -> lockfile.Lock:
        """The lock as its file says (every platform): what the image embeds and its label names."""
        return self.whole or self.lock

    @property
    def index(self) -> bool:
        """An image index (one image a platform) rather than one image: the lock has several platforms."""
        return len(self.lock_file.platforms) > 1

    def for_platform(self, platform: str) -> Request:
        """The request for one platform's image: the lock's view of it, the whole lock kept."""
        return replace(self, lock=self.lock_file.for_platform(platform), whole=self.lock_file)


def profile_image(project: Path, name: str) -> dict:
    from ..model import profiles

    if not profiles.profile_path(project, name).is_file():
        return {}
    return dict(profiles.load(project, name).image)


def default_tag(lock: lockfile.Lock) -> str:
    return f"envmgr/{lock.meta.profile.lower()}:{lock.meta.variant}-{lock.digest().split(':', 1)[1][:12]}"


def human_tag(lock: lockfile.Lock, tag: str) -> str:
    """``REPO:torch2.7.1-cu118-py3.11`` beside ``tag`` (same repository); "" without torch."""
    torch = lock.package("torch")
    if torch is None:
        return ""
    from .layout import split_name

    return f"{split_name(tag)[0]}:torch{torch.version.split('+', 1)[0]}-{lock.meta.variant}-py{lock.meta.python}"


def tags_of(lock: lockfile.Lock, tag: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(filter(None, (tag, human_tag(lock, tag)))))


def image_venv(conf: dict) -> str:
    """Where the venv lives in the image: ``[image] venv``, absolute."""
    return "/" + conf.get("venv", DEFAULT_VENV).strip("/")


def project_relative(ref: str | None, project: Path) -> str | None:
    """A profile's ``oci:``/archive base with a relative path is relative to the project."""
    for prefix in ("oci:", "oci-archive:", "docker-archive:"):
        if ref and ref.startswith(prefix) and not Path(ref[len(prefix):]).is_absolute():
            return f"{prefix}{project / ref[len(prefix):]}"
    return ref


def request(project: Path, opts: Options) -> Request:
    """Read the lock and the profile's ``[image]`` table; a one-line error for what is missing or wrong."""
    lock = lockfile.read(lockfile.lock_path(project, opts.name))
    conf = profile_image(project, opts.name)
    base_ref = opts.base or project_relative(conf.get("base"), project)
    if not base_ref:
        raise UserError(f"no base image for profile {opts.name!r}",
                        hint="set [image] base in the profile or pass --base (see `envmgr base bookworm`)")
    venv = image_venv(conf)
    if not venv.strip("/") or ".." in venv.split("/"):
        raise UserError(f"[image] venv {conf.get('venv')!r} is not an absolute path")
    modes = md.modes_of(conf)
    md.check_lock(modes, lock)
    tag = opts.tag or conf.get("tag") or default_tag(lock)
    return Request(lock=lock, conf=conf, base_ref=base_ref, venv=venv, tag=tag, epoch=ly.source_date_epoch(),
                   modes=modes, tags=tags_of(lock, tag), platforms=platforms_of(lock, opts.platforms))


def platforms_of(lock: lockfile.Lock, asked) -> tuple[str, ...]:
    """``--platform`` values (``linux/arm64``, ``linux-aarch64``; repeated or comma-separated) ->
    the lock's platforms they name, in the lock's order; none asked: all of them."""
    from ..model.platforms import PLATFORMS, from_oci, oci_platform

    have = lock.platforms
    picked = []
    for item in asked or ():
        for name in filter(None, (n.strip() for n in str(item).split(","))):
            keyword = name if name in PLATFORMS else from_oci(name)
            if keyword is None:
                known = ", ".join(oci_platform(p) for p in PLATFORMS)
                raise UserError(f"--platform {name!r} is not a platform envmgr knows", hint=f"use one of {known} (or {', '.join(PLATFORMS)})")
            if keyword not in have:
                raise UserError(f"--platform {name}: the lock of {lock.meta.profile!r} is for {', '.join(oci_platform(p) for p in have)} only",
                                hint=f"add {keyword!r} to the profile's platform list and run `envmgr lock {lock.meta.profile}`")
            picked.append(keyword)
    return tuple(p for p in have if p in picked) if picked else have


def load_base(req: Request, *, cache: Path, reporter=None) -> tuple[sources.Base, sources.BaseFacts]:
    """The base image (blobs on local disk) and what is inside it; its python must be the lock's."""
    base = sources.load(req.base_ref, platform=req.lock.meta.platform, cache=cache / "oci", reporter=reporter)
    facts = sources.inspect(base.image, declared=req.conf.get("python"), ref=req.base_ref, cache=cache)
    if req.lock.meta.python and facts.version != req.lock.meta.python:
        raise UserError(f"base {req.base_ref} has Python {facts.version} ({facts.python}); the lock is for Python {req.lock.meta.python}",
                        hint="pick a base with the lock's python, or set [image] python to its path")
    md.check_base(req.modes, facts.sshd, req.base_ref)
    return base, facts


# -- what to build -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    req: Request
    base: sources.Base
    facts: sources.BaseFacts
    groups: tuple[venvlayers.Group, ...]  # the package layers, base-most first
    keys: tuple[str, ...]  # each group's layer cache key
    staging: str  # this machine's python that stages the venv ("" if none)
    python_platform: str  # uv's --python-platform for another machine's files ("" for this machine's)
    compile: bool  # byte-compile the venv (if the staging python is the base's)
    wheels: bool  # every package a wheel: laid out from the wheels (wheelfs); else staged by uv
    user: str  # the config's User, "uid:gid"
    home: str  # the user's home: the default WorkingDir
    user_entries: tuple[ly.Entry, ...]  # /etc/passwd, /etc/group and the home, if the base lacks the user
    mode_entries: tuple[ly.Entry, ...] = ()  # the entrypoint, its modes, /etc/profile.d, /workspace

    @property
    def image_site(self) -> str:
        return f"{self.req.venv}/lib/python{self.facts.version}/site-packages"


def markers(platform: str, version: str) -> dict:
    """The marker environment of the image's python (CPython ``version`` on Linux ``platform``)."""
    machine = {"linux-x86_64": "x86_64", "linux-aarch64": "aarch64"}.get(platform, platform.split("-")[-1])
    return {"implementation_name": "cpython", "implementation_version": f"{version}.0", "os_name": "posix",
            "platform_machine": machine, "platform_release": "", "platform_system": "Linux", "platform_version": "",
            "python_full_version": f"{version}.0", "platform_python_implementation": "CPython",
            "python_version": version, "sys_platform": "linux"}


def staging_python(version: str) -> tuple[str, str]:
    """(path, full version) of this machine's Python ``version`` that stages the venv; ("", "") if none."""
    import subprocess

    from ..venv.install import query_python
    from ..venv.uvtool import clean_env, uv_bin

    proc = subprocess.run([uv_bin(), "python", "find", "--no-config", "--no-project", version], capture_output=True,
                          text=True, env=clean_env({"UV_PYTHON_DOWNLOADS": "never"}), check=False)
    path = proc.stdout.strip()
    if proc.returncode != 0 or not path:
        return "", ""
    return path, query_python(path).version


def user_files(user: str, facts: sources.BaseFacts) -> tuple[str, list[ly.Entry], str]:
    """(config User, entries for /etc/passwd, /etc/group and the home, home dir)."""
    if user in ("root", "0", "0:0"):
        return "0:0", [], "/root"
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise UserError(f"[image] user {user!r} is not a valid user name")
    passwd = facts.passwd.decode("utf-8", "replace").splitlines()
    group = facts.group.decode("utf-8", "replace").splitlines()
    for line in passwd:
        f = line.split(":")
        if len(f) >= 7 and f[0] == user:
            return f"{f[2]}:{f[3]}", [], f[5]
    used_uids = {int(f[2]) for f in (l.split(":") for l in passwd) if len(f) > 2 and f[2].isdigit()}
    used_gids = {int(f[2]) for f in (l.split(":") for l in group) if len(f) > 2 and f[2].isdigit()}
    uid = next(u for u in range(DEFAULT_UID, 65000) if u not in used_uids)
    gid = uid if uid not in used_gids else next(g for g in range(DEFAULT_UID, 65000) if g not in used_gids)
    home = f"/home/{user}"
    passwd.append(f"{user}:x:{uid}:{gid}::{home}:/bin/sh")
    if not any(l.split(":")[0] == user for l in group):
        group.append(f"{user}:x:{gid}:")
    entries = [
        ly.Entry("etc/passwd", data=("\n".join(passwd) + "\n").encode()),
        ly.Entry("etc/group", data=("\n".join(group) + "\n").encode()),
        ly.Entry(home.strip("/"), kind="dir", uid=uid, gid=gid),
    ]
    return f"{uid}:{gid}", entries, home


def plan(req: Request, base: sources.Base, facts: sources.BaseFacts, opts: Options) -> Plan:
    """The layers to build and their cache keys: from the lock (packages for the base's python),
    the options (layer threshold, byte-compilation) and this machine's staging python."""
    from ..model.platforms import PLATFORMS, host
    from ..venv.install import wanted
    from ..venv.uvtool import uv_version

    platform = req.lock.meta.platform
    packages = wanted(req.lock, markers(platform, facts.version))
    foreign = platform != host()
    if foreign:  # an sdist would be built for this machine, not for the image's
        for p in packages:
            if not p.install_file.is_wheel:
                raise UserError(f"{p.key} {p.version} has no wheel for {platform} in the lock of {req.lock.meta.profile!r} "
                                f"(its sdist would be built for this machine)",
                                hint=f"lock a version with a {platform} wheel, or export {platform} on a {platform} machine")
    host_python, host_version = staging_python(facts.version)
    groups = venvlayers.plan(packages, threshold=opts.threshold, split_pure=req.index)
    wheels = all(p.install_file.is_wheel for p in packages)  # the route of every layer, named in its key
    common = {"venv": req.venv, "python": facts.version, "interpreter": facts.python, "epoch": req.epoch,
              "compile": opts.compile, "host-python": host_version,
              "installer": wheelfs.LAYOUT if wheels else f"uv {uv_version()}"}
    keys = [ly.LayerCache.key({**common, "title": g.title, "packages": g.key_parts()}) for g in groups]
    user, entries, home = user_files(req.conf.get("user", DEFAULT_USER), facts)
    return Plan(req=req, base=base, facts=facts, groups=tuple(groups), keys=tuple(keys), staging=host_python,
                python_platform=PLATFORMS[platform][0] if foreign else "", compile=opts.compile, wheels=wheels, user=user, home=home, user_entries=tuple(entries),
                mode_entries=tuple(md.entries(req.modes, req.venv, user)))
