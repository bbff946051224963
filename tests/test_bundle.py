"""``envmgr bundle``, ``sync --bundle``, ``export-image --bundle`` and ``bootstrap.sh`` (issue 17).

The bundle is made online once a session (envmgr's wheel built from this tree, its
dependencies' wheels downloaded); everything after it runs with no network at all, inside a
new network namespace (``unshare -n``): bootstrap in a fresh folder with empty caches, sync
exact, import torch; a bundle with one byte changed is refused naming the hash; bad bundles
are one-line errors, exit 2, with nothing on disk changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from fixture_index import FixtureIndex
from test_lock import make_project
from test_sync import (REPO, cli_env, envmgr, failed, hermetic_subprocess_env, installed, lock_project, ok, pins,
                       profile_text, tree)

from envmgr.model import lockfile
from envmgr.venv import install

pytestmark = pytest.mark.timeout(900)


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


NETNS = _unshare_works()


def offline(argv: list[str], **kw) -> subprocess.CompletedProcess:
    """``argv`` in a new network namespace: no network at all (not even loopback)."""
    if not NETNS:
        pytest.skip("unshare -n does not work here (needs root or user namespaces)")
    return subprocess.run(["unshare", "-n", *argv], capture_output=True, text=True, timeout=600, **kw)


def envmgr_offline(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return offline([sys.executable, "-m", "envmgr", *args], cwd=project, env=cli_env(project, **env))


@pytest.fixture(scope="session")
def bundled(fixture_index: FixtureIndex, tmp_path_factory, session_cache_dirs) -> dict:
    """A locked project (torch 2.7.1+cpu, numpy, fixture-app) and its bundle, made the real
    online way: envmgr's wheel built here, its dependencies' downloaded."""
    root = make_project(tmp_path_factory.mktemp("bundle-project"), {
        "default": profile_text(fixture_index, "cpu", packages=("numpy", "fixture-app")),
    })
    env = hermetic_subprocess_env(session_cache_dirs, tmp_path_factory.mktemp("bundle-cache"))
    lock_project(root, env)
    out = tmp_path_factory.mktemp("bundle-out") / "site.tar"
    proc = subprocess.run([sys.executable, "-m", "envmgr", "bundle", "default", "--output", str(out)], cwd=root,
                          env={**env, "ENVMGR_PROJECT": str(root), "PYTHONPATH": str(REPO), "ENVMGR_NO_PROGRESS": "1"},
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 and "pip " in proc.stderr:
        pytest.skip(f"cannot build or download envmgr's wheels here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    tools = tmp_path_factory.mktemp("tool-wheels")
    with tarfile.open(out) as tar:
        for m in tar.getmembers():
            if m.name.startswith("tool/") and m.name.endswith(".whl"):
                (tools / Path(m.name).name).write_bytes(tar.extractfile(m).read())
    return {"project": root, "tar": out, "tools": tools}


@pytest.fixture
def project(bundled: dict, tmp_path: Path) -> Path:
    dest = tmp_path / "proj"
    shutil.copytree(bundled["project"], dest, ignore=shutil.ignore_patterns(".envmgr"))
    return dest


def unpack(tar: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    return dest


def bootstrap(site: Path, home: Path) -> subprocess.CompletedProcess:
    """``bash bootstrap.sh`` as on a fresh machine: system python3, empty HOME (so empty caches), no network."""
    home.mkdir(parents=True, exist_ok=True)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "ENVMGR_NO_PROGRESS": "1",
           "ENVMGR_DRIVER_VERSION": "none"}
    return offline(["bash", str(site / "bootstrap.sh")], cwd=home, env=env)


def torch_member(tar: Path) -> tarfile.TarInfo:
    with tarfile.open(tar) as t:
        return next(m for m in t.getmembers() if m.name.startswith("files/sha256/") and "/torch-" in m.name)


# -- the flow -------------------------------------------------------------------------------------

def test_bootstrap_offline_gives_an_exact_venv_whose_torch_imports(bundled: dict, tmp_path: Path) -> None:
    site = unpack(bundled["tar"], tmp_path / "site")
    proc = bootstrap(site, tmp_path / "home")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    venv = site / ".envmgr" / "venvs" / "default"
    assert f"default: {venv}" in proc.stdout.splitlines()
    lock = lockfile.read(site / "locks" / "pylock.default.toml")
    assert installed(venv) == lock.pins
    assert install.drift(lock, venv) == []
    imported = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch, numpy, fixture_app; print(torch.__version__)"],
                              capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == lock.pins["torch"], imported.stderr
    # the caches were empty: every file came from the bundle into the fresh user cache, hash-checked
    cached = {p.name for p in (tmp_path / "home" / ".cache" / "envmgr" / "files" / "sha256").iterdir()}
    assert cached == {p.install_file.sha256 for p in lock.packages}
    again = bootstrap(site, tmp_path / "home")  # a second run changes nothing
    assert again.returncode == 0 and "up to date" in again.stdout, again.stderr


def test_a_tampered_bundle_is_refused_naming_the_hash_and_no_venv_is_made(bundled: dict, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    shutil.copyfile(bundled["tar"], bad)
    m = torch_member(bad)
    with open(bad, "r+b") as fh:
        fh.seek(m.offset_data + m.size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 1]))
    expected = m.name.split("/")[2]
    site = unpack(bad, tmp_path / "site")
    proc = bootstrap(site, tmp_path / "home")
    assert proc.returncode == 2, proc.stderr
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and f"expected sha256:{expected}" in line[0] and "torch" in line[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (site / ".envmgr" / "venvs" / "default").exists()
    assert not (tmp_path / "home" / ".cache" / "envmgr" / "files" / "sha256" / expected).exists()
    # the same from the tar itself, in a project: refused, nothing made
    empty_cache = tmp_path / "cache"
    project = make_project(tmp_path / "p", {})
    shutil.copytree(site / "profiles", project / "profiles", dirs_exist_ok=True)
    shutil.copytree(site / "locks", project / "locks")
    err = failed(envmgr_offline(project, "sync", "--bundle", str(bad), "--frozen", ENVMGR_CACHE_DIR=str(empty_cache)))
    assert f"expected sha256:{expected}" in err
    assert not (project / ".envmgr" / "venvs" / "default").exists()


def test_sync_bundle_takes_every_file_from_it_with_no_network(project: Path, bundled: dict, tmp_path: Path) -> None:
    proc = ok(envmgr_offline(project, "sync", "--bundle", str(bundled["tar"]), "--json"))
    data = json.loads(proc.stdout)
    assert data["created"] and data["bytes_downloaded"] == 0
    assert installed(project / ".envmgr" / "venvs" / "default") == pins(project)
    # a folder bundle works the same (run too: the options are shared)
    site = unpack(bundled["tar"], tmp_path / "site")
    shutil.rmtree(project / ".envmgr")
    out = ok(envmgr_offline(project, "run", "default", "--bundle", str(site), "--", "python", "-c",
                            "import torch; print(torch.__version__)"))
    assert out.stdout.strip() == pins(project)["torch"]


def test_a_file_missing_from_the_bundle_is_exit_1_naming_it(project: Path, bundled: dict, tmp_path: Path) -> None:
    site = unpack(bundled["tar"], tmp_path / "site")
    numpy = next(p for p in lockfile.read(project / "locks" / "pylock.default.toml").packages if p.key == "numpy")
    shutil.rmtree(site / "files" / "sha256" / numpy.install_file.sha256)
    err = failed(envmgr_offline(project, "sync", "--bundle", str(site)), code=1)
    assert numpy.install_file.filename in err and numpy.install_file.sha256 in err
    assert not (project / ".envmgr" / "venvs" / "default").exists()


def _edited(site: Path, **changes) -> Path:
    manifest = json.loads((site / "bundle.json").read_text())
    manifest.update(changes)
    (site / "bundle.json").write_text(json.dumps(manifest))
    return site


@pytest.mark.parametrize("case", ["not-a-bundle", "empty-folder", "truncated-tar", "other-platform", "other-python",
                                  "no-such-path"])
def test_bad_bundles_are_one_line_exit_2_and_change_nothing(project: Path, bundled: dict, tmp_path: Path, case: str) -> None:
    if case == "not-a-bundle":
        bad = tmp_path / "x.tar"
        bad.write_bytes(b"no tar here\n" * 100)
    elif case == "empty-folder":
        bad = tmp_path / "empty"
        bad.mkdir()
    elif case == "truncated-tar":
        bad = tmp_path / "cut.tar"
        data = bundled["tar"].read_bytes()
        bad.write_bytes(data[: torch_member(bundled["tar"]).offset_data + 100])
    elif case == "other-platform":
        bad = _edited(unpack(bundled["tar"], tmp_path / "site"), platform="linux-aarch64")
    elif case == "other-python":
        bad = _edited(unpack(bundled["tar"], tmp_path / "site"), python="3.12")
    else:
        bad = tmp_path / "nowhere.tar"
    cache = Path(os.environ["ENVMGR_CACHE_DIR"])
    before = tree(project), tree(cache)
    err = failed(envmgr_offline(project, "sync", "--bundle", str(bad)))
    assert str(bad) in err
    words = {"other-platform": "linux-aarch64", "other-python": "Python 3.12", "truncated-tar": "not a bundle",
             "not-a-bundle": "not a bundle", "empty-folder": "not a bundle", "no-such-path": "does not exist"}[case]
    assert words in err
    assert (tree(project), tree(cache)) == before


# -- making a bundle --------------------------------------------------------------------------------

def test_the_same_locks_give_the_same_bundle_bytes(project: Path, bundled: dict, tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b" / "b.tar"
    b.parent.mkdir()
    ok(envmgr(project, "bundle", "--output", str(a), "--tool-wheels", str(bundled["tools"]), "-q"))
    ok(envmgr(project, "bundle", "--output", str(b), "--tool-wheels", str(bundled["tools"]), "-q",
              TZ="Asia/Tokyo", ENVMGR_CACHE_DIR=str(tmp_path / "other-cache")))
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as t:
        members = t.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    # a folder bundle holds the same files
    folder = tmp_path / "dir"
    ok(envmgr(project, "bundle", "--output", str(folder), "--tool-wheels", str(bundled["tools"]), "-q"))
    assert tree(folder) == tree(unpack(a, tmp_path / "unpacked"))
    assert os.access(folder / "bootstrap.sh", os.X_OK)


def test_bundle_bad_input_is_exit_2_and_writes_nothing(project: Path, bundled: dict, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("mine")
    failed(envmgr(project, "bundle", "--output", str(taken), "--tool-wheels", str(bundled["tools"])))
    assert tree(taken) == {"x": b"mine"}
    short = tmp_path / "short"
    short.mkdir()
    shutil.copy(next(bundled["tools"].glob("envmgr-*.whl")), short)
    err = failed(envmgr(project, "bundle", "--output", str(tmp_path / "b.tar"), "--tool-wheels", str(short)))
    assert "lacks wheels" in err and "uv" in err
    err = failed(envmgr(project, "bundle", "nope", "--output", str(tmp_path / "b.tar")))
    assert "nope" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["proj", "short", "taken"]
    # a stale lock is not bundled (exit 1)
    (project / "profiles" / "default.toml").write_text((project / "profiles" / "default.toml").read_text()
                                                        .replace('"numpy", ', ""))
    failed(envmgr(project, "bundle", "--output", str(tmp_path / "b.tar"), "--tool-wheels", str(bundled["tools"])), code=1)
    assert not (tmp_path / "b.tar").exists()


def test_bundled_profiles_carry_no_literal_credentials(fixture_index: FixtureIndex, bundled: dict, tmp_path: Path,
                                                       session_cache_dirs) -> None:
    from envmgr.bundle.make import _profile_text

    p = tmp_path / "p.toml"
    p.write_text('index-url = "https://alice:s3cret@mirror.example/simple"\n'
                 'extra-index-urls = ["https://bob:${TOKEN}@other.example/simple"]\n')
    text = _profile_text(p).decode()
    assert "s3cret" not in text and "alice" not in text and "mirror.example/simple" in text
    assert "bob:${TOKEN}@other.example" in text


# -- export-image --bundle ---------------------------------------------------------------------------

def test_export_image_from_a_bundle_with_its_base_and_no_network(project: Path, bundled: dict, tmp_path: Path) -> None:
    from image_fixtures import bookworm_layout

    base = bookworm_layout(tmp_path / "base", tmp_path / "base-cache")
    site = tmp_path / "site"
    ok(envmgr(project, "bundle", "--output", str(site), "--tool-wheels", str(bundled["tools"]), "--with-base",
              "--base", f"oci:{base}", "-q", timeout=600))
    assert (site / "base.tar").is_file()
    first = ok(envmgr_offline(project, "export-image", "--bundle", str(site), "--output", str(tmp_path / "img.tar"),
                              "--json", ENVMGR_CACHE_DIR=str(tmp_path / "empty-cache")))
    digest = json.loads(first.stdout)["digest"]
    assert digest.startswith("sha256:") and (tmp_path / "img.tar").is_file()
