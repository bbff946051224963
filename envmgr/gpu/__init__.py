"""GPU: prove that an environment computes on this machine, and say which variant fits it.

- ``probe``: the standalone probe (stdlib + torch) run by the target's own interpreter; also
  the pure arch-coverage and version rules both commands decide with.
- ``detect``: the host's NVIDIA driver and GPUs (env override, NVML, nvidia-smi, /proc).
- ``runner``: runs the probe in a local interpreter or inside an image (podman, docker SDK).
- ``check``: ``envmgr check`` -- target, expectations from the lock, judging the result.
- ``doctor``: ``envmgr doctor`` and ``envmgr init --variant auto``.
- ``render`` (tables) and ``schema`` (the documented JSON).
"""

import os

# Where an NVIDIA kernel driver shows itself: its control device and its version files.
NVIDIACTL = "/dev/nvidiactl"
SYS_VERSION = "/sys/module/nvidia/version"
PROC_VERSION = "/proc/driver/nvidia/version"


def driver_absent(dev=NVIDIACTL, sys_version=SYS_VERSION, proc_version=PROC_VERSION) -> bool:
    """True when no NVIDIA kernel driver is loaded or passed in (no control device, no version
    file): NVML, nvidia-smi and /proc would all come back empty, so nothing need be tried.
    A cheap first question for callers that only want the driver (sync on a CPU host): it
    lives here, not in ``detect``, so that asking it imports nothing else."""
    return not any(os.path.exists(p) for p in (dev, sys_version, proc_version))
