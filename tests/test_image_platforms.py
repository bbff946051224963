"""export-image of a lock for several platforms: one OCI image index, an image a platform.

Offline: a two-platform lock over the fixture index (an aarch64 build of torch beside the
x86_64 one) and small one-layer bases for linux/amd64 and linux/arm64, joined into a base
index. What is pinned down: the index (amd64 and arm64 manifests, each holding its platform's
wheels, laid out here without emulation), its digest the same on a second export, layers
shared where the bytes are equal, ``--platform`` picking a subset, skopeo and a registry
taking the index, and every bad input an exit-2 line that writes nothing. Online (slow):
the shipped default profile's two-platform twin, whose libtorch_cpu.so is an x86-64 ELF in
one image and an AArch64 one in the other.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import image_fixtures as fx
import pytest
from fixture_index import FixtureIndex
from test_lock import envmgr, failed, make_project, ok, profile_text
from test_platforms import BOTH, two_platform_index  # noqa: F401 - a fixture

from envmgr.oci import image as im

REPO = Path(__file__).resolve().parents[1]
SITE = "opt/venv/lib/python3.11/site-packages"

pytestmark = pytest.mark.timeout(900)


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """Single-arch bases and the index of both (what `envmgr base --platform` writes)."""
    root = tmp_path_factory.mktemp("bases")
    cache = root / "cache"
    amd = fx.tiny_base(root / "amd64", cache, arch="amd64")
    arm = fx.tiny_base(root / "arm64", cache, arch="arm64")
    return {"amd64": amd, "arm64": arm, "both": fx.base_index(root / "both", {"amd64": amd, "arm64": arm})}


def _project(tmp_path: Path, index: FixtureIndex, base: Path, extra: str = BOTH) -> Path:
    text = profile_text(index, "cpu", packages=("numpy", "fixture-app", "filelock"), extra=extra)
    project = make_project(tmp_path / "proj", {"fleet": text + f'\n[image]\nbase = "oci:{base}"\n'})
    ok(envmgr(project, "lock", "fleet"))
    return project


@pytest.fixture
def fleet(tmp_path: Path, two_platform_index: FixtureIndex, bases) -> Path:  # noqa: F811
    return _project(tmp_path, two_platform_index, bases["both"])


def export(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return envmgr(project, "export-image", "fleet", *args, timeout=timeout)


def export_json(project: Path, *args: str) -> dict:
    return json.loads(ok(export(project, *args, "--json")).stdout)


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def read_index(layout: Path) -> tuple[dict, dict]:
    """(index.json, the image index it names)."""
    top = json.loads((layout / "index.json").read_bytes())
    (desc,) = {d["digest"]: d for d in top["manifests"]}.values()
    assert desc["mediaType"] == im.OCI_INDEX
    return top, json.loads(blob(layout, desc["digest"]).read_bytes())


def manifests(layout: Path) -> dict[str, dict]:
    """platform (linux/arm64) -> that image's manifest."""
    _, index = read_index(layout)
    return {f"{d['platform']['os']}/{d['platform']['architecture']}": json.loads(blob(layout, d["digest"]).read_bytes())
            for d in index["manifests"]}


def read_file(layout: Path, manifest: dict, suffix: str) -> tuple[str, bytes]:
    """(path, bytes) of the first file whose path ends with ``suffix`` in the image's layers (top first)."""
    for layer in reversed(manifest["layers"]):
        with tarfile.open(blob(layout, layer["digest"])) as tf:
            for member in tf:
                if member.isfile() and member.name.endswith(suffix):
                    return member.name, tf.extractfile(member).read()  # type: ignore[union-attr]
    raise AssertionError(f"no {suffix} in the image")


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- the index ----------------------------------------------------------------------------------

def test_two_platform_lock_exports_one_index_with_each_platforms_wheels(fleet: Path, tmp_path: Path):
    out = tmp_path / "img"
    summary = export_json(fleet, "--output", str(out))
    top, index = read_index(out)
    assert summary["digest"] == top["manifests"][0]["digest"] == im.sha256_digest(blob(out, summary["digest"]).read_bytes())
    assert index["mediaType"] == im.OCI_INDEX
    assert [d["platform"] for d in index["manifests"]] == [{"architecture": "amd64", "os": "linux"},
                                                           {"architecture": "arm64", "os": "linux"}]
    assert [m["platform"] for m in summary["manifests"]] == ["linux/amd64", "linux/arm64"]
    images = manifests(out)
    for platform, machine in (("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")):
        manifest = images[platform]
        config = json.loads(blob(out, manifest["config"]["digest"]).read_bytes())
        assert (config["os"], config["architecture"]) == tuple(platform.split("/"))
        # the platform's own torch wheel, laid out and byte-compiled here (no emulation)
        _, wheel = read_file(out, manifest, "torch-2.7.1+cpu.dist-info/WHEEL")
        assert f"manylinux_2_28_{machine}" in wheel.decode() and {"x86_64": "aarch64", "aarch64": "x86_64"}[machine] not in wheel.decode()
        name, _ = read_file(out, manifest, ".cpython-311.pyc")
        assert name.startswith(SITE)
        # the base for that platform, and the lock file itself embedded and labelled
        base = next(m for m in summary["manifests"] if m["platform"] == platform)["base_digest"]
        assert manifest["annotations"]["org.opencontainers.image.base.digest"] == base
        _, lock = read_file(out, manifest, "opt/venv/pylock.toml")
        assert lock == (fleet / "locks" / "pylock.fleet.toml").read_bytes()
        assert config["config"]["Labels"]["io.envmgr.lock.digest"] == im.sha256_digest(lock)
    # pure-python packages and the top layer are the same blobs in both images; torch is not
    amd, arm = ({layer["digest"] for layer in images[p]["layers"]} for p in ("linux/amd64", "linux/arm64"))
    titles = {(layer["platform"], layer["title"]): layer["digest"] for layer in summary["layers"]}
    for title in ("small packages", "top"):
        assert titles[("linux/amd64", title)] == titles[("linux/arm64", title)]
    assert titles[("linux/amd64", "torch")] != titles[("linux/arm64", "torch")]
    assert summary["shared_layers"] == len(amd & arm) >= 2
    # the same inputs again: the same index, byte for byte
    again = export_json(fleet, "--output", str(tmp_path / "again"))
    assert again["digest"] == summary["digest"] and tree(tmp_path / "again") == tree(out)
    # the tar holds the same index, and Docker's manifest.json names this machine's image
    tar = tmp_path / "img.tar"
    assert export_json(fleet, "--output", str(tar))["digest"] == summary["digest"]
    with tarfile.open(tar) as tf:
        (entry,) = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert entry["Config"] == "blobs/sha256/" + images["linux/amd64"]["config"]["digest"].split(":")[1]
        assert tf.extractfile("index.json").read() == (out / "index.json").read_bytes()  # type: ignore[union-attr]


def test_skopeo_reads_and_copies_the_index(fleet: Path, tmp_path: Path):
    fx.need("skopeo")
    out = tmp_path / "img"
    summary = export_json(fleet, "--output", str(out))
    ref = f"oci:{out}:{summary['tag'].rsplit(':', 1)[1]}"  # index.json names the index twice (both tags)
    raw = subprocess.run(["skopeo", "inspect", "--raw", ref], capture_output=True, text=True)
    assert raw.returncode == 0, raw.stderr
    assert im.sha256_digest(raw.stdout.encode()) == summary["digest"]
    for arch in ("amd64", "arm64"):
        one = subprocess.run(["skopeo", "--override-arch", arch, "inspect", ref], capture_output=True, text=True)
        assert one.returncode == 0, one.stderr
        assert json.loads(one.stdout)["Architecture"] == arch
    copied = subprocess.run(["skopeo", "copy", "--all", "--preserve-digests", ref, f"oci:{tmp_path / 'copy'}:x"],
                            capture_output=True, text=True)
    assert copied.returncode == 0, copied.stderr
    assert read_index(tmp_path / "copy")[0]["manifests"][0]["digest"] == summary["digest"]


def test_platform_option_picks_a_subset(fleet: Path, tmp_path: Path):
    full = export_json(fleet, "--output", str(tmp_path / "full"))
    arm = export_json(fleet, "--platform", "linux/arm64", "--output", str(tmp_path / "arm"))
    assert [m["platform"] for m in arm["manifests"]] == ["linux/arm64"]
    assert list(manifests(tmp_path / "arm")) == ["linux/arm64"]
    # the arm64 image is the one the full index holds
    assert arm["manifests"][0]["digest"] == full["manifests"][1]["digest"]
    # keywords, OCI names, repeated or comma-separated, any order: the lock's order
    both = export_json(fleet, "--platform", "linux-aarch64,linux/amd64", "--platform", "linux/arm64/v8",
                       "--output", str(tmp_path / "both"))
    assert both["digest"] == full["digest"]


def test_one_platform_lock_still_exports_one_image(tmp_path: Path, two_platform_index: FixtureIndex, bases):  # noqa: F811
    project = _project(tmp_path, two_platform_index, bases["amd64"], extra="")
    summary = export_json(project, "--output", str(tmp_path / "img"), "--platform", "linux/amd64")
    top = json.loads((tmp_path / "img" / "index.json").read_bytes())
    assert top["manifests"][0]["mediaType"] == im.OCI_MANIFEST and top["manifests"][0]["digest"] == summary["digest"]
    assert "manifests" not in summary and "shared_layers" not in summary
    assert [layer["title"] for layer in summary["layers"]] == ["torch", "small packages", "top"]


def test_push_sends_each_image_then_the_index(fleet: Path, tmp_path: Path):
    reg = fx.Registry(tmp_path / "registry")
    try:
        ref = f"{reg.host}/envmgr/fleet:multi"
        creds = {"ENVMGR_REGISTRY_USERNAME": reg.user, "ENVMGR_REGISTRY_PASSWORD": reg.password}
        proc = envmgr(fleet, "export-image", "fleet", "--push", ref, "--output", str(tmp_path / "img"), "--json", **creds)
        summary = json.loads(ok(proc).stdout)
        blobs = {p.name for p in (tmp_path / "img" / "blobs" / "sha256").iterdir()}
        manifests_and_index = 3
        # a blob the two images share went up once
        assert summary["outputs"]["push"]["uploaded"] == len(blobs) - manifests_and_index
        fx.need("skopeo")
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", f"{reg.user}:{reg.password}",
                              f"docker://{ref}"], capture_output=True, text=True)
        assert raw.returncode == 0, raw.stderr
        assert im.sha256_digest(raw.stdout.encode()) == summary["digest"]
        # an export FROM the pushed index picks each platform's image of it
        proc = envmgr(fleet, "export-image", "fleet", "--base", ref, "--platform", "linux/arm64", "--output",
                      str(tmp_path / "on-top"), "--json", **creds)
        on_top = json.loads(ok(proc).stdout)
        assert on_top["manifests"][0]["base_digest"] == summary["manifests"][1]["digest"]
    finally:
        reg.stop()


# -- bad input: one line, exit 2, nothing written ------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (("--platform", "linux/s390x"), "--platform 'linux/s390x' is not a platform envmgr knows"),
    (("--platform", "windows"), "--platform 'windows' is not a platform envmgr knows"),
    (("--load", "--platform", "linux/arm64"), "--load: the engine here runs linux/amd64 images, and the index has linux/arm64 only"),
    (("--builder", "podman", "--load"), "--builder docker|podman builds one image for this machine"),
])
def test_bad_platform_options_are_one_line_errors(fleet: Path, tmp_path: Path, args, words):
    out = tmp_path / "img"
    line = failed(export(fleet, *args, *(() if "--builder" in args else ("--output", str(out)))))
    assert words in line, line
    assert not out.exists()


def test_a_platform_the_lock_lacks_names_the_locks_platforms(tmp_path: Path, two_platform_index: FixtureIndex, bases):  # noqa: F811
    project = _project(tmp_path, two_platform_index, bases["both"], extra="")
    out = tmp_path / "img"
    line = failed(export(project, "--platform", "linux/arm64", "--output", str(out)))
    assert "--platform linux/arm64: the lock of 'fleet' is for linux/amd64 only" in line, line
    assert not out.exists()


def test_a_base_without_one_of_the_platforms_changes_nothing(fleet: Path, tmp_path: Path, bases):
    out = tmp_path / "img"
    export_json(fleet, "--output", str(out), "--platform", "linux/amd64")
    before = tree(out)
    amd_only = fx.base_index(tmp_path / "amd-only", {"amd64": bases["amd64"]})
    for base, words in ((amd_only, "has no linux/arm64 image (it has: linux/amd64)"),
                        (bases["amd64"], "is a linux/amd64 image, the lock targets linux/arm64")):
        line = failed(export(fleet, "--base", f"oci:{base}", "--output", str(out)))
        assert words in line, line
        assert tree(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- online: the shipped default for both platforms ---------------------------------------------

ELF_MACHINE = {"linux/amd64": 62, "linux/arm64": 183}  # EM_X86_64, EM_AARCH64


@pytest.mark.slow
@pytest.mark.online
@pytest.mark.timeout(3600)
def test_default_profile_for_both_platforms_exports_each_platforms_torch(tmp_path: Path, bases):
    project = tmp_path / "proj"  # the shipped profiles and default lock; default made two-platform
    shutil.copytree(REPO / "profiles", project / "profiles")
    (project / "profiles" / "default.toml").write_text((REPO / "profiles" / "default.toml").read_text() + BOTH)
    shutil.copytree(REPO / "locks", project / "locks")
    cache = {"ENVMGR_CACHE_DIR": str(fx.TEST_CACHE / "envmgr-cache")}  # the GBs of wheels kept between runs
    ok(envmgr(project, "lock", "default", timeout=600, **cache))
    out = tmp_path / "img"
    proc = envmgr(project, "export-image", "default", "--base", f"oci:{bases['both']}", "--output", str(out), "--json",
                  timeout=3000, **cache)
    summary = json.loads(ok(proc).stdout)
    images = manifests(out)
    assert sorted(images) == sorted(ELF_MACHINE)
    for platform, machine in ELF_MACHINE.items():
        name, head = _elf_head(out, images[platform], "/torch/lib/libtorch_cpu.so")
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == machine, (platform, name)
    assert summary["shared_layers"] >= 2


def _elf_head(layout: Path, manifest: dict, suffix: str) -> tuple[str, bytes]:
    """The first 64 bytes of a (large) file in the image's layers, read without unpacking the rest."""
    for layer in reversed(manifest["layers"]):
        with gzip.open(blob(layout, layer["digest"])) as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
            for member in tf:
                if member.isfile() and member.name.endswith(suffix):
                    return member.name, tf.extractfile(member).read(64)  # type: ignore[union-attr]
    raise AssertionError(f"no {suffix} in the image")
