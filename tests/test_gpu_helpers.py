"""Shared fixtures and builders for the GPU tests (check, doctor, probe, detect).

Imported by the other ``test_gpu_*`` modules; holds no tests of its own. Nothing here fakes
torch: tests that run the probe use a real CPU torch (this interpreter's when it has one,
else a cached venv with ``torch==2.13.0`` from the local wheel directory).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from envmgr.model import lockfile
from envmgr.model.variants import kb

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "gpu" / "h200-driver580"
REPO = Path(__file__).resolve().parents[1]
WHEELS = Path("/opt/wheels")
TORCH_PIN = "torch==2.13.0"


# Hosts the tests write for cases the real fixture does not show.
H200_UUID = "GPU-1c39d3e4-490f-07bf-8ab9-5c6aa9787ede"
CSV_HEADER = "index, name, uuid, driver_version, compute_cap, memory.total [MiB], pci.bus_id\n"


def csv_rows(rows: list[tuple]) -> str:
    return CSV_HEADER + "".join(", ".join(str(c) for c in r) + "\n" for r in rows)


def eight_h100_csv(driver: str = "570.124.06") -> str:
    return csv_rows([(i, "NVIDIA H100 80GB HBM3", f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd", driver, "9.0", "81559 MiB",
                      f"00000000:{0x18 + i:02X}:00.0") for i in range(8)])


def rtx5090_csv(driver: str = "570.133.07") -> str:
    return csv_rows([(0, "NVIDIA GeForce RTX 5090", "GPU-5090aaaa-0000-1111-2222-333333333333", driver, "12.0", "32607 MiB",
                      "00000000:01:00.0")])


MIG_DEVICES_XML = """<mig_devices>
			<mig_device>
				<index>0</index>
				<gpu_instance_id>1</gpu_instance_id>
				<compute_instance_id>0</compute_instance_id>
				<device_attributes>
					<shared>
						<multiprocessor_count>60</multiprocessor_count>
						<copy_engine_count>3</copy_engine_count>
					</shared>
				</device_attributes>
				<fb_memory_usage>
					<total>71424 MiB</total>
					<reserved>0 MiB</reserved>
					<used>13 MiB</used>
					<free>71411 MiB</free>
				</fb_memory_usage>
			</mig_device>
			<mig_device>
				<index>1</index>
				<gpu_instance_id>2</gpu_instance_id>
				<compute_instance_id>0</compute_instance_id>
				<device_attributes>
					<shared>
						<multiprocessor_count>16</multiprocessor_count>
					</shared>
				</device_attributes>
				<fb_memory_usage>
					<total>17920 MiB</total>
				</fb_memory_usage>
			</mig_device>
		</mig_devices>"""

MIG_LISTING = f"""GPU 0: NVIDIA H200 (UUID: {H200_UUID})
  MIG 3g.71gb     Device  0: (UUID: MIG-11111111-2222-3333-4444-555555555555)
  MIG 1g.18gb     Device  1: (UUID: MIG-66666666-7777-8888-9999-000000000000)
"""


def mig_xml() -> str:
    """The real H200 ``nvidia-smi -q -x`` with MIG switched on and two instances."""
    text = fixture_text("nvidia-smi-q.xml")
    text = text.replace("<current_mig>Disabled</current_mig>", "<current_mig>Enabled</current_mig>", 1)
    start = text.index("<mig_devices>")
    end = text.index("</mig_devices>") + len("</mig_devices>")
    return text[:start] + MIG_DEVICES_XML + text[end:]


def fixture_text(name: str) -> str:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(f"GPU fixture {path} not present")
    return path.read_text()


def _has_torch(python: str) -> bool:
    r = subprocess.run([python, "-c", "import torch"], capture_output=True, timeout=300)
    return r.returncode == 0


@pytest.fixture(scope="session")
def torch_python() -> str:
    """An interpreter with a real (CPU) torch."""
    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    venv = Path(tempfile.gettempdir()) / f"envmgr-test-torch-py{sys.version_info[0]}{sys.version_info[1]}"
    python = venv / "bin" / "python"
    if python.exists() and _has_torch(str(python)):
        return str(python)
    if not WHEELS.is_dir():
        pytest.skip(f"no torch in {sys.executable} and no {WHEELS} to install {TORCH_PIN} from")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--find-links", str(WHEELS), TORCH_PIN],
                       env=env, capture_output=True, text=True)
    if r.returncode != 0 or not _has_torch(str(python)):
        pytest.skip(f"could not install {TORCH_PIN} from {WHEELS}: {r.stderr.strip()[-300:]}")
    return str(python)


@pytest.fixture(scope="session")
def no_torch_python(tmp_path_factory) -> str:
    """A real interpreter without torch: a bare venv."""
    venv = tmp_path_factory.mktemp("no-torch") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    assert not _has_torch(str(python))
    return str(python)


@functools.cache
def torch_version(python: str) -> str:
    return subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True,
                          check=True).stdout.strip()


@functools.cache
def python_minor(python: str) -> str:
    return subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                          text=True, check=True).stdout.strip()


# -- projects -------------------------------------------------------------------------------

def write_profile(project: Path, name: str, variant: str, torch: str, python: str = "3.11") -> Path:
    path = project / "profiles" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'variant = "{variant}"\ntorch = "{torch}"\npython = "{python}"\n')
    return path


def make_lock(name: str, variant: str, torch: str, python: str = "3.11", *, extra: dict | None = None,
              torch_version_for_facts: str | None = None) -> lockfile.Lock:
    """A real, readable lock (fingerprint and all) with torch and, for CUDA, cuDNN/NCCL pins."""
    k = kb()
    facts = k.facts(variant, torch_version_for_facts or torch)
    index = k.index_url(variant)
    packages = [("torch", torch)] + sorted((extra or {}).items())
    locked = tuple(
        lockfile.LockedPackage(
            name=n, version=v, index=index,
            wheels=(lockfile.LockedFile(url=f"{index}/{n}-{v}-py3-none-any.whl", sha256="0" * 64, size=1),),
        )
        for n, v in packages
    )
    inputs = {"requirements": [f"torch=={torch}"], "variant": variant, "python": python}
    meta = lockfile.LockMeta(
        profile=name, fingerprint=lockfile.fingerprint(inputs), inputs=inputs, resolver="uv", resolver_version="0.13.9",
        python=python, platform="linux-x86_64", variant=variant, torch_index=index, cuda=facts.cuda,
        min_driver=facts.min_driver, toolkit_driver=facts.toolkit_driver, arch_list=facts.arch_list, ptx=facts.ptx,
    )
    return lockfile.Lock(packages=locked, meta=meta)


def write_lock(project: Path, lock: lockfile.Lock) -> Path:
    path = lockfile.lock_path(project, lock.meta.profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(lock.dumps())
    return path


def link_venv(venvs: Path, name: str, python: str) -> None:
    """Make ``venvs/NAME`` the environment of ``python`` (what `envmgr sync NAME` would create)."""
    venvs.mkdir(parents=True, exist_ok=True)
    (venvs / name).symlink_to(Path(python).parent.parent)


def envmgr(*args: str, project: Path | None = None, env: dict | None = None, timeout: float = 300,
           cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real command line (``python -m envmgr``), so exit codes are the real ones."""
    full = dict(os.environ)
    full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
    full["ENVMGR_NO_PROGRESS"] = "1"
    full["COLUMNS"] = "200"
    if project is not None:
        full["ENVMGR_PROJECT"] = str(project)
        full.setdefault("ENVMGR_VENV_DIR", str(project / ".envmgr" / "venvs"))
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "envmgr", *args], capture_output=True, text=True,
                          timeout=timeout, env=full, cwd=str(cwd or project or REPO))


def json_out(result: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (rc {result.returncode}):\n{result.stdout}\n--- stderr\n{result.stderr}")


def fake_nvidia_smi(bin_dir: Path, *, csv: str, xml: str | None = None, plain: str = "", listing: str = "",
                    csv_fails_with_compute_cap: bool = False) -> Path:
    """A tiny ``nvidia-smi`` shell script on PATH that prints recorded outputs by argument."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    data = bin_dir / "smi-data"
    data.mkdir(exist_ok=True)
    (data / "query.csv").write_text(csv)
    (data / "q.xml").write_text(xml or "")
    (data / "plain.txt").write_text(plain)
    (data / "list.txt").write_text(listing)
    if csv_fails_with_compute_cap:  # like drivers older than ~510
        (data / "no-compute-cap").touch()
    script = bin_dir / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'D="{data}"\n'
        'case "$1" in\n'
        '  --query-gpu=*)\n'
        '    case "$1" in *compute_cap*) if [ -e "$D/no-compute-cap" ]; then\n'
        '      echo \'Field "compute_cap" is not a valid field to query.\' >&2; exit 2; fi;; esac\n'
        '    cat "$D/query.csv";;\n'
        '  -q) if [ -s "$D/q.xml" ]; then cat "$D/q.xml"; else exit 9; fi;;\n'
        '  -L) cat "$D/list.txt";;\n'
        '  *) cat "$D/plain.txt";;\n'
        "esac\n"
    )
    script.chmod(0o755)
    return script
