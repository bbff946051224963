"""A Debian bookworm + python3 base image, built locally by mmdebstrap (``envmgr base``).

mmdebstrap writes a root filesystem tar (~190 MB, ~20 s, from Debian's mirror); it becomes
a single-layer OCI image in a layout directory, so an export needs no container registry.

With ``platforms`` (``["linux/amd64", "linux/arm64"]``) mmdebstrap runs once per Debian
architecture (a foreign one under qemu-user through binfmt_misc: its maintainer scripts run
its binaries) and the layout holds one OCI image index, an image a platform. Those runs get
``SOURCE_DATE_EPOCH`` (envmgr's, 0 unless set), so the same mirror state gives the same digests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..core.errors import UserError
from ..core.files import atomic_path
from ..model.platforms import OCI_ARCH as ARCH
from ..model.platforms import PLATFORMS, from_oci, host, machine_of, oci_platform
from . import image as im
from .layers import BlobStore, source_date_epoch, stream_layer
from .layout import write_dir

SUITES = ("bookworm",)
PACKAGES = ("python3", "python3-venv", "libstdc++6", "ca-certificates")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What a host needs to build a foreign architecture's base (mmdebstrap runs its maintainer scripts).
EMULATION_FIX = ("apt-get install qemu-user-static binfmt-support arch-test; "
                 "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable")
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


def packages_with(include) -> tuple[str, ...]:
    """The base's packages plus ``include`` (names, or comma-separated lists), checked as
    Debian package names before mmdebstrap runs."""
    extra = [p.strip() for item in include or () for p in str(item).split(",") if p.strip()]
    for name in extra:
        if not _PACKAGE.fullmatch(name):
            raise UserError(f"--include {name!r} is not a Debian package name", hint="e.g. --include openssh-server")
    return tuple(dict.fromkeys((*PACKAGES, *extra)))


def host_arch() -> str:
    """This machine's Debian (and OCI) architecture: ``amd64``, ``arm64``."""
    machine = machine_of(host())
    return ARCH.get(machine, machine)


def architectures(platforms) -> tuple[str, ...]:
    """OCI platform names (``linux/amd64``; comma-separated lists too) -> their Debian
    architectures, in envmgr's order of platforms (so the index does not depend on the order
    given), checked before anything runs: none, an unknown one or one named twice is an error."""
    names = [p.strip() for item in platforms for p in str(item).split(",") if p.strip()]
    known = [oci_platform(p) for p in PLATFORMS]
    fix = f"e.g. --platform {','.join(known)}"
    if not names:
        raise UserError("--platform names no platform", hint=fix)
    archs: list[str] = []
    for name in names:
        keyword = from_oci(name)
        if keyword is None:
            raise UserError(f"--platform {name!r}: envmgr builds bases for {', '.join(known)} only", hint=fix)
        arch = ARCH[machine_of(keyword)]
        if arch in archs:
            raise UserError(f"--platform names linux/{arch} twice ({', '.join(names)})", hint="name each platform once")
        archs.append(arch)
    order = [ARCH[machine_of(p)] for p in PLATFORMS]
    return tuple(sorted(archs, key=order.index))


def check_emulation(arch: str) -> None:
    """Can this machine run ``arch``'s binaries (natively or under qemu-user through binfmt_misc)?
    Tried with arch-test, as mmdebstrap does: an error naming the fix if not."""
    if arch == host_arch():
        return
    where = f"a linux/{arch} base on this linux/{host_arch()} machine"
    exe = shutil.which("arch-test")
    if not exe:
        raise UserError(f"cannot build {where}: arch-test is not installed", hint=EMULATION_FIX)
    proc = subprocess.run([exe, arch], capture_output=True, text=True)
    said = (proc.stdout + proc.stderr).strip().splitlines()
    if proc.returncode != 0 or not said or not said[-1].endswith(": ok"):
        raise UserError(f"cannot build {where}: it cannot run {arch} binaries ({said[-1] if said else 'arch-test failed'})",
                        hint=EMULATION_FIX)


def mmdebstrap(suite: str, dest_tar: Path, *, packages=PACKAGES, mirror: str | None = None, arch: str | None = None,
               epoch: int | None = None, log=None) -> Path:
    """Run mmdebstrap into ``dest_tar`` (written to a temp sibling, then renamed: ``atomic_path``;
    the temp's name is not ``*.tar``, so the format is named). ``arch``: a Debian architecture
    (default: the host's); ``epoch``: its ``SOURCE_DATE_EPOCH`` (default: the environment's)."""
    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}", hint=f"known: {', '.join(SUITES)}")
    exe = shutil.which("mmdebstrap")
    if not exe:
        raise UserError("mmdebstrap is not installed", hint="apt-get install mmdebstrap")
    with atomic_path(dest_tar) as tmp:
        cmd = [exe, "--variant=apt", "--format=tar", "--include=" + ",".join(packages), "--quiet", suite, str(tmp)]
        if arch:
            cmd.insert(2, f"--architectures={arch}")
        if mirror:
            cmd.append(mirror)
        env = None if epoch is None else {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
        if log:
            slow = "about 20 s" if (arch or host_arch()) == host_arch() else "minutes: under qemu"
            log(f"running {' '.join(cmd[:-1] if not mirror else cmd)} ({slow})")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            what = f"mmdebstrap failed for linux/{arch}" if arch else "mmdebstrap failed"
            hint = "it needs Debian's mirror and root or subuids"
            if arch and arch != host_arch():
                hint += f", and for a foreign architecture: {EMULATION_FIX}"
            raise UserError(f"{what}: {tail[0]}", hint=hint)
    return dest_tar


def rootfs_image(rootfs_tar: Path, *, cache: Path, name: str, arch: str | None = None, env_path: str = PATH) -> im.Image:
    """A root filesystem tar -> a single-layer OCI image (its layer in the blob store)."""
    def copy(sink) -> None:
        with open(rootfs_tar, "rb") as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                sink.write(chunk)

    built = stream_layer(BlobStore(cache / "oci"), copy)
    layer = im.Layer(digest=built.digest, diff_id=built.diff_id, size=built.size,
                     media_type=im.OCI_LAYER_GZIP, path=built.path, title="rootfs", created_by="mmdebstrap")
    config = {
        "architecture": arch or ARCH.get(os.uname().machine, os.uname().machine),
        "os": "linux",
        "created": im.epoch_iso(0),
        "config": {"Env": [f"PATH={env_path}"], "Cmd": ["/bin/bash"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": im.epoch_iso(0), "created_by": "mmdebstrap", "comment": name}],
    }
    return im.Image(config=im.canonical_json(config), layers=(layer,))


def import_rootfs(rootfs_tar: Path, dest: Path, *, cache: Path, name: str, arch: str | None = None,
                  env_path: str = PATH) -> Path:
    """A root filesystem tar -> a single-layer OCI layout at ``dest`` (tagged ``name``)."""
    return write_dir(rootfs_image(rootfs_tar, cache=cache, name=name, arch=arch, env_path=env_path), dest, name=name)


def import_rootfs_index(rootfs_tars: dict[str, Path], dest: Path, *, cache: Path, name: str) -> Path:
    """Root filesystem tars by Debian architecture -> an OCI layout at ``dest`` whose
    ``index.json`` names (tagged ``name``) one image index, an image a platform."""
    images = tuple(rootfs_image(tar, cache=cache, name=name, arch=arch) for arch, tar in rootfs_tars.items())
    return write_dir(im.ImageIndex(images=images), dest, name=name)


def build_base(suite: str, dest: Path, *, cache: Path, mirror: str | None = None, include=(), platforms=None,
               log=None) -> Path:
    """mmdebstrap + import: an OCI layout at ``dest`` holding ``SUITE-python``, with the
    Debian packages ``include`` names too (``openssh-server`` for the ssh mode). ``platforms``
    (OCI names; default: this machine's only, one image): an image index, one image each."""
    packages = packages_with(include)
    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}", hint=f"known: {', '.join(SUITES)}")
    archs = None if platforms is None else architectures(platforms)
    for arch in archs or ():
        check_emulation(arch)
    try:
        dest.absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {dest}: {exc.strerror}", hint="pick another --output")
    name = f"envmgr-base:{suite}-python"
    with tempfile.TemporaryDirectory(prefix=".mmdebstrap-", dir=cache if cache.is_dir() else None) as tmp:
        if archs is None:
            rootfs = mmdebstrap(suite, Path(tmp) / "rootfs.tar", packages=packages, mirror=mirror, log=log)
            return import_rootfs(rootfs, dest, cache=cache, name=name)
        epoch = source_date_epoch()

        def one(arch: str) -> Path:
            return mmdebstrap(suite, Path(tmp) / f"rootfs-{arch}.tar", packages=packages, mirror=mirror, arch=arch,
                              epoch=epoch, log=log)

        with ThreadPoolExecutor(max_workers=len(archs)) as pool:  # mostly waiting: the mirror, qemu
            tars = dict(zip(archs, pool.map(one, archs)))
        return import_rootfs_index(tars, dest, cache=cache, name=name)
