"""The cluster commands through the CLI, as users run them: bad input is one line, exit 2,
nothing written; a tag is resolved to its digest through a real registry (docker-registry
on 127.0.0.1 with htpasswd auth); the sbatch script asks for what it was told.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from envmgr.core import files
from envmgr.model import lockfile

REPO = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "cd" * 32


def envmgr(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "envmgr", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    (root / "profiles").mkdir(parents=True)
    base = lockfile.read(REPO / "locks" / "pylock.default.toml")
    files.write_atomic(lockfile.lock_path(root, "gpu"), replace(base, meta=replace(base.meta, profile="gpu")).dumps())
    cpu = replace(base.meta, profile="cpu", variant="cpu", cuda="", min_driver="", toolkit_driver="", arch_list=(), ptx="")
    files.write_atomic(lockfile.lock_path(root, "cpu"), replace(base, meta=cpu).dumps())
    (root / "profiles" / "nolock.toml").write_text('variant = "cpu"\ntorch = "==2.7.1"\npython = "3.11"\n')
    return root


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("ref,says", [
    ("not an image", "not an image reference"),
    ("oci:/tmp/layout", "not a registry reference"),
    ("registry.example/Team/Train:v1", "bad repository name"),
    ("registry.example/team/train", "no tag or digest"),
    ("registry.example/team/train@sha256:1234", "bad digest"),
    ("", "empty image reference"),
])
def test_k8s_bad_image_reference(project, tmp_path, ref, says):
    out = tmp_path / "out"
    one_line_error(envmgr("cluster", "k8s", "gpu", "--image", ref, "--output", str(out), env={"ENVMGR_PROJECT": str(project)}), says)
    assert not out.exists()


def test_k8s_and_slurm_refuse_zero_nodes_and_a_profile_without_a_lock(project, tmp_path):
    env = {"ENVMGR_PROJECT": str(project)}
    image = f"registry.example/team/train@{DIGEST}"
    out, script = tmp_path / "out", tmp_path / "job.sbatch"
    one_line_error(envmgr("cluster", "k8s", "gpu", "--image", image, "--nodes", "0", "-o", str(out), env=env), "--nodes 0")
    one_line_error(envmgr("cluster", "slurm", "gpu", "--nodes", "0", "-o", str(script), env=env), "--nodes 0")
    one_line_error(envmgr("cluster", "k8s", "nolock", "--image", image, "-o", str(out), env=env), "has no lock", "envmgr lock nolock")
    one_line_error(envmgr("cluster", "slurm", "nolock", "-o", str(script), env=env), "has no lock")
    one_line_error(envmgr("cluster", "slurm", "missing", "-o", str(script), env=env), "has no lock")
    one_line_error(envmgr("cluster", "k8s", "cpu", "--image", image, "--gpus-per-node", "8", "-o", str(out), env=env), "uses no GPU")
    one_line_error(envmgr("cluster", "slurm", "gpu", "--image", image, "--venv", "-o", str(script), env=env), "exclusive")
    one_line_error(envmgr("cluster", "k8s", "gpu", "--image", image, "--namespace", "Bad_NS", "-o", str(out), env=env), "namespace")
    one_line_error(envmgr("cluster", "k8s", "gpu", "--image", image, "--memory-per-node", "lots", "-o", str(out), env=env), "quantity")
    assert not out.exists() and not script.exists()


def test_k8s_tag_of_an_unreachable_registry_is_an_error(project, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    proc = envmgr("cluster", "k8s", "gpu", "--image", f"127.0.0.1:{port}/team/train:v1", "-o", str(out),
                  env={"ENVMGR_PROJECT": str(project)})
    one_line_error(proc, "cannot resolve the tag", "sha256")
    assert not out.exists()


def test_report_bad_input(tmp_path):
    one_line_error(envmgr("cluster", "report", str(tmp_path / "missing.log")), "no such file")
    junk = tmp_path / "junk.log"
    junk.write_bytes(b"\x00\xff not json {\n{\"a\": 1}\n")
    one_line_error(envmgr("cluster", "report", str(junk)), "no envmgr check output")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(envmgr("cluster", "report", str(empty)), "no envmgr check output")


def test_report_unreadable_file(tmp_path):
    """A path that is there but cannot be read (a socket: root reads every plain file)."""
    import socket

    path = tmp_path / "checks.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        one_line_error(envmgr("cluster", "report", str(path)), "cannot read", str(path))


# -- the registry resolves a tag --------------------------------------------------------------

def _push(registry, repo: str, tag: str) -> str:
    """A small image (one layer, a config) pushed over the distribution API; its manifest digest."""
    import requests

    auth = (registry.user, registry.password)
    base = f"http://{registry.host}"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = b"hello from envmgr\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()]},
                         "config": {}}).encode()

    def blob(body: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        start = requests.post(f"{base}/v2/{repo}/blobs/uploads/", auth=auth, timeout=30)
        assert start.status_code == 202, start.text
        location = start.headers["Location"]
        location = location if location.startswith("http") else base + location
        put = requests.put(location + ("&" if "?" in location else "?") + f"digest={digest}", data=body, auth=auth,
                           headers={"Content-Type": "application/octet-stream"}, timeout=30)
        assert put.status_code == 201, put.text
        return {"digest": digest, "size": len(body)}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(layer)}],
    }).encode()
    put = requests.put(f"{base}/v2/{repo}/manifests/{tag}", data=manifest, auth=auth, timeout=30,
                       headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert put.status_code == 201, put.text
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def test_k8s_and_slurm_resolve_a_tag_to_its_digest_through_the_registry(project, tmp_path):
    from image_fixtures import Registry

    registry = Registry(tmp_path / "registry")
    try:
        digest = _push(registry, "team/train", "v1")
        env = {"ENVMGR_PROJECT": str(project), "ENVMGR_REGISTRY_USERNAME": registry.user,
               "ENVMGR_REGISTRY_PASSWORD": registry.password}
        ref = f"{registry.host}/team/train:v1"
        proc = envmgr("cluster", "k8s", "gpu", "--image", ref, "-o", str(tmp_path / "k8s"), "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        pinned = f"{registry.host}/team/train@{digest}"
        assert result["image"] == pinned and result["image_resolved"] is True
        text = (tmp_path / "k8s" / "train-job.yaml").read_text()
        assert f"image: \"{pinned}\"" in text and ":v1" not in text.split("given as")[1].split("\n", 1)[1]
        proc = envmgr("cluster", "slurm", "gpu", "--image", ref, "-o", str(tmp_path / "job.sbatch"), env=env)
        assert proc.returncode == 0, proc.stderr
        script = (tmp_path / "job.sbatch").read_text()
        assert f"IMAGE='{registry.host}#team/train@{digest}'" in script and '--container-image="$IMAGE"' in script
        # a tag the registry does not have
        one_line_error(envmgr("cluster", "k8s", "gpu", "--image", f"{registry.host}/team/train:nope",
                              "-o", str(tmp_path / "k8s2"), env=env), "not found")
        assert not (tmp_path / "k8s2").exists()
    finally:
        registry.stop()


# -- the sbatch script ------------------------------------------------------------------------

def test_slurm_asks_for_the_nodes_and_gpus_it_was_told(project, tmp_path):
    script = tmp_path / "job.sbatch"
    proc = envmgr("cluster", "slurm", "gpu", "--nodes", "2", "--gpus-per-node", "8", "-o", str(script),
                  env={"ENVMGR_PROJECT": str(project)})
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    head = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --nodes=2" in head and "#SBATCH --gpus-per-node=8" in head and "#SBATCH --ntasks-per-node=1" in head
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert "srun --ntasks-per-node=1" in text and "check gpu --python \"$VENV\" --json --require-gpu" in text
    assert '"--nproc-per-node=8"' in text and '"--rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT"' in text
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in text and '"--nnodes=$NODES"' in text
    assert "sync gpu --frozen --offline" in text  # each node from the shared cache


def test_slurm_image_flavour_runs_the_probe_through_pyxis(project, tmp_path):
    script = tmp_path / "job.sbatch"
    image = f"registry.example:5000/team/train@{DIGEST}"
    proc = envmgr("cluster", "slurm", "gpu", "--image", image, "--nodes", "4", "--gpus-per-node", "4", "-o", str(script),
                  "--", "train.py", "--lr", "3e-4", env={"ENVMGR_PROJECT": str(project)})
    assert proc.returncode == 0, proc.stderr
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert f"IMAGE='registry.example:5000#team/train@{DIGEST}'" in text and '--container-image="$IMAGE"' in text
    assert "NVIDIA_VISIBLE_DEVICES=all" in text and "/opt/venv/bin/python /envmgr-checks/probe.py" in text
    assert "envmgr sync" not in text and text.rstrip().endswith("train.py --lr 3e-4")
