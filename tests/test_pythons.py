"""envmgr itself on every Python it declares (3.10 to 3.13), as users install it (issue 13).

The quick suite runs on the machine's python3 (3.11). This smoke run installs envmgr's wheel,
with its dependencies from the package index, into a venv of each *other* interpreter found
(pyenv's 3.10, 3.12 and 3.13 here; CI's machine has them too) and runs the pipeline there:
lock a cpu profile against the fixture index, sync it, export its image onto the bookworm
base, check a real CPU torch, and read the knowledge base (``variants``, ``lock --check``).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import image_fixtures as fx
import pytest
from test_gpu_helpers import torch_python  # noqa: F401 (a fixture)
from test_lock import profile_text

REPO = Path(__file__).resolve().parents[1]
OTHERS = ("3.10", "3.12", "3.13")


def interpreter(minor: str) -> str | None:
    """An interpreter of that minor version: pyenv's, else the system's."""
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{minor}.*/bin/python{minor}")))
    for candidate in [*reversed(found), f"/usr/bin/python{minor}", f"/usr/local/bin/python{minor}"]:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)], check=True)
    return next(out.glob("envmgr-*.whl"))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    return fx.bookworm_layout(root / "bookworm", root / "cache")


def run(argv: list[str], project: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "ENVMGR_PROJECT": str(project), "ENVMGR_NO_PROGRESS": "1", "COLUMNS": "200"}
    proc = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.online
@pytest.mark.parametrize("minor", OTHERS)
def test_the_pipeline_on_python(minor: str, wheel: Path, base: Path, fixture_index, torch_python: str,  # noqa: F811
                                tmp_path: Path) -> None:
    python = interpreter(minor)
    if python is None:
        pytest.skip(f"no Python {minor} on this machine")
    venv = tmp_path / f"venv{minor}"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                             timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    envmgr = str(venv / "bin" / "envmgr")
    assert run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.version)"], tmp_path).stdout.startswith(minor)

    project = tmp_path / "proj"
    (project / "profiles").mkdir(parents=True)
    (project / "profiles" / "cpu.toml").write_text(
        profile_text(fixture_index, "cpu", packages=("numpy",), extra=f'[image]\nbase = "oci:{base}"\n'))

    for argv, code in [(["variants", "--torch", "2.7", "--json"], 0), (["lock", "--check", "cpu"], 1),
                       (["lock", "cpu"], 0), (["lock", "--check", "cpu"], 0), (["sync", "cpu", "--json"], 0)]:
        proc = run([envmgr, *argv], project)
        assert proc.returncode == code, f"envmgr {' '.join(argv)} on {minor}: exit {proc.returncode}\n{proc.stderr}"
    synced = json.loads(proc.stdout)
    assert synced["profile"] == "cpu" and (project / ".envmgr" / "venvs" / "cpu" / "bin" / "python").exists()

    proc = run([envmgr, "export-image", "cpu", "-o", str(tmp_path / "image"), "--json"], project)
    assert proc.returncode == 0, proc.stderr
    image = json.loads(proc.stdout)
    assert image["digest"].startswith("sha256:") and (tmp_path / "image" / "index.json").is_file()

    proc = run([envmgr, "check", "--python", torch_python, "--json"], project)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["summary"]["pass"] > 0
