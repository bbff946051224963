"""Locks for several platforms (``platform = ["linux-x86_64", "linux-aarch64"]``).

Offline against the fixture index (an aarch64 build of torch added beside the x86_64 one),
then online against PyPI for the shipped default's two-platform twin. What is pinned down:
one PEP 751 lock holding each platform's files, entries a platform lacks or pins apart named
per platform, the facts each platform's torch file states, sync taking this machine's files,
export/diff/SBOM reading such locks, and every bad input an exit-2 line that changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from fixture_index import PYPI, TORCH, FixtureIndex, torch_wheel
from test_lock import envmgr, failed, make_project, ok, profile_text

from envmgr.model import lockfile

REPO = Path(__file__).resolve().parents[1]
BOTH = 'platform = ["linux-x86_64", "linux-aarch64"]\n'
AARCH64 = "manylinux_2_28_aarch64"


@pytest.fixture
def two_platform_index(fresh_index: FixtureIndex) -> FixtureIndex:
    """The fixture index with an aarch64 CPU torch 2.7.1 beside the x86_64 one, a package with
    an x86_64 wheel only (``x86only``), and one whose newest release is x86_64-only (``split``:
    2.0 for x86_64, 1.0 everywhere)."""
    kwargs = torch_wheel("2.7.1+cpu", None)
    fresh_index.add(TORCH, "cpu", "torch", "2.7.1+cpu", **{**kwargs, "platform_tag": AARCH64})
    fresh_index.add(PYPI, None, "x86only", "1.0", python_tag="cp311", abi_tag="cp311", platform_tag="manylinux_2_28_x86_64")
    fresh_index.add(PYPI, None, "split", "1.0")
    fresh_index.add(PYPI, None, "split", "2.0", python_tag="cp311", abi_tag="cp311", platform_tag="manylinux_2_28_x86_64")
    return fresh_index


def _project(tmp_path: Path, index: FixtureIndex, extra: str = BOTH, packages=("numpy",), name: str = "fleet") -> Path:
    return make_project(tmp_path / "proj", {name: profile_text(index, "cpu", packages=packages, extra=extra)})


def _lock_text(project: Path, name: str = "fleet") -> str:
    return (project / "locks" / f"pylock.{name}.toml").read_text()


def _machine(filename: str) -> str:
    return "aarch64" if "aarch64" in filename else "x86_64" if "x86_64" in filename else "any"


def test_two_platform_lock_holds_each_platforms_files(tmp_path: Path, two_platform_index: FixtureIndex):
    project = _project(tmp_path, two_platform_index)
    out = ok(envmgr(project, "lock", "fleet"))
    assert "linux-x86_64 and linux-aarch64" in out.stderr
    text = _lock_text(project)
    raw = tomllib.loads(text)
    assert raw["tool"]["envmgr"]["platform"] == ["linux-x86_64", "linux-aarch64"]
    assert raw["environments"] == ["sys_platform == 'linux' and platform_machine == 'x86_64'",
                                   "sys_platform == 'linux' and platform_machine == 'aarch64'"]
    torch = next(p for p in raw["packages"] if p["name"] == "torch")
    assert sorted(_machine(w["name"]) for w in torch["wheels"]) == ["aarch64", "x86_64"]
    # a standard reader takes it as a PEP 751 lock
    from packaging.pylock import Pylock

    assert len(Pylock.from_dict(raw).packages) == len(raw["packages"])
    # each platform's view has that platform's torch file only, and the same pins
    lock = lockfile.loads(text)
    x86, arm = lock.for_platform("linux-x86_64"), lock.for_platform("linux-aarch64")
    assert [w.filename for w in x86.package("torch").wheels] == [w["name"] for w in torch["wheels"] if "x86_64" in w["name"]]
    assert [_machine(w.filename) for w in arm.package("torch").wheels] == ["aarch64"]
    assert x86.pins == arm.pins
    assert arm.meta.platform == "linux-aarch64" and arm.environments == (raw["environments"][1],)
    # fresh, and a second lock is byte-identical
    ok(envmgr(project, "lock", "fleet", "--check"))
    ok(envmgr(project, "lock", "fleet"))
    assert _lock_text(project) == text


def test_sync_installs_this_machines_files(tmp_path: Path, two_platform_index: FixtureIndex):
    project = _project(tmp_path, two_platform_index)
    ok(envmgr(project, "lock", "fleet"))
    ok(envmgr(project, "sync", "fleet", "--venv", str(tmp_path / "venv"), timeout=300))
    wheel = next((tmp_path / "venv").rglob("torch-2.7.1+cpu.dist-info/WHEEL"))
    assert "manylinux_2_28_x86_64" in wheel.read_text() and "aarch64" not in wheel.read_text()


def test_lock_for_another_platform_does_not_sync_here(tmp_path: Path, two_platform_index: FixtureIndex):
    project = _project(tmp_path, two_platform_index, extra='platform = "linux-aarch64"\n', name="arm")
    ok(envmgr(project, "lock", "arm"))
    raw = tomllib.loads(_lock_text(project, "arm"))
    assert raw["tool"]["envmgr"]["platform"] == "linux-aarch64"
    assert all(_machine(w["name"]) in ("aarch64", "any") for p in raw["packages"] for w in p.get("wheels", []))
    line = failed(envmgr(project, "sync", "arm", "--frozen", "--venv", str(tmp_path / "venv")))
    assert "is for linux-aarch64, not linux-x86_64 (this machine)" in line
    assert not (tmp_path / "venv").exists()


def test_a_package_pinned_apart_is_named_per_platform(tmp_path: Path, two_platform_index: FixtureIndex):
    project = _project(tmp_path, two_platform_index, packages=("numpy", "split"))
    out = ok(envmgr(project, "lock", "fleet"))
    assert "split stay apart on linux-aarch64" in out.stderr
    raw = tomllib.loads(_lock_text(project))
    splits = sorted((p["version"], p["tool"]["envmgr"]["platforms"], p["marker"]) for p in raw["packages"] if p["name"] == "split")
    assert splits == [("1.0", ["linux-aarch64"], "platform_machine == 'aarch64'"),
                      ("2.0", ["linux-x86_64"], "platform_machine == 'x86_64'")]
    lock = lockfile.loads(_lock_text(project))
    assert lock.for_platform("linux-x86_64").package("split").version == "2.0"
    assert lock.for_platform("linux-aarch64").package("split").version == "1.0"
    # requirements keep both, each with its marker and hashes
    req = ok(envmgr(project, "export", "fleet", "--format", "requirements")).stdout
    assert "split==1.0 ; platform_machine == 'aarch64'" in req and "split==2.0 ; platform_machine == 'x86_64'" in req
    assert "python 3.11, linux-x86_64, linux-aarch64" in req
    # sync here takes x86_64's
    ok(envmgr(project, "sync", "fleet", "--venv", str(tmp_path / "venv"), timeout=300))
    assert list((tmp_path / "venv").rglob("split-2.0.dist-info"))
    # the SBOM names both entries, each with its platforms
    sbom = json.loads(ok(envmgr(project, "export", "fleet", "--format", "cyclonedx")).stdout)
    names = sorted((c["version"], [p["value"] for p in c["properties"] if p["name"] == "envmgr:platforms"])
                   for c in sbom["components"] if c["name"] == "split")
    assert names == [("1.0", ["linux-aarch64"]), ("2.0", ["linux-x86_64"])]


def test_diff_shows_what_adding_a_platform_adds(tmp_path: Path, two_platform_index: FixtureIndex):
    from envmgr.report.diff import diff_locks

    project = _project(tmp_path, two_platform_index, extra="", packages=("numpy", "split"))
    ok(envmgr(project, "lock", "fleet"))
    old = lockfile.loads(_lock_text(project))
    (project / "profiles" / "fleet.toml").write_text(profile_text(two_platform_index, "cpu", packages=("numpy", "split"), extra=BOTH))
    ok(envmgr(project, "lock", "fleet"))
    new = lockfile.loads(_lock_text(project))
    d = diff_locks(old, new)
    assert d.fact("platform").old == "linux-x86_64" and d.fact("platform").new == "linux-x86_64, linux-aarch64"
    names = {c.name: c.kind for c in d.packages}
    # aarch64 is new: its entries are added there; x86_64's are unchanged
    assert names["split [linux-aarch64]"] == "added"
    assert names["torch [linux-aarch64]"] == "added"
    assert not any(n.endswith("[linux-x86_64]") for n in names)


def test_one_platform_locks_round_trip_byte_for_byte():
    # the shipped locks: what this version reads and writes of a one-platform lock is what it was
    for path in sorted((REPO / "locks").glob("pylock.*.toml")):
        text = path.read_text()
        lock = lockfile.loads(text, path)
        assert lock.platforms == ("linux-x86_64",)
        assert lock.for_platform("linux-x86_64") is lock
        assert lock.dumps() == text, path


@pytest.mark.parametrize("value, message", [
    ('platform = ["linux-x86_64", "linux-riscv64"]', "unknown platform 'linux-riscv64'"),
    ('platform = ["linux-x86_64", "linux-x86_64"]', "platform linux-x86_64 is listed twice"),
    ("platform = []", "'platform' is an empty list"),
    ("platform = 3", "'platform' must be a string or a list"),
])
def test_bad_platform_lists_are_one_line_errors(tmp_path: Path, two_platform_index: FixtureIndex, value: str, message: str):
    project = _project(tmp_path, two_platform_index, extra="")
    ok(envmgr(project, "lock", "fleet"))
    before = _lock_text(project)
    (project / "profiles" / "fleet.toml").write_text(profile_text(two_platform_index, "cpu", extra=value + "\n"))
    line = failed(envmgr(project, "lock", "fleet"))
    assert message in line and "fleet.toml:7" in line, line
    assert _lock_text(project) == before


def test_a_package_without_files_for_one_platform_fails_cleanly(tmp_path: Path, two_platform_index: FixtureIndex):
    project = _project(tmp_path, two_platform_index, extra="")
    ok(envmgr(project, "lock", "fleet"))
    before = _lock_text(project)
    (project / "profiles" / "fleet.toml").write_text(
        profile_text(two_platform_index, "cpu", packages=("numpy", "x86only"), extra=BOTH))
    proc = envmgr(project, "lock", "fleet")
    line = failed(proc, detail=True)
    assert "uv could not resolve" in line and "x86only" in proc.stderr
    assert _lock_text(project) == before


def test_a_lock_with_a_bad_platform_table_is_refused(tmp_path: Path, two_platform_index: FixtureIndex):
    project = _project(tmp_path, two_platform_index)
    ok(envmgr(project, "lock", "fleet"))
    text = _lock_text(project)
    for bad in (text.replace('platform = ["linux-x86_64", "linux-aarch64"]', 'platform = ["linux-x86_64", "linux-x86_64"]'),
                text.replace('platform = ["linux-x86_64", "linux-aarch64"]', 'platform = "linux-mips"')):
        (project / "locks" / "pylock.fleet.toml").write_text(bad)
        line = failed(envmgr(project, "sync", "fleet", "--frozen", "--venv", str(tmp_path / "venv")))
        assert "is not a platform or a list of distinct ones" in line


# -- online: PyPI's torch for both platforms ---------------------------------------------------

@pytest.mark.online
def test_default_profile_for_both_platforms_locks_from_pypi(tmp_path: Path):
    project = tmp_path / "proj"
    (project / "profiles").mkdir(parents=True)
    for f in ("_base.toml", "default.toml"):
        (project / "profiles" / f).write_text((REPO / "profiles" / f).read_text())
    with open(project / "profiles" / "default.toml", "a") as fh:
        fh.write(BOTH)
    # starting from the shipped one-platform lock: adding a platform keeps its pins
    (project / "locks").mkdir()
    (project / "locks" / "pylock.default.toml").write_text((REPO / "locks" / "pylock.default.toml").read_text())
    ok(envmgr(project, "lock", "default", timeout=300))
    text = _lock_text(project, "default")
    raw = tomllib.loads(text)
    from packaging.pylock import Pylock

    Pylock.from_dict(raw)
    by_name = {p["name"]: p for p in raw["packages"]}
    for name in ("torch", "numpy", "nvidia-cublas", "nvidia-nccl-cu13", "triton"):
        machines = sorted(_machine(w["name"]) for w in by_name[name]["wheels"])
        assert machines == ["aarch64", "x86_64"], (name, machines)
    # the one-platform default's pins are both platforms'
    shipped = lockfile.loads((REPO / "locks" / "pylock.default.toml").read_text())
    two = lockfile.loads(text)
    assert two.for_platform("linux-x86_64").pins == shipped.pins == two.for_platform("linux-aarch64").pins
    assert two.meta.cuda == "13.2" and two.for_platform("linux-aarch64").meta.build == "2.15.0+cu132"
    # uv installs the x86_64 files of it here: a small slice of the lock (numpy, markupsafe)
    from dataclasses import replace

    pylock = tmp_path / "pylock.toml"
    pylock.write_text(replace(two, packages=tuple(p for p in two.packages if p.key in ("numpy", "markupsafe"))).dumps())
    venv = tmp_path / "venv"
    subprocess.run(["uv", "venv", "-q", "-p", sys.executable, str(venv)], check=True)
    subprocess.run(["uv", "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-r", str(pylock)],
                   check=True, capture_output=True, text=True)
    for dist in ("numpy", "markupsafe"):
        wheel = next(venv.rglob(f"{dist}-*.dist-info/WHEEL")).read_text()
        assert "x86_64" in wheel and "aarch64" not in wheel, wheel


def test_a_bundle_of_a_two_platform_lock_carries_one_platforms_files(tmp_path: Path, two_platform_index: FixtureIndex):
    from envmgr.bundle.make import _for_one_platform

    project = _project(tmp_path, two_platform_index)
    ok(envmgr(project, "lock", "fleet"))
    lock = lockfile.loads(_lock_text(project))
    one = _for_one_platform({"fleet": lock})["fleet"]
    assert one.platforms == ("linux-x86_64",)  # this machine's
    assert all(_machine(f.filename) in ("x86_64", "any") for p in one.packages for f in p.files)
    single = lock.for_platform("linux-aarch64")
    assert _for_one_platform({"fleet": single})["fleet"] is single
