"""Run the probe with a target's own interpreter: a local python, or one inside an image.

The probe's source travels with the command (``python -c SOURCE`` locally and through the
docker SDK, ``python -`` on stdin through podman), so nothing is installed in the target.
That source is a bundle (``probe_source``): the rules module the probe imports
(``model/gpucompat.py``) first, then the probe itself.
The command lines are built by pure functions (``python_argv``, ``podman_argv``,
``docker_run_kwargs``), tested apart from running them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError
from ..model import gpucompat
from .probe import PROGRESS_PREFIX, RULES_MODULE

PROBE_PATH = Path(__file__).with_name("probe.py")
RULES_PATH = Path(gpucompat.__file__)
DEFAULT_IMAGE_PYTHON = "/opt/venv/bin/python"
ENGINES = ("auto", "podman", "docker")


@dataclass(frozen=True)
class ProbeRun:
    doc: dict | None  # the probe's document, None when it printed none
    returncode: int | None
    stderr: str
    progress: tuple[dict, ...] = field(default=())  # checks reported on stderr as they finished
    seconds: float = 0.0
    timed_out: bool = False


# What the target's python runs: the rules registered as the module the probe looks for,
# then the probe as __main__, each compiled under its own file name (for tracebacks).
_BUNDLE = """\
import sys, types
_rules = sys.modules[{name!r}] = types.ModuleType({name!r})
exec(compile({rules!r}, {rules_file!r}, "exec"), _rules.__dict__)
del _rules
exec(compile({probe!r}, "probe.py", "exec"), {{"__name__": "__main__", "__package__": None}})
"""


def probe_source() -> str:
    """The probe and the rules it imports, as one program for ``python -c`` or ``python -``."""
    return _BUNDLE.format(name=RULES_MODULE, rules=RULES_PATH.read_text("utf-8"), rules_file=RULES_PATH.name,
                          probe=PROBE_PATH.read_text("utf-8"))


def python_argv(python: str, expect_json: str, source: str | None = None) -> list[str]:
    return [python, "-c", source if source is not None else probe_source(), "--expect-json", expect_json]


def podman_argv(ref: str, python: str, expect_json: str, *, gpu: bool, podman: str = "podman") -> list[str]:
    """``podman run`` with the probe on stdin; GPUs through CDI when the host has them."""
    argv = [podman, "run", "--rm", "-i", "--shm-size=1g"]
    if gpu:
        argv += ["--device", "nvidia.com/gpu=all", "--security-opt", "label=disable"]
    return argv + ["--entrypoint", python, ref, "-", "--expect-json", expect_json]


def docker_run_kwargs(ref: str, python: str, expect_json: str, *, gpu: bool, source: str | None = None) -> dict:
    """Arguments for ``docker.from_env().containers.run``; GPUs as a device request (``--gpus all``)."""
    kwargs = {
        "image": ref,
        "entrypoint": [python],
        "command": ["-c", source if source is not None else probe_source(), "--expect-json", expect_json],
        "detach": True,
        "shm_size": "1g",
    }
    if gpu:
        kwargs["device_requests"] = [{"count": -1, "capabilities": [["gpu"]]}]  # docker.types.DeviceRequest(**...)
    return kwargs


def parse_output(stdout: str, stderr: str) -> tuple[dict | None, tuple[dict, ...]]:
    """The probe's document (the last JSON line on stdout) and the checks it reported on stderr."""
    doc = None
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                candidate = json.loads(line)
            except ValueError:
                continue
            if isinstance(candidate, dict) and "checks" in candidate:
                doc = candidate
                break
    progress = []
    for line in stderr.splitlines():
        if line.startswith(PROGRESS_PREFIX):
            try:
                progress.append(json.loads(line[len(PROGRESS_PREFIX):]))
            except ValueError:
                pass
    return doc, tuple(progress)


def _decode(data) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def run_command(argv: list[str], *, stdin: str | None = None, timeout: float = 600, env: dict | None = None) -> ProbeRun:
    """Run a probe command in a fresh directory (so nothing in the caller's cwd shadows an
    import); on timeout, kill its whole process group (the probe's --world workers too)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="envmgr-check-") as cwd:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise UserError(f"cannot run {argv[0]}: {exc.strerror or exc}")
        timed_out = False
        try:
            out, err = proc.communicate(stdin.encode() if stdin is not None else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
            out, err = proc.communicate()
    stdout, stderr = _decode(out), _decode(err)
    doc, progress = parse_output(stdout, stderr)
    return ProbeRun(doc, proc.returncode, stderr, progress, time.perf_counter() - start, timed_out)


def run_python(python: str, expect_json: str, *, timeout: float) -> ProbeRun:
    return run_command(python_argv(python, expect_json), timeout=timeout)


def pick_engine(engine: str, ref: str) -> str:
    if engine not in ENGINES:
        raise UserError(f"--engine {engine!r}: unknown engine", hint="auto, podman or docker")
    if engine == "auto":
        engine = "podman" if shutil.which("podman") else "docker"
    if engine == "podman" and not shutil.which("podman"):
        raise UserError("--engine podman: podman is not installed", hint="install podman, or use --engine docker")
    if engine == "docker" and ref.startswith(("oci:", "oci-archive:", "docker-archive:")):
        raise UserError(f"--image {ref}: the docker engine runs images it has loaded, not {ref.split(':', 1)[0]}: paths",
                        hint="use --engine podman, or load the image into docker first")
    return engine


def run_image(ref: str, python: str, expect_json: str, *, engine: str, gpu: bool, timeout: float) -> ProbeRun:
    if engine == "podman":
        run = run_command(podman_argv(ref, python, expect_json, gpu=gpu, podman=shutil.which("podman") or "podman"),
                          stdin=probe_source(), timeout=timeout)
        if run.doc is None and not run.progress and run.returncode in (125, 126, 127):
            last = (run.stderr.strip().splitlines() or [""])[-1]
            what = {125: "podman could not run the image", 126: f"{python} cannot be run in the image",
                    127: f"no {python} in the image"}[run.returncode]
            raise UserError(f"--image {ref}: {what}: {last}", hint="pass --image-python for another interpreter" if run.returncode != 125 else None)
        return run
    return _run_docker(ref, python, expect_json, gpu=gpu, timeout=timeout)


def _run_docker(ref: str, python: str, expect_json: str, *, gpu: bool, timeout: float) -> ProbeRun:
    try:
        import docker
    except ImportError:
        raise UserError("--engine docker needs the docker Python SDK", hint="pip install docker")
    start = time.perf_counter()
    try:
        client = docker.from_env()
        container = client.containers.run(**docker_run_kwargs(ref, python, expect_json, gpu=gpu))
    except docker.errors.ImageNotFound:
        raise UserError(f"--image {ref}: no such image in docker")
    except docker.errors.DockerException as exc:
        raise UserError(f"--image {ref}: docker could not run it: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}")
    timed_out = False
    try:
        try:
            status = container.wait(timeout=timeout)
            code = status.get("StatusCode")
        except Exception:
            timed_out, code = True, None
            container.kill()
        out = _decode(container.logs(stdout=True, stderr=False))
        err = _decode(container.logs(stdout=False, stderr=True))
    finally:
        try:
            container.remove(force=True)
        except Exception:
            pass
    doc, progress = parse_output(out, err)
    if doc is None and not progress and code in (126, 127):
        raise UserError(f"--image {ref}: no {python} in the image", hint="pass --image-python for another interpreter")
    return ProbeRun(doc, code, err, progress, time.perf_counter() - start, timed_out)
