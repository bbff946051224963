"""Facts from the wheels (issue 12): a lock records what its torch file says of itself.

Against the fixture index (``fresh_index.ranges = True``: it answers range requests as the
real file hosts do): the torch file's METADATA and ``torch/version.py`` read by range
requests and cached by sha256; a profile whose variant is not the build's stops before a
lock is written; a release unknown to the table is learned by ``variants --refresh``; an
overlay that changes a recorded fact makes ``lock --check`` exit 1; a torch that requires no
triton locks without it; the arch list read from ``libtorch_cuda.so``; broken files and
overlays are one-line errors that change nothing. The online test runs the issue's scenario
against the real index.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fixture_index import PYPI, TORCH, FixtureIndex, fatbin, torch_wheel
from test_lock import envmgr, failed, lock_file, make_project, ok, packages, profile_text, read_lock, tree

from envmgr.model import facts as F
from envmgr.net.wheelmeta import fatbin_archs

CU132_PINS = {"nvidia-cuda-runtime-cu12": "12.6.77"}  # on the fixture's PyPI


def cache() -> Path:
    return Path(os.environ["ENVMGR_CACHE_DIR"])


def pypi_profile(idx: FixtureIndex, variant: str, torch: str) -> str:
    return profile_text(idx, variant, torch=torch, torch_index_url=idx.pypi_url, index_url=idx.pypi_url)


# -- parsing ------------------------------------------------------------------------------

def test_version_py_and_metadata_give_the_build() -> None:
    meta = (b"Metadata-Version: 2.4\nName: torch\nVersion: 2.15.0\n"
            b'Requires-Dist: nvidia-cudnn-cu13==9.26.0.51; platform_system == "Linux"\n'
            b'Requires-Dist: nvidia-nccl-cu13==2.30.7; platform_system == "Linux"\n'
            b'Requires-Dist: triton~=3.9.0; platform_system == "Linux" and python_version < "3.16"\n'
            b'Requires-Dist: pyyaml; extra == "pyyaml"\n\n')
    version_py = (b"from typing import Optional\n__version__ = '2.15.0+cu132'\ndebug = False\n"
                  b"cuda: Optional[str] = '13.2'\nhip: Optional[str] = None\n")
    b = F.parse("torch", meta, version_py)
    assert (b.version, b.cuda, b.variant, b.label) == ("2.15.0+cu132", "13.2", "cu132", "cu132")
    assert b.pins(F.target_env("3.11", "linux-x86_64")) == {"cudnn": "9.26.0.51", "nccl": "2.30.7", "triton": "~=3.9.0"}
    assert F.BuildFacts.from_json(json.loads(json.dumps(b.to_json()))) == b
    # no label (PyPI's builds of older releases): the variant from CUDA; ROCm and CPU likewise
    assert F.parse("t", meta, b"__version__ = '2.7.1'\ncuda = '12.6'\n").variant == "cu126"
    assert F.parse("t", meta, b"__version__ = '2.7.1'\ncuda = None\nhip = '6.3.42131-fa1d09cbd'\n").variant == "rocm6.3"
    assert F.parse("t", meta, b"__version__ = '2.7.1+cpu'\ncuda = None\n").variant == "cpu"
    with pytest.raises(F.WheelFactsError, match="says nothing about CUDA"):
        F.parse("t", meta, b"__version__ = '2.7.1'\ndebug = False\n")


def test_fat_binary_headers_give_the_archs_whatever_the_chunks() -> None:
    blob = b"\x50\xed\x55\xba" + b"\x01\x00\x10\x00" + b"\xff" * 40 + fatbin([75, 80, 90, 100, 120], [120])
    expected = ({75, 80, 90, 100, 120}, {120})
    for size in (1, 7, 64, 4096, len(blob)):
        assert fatbin_archs(blob[i:i + size] for i in range(0, len(blob), size)) == expected
    assert fatbin_archs([b"no fat binary here" * 100]) == (set(), set())
    # the build's list is what most kernels carry; a few kernels built for more add nothing
    many = fatbin([75, 80, 90]) * 3 + fatbin([89, 90, 103])
    assert fatbin_archs([many]) == ({75, 80, 90}, set())


# -- at lock time -------------------------------------------------------------------------

def test_lock_reads_the_torch_file_by_ranges_and_records_its_facts(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    idx.ranges = True
    project = make_project(tmp_path, {"cu128": profile_text(idx, "cu128")})
    idx.clear_log()
    ok(envmgr(project, "lock", "cu128"))
    meta = read_lock(project, "cu128")["tool"]["envmgr"]
    assert (meta["build"], meta["cuda"], meta["cudnn"], meta["nccl"], meta["triton"]) == \
        ("2.7.1+cu128", "12.8", "9.7.1.26", "2.26.2", "3.3.1")
    assert meta["sources"] == {"cuda": "wheel-metadata", "min-driver": "knowledge-base", "toolkit-driver": "knowledge-base",
                               "arch-list": "inferred", "ptx": "inferred"}  # the table's cu128/2.7 row is inferred
    assert idx.wheel_downloads() == []  # no whole wheel: range requests only
    ranged = [r for r in idx.requests if r.kind == "wheel" and r.status == 206]
    assert 1 <= len(ranged) <= 4, ranged
    # cached by the file's sha256: a second lock from scratch asks nothing of the file
    lock_file(project, "cu128").unlink()
    idx.clear_log()
    ok(envmgr(project, "lock", "cu128", "--upgrade"))
    assert [r for r in idx.requests if r.kind == "wheel"] == []


def test_an_exact_pin_has_its_facts_read_while_the_resolver_works(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    """``read_ahead`` (run while uv resolves): the index page names the file uv will pick for
    ``==X.Y.Z``; its facts are cached by sha256, so after uv nothing more is read."""
    from envmgr.lock import facts as wheelfacts
    from envmgr.lock.resolve import Indexes
    from envmgr.model import profiles

    idx = fresh_index
    idx.ranges = True
    project = make_project(tmp_path, {"cu128": profile_text(idx, "cu128"),
                                      "range": profile_text(idx, "cu128", torch=">=2.7,<2.8")})
    loose = profiles.load(project, "range")
    idx.clear_log()
    wheelfacts.read_ahead(loose, Indexes.of(loose).torch)  # not an exact pin: nothing guessed, nothing read
    assert [r for r in idx.requests if r.kind == "wheel"] == []
    exact = profiles.load(project, "cu128")
    wheelfacts.read_ahead(exact, Indexes.of(exact).torch)
    assert [r for r in idx.requests if r.kind == "wheel" and r.status == 206]
    assert idx.wheel_downloads() == []
    idx.clear_log()
    ok(envmgr(project, "lock", "cu128"))  # the file uv picked is the one read ahead: not read again
    assert [r for r in idx.requests if r.kind == "wheel" and r.method == "GET"] == []  # (sizes: HEAD)
    (torch,) = packages(read_lock(project, "cu128"))["torch"]["wheels"]
    digest = torch["hashes"]["sha256"]
    assert json.loads((cache() / "facts" / digest[:2] / f"{digest}.build.json").read_text())["version"] == "2.7.1+cu128"


def test_a_server_without_ranges_gets_the_whole_file_once(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index  # ranges off: the last resort, the whole file into the verified cache
    project = make_project(tmp_path, {"cu128": profile_text(idx, "cu128")})
    idx.clear_log()
    ok(envmgr(project, "lock", "cu128"))
    (torch,) = packages(read_lock(project, "cu128"))["torch"]["wheels"]
    # (the answer to the first range request is dropped unread, then the file is fetched)
    assert {r.path.rsplit("/", 1)[-1] for r in idx.wheel_downloads()} == {torch["name"]}
    assert (cache() / "files" / "sha256" / torch["hashes"]["sha256"] / torch["name"]).is_file()


def test_variant_that_is_not_the_build_stops_before_the_lock(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    idx.ranges = True
    # a release newer than the table, published on the PyPI-shaped index as a CUDA 13.2 build
    idx.add(PYPI, None, "torch", "2.20.0", **torch_wheel("2.20.0", "13.2", CU132_PINS, triton="3.3.1"))
    project = make_project(tmp_path, {"new": pypi_profile(idx, "cu130", "==2.20.0")})
    line = failed(envmgr(project, "lock", "new"))
    assert "is a cu132 build" in line and "CUDA 13.2" in line and "torch/version.py: 2.20.0" in line, line
    assert f"{project / 'profiles' / 'new.toml'}:1" in line and 'set variant = "cu132"' in line, line
    assert not lock_file(project, "new").exists()
    (project / "profiles" / "new.toml").write_text(pypi_profile(idx, "cu132", "==2.20.0"))
    ok(envmgr(project, "lock", "new"))
    meta = read_lock(project, "new")["tool"]["envmgr"]
    assert (meta["cuda"], meta["build"], meta["min-driver"]) == ("13.2", "2.20.0", "580")
    assert meta["arch-list"] and meta["sources"]["arch-list"] in ("knowledge-base", "inferred")
    # a labelled file on a variant folder: cu118 against a +cu126 build
    idx.add(TORCH, "cu118", "torch", "2.20.1+cu126", **torch_wheel("2.20.1+cu126", "12.6", triton=None))
    project2 = make_project(tmp_path / "p2", {"old": profile_text(idx, "cu118", torch="==2.20.1")})
    line = failed(envmgr(project2, "lock", "old"))
    assert "cu126" in line and "cu118" in line, line
    assert not lock_file(project2, "old").exists()


def test_a_torch_requiring_no_triton_locks_without_it(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    idx.ranges = True
    # on an index that has triton (the guess is resolved away again) ...
    idx.add(TORCH, "cu126", "torch", "2.20.0+cu126", **torch_wheel("2.20.0+cu126", "12.6", triton=None))
    # ... and on a partial mirror that has none
    idx.add(TORCH, "cu132", "torch", "2.20.0+cu132", **torch_wheel("2.20.0+cu132", "13.2", triton=None))
    for variant in ("cu126", "cu132"):
        project = make_project(tmp_path / variant, {variant: profile_text(idx, variant, torch="==2.20.0")})
        ok(envmgr(project, "lock", variant))
        lock = read_lock(project, variant)
        assert "triton" not in packages(lock), variant
        assert packages(lock)["torch"]["version"] == f"2.20.0+{variant}"
        assert lock["tool"]["envmgr"].get("triton", "") == ""
        ok(envmgr(project, "lock", variant))  # again, with the previous lock's pins
        assert "triton" not in packages(read_lock(project, variant))


# -- the knowledge base learns ------------------------------------------------------------

def test_refresh_learns_a_release_unknown_to_the_table(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    idx.ranges = True
    idx.add(PYPI, None, "torch", "2.20.0", **torch_wheel("2.20.0", "13.4", CU132_PINS))
    idx.add(TORCH, "cu134", "torch", "2.20.0+cu134", **torch_wheel("2.20.0+cu134", "13.4", CU132_PINS))
    project = make_project(tmp_path, {})
    proc = envmgr(project, "variants", "--torch", "2.20")
    assert proc.returncode == 2 and "no torch release" in proc.stderr
    proc = ok(envmgr(project, "variants", "--refresh", "--json", "--index-url", idx.pypi_url,
                     "--torch-index", idx.url + "/whl/{variant}"))
    learned = json.loads(proc.stdout)
    (rel,) = learned["releases"]
    assert (rel["torch"], rel["pypi-default"], rel["cuda"], rel["variants"]) == ("2.20", "cu134", "13.4", ["cu134"])
    assert learned["new_variants"] == ["cu134"]
    overlay = cache() / "knowledge" / "variants.toml"
    assert overlay.is_file() and "CUDA 13.4" in overlay.read_text() and "cu134" in overlay.read_text()
    data = json.loads(ok(envmgr(project, "variants", "--torch", "2.20", "--json")).stdout)
    (row,) = data["releases"]
    v = {x["variant"]: x for x in row["variants"]}
    assert v["cu134"]["cuda"] == "13.4" and v["cu134"]["pypi_default"] and v["cu134"]["min_driver"] == "580"
    assert "arch-list" in v["cu134"]["inferred"] and "min-driver" in v["cu134"]["inferred"]
    assert "(inferred)" in ok(envmgr(project, "variants", "--torch", "2.20")).stdout
    # a second refresh learns nothing new and leaves the overlay as it is
    before = overlay.read_bytes()
    ok(envmgr(project, "variants", "--refresh", "--index-url", idx.pypi_url, "--torch-index", idx.url + "/whl/{variant}"))
    assert overlay.read_bytes() == before
    # offline: exit 2, nothing changed
    idx.set_offline(True)
    line = failed(envmgr(project, "variants", "--refresh", "--index-url", idx.pypi_url))
    assert "cannot reach" in line and overlay.read_bytes() == before


def test_check_sees_a_fact_the_overlay_changed(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    idx.ranges = True
    project = make_project(tmp_path, {"cu126": profile_text(idx, "cu126")})
    ok(envmgr(project, "lock", "cu126"))
    before = read_lock(project, "cu126")
    ok(envmgr(project, "lock", "--check", "cu126"))
    (project / "variants.toml").write_text(
        '[[arch]]\nvariant = "cu126"\ntorch = ">=2.7,<2.8"\nlist = ["8.0", "9.0"]\nptx = "9.0"\nsource = "a test"\n')
    proc = envmgr(project, "lock", "--check", "cu126")
    assert proc.returncode == 1 and "fact arch-list" in proc.stderr and "sm_80 sm_90" in proc.stderr, proc.stderr
    ok(envmgr(project, "lock", "cu126"))
    after = read_lock(project, "cu126")
    assert after["tool"]["envmgr"]["arch-list"] == ["sm_80", "sm_90"] and after["tool"]["envmgr"]["ptx"] == "sm_90"
    assert {n: p["version"] for n, p in packages(after).items()} == {n: p["version"] for n, p in packages(before).items()}
    ok(envmgr(project, "lock", "--check", "cu126"))


def test_arch_list_from_the_binary(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    idx.ranges = True
    idx.add(TORCH, "cu126", "torch", "2.20.0+cu126",
            **torch_wheel("2.20.0+cu126", "12.6", triton=None, binary=fatbin([80, 86, 90], [90])))
    project = make_project(tmp_path, {"b": profile_text(idx, "cu126", torch="==2.20.0")})
    ok(envmgr(project, "lock", "b"))
    meta = read_lock(project, "b")["tool"]["envmgr"]
    assert meta["sources"]["arch-list"] != "wheel-binary" and meta["arch-list"] != ["sm_80", "sm_86", "sm_90"]
    # the wheel at hand: sync reads its binary once (cached by sha256) and warns ...
    proc = ok(envmgr(project, "sync", "b", timeout=300))
    assert "warning: fact arch-list" in proc.stderr + proc.stdout, proc.stderr
    # ... so lock --check sees the lock disagree with its own torch binary
    proc = envmgr(project, "lock", "--check", "b")
    assert proc.returncode == 1 and "its torch binary has sm_80 sm_86 sm_90 +PTX sm_90" in proc.stderr, proc.stderr
    ok(envmgr(project, "lock", "b", "--verify"))
    meta = read_lock(project, "b")["tool"]["envmgr"]
    assert (meta["arch-list"], meta["ptx"], meta["sources"]["arch-list"]) == (["sm_80", "sm_86", "sm_90"], "sm_90", "wheel-binary")
    ok(envmgr(project, "lock", "--check", "b"))


# -- bad input: one line, exit 2, nothing changed -----------------------------------------

@pytest.mark.parametrize("fault", ["truncated", "not-a-zip", "no-cuda"])
def test_broken_torch_files_are_one_line_errors(fresh_index: FixtureIndex, tmp_path: Path, fault: str) -> None:
    idx = fresh_index
    idx.ranges = True
    kwargs = torch_wheel("2.20.0+cu126", "12.6", triton=None,
                         version_py='__version__ = "2.20.0+cu126"\ndebug = False\n' if fault == "no-cuda" else None)
    wheel = idx.add(TORCH, "cu126", "torch", "2.20.0+cu126", **kwargs)
    if fault == "truncated":
        wheel.write_bytes(wheel.read_bytes()[: wheel.stat().st_size // 2])
    elif fault == "not-a-zip":
        wheel.write_bytes(b"<html>not a wheel</html>\n" * 100)
    project = make_project(tmp_path, {"b": profile_text(idx, "cu126", torch="==2.20.0"),
                                      "ok": profile_text(idx, "cpu")})
    ok(envmgr(project, "lock", "ok"))
    before = tree(project, skip=(".envmgr",))
    line = failed(envmgr(project, "lock", "b"))
    assert ("says nothing about CUDA" in line) if fault == "no-cuda" else ("not a readable wheel" in line), line
    assert tree(project, skip=(".envmgr",)) == before


def test_an_overlay_that_is_not_toml_is_one_line_error(fresh_index: FixtureIndex, tmp_path: Path) -> None:
    idx = fresh_index
    project = make_project(tmp_path, {"cpu": profile_text(idx, "cpu")})
    ok(envmgr(project, "lock", "cpu"))
    overlay = cache() / "knowledge" / "variants.toml"
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_text("[torch.'2.20'\nvariants = [\n")
    before = tree(project, skip=(".envmgr",))
    for args in (("variants", "--refresh", "--index-url", idx.pypi_url), ("variants",), ("lock", "cpu")):
        line = failed(envmgr(project, *args))
        assert "not valid TOML" in line and str(overlay) in line, line
    assert overlay.read_text() == "[torch.'2.20'\nvariants = [\n"
    assert tree(project, skip=(".envmgr",)) == before


# -- online: the scenario ---------------------------------------------------------

@pytest.mark.online
@pytest.mark.slow
def test_torch_2_15_from_pypi(tmp_path: Path) -> None:
    """cu130 + torch 2.15.0 from PyPI stops (it is a CUDA 13.2 build); cu132 locks with CUDA
    13.2, a 580 driver and a sourced arch list; sync reads the real binary's arch list."""
    from test_lock import _pypi_reachable

    if not _pypi_reachable():
        pytest.skip("the real package index is not reachable")
    text = 'variant = "{v}"\ntorch = "==2.15.0"\ntorch-index-url = "pypi"\npython = "3.11"\n'
    project = make_project(tmp_path, {"new": text.format(v="cu130")})
    line = failed(envmgr(project, "lock", "new", timeout=300))
    assert "cu132" in line and "13.2" in line, line
    assert not lock_file(project, "new").exists()
    (project / "profiles" / "new.toml").write_text(text.format(v="cu132"))
    ok(envmgr(project, "lock", "new", timeout=300))
    meta = read_lock(project, "new")["tool"]["envmgr"]
    assert meta["cuda"] == "13.2" and meta["min-driver"].startswith("580") and meta["build"] == "2.15.0+cu132"
    assert meta["arch-list"] and meta["sources"]["arch-list"] in ("knowledge-base", "inferred", "wheel-binary")
    # the wheel at hand (what sync does once it has installed it: lock.facts.warn_binary): the
    # arch list read from the real binary is cached by sha256 and agrees with the lock
    from envmgr.lock import facts as wheelfacts
    from envmgr.model import lockfile
    from envmgr.net.fetch import fetch

    lock = lockfile.read(lock_file(project, "new"))
    torch = lock.package("torch")
    paths = fetch([("torch", torch.install_file)])
    assert wheelfacts.warn_binary(lock, paths) == ""
    cached = json.loads((cache() / "facts" / torch.install_file.sha256[:2] /
                         f"{torch.install_file.sha256}.binary.json").read_text())
    assert cached["arch-list"] == ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], cached
    ok(envmgr(project, "lock", "--check", "new"))
    # and a lock made now records the binary's list, with that source
    ok(envmgr(project, "lock", "new", timeout=300))
    meta = read_lock(project, "new")["tool"]["envmgr"]
    assert (meta["arch-list"], meta["sources"]["arch-list"]) == (cached["arch-list"], "wheel-binary")
