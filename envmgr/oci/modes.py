"""How an image is run: its modes (``[image] modes``: shell, jupyter, ssh) and the runtime config
every envmgr image carries, for the native export (``assemble``) and engine builds (``build``).

Every image gets the stdlib-only entrypoint (``entrypoint.py``, shipped as
``/opt/envmgr/entrypoint.py`` with the modes in ``/opt/envmgr/image.json``), the venv on
``PATH`` for login shells too (``/etc/profile.d``), ``/workspace`` owned by the image's user
as its working directory and a volume, the GPU runtimes' variables for a CUDA lock
(``runtime``), and the modes' ports exposed. ``check`` refuses, before any work, a mode the
lock or the base cannot serve.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import UserError
from . import image as im
from . import layers as ly
from . import runtime

PORTS = {"shell": None, "jupyter": 8888, "ssh": 2222}
DEFAULT = ("shell",)
HOME = "/opt/envmgr"
ENTRYPOINT = f"{HOME}/entrypoint.py"
CONFIG = f"{HOME}/image.json"
PROFILE_D = "/etc/profile.d/envmgr-venv.sh"
WORKSPACE = "/workspace"
SSHD = "/usr/sbin/sshd"
SOURCE = Path(__file__).with_name("entrypoint.py")


def modes_of(conf: dict) -> tuple[str, ...]:
    """The profile's ``[image] modes``, checked; ``("shell",)`` when it names none."""
    raw = conf.get("modes")
    if raw is None:
        return DEFAULT
    if not raw:
        raise UserError("[image] modes is empty", hint=f"name one or more of: {', '.join(PORTS)}")
    for mode in raw:
        check_name(mode, "[image] modes")
    return tuple(dict.fromkeys(raw))


def check_name(mode, where: str) -> str:
    if mode not in PORTS:
        raise UserError(f"{where}: unknown mode {mode!r}", hint=f"known modes: {', '.join(PORTS)}")
    return mode


def check_lock(modes, lock) -> None:
    """The jupyter mode needs JupyterLab in the lock."""
    if "jupyter" in modes and lock.package("jupyterlab") is None:
        name = lock.meta.profile
        raise UserError(f"the jupyter mode needs jupyterlab, and the lock of {name!r} has none",
                        hint=f"add \"jupyterlab\" to packages in profiles/{name}.toml, run `envmgr lock {name}`, "
                             "or drop \"jupyter\" from [image] modes")


def check_base(modes, sshd: str, base_ref: str) -> None:
    """The ssh mode needs OpenSSH's server in the base (``sshd``: its path there, "" if none)."""
    if "ssh" in modes and not sshd:
        raise UserError(f"the ssh mode needs sshd, and the base {base_ref} has no {SSHD}",
                        hint="envmgr base bookworm --include openssh-server (or a base with openssh-server)")


def ports(modes) -> list[int]:
    return [PORTS[m] for m in modes if PORTS[m]]


def image_json(modes, venv: str) -> bytes:
    return im.canonical_json({"modes": list(modes), "venv": venv, "workspace": WORKSPACE, "sshd": SSHD,
                              "ports": {m: p for m, p in PORTS.items() if p and m in modes}})


def profile_d(venv: str) -> bytes:
    return (f"# envmgr: the image's venv for login shells (ssh sessions included)\n"
            f"VIRTUAL_ENV={venv}\nexport VIRTUAL_ENV\n"
            f'case ":$PATH:" in *":{venv}/bin:"*) ;; *) PATH="{venv}/bin:$PATH"; export PATH ;; esac\n').encode()


def files(modes, venv: str) -> dict[str, bytes]:
    """The files every image carries: path in the image -> bytes (the entrypoint is executable)."""
    return {ENTRYPOINT: SOURCE.read_bytes(), CONFIG: image_json(modes, venv), PROFILE_D: profile_d(venv)}


def entries(modes, venv: str, user: str) -> list[ly.Entry]:
    """Top-layer entries: the files, and ``/workspace`` owned by ``user`` ("uid:gid")."""
    uid, gid = (int(x) for x in user.split(":"))
    out = [ly.Entry(p.strip("/"), data=data, executable=p == ENTRYPOINT) for p, data in files(modes, venv).items()]
    return out + [ly.Entry(WORKSPACE.strip("/"), kind="dir", uid=uid, gid=gid)]


def config(modes, *, python: str, lock, conf: dict, ld_library_path: str = "") -> dict:
    """The runtime config: ``with_config``'s keyword arguments beyond PATH, user and labels.
    The profile's ``[image]`` entrypoint, cmd, workdir and env win."""
    meta = lock.meta
    env = {**runtime.nvidia_env(meta.cuda, meta.min_driver, meta.toolkit_driver, ld_library_path=ld_library_path),
           **{str(k): str(v) for k, v in (conf.get("env") or {}).items()}}
    return {"env": env, "workdir": conf.get("workdir") or WORKSPACE,
            "entrypoint": conf.get("entrypoint") or [python, "-I", ENTRYPOINT], "cmd": conf.get("cmd"),
            "exposed_ports": [f"{p}/tcp" for p in ports(modes)], "volumes": [WORKSPACE]}
