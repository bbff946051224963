"""The cold sync as a pipeline: parallel downloads (big files in ``Range`` parts where the server
answers them), each verified file unpacked by uv through a staging venv beside the target while
the others download, and the venv changed only once every file is verified.

Each test checks one promise: the bytes are right however they came, a failure in the middle
leaves the previous venv as it was (and nothing staged beside it), a kill -9 in the middle is
made exact by the next sync, and the progress reported is what happened.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
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
    start,
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


def test_verbose_sync_says_what_was_unpacked_while_downloading(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    proj = two_states(fresh_index, tmp_path)
    proc = ok(envmgr(proj, "sync"))
    assert "downloaded 2 file(s)" in proc.stderr and "package(s) unpacked meanwhile" in proc.stderr
    assert "installed 2 package(s) in" in proc.stderr
    assert_exact(proj)
    assert workdirs(venv_of(proj)) == []


def test_kill_9_while_staging_then_sync_is_exact(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    """Killed (envmgr and its uv together, or envmgr alone) while the staging venv exists: the next
    sync removes what was left beside the venv and makes it exactly the lock."""
    fresh_index.add(PYPI, None, "bigpkg", "1.0.0", files=many_files(3000, "one"))
    fresh_index.add(PYPI, None, "bigpkg", "2.0.0", files=many_files(3000, "two"), extra_size=2_000_000)
    proj = big_project(fresh_index, tmp_path / "p", "bigpkg==2.0.0", "fixture-app==1.1.0")
    venv = venv_of(proj)
    hits = 0
    for trial in range(6):
        cache = tmp_path / f"cache-{trial}"  # cold: every file downloads, so staging runs
        proc = start(proj, "sync", ENVMGR_CACHE_DIR=str(cache))
        deadline = time.monotonic() + 60
        staged = False
        while proc.poll() is None and time.monotonic() < deadline:
            if venv.parent.is_dir() and any((venv.parent / d / "stage").exists() for d in workdirs(venv)):
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
        shutil.rmtree(venv)
    assert hits >= 2, hits  # really killed while staging
