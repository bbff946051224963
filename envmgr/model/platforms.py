"""Target platforms: the keywords profiles and locks use, and what each means to the tools.

Standard library only: the lock model and the fast paths import it.
"""

from __future__ import annotations

# platform keyword -> (uv --python-platform, PEP 508 environment marker)
PLATFORMS = {
    "linux-x86_64": ("x86_64-manylinux_2_28", "sys_platform == 'linux' and platform_machine == 'x86_64'"),
    "linux-aarch64": ("aarch64-manylinux_2_28", "sys_platform == 'linux' and platform_machine == 'aarch64'"),
}
DEFAULT_PLATFORM = "linux-x86_64"
OCI_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}  # platform_machine -> OCI/Go architecture


def machine_of(platform: str) -> str:
    """``linux-aarch64`` -> ``aarch64``: the PEP 508 ``platform_machine`` of a platform keyword."""
    return platform.split("-", 1)[1]


def oci_platform(platform: str) -> str:
    """``linux-aarch64`` -> ``linux/arm64``: the OCI name of a platform keyword."""
    os_, machine = platform.split("-", 1)
    return f"{os_}/{OCI_ARCH.get(machine, machine)}"


def from_oci(name: str) -> str | None:
    """``linux/arm64`` (or ``linux/arm64/v8``) -> ``linux-aarch64``; None for one envmgr has no keyword for."""
    parts = name.split("/")
    if len(parts) < 2:
        return None
    machine = {v: k for k, v in OCI_ARCH.items()}.get(parts[1], parts[1])
    keyword = f"{parts[0]}-{machine}"
    return keyword if keyword in PLATFORMS else None


def wheel_fits(filename: str, platform: str) -> bool:
    """Can a file be installed on ``platform``? An sdist or a pure wheel anywhere; a binary
    wheel where one of its platform tags names the platform's machine (``manylinux_2_28_x86_64``)."""
    if not filename.endswith(".whl"):
        return True
    tags = filename[:-4].split("-")[-1].split(".")
    machine = machine_of(platform)
    return any(t == "any" or t.endswith("_" + machine) for t in tags)


def machine_clause(platforms) -> str:
    """The marker that holds on exactly these platforms (all Linux: the machine tells them apart)."""
    clauses = [f"platform_machine == '{machine_of(p)}'" for p in platforms]
    return clauses[0] if len(clauses) == 1 else "(" + " or ".join(clauses) + ")"


def host() -> str:
    """This machine in a lock's words: ``linux-x86_64``, ``linux-aarch64``."""
    import platform
    import sys

    machine = platform.machine().lower()
    return f"{sys.platform}-{ {'amd64': 'x86_64', 'arm64': 'aarch64'}.get(machine, machine)}"
