"""envmgr check through the real command line: a profile's venv, --python, --image (podman
and the docker SDK, with a real CPU torch inside), expectations from the lock, every bad
input a one-line exit 2, a failed check exit 1, a crashed or hung probe reported."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
from test_gpu_helpers import (  # noqa: F401 (fixtures)
    envmgr,
    json_out,
    link_venv,
    make_lock,
    no_torch_python,
    python_minor,
    torch_python,
    torch_version,
    write_lock,
    write_profile,
)

from envmgr.gpu import check as gpu_check
from envmgr.gpu import runner, schema


def by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def one_line_error(r: subprocess.CompletedProcess, code: int = 2) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture
def project(tmp_path, torch_python) -> Path:
    """A project whose profile ``cpu`` matches the real torch here, ``cu126`` does not, both synced."""
    version = torch_version(torch_python)
    minor = python_minor(torch_python)
    write_profile(tmp_path, "cpu", "cpu", "==" + version.split("+")[0], minor)
    write_lock(tmp_path, make_lock("cpu", "cpu", version, minor))
    write_profile(tmp_path, "cu126", "cu126", "==2.7.1", minor)
    write_lock(tmp_path, make_lock("cu126", "cu126", "2.7.1+cu126", minor,
                                   extra={"nvidia-cudnn-cu12": "9.5.1.17", "nvidia-nccl-cu12": "2.26.2"}))
    write_profile(tmp_path, "unsynced", "cpu", "==2.7.1", minor)
    venvs = tmp_path / ".envmgr" / "venvs"
    link_venv(venvs, "cpu", torch_python)
    link_venv(venvs, "cu126", torch_python)
    return tmp_path


# -- the real command line with a real torch ----------------------------------------------

def test_check_python_json(torch_python, tmp_path):
    r = envmgr("check", "--python", torch_python, "--json", project=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json_out(r)
    jsonschema.validate(report, schema.CHECK_REPORT)
    assert report["ok"] and report["target"]["kind"] == "python" and report["expect_source"] is None
    checks = by_name(report)
    assert all(checks[n]["status"] == "pass" for n in ("torch.import", "cpu.matmul_fp32", "cpu.conv2d", "cpu.sdpa", "cpu.copy"))
    assert checks["cuda.available"]["status"] == "skip"
    assert report["summary"]["fail"] == 0 and report["seconds"] >= report["probe_s"] > 0


def test_check_profile_venv_against_its_lock(project):
    r = envmgr("check", "cpu", "--json", project=project)
    assert r.returncode == 0, r.stderr
    report = json_out(r)
    jsonschema.validate(report, schema.CHECK_REPORT)
    assert report["target"]["kind"] == "venv" and report["target"]["profile"] == "cpu"
    assert report["expect_source"].startswith("lock ") and report["expect"]["variant"] == "cpu"
    checks = by_name(report)
    assert checks["torch.version"]["status"] == "pass" and checks["python.version"]["status"] == "pass"


def test_check_table_and_exit_1_on_a_cpu_wheel_where_cuda_was_locked(project):
    r = envmgr("check", "cu126", project=project, env={"COLUMNS": "200"})
    assert r.returncode == 1, r.stderr
    assert "FAIL" in r.stdout and "a CPU-only build of torch where cu126 (CUDA 12.6) was locked" in r.stdout
    assert "PASS" in r.stdout and "SKIP" in r.stdout and "passed" in r.stdout
    line = one_line_error(r, 1)
    assert "check(s) failed" in line and "torch.version" in line and "torch.cuda_build" in line


def test_check_python_against_a_profile_lock(project, torch_python):
    r = envmgr("check", "cu126", "--python", torch_python, "--json", project=project)
    assert r.returncode == 1
    report = json_out(r)
    assert report["target"]["kind"] == "python" and report["target"]["profile"] == "cu126"
    assert by_name(report)["torch.cuda_build"]["status"] == "fail"


def test_require_gpu_fails_on_a_cpu_host(torch_python, tmp_path):
    r = envmgr("check", "--python", torch_python, "--require-gpu", "--json", project=tmp_path)
    assert r.returncode == 1
    assert by_name(json_out(r))["cuda.available"]["status"] == "fail"


def test_check_python_accepts_a_venv_directory(torch_python, tmp_path):
    r = envmgr("check", "--python", str(Path(torch_python).parent.parent), "--json", project=tmp_path)
    assert r.returncode == 0, r.stderr


# -- bad input: one line, exit 2 ----------------------------------------------------------------

def test_unknown_profile(project):
    line = one_line_error(envmgr("check", "nosuch", project=project))
    assert "no profile 'nosuch'" in line and "cpu" in line


def test_missing_venv_says_sync(project):
    line = one_line_error(envmgr("check", "unsynced", project=project))
    assert "no venv for profile 'unsynced'" in line and "envmgr sync unsynced" in line


def test_default_profile_without_venv(project):
    line = one_line_error(envmgr("check", project=project))
    assert "no profile 'default'" in line


def test_python_does_not_exist(tmp_path):
    line = one_line_error(envmgr("check", "--python", str(tmp_path / "nope" / "python"), project=tmp_path))
    assert "no such file" in line
    line = one_line_error(envmgr("check", "--python", "no-such-python-anywhere", project=tmp_path))
    assert "not found on PATH" in line


def test_python_without_torch(no_torch_python, tmp_path):
    line = one_line_error(envmgr("check", "--python", no_torch_python, project=tmp_path))
    assert "has no torch" in line and no_torch_python in line


def test_venv_without_torch_says_sync(no_torch_python, tmp_path):
    write_profile(tmp_path, "bare", "cpu", "==2.7.1")
    link_venv(tmp_path / ".envmgr" / "venvs", "bare", no_torch_python)
    line = one_line_error(envmgr("check", "bare", project=tmp_path))
    assert "has no torch" in line and "envmgr sync bare" in line


def test_not_a_python(tmp_path):
    line = one_line_error(envmgr("check", "--python", "/bin/false", project=tmp_path))
    assert "did not run the probe" in line
    text = tmp_path / "data.txt"
    text.write_text("x")
    line = one_line_error(envmgr("check", "--python", str(text), project=tmp_path))
    assert "not an executable file" in line


@pytest.mark.parametrize("args, words", [
    (["--world", "0"], "--world 0: must be 1 or more"),
    (["--world", "-3"], "--world -3"),
    (["--timeout", "0"], "--timeout 0"),
    (["--python", sys.executable, "--image", "x"], "--python and --image are exclusive"),
    (["--image", "x", "--engine", "lxc"], "unknown engine"),
])
def test_bad_flags(tmp_path, args, words):
    line = one_line_error(envmgr("check", *args, project=tmp_path))
    assert words in line


def test_world_not_a_number(tmp_path):
    r = envmgr("check", "--world", "two", project=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--world" in r.stderr


# -- a probe that dies or hangs -----------------------------------------------------------------

def fake_python(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_probe_crash_is_a_failed_check(tmp_path):
    line = json.dumps({"name": "torch.import", "title": "torch imports", "status": "pass", "reason": "ok",
                       "seconds": 0.1, "metrics": {}})
    py = fake_python(tmp_path / "python", f"echo 'envmgr-probe: {line}' >&2\necho 'Fatal Python error: Segmentation fault' >&2\nkill -SEGV $$\n")
    r = envmgr("check", "--python", py, "--json", project=tmp_path)
    assert r.returncode == 1, r.stderr
    report = json_out(r)
    jsonschema.validate(report, schema.CHECK_REPORT)
    crash = by_name(report)["probe.crash"]
    assert "signal 11 SIGSEGV" in crash["reason"] and "after torch.import" in crash["reason"]
    assert by_name(report)["torch.import"]["status"] == "pass"


def test_probe_hang_times_out(tmp_path):
    py = fake_python(tmp_path / "python", "sleep 120\n")
    start = time.monotonic()
    r = envmgr("check", "--python", py, "--timeout", "2", "--json", project=tmp_path)
    assert time.monotonic() - start < 60
    assert r.returncode == 1, r.stderr
    assert "timed out after 2 s" in by_name(json_out(r))["probe.timeout"]["reason"]


# -- command lines, without running them ------------------------------------------------------

def test_podman_argv():
    argv = runner.podman_argv("oci:/tmp/img:latest", "/opt/venv/bin/python", "{}", gpu=True)
    assert argv[:4] == ["podman", "run", "--rm", "-i"]
    assert argv[argv.index("--device") + 1] == "nvidia.com/gpu=all"
    assert argv[-5:] == ["/opt/venv/bin/python", "oci:/tmp/img:latest", "-", "--expect-json", "{}"]
    assert argv[argv.index("--entrypoint") + 1] == "/opt/venv/bin/python"
    assert "--device" not in runner.podman_argv("ref", "/py", "{}", gpu=False)


def test_docker_kwargs_request_all_gpus():
    from docker.types import DeviceRequest

    kw = runner.docker_run_kwargs("img:tag", "/opt/venv/bin/python", "{}", gpu=True, source="SRC")
    assert kw["image"] == "img:tag" and kw["entrypoint"] == ["/opt/venv/bin/python"]
    assert kw["command"] == ["-c", "SRC", "--expect-json", "{}"]
    (req,) = kw["device_requests"]
    assert DeviceRequest(**req) == DeviceRequest(count=-1, capabilities=[["gpu"]])  # docker run --gpus all
    assert "device_requests" not in runner.docker_run_kwargs("img", "/py", "{}", gpu=False, source="")


def test_python_argv_ships_the_probe():
    argv = runner.python_argv("/venv/bin/python", '{"a":1}')
    assert argv[0] == "/venv/bin/python" and argv[1] == "-c" and "def arch_coverage" in argv[2]
    assert argv[3:] == ["--expect-json", '{"a":1}']


def test_pick_engine(monkeypatch):
    from envmgr.core.errors import UserError

    with pytest.raises(UserError, match="docker engine runs images it has loaded"):
        runner.pick_engine("docker", "oci:/tmp/layout")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert runner.pick_engine("auto", "img") == "docker"
    with pytest.raises(UserError, match="podman is not installed"):
        runner.pick_engine("podman", "img")


def test_expectations_from_lock():
    lock = make_lock("cu126", "cu126", "2.7.1+cu126", extra={"nvidia-cudnn-cu12": "9.5.1.17", "nvidia-nccl-cu12": "2.26.2"})
    e = gpu_check.expectations_from_lock(lock)
    assert e["torch"] == "2.7.1+cu126" and e["cuda"] == "12.6" and e["cudnn"] == "9.5.1.17" and e["nccl"] == "2.26.2"
    assert e["min_driver"] == "525.60.13" and "sm_90" in e["arch_list"]
    assert gpu_check.driver_table()["13.0"] == ["580", "580.65.06"]


def test_parse_output_recovers_progress():
    doc, progress = runner.parse_output('noise\n{"checks": [], "ok": true}\n',
                                        'warning\nenvmgr-probe: {"name": "torch.import"}\nenvmgr-probe: {broken\n')
    assert doc == {"checks": [], "ok": True} and progress == ({"name": "torch.import"},)


# -- inside an image: podman (CDI GPUs) and the docker SDK, with a real CPU torch ---------------

TORCH_DISTS = ("torch", "filelock", "typing_extensions", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "fsspec")


def _site_entries(python: str) -> tuple[str, list[str]]:
    code = (
        "import importlib.metadata as md, json, sysconfig\n"
        f"names = set()\nfor d in {TORCH_DISTS!r}:\n"
        "    for f in md.distribution(d).files or []:\n"
        "        if f.parts[0] not in ('..', 'bin', '__pycache__'):\n"
        "            names.add(f.parts[0])\n"
        "print(json.dumps([sysconfig.get_paths()['purelib'], sorted(names)]))\n"
    )
    site, names = json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)
    return site, names


@pytest.fixture(scope="session")
def torch_image(torch_python) -> str:
    """A Debian bookworm + python3 image with this torch in /opt/venv, cached in podman's store."""
    if not shutil.which("podman"):
        pytest.skip("podman is not installed")
    if subprocess.run(["podman", "info"], capture_output=True).returncode != 0:
        pytest.skip("podman does not work here")
    try:
        from image_fixtures import (
            bookworm_rootfs,  # the image tests' cached mmdebstrap rootfs
        )
    except ImportError:
        pytest.skip("no bookworm rootfs helper (tests/image_fixtures.py)")
    rootfs = bookworm_rootfs()
    if python_minor(torch_python) != "3.11":
        pytest.skip("bookworm's python is 3.11; this torch is for another python")
    site, names = _site_entries(torch_python)
    key = hashlib.sha256(json.dumps([str(rootfs), rootfs.stat().st_size, names]).encode()).hexdigest()[:12]
    base, image = f"localhost/envmgr-gpu-test-base:{key}", f"localhost/envmgr-gpu-test:{key}"
    if subprocess.run(["podman", "image", "exists", image]).returncode == 0:
        return image
    if subprocess.run(["podman", "image", "exists", base]).returncode != 0:
        subprocess.run(["podman", "import", str(rootfs), base], check=True, capture_output=True)
    ctx = Path(os.environ.get("TMPDIR", "/tmp")) / f"envmgr-gpu-test-{key}"
    ctx.mkdir(exist_ok=True)
    (ctx / "Containerfile").write_text(
        f"FROM {base}\nRUN python3 -m venv /opt/venv && cd /src && cp -a {' '.join(names)} /opt/venv/lib/python3.11/site-packages/\n")
    r = subprocess.run(["podman", "build", "-q", "-t", image, "-v", f"{site}:/src:ro", str(ctx)], capture_output=True, text=True)
    shutil.rmtree(ctx, ignore_errors=True)
    if r.returncode != 0:
        pytest.skip(f"could not build the test image: {r.stderr.strip()[-300:]}")
    return image


@pytest.mark.podman
@pytest.mark.slow
def test_check_image_with_podman(torch_image, tmp_path, torch_python):
    r = envmgr("check", "--image", torch_image, "--engine", "podman", "--json", project=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json_out(r)
    jsonschema.validate(report, schema.CHECK_REPORT)
    assert report["target"] == {"kind": "image", "python": "/opt/venv/bin/python", "profile": None,
                                "image": torch_image, "engine": "podman"}
    assert report["torch"]["version"] == torch_version(torch_python)
    assert report["python"]["executable"] == "/opt/venv/bin/python"
    assert by_name(report)["cpu.matmul_fp32"]["status"] == "pass"
    assert report["expect"] == {} and report["expect_source"] is None
    assert len(report["notes"]) == 1 and "has no embedded lock" in report["notes"][0]


@pytest.mark.podman
@pytest.mark.slow
def test_check_image_against_a_lock_and_bad_images(torch_image, project):
    r = envmgr("check", "cu126", "--image", torch_image, "--json", project=project)
    assert r.returncode == 1 and by_name(json_out(r))["torch.cuda_build"]["status"] == "fail"
    line = one_line_error(envmgr("check", "--image", torch_image, "--image-python", "/usr/bin/nope", project=project))
    assert "/usr/bin/nope" in line and "--image-python" in line
    line = one_line_error(envmgr("check", "--image", torch_image, "--image-python", "/usr/bin/python3", project=project))
    assert "has no torch" in line
    line = one_line_error(envmgr("check", "--image", "localhost/envmgr-no-such-image:none", project=project))
    assert "podman could not run the image" in line


@pytest.mark.podman
@pytest.mark.slow
def test_check_image_with_the_docker_sdk(torch_image, tmp_path):
    """The docker SDK path, against podman's Docker-compatible API."""
    pytest.importorskip("docker")
    sock = tmp_path / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        r = envmgr("check", "--image", torch_image, "--engine", "docker", "--json", project=tmp_path,
                   env={"DOCKER_HOST": f"unix://{sock}"})
        assert r.returncode == 0, r.stderr
        report = json_out(r)
        assert report["target"]["engine"] == "docker" and report["ok"]
        line = one_line_error(envmgr("check", "--image", "localhost/envmgr-no-such-image:none", "--engine", "docker",
                                     project=tmp_path, env={"DOCKER_HOST": f"unix://{sock}"}))
        assert "envmgr-no-such-image" in line
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_plan_image_python_follows_the_profile(tmp_path):
    path = write_profile(tmp_path, "img", "cpu", "==2.7.1")
    path.write_text(path.read_text() + '\n[image]\nvenv = "/srv/env/"\n')
    target, expect, source, _ = gpu_check.plan(tmp_path, name="img", python=None, image="some/image:tag", engine="docker")
    assert target.python == "/srv/env/bin/python" and target.kind == "image" and expect["variant"] == "cpu"
    assert source.startswith("profile ") and "no lock yet" in source
    target, _, _, notes = gpu_check.plan(tmp_path, name=None, python=None, image="some/image:tag", engine="docker")
    assert target.python == "/opt/venv/bin/python" and target.profile is None
    assert notes and "no embedded lock" in notes[0]
    target, _, _, _ = gpu_check.plan(tmp_path, name="img", python=None, image="i", image_python="/usr/bin/python3", engine="docker")
    assert target.python == "/usr/bin/python3"


# -- the lock embedded in an image (<venv>/pylock.toml, io.envmgr.* labels) ---------------------

def _blob(root: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer(files: dict[str, bytes]) -> bytes:
    import gzip
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def make_layout(root: Path, layers: list[dict[str, bytes]], labels: dict | None = None, tag: str = "latest") -> Path:
    """A tiny OCI layout (gzip layers, no python in it): enough to read labels and files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descs = [dict(_blob(root, _layer(f)), mediaType="application/vnd.oci.image.layer.v1.tar+gzip") for f in layers]
    config = {"architecture": "amd64", "os": "linux", "config": {"Labels": labels or {}},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64] * len(descs)}}
    cfg = dict(_blob(root, json.dumps(config).encode()), mediaType="application/vnd.oci.image.config.v1+json")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": cfg, "layers": descs}).encode()
    mdesc = dict(_blob(root, manifest), mediaType="application/vnd.oci.image.manifest.v1+json",
                 annotations={"org.opencontainers.image.ref.name": tag})
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    return root


def envmgr_labels(lock, venv: str = "/opt/venv") -> dict:
    return {"io.envmgr.lock.digest": lock.digest(), "io.envmgr.profile": lock.meta.profile,
            "io.envmgr.variant": lock.meta.variant, "io.envmgr.venv": venv}


CU126 = dict(extra={"nvidia-cudnn-cu12": "9.5.1.17", "nvidia-nccl-cu12": "2.26.2"})


def test_venv_of_and_lock_path():
    from envmgr.gpu import imagelock

    assert imagelock.venv_of(None, None) == "/opt/venv"
    assert imagelock.venv_of("/srv/env/bin/python3.11", None) == "/srv/env"
    assert imagelock.venv_of("/usr/bin/python3", None) == "/opt/venv"
    assert imagelock.venv_of("/usr/bin/python3", {"io.envmgr.venv": "/app/venv/"}) == "/app/venv"
    assert imagelock.lock_path("/app/venv") == "/app/venv/pylock.toml"


def test_find_in_layers_top_down_and_whiteouts():
    import io

    from envmgr.gpu import imagelock

    def layers(*contents):
        return [("application/vnd.oci.image.layer.v1.tar+gzip", (lambda b=_layer(c): io.BytesIO(b))) for c in contents]

    old, new = {"opt/venv/pylock.toml": b"old"}, {"./opt/venv/pylock.toml": b"new"}
    assert imagelock.find_in_layers(layers(old, new), "/opt/venv/pylock.toml") == b"new"
    assert imagelock.find_in_layers(layers(old, {"etc/x": b""}), "/opt/venv/pylock.toml") == b"old"
    assert imagelock.find_in_layers(layers(old, {"opt/venv/.wh.pylock.toml": b""}), "/opt/venv/pylock.toml") is None
    assert imagelock.find_in_layers(layers(old, {"opt/.wh.venv": b""}), "/opt/venv/pylock.toml") is None
    assert imagelock.find_in_layers(layers(old, {"opt/venv/.wh..wh..opq": b""}), "/opt/venv/pylock.toml") is None
    assert imagelock.find_in_layers(layers({"etc/x": b""}), "/opt/venv/pylock.toml") is None


@pytest.fixture
def fake_podman(monkeypatch):
    """pick_engine sees a podman; nothing here runs it (layouts are read in place)."""
    monkeypatch.setattr(runner.shutil, "which", lambda name: f"/usr/bin/{name}")


def test_plan_reads_the_lock_from_an_oci_layout_and_archive(tmp_path, fake_podman):
    import tarfile

    lock = make_lock("cu126", "cu126", "2.7.1+cu126", **CU126)
    layout = make_layout(tmp_path / "img", [{"etc/os-release": b"x"}, {"srv/env/pylock.toml": lock.dumps().encode()}],
                         envmgr_labels(lock, "/srv/env"))
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(layout, arcname=".")
    for ref in (f"oci:{layout}", f"oci:{layout}:latest", f"oci-archive:{archive}", f"oci-archive:{archive}:latest"):
        target, expect, source, notes = gpu_check.plan(tmp_path, name=None, python=None, image=ref, engine="podman")
        assert source == "image lock /srv/env/pylock.toml" and notes == [], ref
        assert expect == gpu_check.expectations_from_lock(lock) and expect["torch"] == "2.7.1+cu126"
        assert target.python == "/srv/env/bin/python" and target.profile is None and target.engine == "podman"
    target, _, _, _ = gpu_check.plan(tmp_path, name=None, python=None, image=f"oci:{layout}", image_python="/usr/bin/python3",
                                     engine="podman")
    assert target.python == "/usr/bin/python3"


def test_plan_profile_name_wins_over_the_image_lock(tmp_path, fake_podman, monkeypatch):
    from envmgr.gpu import imagelock

    write_profile(tmp_path, "cpu", "cpu", "==2.7.1")
    write_lock(tmp_path, make_lock("cpu", "cpu", "2.7.1+cpu"))
    monkeypatch.setattr(imagelock, "read", lambda *a, **k: pytest.fail("the image's lock was read"))
    _, expect, source, notes = gpu_check.plan(tmp_path, name="cpu", python=None, image="oci:/nowhere", engine="podman")
    assert source.startswith("lock ") and expect["variant"] == "cpu" and notes == []


def test_plan_image_without_an_embedded_lock(tmp_path, fake_podman):
    lock = make_lock("cpu", "cpu", "2.7.1+cpu")
    plain = make_layout(tmp_path / "plain", [{"opt/venv/pylock.toml": lock.dumps().encode()}])  # no labels: not envmgr's
    target, expect, source, notes = gpu_check.plan(tmp_path, name=None, python=None, image=f"oci:{plain}", engine="podman")
    assert expect == {} and source is None and target.python == "/opt/venv/bin/python"
    assert len(notes) == 1 and "has no embedded lock (no io.envmgr.lock.digest label" in notes[0]
    gone = make_layout(tmp_path / "gone", [{"etc/x": b""}], envmgr_labels(lock))
    _, expect, source, notes = gpu_check.plan(tmp_path, name=None, python=None, image=f"oci:{gone}", engine="podman")
    assert expect == {} and source is None and "no /opt/venv/pylock.toml in it" in notes[0]


def test_plan_embedded_lock_digest_mismatch_is_a_note(tmp_path, fake_podman):
    lock, other = make_lock("cpu", "cpu", "2.7.1+cpu"), make_lock("cu126", "cu126", "2.7.1+cu126", **CU126)
    layout = make_layout(tmp_path / "img", [{"opt/venv/pylock.toml": lock.dumps().encode()}], envmgr_labels(other))
    _, expect, source, notes = gpu_check.plan(tmp_path, name=None, python=None, image=f"oci:{layout}", engine="podman")
    assert expect["variant"] == "cpu" and source == "image lock /opt/venv/pylock.toml"
    assert len(notes) == 1 and "label says" in notes[0]


def test_bad_embedded_locks_and_layouts_are_one_line_errors(tmp_path, fake_podman):
    lock = make_lock("cpu", "cpu", "2.7.1+cpu")
    broken = make_layout(tmp_path / "broken", [{"opt/venv/pylock.toml": b"lock-version = [oops"}], envmgr_labels(lock))
    alien = make_layout(tmp_path / "alien", [{"opt/venv/pylock.toml": b'lock-version = "1.0"\npackages = []\n'}],
                        envmgr_labels(lock))
    (tmp_path / "not-a-layout").mkdir()
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all")
    cases = [
        (f"oci:{broken}", "embedded lock /opt/venv/pylock.toml is unreadable"),
        (f"oci:{alien}", "not written by envmgr"),
        (f"oci:{broken}:nope", "no image tagged 'nope'"),
        (f"oci:{tmp_path / 'not-a-layout'}", "index.json is missing"),
        (f"oci:{tmp_path / 'nowhere'}", "is not a directory"),
        (f"oci-archive:{tmp_path / 'junk.tar'}", "not a readable archive"),
        (f"oci-archive:{tmp_path / 'none.tar'}", "does not exist"),
    ]
    from envmgr.core.errors import UserError

    for ref, words in cases:
        with pytest.raises(UserError) as exc:
            gpu_check.plan(tmp_path, name=None, python=None, image=ref, engine="podman")
        line = str(exc.value)
        assert "\n" not in line and words in line and ref.split(":", 1)[1].split(":")[0] in line, (ref, line)


@pytest.mark.podman
def test_bad_embedded_lock_through_the_command_line(tmp_path):
    if not shutil.which("podman"):
        pytest.skip("podman is not installed")
    broken = make_layout(tmp_path / "broken", [{"opt/venv/pylock.toml": b"lock-version = [oops"}],
                         envmgr_labels(make_lock("cpu", "cpu", "2.7.1+cpu")))
    line = one_line_error(envmgr("check", "--image", f"oci-archive:{tmp_path / 'none.tar'}", "--engine", "podman", project=tmp_path))
    assert "none.tar does not exist" in line
    line = one_line_error(envmgr("check", "--image", f"oci:{broken}", "--engine", "podman", project=tmp_path))
    assert "embedded lock /opt/venv/pylock.toml is unreadable" in line and "not valid TOML" in line


@pytest.fixture(scope="session")
def locked_image(torch_image, tmp_path_factory) -> tuple[str, object]:
    """``torch_image`` plus an embedded cu126 lock and envmgr's labels (a CPU torch inside: the lock does not match)."""
    lock = make_lock("cu126", "cu126", "2.7.1+cu126", "3.11", **CU126)
    key = hashlib.sha256((torch_image + lock.digest()).encode()).hexdigest()[:12]
    image = f"localhost/envmgr-gpu-test-locked:{key}"
    if subprocess.run(["podman", "image", "exists", image]).returncode != 0:
        ctx = tmp_path_factory.mktemp("locked-image")
        (ctx / "pylock.toml").write_text(lock.dumps())
        labels = " ".join(f"{k}={v}" for k, v in envmgr_labels(lock).items())
        (ctx / "Containerfile").write_text(f"FROM {torch_image}\nCOPY pylock.toml /opt/venv/pylock.toml\nLABEL {labels}\n")
        r = subprocess.run(["podman", "build", "-q", "-t", image, str(ctx)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"could not build the locked test image: {r.stderr.strip()[-300:]}")
    return image, lock


@pytest.mark.podman
@pytest.mark.slow
def test_check_image_against_its_embedded_lock(locked_image, project):
    image, lock = locked_image
    r = envmgr("check", "--image", image, "--engine", "podman", "--json", project=project)
    assert r.returncode == 1, r.stderr
    report = json_out(r)
    jsonschema.validate(report, schema.CHECK_REPORT)
    assert report["expect_source"] == "image lock /opt/venv/pylock.toml" and report["notes"] == []
    assert report["expect"] == gpu_check.expectations_from_lock(lock) and report["target"]["profile"] is None
    assert by_name(report)["torch.cuda_build"]["status"] == "fail"
    r = envmgr("check", "cpu", "--image", image, "--engine", "podman", "--json", project=project)  # a named profile wins
    assert r.returncode == 0, r.stderr
    assert json_out(r)["expect_source"].startswith("lock ") and json_out(r)["expect"]["variant"] == "cpu"
