"""A Debian bookworm + python3 base image, built locally by mmdebstrap (``envmgr base``).

mmdebstrap writes a root filesystem tar (~190 MB, ~20 s, from Debian's mirror); it becomes
a single-layer OCI image in a layout directory, so an export needs no container registry.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..core.errors import UserError
from ..core.files import atomic_path
from . import image as im
from .layers import BlobStore, stream_layer
from .layout import write_dir

SUITES = ("bookworm",)
PACKAGES = ("python3", "python3-venv", "libstdc++6", "ca-certificates")
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


def packages_with(include) -> tuple[str, ...]:
    """The base's packages plus ``include`` (names, or comma-separated lists), checked as
    Debian package names before mmdebstrap runs."""
    extra = [p.strip() for item in include or () for p in str(item).split(",") if p.strip()]
    for name in extra:
        if not _PACKAGE.fullmatch(name):
            raise UserError(f"--include {name!r} is not a Debian package name", hint="e.g. --include openssh-server")
    return tuple(dict.fromkeys((*PACKAGES, *extra)))


def mmdebstrap(suite: str, dest_tar: Path, *, packages=PACKAGES, mirror: str | None = None, log=None) -> Path:
    """Run mmdebstrap into ``dest_tar`` (written to a temp sibling, then renamed: ``atomic_path``;
    the temp's name is not ``*.tar``, so the format is named)."""
    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}", hint=f"known: {', '.join(SUITES)}")
    exe = shutil.which("mmdebstrap")
    if not exe:
        raise UserError("mmdebstrap is not installed", hint="apt-get install mmdebstrap")
    with atomic_path(dest_tar) as tmp:
        cmd = [exe, "--variant=apt", "--format=tar", "--include=" + ",".join(packages), "--quiet", suite, str(tmp)]
        if mirror:
            cmd.append(mirror)
        if log:
            log(f"running {' '.join(cmd[:-1] if not mirror else cmd)} (about 20 s)")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"mmdebstrap failed: {tail[0]}", hint="it needs Debian's mirror and root or subuids")
    return dest_tar


def import_rootfs(rootfs_tar: Path, dest: Path, *, cache: Path, name: str, arch: str | None = None,
                  env_path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") -> Path:
    """A root filesystem tar -> a single-layer OCI layout at ``dest`` (tagged ``name``)."""
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
    image = im.Image(config=im.canonical_json(config), layers=(layer,))
    return write_dir(image, dest, name=name)


def build_base(suite: str, dest: Path, *, cache: Path, mirror: str | None = None, include=(), log=None) -> Path:
    """mmdebstrap + import: an OCI layout at ``dest`` holding ``SUITE-python``, with the
    Debian packages ``include`` names too (``openssh-server`` for the ssh mode)."""
    packages = packages_with(include)
    if suite not in SUITES:
        raise UserError(f"unknown suite {suite!r}", hint=f"known: {', '.join(SUITES)}")
    try:
        dest.absolute().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {dest}: {exc.strerror}", hint="pick another --output")
    with tempfile.TemporaryDirectory(prefix=".mmdebstrap-", dir=cache if cache.is_dir() else None) as tmp:
        rootfs = mmdebstrap(suite, Path(tmp) / "rootfs.tar", packages=packages, mirror=mirror, log=log)
        return import_rootfs(rootfs, dest, cache=cache, name=f"envmgr-base:{suite}-python")
