"""The cold sync as a pipeline: parallel downloads (big files in ``Range`` parts where the server
answers them), each verified file unpacked by uv through a staging venv beside the target while
the others download, and the venv changed only once every file is verified; where there was no
venv, each verified file's package goes straight into the new one (nothing to keep usable).

Each test checks one promise: the bytes are right however they came, a failure in the middle
leaves the previous venv as it was (and nothing staged beside it), a kill -9 in the middle is
made exact by the next sync, and the progress reported is what happened.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from fixture_index import PYPI, FixtureIndex
from loopback import CountingReporter
from test_sync import (
    assert_exact,
    envmgr,
    failed,
    installed,
    make_project,
    ok,
    pins,
    profile_text,
    site,
    start,
    sync_json,
    tree,
    venv_of,
    vpy,
)
from test_sync_faults import many_files

from envmgr.core.errors import HashMismatchError
from envmgr.model import lockfile
from envmgr.net import fetch


def workdirs(venv: Path) -> list[str]:
    """The per-process folders a sync keeps beside the venv (its lock text, its staging venv)."""
    prefix = f".{venv.name}.envmgr-"
    return [n for n in os.listdir(venv.parent) if n.startswith(prefix) and n[len(prefix):].isdigit()]


def big_project(index: FixtureIndex, root: Path, *packages: str) -> Path:
    proj = make_project(root, {"default": profile_text(index, "cpu", packages=packages)})
    ok(envmgr(proj, "lock"))
    return proj


# -- downloads in parts ------------------------------------------------------------------------

@pytest.mark.parametrize("ranges", [True, False])
def test_big_file_in_range_parts_or_whole(fresh_index: FixtureIndex, tmp_path: Path, monkeypatch, ranges: bool) -> None:
    """A file over SPLIT_MIN comes in PARTS ranges at once when the server answers 206, and whole
    (one 200) when it does not; the cached bytes are the lock's either way, progress counted once."""
    fresh_index.add(PYPI, None, "bigpkg", "2.0.0", files=many_files(20, "two"), extra_size=3_000_000)
    proj = big_project(fresh_index, tmp_path / "p", "bigpkg==2.0.0", "fixture-app==1.1.0")
    lock = lockfile.read(lockfile.lock_path(proj, "default"))
    items = [(p.key, p.install_file) for p in lock.packages]
    big = lock.package("bigpkg").install_file
    monkeypatch.setattr(fetch, "SPLIT_MIN", 1_000_000)
    fresh_index.ranges = ranges
    fresh_index.clear_log()
    seen: list[str] = []
    rec = CountingReporter()
    got = fetch.fetch(items, cache=tmp_path / "cache", reporter=rec, on_ready=lambda name, f, path: seen.append(name))
    assert sorted(seen) == sorted(n for n, _ in items)
    for _, f in items:
        assert hashlib.sha256(got[f.sha256].read_bytes()).hexdigest() == f.sha256
    assert rec.advanced == rec.total == sum(f.size for _, f in items)
    parts = [r for r in fresh_index.requests if r.path.endswith(big.filename) and r.method == "GET"]
    if ranges:
        assert sorted(r.status for r in parts) == [206] * fetch.PARTS
    else:
        assert [r.status for r in parts] == [200]
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]


def test_big_file_with_wrong_bytes_in_parts_is_named_and_not_kept(fresh_index: FixtureIndex, tmp_path: Path,
                                                                    monkeypatch) -> None:
    fresh_index.add(PYPI, None, "bigpkg", "2.0.0", files=many_files(20, "two"), extra_size=3_000_000)
    proj = big_project(fresh_index, tmp_path / "p", "bigpkg==2.0.0")
    f = lockfile.read(lockfile.lock_path(proj, "default")).package("bigpkg").install_file
    fresh_index.add(PYPI, None, "bigpkg", "2.0.0", files=many_files(20, "evil"), extra_size=3_000_000)
    monkeypatch.setattr(fetch, "SPLIT_MIN", 1_000_000)
    fresh_index.ranges = True
    with pytest.raises(HashMismatchError) as err:
        fetch.fetch([("bigpkg", f)], cache=tmp_path / "cache")
    assert f.filename in str(err.value) and f"expected sha256:{f.sha256}" in str(err.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


# -- the pipeline inside a sync ------------------------------------------------------------------

def two_states(index: FixtureIndex, root: Path) -> Path:
    """Synced at bigpkg 1.0.0 + fixture-app 1.0.0, then locked at bigpkg 2.0.0 + fixture-app 1.1.0."""
    index.add(PYPI, None, "bigpkg", "1.0.0", files=many_files(300, "one"))
    index.add(PYPI, None, "bigpkg", "2.0.0", files=many_files(300, "two"), extra_size=2_000_000)
    proj = big_project(index, root, "bigpkg==1.0.0", "fixture-app==1.0.0")
    ok(envmgr(proj, "sync"))
    (proj / "profiles" / "default.toml").write_text(
        profile_text(index, "cpu", packages=("bigpkg==2.0.0", "fixture-app==1.1.0")))
    ok(envmgr(proj, "lock"))
    return proj


def test_hash_mismatch_mid_pipeline_names_file_and_leaves_venv(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    """bigpkg 2.0.0 downloads and is staged (unpacked by uv beside the venv) while fixture-app's bytes
    turn out wrong: the sync fails naming that file, the venv is as it was, nothing is left beside it."""
    proj = two_states(fresh_index, tmp_path)
    venv = venv_of(proj)
    before = tree(venv)
    pkg = lockfile.read(lockfile.lock_path(proj, "default")).package("fixture-app")
    fresh_index.add(PYPI, None, "fixture-app", "1.1.0", requires=["numpy>=2"],
                    files={"fixture_app/__init__.py": "__version__ = '1.1.0'\nEVIL = True\n"})
    line = failed(envmgr(proj, "sync"))
    assert "hash mismatch for fixture-app" in line and pkg.install_file.url in line
    assert f"expected sha256:{pkg.install_file.sha256}" in line
    assert tree(venv) == before
    imp = vpy(venv, "import bigpkg, fixture_app; print(bigpkg.__version__, fixture_app.__version__)")
    assert imp.returncode == 0 and imp.stdout.split() == ["1.0.0", "1.0.0"], imp.stderr
    assert workdirs(venv) == []
    # the good file that came meanwhile is kept, verified: the next sync downloads only the bad one's fix
    cache = Path(os.environ["ENVMGR_CACHE_DIR"])
    big = lockfile.read(lockfile.lock_path(proj, "default")).package("bigpkg").install_file
    assert fetch.cached_path(big, cache).is_file()


def test_hash_mismatch_in_a_first_sync_leaves_no_venv(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    """No venv yet: packages go into the new venv as their files verify, and bytes unlike the lock
    in the middle of it fail naming the file, with no venv left behind (there was none before) and
    nothing beside it; the good files stay cached, and the next sync, once the index is right, is
    exact."""
    fresh_index.add(PYPI, None, "bigpkg", "2.0.0", files=many_files(300, "two"), extra_size=2_000_000)
    proj = big_project(fresh_index, tmp_path, "bigpkg==2.0.0", "fixture-app==1.1.0")
    venv = venv_of(proj)
    pkg = lockfile.read(lockfile.lock_path(proj, "default")).package("fixture-app")
    good = fresh_index.wheel_path(pkg.install_file.filename).read_bytes()
    fresh_index.add(PYPI, None, "fixture-app", "1.1.0", requires=["numpy>=2"],
                    files={"fixture_app/__init__.py": "__version__ = '1.1.0'\nEVIL = True\n"})
    line = failed(envmgr(proj, "sync"))
    assert "hash mismatch for fixture-app" in line and pkg.install_file.url in line
    assert not venv.exists() and workdirs(venv) == []
    cache = Path(os.environ["ENVMGR_CACHE_DIR"])
    big = lockfile.read(lockfile.lock_path(proj, "default")).package("bigpkg").install_file
    assert fetch.cached_path(big, cache).is_file()
    fresh_index.wheel_path(pkg.install_file.filename).write_bytes(good)  # the index is right again
    proc = ok(envmgr(proj, "sync"))
    assert "creating" in proc.stderr
    assert_exact(proj)


def test_first_sync_installs_into_the_new_venv_while_downloading(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    """No venv yet: the sync takes the route that unpacks into the new venv (it says so), no staging
    venv is made beside it, the venv is exact, and the sync's record of the venv (the recipe a later
    sync of a missing venv replays) names every package, not only those the final step installed.
    (That packages land in the new venv while the sync still runs: the kill -9 test, into-new-venv.)"""
    fresh_index.add(PYPI, None, "bigpkg", "2.0.0", files=many_files(300, "two"), extra_size=2_000_000)
    proj = big_project(fresh_index, tmp_path, "bigpkg==2.0.0", "fixture-app==1.1.0")
    cache = str(tmp_path / "cold-cache")  # every file downloads
    proc = ok(envmgr(proj, "sync", ENVMGR_CACHE_DIR=cache))
    assert "downloaded" in proc.stderr and "package(s) unpacked meanwhile" in proc.stderr
    assert workdirs(venv_of(proj)) == []
    assert_exact(proj)
    venv = venv_of(proj)
    shutil.rmtree(venv)
    again = sync_json(proj, ENVMGR_CACHE_DIR=cache)  # replayed from the recipe the first sync kept
    assert again["created"] and sorted(again["installed"]) == sorted(f"{k}=={v}" for k, v in pins(proj).items())
    assert_exact(proj)


def test_verbose_sync_says_what_was_unpacked_while_downloading(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    proj = two_states(fresh_index, tmp_path)
    proc = ok(envmgr(proj, "sync"))
    assert "downloaded 2 file(s)" in proc.stderr and "package(s) unpacked meanwhile" in proc.stderr
    assert "installed 2 package(s) in" in proc.stderr
    assert_exact(proj)
    assert workdirs(venv_of(proj)) == []


def _unpacking(venv: Path, direct: bool) -> bool:
    """Is a cold sync unpacking verified files now: into a staging venv beside ``venv``, or
    (``direct``: no venv before) into the new venv itself, still marked as being made?"""
    if not venv.parent.is_dir():
        return False
    if not direct:
        return any((venv.parent / d / "stage").exists() for d in workdirs(venv))
    sp = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    return (venv / ".envmgr-syncing").exists() and sp.is_dir() and any(n.endswith(".dist-info") for n in os.listdir(sp))


@pytest.mark.parametrize("direct", [False, True], ids=["staging-venv", "into-new-venv"])
def test_kill_9_while_staging_then_sync_is_exact(fresh_index: FixtureIndex, tmp_path: Path, direct: bool) -> None:
    """Killed (envmgr and its uv together, or envmgr alone) while verified files are unpacked, beside
    the previous venv or into a venv made where there was none: the next sync removes what was left
    beside the venv and makes it exactly the lock."""
    fresh_index.add(PYPI, None, "bigpkg", "1.0.0", files=many_files(3000, "one"))
    fresh_index.add(PYPI, None, "bigpkg", "2.0.0", files=many_files(3000, "two"), extra_size=2_000_000)
    proj = big_project(fresh_index, tmp_path / "p", "bigpkg==2.0.0", "fixture-app==1.1.0")
    venv = venv_of(proj)
    if not direct:  # a venv of another python minor would be recreated, so: one whose files are all there
        ok(envmgr(proj, "sync"))
    hits = 0
    for trial in range(6):
        cache = tmp_path / f"cache-{trial}"  # cold: every file downloads, so staging runs
        if not direct:
            shutil.rmtree(site(venv) / "bigpkg")  # damaged: bigpkg is installed again, its file staged first
            stamp_file = venv / ".envmgr-sync.json"
            stamp_file.unlink(missing_ok=True)
        proc = start(proj, "sync", ENVMGR_CACHE_DIR=str(cache))
        deadline = time.monotonic() + 60
        staged = False
        while proc.poll() is None and time.monotonic() < deadline:
            if _unpacking(venv, direct):
                staged = True
                time.sleep(0.05 * (trial % 3))
                break
            time.sleep(0.005)
        if trial % 2:
            proc.kill()
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        hits += staged and proc.returncode == -9
        again = envmgr(proj, "sync", ENVMGR_CACHE_DIR=str(cache))
        assert again.returncode == 0, f"trial {trial}\n{again.stderr}"
        assert installed(venv) == pins(proj), trial
        ok(envmgr(proj, "sync", "--check", ENVMGR_CACHE_DIR=str(cache)))
        assert workdirs(venv) == [], trial
        imp = vpy(venv, "import bigpkg, fixture_app; print(bigpkg.__version__)")
        assert imp.returncode == 0 and imp.stdout.strip() == "2.0.0", imp.stderr
        if direct:
            shutil.rmtree(venv)
    assert hits >= 2, hits  # really killed while staging
