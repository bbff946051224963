"""What GPU runtimes read from an image's config, for a CUDA lock (nothing for a cpu one).

As NVIDIA's own CUDA images set them (see the README's "GPU runtimes" section):

- ``NVIDIA_VISIBLE_DEVICES=all``: the NVIDIA Container Toolkit and enroot/pyxis's hook mount
  the driver only when it is set (Slurm restricts the GPUs by gres, Kubernetes by the device
  plugin, docker by ``--gpus``);
- ``NVIDIA_DRIVER_CAPABILITIES=compute,utility``: libcuda and nvidia-smi, nothing more;
- ``NVIDIA_REQUIRE_CUDA``: the runtime refuses, before any user code, a driver that cannot run
  the lock's CUDA: ``cuda>=X.Y``, or (space: or) the driver branch the lock's minimum admits
  through CUDA's minor-version compatibility (``driver>=MAJOR.MINOR``), when that minimum is
  known and below the toolkit's own driver;
- ``LD_LIBRARY_PATH`` with ``/usr/local/nvidia/lib:/usr/local/nvidia/lib64``, where GKE-style
  device plugins mount the driver.
"""

from __future__ import annotations

from ..model.gpucompat import version_tuple

DRIVER_DIRS = "/usr/local/nvidia/lib:/usr/local/nvidia/lib64"


def require_cuda(cuda: str, min_driver: str = "", toolkit_driver: str = "") -> str:
    """``NVIDIA_REQUIRE_CUDA``'s value: ``cuda>=X.Y`` plus the minor-version-compatibility branch."""
    major_minor = ".".join(cuda.split(".")[:2])
    clauses = [f"cuda>={major_minor}"]
    if min_driver and (not toolkit_driver or version_tuple(min_driver) < version_tuple(toolkit_driver)):
        clauses.append("driver>=" + ".".join(map(str, version_tuple(min_driver)[:2])))
    return " ".join(clauses)


def nvidia_env(cuda: str, min_driver: str = "", toolkit_driver: str = "", *, ld_library_path: str = "") -> dict:
    """The four variables for a CUDA lock (``cuda`` set); {} for a cpu or ROCm one.
    ``ld_library_path`` is the base's, kept after the driver's directories."""
    if not cuda:
        return {}
    return {
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "NVIDIA_REQUIRE_CUDA": require_cuda(cuda, min_driver, toolkit_driver),
        "LD_LIBRARY_PATH": ":".join(filter(None, [DRIVER_DIRS, ld_library_path])),
    }
