"""``envmgr lock`` end to end: the real CLI, in a subprocess, against the fixture index.

Every test writes a small project in ``tmp_path`` whose profiles point ``torch-index-url``
and ``index-url`` at the fixture index (PyTorch-shaped ``/whl/<variant>`` and PyPI-shaped
``/simple``) and runs ``python -m envmgr`` there, so routing, hashing, pin keeping,
``--check``, concurrency, failures and credentials are checked on what a user runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from fixture_index import (
    MISSING_HASH_FILE,
    PYPI,
    TORCH,
    WRONG_HASH_FILE,
    FixtureIndex,
    Release,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "s3cr3t-t0ken-xyz"
USER = "envmgr-bot"


# -- helpers ------------------------------------------------------------------------------

def profile_text(index: FixtureIndex, variant: str = "cu126", *, torch: str = "==2.7.1",
                 packages: tuple[str, ...] = ("numpy",), python: str = "3.11",
                 torch_index_url: str | None = None, index_url: str | None = None, extra: str = "") -> str:
    lines = [
        f'variant = "{variant}"',
        f'torch = "{torch}"',
        f'python = "{python}"',
        "packages = [" + ", ".join(f'"{p}"' for p in packages) + "]",
        f'torch-index-url = "{torch_index_url or index.torch_url(variant)}"',
        f'index-url = "{index_url or index.pypi_url}"',
    ]
    return "\n".join(lines) + "\n" + extra


def make_project(root: Path, profiles: dict[str, str]) -> Path:
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    for name, text in profiles.items():
        (root / "profiles" / f"{name}.toml").write_text(text)
    return root


def cli_env(project: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "ENVMGR_PROJECT": str(project), "ENVMGR_NO_PROGRESS": "1", "NO_COLOR": "1",
           "COLUMNS": "250", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.update(extra)
    return env


def envmgr(project: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "envmgr", *args], cwd=project, env=cli_env(project, **env),
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc


def failed(proc: subprocess.CompletedProcess, *, detail: bool = False) -> str:
    """Exit 2, one ``error:`` line (plus resolver detail lines if ``detail``), no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    # progress lines ("NAME: resolving with ...") may precede the error
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert errors, proc.stderr
    first = errors[0]
    assert all(re.match(r"^[\w.-]+: resolving with ", line) for line in lines[:first]), proc.stderr
    if not detail:
        assert len(lines) == first + 1, f"more than one error line:\n{proc.stderr}"
    return lines[first]


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (what 'nothing changed on disk' compares)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if any(rel == s or rel.startswith(s + "/") for s in skip):
            continue
        out[rel] = p.read_bytes() if p.is_file() else b"<dir>"
    return out


def lock_file(project: Path, name: str) -> Path:
    return project / "locks" / f"pylock.{name}.toml"


def read_lock(project: Path, name: str) -> dict:
    return tomllib.loads(lock_file(project, name).read_text())


def packages(lock: dict) -> dict[str, dict]:
    return {p["name"]: p for p in lock["packages"]}


def model(lock: dict) -> dict[str, tuple]:
    """What both backends must agree on: name -> (version, index, files (url, sha256, size))."""
    return {
        p["name"]: (p["version"], p["index"],
                    tuple(sorted((f["url"], f["hashes"]["sha256"], f["size"])
                                 for f in [*p.get("wheels", []), *([p["sdist"]] if "sdist" in p else [])])))
        for p in lock["packages"]
    }


def real(index: FixtureIndex, filename: str) -> tuple[str, int]:
    """sha256 and size of the real bytes of a fixture file."""
    item = next(i for i in index.listings() if i.filename == filename)
    return item.sha256, item.size


def wheel_names(index: FixtureIndex) -> list[str]:
    return sorted(r.path.rsplit("/", 1)[-1] for r in index.wheel_downloads())


# -- routing and content ------------------------------------------------------------------

def test_lock_cu126_routes_torch_family_and_hashes_every_file(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fixture_index
    project = make_project(tmp_path, {"cu126": profile_text(idx, packages=("torchvision==0.22.1", "numpy"))})
    proc = ok(envmgr(project, "lock", "cu126"))
    assert "cu126:" in proc.stdout and "updated" in proc.stdout
    lock = read_lock(project, "cu126")
    assert lock["lock-version"] == "1.0"
    pkgs = packages(lock)
    torch_index = idx.torch_url("cu126")
    assert pkgs["torch"]["version"] == "2.7.1+cu126"
    assert pkgs["torchvision"]["version"] == "0.22.1+cu126"
    assert pkgs["triton"]["version"] == "3.3.1"
    for name in ("torch", "torchvision", "triton"):
        assert pkgs[name]["index"] == torch_index, name
        assert all(w["url"].startswith(idx.url + "/whl/files/") for w in pkgs[name]["wheels"]), name
    # everything else from the default index, never the stale mirrors on the torch index
    assert pkgs["numpy"]["version"] == "2.2.0"
    assert pkgs["typing-extensions"]["version"] == "4.12.2"
    assert pkgs["filelock"]["version"] == "3.16.1"
    for name, p in pkgs.items():
        if name not in ("torch", "torchvision", "triton"):
            assert p["index"] == idx.pypi_url, name
            assert all(w["url"].startswith(idx.url + "/files/") for w in p["wheels"]), name
    assert {"nvidia-cuda-runtime-cu12", "nvidia-cudnn-cu12", "nvidia-nccl-cu12"} <= set(pkgs)
    # every file for the target only (cp311, linux x86_64), with its real sha256 and size
    for p in pkgs.values():
        assert p["wheels"]
        for w in p["wheels"]:
            assert "cp312" not in w["name"]
            assert (w["hashes"]["sha256"], w["size"]) == real(idx, w["name"]), w["name"]
    meta = lock["tool"]["envmgr"]
    assert meta["profile"] == "cu126" and meta["variant"] == "cu126"
    assert meta["resolver"] == "uv" and re.fullmatch(r"\d+\.\d+\.\d+.*", meta["resolver-version"])
    assert meta["cuda"] == "12.6" and meta["min-driver"] == "525.60.13"
    assert "sm_90" in meta["arch-list"]
    assert meta["fingerprint"].startswith("sha256:")
    assert meta["inputs"]["requirements"] == ["numpy", "torch==2.7.1", "torchvision==0.22.1"]
    assert lock["requires-python"] == "==3.11.*"
    text = lock_file(project, "cu126").read_text()
    assert not re.search(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", text), "a timestamp in the lock"
    # a second lock leaves it byte-identical
    before = lock_file(project, "cu126").read_bytes()
    proc = ok(envmgr(project, "lock", "cu126"))
    assert "unchanged" in proc.stdout
    assert lock_file(project, "cu126").read_bytes() == before
    ok(envmgr(project, "lock", "cu126", "--upgrade"))
    assert lock_file(project, "cu126").read_bytes() == before


def test_cpu_variant_has_no_cuda_facts(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    project = make_project(tmp_path, {"cpu": profile_text(fixture_index, "cpu")})
    ok(envmgr(project, "lock", "cpu", "--quiet"))
    lock = read_lock(project, "cpu")
    pkgs = packages(lock)
    assert pkgs["torch"]["version"] == "2.7.1+cpu"
    assert "triton" not in pkgs and not any(n.startswith("nvidia-") for n in pkgs)
    meta = lock["tool"]["envmgr"]
    assert (meta["cuda"], meta["min-driver"], meta["arch-list"]) == ("", "", [])


def test_planted_torch_and_higher_mirrors_never_picked(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    # a higher numpy mirrored on the torch index must lose to the default index's
    idx.add(TORCH, "cu128", "numpy", "3.0.0", requires_python=">=3.10")
    idx.add(TORCH, "cu128", "filelock", "9.0.0")
    project = make_project(tmp_path, {"open": profile_text(idx, "cu128", torch=">=2.7")})
    ok(envmgr(project, "lock", "open"))
    pkgs = packages(read_lock(project, "open"))
    assert pkgs["torch"]["version"] == "2.7.1+cu128"  # not the planted 99.0.0 on the default index
    assert pkgs["torch"]["index"] == idx.torch_url("cu128")
    assert pkgs["numpy"]["version"] == "2.2.0" and pkgs["numpy"]["index"] == idx.pypi_url
    assert pkgs["filelock"]["version"] == "3.16.1"


def test_stale_mirror_is_not_a_fallback(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    """numpy<2 exists only as the torch index's stale mirror: no solution, not the mirror."""
    project = make_project(tmp_path, {"old": profile_text(fixture_index, packages=("numpy<2",))})
    proc = envmgr(project, "lock", "old")
    failed(proc, detail=True)
    assert "numpy" in proc.stderr
    assert not lock_file(project, "old").exists()


def test_pypi_as_torch_index_takes_pypi_default_build(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    """torch-index-url = index-url: the torch family comes from the default index (PyPI's cu126 build)."""
    idx = fixture_index
    text = profile_text(idx, "cu126", torch=">=2.7,<2.8", torch_index_url=idx.pypi_url,
                        packages=("torchvision==0.22.1",))
    project = make_project(tmp_path, {"pypi": text})
    ok(envmgr(project, "lock", "pypi"))
    lock = read_lock(project, "pypi")
    pkgs = packages(lock)
    assert pkgs["torch"]["version"] == "2.7.1"
    assert all(p["index"] == idx.pypi_url for p in pkgs.values())
    assert lock["tool"]["envmgr"]["torch-index"] == idx.pypi_url
    assert lock["tool"]["envmgr"]["cuda"] == "12.6"


def test_extra_index_is_recorded_for_what_came_from_it(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    """A package only on an extra index is recorded with that index, though both share a host."""
    idx = fixture_index
    extra = FixtureIndex(tmp_path / "extra-index", catalogue=[Release(PYPI, "extra-only", "1.0.0",
                                                                      wheel={"requires": ["numpy>=2"]})])
    try:
        text = profile_text(idx, "cpu", packages=("numpy", "extra-only"),
                            extra=f'extra-index-urls = ["{extra.pypi_url}"]\n')
        project = make_project(tmp_path / "p", {"uv": text, "pt": text})
        ok(envmgr(project, "lock", "uv"))
        ok(envmgr(project, "lock", "pt", "--resolver", "pip-tools"))
        for name in ("uv", "pt"):
            pkgs = packages(read_lock(project, name))
            assert pkgs["extra-only"]["index"] == extra.pypi_url, name
            assert pkgs["extra-only"]["wheels"][0]["url"].startswith(extra.url + "/files/"), name
            assert pkgs["numpy"]["index"] == idx.pypi_url and pkgs["numpy"]["version"] == "2.2.0", name
        assert read_lock(project, "uv")["tool"]["envmgr"]["inputs"]["extra-index-urls"] == [extra.pypi_url]
    finally:
        extra.stop()


# -- hashes -------------------------------------------------------------------------------

def test_unpublished_hash_is_computed_once_then_cached(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    project = make_project(tmp_path, {"cu126": profile_text(idx)})
    idx.clear_log()
    ok(envmgr(project, "lock", "cu126"))
    assert wheel_names(idx) == [MISSING_HASH_FILE]  # that one file, nothing else
    torch = packages(read_lock(project, "cu126"))["torch"]
    (w,) = torch["wheels"]
    assert w["name"] == MISSING_HASH_FILE
    assert (w["hashes"]["sha256"], w["size"]) == real(idx, MISSING_HASH_FILE)
    first = lock_file(project, "cu126").read_bytes()
    # a second lock from scratch downloads nothing: the hash is cached by URL
    lock_file(project, "cu126").unlink()
    idx.clear_log()
    ok(envmgr(project, "lock", "cu126", "--upgrade"))
    assert wheel_names(idx) == []
    assert lock_file(project, "cu126").read_bytes() == first


def test_unpublished_hash_with_pip_tools_is_computed_once(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    project = make_project(tmp_path, {"cu126": profile_text(idx, packages=("torchvision==0.22.1", "numpy"))})
    idx.clear_log()
    ok(envmgr(project, "lock", "cu126", "--resolver", "pip-tools"))
    assert wheel_names(idx) == [MISSING_HASH_FILE]  # pip-tools downloads no other wheel
    torch = packages(read_lock(project, "cu126"))["torch"]
    assert torch["wheels"][0]["hashes"]["sha256"] == real(idx, MISSING_HASH_FILE)[0]
    lock_file(project, "cu126").unlink()
    idx.clear_log()
    ok(envmgr(project, "lock", "cu126", "--resolver", "pip-tools"))
    assert wheel_names(idx) == []


def _routing_indexes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The upstream index of every routing index started in this process from now on."""
    from envmgr.lock import indexproxy

    started: list[str] = []
    enter = indexproxy.RoutingIndex.__enter__

    def spy(self):
        started.append(self.default)
        return enter(self)

    monkeypatch.setattr(indexproxy.RoutingIndex, "__enter__", spy)
    return started


def test_a_fully_hashed_torch_index_is_read_directly_from_the_second_lock(
        fixture_index: FixtureIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envmgr.lock import locker, resolve

    idx = fixture_index
    project = make_project(tmp_path, {"cu118": profile_text(idx, "cu118"), "cu126": profile_text(idx, "cu126")})
    monkeypatch.setenv("ENVMGR_PROJECT", str(project))
    started = _routing_indexes(monkeypatch)
    # cu118 publishes a hash for every file (one of them wrong, but published): the first lock
    # reads it through the routing index and remembers that; the second gives uv the index itself
    locker.lock_profiles(project, ["cu118"])
    assert started == [idx.torch_url("cu118")]
    assert {"torch", "triton"} <= resolve.hashed_projects(idx.torch_url("cu118"))
    first = lock_file(project, "cu118").read_bytes()
    lock_file(project, "cu118").unlink()
    started.clear()
    locker.lock_profiles(project, ["cu118"])
    assert started == []
    assert lock_file(project, "cu118").read_bytes() == first
    # cu126 lists its torch file without a hash: every lock goes through the routing index
    for _ in range(2):
        started.clear()
        locker.lock_profiles(project, ["cu126"], upgrade=True)
        assert started == [idx.torch_url("cu126")]
        assert "torch" not in resolve.hashed_projects(idx.torch_url("cu126"))


def test_a_torch_file_that_lost_its_hash_since_is_still_locked_with_its_own(
        fresh_index: FixtureIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envmgr.lock import locker, resolve

    idx = fresh_index
    project = make_project(tmp_path, {"cu126": profile_text(idx)})
    monkeypatch.setenv("ENVMGR_PROJECT", str(project))
    locker.lock_profiles(project, ["cu126"])  # through the routing index (the torch file is unhashed)
    through = lock_file(project, "cu126").read_bytes()
    # a stale memory (the index hashed every torch file when last read): uv reads the index
    # directly, meets the unhashed file, and the lock still records the file's real hash
    resolve.remember_hashed(idx.torch_url("cu126"), {"torch", "triton"}, set())
    started = _routing_indexes(monkeypatch)
    lock_file(project, "cu126").unlink()
    locker.lock_profiles(project, ["cu126"], upgrade=True)
    assert started == []
    assert packages(read_lock(project, "cu126"))["torch"]["wheels"][0]["hashes"]["sha256"] == real(idx, MISSING_HASH_FILE)[0]
    assert lock_file(project, "cu126").read_bytes() == through


_PROFILE_ERRORS = [
    ("cu126", ("numpy", "num py!"), "p.toml:4: bad requirement 'num py!'"),
    ("cu126", ("numpy", "Torch>=2"), "p.toml:4: torch is set by the 'torch' key"),
    ("cu999", ("numpy",), "p.toml:1: unknown variant 'cu999'"),
]


@pytest.mark.parametrize("variant,packages,error,route", [
    *[(*case, "default index") for case in _PROFILE_ERRORS],
    ("cu118", ("numpy",), "p.toml:5: torch 2.7 on PyPI is a cu126 build, not cu118", "default index"),
    *[(*case, "torch index") for case in _PROFILE_ERRORS],
])
def test_a_profile_error_found_while_the_resolver_starts_stops_it_and_writes_no_lock(
        fixture_index: FixtureIndex, tmp_path: Path, variant: str, packages: tuple[str, ...], error: str,
        route: str) -> None:
    # no lock yet: the requirements and the variant are checked (packaging's parser, the
    # knowledge base) while uv starts, on either route (the torch index's reads only the
    # requirements' names before)
    idx = fixture_index
    torch_index = {"torch index": idx.torch_url(variant)}.get(route, idx.pypi_url)
    text = profile_text(idx, variant, packages=packages, torch_index_url=torch_index)
    project = make_project(tmp_path, {"p": text})
    for args in (["lock", "p"], ["lock", "p", "--quiet"]):
        proc = envmgr(project, *args)
        line = failed(proc)
        assert error in line, line
        assert ("resolving with uv" in proc.stderr) == ("--quiet" not in args)  # found once uv was started
        assert not lock_file(project, "p").exists() and not (project / "locks").exists()


def test_verify_rejects_wrong_published_hash(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    project = make_project(tmp_path, {"cu118": profile_text(fixture_index, "cu118", packages=("torchvision==0.22.1",))})
    proc = envmgr(project, "lock", "cu118", "--verify")
    line = failed(proc)
    assert "hash mismatch" in line and WRONG_HASH_FILE.split("-cp")[0].replace("+", "%2B") in line
    assert not lock_file(project, "cu118").exists()
    # without --verify the published hash is recorded (sync checks it); --verify keeps that lock
    ok(envmgr(project, "lock", "cu118"))
    before = tree(project, skip=(".envmgr",))
    failed(envmgr(project, "lock", "cu118", "--verify", "--upgrade"))
    assert tree(project, skip=(".envmgr",)) == before


def test_verify_passes_and_downloads_every_file(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    project = make_project(tmp_path, {"cu128": profile_text(fixture_index, "cu128")})
    ok(envmgr(project, "lock", "cu128", "--verify"))
    lock = read_lock(project, "cu128")
    cache = Path(os.environ["ENVMGR_CACHE_DIR"]) / "files" / "sha256"
    for p in lock["packages"]:
        for w in p["wheels"]:
            assert (cache / w["hashes"]["sha256"] / w["name"]).is_file(), w["name"]


# -- pins ---------------------------------------------------------------------------------

def test_pins_kept_unless_upgraded(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    idx.remove(PYPI, None, "numpy", "2.2.0")
    project = make_project(tmp_path, {"cu126": profile_text(idx, packages=("numpy", "typing-extensions"))})
    ok(envmgr(project, "lock", "cu126"))
    assert packages(read_lock(project, "cu126"))["numpy"]["version"] == "2.1.0"
    # newer numpy and typing-extensions appear on the default index
    idx.add(PYPI, None, "numpy", "2.2.0", requires_python=">=3.10")
    idx.add(PYPI, None, "typing-extensions", "4.13.0", requires_python=">=3.8")
    before = lock_file(project, "cu126").read_bytes()
    ok(envmgr(project, "lock", "cu126"))
    assert lock_file(project, "cu126").read_bytes() == before  # pins kept
    proc = ok(envmgr(project, "lock", "cu126", "--upgrade-package", "numpy"))
    assert "numpy 2.1.0 -> 2.2.0" in proc.stdout
    pkgs = packages(read_lock(project, "cu126"))
    assert pkgs["numpy"]["version"] == "2.2.0"
    assert pkgs["typing-extensions"]["version"] == "4.12.2"  # not asked to move
    ok(envmgr(project, "lock", "cu126", "--upgrade"))
    assert packages(read_lock(project, "cu126"))["typing-extensions"]["version"] == "4.13.0"


def test_pins_kept_with_pip_tools(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    idx.remove(PYPI, None, "numpy", "2.2.0")
    project = make_project(tmp_path, {"cpu": profile_text(idx, "cpu")})
    ok(envmgr(project, "lock", "cpu", "--resolver", "pip-tools"))
    idx.add(PYPI, None, "numpy", "2.2.0", requires_python=">=3.10")
    ok(envmgr(project, "lock", "cpu"))  # the lock's resolver is kept
    lock = read_lock(project, "cpu")
    assert lock["tool"]["envmgr"]["resolver"] == "pip-tools"
    assert packages(lock)["numpy"]["version"] == "2.1.0"
    ok(envmgr(project, "lock", "cpu", "-P", "numpy"))
    assert packages(read_lock(project, "cpu"))["numpy"]["version"] == "2.2.0"


# -- --check ------------------------------------------------------------------------------

def test_check_fresh_and_stale_without_network(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    project = make_project(tmp_path, {"cu126": profile_text(idx), "cpu": profile_text(idx, "cpu")})
    proc = envmgr(project, "lock", "--check", "cu126")
    assert proc.returncode == 1 and "no lock yet" in proc.stderr
    ok(envmgr(project, "lock", "--all"))
    idx.stop()  # --check needs no network
    idx.clear_log()
    proc = ok(envmgr(project, "lock", "--check"))
    assert "cu126" in proc.stdout and "fresh" in proc.stdout
    before = tree(project)
    (project / "profiles" / "cu126.toml").write_text(profile_text(idx, packages=("numpy", "fixture-app")))
    proc = envmgr(project, "lock", "--check")
    assert proc.returncode == 1, proc.stderr
    assert "cu126" in proc.stderr and "+fixture-app" in proc.stderr and "requirements" in proc.stderr
    assert "cpu" in proc.stdout and "fresh" in proc.stdout  # the other one is fine
    (project / "profiles" / "cu126.toml").write_text(profile_text(idx, python="3.12"))
    proc = envmgr(project, "lock", "--check", "cu126", "--json")
    assert proc.returncode == 1
    assert '"fresh": false' in proc.stdout and "python: 3.11 -> 3.12" in proc.stdout
    assert idx.requests == []
    assert {k: v for k, v in tree(project).items() if not k.startswith("profiles/")} == \
        {k: v for k, v in before.items() if not k.startswith("profiles/")}


def test_check_inherited_file_change_is_stale(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fixture_index
    base = f'python = "3.11"\npackages = ["numpy"]\nindex-url = "{idx.pypi_url}"\n'
    project = make_project(tmp_path, {"_base": base, "cpu": (
        f'extends = "_base.toml"\nvariant = "cpu"\ntorch = "2.7.1"\ntorch-index-url = "{idx.torch_url("cpu")}"\n')})
    ok(envmgr(project, "lock", "cpu"))
    assert packages(read_lock(project, "cpu"))["numpy"]["version"] == "2.2.0"
    ok(envmgr(project, "lock", "--check", "cpu"))
    (project / "profiles" / "_base.toml").write_text(base.replace('["numpy"]', '["numpy", "filelock"]'))
    proc = envmgr(project, "lock", "--check", "cpu")
    assert proc.returncode == 1 and "+filelock" in proc.stderr


def test_check_hand_edited_lock_is_stale(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    project = make_project(tmp_path, {"cpu": profile_text(fixture_index, "cpu")})
    ok(envmgr(project, "lock", "cpu"))
    path = lock_file(project, "cpu")
    path.write_text(path.read_text().replace('python = "3.11"', 'python = "3.12"'))
    proc = envmgr(project, "lock", "--check", "cpu")
    assert proc.returncode == 1 and "fingerprint" in proc.stderr
    ok(envmgr(project, "lock", "cpu"))  # relocking repairs it
    ok(envmgr(project, "lock", "--check", "cpu"))


# -- concurrency --------------------------------------------------------------------------

def test_two_processes_lock_one_profile(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    project = make_project(tmp_path, {"cu126": profile_text(fixture_index, packages=("torchvision==0.22.1",))})
    cmd = [sys.executable, "-m", "envmgr", "lock", "cu126"]
    procs = [subprocess.Popen(cmd, cwd=project, env=cli_env(project), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    concurrent = lock_file(project, "cu126").read_bytes()
    assert sorted("updated" in o for o, _ in outs) == [False, True]  # the second found it done
    assert not [p for p in (project / "locks").iterdir() if p.name != "pylock.cu126.toml"]  # no temp files left
    lock_file(project, "cu126").unlink()
    ok(envmgr(project, "lock", "cu126"))
    assert lock_file(project, "cu126").read_bytes() == concurrent


def test_lock_all_locks_every_profile(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fixture_index
    names = ("cpu", "cu118", "cu126", "cu128")
    extra = "# a comment\n"
    project = make_project(tmp_path, {n: profile_text(idx, n, extra=extra) for n in names})
    (project / "profiles" / "_shared.toml").write_text('python = "3.11"\n')  # a base is not a profile
    proc = ok(envmgr(project, "lock", "--all", "--json", "-j", "4"))
    import json

    results = json.loads(proc.stdout)
    assert [r["profile"] for r in results] == list(names)
    assert sorted(p.name for p in (project / "locks").iterdir()) == [f"pylock.{n}.toml" for n in names]
    for n in names:
        lock = read_lock(project, n)
        assert packages(lock)["torch"]["version"] == f"2.7.1+{n}"
        assert lock["tool"]["envmgr"]["profile"] == n
    ok(envmgr(project, "lock", "--check"))


# -- failures -----------------------------------------------------------------------------

def test_conflict_leaves_old_lock_and_explains(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    project = make_project(tmp_path, {"cu126": profile_text(fixture_index)})
    ok(envmgr(project, "lock", "cu126"))
    before = tree(project, skip=(".envmgr",))
    (project / "profiles" / "cu126.toml").write_text(profile_text(fixture_index, packages=("numpy>=3",)))
    before = {**before, "profiles/cu126.toml": (project / "profiles" / "cu126.toml").read_bytes()}
    proc = envmgr(project, "lock", "cu126")
    line = failed(proc, detail=True)
    assert "cu126" in line and "could not resolve" in line
    assert "No solution found" in proc.stderr and "numpy>=3" in proc.stderr  # uv's explanation
    assert "\x1b[" not in proc.stderr
    assert tree(project, skip=(".envmgr",)) == before
    proc = envmgr(project, "lock", "cu126", "--resolver", "pip-tools")
    failed(proc, detail=True)
    assert "numpy" in proc.stderr
    assert tree(project, skip=(".envmgr",)) == before


def test_unreachable_index_leaves_old_lock(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    project = make_project(tmp_path, {"cu126": profile_text(idx), "cpu": profile_text(idx, "cpu")})
    ok(envmgr(project, "lock", "--all"))
    before = tree(project, skip=(".envmgr",))
    idx.stop()
    for args in (["cu126", "--upgrade"], ["--all", "--upgrade"], ["cpu", "--upgrade", "--resolver", "pip-tools"]):
        proc = envmgr(project, "lock", *args, UV_HTTP_RETRIES="0", timeout=60)
        failed(proc, detail=True)
        assert tree(project, skip=(".envmgr",)) == before, args
    # no lock at all: nothing is written
    (project / "profiles" / "new.toml").write_text(profile_text(idx, "cu128"))
    failed(envmgr(project, "lock", "new", UV_HTTP_RETRIES="0", timeout=60), detail=True)
    assert not lock_file(project, "new").exists()


def test_unknown_resolver_and_profile(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    project = make_project(tmp_path, {"cpu": profile_text(fixture_index, "cpu")})
    before = tree(project)
    line = failed(envmgr(project, "lock", "cpu", "--resolver", "poetry"))
    assert "poetry" in line and "uv" in line
    line = failed(envmgr(project, "lock", "nope"))
    assert "nope" in line and "cpu" in line
    line = failed(envmgr(project, "lock", "cpu", "../x"))
    assert tree(project) == before


def test_bad_profile_among_several_locks_nothing(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fixture_index
    project = make_project(tmp_path, {"cpu": profile_text(idx, "cpu"), "zbad": profile_text(idx, "cu130")})
    before = tree(project)
    line = failed(envmgr(project, "lock", "--all"))
    assert "zbad.toml:2" in line and "cu130" in line
    assert tree(project) == before


# -- credentials --------------------------------------------------------------------------

@pytest.fixture
def private_index(tmp_path_factory: pytest.TempPathFactory):
    index = FixtureIndex(tmp_path_factory.mktemp("private-index"), credentials=(USER, TOKEN))
    yield index
    index.stop()


def test_credentials_used_never_written_or_printed(private_index: FixtureIndex, tmp_path: Path) -> None:
    idx = private_index
    host = idx.url.split("//", 1)[1]
    text = profile_text(idx, "cu126", packages=("torchvision==0.22.1", "numpy"),
                        torch_index_url=idx.with_credentials(idx.torch_url("cu126")),
                        index_url=f"http://${{IDX_USER}}:${{IDX_TOKEN}}@{host}/simple")
    project = make_project(tmp_path, {"priv": text})
    env = {"IDX_USER": USER, "IDX_TOKEN": TOKEN}
    # without the variables: a one-line error naming the variable, not a crash
    line = failed(envmgr(project, "lock", "priv"))
    assert "IDX_USER" in line or "IDX_TOKEN" in line
    for resolver in ("uv", "pip-tools"):
        proc = ok(envmgr(project, "lock", "priv", "--upgrade", "--resolver", resolver, **env))
        assert TOKEN not in proc.stdout + proc.stderr
        text_lock = lock_file(project, "priv").read_text()
        assert TOKEN not in text_lock and USER not in text_lock and "@" not in text_lock
        pkgs = packages(read_lock(project, "priv"))
        assert pkgs["torch"]["index"] == idx.torch_url("cu126")
        assert pkgs["numpy"]["index"] == idx.pypi_url
        assert pkgs["torch"]["wheels"][0]["hashes"]["sha256"] == real(idx, MISSING_HASH_FILE)[0]
    ok(envmgr(project, "lock", "--check", "priv"))  # no variables needed to check
    # a failure prints the resolver's explanation, still without the token
    (project / "profiles" / "priv.toml").write_text(text.replace('"numpy"', '"numpy>=3"'))
    proc = envmgr(project, "lock", "priv", **env)
    failed(proc, detail=True)
    assert TOKEN not in proc.stdout + proc.stderr
    # a wrong token: refused, and the wrong token is not printed either
    proc = envmgr(project, "lock", "priv", "--upgrade", IDX_USER=USER, IDX_TOKEN="wrong-" + TOKEN, UV_HTTP_RETRIES="0")
    failed(proc, detail=True)
    assert TOKEN not in proc.stdout + proc.stderr


# -- the two backends agree ---------------------------------------------------------------

@pytest.mark.parametrize("variant", ["cu126", "cu118"])
def test_pip_tools_and_uv_make_the_same_lock(fixture_index: FixtureIndex, tmp_path: Path, variant: str) -> None:
    idx = fixture_index
    text = profile_text(idx, variant, packages=("torchvision==0.22.1", "numpy", "fixture-app"))
    project = make_project(tmp_path, {"uv": text, "pt": text})
    ok(envmgr(project, "lock", "uv", "--resolver", "uv"))
    idx.clear_log()
    ok(envmgr(project, "lock", "pt", "--resolver", "pip-tools"))
    # pip-tools pins from metadata: no wheel downloaded (the unhashed one is cached by URL already)
    assert wheel_names(idx) == []
    uv_lock, pt_lock = read_lock(project, "uv"), read_lock(project, "pt")
    assert model(pt_lock) == model(uv_lock)
    assert pt_lock["tool"]["envmgr"]["resolver"] == "pip-tools"
    for key in ("cuda", "min-driver", "arch-list", "torch-index", "variant", "python", "platform"):
        assert pt_lock["tool"]["envmgr"][key] == uv_lock["tool"]["envmgr"][key], key
    # both record the published (wrong, for cu118) hash; --verify and sync catch it
    if variant == "cu118":
        vision = packages(uv_lock)["torchvision"]["wheels"][0]
        assert vision["name"] == WRONG_HASH_FILE and vision["hashes"]["sha256"] != real(idx, WRONG_HASH_FILE)[0]


# -- the command line ---------------------------------------------------------------------

@pytest.mark.parametrize("argv,expected", [
    (["lock"], {"names": []}),
    (["lock", "a", "b", "-q", "--upgrade", "-P", "numpy", "--upgrade-package", "torch", "-j", "2"],
     {"names": ["a", "b"], "quiet": True, "upgrade": True, "upgrade_package": ["numpy", "torch"], "jobs": 2}),
    (["lock", "--all", "--check", "--json", "--verify", "--resolver", "pip-tools"],
     {"all_": True, "check": True, "as_json": True, "verify": True, "resolver": "pip-tools"}),
    (["lock", "--help"], None), (["lock", "--resolver=uv"], None), (["lock", "-qU"], None),
    (["lock", "--jobs", "x"], None), (["lock", "--resolver"], None), (["lock", "--bogus"], None),
])
def test_lock_fast_path_reads_only_what_it_knows(argv: list[str], expected: dict | None) -> None:
    from envmgr import commands

    got = commands.parse(commands.LOCK, argv[1:])
    if expected is None:
        assert got is None
    else:
        defaults = {"names": [], "all_": False, "resolver": None, "check": False, "upgrade": False,
                    "upgrade_package": [], "verify": False, "jobs": 4, "quiet": False, "as_json": False}
        assert got == {**defaults, **expected}


@pytest.mark.parametrize("command", ["lock", "sync", "run"])
def test_typer_declarations_are_entrys_parameters(command: str) -> None:
    """cli declares lock, sync (and run's shared options) from entry's data: same names, flags, defaults."""
    import inspect

    import typer

    from envmgr import cli, commands

    params = {"lock": commands.LOCK, "sync": commands.SYNC, "run": commands.SYNC_SHARED}[command]
    signature = inspect.signature(getattr(cli, command)).parameters
    if command != "run":
        assert list(signature) == [p.name for p in params]
    for p in params:
        info = signature[p.name].default
        kind = str(signature[p.name].annotation)
        if p.flags:
            assert isinstance(info, typer.models.OptionInfo) and tuple(info.param_decls) == p.flags
            assert info.default == (None if p.many else p.default)
        assert {"bool": "bool", "int": "int", "str": "Optional[str]", "path": "Optional[Path]", "strs": "List[str]",
                "paths": "List[Path]"}[p.kind] == kind
        assert info.help == p.help


def test_typer_path_gives_the_same_lock(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    project = make_project(tmp_path, {"cpu": profile_text(fixture_index, "cpu")})
    ok(envmgr(project, "lock", "cpu", "-q"))  # fast path
    fast = lock_file(project, "cpu").read_bytes()
    lock_file(project, "cpu").unlink()
    proc = ok(envmgr(project, "lock", "cpu", "--resolver=uv", "--jobs=1"))  # through typer
    assert "cpu:" in proc.stdout
    assert lock_file(project, "cpu").read_bytes() == fast
    proc = ok(envmgr(project, "lock", "--help"))
    assert "--upgrade-package" in proc.stdout
    proc = envmgr(project, "lock", "--bogus")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--bogus" in proc.stderr


# -- online: the shipped default profile against the real index ----------------------------

def _pypi_reachable() -> bool:
    import socket

    from envmgr.lock.resolve import default_index_url

    host = default_index_url().split("//", 1)[1].split("/", 1)[0]
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.online
def test_default_profile_matches_uv_pip_compile(tmp_path: Path) -> None:
    """envmgr's lock of the shipped default profile pins and hashes what plain uv does.

    Metadata only: the index publishes every hash, so neither tool downloads a wheel.
    """
    if not _pypi_reachable():
        pytest.skip("the real package index is not reachable")
    from envmgr.lock.resolve import default_index_url
    from envmgr.model import profiles
    from envmgr.venv.uvtool import uv_bin

    profile = profiles.load(REPO, "default")
    project = tmp_path / "project"
    (project / "profiles").mkdir(parents=True)
    for f in profile.files:
        (project / "profiles" / f.name).write_bytes(f.read_bytes())
    ok(envmgr(project, "lock", "default", timeout=300))
    lock = read_lock(project, "default")
    (tmp_path / "requirements.in").write_text("".join(f"{r}\n" for r in profile.requirements))
    proc = subprocess.run([uv_bin(), "pip", "compile", "requirements.in", "--generate-hashes", "--no-header",
                           "--python-version", profile.python, "--python-platform", profile.uv_platform],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    uv_pins: dict[str, tuple[str, set[str]]] = {}
    current = None
    for line in proc.stdout.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if m:
            from packaging.utils import canonicalize_name

            current = str(canonicalize_name(m.group(1)))
            uv_pins[current] = (m.group(2), set())
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            uv_pins[current][1].add(digest)
    pkgs = packages(lock)
    assert {n: p["version"] for n, p in pkgs.items()} == {n: v for n, (v, _) in uv_pins.items()}
    for name, p in pkgs.items():
        ours = {f["hashes"]["sha256"] for f in [*p.get("wheels", []), *([p["sdist"]] if "sdist" in p else [])]}
        assert ours and ours <= uv_pins[name][1], name  # uv lists every file's hash; ours: the target's files
        assert all(f["size"] > 0 for f in p.get("wheels", [])), name
        assert p["index"] == default_index_url(), name
    meta = lock["tool"]["envmgr"]
    assert meta["variant"] == profile.variant and meta["cuda"] and meta["min-driver"]
    first = lock_file(project, "default").read_bytes()
    ok(envmgr(project, "lock", "default", timeout=300))
    assert lock_file(project, "default").read_bytes() == first
