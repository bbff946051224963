"""Host: the NVIDIA driver and GPUs of this machine. Takes nothing but the machine; gives
the driver version, the CUDA it supports and each GPU. Used by ``sync`` (the variant's
minimum driver) and ``gpu`` (doctor, check).

- ``driver_absent`` (here): the cheap first question, importing nothing else.
- ``detect``: env override, NVML, nvidia-smi, /proc, with pure parsers of each.
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
