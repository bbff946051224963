"""The jupyter mode and ``envmgr up`` with real components: a profile whose torch comes from the
fixture index and JupyterLab from PyPI, locked by ``envmgr lock``, exported and loaded into
podman through its Docker API, answering over HTTP; ``--print`` output run as printed."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import image_fixtures as fx
import pytest

from envmgr.model import lockfile

pytestmark = pytest.mark.timeout(900)

NAME = "imgjup"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """One envmgr cache for the module (PyPI's JupyterLab files fetched once)."""
    return {"ENVMGR_CACHE_DIR": str(tmp_path_factory.mktemp("up-cache")), "ENVMGR_NO_PROGRESS": "1"}


@pytest.fixture(scope="module")
def jupyter_project(tmp_path_factory, fixture_index, env) -> Path:
    """torch 2.7.1+cpu from the fixture index, jupyterlab from PyPI, modes shell + jupyter."""
    root = tmp_path_factory.mktemp("jup")
    base = fx.bookworm_layout(root / "base", root / "c")
    (root / "p" / "profiles").mkdir(parents=True)
    (root / "p" / "profiles" / f"{NAME}.toml").write_text(
        f'variant = "cpu"\ntorch = "==2.7.1"\npython = "3.11"\npackages = ["jupyterlab"]\n'
        f'torch-index-url = "{fixture_index.torch_url("cpu")}"\n\n'
        f'[image]\nbase = "oci:{base}"\nmodes = ["shell", "jupyter"]\n')
    proc = fx.envmgr("lock", NAME, cwd=root / "p", env=env)
    assert proc.returncode == 0, proc.stderr
    return root / "p"


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory):
    svc = fx.PodmanService(tmp_path_factory.mktemp("podman-api"))
    yield svc.url
    svc.stop()
    ids = fx.podman("images", "-q", "--filter", f"reference=*/envmgr/{NAME}", check=False).stdout.split()
    if ids:
        fx.podman("rmi", "-f", *set(ids), check=False)


def status(port: int, token: str | None) -> int:
    url = f"http://127.0.0.1:{port}/api/status"
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return 0  # not listening yet


def processes(container: str) -> list[tuple[str, str]]:
    """(uid, command line) of every process in the container, read from /proc."""
    script = 'for p in /proc/[0-9]*; do echo "$(stat -c %u $p) $(tr "\\0" " " < $p/cmdline)"; done'
    out = fx.podman("exec", container, "sh", "-c", script).stdout
    return [tuple(line.split(" ", 1)) for line in out.splitlines() if " " in line]


def containers() -> list[str]:
    return fx.podman("ps", "-a", "--format", "{{.Names}}").stdout.split()


def test_jupyter_through_up_token_required_not_root(jupyter_project, env, docker_host, tmp_path):
    port = fx.free_port()
    e = {**env, "DOCKER_HOST": docker_host, "JUPYTER_TOKEN": "s3cret-token-for-tests"}
    proc = fx.envmgr("up", NAME, "--detach", "--port", str(port), "--gpus", "none", cwd=jupyter_project, env=e)
    assert proc.returncode == 0, proc.stderr
    name = f"envmgr-{NAME}-jupyter"
    try:
        assert f"http://127.0.0.1:{port}/lab?token=s3cret-token-for-tests" in proc.stdout
        assert f"podman rm -f {name}" in proc.stderr
        assert status(port, None) == 403
        assert status(port, "wrong") == 403
        assert status(port, "s3cret-token-for-tests") == 200
        server = [(uid, cmd) for uid, cmd in processes(name) if "jupyter-lab" in cmd]
        assert server and all(uid == "1000" for uid, _ in server), server
        assert "--no-browser" in server[0][1]
        listed = fx.podman("exec", name, "jupyter", "server", "list", "--json").stdout
        assert json.loads(listed.splitlines()[0])["token"] == "s3cret-token-for-tests"
        # The image is in the engine now under both tags.
        tags = fx.podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        assert f"localhost/envmgr/{NAME}:torch2.7.1-cpu-py3.11" in tags, tags
        # Running again while it runs: one line, exit 2, the running one untouched.
        again = fx.envmgr("up", NAME, "--detach", "--port", str(fx.free_port()), cwd=jupyter_project, env=e)
        fx.assert_clean_failure(again, "exists already", tmp_path)
        # The port is taken now: one line, exit 2, nothing started.
        fx.podman("rm", "-f", name)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", port))
            taken.listen()
            busy = fx.envmgr("up", NAME, "--detach", "--port", str(port), cwd=jupyter_project, env=e)
        fx.assert_clean_failure(busy, f"port {port} on 127.0.0.1 is taken", tmp_path)
        assert name not in containers()
    finally:
        fx.podman("rm", "-f", name, check=False)


def test_up_print_runs_as_printed_with_a_random_token(jupyter_project, env, docker_host):
    import yaml

    port = fx.free_port()
    proc = fx.envmgr("up", NAME, "--print", "--detach", "--port", str(port), "--memory", "2g", "--cpus", "1",
                     cwd=jupyter_project, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    podman_line = lines[lines.index("# podman (GPUs through CDI)") + 1]
    docker_line = lines[lines.index("# docker (--gpus through the NVIDIA Container Toolkit)") + 1]
    assert docker_line.startswith("docker run ") and f"-p 127.0.0.1:{port}:8888" in docker_line
    assert "--shm-size=1g" in podman_line and "--memory=2g" in podman_line and "--gpus" not in podman_line
    compose = yaml.safe_load(proc.stdout.split("# compose.yaml\n", 1)[1])
    service = compose["services"][f"envmgr-{NAME}-jupyter"]
    assert service["ports"] == [f"127.0.0.1:{port}:8888"] and service["command"] == ["jupyter"]
    assert service["shm_size"] == "1g" and service["mem_limit"] == "2g"

    # The image in the engine (as the printed comment says), then the line as printed.
    loaded = fx.envmgr("export-image", NAME, "--load", cwd=jupyter_project, env={**env, "DOCKER_HOST": docker_host})
    assert loaded.returncode == 0, loaded.stderr
    name = f"envmgr-{NAME}-jupyter"
    try:
        run = subprocess.run(podman_line, shell=True, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert fx.wait_until(lambda: status(port, None) == 403, 60)
        logs = fx.podman("logs", name).stderr + fx.podman("logs", name).stdout
        found = [line for line in logs.splitlines() if "lab?token=" in line and "envmgr:" in line]
        assert len(found) == 1, logs  # printed once
        token = found[0].split("lab?token=")[1].split()[0]
        assert len(token) == 48 and token in fx.podman("exec", name, "jupyter", "server", "list").stdout
        assert status(port, token) == 200
        inspect = json.loads(fx.podman("inspect", name).stdout)[0]
        assert inspect["HostConfig"]["ShmSize"] == 1 << 30 and inspect["HostConfig"]["Memory"] == 2 << 30
        # docker stop is clean: SIGTERM reaches the server through the entrypoint.
        stopped = subprocess.run(["podman", "stop", "-t", "30", name], capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0
    finally:
        fx.podman("rm", "-f", name, check=False)


def test_up_bad_inputs_one_line_exit_2(jupyter_project, env, docker_host, tmp_path, fixture_index):
    e = {**env, "DOCKER_HOST": docker_host}
    before, tree = containers(), sorted(jupyter_project.rglob("*"))
    for args, words in [
        (["--mode", "notebook"], "--mode: unknown mode 'notebook'"),
        (["--mode", "ssh"], f"the image of '{NAME}' has no ssh mode (it has: shell, jupyter)"),
        (["--gpus", "all"], "the lock is a cpu build"),
        (["--gpus", "two"], "--gpus 'two'"),
        (["--memory", "lots"], "--memory 'lots' is not a size"),
        (["--workspace", str(tmp_path / "nope")], "is not a directory"),
    ]:
        fx.assert_clean_failure(fx.envmgr("up", NAME, *args, cwd=jupyter_project, env=e), words, tmp_path)
    proc = fx.envmgr("up", NAME, cwd=jupyter_project, env={**env, "DOCKER_HOST": f"unix://{tmp_path / 'no.sock'}"})
    fx.assert_clean_failure(proc, "cannot reach a container engine", tmp_path)
    # A CUDA lock on a host without a GPU.
    lock = lockfile.read(lockfile.lock_path(jupyter_project, NAME))
    cuda = dataclasses.replace(lock, meta=dataclasses.replace(lock.meta, profile="gpuimg", cuda="12.6", variant="cu126"))
    proj = tmp_path / "gpu"
    fx.write_project(proj, cuda, image={"base": "oci:/nowhere", "modes": ["shell", "jupyter"]})
    proc = fx.envmgr("up", "gpuimg", "--gpus", "all", cwd=proj, env={**e, "ENVMGR_DRIVER_VERSION": "none"})
    fx.assert_clean_failure(proc, "no NVIDIA GPU here", tmp_path)
    printed = fx.envmgr("up", "gpuimg", "--gpus", "2", "--print", cwd=proj, env=e)
    assert printed.returncode == 0, printed.stderr
    assert "--gpus 2" in printed.stdout and "--device nvidia.com/gpu=0 --device nvidia.com/gpu=1" in printed.stdout
    assert "count: 2, capabilities: [gpu]" in printed.stdout
    assert containers() == before and sorted(jupyter_project.rglob("*")) == tree
