"""``envmgr up``'s run: a ``Spec`` -> a container, through the docker SDK.

Everything that can be refused is refused before a container exists (engine, image, port,
name); a container that fails to start is removed, with its last log line as the error.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import EnvmgrError, UserError
from ..oci import engine as eng
from .spec import Spec, UpOptions, spec

READY_SECONDS = 120


@dataclass(frozen=True)
class Started:
    container: str
    engine: str  # docker | podman
    url: str  # what to open or run: the lab URL, the ssh command, the attach command
    stop: str  # how to stop it
    exit_code: int | None = None  # when run in the foreground: the container's status


def engine_kind(client) -> str:
    try:
        parts = client.version().get("Components") or []
    except Exception:
        return "docker"
    return "podman" if any("podman" in str(c.get("Name", "")).lower() for c in parts) else "docker"


def check_port(bind: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET) as s:
        try:
            s.bind((bind, port))
        except OSError as exc:
            raise UserError(f"port {port} on {bind} is taken ({exc.strerror})", hint="pick another with --port")


def ensure_image(client, project: Path, s: Spec, log) -> None:
    import docker

    try:
        client.images.get(s.image)
        return
    except docker.errors.ImageNotFound:
        pass
    from ..oci import export

    log(f"{s.image} is not in the engine: exporting and loading it")
    export.export(project, export.Options(name=s.profile, load=True), log=log)


def _kwargs(s: Spec, kind: str, env: dict) -> dict:
    import docker

    kwargs = {"image": s.image, "command": s.command, "name": s.container, "detach": True, "environment": env,
              "shm_size": s.shm_size, "tty": s.mode == "shell", "stdin_open": s.mode == "shell"}
    if s.port:
        kwargs["ports"] = {f"{s.inside}/tcp": (s.bind, s.port)}
    if s.workspace:
        kwargs["volumes"] = {s.workspace: {"bind": "/workspace", "mode": "rw"}}
    if s.memory:
        kwargs["mem_limit"] = s.memory
    if s.cpus:
        kwargs["nano_cpus"] = int(float(s.cpus) * 1e9)
    if s.gpus != "none":
        if kind == "podman":
            ids = ["all"] if s.gpus == "all" else [str(i) for i in range(int(s.gpus))]
            kwargs["devices"] = [f"nvidia.com/gpu={i}" for i in ids]
        else:
            kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1 if s.gpus == "all" else int(s.gpus),
                                                                    capabilities=[["gpu"]])]
    return kwargs


def _last_line(container) -> str:
    try:
        text = container.logs(tail=5).decode("utf-8", "replace").strip()
    except Exception:
        return ""
    return text.splitlines()[-1] if text else ""


def _remove(container) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass


def _wait_ready(container, s: Spec) -> None:
    """Until the mode's port answers on the host; the container's last line if it exits first."""
    deadline = time.monotonic() + READY_SECONDS
    host = "127.0.0.1" if s.bind in ("0.0.0.0", "") else s.bind
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            raise EnvmgrError(f"the container stopped: {_last_line(container) or 'no output'}")
        if not s.port:
            return
        try:
            with socket.create_connection((host, s.port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise EnvmgrError(f"the {s.mode} mode did not answer on port {s.port} within {READY_SECONDS} s: "
                      f"{_last_line(container) or 'no output'}")


def up(project: Path, opts: UpOptions, *, log=None, out=None) -> Started:
    """Run the profile's image in ``opts.mode``; in the foreground unless ``opts.detach``
    (then the logs go to ``out`` until the container stops or Ctrl-C stops it)."""
    log = log or (lambda msg: None)
    s = spec(project, opts, environ=dict(os.environ), home=Path.home())
    client = eng.client()
    kind = engine_kind(client)
    if s.port:
        check_port(s.bind, s.port)
    import docker

    try:
        client.containers.get(s.container)
        raise UserError(f"a container named {s.container} exists already",
                        hint=f"{kind} rm -f {s.container}, or run another mode")
    except docker.errors.NotFound:
        pass
    ensure_image(client, project, s, log)
    env = {k: v for k, v in s.env.items() if v}
    if s.mode == "jupyter":
        env["JUPYTER_TOKEN"] = os.environ.get("JUPYTER_TOKEN", "").strip() or secrets.token_hex(24)
    container = None
    try:
        container = client.containers.run(**_kwargs(s, kind, env))
        _wait_ready(container, s)
    except (EnvmgrError, KeyboardInterrupt):
        if container is not None:
            _remove(container)
        raise
    except Exception as exc:
        if container is not None:
            _remove(container)
        else:
            _remove_named(client, s.container)
        raise EnvmgrError(f"{kind} could not start {s.image}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}")
    host = "127.0.0.1" if s.bind in ("0.0.0.0", "") else s.bind
    url = {"jupyter": f"http://{host}:{s.port}/lab?token={env.get('JUPYTER_TOKEN', '')}",
           "ssh": f"ssh -p {s.port} {s.user}@{host}",
           "shell": f"{kind} attach {s.container}"}[s.mode]
    stop = f"{kind} rm -f {s.container}"
    if s.detach or s.mode == "shell":  # a shell is attached to, not followed
        return Started(s.container, kind, url, stop)
    return Started(s.container, kind, url, stop, exit_code=follow(container, url, out or (lambda line: None)))


def _remove_named(client, name: str) -> None:
    try:
        _remove(client.containers.get(name))
    except Exception:
        pass


def follow(container, url: str, out) -> int:
    """The container's logs until it stops (or Ctrl-C stops it); then it is removed."""
    out(url)
    code = 130
    try:
        for chunk in container.logs(stream=True, follow=True):
            out(chunk.decode("utf-8", "replace").rstrip("\n"))
        code = int(container.wait().get("StatusCode", 0))
    except KeyboardInterrupt:
        try:
            container.stop(timeout=10)
        except Exception:
            pass
    finally:
        _remove(container)
    return code
