"""``envmgr sync`` and ``envmgr run`` through the real CLI, against the fixture index and real uv.

A session fixture locks a small project once (``default``: torch 2.7.1+cu126 with its nvidia
and triton wheels, numpy, fixture-app; ``cpu``: torch 2.7.1+cpu and fixture-app 1.0.0); each
test syncs a private copy of it. Helpers here are shared by the other ``test_sync_*`` modules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixture_index import PYPI, FixtureIndex
from test_lock import cli_env as lock_cli_env
from test_lock import make_project
from test_lock import profile_text as lock_profile_text

from envmgr.core import files
from envmgr.model import lockfile
from envmgr.venv import install

REPO = Path(__file__).resolve().parents[1]
VENVS = Path(".envmgr") / "venvs"


# -- helpers (used by test_sync_faults too) -------------------------------------------------

def profile_text(index: FixtureIndex, variant: str = "cu126", *, packages=("numpy", "fixture-app"), **kw) -> str:
    return lock_profile_text(index, variant, packages=packages, **kw)


def cli_env(project: Path, **extra: str) -> dict[str, str]:
    """test_lock's environment, on a host without a GPU unless a test says otherwise."""
    return lock_cli_env(project, **{"ENVMGR_DRIVER_VERSION": "none", **extra})


def envmgr(project: Path, *args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "envmgr", *args], cwd=project, env=cli_env(project, **env),
                          capture_output=True, text=True, timeout=timeout)


def start(project: Path, *args: str, **env: str) -> subprocess.Popen:
    """The CLI in the background, in a session of its own (so its uv can be killed with it)."""
    return subprocess.Popen([sys.executable, "-m", "envmgr", *args], cwd=project, env=cli_env(project, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def failed(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """Exit ``code`` with one ``error:`` line and no traceback; returns that line."""
    assert proc.returncode == code, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def sync_json(project: Path, *args: str, **env: str) -> dict:
    return json.loads(ok(envmgr(project, "sync", *args, "--json", **env)).stdout)


def venv_of(project: Path, name: str = "default") -> Path:
    return project / VENVS / name


def site(venv: Path) -> Path:
    found = install.site_packages(venv)
    assert found is not None, f"{venv} has no site-packages"
    return found


def installed(venv: Path) -> dict[str, str]:
    return {n: d.version for n, d in install.installed(install.site_packages(venv)).items()}


def pins(project: Path, name: str = "default") -> dict[str, str]:
    return lockfile.read(lockfile.lock_path(project, name)).pins


def vpy(venv: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60)


def assert_exact(project: Path, name: str = "default", venv: Path | None = None) -> None:
    """The venv holds exactly the lock, every file present, imports work, check says so."""
    venv = venv or venv_of(project, name)
    assert installed(venv) == pins(project, name)
    assert install.drift(lockfile.read(lockfile.lock_path(project, name)), venv) == []
    proc = vpy(venv, "import torch, fixture_app, numpy; print(torch.__version__)")
    assert proc.returncode == 0, proc.stderr
    extra = [f"--venv={venv}"] if venv != venv_of(project, name) else []
    ok(envmgr(project, "sync", name, "--check", "--frozen", *extra))


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    out = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else b"<dir or link>"
    return out


def hermetic_subprocess_env(session_cache_dirs: dict, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "ENVMGR_"))}
    env.update(UV_CACHE_DIR=str(session_cache_dirs["uv"]), UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never",
               ENVMGR_CACHE_DIR=str(cache))
    return env


def lock_project(project: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "envmgr", "lock", "--all", "-q"], cwd=project,
                          env={**env, "ENVMGR_PROJECT": str(project), "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="session")
def locked_template(fixture_index: FixtureIndex, tmp_path_factory, session_cache_dirs) -> Path:
    root = make_project(tmp_path_factory.mktemp("sync-template"), {
        "default": profile_text(fixture_index),
        "cpu": profile_text(fixture_index, "cpu", packages=("fixture-app==1.0.0",)),
    })
    lock_project(root, hermetic_subprocess_env(session_cache_dirs, tmp_path_factory.mktemp("lock-cache")))
    return root


@pytest.fixture
def project(locked_template: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "proj"
    shutil.copytree(locked_template, dest, ignore=shutil.ignore_patterns(".envmgr"))
    return dest


# -- sync: the basic contract ---------------------------------------------------------------

def test_sync_creates_exact_venv_then_noop_without_network(project: Path, fixture_index: FixtureIndex) -> None:
    first = sync_json(project)
    assert not first["noop"] and first["created"]
    assert sorted(first["installed"]) == sorted(f"{n}=={v}" for n, v in pins(project).items())
    assert first["removed"] == [] and first["unchanged"] == 0
    assert first["bytes_downloaded"] > 0 and first["seconds"] > 0
    assert first["python"].startswith("3.11.")
    assert_exact(project)
    # only the lock's files, from the URLs it records
    lock = lockfile.read(lockfile.lock_path(project, "default"))
    assert {p.install_file.sha256 for p in lock.packages} == {
        p.name for p in (Path(os.environ["ENVMGR_CACHE_DIR"]) / "files" / "sha256").iterdir()}

    fixture_index.clear_log()
    started = time.monotonic()
    again = sync_json(project)
    wall = time.monotonic() - started
    assert again["noop"] and again["installed"] == [] and again["unchanged"] == len(pins(project))
    assert fixture_index.requests == []
    assert wall < 1.5, wall  # bench/sync.py measures the real figure (< 0.25 s)


def test_noop_works_with_the_index_gone(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    project = make_project(tmp_path, {"default": profile_text(fresh_index, "cpu", packages=("fixture-app",))})
    ok(envmgr(project, "sync"))
    fresh_index.set_offline(True)
    assert sync_json(project)["noop"]


def test_default_profile_default_venv_and_venv_option(project: Path) -> None:
    out = ok(envmgr(project, "sync", "-q"))
    assert out.stdout == ""
    assert venv_of(project).joinpath("pyvenv.cfg").is_file()
    other = project / "elsewhere" / "v"
    data = sync_json(project, "cpu", "--venv", str(other))
    assert data["venv"] == str(other) and not venv_of(project, "cpu").exists()
    assert installed(other) == pins(project, "cpu")
    ok(envmgr(project, "sync", "cpu", "--check", "--venv", str(other)))


def test_venv_dir_from_environment(project: Path, tmp_path: Path) -> None:
    data = sync_json(project, "cpu", ENVMGR_VENV_DIR=str(tmp_path / "venvs"))
    assert data["venv"] == str(tmp_path / "venvs" / "cpu")


def test_switching_locks_removes_extras_and_keeps_unchanged(project: Path) -> None:
    venv = project / "v"
    sync_json(project, "--venv", str(venv))
    data = sync_json(project, "cpu", "--venv", str(venv))
    assert "fixture-app==1.0.0" in data["installed"] and "torch==2.7.1+cpu" in data["installed"]
    assert any(r.startswith("nvidia-cudnn-cu12==") for r in data["removed"])
    assert any(r.startswith("numpy==") for r in data["removed"]) is False  # torch+cpu needs numpy too
    assert data["unchanged"] >= 1  # filelock, typing-extensions, numpy stay as they are
    assert installed(venv) == pins(project, "cpu")


def test_hand_installed_package_is_removed(project: Path, fixture_index: FixtureIndex) -> None:
    venv = venv_of(project)
    ok(envmgr(project, "sync"))
    wheel = fixture_index.wheel_path("filelock-3.0.0-py3-none-any.whl")
    # a package the lock does not have, installed by pip behind envmgr's back
    extra = fixture_index.add(PYPI, None, "stray-pkg", "1.0.0")
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                          "--no-deps", "--no-index", str(extra)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    assert "stray-pkg" in installed(venv) and wheel.exists()
    check = envmgr(project, "sync", "--check")
    assert check.returncode == 1 and "stray-pkg 1.0.0 is not in the lock" in check.stderr
    data = sync_json(project)
    assert data["removed"] == ["stray-pkg==1.0.0"]
    assert_exact(project)


# -- staleness: re-lock, --locked, --frozen ---------------------------------------------------

def test_stale_lock_relocked_locked_fails_frozen_uses_it(project: Path, fixture_index: FixtureIndex) -> None:
    ok(envmgr(project, "sync"))
    before = (lockfile.lock_path(project, "default")).read_bytes()
    (project / "profiles" / "default.toml").write_text(
        profile_text(fixture_index, packages=("numpy", "fixture-app", "torchvision==0.22.1")))
    venv_before = tree(venv_of(project))

    line = failed(envmgr(project, "sync", "--locked"), code=1)
    assert "stale" in line and "--locked" in line and "+torchvision==0.22.1" in line
    assert lockfile.lock_path(project, "default").read_bytes() == before
    assert tree(venv_of(project)) == venv_before

    frozen = sync_json(project, "--frozen")
    assert frozen["noop"] and not frozen["relocked"]

    check = envmgr(project, "sync", "--check")
    assert check.returncode == 1 and "the lock is stale" in check.stderr

    data = sync_json(project)
    assert data["relocked"] and data["installed"] == ["torchvision==0.22.1+cu126"]
    assert "torchvision" in pins(project)
    assert_exact(project)
    assert sync_json(project, "--locked")["noop"]


def test_missing_lock_is_made_unless_locked_or_frozen(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    project = make_project(tmp_path, {"default": profile_text(fixture_index, "cpu", packages=("fixture-app",))})
    line = failed(envmgr(project, "sync", "--locked"), code=1)
    assert "no lock yet" in line
    line = failed(envmgr(project, "sync", "--frozen"))
    assert "no such lock" in line
    assert not (project / "locks").exists() and not (project / ".envmgr" / "venvs").exists()
    data = sync_json(project)
    assert data["relocked"] and lockfile.lock_path(project, "default").is_file()
    assert installed(venv_of(project)) == pins(project)


# -- driver check ---------------------------------------------------------------------------

def test_driver_too_old_stops_before_anything(project: Path) -> None:
    line = failed(envmgr(project, "sync", ENVMGR_DRIVER_VERSION="520.61.05"), code=1)
    assert "520.61.05" in line and "525.60.13" in line and "cu126" in line
    assert "can run: cu117, cu118" in line and "--skip-driver-check" in line
    assert not venv_of(project).exists()
    data = sync_json(project, "--skip-driver-check", ENVMGR_DRIVER_VERSION="520.61.05")
    assert data["warnings"] == []
    assert installed(venv_of(project)) == pins(project)


def test_no_gpu_is_a_warning_and_new_driver_is_silent(project: Path) -> None:
    proc = ok(envmgr(project, "sync", ENVMGR_DRIVER_VERSION="none"))
    assert "warning: no NVIDIA driver found" in proc.stderr and ">= 525.60.13" in proc.stderr
    data = sync_json(project, "cpu", "--venv", str(project / "v2"), ENVMGR_DRIVER_VERSION="none")
    assert data["warnings"] == []  # cpu needs no driver
    data = sync_json(project, "--venv", str(project / "v3"), ENVMGR_DRIVER_VERSION="580.95.05")
    assert data["warnings"] == []


# -- offline and --find-links ------------------------------------------------------------------

def test_offline_from_cache_and_find_links(project: Path, fixture_index: FixtureIndex, tmp_path: Path) -> None:
    ok(envmgr(project, "sync"))
    fixture_index.clear_log()
    data = sync_json(project, "--offline", "--venv", str(tmp_path / "v2"))
    assert data["bytes_downloaded"] == 0 and fixture_index.requests == []
    assert installed(tmp_path / "v2") == pins(project)

    # empty cache: a missing file is an error listing every missing file, nothing created
    empty = {"ENVMGR_CACHE_DIR": str(tmp_path / "empty-cache")}
    line = failed(envmgr(project, "sync", "cpu", "--offline", **empty))
    assert "offline" in line and "torch (torch-2.7.1+cpu-" in line and "fixture-app (fixture_app-1.0.0" in line
    assert not venv_of(project, "cpu").exists()

    # --find-links holding the wheels: same hash checks, no network
    links = tmp_path / "links"
    links.mkdir()
    lock = lockfile.read(lockfile.lock_path(project, "cpu"))
    for p in lock.packages:
        shutil.copy(fixture_index.wheel_path(p.install_file.filename), links)
    data = sync_json(project, "cpu", "--offline", "--find-links", str(links), **empty)
    assert data["bytes_downloaded"] == 0 and fixture_index.requests == []
    assert installed(venv_of(project, "cpu")) == pins(project, "cpu")

    # a wheel with the right name and the wrong bytes is not taken
    bad = tmp_path / "bad-links"
    shutil.copytree(links, bad)
    torch = next(bad.glob("torch-*.whl"))
    torch.write_bytes(torch.read_bytes() + b"tampered")
    line = failed(envmgr(project, "sync", "cpu", "--offline", "--find-links", str(bad), "--venv",
                         str(tmp_path / "v3"), ENVMGR_CACHE_DIR=str(tmp_path / "empty-cache-2")))
    assert "torch (torch-2.7.1+cpu-" in line and not (tmp_path / "v3").exists()


# -- interpreters --------------------------------------------------------------------------

def fake_python(path: Path, version: str) -> Path:
    """An executable that answers the interpreter query as Python ``version`` would."""
    data = {"executable": str(path), "prefix": "/x", "base_prefix": "/x", "version": version,
            "markers": {"python_version": ".".join(version.split(".")[:2]), "python_full_version": version}}
    path.write_text(f"#!/bin/sh\necho '{json.dumps(data)}'\n")
    path.chmod(0o755)
    return path


def test_python_option_and_mismatch(project: Path, tmp_path: Path) -> None:
    real = install.query_python(sys.executable)
    data = sync_json(project, "cpu", "--python", sys.executable)
    assert data["python"] == real.version
    assert os.path.realpath(venv_of(project, "cpu") / "bin" / "python") == os.path.realpath(real.executable)
    assert sync_json(project, "cpu", "--python", sys.executable)["noop"]

    before = tree(project)
    line = failed(envmgr(project, "sync", "cpu", "--python", str(fake_python(tmp_path / "py312", "3.12.4"))))
    assert "Python 3.12.4" in line and "needs Python 3.11" in line
    line = failed(envmgr(project, "sync", "cpu", "--python", str(tmp_path / "nope")))
    assert "nope" in line
    assert tree(project) == before


def test_no_matching_python_names_what_was_found(project: Path) -> None:
    lock = lockfile.read(lockfile.lock_path(project, "cpu"))
    from dataclasses import replace

    files.write_atomic(lockfile.lock_path(project, "cpu"), replace(lock, meta=replace(lock.meta, python="3.99")).dumps())
    before = tree(project)
    line = failed(envmgr(project, "sync", "cpu", "--frozen"))
    assert "no Python 3.99 found" in line and "found: 3." in line and "--python" in line
    assert tree(project) == before


def test_venv_with_other_python_version_is_recreated(project: Path) -> None:
    venv = venv_of(project, "cpu")
    ok(envmgr(project, "sync", "cpu"))
    cfg = venv / "pyvenv.cfg"
    (venv / MARK).write_text("user file\n")
    # pretend the venv was made by another python: its interpreter no longer runs
    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to("/nonexistent/python3.11")
    data = sync_json(project, "cpu")
    assert data["created"] and cfg.is_file() and not (venv / MARK).exists()
    assert installed(venv) == pins(project, "cpu")


MARK = "user-note.txt"


# -- bad input: one line, exit 2, nothing changed -------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (["nosuch"], "no profile 'nosuch'"),
    (["--locked", "--frozen"], "contradict"),
    (["--find-links", "/nonexistent/dir"], "--find-links /nonexistent/dir: not a folder"),
    (["--venv", "{file}"], "is not a venv"),
    (["--venv", "{notvenv}"], "is not a venv"),
    (["--python", "/nonexistent/python"], "/nonexistent/python"),
    (["--bogus-flag"], "No such option"),
])
def test_bad_input_one_line_exit_2_nothing_changed(project: Path, tmp_path: Path, args, needle) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "notvenv").mkdir()
    (tmp_path / "notvenv" / "data.txt").write_text("precious")
    args = [a.format(file=tmp_path / "file", notvenv=tmp_path / "notvenv") for a in args]
    before, outside = tree(project), tree(tmp_path, skip=("proj",))
    proc = envmgr(project, "sync", *args)
    if needle == "No such option":
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr
    else:
        assert needle in failed(proc)
    assert tree(project) == before and tree(tmp_path, skip=("proj",)) == outside


def test_corrupt_lock_with_frozen(project: Path) -> None:
    lockfile.lock_path(project, "cpu").write_text("lock-version = [\n")
    before = tree(project)
    line = failed(envmgr(project, "sync", "cpu", "--frozen"))
    assert "not valid TOML" in line
    assert tree(project) == before


# -- envmgr run ------------------------------------------------------------------------------

def test_run_syncs_first_then_runs_in_the_venv(project: Path) -> None:
    proc = ok(envmgr(project, "run", "cpu", "--", "python", "-c",
                     "import sys, fixture_app, torch; print(sys.prefix); print(torch.__version__)"))
    prefix, version = proc.stdout.split()
    assert Path(prefix) == venv_of(project, "cpu") and version == "2.7.1+cpu"
    assert "synced" not in proc.stdout
    # console scripts of the lock's packages are on PATH; the exit code is the command's
    proc = ok(envmgr(project, "run", "cpu", "-q", "--", "fixture-app"))
    assert proc.stdout.startswith("fixture-app 1.0.0") and proc.stderr == ""
    assert envmgr(project, "run", "cpu", "--", "python", "-c", "raise SystemExit(3)").returncode == 3
    assert "no-such-command" in failed(envmgr(project, "run", "cpu", "--", "no-such-command"))
    assert "no command given" in failed(envmgr(project, "run", "cpu"))


def test_json_summary_shape(project: Path) -> None:
    data = sync_json(project, "cpu")
    assert set(data) >= {"installed", "removed", "unchanged", "bytes_downloaded", "seconds", "noop", "venv",
                         "profile", "lock", "python"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", data["python"])
    check = json.loads(envmgr(project, "sync", "cpu", "--check", "--json").stdout)
    assert check == {"profile": "cpu", "venv": data["venv"], "lock": data["lock"], "exact": True, "problems": []}


def test_download_progress_reaches_the_reporter(project: Path, monkeypatch) -> None:
    """What the CLI's rich bar shows (on a terminal): every byte fetched, then finish."""
    from envmgr.sync import syncer as sync

    class Recorder:
        def __init__(self) -> None:
            self.calls: list = []

        def start(self, total: int, label: str) -> None:
            self.calls.append(("start", total, label))

        def advance(self, n: int) -> None:
            self.calls.append(("advance", n))

        def finish(self) -> None:
            self.calls.append(("finish",))

    monkeypatch.setenv("ENVMGR_DRIVER_VERSION", "none")
    rec = Recorder()
    lines: list[str] = []
    result = sync.sync(project, "cpu", reporter=rec, log=lines.append)
    lock = lockfile.read(lockfile.lock_path(project, "cpu"))
    starts = [c for c in rec.calls if c[0] == "start"]
    assert starts[0][1] == lock.download_size == result.bytes_downloaded
    assert sum(c[1] for c in rec.calls if c[0] == "advance") >= lock.download_size
    assert ("finish",) in rec.calls
    assert any(line.startswith("cpu: creating ") for line in lines) and "  + torch 2.7.1+cpu" in lines
