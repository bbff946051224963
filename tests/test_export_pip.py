"""The exported requirements file, installed by real pip from the fixture index, gives exactly
the lock's files -- the same distributions ``envmgr sync`` installs -- and the SBOM of a real
lock validates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_diff_cli import envmgr

from envmgr.model.lockfile import lock_path, read
from envmgr.report import sbom


def write_profile(project: Path, name: str, fixture_index, *, variant: str = "cu126", torch: str = ">=2.7,<2.8",
                  packages: tuple[str, ...] = ("fixture-app",)) -> None:
    (project / "profiles").mkdir(parents=True, exist_ok=True)
    (project / "profiles" / f"{name}.toml").write_text(
        f'variant = "{variant}"\n'
        f'torch = "{torch}"\n'
        'python = "3.11"\n'
        f"packages = {json.dumps(list(packages))}\n"
        f'torch-index-url = "{fixture_index.torch_url(variant)}"\n'
        f'index-url = "{fixture_index.pypi_url}"\n'
    )


def dists(site: Path) -> dict[str, str]:
    """canonical name -> version of every .dist-info under ``site``."""
    from importlib.metadata import PathDistribution

    from envmgr.model.variants import canonical

    out = {}
    for info in site.glob("*.dist-info"):
        meta = PathDistribution(info).metadata
        out[canonical(meta["Name"])] = meta["Version"]
    return out


def site_packages(venv: Path) -> Path:
    (site,) = venv.glob("lib/python*/site-packages")
    return site


@pytest.fixture
def locked(tmp_path: Path, fixture_index) -> Path:
    project = tmp_path / "proj"
    write_profile(project, "gpu", fixture_index)
    res = envmgr(project, "lock", "gpu")
    assert res.returncode == 0, res.stderr
    return project


def test_requirements_install_exactly_the_lock_with_real_pip(locked: Path, tmp_path: Path):
    lock = read(lock_path(locked, "gpu"))
    req = tmp_path / "requirements.txt"
    res = envmgr(locked, "export", "gpu", "--format", "requirements", "--output", str(req))
    assert res.returncode == 0, res.stderr
    text = req.read_text()
    assert "torch==2.7.1+cu126" in text and lock.meta.torch_index in text

    venv = tmp_path / "pipvenv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    report = tmp_path / "report.json"
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull)
    res = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--require-hashes", "--no-deps", "-r", str(req),
         "--report", str(report), "--disable-pip-version-check", "--no-input"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    installed = json.loads(report.read_text())["install"]
    got = {(i["metadata"]["name"].lower(), i["metadata"]["version"], i["download_info"]["archive_info"]["hashes"]["sha256"])
           for i in installed}
    expected = {(p.key, p.version, p.install_file.sha256) for p in lock.packages}
    assert {(n.replace("_", "-"), v, h) for n, v, h in got} == expected
    assert dists(site_packages(venv)).items() >= lock.pins.items()

    # envmgr sync installs the same distributions into its own venv.
    synced = tmp_path / "syncvenv"
    res = envmgr(locked, "sync", "gpu", "--venv", str(synced), "--skip-driver-check", "--frozen", "-q")
    assert res.returncode == 0, res.stderr
    sync_dists = dists(site_packages(synced))
    pip_dists = dists(site_packages(venv))
    for extra in ("pip", "setuptools"):  # what `python -m venv` seeds
        pip_dists.pop(extra, None)
    assert pip_dists == sync_dists == lock.pins


def test_requirements_without_the_torch_index_cannot_install(locked: Path, tmp_path: Path):
    """Why the index lines matter: drop them and pip cannot find torch 2.7.1+cu126."""
    req = tmp_path / "requirements.txt"
    text = envmgr(locked, "export", "gpu").stdout
    req.write_text("\n".join(line for line in text.splitlines() if not line.startswith("--extra-index-url")) + "\n")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--require-hashes", "--no-deps", "-r", str(req), "--dry-run",
         "--ignore-installed", "--target", str(tmp_path / "t"), "--disable-pip-version-check", "--no-input"],
        env=dict(os.environ, PIP_CONFIG_FILE=os.devnull), capture_output=True, text=True, timeout=300,
    )
    assert res.returncode != 0
    assert "torch==2.7.1+cu126" in res.stderr


def test_sbom_of_a_real_lock(locked: Path):
    lock = read(lock_path(locked, "gpu"))
    res = envmgr(locked, "export", "gpu", "--format", "cyclonedx")
    assert res.returncode == 0, res.stderr
    sbom.validate(res.stdout)
    assert res.stdout == sbom.cyclonedx_json(lock)
    data = json.loads(res.stdout)
    comps = {c["name"]: c for c in data["components"]}
    assert set(comps) == set(lock.pins)
    runtime = sorted(n for n, c in comps.items() if {"name": "envmgr:gpu-runtime", "value": "true"} in c.get("properties", []))
    assert runtime == ["nvidia-cuda-runtime-cu12", "nvidia-cudnn-cu12", "nvidia-nccl-cu12"]
    for name, comp in comps.items():
        files = lock.package(name).files
        assert [r["url"] for r in comp["externalReferences"]] == [f.url for f in files]
        assert comp["hashes"][0]["content"] == files[0].sha256
