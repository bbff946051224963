"""``envmgr base --platform linux/amd64,linux/arm64``: one mmdebstrap run per architecture, one
OCI image index in the layout (an image a platform), read back by envmgr's base loader and
skopeo; bad input or a host that cannot run a foreign architecture is one line, exit 2, the old
base untouched.

The quick tests stand in a fake ``mmdebstrap`` and ``arch-test`` (tiny rootfs tars) for the
index's shape, order, determinism and failures; the real builds (arm64 takes minutes under
qemu-user) are marked slow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from image_fixtures import TEST_CACHE, assert_clean_failure, bookworm_rootfs, envmgr, need

from envmgr.core.errors import UserError
from envmgr.oci import debian
from envmgr.oci import image as im
from envmgr.oci.layout import read_dir
from envmgr.oci.sources import load

NAME = "envmgr-base:bookworm-python"


def layout_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fake_rootfs(path: Path, arch: str) -> Path:
    """A rootfs tar of one file, ``etc/arch``, saying which architecture it stands for."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("etc/arch")
        info.size = len(arch)
        tf.addfile(info, io.BytesIO(arch.encode()))
    return path


def nested_index(root: Path) -> dict:
    """index.json's one descriptor (tagged NAME) -> the image index it names."""
    top = json.loads((root / "index.json").read_bytes())
    [desc] = top["manifests"]
    assert desc["mediaType"] == im.OCI_INDEX
    assert desc["annotations"]["io.containerd.image.name"] == NAME
    return json.loads((root / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]).read_bytes())


@pytest.fixture
def fakebin(tmp_path: Path) -> Path:
    """A PATH directory with a fake mmdebstrap (writes a one-file tar for its --architectures,
    records its arguments and SOURCE_DATE_EPOCH; fails for the arch in FAKE_FAIL) and a fake
    arch-test (ok, or FAKE_NO_EMULATION's answer)."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "mmdebstrap").write_text(f"""#!{shutil.which('python3')}
import io, json, os, sys, tarfile
arch = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--architectures="))
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"argv": sys.argv[1:], "epoch": os.environ.get("SOURCE_DATE_EPOCH")}}) + "\\n")
if arch == os.environ.get("FAKE_FAIL"):
    sys.exit("E: cannot fetch the " + arch + " packages")
with tarfile.open(sys.argv[-1], "w", format=tarfile.PAX_FORMAT) as tf:
    info = tarfile.TarInfo("etc/arch"); info.size = len(arch)
    tf.addfile(info, io.BytesIO(arch.encode()))
""")
    (bin_ / "arch-test").write_text("""#!/bin/sh
if [ -n "$FAKE_NO_EMULATION" ]; then echo "$1: $FAKE_NO_EMULATION"; exit 1; fi
echo "$1: ok"
""")
    for exe in bin_.iterdir():
        exe.chmod(0o755)
    return bin_


def fake_env(tmp_path: Path, fakebin: Path, **more: str) -> dict:
    return {"PATH": f"{fakebin}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "mmdebstrap.log"),
            "ENVMGR_CACHE_DIR": str(tmp_path / "cache"), **more}


def fake_runs(tmp_path: Path) -> list[dict]:
    log = tmp_path / "mmdebstrap.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def old_base(tmp_path: Path) -> Path:
    """An existing one-image base at tmp/out/base, which a failed build must leave as it is."""
    out = tmp_path / "out"
    out.mkdir()
    tar = fake_rootfs(tmp_path / "old.tar", "old")
    return debian.import_rootfs(tar, out / "base", cache=tmp_path / "cache", name=NAME)


# -- the platform list -------------------------------------------------------------------------

def test_platforms_map_to_debian_architectures_in_one_order():
    assert debian.architectures(["linux/arm64", "linux/amd64"]) == ("amd64", "arm64")
    assert debian.architectures(["linux/amd64,linux/arm64/v8"]) == ("amd64", "arm64")
    assert debian.architectures(["linux/arm64"]) == ("arm64",)


@pytest.mark.parametrize("platforms, words", [
    (["linux/riscv64"], "'linux/riscv64': envmgr builds bases for linux/amd64, linux/arm64 only"),
    (["linux/amd64", "linux/s390x"], "'linux/s390x'"),
    (["arm64"], "'arm64'"),
    (["linux/arm64", "linux/arm64/v8"], "names linux/arm64 twice"),
    ([], "names no platform"),
    ([" , "], "names no platform"),
])
def test_bad_platform_lists_are_errors(platforms, words):
    with pytest.raises(UserError) as err:
        debian.architectures(platforms)
    assert words in str(err.value)
    assert "--platform" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("flag, words", [
    ("linux/riscv64", "linux/riscv64"),
    ("linux/s390x", "linux/s390x"),
    ("linux/amd64,linux/amd64", "names linux/amd64 twice"),
    (",", "names no platform"),
    ("", "names no platform"),
])
def test_cli_bad_platform_is_exit_2_and_writes_nothing(tmp_path, fakebin, flag, words):
    base = old_base(tmp_path)
    before = layout_files(base)
    proc = envmgr("base", "bookworm", "--platform", flag, "-o", str(base), env=fake_env(tmp_path, fakebin))
    assert_clean_failure(proc, words, base.parent)
    assert layout_files(base) == before
    assert fake_runs(tmp_path) == []  # checked before mmdebstrap runs


def test_empty_platform_list_is_an_error_before_anything_runs(tmp_path, fakebin, monkeypatch):
    monkeypatch.setenv("PATH", f"{fakebin}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "mmdebstrap.log"))
    with pytest.raises(UserError, match="names no platform"):
        debian.build_base("bookworm", tmp_path / "base", cache=tmp_path, platforms=[])
    assert not (tmp_path / "base").exists() and fake_runs(tmp_path) == []


# -- the index ---------------------------------------------------------------------------------

def test_index_layout_reads_back_per_platform(tmp_path):
    tars = {a: fake_rootfs(tmp_path / f"{a}.tar", a) for a in ("amd64", "arm64")}
    root = debian.import_rootfs_index(tars, tmp_path / "base", cache=tmp_path / "cache", name=NAME)
    index = nested_index(root)
    assert index["mediaType"] == im.OCI_INDEX
    assert [d["platform"] for d in index["manifests"]] == [{"architecture": "amd64", "os": "linux"},
                                                          {"architecture": "arm64", "os": "linux"}]
    assert all(d["mediaType"] == im.OCI_MANIFEST for d in index["manifests"])
    for arch, keyword in (("amd64", "linux-x86_64"), ("arm64", "linux-aarch64")):
        image, digest = read_dir(root, None, os_="linux", arch=arch)
        assert image.platform == f"linux/{arch}" and len(image.layers) == 1
        assert digest == next(d["digest"] for d in index["manifests"] if d["platform"]["architecture"] == arch)
        with tarfile.open(image.layers[0].path) as tf:
            assert tf.extractfile("etc/arch").read() == arch.encode()
        base = load(f"oci:{root}", platform=keyword, cache=tmp_path / "cache")
        assert base.digest == digest
    with pytest.raises(UserError, match="has no linux/riscv64 image"):
        read_dir(root, None, os_="linux", arch="riscv64")
    # the same rootfs tars: the same bytes, down to the index's digest
    again = debian.import_rootfs_index(tars, tmp_path / "again", cache=tmp_path / "cache2", name=NAME)
    assert layout_files(again) == layout_files(root)


def test_skopeo_reads_the_index(tmp_path):
    need("skopeo")
    tars = {a: fake_rootfs(tmp_path / f"{a}.tar", a) for a in ("amd64", "arm64")}
    root = debian.import_rootfs_index(tars, tmp_path / "base", cache=tmp_path / "cache", name=NAME)
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{root}"], capture_output=True, text=True, check=True)
    assert json.loads(raw.stdout) == nested_index(root)
    arm = subprocess.run(["skopeo", "inspect", "--override-arch", "arm64", f"oci:{root}"],
                         capture_output=True, text=True, check=True)
    assert json.loads(arm.stdout)["Architecture"] == "arm64"


def test_cli_builds_an_index_one_mmdebstrap_per_architecture(tmp_path, fakebin):
    base = old_base(tmp_path)
    env = fake_env(tmp_path, fakebin, SOURCE_DATE_EPOCH="1700000000")
    proc = envmgr("base", "bookworm", "--platform", "linux/arm64,linux/amd64", "-o", str(base), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"oci:{base}"
    runs = fake_runs(tmp_path)
    assert sorted(a for r in runs for a in r["argv"] if a.startswith("--architectures=")) == [
        "--architectures=amd64", "--architectures=arm64"]
    assert {r["epoch"] for r in runs} == {"1700000000"}  # mmdebstrap clamps its mtimes to it
    assert [d["platform"]["architecture"] for d in nested_index(base)["manifests"]] == ["amd64", "arm64"]
    first = layout_files(base)
    # the other order, again: the same layout byte for byte
    proc = envmgr("base", "bookworm", "--platform", "linux/amd64,linux/arm64", "-o", str(base), env=env)
    assert proc.returncode == 0, proc.stderr
    assert layout_files(base) == first
    assert [p.name for p in base.parent.iterdir()] == ["base"]


def test_cli_without_platform_writes_one_image(tmp_path, fakebin, monkeypatch):
    """No --platform: one image (no index), as before; the build runs mmdebstrap for the host
    without --architectures."""
    monkeypatch.setenv("PATH", f"{fakebin}:{os.environ['PATH']}")
    calls = []
    monkeypatch.setattr(debian, "mmdebstrap", lambda suite, tar, **kw: calls.append(kw) or fake_rootfs(tar, "host"))
    root = debian.build_base("bookworm", tmp_path / "base", cache=tmp_path / "cache")
    [desc] = json.loads((root / "index.json").read_bytes())["manifests"]
    assert desc["mediaType"] == im.OCI_MANIFEST
    assert desc["platform"]["architecture"] == debian.host_arch()
    assert [set(kw) for kw in calls] == [{"packages", "mirror", "log"}]  # no arch, no epoch: as before


def test_foreign_arch_without_emulation_is_one_line_with_the_fix(tmp_path, fakebin):
    base = old_base(tmp_path)
    before = layout_files(base)
    foreign = "linux/arm64" if debian.host_arch() == "amd64" else "linux/amd64"
    env = fake_env(tmp_path, fakebin, FAKE_NO_EMULATION="not supported on this machine/kernel")
    proc = envmgr("base", "bookworm", "--platform", "linux/amd64,linux/arm64", "-o", str(base), env=env)
    assert_clean_failure(proc, f"cannot build a {foreign} base on this", base.parent)
    assert "not supported on this machine/kernel" in proc.stderr
    assert "qemu-user-static binfmt-support" in proc.stderr and "mount -t binfmt_misc" in proc.stderr
    assert layout_files(base) == before and fake_runs(tmp_path) == []


def test_missing_arch_test_is_one_line_with_the_fix(tmp_path):
    empty = tmp_path / "nobin"
    empty.mkdir()
    foreign = "linux/arm64" if debian.host_arch() == "amd64" else "linux/amd64"
    proc = envmgr("base", "bookworm", "--platform", foreign, "-o", str(tmp_path / "base"),
                  env={"PATH": str(empty), "ENVMGR_CACHE_DIR": str(tmp_path / "cache")})
    assert_clean_failure(proc, "arch-test is not installed", tmp_path)
    assert "qemu-user-static" in proc.stderr and not (tmp_path / "base").exists()


def test_a_failed_architecture_leaves_the_old_base(tmp_path, fakebin):
    base = old_base(tmp_path)
    before = layout_files(base)
    env = fake_env(tmp_path, fakebin, FAKE_FAIL="arm64")
    proc = envmgr("base", "bookworm", "--platform", "linux/amd64,linux/arm64", "-o", str(base), env=env)
    assert_clean_failure(proc, "mmdebstrap failed for linux/arm64: E: cannot fetch the arm64 packages", base.parent)
    assert layout_files(base) == before


# -- real: mmdebstrap, qemu-user -----------------------------------------------------------------

def test_this_host_can_run_arm64_binaries():
    """What .ci/run sets up (qemu-user-static, binfmt_misc): arch-test runs an arm64 binary."""
    need("arch-test")
    debian.check_emulation("arm64")


def arm64_rootfs() -> Path:
    """mmdebstrap's arm64 bookworm + python3 rootfs tar (minutes under qemu), cached like the
    image tests' amd64 one."""
    need("mmdebstrap", "arch-test")
    key = hashlib.sha256(json.dumps(["bookworm", "apt", "arm64", debian.PACKAGES]).encode()).hexdigest()[:12]
    tar = TEST_CACHE / f"bookworm-python-arm64-{key}.tar"
    if not tar.is_file():
        debian.check_emulation("arm64")
        debian.mmdebstrap("bookworm", tar, arch="arm64", epoch=0)
    return tar


@pytest.mark.slow
def test_arm64_base_runs_python_under_qemu(tmp_path):
    """The index's arm64 image, picked by envmgr's loader: its python3 runs (qemu-user) and
    says aarch64."""
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    tars = {"amd64": bookworm_rootfs(), "arm64": arm64_rootfs()}
    root = debian.import_rootfs_index(tars, tmp_path / "base", cache=tmp_path / "cache", name=NAME)
    base = load(f"oci:{root}", platform="linux-aarch64", cache=tmp_path / "cache")
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    subprocess.run(["tar", "-xzf", str(base.image.layers[0].path), "-C", str(rootfs)], check=True)
    proc = subprocess.run(["chroot", str(rootfs), "/usr/bin/python3", "-c", "import platform; print(platform.machine())"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "aarch64"


@pytest.mark.slow
def test_real_two_arch_base(tmp_path):
    """The command as a user runs it: mmdebstrap for amd64 and (under qemu) arm64, one index."""
    need("mmdebstrap", "arch-test", "skopeo")
    out = tmp_path / "base"
    proc = envmgr("base", "bookworm", "--platform", "linux/amd64,linux/arm64", "-o", str(out),
                  env={"ENVMGR_CACHE_DIR": str(tmp_path / "cache")}, timeout=1200)
    assert proc.returncode == 0, proc.stderr
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{out}"], capture_output=True, text=True, check=True)
    assert [d["platform"]["architecture"] for d in json.loads(raw.stdout)["manifests"]] == ["amd64", "arm64"]
    for arch in ("amd64", "arm64"):
        image, _ = read_dir(out, None, os_="linux", arch=arch)
        with tarfile.open(image.layers[0].path) as tf:
            elf = tf.extractfile(tf.getmember("./usr/bin/python3.11")).read(20)
        assert int.from_bytes(elf[18:20], "little") == {"amd64": 62, "arm64": 183}[arch]
