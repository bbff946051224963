"""envmgr's own wheels for a bundle: envmgr's wheel and every dependency's (uv included), pinned to
the versions installed here, for the lock's python and platform, so ``bootstrap.sh`` can install
envmgr on a machine with python3 and no network.

Either a folder of them is given (``--tool-wheels``: checked to hold envmgr and every dependency),
or envmgr's wheel is built from its source tree (``pip wheel --no-deps``) and the dependencies'
are downloaded as binaries only (``pip download --only-binary :all: --no-deps`` with the target's
``--python-version`` and ``--platform``): the online step of making a bundle.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ..core.errors import UserError
from ..model.names import canonical


def dependencies(python: str, machine: str) -> dict[str, str]:
    """envmgr's dependencies, recursively, for CPython ``python`` on Linux ``machine``: name -> the version installed here."""
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = {**default_environment(), "python_version": python, "python_full_version": f"{python}.0",
           "platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux", "extra": ""}
    pins: dict[str, str] = {}
    todo = ["envmgr"]
    while todo:
        name = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise UserError(f"{name}, which envmgr needs, is not installed here: cannot bundle its wheel",
                            hint="install envmgr with its dependencies, or pass --tool-wheels DIR") from None
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            key = canonical(req.name)
            if key not in pins and key != "envmgr":
                pins[key] = metadata.version(req.name) if _installed(req.name) else ""
                if not pins[key]:
                    raise UserError(f"{req.name}, which envmgr needs, is not installed here: cannot bundle its wheel",
                                    hint="pass --tool-wheels DIR")
                todo.append(req.name)
    return dict(sorted(pins.items()))


def _installed(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def platform_tags(machine: str) -> list[str]:
    """pip's ``--platform`` values a Linux ``machine`` accepts: manylinux 2.5 to 2.40 and linux."""
    legacy = {"x86_64": ["manylinux1", "manylinux2010", "manylinux2014"], "aarch64": ["manylinux2014"]}.get(machine, [])
    return [f"{t}_{machine}" for t in legacy] + [f"manylinux_2_{n}_{machine}" for n in range(5, 41)] + [f"linux_{machine}"]


def fits(tags, python: str, machine: str) -> bool:
    """Does a wheel with ``tags`` install on CPython ``python`` on Linux ``machine``?"""
    minor = int(python.split(".")[1])
    cp = f"cp3{minor}"
    plats = set(platform_tags(machine)) | {"any"}
    return any(t.platform in plats and (
        (t.interpreter == cp and t.abi in (cp, "none"))
        or (t.abi == "abi3" and t.interpreter.startswith("cp3") and int(t.interpreter[3:]) <= minor)
        or (t.interpreter in ("py3", f"py3{minor}") and t.abi == "none")) for t in tags)


def check_folder(folder: Path, python: str, machine: str) -> list[Path]:
    """The wheels of ``folder`` (``--tool-wheels``), if they hold envmgr and every dependency, for the target."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    if not folder.is_dir():
        raise UserError(f"--tool-wheels {folder}: not a folder")
    found: dict[str, Path] = {}
    for wheel in sorted(folder.glob("*.whl")):
        try:
            name, _, _, tags = parse_wheel_filename(wheel.name)
        except InvalidWheelFilename:
            continue
        if fits(tags, python, machine):
            found[canonical(name)] = wheel
    need = ["envmgr", *dependencies(python, machine)]
    missing = [n for n in need if n not in found]
    if missing:
        raise UserError(f"--tool-wheels {folder} lacks wheels for Python {python} on linux-{machine}: {', '.join(missing)}",
                        hint="leave --tool-wheels out to build and download them (online)")
    return sorted((found[n] for n in need), key=lambda p: p.name)


def gather(dest: Path, python: str, machine: str, *, folder: Path | None, log: Callable[[str], None]) -> list[Path]:
    """envmgr's wheels for the target in ``dest`` (a fresh folder); returns them, sorted."""
    if folder is not None:
        return check_folder(folder, python, machine)
    import envmgr

    source = Path(envmgr.__file__).resolve().parents[1]
    if not (source / "pyproject.toml").is_file():
        raise UserError("envmgr was not installed from a source tree: cannot build its wheel",
                        hint="pass --tool-wheels DIR holding envmgr's wheel and its dependencies'")
    pins = dependencies(python, machine)
    log(f"building envmgr's wheel from {source}")
    _pip("wheel", "--no-deps", "--quiet", "-w", str(dest), str(source))
    log(f"downloading {len(pins)} dependency wheel(s) for Python {python} on linux-{machine}")
    plats = [a for t in platform_tags(machine) for a in ("--platform", t)]
    _pip("download", "--no-deps", "--quiet", "--only-binary", ":all:", "--python-version", python, "--implementation", "cp",
         *plats, "-d", str(dest), *(f"{n}=={v}" for n, v in pins.items()))
    return check_folder(dest, python, machine)


def _pip(*args: str) -> None:
    import os

    env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "315532800"),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()] or ["no output"]
        raise UserError(f"pip {args[0]} failed: {last[-1].strip()}", hint="making a bundle needs the network once")


def requirements(wheels: list[Path]) -> str:
    """``name==version --hash=sha256:...`` per wheel: bootstrap.sh installs exactly these."""
    import hashlib

    from packaging.utils import parse_wheel_filename

    lines = []
    for w in wheels:
        name, version, _, _ = parse_wheel_filename(w.name)
        digest = hashlib.sha256(w.read_bytes()).hexdigest()
        lines.append(f"{name}=={version} --hash=sha256:{digest}")
    return "\n".join(lines) + "\n"
