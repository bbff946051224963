"""What ``envmgr up`` runs, decided and checked before any container: a ``Spec``, and the
``docker run`` / ``podman run`` lines and compose file that say the same."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError
from ..model import lockfile
from ..oci import modes as md
from ..oci import plan

_SIZE = re.compile(r"\d+(\.\d+)?[bkmg]?", re.IGNORECASE)
KEY_FILES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


@dataclass(frozen=True)
class UpOptions:
    name: str = "default"
    mode: str | None = None  # default: the image's first mode that is not shell, else shell
    gpus: str = "auto"  # auto | all | none | N
    workspace: Path | None = None
    port: int | None = None  # host port (default: the mode's own)
    memory: str = ""
    cpus: str = ""
    shm_size: str = "1g"  # DataLoader workers share tensors through /dev/shm: docker's 64m is not enough
    detach: bool = False
    print_only: bool = False
    bind: str = "127.0.0.1"


@dataclass(frozen=True)
class Spec:
    profile: str
    image: str  # the image's digest tag
    mode: str
    container: str  # the container's name
    user: str  # the image's user name (for the ssh command)
    gpus: str  # "none", "all" or a count
    port: int | None  # host port of the mode's port
    inside: int | None  # the mode's port in the container
    bind: str
    workspace: str = ""  # host directory bound at /workspace
    memory: str = ""
    cpus: str = ""
    shm_size: str = "1g"
    env: dict = field(default_factory=dict)  # PUBLIC_KEY for ssh ("" passes the caller's through)
    detach: bool = False

    @property
    def command(self) -> list[str]:
        return [self.mode]


def _size(value: str, flag: str) -> str:
    if value and not _SIZE.fullmatch(value):
        raise UserError(f"{flag} {value!r} is not a size", hint="e.g. 8g, 512m")
    return value


def _gpus(value: str, cuda: str, *, check_host: bool) -> str:
    value = (value or "auto").strip().lower()
    if value not in ("auto", "all", "none") and not (value.isdigit() and int(value) > 0):
        raise UserError(f"--gpus {value!r}: expected all, none, auto or a count")
    if value == "none" or (value == "auto" and not cuda):
        return "none"
    if not cuda:
        raise UserError("the lock is a cpu build: it uses no GPU", hint="drop --gpus, or pass --gpus none")
    if not check_host:
        return "all" if value == "auto" else value
    from ..host.detect import detect

    if (detect().driver or "none").lower() == "none":  # ENVMGR_DRIVER_VERSION=none: a CPU host
        if value == "auto":
            return "none"
        raise UserError("no NVIDIA GPU here (no driver found)", hint="run on a GPU machine, or pass --gpus none")
    return "all" if value == "auto" else value


def public_key(environ: dict, home: Path) -> str:
    """PUBLIC_KEY from the environment, else the first of ~/.ssh/id_*.pub; "" if none."""
    if environ.get("PUBLIC_KEY", "").strip():
        return environ["PUBLIC_KEY"].strip()
    for name in KEY_FILES:
        p = home / ".ssh" / name
        if p.is_file():
            return p.read_text().strip()
    return ""


def spec(project: Path, opts: UpOptions, *, environ: dict, home: Path) -> Spec:
    """The checked ``Spec``: a mode the image has, GPUs the host has (unless printing), sizes."""
    lock = lockfile.read(lockfile.lock_path(project, opts.name))
    conf = plan.profile_image(project, opts.name)
    modes = md.modes_of(conf)
    md.check_lock(modes, lock)
    mode = md.check_name(opts.mode, "--mode") if opts.mode else next((m for m in modes if m != "shell"), "shell")
    if mode not in modes:
        raise UserError(f"the image of {opts.name!r} has no {mode} mode (it has: {', '.join(modes)})",
                        hint=f"add \"{mode}\" to [image] modes in profiles/{opts.name}.toml")
    inside = md.PORTS[mode]
    port = opts.port if opts.port is not None else inside
    if port is not None and not 0 < port < 65536:
        raise UserError(f"--port {port} is not a port number")
    workspace = ""
    if opts.workspace is not None:
        if not opts.workspace.is_dir():
            raise UserError(f"--workspace {opts.workspace} is not a directory")
        workspace = str(opts.workspace.resolve())
    if opts.cpus:
        try:
            if float(opts.cpus) <= 0:
                raise ValueError
        except ValueError:
            raise UserError(f"--cpus {opts.cpus!r} is not a positive number")
    env = {}
    if mode == "ssh":
        env["PUBLIC_KEY"] = public_key(environ, home)
        if not env["PUBLIC_KEY"] and not opts.print_only:
            raise UserError("no public key to log in with", hint="set PUBLIC_KEY, or make one: ssh-keygen -t ed25519")
    tag = plan.tags_of(lock, conf.get("tag") or plan.default_tag(lock))[0]
    return Spec(profile=opts.name, image=tag, mode=mode, container=f"envmgr-{opts.name.lower()}-{mode}",
                user=conf.get("user", plan.DEFAULT_USER), gpus=_gpus(opts.gpus, lock.meta.cuda, check_host=not opts.print_only),
                port=port if inside else None, inside=inside, bind=opts.bind, workspace=workspace,
                memory=_size(opts.memory, "--memory"), cpus=opts.cpus, shm_size=_size(opts.shm_size, "--shm-size"),
                env=env, detach=opts.detach)


# -- the same as command lines and a compose file -------------------------------------------------

def run_argv(s: Spec, engine: str) -> list[str]:
    """``docker run`` (engine "docker") or ``podman run`` ("podman") for the spec."""
    argv = [engine, "run", "--rm", "--name", s.container]
    argv += ["-d"] if s.detach else (["-it"] if s.mode == "shell" else [])
    if s.port:
        argv += ["-p", f"{s.bind}:{s.port}:{s.inside}"]
    if s.workspace:
        argv += ["-v", f"{s.workspace}:{md.WORKSPACE}"]
    argv += [f"--shm-size={s.shm_size}"]
    argv += [f"--memory={s.memory}"] * bool(s.memory) + [f"--cpus={s.cpus}"] * bool(s.cpus)
    if s.gpus != "none":
        if engine == "podman":
            ids = ["all"] if s.gpus == "all" else [str(i) for i in range(int(s.gpus))]
            argv += [a for i in ids for a in ("--device", f"nvidia.com/gpu={i}")] + ["--security-opt", "label=disable"]
        else:
            argv += ["--gpus", s.gpus]
    for k, v in s.env.items():
        argv += ["-e", f"{k}={v}" if v else k]
    return argv + [s.image, *s.command]


def compose(s: Spec) -> str:
    """A compose file (docker compose, podman-compose) for the spec; JSON scalars are YAML."""
    q = json.dumps
    shell = s.mode == "shell" or None
    fields = {"image": s.image, "command": s.command, "shm_size": s.shm_size,
              "ports": [f"{s.bind}:{s.port}:{s.inside}"] if s.port else None,
              "volumes": [f"{s.workspace}:{md.WORKSPACE}"] if s.workspace else None,
              "mem_limit": s.memory or None, "cpus": s.cpus or None, "stdin_open": shell, "tty": shell}
    lines = ["services:", f"  {s.container}:", *(f"    {k}: {q(v)}" for k, v in fields.items() if v is not None)]
    if s.env:
        lines.append("    environment:")
        lines += [f"      {k}: {q(v)}" if v else f"      {k}:" for k, v in s.env.items()]
    if s.gpus != "none":
        count = q("all") if s.gpus == "all" else s.gpus
        lines += ["    deploy:", "      resources:", "        reservations:", "          devices:",
                  f"            - {{driver: nvidia, count: {count}, capabilities: [gpu]}}"]
    return "\n".join(lines) + "\n"


def printed(s: Spec) -> str:
    """``--print``: the docker line, the podman line and the compose file."""
    return "\n".join([
        f"# the image, when the engine lacks it: envmgr export-image {s.profile} --load  (honours DOCKER_HOST)",
        "# docker (--gpus through the NVIDIA Container Toolkit)",
        shlex.join(run_argv(s, "docker")),
        "# podman (GPUs through CDI)",
        shlex.join(run_argv(s, "podman")),
        "# compose.yaml",
        compose(s),
    ])
