"""Images people run (issue 14): GPU-runtime variables, human tags, the entrypoint's modes.

Real components: a bookworm base by mmdebstrap (with openssh-server for the ssh mode), podman +
runc running the images, OpenSSH's client logging in, JupyterLab from PyPI (torch from the
fixture index) answering over HTTP.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import image_fixtures as fx
import pytest

pytestmark = pytest.mark.timeout(900)

SSH_PACKAGES = (*fx.BASE_PACKAGES, "openssh-server")
NVIDIA = ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "NVIDIA_REQUIRE_CUDA", "LD_LIBRARY_PATH")


# -- fixtures: bases and a cache shared by this module's exports --------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict:
    """Bases (plain, with sshd) and one envmgr cache for the module (layers reused)."""
    root = tmp_path_factory.mktemp("modes")
    return {"plain": fx.bookworm_layout(root / "plain", root / "c"),
            "ssh": fx.bookworm_layout(root / "ssh", root / "c", SSH_PACKAGES),
            "env": {"ENVMGR_CACHE_DIR": str(root / "cache"), "ENVMGR_NO_PROGRESS": "1"}}


def cuda_lock(lock):
    meta = dataclasses.replace(lock.meta, variant="cu118", cuda="11.8", min_driver="450.80.02", toolkit_driver="520.61.05")
    return dataclasses.replace(lock, meta=meta)


def project(root: Path, index, base: Path, *, modes=None, lock=None) -> Path:
    image = {"base": f"oci:{base}"}
    if modes is not None:
        image["modes"] = modes
    return fx.write_project(root, lock or fx.make_lock(index), image=image)


def export(proj: Path, shared: dict, *args: str, env: dict | None = None):
    return fx.envmgr("export-image", "imgtest", *args, cwd=proj, env={**shared["env"], **(env or {})})


def export_json(proj: Path, shared: dict, *args: str, env: dict | None = None) -> dict:
    proc = export(proj, shared, *args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def layout_config(path: Path) -> tuple[dict, dict]:
    index = json.loads((path / "index.json").read_bytes())
    blob = path / "blobs" / "sha256"
    manifest = json.loads((blob / index["manifests"][0]["digest"].split(":")[1]).read_bytes())
    return index, json.loads((blob / manifest["config"]["digest"].split(":")[1]).read_bytes())


def env_of(config: dict) -> dict:
    return dict(e.split("=", 1) for e in config["config"]["Env"])


# -- the image config: GPU runtimes, tags, modes, reproducibility (no engine) ------------------

def test_cuda_image_carries_the_runtime_variables_and_human_tags(tmp_path, fixture_index, shared):
    cpu = project(tmp_path / "cpu", fixture_index, shared["plain"])
    first = export_json(cpu, shared, "--output", str(tmp_path / "cpu-img"))
    _, config = layout_config(tmp_path / "cpu-img")
    assert not set(NVIDIA) & set(env_of(config)), env_of(config)
    assert first["tags"][1] == "envmgr/imgtest:torch2.7.1-cpu-py3.11"

    cuda = project(tmp_path / "cuda", fixture_index, shared["plain"], lock=cuda_lock(fx.make_lock(fixture_index)))
    summary = export_json(cuda, shared, "--output", str(tmp_path / "cuda.tar"))
    assert summary["tags"] == [summary["tag"], "envmgr/imgtest:torch2.7.1-cu118-py3.11"]
    assert not any(t.endswith(":latest") for t in summary["tags"])
    with tarfile.open(tmp_path / "cuda.tar") as tf:
        docker = json.loads(tf.extractfile("manifest.json").read())
        index = json.loads(tf.extractfile("index.json").read())
        manifest = json.loads(tf.extractfile(f"blobs/sha256/{summary['digest'].split(':')[1]}").read())
        config = json.loads(tf.extractfile(f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}").read())
    assert docker[0]["RepoTags"] == summary["tags"]
    assert [d["annotations"]["io.containerd.image.name"] for d in index["manifests"]] == summary["tags"]
    assert {d["digest"] for d in index["manifests"]} == {summary["digest"]}
    env = env_of(config)
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["NVIDIA_REQUIRE_CUDA"] == "cuda>=11.8 driver>=450.80"
    assert env["LD_LIBRARY_PATH"].split(":")[:2] == ["/usr/local/nvidia/lib", "/usr/local/nvidia/lib64"]
    c = config["config"]
    assert c["WorkingDir"] == "/workspace" and c["Volumes"] == {"/workspace": {}} and c["User"] == "1000:1000"
    assert c["Entrypoint"] == ["/usr/bin/python3.11", "-I", "/opt/envmgr/entrypoint.py"]
    assert "ExposedPorts" not in c  # shell only: no port


def test_modes_expose_their_ports_and_stay_reproducible(tmp_path, fixture_index, shared):
    proj = project(tmp_path / "p", fixture_index, shared["ssh"], modes=["shell", "ssh"])
    first = export_json(proj, shared, "--output", str(tmp_path / "a"))
    second = export_json(proj, shared, "--output", str(tmp_path / "b"),
                         env={"ENVMGR_CACHE_DIR": str(tmp_path / "fresh"), "TZ": "Asia/Tokyo"})
    assert [layer["cached"] for layer in second["layers"]] == [False] * len(second["layers"])
    assert second["digest"] == first["digest"]
    _, config = layout_config(tmp_path / "a")
    assert config["config"]["ExposedPorts"] == {"2222/tcp": {}}
    # Several tags of one image: still read as one base, by tag or without.
    again = export_json(proj, shared, "--base", f"oci:{tmp_path / 'a'}:torch2.7.1-cpu-py3.11",
                        "--output", str(tmp_path / "c"))
    assert again["base_digest"] == first["digest"]


# -- bad inputs: one line, exit 2, nothing written ----------------------------------------------

def test_modes_the_lock_or_base_cannot_serve(tmp_path, fixture_index, shared):
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (["shell", "notebook"], shared["plain"], "unknown mode 'notebook'"),
        (["ssh"], shared["plain"], "the ssh mode needs sshd"),
        (["jupyter"], shared["ssh"], "the jupyter mode needs jupyterlab"),
        ([], shared["plain"], "[image] modes is empty"),
    ]
    for modes, base, words in cases:
        proj = project(tmp_path / "p", fixture_index, base, modes=modes)
        proc = export(proj, shared, "--output", str(out / "img"))
        fx.assert_clean_failure(proc, words, out)
        assert not (out / "img").exists()
    proc = fx.envmgr("base", "bookworm", "--include", "openssh-server;rm", "--output", str(out / "base"), cwd=tmp_path)
    fx.assert_clean_failure(proc, "is not a Debian package name", out)
    assert list(out.iterdir()) == []


# -- podman runs them ---------------------------------------------------------------------------

def free_port() -> int:
    return fx.free_port()


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def ssh_image(tmp_path_factory, fixture_index, shared):
    """The shell+ssh image, loaded into podman; its name. Removed at the end."""
    fx.podman_ok()
    root = tmp_path_factory.mktemp("ssh-image")
    proj = project(root / "p", fixture_index, shared["ssh"], modes=["shell", "ssh"])
    summary = export_json(proj, shared, "--output", str(root / "img.tar"))
    fx.podman("load", "-i", str(root / "img.tar"))
    yield summary["tags"][1]
    fx.podman("rmi", "-f", summary["outputs"]["config"].split(":")[1], check=False)


@pytest.fixture
def client_key(tmp_path) -> tuple[Path, str]:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key, (tmp_path / "id_ed25519.pub").read_text().strip()


def ssh(port: int, key: Path, user: str, *command: str, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-p", str(port), "-i", str(key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                           "-o", "ConnectTimeout=10", *extra, f"{user}@127.0.0.1", *command],
                          capture_output=True, text=True, timeout=60)


def start(image: str, *args: str, env: dict | None = None, ports: dict | None = None) -> str:
    argv = ["run", "-d", "--rm"]
    for k, v in (env or {}).items():
        argv += ["-e", f"{k}={v}"]
    for host, inside in (ports or {}).items():
        argv += ["-p", f"127.0.0.1:{host}:{inside}"]
    return fx.podman(*argv, image, *args).stdout.strip()


def test_ssh_mode_keys_only_as_the_user_with_own_host_keys(ssh_image, client_key, tmp_path):
    key, public = client_key
    fx.need("ssh", "ssh-keyscan")
    ports = [free_port(), free_port()]
    containers = [start(ssh_image, "ssh", env={"PUBLIC_KEY": public}, ports={p: 2222}) for p in ports]
    try:
        assert all(fx.wait_until(lambda p=p: listening(p), 30) for p in ports)
        run = ssh(ports[0], key, "envmgr", "id -u; python -c 'import torch, sys; print(torch.__version__, sys.prefix)'; pwd")
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["1000", "2.7.1+cpu", "/opt/venv", "/home/envmgr"], run.stdout
        # Root cannot log in, with the same key or at all; passwords are never asked.
        assert ssh(ports[0], key, "root", "true").returncode == 255
        pw = ssh(ports[0], key, "envmgr", "true", extra=("-o", "PreferredAuthentications=password,keyboard-interactive",
                                                         "-o", "PubkeyAuthentication=no"))
        assert pw.returncode == 255 and "Permission denied" in pw.stderr, pw.stderr
        other = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        assert ssh(ports[0], other, "envmgr", "true").returncode == 255
        # Every container its own host keys, made at its start.
        scans = [subprocess.run(["ssh-keyscan", "-t", "ed25519", "-p", str(p), "127.0.0.1"], capture_output=True,
                                text=True, timeout=30).stdout.split()[-1] for p in ports]
        assert scans[0] != scans[1] and all(len(s) > 40 for s in scans)
        # docker stop is clean: the entrypoint forwards SIGTERM, sshd exits at once.
        started = time.monotonic()
        fx.podman("stop", "-t", "20", containers[0])
        assert time.monotonic() - started < 10
    finally:
        for c in containers:
            fx.podman("rm", "-f", c, check=False)


def test_entrypoint_refusals_and_shell(ssh_image, tmp_path):
    def run(*args: str, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
        argv = ["podman", "run", "--rm", "-i"]
        for k, v in (env or {}).items():
            argv += ["-e", f"{k}={v}"]
        return subprocess.run([*argv, ssh_image, *args], capture_output=True, text=True, input=stdin or "", timeout=120)

    for args, env, words in [
        (["ssh"], {"PUBLIC_KEY": "ssh-ed25519 not-base64!"}, "PUBLIC_KEY line 1: the key is not base64"),
        (["ssh"], {"PUBLIC_KEY": "hello world"}, "PUBLIC_KEY line 1 is not an OpenSSH public key"),
        (["ssh"], {}, "no key to log in with"),
        (["jupyter"], {}, "this image has no jupyter mode (it has: shell, ssh)"),
    ]:
        proc = run(*args, env=env)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    root = subprocess.run(["podman", "run", "--rm", "--user", "0", "-e", "PUBLIC_KEY=x", ssh_image, "ssh"],
                          capture_output=True, text=True, timeout=120)
    assert root.returncode == 2 and "does not run as root" in root.stderr
    # No command: a shell in /workspace, the venv on PATH; a command runs as given.
    shell = run(stdin="id -u; pwd; stat -c %u /workspace; command -v python; echo $NVIDIA_VISIBLE_DEVICES.\n")
    assert shell.returncode == 0 and shell.stdout.split() == ["1000", "/workspace", "1000", "/opt/venv/bin/python", "."], shell
    assert run("sh", "-c", "exit 7").returncode == 7
    left = fx.podman("ps", "-a", "--filter", f"ancestor={ssh_image}", "--format", "{{.ID}}").stdout.split()
    assert left == []
