"""``envmgr cluster slurm`` on a real one-node Slurm (Debian's slurm-wlm and munge).

The fixture starts munged, slurmctld and slurmd for one node on 127.0.0.1, configured with
this machine's real CPU count and memory (``slurmd -C``), everything under a temp dir (no
/etc change); the test ``sbatch --wait``s the script envmgr generates -- the venv flavour:
``envmgr sync`` from the shared cache on the node, ``envmgr check`` on CPU, and a 2-process
``torchrun`` all-reduce over gloo -- then reads the check back with ``envmgr cluster report``.
torch: the CPU wheel this machine's pip config finds (``pip download torch==2.13.0``), else
the network; the test skips, saying so, when neither is there.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import image_fixtures as fx
import pytest
from packaging.utils import parse_wheel_filename

from envmgr.core import files
from envmgr.model import lockfile
from envmgr.model.lockfile import Lock, LockedFile, LockedPackage, LockMeta

TORCH = "2.13.0"
PROFILE = "clustercpu"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "srun", "scontrol")


# -- torch for the job ------------------------------------------------------------------------

@pytest.fixture(scope="session")
def cpu_torch_wheels(tmp_path_factory) -> Path:
    """torch 2.13.0 (CPU) and its dependencies as wheels: a folder standing for shared storage."""
    dest = tmp_path_factory.mktemp("shared-wheels")
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_CONFIG_FILE", "PIP_NO_INDEX")}
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                           "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
                           "-d", str(dest), f"torch=={TORCH}", "numpy"],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0 or not list(dest.glob(f"torch-{TORCH}*.whl")):
        pytest.skip(f"no torch {TORCH} CPU wheel: neither this machine's pip config (/opt/wheels) nor the network "
                    f"gave one: {proc.stderr.strip()[-300:]}")
    return dest


def write_cpu_project(root: Path, wheels: Path) -> Path:
    """A project whose lock names every wheel in ``wheels`` by file URL, with its sha256."""
    packages = []
    for wheel in sorted(wheels.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        data = wheel.read_bytes()
        url = wheel.resolve().as_uri()
        packages.append(LockedPackage(name=str(name), version=str(version), index=wheels.as_uri(),
                                      wheels=(LockedFile(url=url, sha256=hashlib.sha256(data).hexdigest(), size=len(data)),)))
    inputs = {"requirements": [f"torch=={TORCH}", "numpy"], "variant": "cpu", "python": "3.11"}
    meta = LockMeta(profile=PROFILE, fingerprint=lockfile.fingerprint(inputs), inputs=inputs, resolver="uv",
                    resolver_version="0.13", python="3.11", platform="linux-x86_64", variant="cpu",
                    torch_index=wheels.as_uri())
    lock = Lock(packages=tuple(sorted(packages, key=lambda p: p.key)), meta=meta, requires_python="==3.11.*")
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    (root / "profiles" / f"{PROFILE}.toml").write_text(f'variant = "cpu"\ntorch = "=={TORCH}"\npython = "3.11"\n')
    files.write_atomic(lockfile.lock_path(root, PROFILE), lock.dumps())
    return root


# -- a one-node Slurm -------------------------------------------------------------------------

class Slurm:
    """munged + slurmctld + slurmd for this machine as one node on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: list[subprocess.Popen] = []
        node = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
        fields = dict(kv.split("=", 1) for kv in node.split())
        self.node = fields.pop("NodeName")
        self.cpus, self.memory = int(fields["CPUs"]), int(fields["RealMemory"])
        munge = root / "munge"
        munge.mkdir(mode=0o711)
        (root / "state").mkdir()
        (root / "spool").mkdir()
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.socket = munge / "munge.socket"
        (root / "plugstack.conf").write_text("")  # no site plugins (pyxis) in the test cluster
        self.conf = root / "slurm.conf"
        node_line = " ".join(f"{k}={v}" for k, v in fields.items() if k != "UpTime")
        self.conf.write_text("\n".join([
            "ClusterName=envmgrtest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={fx.free_port()}",
            f"SlurmdPort={fx.free_port()}",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.socket}",
            "CredType=cred/munge",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'slurmd.log'}",
            f"PlugStackConfig={root / 'plugstack.conf'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            f"NodeName={self.node} NodeAddr=127.0.0.1 {node_line} State=UNKNOWN",
            f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))
        self.env = {"SLURM_CONF": str(self.conf)}
        log = open(root / "daemons.log", "w")
        try:
            self._start(["munged", "-F", "--force", "-S", str(self.socket), f"--key-file={key}",
                         f"--log-file={munge / 'munged.log'}", f"--pid-file={munge / 'munged.pid'}",
                         f"--seed-file={munge / 'munged.seed'}"], log)
            if not fx.wait_until(self.socket.exists, 15):
                raise RuntimeError("munged did not start")
            self._start(["slurmctld", "-D", "-f", str(self.conf)], log)
            self._start(["slurmd", "-D", "-f", str(self.conf), "-N", self.node], log)
            if not fx.wait_until(lambda: self.state() == "idle", 60):
                raise RuntimeError(f"the node did not come up ({self.state()!r}): {self.logs()}")
        except BaseException:
            self.stop()
            raise

    def _start(self, argv: list[str], log) -> None:
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def state(self) -> str:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True,
                              env={**os.environ, **self.env}, timeout=30)
        return proc.stdout.strip()

    def logs(self) -> str:
        parts = []
        for name in ("daemons.log", "slurmctld.log", "slurmd.log"):
            f = self.root / name
            if f.exists():
                parts.append(f"--- {name}\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()


@pytest.fixture
def slurm(tmp_path_factory):
    missing = [d for d in DAEMONS if not shutil.which(d)]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the one-node Slurm runs its daemons as root")
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


# -- the test ---------------------------------------------------------------------------------

def test_sbatch_runs_the_generated_script_on_a_real_one_node_slurm(slurm, cpu_torch_wheels, tmp_path):
    project = write_cpu_project(tmp_path / "project", cpu_torch_wheels)
    script = tmp_path / "job.sbatch"
    gen = fx.envmgr("cluster", "slurm", PROFILE, "--venv", "--procs-per-node", "2", "--output", str(script),
                 env={"ENVMGR_PROJECT": str(project)})
    assert gen.returncode == 0, gen.stderr
    text = script.read_text()
    assert "#SBATCH --nodes=1" in text and "--gpus-per-node" not in text  # a cpu lock asks for no GPU
    assert "srun --ntasks-per-node=1" in text and '"--nproc-per-node=2"' in text

    # envmgr as the nodes run it: this checkout, through the interpreter running the tests
    launcher = tmp_path / "envmgr"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -m envmgr \"$@\"\n")
    launcher.chmod(0o755)
    checks, out = tmp_path / "checks", tmp_path / "job.out"
    env = {**os.environ, **slurm.env, "ENVMGR": str(launcher), "ENVMGR_PROJECT": str(project),
           "ENVMGR_CACHE_DIR": str(tmp_path / "shared-cache"), "ENVMGR_NODE_VENV": str(tmp_path / "node-venv"),
           "ENVMGR_CHECK_DIR": str(checks), "MASTER_PORT": str(fx.free_port()), "ENVMGR_NO_PROGRESS": "1"}
    start = time.monotonic()
    job = subprocess.run(["sbatch", "--wait", f"--output={out}", str(script)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=900)
    seconds = time.monotonic() - start
    log = out.read_text(errors="replace") if out.exists() else ""
    assert job.returncode == 0, f"sbatch --wait: {job.stdout}{job.stderr}\n--- job output\n{log[-4000:]}\n{slurm.logs()}"
    print(f"sbatch --wait of the generated script: {seconds:.1f} s on {slurm.node} ({slurm.cpus} CPUs, {slurm.memory} MiB)")

    # the check ran on the node and passed on CPU; the 2-process all-reduce summed over gloo
    doc = checks / f"{slurm.node}.json"
    assert doc.is_file(), sorted(p.name for p in checks.iterdir())
    for rank in (0, 1):
        assert re.search(rf"envmgr-allreduce: rank {rank}/2 backend gloo host \S+ sum 3 want 3 ok", log), log[-3000:]
    assert re.search(rf"^{re.escape(slurm.node)}\s+none\s+none\s+{re.escape(TORCH)}\+cpu\s.*\bok\s*$", log, re.M), log

    # and the report reads the node's row back
    report = fx.envmgr("cluster", "report", str(checks))
    assert report.returncode == 0, report.stderr
    row = [line for line in report.stdout.splitlines() if line.startswith(slurm.node + " ")]
    assert row and row[0].split()[-1] == "ok", report.stdout
    data = fx.envmgr("cluster", "report", str(checks), "--json")
    import json

    summary = json.loads(data.stdout)
    assert summary["nodes"] == 1 and summary["failed"] == 0
    (only,) = summary["rows"]
    assert only["node"] == slurm.node and only["torch"] == f"{TORCH}+cpu"
    assert only["checks"]["cpu.matmul_fp32"] == "pass" and only["checks"]["torch.version"] == "pass"
