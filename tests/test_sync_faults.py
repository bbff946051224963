"""``envmgr sync`` under faults: bad bytes, kill -9, concurrent syncs, a dead network, hand edits.

Each fault leaves either the previous venv intact and importable (failures before the venv
is touched) or a venv the next sync turns into exactly the lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from fixture_index import PYPI, FixtureIndex
from test_sync import (  # noqa: F401 (locked_template, project: fixtures)
    assert_exact,
    envmgr,
    failed,
    installed,
    locked_template,
    make_project,
    ok,
    pins,
    profile_text,
    project,
    site,
    start,
    sync_json,
    tree,
    venv_of,
    vpy,
)

from envmgr.model import lockfile


def two_state_project(index: FixtureIndex, root: Path) -> Path:
    """A project whose ``default`` profile is synced at fixture-app 1.0.0 and then locked at 1.1.0."""
    proj = make_project(root, {"default": profile_text(index, "cpu", packages=("fixture-app==1.0.0",))})
    ok(envmgr(proj, "sync"))
    (proj / "profiles" / "default.toml").write_text(profile_text(index, "cpu", packages=("fixture-app==1.1.0",)))
    ok(envmgr(proj, "lock"))
    return proj


def assert_previous_venv_intact(project: Path, before: dict) -> None:
    venv = venv_of(project)
    assert tree(venv) == before
    proc = vpy(venv, "import fixture_app, torch, numpy; print(fixture_app.__version__)")
    assert proc.returncode == 0 and proc.stdout.strip() == "1.0.0", proc.stderr


# -- bytes that do not match the lock ---------------------------------------------------------

def test_hash_mismatch_names_everything_and_leaves_venv(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    proj = two_state_project(fresh_index, tmp_path)
    before = tree(venv_of(proj))
    pkg = lockfile.read(lockfile.lock_path(proj, "default")).package("fixture-app")
    expected = pkg.install_file.sha256
    # the index swaps the file's bytes under the lock (same name, same version)
    path = fresh_index.add(PYPI, None, "fixture-app", "1.1.0", requires=["numpy>=2"],
                           files={"fixture_app/__init__.py": "__version__ = '1.1.0'\nEVIL = True\n"})
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    assert actual != expected

    line = failed(envmgr(proj, "sync"))
    assert "fixture-app" in line and pkg.install_file.url in line
    assert f"expected sha256:{expected}" in line and f"got sha256:{actual}" in line
    assert_previous_venv_intact(proj, before)
    check = envmgr(proj, "sync", "--check")
    assert check.returncode == 1 and "fixture-app: 1.0.0 installed, lock has 1.1.0" in check.stderr
    # nothing with the bad bytes reached the cache
    assert not list((Path(os.environ["ENVMGR_CACHE_DIR"]) / "files" / "sha256").glob(f"{actual}*"))


# -- the network goes away ----------------------------------------------------------------------

def test_unreachable_index_clear_error_previous_venv_intact(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    proj = two_state_project(fresh_index, tmp_path)
    before = tree(venv_of(proj))
    fresh_index.set_offline(True)
    line = failed(envmgr(proj, "sync"))
    assert "cannot reach" in line and "fixture_app-1.1.0" in line
    assert_previous_venv_intact(proj, before)
    fresh_index.set_offline(False)
    ok(envmgr(proj, "sync"))
    assert_exact(proj)


def test_network_stops_mid_download(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    proj = two_state_project(fresh_index, tmp_path)
    before = tree(venv_of(proj))
    fresh_index.fail_after_bytes(200)
    line = failed(envmgr(proj, "sync"))
    assert "broke off after" in line and "fixture_app-1.1.0" in line
    assert_previous_venv_intact(proj, before)
    files = Path(os.environ["ENVMGR_CACHE_DIR"]) / "files" / "sha256"
    assert not [p for p in files.rglob("*") if p.is_file() and p.name.startswith(".part-")]
    fresh_index.fail_after_bytes(None)
    ok(envmgr(proj, "sync"))
    assert_exact(proj)


# -- kill -9 at random points ---------------------------------------------------------------------

def many_files(n: int, tag: str) -> dict[str, str]:
    return {f"bigpkg/m{i:04d}.py": f"X = {i!r}  # {tag}\n" for i in range(n)}


def test_kill_9_at_random_points_then_sync_is_exact(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    # a package with thousands of files makes uv's install phase long enough to be hit
    fresh_index.add(PYPI, None, "bigpkg", "1.0.0", files=many_files(3000, "one"))
    fresh_index.add(PYPI, None, "bigpkg", "2.0.0", files=many_files(2500, "two"), extra_size=2_000_000)
    states = {}
    for name, variant, pkgs in [("a", "cpu", ("fixture-app==1.0.0", "bigpkg==1.0.0")),
                                ("b", "cu126", ("fixture-app==1.1.0", "bigpkg==2.0.0"))]:
        p = make_project(tmp_path / name, {name: profile_text(fresh_index, variant, packages=pkgs)})
        ok(envmgr(p, "lock", name))
        states[name] = lockfile.lock_path(p, name).read_text()
    proj = make_project(tmp_path / "proj", {})
    target = lockfile.lock_path(proj, "t")
    target.parent.mkdir(parents=True)

    def use(state: str) -> None:
        target.write_text(states[state])

    def timed(state: str, **env: str) -> float:
        use(state)
        t0 = time.monotonic()
        ok(envmgr(proj, "sync", "t", "--frozen", **env))
        return time.monotonic() - t0

    cold = timed("a", ENVMGR_CACHE_DIR=str(tmp_path / "cache-cold"))  # create the venv, download
    timed("b"), timed("a")  # fill the cache
    warm = min(timed("b"), timed("a"))  # switch a <-> b from a warm cache
    seed = int(os.environ.get("SYNC_KILL_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    trials: list[tuple[int, float, int | None, bool]] = []  # (trial, delay, exit, killed mid-change)

    def enough() -> bool:
        return sum(1 for t in trials if t[2] == -9) >= 12 and sum(1 for t in trials if t[3]) >= 3

    trial = 0
    while not enough() and trial < 40:
        use("b" if trial % 2 == 0 else "a")
        env = {}
        span = warm
        if trial % 3 == 0:  # a cold cache now and then, so some kills land in downloads
            env["ENVMGR_CACHE_DIR"] = str(tmp_path / f"cache-{trial}")
            span = cold
        delay = span * (rng.uniform(0.0, 1.0) if trial % 3 == 1 else rng.uniform(0.4, 1.0))
        proc = start(proj, "sync", "t", "--frozen", **env)
        time.sleep(delay)
        if trial % 2:
            proc.kill()  # kill -9 of envmgr: a running uv finishes (it holds the venv's lock)
        else:
            os.killpg(proc.pid, signal.SIGKILL)  # envmgr and uv together, as a power cut would
        proc.communicate()
        # the marker: the sync had started changing the venv when it died
        trials.append((trial, round(delay, 3), proc.returncode, (venv_of(proj, "t") / ".envmgr-syncing").exists()))
        where = f"seed {seed} trial {trial} delay {delay:.3f}"
        proc = envmgr(proj, "sync", "t", "--frozen", **env)
        assert proc.returncode == 0, f"{where}\n{proc.stderr}"
        venv = venv_of(proj, "t")
        assert installed(venv) == pins(proj, "t"), where
        ok(envmgr(proj, "sync", "t", "--check", "--frozen"))
        imp = vpy(venv, "import bigpkg, fixture_app, torch; print(bigpkg.__version__)")
        assert imp.returncode == 0, f"{where}: {imp.stderr}"
        assert imp.stdout.strip() == pins(proj, "t")["bigpkg"]
        trial += 1
    assert enough(), trials  # really killed, several times while the venv was half-changed


def test_kill_9_of_a_replayed_sync_then_sync_is_exact(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    """A venv made again from a recipe (envmgr.sync.recipe), killed at random points: the next sync
    makes it exact, and no lock folder of a killed sync is left beside the venv."""
    fresh_index.add(PYPI, None, "bigpkg", "1.0.0", files=many_files(3000, "one"))
    proj = make_project(tmp_path, {"default": profile_text(fresh_index, "cpu", packages=("bigpkg==1.0.0",))})
    ok(envmgr(proj, "sync"))  # the slow path: keeps the recipe
    venv = venv_of(proj)

    def fresh_replay() -> float:
        shutil.rmtree(venv)
        t0 = time.monotonic()
        ok(envmgr(proj, "sync"))
        return time.monotonic() - t0

    span = min(fresh_replay(), fresh_replay())
    seed = int(os.environ.get("SYNC_KILL_SEED", "0")) or random.randrange(1 << 30)
    rng = random.Random(seed)
    mid_change = 0
    for trial in range(10):
        shutil.rmtree(venv)
        delay = span * rng.uniform(0.1, 1.0)
        proc = start(proj, "sync")
        time.sleep(delay)
        if trial % 2:
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        mid_change += (venv / ".envmgr-syncing").exists()
        where = f"seed {seed} trial {trial} delay {delay:.3f}"
        proc = envmgr(proj, "sync")
        assert proc.returncode == 0, f"{where}\n{proc.stderr}"
        assert installed(venv) == pins(proj), where
        ok(envmgr(proj, "sync", "--check"))
        imp = vpy(venv, "import bigpkg, torch; print(bigpkg.__version__)")
        assert imp.returncode == 0 and imp.stdout.strip() == "1.0.0", f"{where}: {imp.stderr}"
        assert not [n for n in os.listdir(venv.parent) if n.startswith(f".{venv.name}.envmgr-") and
                    n[len(venv.name) + 9:].isdigit()], where
    assert mid_change >= 3, mid_change  # really killed while the venv was being made


# -- concurrent syncs ---------------------------------------------------------------------------

def test_four_concurrent_syncs_serialise(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    proj = make_project(tmp_path, {"default": profile_text(fresh_index)})
    ok(envmgr(proj, "lock"))
    fresh_index.clear_log()
    procs = [start(proj, "sync", "--json") for _ in range(4)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sum(1 for r in results if not r["noop"]) == 1, results
    assert_exact(proj)
    lock = lockfile.read(lockfile.lock_path(proj, "default"))
    downloads = [r.path for r in fresh_index.wheel_downloads()]
    assert downloads and len(downloads) == len(set(downloads))  # no file fetched twice
    # (the torch file, whose hash the index does not publish, came into the cache at lock time)
    assert len(downloads) >= len(lock.packages) - 1


# -- a venv edited by hand ------------------------------------------------------------------------

def test_pip_upgrade_is_reported_then_repaired(fixture_index: FixtureIndex, project: Path) -> None:
    venv = venv_of(project)
    ok(envmgr(project, "sync"))
    wheel = fixture_index.wheel_path("numpy-2.1.0-py3-none-any.whl")
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                          "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    before = tree(venv)
    check = envmgr(project, "sync", "--check")
    assert check.returncode == 1 and "numpy: 2.1.0 installed, lock has 2.2.0" in check.stderr
    assert tree(venv) == before
    data = sync_json(project)
    assert data["installed"] == ["numpy==2.2.0"] and not data["noop"]
    assert_exact(project)


def test_deleted_file_is_reported_then_repaired(project: Path) -> None:
    venv = venv_of(project)
    ok(envmgr(project, "sync"))
    # imports write __pycache__ folders: that is not drift, the next sync stays a no-op
    assert vpy(venv, "import torch, fixture_app, numpy, torch.distributed.run").returncode == 0
    assert sync_json(project)["noop"]
    victim = site(venv) / "torch" / "distributed" / "run.py"
    victim.unlink()
    before = tree(venv)
    check = envmgr(project, "sync", "--check")
    assert check.returncode == 1 and "torch: torch/distributed/run.py missing" in check.stderr
    assert tree(venv) == before
    data = sync_json(project)
    assert data["installed"] == ["torch==2.7.1+cu126"]
    assert victim.is_file()
    assert_exact(project)


def test_deleted_console_script_and_record_are_repaired(project: Path) -> None:
    venv = venv_of(project)
    ok(envmgr(project, "sync"))
    (venv / "bin" / "fixture-app").unlink()
    record = next(site(venv).glob("numpy-*.dist-info")) / "RECORD"
    record.unlink()
    check = envmgr(project, "sync", "--check")
    assert check.returncode == 1
    assert "fixture-app: ../../../bin/fixture-app missing" in check.stderr and "numpy: RECORD missing" in check.stderr
    data = sync_json(project)
    assert sorted(data["installed"]) == sorted(f"{n}=={pins(project)[n]}" for n in ("fixture-app", "numpy"))
    assert (venv / "bin" / "fixture-app").is_file()
    assert_exact(project)


def test_interrupted_sync_marker_is_not_up_to_date(project: Path) -> None:
    venv = venv_of(project)
    ok(envmgr(project, "sync"))
    (venv / ".envmgr-syncing").write_text("")
    check = envmgr(project, "sync", "--check")
    assert check.returncode == 1 and "interrupted" in check.stderr
    data = sync_json(project)
    assert data["noop"] and not (venv / ".envmgr-syncing").exists()
    assert sync_json(project)["noop"]
