"""Real components for the image tests: locks over the fixture index, a Debian bookworm +
python3 base built by mmdebstrap (cached between runs), a docker-registry with htpasswd auth,
podman (runc) and its Docker-compatible socket.

Each helper skips the test when its tool is missing, so the suite still runs where they are
not installed; CI installs them all (see the lead's ``.ci/run``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixture_index import PYPI, TORCH

from envmgr.core import files
from envmgr.model import lockfile
from envmgr.model.lockfile import Lock, LockedFile, LockedPackage, LockMeta

BASE_PACKAGES = ("python3", "python3-venv", "libstdc++6", "ca-certificates")
TEST_CACHE = Path(os.environ.get("ENVMGR_TEST_CACHE") or Path.home() / ".cache" / "envmgr-test")

# (index, variant, project, version): a small torch-shaped environment.
DEFAULT_PICKS = (
    (TORCH, "cpu", "torch", "2.7.1+cpu"),
    (PYPI, None, "numpy", "2.2.0"),
    (PYPI, None, "fixture-app", "1.0.0"),
    (PYPI, None, "typing-extensions", "4.12.2"),
    (PYPI, None, "filelock", "3.16.1"),
)


def envmgr_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "envmgr", *args]


def envmgr(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """The real CLI, as a user runs it."""
    return subprocess.run(envmgr_argv(*args), capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


def make_lock(index, picks=DEFAULT_PICKS, *, profile: str = "imgtest", variant: str = "cpu", python: str = "3.11") -> Lock:
    packages = []
    for idx, var, project, version in picks:
        items = [i for i in index.listings(idx, var, project) if i.version == version
                 and ("-cp311-" in i.filename or "-py3-none-any" in i.filename)]
        assert items, (idx, var, project, version)
        item = items[0]
        url = index.file_url(item.filename, idx)
        packages.append(LockedPackage(name=item.project, version=version, index=index.pypi_url if idx == PYPI else index.torch_url(var),
                                      wheels=(LockedFile(url=url, sha256=item.sha256, size=item.size),)))
    inputs = {"requirements": sorted(p.name for p in packages), "variant": variant, "python": python}
    meta = LockMeta(profile=profile, fingerprint=lockfile.fingerprint(inputs), inputs=inputs, resolver="uv",
                    resolver_version="0.13", python=python, platform="linux-x86_64", variant=variant,
                    torch_index=index.torch_url(variant), cuda="", min_driver="")
    return Lock(packages=tuple(sorted(packages, key=lambda p: p.key)), meta=meta, requires_python=f"=={python}.*")


def write_project(root: Path, lock: Lock, *, image: dict | None = None) -> Path:
    """A project with ``profiles/NAME.toml`` (an [image] table) and ``locks/pylock.NAME.toml``."""
    import tomlkit

    name = lock.meta.profile
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    doc = {"variant": lock.meta.variant, "torch": "==2.7.1", "python": lock.meta.python}
    if image:
        doc["image"] = image
    (root / "profiles" / f"{name}.toml").write_text(tomlkit.dumps(doc))
    files.write_atomic(lockfile.lock_path(root, name), lock.dumps())
    return root


# -- the Debian base ------------------------------------------------------------------------------

def need(*tools: str) -> None:
    for tool in tools:
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")


def bookworm_rootfs(packages: tuple[str, ...] = BASE_PACKAGES) -> Path:
    """mmdebstrap's bookworm + python3 rootfs tar (plus ``packages``' extras), built once and
    kept in ~/.cache/envmgr-test."""
    need("mmdebstrap")
    key = hashlib.sha256(json.dumps(["bookworm", "apt", packages]).encode()).hexdigest()[:12]
    tar = TEST_CACHE / f"bookworm-python-{key}.tar"
    if not tar.is_file():
        from envmgr.oci.debian import mmdebstrap

        mmdebstrap("bookworm", tar, packages=packages)
    return tar


def bookworm_layout(dest: Path, cache: Path, packages: tuple[str, ...] = BASE_PACKAGES) -> Path:
    from envmgr.oci.debian import import_rootfs

    return import_rootfs(bookworm_rootfs(packages), dest, cache=cache, name="envmgr-base:bookworm-python")


def assert_clean_failure(proc, words: str, out_parent: Path) -> None:
    """Exit 2, one ``error:`` line (the last) naming ``words``, no traceback, no temp left in ``out_parent``."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert words in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and words in lines[-1], proc.stderr  # one line, last
    assert sum(line.startswith("error:") for line in lines) == 1, proc.stderr
    assert [p.name for p in out_parent.iterdir() if p.name.startswith(".")] == []


# -- a registry -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, seconds: float = 20) -> bool:
    """Poll ``ready()`` until it is true or ``seconds`` pass: a started service's readiness."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(0.1)
    return ready()


def end(proc: subprocess.Popen) -> None:
    """Stop a service: terminate, then kill if it does not exit within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


class Registry:
    """docker-registry (distribution 2.8) on 127.0.0.1 with htpasswd auth, storage in a temp dir."""

    def __init__(self, root: Path, user: str = "tester", password: str = "s3cret") -> None:
        need("docker-registry", "htpasswd")
        self.user, self.password = user, password
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        htpasswd = root / "htpasswd"
        line = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True).stdout
        htpasswd.write_text(line.strip() + "\n")
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n"
            f"auth:\n  htpasswd:\n    realm: envmgr-test\n    path: {htpasswd}\n"
        )
        self.log = open(root / "registry.log", "w")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_until(self._listening):
            self.stop()
            raise RuntimeError("docker-registry did not start")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        end(self.proc)
        self.log.close()


# -- podman ---------------------------------------------------------------------------------------

def podman_ok() -> None:
    need("podman", "runc")
    proc = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"podman does not work here: {proc.stderr.strip()[-200:]}")


def podman(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return proc


class PodmanService:
    """``podman system service`` on a unix socket: the Docker-compatible API the SDK talks to."""

    def __init__(self, root: Path) -> None:
        podman_ok()
        self.sock = root / "podman.sock"
        self.url = f"unix://{self.sock}"
        self.proc = subprocess.Popen(["podman", "system", "service", "--time=0", self.url],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(self.sock.exists):
            self.stop()
            raise RuntimeError("podman system service did not start")

    def stop(self) -> None:
        end(self.proc)


# -- small bases for each platform ------------------------------------------------------------------

def tiny_base(dest: Path, cache: Path, *, arch: str = "amd64") -> Path:
    """A one-layer base for ``linux/ARCH`` as an OCI layout, in a second: ``/usr/bin/python3.11``
    (a stand-in that is never run: an export only reads the base's files), ``python3`` linking
    to it, root in ``/etc/passwd``, and ``/etc/arch`` naming ``arch`` (so each arch's layer differs)."""
    import io
    import tarfile

    from envmgr.oci.debian import import_rootfs

    rootfs = dest.parent / f".{dest.name}-rootfs.tar"
    with tarfile.open(rootfs, "w") as tf:
        def add(name: str, data: bytes = b"", *, link: str = "", mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if link:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

        add("etc/arch", arch.encode() + b"\n")
        add("etc/group", b"root:x:0:\n")
        add("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add("usr/bin/python3", link="python3.11")
        add("usr/bin/python3.11", b"#!/bin/false\n", mode=0o755)
    try:
        return import_rootfs(rootfs, dest, cache=cache, name=f"tiny-base:{arch}", arch=arch)
    finally:
        rootfs.unlink()


def base_index(dest: Path, layouts: dict[str, Path], name: str = "base:multi") -> Path:
    """One OCI layout whose ``index.json`` names an image index of the images of ``layouts``
    (arch -> a single-image layout for it): a multi-platform base."""
    from envmgr.oci import image as im
    from envmgr.oci import layout

    images = tuple(layout.read_dir(src, None, os_="linux", arch=arch)[0] for arch, src in layouts.items())
    return layout.write_dir(im.ImageIndex(images=images), dest, name=name)
