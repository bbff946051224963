"""envmgr export-image with real components: a bookworm base by mmdebstrap, podman + runc,
skopeo, the OCI JSON schemas, docker-registry with htpasswd auth, podman's Docker API."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import image_fixtures as fx
import pytest

from envmgr.oci import image as im
from envmgr.oci import layers as ly
from envmgr.oci import layout

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "oci-image-spec-schema"
if not SCHEMAS.is_dir():
    SCHEMAS = Path("/work/shared/fixtures/oci-image-spec-schema")

pytestmark = pytest.mark.timeout(900)


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    """The bookworm + python3 base as an OCI layout (rootfs cached in ~/.cache/envmgr-test)."""
    root = tmp_path_factory.mktemp("base")
    return fx.bookworm_layout(root / "bookworm", root / "cache")


@pytest.fixture
def project(tmp_path, fixture_index, base_dir) -> Path:
    lock = fx.make_lock(fixture_index)
    return fx.write_project(tmp_path / "proj", lock, image={"base": f"oci:{base_dir}"})


def export(project: Path, *args: str, env: dict | None = None):
    proc = fx.envmgr("export-image", "imgtest", *args, cwd=project, env=env)
    return proc


def export_json(project: Path, *args: str, env: dict | None = None) -> dict:
    proc = export(project, *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def read_layout(path: Path) -> tuple[dict, dict, dict]:
    index = json.loads((path / "index.json").read_bytes())
    digest = index["manifests"][0]["digest"]
    manifest = json.loads((path / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    config = json.loads((path / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_bytes())
    return index, manifest, config


def schema_validate(kind: str, doc) -> None:
    from jsonschema import Draft4Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    def retrieve(uri: str):
        name = uri.rstrip("/").rsplit("/", 1)[-1].split("#")[0]
        return Resource.from_contents(json.loads((SCHEMAS / name).read_text()), default_specification=DRAFT4)

    schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
    Draft4Validator(schema, registry=Registry(retrieve=retrieve)).validate(doc)


# -- layers: determinism in isolation ---------------------------------------------------------

def _tree(root: Path, umask: int) -> list[ly.Entry]:
    old = os.umask(umask)
    try:
        (root / "pkg").mkdir(parents=True)
        (root / "pkg" / "a.py").write_text("x = 1\n")
        (root / "pkg" / "run").write_text("#!/bin/sh\n")
        os.chmod(root / "pkg" / "run", 0o777 & ~umask | 0o100)
        (root / "pkg" / "big.bin").write_bytes(os.urandom(0) + bytes(range(256)) * 20000)
        os.utime(root / "pkg" / "a.py", (12345.678, 12345.678))
    finally:
        os.umask(old)
    return ly.with_parents([ly.file_entry(f"opt/venv/{p.relative_to(root)}", p)
                            for p in sorted(root.rglob("*")) if p.is_file()])


def test_layer_bytes_depend_on_content_only(tmp_path):
    a = ly.build_layer(_tree(tmp_path / "a", 0o022), ly.BlobStore(tmp_path / "s1"), mtime=0)
    b = ly.build_layer(_tree(tmp_path / "elsewhere" / "b", 0o077), ly.BlobStore(tmp_path / "s2"), mtime=0)
    assert (a.digest, a.diff_id, a.size) == (b.digest, b.diff_id, b.size)
    import tarfile

    with tarfile.open(a.path) as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.uid, m.gid, m.mtime, m.uname) for m in members} == {(0, 0, 0, "")}
    modes = {m.name: m.mode for m in members}
    assert modes["opt/venv/pkg/run"] == 0o755 and modes["opt/venv/pkg/a.py"] == 0o644 and modes["opt/venv/pkg"] == 0o755
    raw = a.path.read_bytes()
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0
    c = ly.build_layer(_tree(tmp_path / "c", 0o022), ly.BlobStore(tmp_path / "s3"), mtime=1700000000)
    assert c.diff_id != a.diff_id  # the epoch is part of the bytes


def test_duplicate_path_in_a_layer_is_refused():
    with pytest.raises(ValueError):
        ly.with_parents([ly.Entry("a/b", data=b"1"), ly.Entry("a/b", data=b"2")])


# -- export: layout, tar, schemas, skopeo, podman ----------------------------------------------

def test_export_layout_and_tar_valid_and_runs_in_podman(project, tmp_path, base_dir):
    summary = export_json(project, "--output", str(tmp_path / "img"))
    assert summary["tag"].startswith("envmgr/imgtest:cpu-") and not summary["tag"].endswith("latest")
    index, manifest, config = read_layout(tmp_path / "img")
    schema_validate("image-index-schema", index)
    schema_validate("image-manifest-schema", manifest)
    schema_validate("config-schema", config)
    schema_validate("image-layout-schema", json.loads((tmp_path / "img" / "oci-layout").read_bytes()))
    assert index["manifests"][0]["digest"] == summary["digest"]
    base_index, base_manifest, _ = read_layout(base_dir)
    assert manifest["layers"][0] == base_manifest["layers"][0]
    assert manifest["annotations"]["org.opencontainers.image.base.digest"] == base_index["manifests"][0]["digest"]
    assert summary["base_digest"] == base_index["manifests"][0]["digest"]
    labels = config["config"]["Labels"]
    lock = (project / "locks" / "pylock.imgtest.toml").read_text()
    import hashlib

    assert labels["io.envmgr.lock.digest"] == "sha256:" + hashlib.sha256(lock.encode()).hexdigest()
    assert labels["io.envmgr.profile"] == "imgtest" and labels["io.envmgr.variant"] == "cpu"
    assert {"io.envmgr.cuda", "io.envmgr.min-driver"} <= set(labels)
    env = dict(e.split("=", 1) for e in config["config"]["Env"])
    assert env["VIRTUAL_ENV"] == "/opt/venv" and env["PATH"].startswith("/opt/venv/bin:")
    assert config["config"]["User"] == "1000:1000"
    titles = [layer["title"] for layer in summary["layers"]]
    assert titles[0] == "torch" and titles[-1] == "top"
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == len(config["history"])

    fx.need("skopeo")
    # Two tags of one image (the digest tag, the human one): skopeo names one.
    assert [d["annotations"]["io.containerd.image.name"] for d in index["manifests"]] == summary["tags"]
    for tag in summary["tags"]:
        inspected = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{tmp_path / 'img'}:{tag.split(':')[1]}"],
                                              capture_output=True, text=True, check=True).stdout)
        assert inspected["Digest"] == summary["digest"]

    # The single tar: same digest; skopeo reads it both ways; podman loads and runs it.
    tar_summary = export_json(project, "--output", str(tmp_path / "img.tar"))
    assert tar_summary["digest"] == summary["digest"]
    for ref in (f"oci-archive:{tmp_path / 'img.tar'}:{summary['tags'][1].split(':')[1]}", f"docker-archive:{tmp_path / 'img.tar'}"):
        subprocess.run(["skopeo", "inspect", ref], capture_output=True, check=True)
    fx.podman_ok()
    loaded = fx.podman("load", "-i", str(tmp_path / "img.tar"))
    image_id = config_id = summary["outputs"]["config"].split(":")[1]
    try:
        run = fx.podman("run", "--rm", image_id, "sh", "-c",
                        "id -u; fixture-app; python -c 'import torch, numpy; print(torch.__version__, numpy.__version__)';"
                        " cat /opt/venv/pylock.toml | head -1; test -s /opt/venv/sbom.cdx.json && echo sbom")
        lines = run.stdout.split("\n")
        assert lines[0] == "1000", run.stdout  # not root
        assert "fixture-app 1.0.0 numpy 2.2.0" in run.stdout
        assert "2.7.1+cpu 2.2.0" in run.stdout
        assert "envmgr lock for profile 'imgtest'" in run.stdout and "sbom" in run.stdout
    finally:
        fx.podman("rmi", "-f", config_id, check=False)
    assert "Loaded image" in loaded.stdout


def test_same_digest_across_temp_dirs_tz_umask_and_caches(project, tmp_path):
    first = export_json(project, "--output", str(tmp_path / "a"))
    other = {"ENVMGR_CACHE_DIR": str(tmp_path / "other-cache"), "TMPDIR": str(tmp_path), "TZ": "Pacific/Kiritimati",
             "UV_CACHE_DIR": str(tmp_path / "other-uv")}
    (tmp_path / "b-parent").mkdir()
    proc = subprocess.run(["sh", "-c", 'umask 077 && exec "$@"', "sh", *fx.envmgr_argv("export-image", "imgtest",
                                                                                      "--output", str(tmp_path / "b-parent" / "b"), "--json")],
                          capture_output=True, text=True, cwd=project, env={**os.environ, **other})
    assert proc.returncode == 0, proc.stderr
    second = json.loads(proc.stdout)
    assert [layer["cached"] for layer in second["layers"]] == [False] * len(second["layers"])
    assert second["digest"] == first["digest"]
    # The written files are identical too.
    a = sorted(p.name for p in (tmp_path / "a" / "blobs" / "sha256").iterdir())
    b = sorted(p.name for p in (tmp_path / "b-parent" / "b" / "blobs" / "sha256").iterdir())
    assert a == b


def test_layer_cache_rebuilds_only_the_changed_package(tmp_path, fixture_index, base_dir):
    lock = fx.make_lock(fixture_index)
    proj = fx.write_project(tmp_path / "proj", lock, image={"base": f"oci:{base_dir}"})
    first = export_json(proj, "--output", str(tmp_path / "a"), "--layer-threshold", "0")
    titles = [layer["title"] for layer in first["layers"]]
    assert titles == ["torch", "filelock", "fixture-app", "numpy", "typing-extensions", "top"]
    picks = [p if p[2] != "fixture-app" else (p[0], p[1], p[2], "1.1.0") for p in fx.DEFAULT_PICKS]
    fx.write_project(proj, fx.make_lock(fixture_index, picks), image={"base": f"oci:{base_dir}"})
    second = export_json(proj, "--output", str(tmp_path / "b"), "--layer-threshold", "0")
    rebuilt = [layer["title"] for layer in second["layers"] if not layer["cached"]]
    assert rebuilt == ["fixture-app", "top"]
    unchanged = {layer["title"]: layer["digest"] for layer in first["layers"] if layer["title"] not in rebuilt}
    assert unchanged == {layer["title"]: layer["digest"] for layer in second["layers"] if layer["title"] not in rebuilt}
    assert second["digest"] != first["digest"]


def test_archives_as_base(project, tmp_path):
    """The tar envmgr writes is itself a base: as oci-archive: and as docker-archive:."""
    first = export_json(project, "--output", str(tmp_path / "one.tar"))
    digests = set()
    for transport in ("oci-archive", "docker-archive"):
        summary = export_json(project, "--base", f"{transport}:{tmp_path / 'one.tar'}",
                              "--output", str(tmp_path / f"{transport}"))
        _, manifest, _ = read_layout(tmp_path / transport)
        digests.add(tuple(layer["digest"] for layer in manifest["layers"][:len(first["layers"]) + 1]))
        assert summary["python"] == "/usr/bin/python3.11"
    assert len(digests) == 1


# -- bad inputs: one line, exit 2, nothing half-written ----------------------------------------

_assert_clean_failure = fx.assert_clean_failure


def test_unknown_base(project, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = export(project, "--base", f"oci:{tmp_path / 'nope'}", "--output", str(out / "img"))
    _assert_clean_failure(proc, "is not a directory", out)
    proc = export(project, "--base", "no-host-here:1", "--output", str(out / "img"))
    _assert_clean_failure(proc, "names no registry host", out)
    assert not (out / "img").exists()


def _tiny_base(dest: Path, cache: Path, *, arch: str = "amd64", python: bool = False) -> Path:
    """A one-layer image: /etc/passwd and optionally a fake python3.11."""
    entries = [ly.Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")]
    if python:
        entries += [ly.Entry("usr/bin/python3.11", data=b"#!/bin/false\n", executable=True),
                    ly.Entry("usr/bin/python3", kind="symlink", link="python3.11")]
    store = ly.BlobStore(cache)
    built = ly.build_layer(ly.with_parents(entries), store, mtime=0)
    layer = im.Layer(digest=built.digest, diff_id=built.diff_id, size=built.size, media_type=built.media_type,
                     path=built.path, title="base")
    cfg = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [built.diff_id]}}
    return layout.write_dir(im.Image(config=im.canonical_json(cfg), layers=(layer,)), dest, name="tiny:1")


def test_base_without_python_and_wrong_arch(project, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    nopy = _tiny_base(tmp_path / "nopy", tmp_path / "c")
    proc = export(project, "--base", f"oci:{nopy}", "--output", str(out / "img"))
    _assert_clean_failure(proc, "has no python3", out)
    arm = _tiny_base(tmp_path / "arm", tmp_path / "c", arch="arm64", python=True)
    proc = export(project, "--base", f"oci:{arm}", "--output", str(out / "img"))
    _assert_clean_failure(proc, "linux/arm64 image, the lock targets linux/amd64", out)
    assert not (out / "img").exists()


def test_output_that_is_not_a_layout_and_nothing_to_do(project, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious.txt").write_text("keep")
    proc = export(project, "--output", str(tmp_path / "full"))
    _assert_clean_failure(proc, "exists and is not an OCI layout", tmp_path)
    assert (tmp_path / "full" / "precious.txt").read_text() == "keep"
    proc = export(project)
    _assert_clean_failure(proc, "nothing to do", tmp_path)


def test_disk_full_leaves_nothing(project, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        for target in ("img", "img.tar"):
            proc = export(project, "--output", str(mnt / target))
            _assert_clean_failure(proc, "no space left", mnt)
            assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# -- registry: push, pull, auth ----------------------------------------------------------------

@pytest.fixture
def registry(tmp_path):
    reg = fx.Registry(tmp_path / "registry")
    yield reg
    reg.stop()


def test_push_pull_round_trip_with_auth(project, tmp_path, registry, fixture_index, base_dir):
    ref = f"{registry.host}/envmgr/imgtest:one"
    # No credentials: a one-line 401 error.
    proc = export(project, "--push", ref)
    _assert_clean_failure(proc, "401", project)
    # Credentials from a docker config.json.
    docker_cfg = tmp_path / "docker"
    docker_cfg.mkdir()
    import base64

    auth = base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
    (docker_cfg / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    env = {"DOCKER_CONFIG": str(docker_cfg)}
    first = export_json(project, "--push", ref, env=env)
    assert first["outputs"]["push"]["uploaded"] == len(first["layers"]) + 2  # + base layer + config
    fx.need("skopeo")
    inspected = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", f"{registry.user}:{registry.password}",
                                f"docker://{ref}"], capture_output=True, text=True)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Digest"] == first["digest"]

    # One package changed: the second push uploads only its layer, the top layer and the config.
    picks = [p if p[2] != "fixture-app" else (p[0], p[1], p[2], "1.1.0") for p in fx.DEFAULT_PICKS]
    fx.write_project(project, fx.make_lock(fixture_index, picks), image={"base": f"oci:{base_dir}"})
    second = export_json(project, "--push", f"{registry.host}/envmgr/imgtest:two", env=env)
    assert second["outputs"]["push"]["uploaded"] == 3, second["outputs"]
    changed = [layer["title"] for layer in second["layers"] if not layer["cached"]]
    assert changed == ["small packages", "top"]

    # Pull: the pushed image as a base for another export (bearer/basic auth, platform, blobs).
    pulled = export_json(project, "--base", ref, "--output", str(tmp_path / "from-registry"), env=env)
    assert pulled["base_digest"] == first["digest"]
    # Env credentials work too; a missing image is a clean 404.
    env2 = {"ENVMGR_REGISTRY_USERNAME": registry.user, "ENVMGR_REGISTRY_PASSWORD": registry.password}
    proc = export(project, "--base", f"{registry.host}/envmgr/nothing:here", "--output", str(tmp_path / "x"), env=env2)
    _assert_clean_failure(proc, "404", tmp_path)


def test_push_to_registry_with_bad_password(project, registry):
    env = {"ENVMGR_REGISTRY_USERNAME": registry.user, "ENVMGR_REGISTRY_PASSWORD": "wrong"}
    proc = export(project, "--push", f"{registry.host}/envmgr/imgtest:bad", env=env)
    _assert_clean_failure(proc, "401", project)


# -- the docker SDK path against podman's Docker API -------------------------------------------

def test_load_through_docker_sdk_into_podman(project, tmp_path):
    svc = fx.PodmanService(tmp_path)
    try:
        env = {"DOCKER_HOST": svc.url}
        summary = export_json(project, "--load", "--tag", "localhost/envmgr-sdk:test", env=env)
        image_id = summary["outputs"]["config"].split(":")[1]
        try:
            run = fx.podman("run", "--rm", "localhost/envmgr-sdk:test", "fixture-app")
            assert "fixture-app 1.0.0" in run.stdout
        finally:
            fx.podman("rmi", "-f", image_id, check=False)
    finally:
        svc.stop()
    proc = export(project, "--load", env={"DOCKER_HOST": f"unix://{tmp_path / 'no.sock'}"})
    _assert_clean_failure(proc, "cannot reach a container engine", project)


def test_engine_build_from_containerfile_in(project, tmp_path):
    """--builder podman: Containerfile.in filled from the lock, built offline through the docker SDK."""
    svc = fx.PodmanService(tmp_path)
    try:
        env = {"DOCKER_HOST": svc.url}
        summary = export_json(project, "--builder", "podman", "--tag", "localhost/envmgr-engine:test", env=env)
        try:
            run = fx.podman("run", "--rm", "localhost/envmgr-engine:test", "sh", "-c",
                            "id -u; fixture-app; python -c 'import torch; print(torch.__version__)'")
            assert run.stdout.split() == ["1000", "fixture-app", "1.0.0", "numpy", "2.2.0", "2.7.1+cpu"], run.stdout
        finally:
            fx.podman("rmi", "-f", summary["outputs"]["id"], check=False)
    finally:
        svc.stop()


def image_files(layout: Path) -> dict[str, tuple]:
    """Every path of the image's layers (the base's too): (type, mode, sha256 or link target)."""
    import hashlib
    import tarfile

    _, manifest, _ = read_layout(layout)
    out = {}
    for layer in manifest["layers"]:
        with tarfile.open(layout / "blobs" / "sha256" / layer["digest"].split(":")[1], "r:*") as tf:
            for m in tf:
                data = hashlib.sha256(tf.extractfile(m).read()).hexdigest() if m.isfile() else m.linkname
                out[m.name] = (m.type, m.mode, data)
    return out


def test_wheels_laid_out_give_the_image_uv_installs(project, tmp_path, monkeypatch):
    """The two routes to a layer, straight from the wheels and (a lock with an sdist) through a
    venv uv staged, give the same image but for what names the installer and the scripts'
    interpreter line (uv's relocatable launcher, the image venv's own python)."""
    from envmgr.oci import buildlayers, export
    from envmgr.oci.plan import Options

    outs = {}
    for route in ("wheels", "uv"):
        monkeypatch.setenv("ENVMGR_CACHE_DIR", str(tmp_path / f"cache-{route}"))
        if route == "uv":
            monkeypatch.setattr(buildlayers, "_lay_out", buildlayers._stage)
        export.export(project, Options(name="imgtest", output=tmp_path / route))
        outs[route] = image_files(tmp_path / route)
    ours, uv = outs["wheels"], outs["uv"]
    assert set(ours) == set(uv)
    differ = {p for p in ours if ours[p] != uv[p]}
    assert differ and all(p.endswith(("/INSTALLER", "/RECORD")) or p.startswith("opt/venv/bin/") for p in differ), differ
    assert any(p.endswith(".pyc") for p in ours)  # compiled on both routes, the same bytes


def test_bytes_unlike_the_lock_mid_export_stop_it_and_leave_nothing(fresh_index, base_dir, tmp_path, monkeypatch):
    """The files download while the layers of those already here are compiled and written: a
    file whose bytes are not the lock's stops the export with one line naming it, no image is
    written, the compiling subprocess and the staging folder are gone, no bad byte is cached."""
    import hashlib

    from fixture_index import PYPI

    lock = fx.make_lock(fresh_index)
    project = fx.write_project(tmp_path / "proj", lock, image={"base": f"oci:{base_dir}"})
    swapped = fresh_index.add(PYPI, None, "fixture-app", "1.0.0", console_scripts=["fixture-app"],
                              files={"fixture_app/evil.py": "EVIL = True\n"})
    actual = hashlib.sha256(swapped.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    proc = export(project, "--output", str(tmp_path / "img"), env={"ENVMGR_CACHE_DIR": str(cache)})
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = errors[0]
    assert "hash mismatch for fixture-app" in line and f"got sha256:{actual}" in line
    assert not (tmp_path / "img").exists()
    assert not list((cache / "oci" / "staging").iterdir())
    assert not list((cache / "files" / "sha256").glob(f"{actual}*"))
    assert (cache / "files" / "sha256" / lock.package("torch").install_file.sha256).is_dir()  # the others came
