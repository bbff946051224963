"""What an environment must be, from its lock (or, before there is one, its profile and the
knowledge base): torch pin, CUDA, cuDNN/NCCL pins, minimum driver, arch list, PTX. ``check``
judges the probe's findings against these; ``imagelock`` reads them from the lock an image
carries.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..model.variants import kb

if TYPE_CHECKING:  # the lock and profile modules load only when a profile is checked
    from ..model import lockfile, profiles


def driver_table() -> dict:
    """CUDA -> [minor-version minimum, toolkit driver]: lets the probe judge any torch build."""
    return {c: [i.min_driver, i.toolkit_driver] for c, i in kb().cuda.items()}


def expectations_from_lock(lock: lockfile.Lock) -> dict:
    m = lock.meta
    torch = lock.package("torch")
    cudnn = next((p.version for p in lock.packages if p.key.startswith("nvidia-cudnn")), "")
    nccl = next((p.version for p in lock.packages if p.key.startswith("nvidia-nccl")), "")
    return {
        "profile": m.profile, "python": m.python, "variant": m.variant, "torch": torch.version if torch else "",
        "cuda": m.cuda, "cudnn": cudnn, "nccl": nccl, "min_driver": m.min_driver, "toolkit_driver": m.toolkit_driver,
        "arch_list": list(m.arch_list), "ptx": m.ptx,
    }


def expectations_from_profile(p: profiles.Profile) -> dict:
    exact = re.fullmatch(r"==\s*(\d+(?:\.\d+)+(?:\+\w+)?)", p.torch.strip()) or re.fullmatch(r"(\d+(?:\.\d+)+)", p.torch.strip())
    version = exact.group(1) if exact else ""
    facts = kb().facts(p.variant, version or "0")
    return {
        "profile": p.name, "python": p.python, "variant": p.variant, "torch": version, "cuda": facts.cuda,
        "min_driver": facts.min_driver, "toolkit_driver": facts.toolkit_driver, "arch_list": list(facts.arch_list),
        "ptx": facts.ptx,
    }


def profile_expectations(project: Path, name: str) -> tuple[dict, str, profiles.Profile]:
    from ..model import lockfile, profiles

    p = profiles.load(project, name)
    path = lockfile.lock_path(project, name)
    if path.is_file():
        return expectations_from_lock(lockfile.read(path).for_host()), f"lock {path}", p
    return expectations_from_profile(p), f"profile {p.path} (no lock yet)", p
