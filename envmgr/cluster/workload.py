"""One profile's lock, as the cluster stage needs it: the facts that schedule and verify it,
the probe's expectations, and how torchrun meets its peers.

Input: the project and a profile name (its lock must exist: clusters run what was locked,
never a fresh resolution). Output: a ``Workload`` value and pure helpers for the command
lines both engines run (torchrun's rendezvous, the built-in all-reduce smoke test).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..gpu.expect import driver_table, expectations_from_lock
from ..model import lockfile
from ..model.lockfile import LockMeta

DEFAULT_VENV = "/opt/venv"
RDZV_PORT = 29500
# The all-reduce every fresh cluster job can start with: proves the rendezvous and the
# collective across all nodes before any training code runs. Run as `python -c SMOKE`.
SMOKE = """\
import os, time, torch, torch.distributed as dist
backend = "nccl" if torch.cuda.is_available() else "gloo"
dist.init_process_group(backend)
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if backend == "nccl" else torch.device("cpu")
if backend == "nccl":
    torch.cuda.set_device(device)
x = torch.full((1 << 20,), float(rank + 1), device=device)
start = time.perf_counter()
dist.all_reduce(x)
if backend == "nccl":
    torch.cuda.synchronize()
want = world * (world + 1) / 2
ok = bool(torch.all(x == want))
print("envmgr-allreduce: rank %d/%d backend %s host %s sum %g want %g %s %.3f s" % (
    rank, world, backend, os.uname().nodename, float(x[0]), want, "ok" if ok else "WRONG", time.perf_counter() - start), flush=True)
dist.destroy_process_group()
raise SystemExit(0 if ok else 1)
"""


@dataclass(frozen=True)
class Workload:
    name: str  # the profile
    lock_path: Path
    digest: str  # sha256:HEX of the lock file's content
    meta: LockMeta  # the lock's facts: variant, CUDA, driver minimums, arch list, PTX, python, platform
    torch: str
    venv: str  # the venv inside the image
    expect: dict  # what the probe is told to expect (the lock's pins + the driver table)
    # (platform, that platform's facts) for each platform of the lock: one pair for most locks
    views: tuple = ()

    @property
    def gpu(self) -> bool:
        """A CUDA lock: GPUs requested, GPU affinity; a cpu lock gets neither."""
        return bool(self.meta.cuda)

    @property
    def short_digest(self) -> str:
        return self.digest.split(":", 1)[-1][:16]

    def facts(self) -> dict:
        return {"profile": self.name, "lock": str(self.lock_path), "lock_digest": self.digest, "variant": self.meta.variant,
                "cuda": self.meta.cuda or None, "min_driver": self.meta.min_driver or None,
                "toolkit_driver": self.meta.toolkit_driver or None, "arch_list": list(self.meta.arch_list), "ptx": self.meta.ptx or None,
                "torch": self.torch, "python": self.meta.python,
                "platform": self.meta.platform if len(self.views) <= 1 else list(self.meta.all_platforms)}


def load(project: Path, name: str) -> Workload:
    """The workload of profile ``name``; exit 2 when it has no lock."""
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise UserError(f"{name!r} is not a profile name")
    path = lockfile.lock_path(project, name)
    if not path.is_file():
        raise UserError(f"profile {name!r} has no lock ({path} does not exist)", hint=f"run `envmgr lock {name}` first")
    lock = lockfile.read(path)
    venv = DEFAULT_VENV
    profile_file = project / "profiles" / f"{name}.toml"
    if profile_file.is_file():
        from ..model import profiles

        venv = str(profiles.load(project, name).image.get("venv") or DEFAULT_VENV)
    m = lock.meta
    torch = lock.package("torch")
    expect = dict(expectations_from_lock(lock), driver_table=driver_table())
    return Workload(name=name, lock_path=path, digest=lock.digest(), meta=m, torch=torch.version if torch else "",
                    venv=venv.rstrip("/") or "/", expect=expect,
                    views=tuple((p, lock.for_platform(p).meta) for p in lock.platforms))


def check_counts(nodes: int, gpus_per_node: int | None, work: Workload, procs_per_node: int | None = None) -> tuple[int, int]:
    """``(gpus, procs)`` per node from the flags, or exit 2: nodes and processes at least one;
    GPUs only for a CUDA lock (default 1 there, 0 for cpu); one process a GPU by default."""
    if nodes < 1:
        raise UserError(f"--nodes {nodes}: must be 1 or more")
    if gpus_per_node is None:
        gpus_per_node = 1 if work.gpu else 0
    if gpus_per_node < 0:
        raise UserError(f"--gpus-per-node {gpus_per_node}: must be 0 or more")
    if gpus_per_node and not work.gpu:
        raise UserError(f"--gpus-per-node {gpus_per_node}: profile {work.name!r} is a {work.meta.variant} lock, it uses no GPU",
                        hint="drop --gpus-per-node, or use a CUDA profile")
    if procs_per_node is None:
        procs_per_node = gpus_per_node or 1
    if procs_per_node < 1:
        raise UserError(f"--procs-per-node {procs_per_node}: must be 1 or more")
    return gpus_per_node, procs_per_node


def torchrun_args(nodes: int, procs: int, endpoint: str, rdzv_id: str) -> list[str]:
    """torchrun's elastic rendezvous (c10d): every node runs the same line; ranks are handed
    out by the rendezvous, so no node needs its own rank."""
    return [f"--nnodes={nodes}", f"--nproc-per-node={procs}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", f"--rdzv-id={rdzv_id}", "--max-restarts=0"]


def train_command(python: str, command: list[str] | tuple[str, ...]) -> list[str]:
    """What torchrun starts on each process: the user's script and arguments, or the smoke
    all-reduce through the environment's own interpreter."""
    if command:
        return list(command)
    return ["--no-python", python, "-c", SMOKE]
