"""Pure parts of sync and install: the plan, requirements, installed-set parsing, damage, driver."""

from __future__ import annotations

import pytest

from envmgr.core.errors import CheckFailed
from envmgr.model import lockfile
from envmgr.model.lockfile import Lock, LockedFile, LockedPackage, LockMeta
from envmgr.sync import preflight
from envmgr.venv import install


def pkg(name: str, version: str, marker: str | None = None, sha: str = "0" * 64) -> LockedPackage:
    url = f"https://files.example/{name.replace('-', '_')}-{version}-py3-none-any.whl"
    return LockedPackage(name, version, "https://index.example/simple", (LockedFile(url, sha, 10),), marker=marker)


def lock_of(*packages: LockedPackage, python: str = "3.11") -> Lock:
    inputs = {"requirements": ["x"]}
    meta = LockMeta(profile="t", fingerprint=lockfile.fingerprint(inputs), inputs=inputs, resolver="uv",
                    resolver_version="0.13.9", python=python, platform="linux-x86_64", variant="cpu", torch_index="")
    return Lock(tuple(packages), meta)


LINUX = {"sys_platform": "linux", "platform_machine": "x86_64", "python_version": "3.11",
         "python_full_version": "3.11.7", "os_name": "posix", "platform_system": "Linux",
         "implementation_name": "cpython", "platform_python_implementation": "CPython"}


# -- plan ----------------------------------------------------------------------------------------

def test_plan_install_remove_unchanged() -> None:
    lock = lock_of(pkg("numpy", "2.2.0"), pkg("torch", "2.7.1+cpu"), pkg("filelock", "3.16.1"))
    p = install.plan(lock, {"numpy": "2.1.0", "filelock": "3.16.1", "Stray_Pkg": "1.0"})
    assert [q.key for q in p.install] == ["numpy", "torch"]
    assert [q.key for q in p.unchanged] == ["filelock"]
    assert p.remove == ("stray-pkg",)
    assert p.lines() == ["~ numpy 2.1.0 -> 2.2.0", "+ torch 2.7.1+cpu", "- stray-pkg 1.0"]
    assert p.to_json() == {"installed": ["numpy==2.2.0", "torch==2.7.1+cpu"], "removed": ["stray-pkg==1.0"],
                           "unchanged": 1}
    assert not p.empty


def test_plan_exact_is_empty_and_reinstall_forces() -> None:
    lock = lock_of(pkg("numpy", "2.2.0"))
    assert install.plan(lock, {"numpy": "2.2.0"}).empty
    p = install.plan(lock, {"numpy": "2.2.0"}, reinstall=["NumPy"])
    assert [q.key for q in p.install] == ["numpy"] and p.lines() == ["~ numpy 2.2.0 (reinstall)"]


def test_plan_markers_follow_the_target_interpreter() -> None:
    lock = lock_of(pkg("numpy", "2.2.0"), pkg("nvidia-nccl-cu12", "2.26.2", marker="sys_platform == 'linux'"),
                   pkg("pywin", "1.0", marker="sys_platform == 'win32'"))
    p = install.plan(lock, {"pywin": "1.0"}, env=LINUX)
    assert [q.key for q in p.install] == ["numpy", "nvidia-nccl-cu12"] and p.remove == ("pywin",)
    # no environment given: every package counts
    assert len(install.plan(lock, {}).install) == 3


def test_requirements_pin_every_file_by_hash() -> None:
    text = install.requirements([pkg("torch", "2.7.1+cu126", sha="a" * 64),
                                 pkg("nvidia-nccl-cu12", "2.26.2", marker="sys_platform == 'linux'", sha="b" * 64)])
    assert text == (
        "nvidia-nccl-cu12==2.26.2 ; sys_platform == 'linux' \\\n    --hash=sha256:" + "b" * 64 + "\n"
        "torch==2.7.1+cu126 \\\n    --hash=sha256:" + "a" * 64 + "\n"
    )


def test_local_lock_names_the_verified_copies(tmp_path) -> None:
    """What uv installs from: PEP 751, one file a package, a path where envmgr holds a verified copy."""
    import tomllib

    sdist = LockedPackage("legacy", "1.0", "https://index.example/simple",
                          sdist=LockedFile("https://files.example/legacy-1.0.tar.gz", "c" * 64, 5))
    torch = LockedPackage("torch", "2.7.1+cpu", "https://index.example/simple", (
        LockedFile("https://files.example/torch-2.7.1%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl", "a" * 64, 10),
        LockedFile("https://files.example/torch-2.7.1%2Bcpu-cp311-cp311-manylinux_2_28_aarch64.whl", "d" * 64, 11)))
    lock = lock_of(torch, pkg("numpy", "2.2.0", sha="b" * 64), sdist)
    copies = {"a" * 64: tmp_path / "a" / "torch.whl", "c" * 64: tmp_path / "c" / "legacy-1.0.tar.gz"}
    data = tomllib.loads(install.local_lock(lock, lock.packages, copies))
    files = {p["name"]: p.get("wheels", [p.get("sdist")]) for p in data["packages"]}
    assert files["torch"] == [{"name": "torch-2.7.1+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                               "path": str(copies["a" * 64]), "size": 10, "hashes": {"sha256": "a" * 64}}]
    assert files["legacy"][0]["path"] == str(copies["c" * 64]) and "wheels" not in data["packages"][0]
    assert files["numpy"][0]["url"].startswith("https://files.example/") and "path" not in files["numpy"][0]
    assert data["lock-version"] == "1.0"


# -- what is installed, and damage --------------------------------------------------------------

def dist(site, name: str, version: str, files: dict[str, str], installer: str = "uv", record: bool = True,
         metadata: bool = True) -> str:
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    (site / info).mkdir(parents=True)
    rows = []
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        rows.append(f"{rel},,")
    if metadata:
        (site / info / "METADATA").write_text(f"Name: {name}\nVersion: {version}\n")
        rows.append(f"{info}/METADATA,,")
    (site / info / "INSTALLER").write_text(installer + "\n")
    rows.append(f"{info}/INSTALLER,,")
    if record:
        rows.append(f"{info}/RECORD,,")
        (site / info / "RECORD").write_text("\n".join(rows) + "\n")
    return info


@pytest.fixture
def site(tmp_path):
    sp = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    sp.mkdir(parents=True)
    (tmp_path / "venv" / "bin").mkdir()
    return sp


def test_installed_and_broken_reasons(site) -> None:
    dist(site, "numpy", "2.2.0", {"numpy/__init__.py": ""})
    dist(site, "Fixture-App", "1.1.0", {"fixture_app/__init__.py": "", "../../../bin/fixture-app": "#!"})
    dist(site, "filelock", "3.16.1", {"filelock/__init__.py": ""}, installer="pip")
    dist(site, "torch", "2.7.1", {"torch/__init__.py": ""}, record=False)
    dist(site, "triton", "3.3.1", {"triton/__init__.py": ""}, metadata=False)
    dist(site, "bigpkg", "1.0.0", {"bigpkg/a.py": ""})
    dist(site, "bigpkg", "2.0.0", {"bigpkg/b.py": ""})
    (site / "fixture_app" / "__init__.py").unlink()
    (site / "README.txt").write_text("not a dist")
    found = install.installed(site)
    assert {n: d.version for n, d in found.items() if n != "bigpkg"} == {
        "numpy": "2.2.0", "fixture-app": "1.1.0", "filelock": "3.16.1", "torch": "2.7.1", "triton": "3.3.1"}
    assert sorted(found["bigpkg"].dist_infos) == ["bigpkg-1.0.0.dist-info", "bigpkg-2.0.0.dist-info"]
    why = install.broken(site, found.values())
    assert why == {
        "fixture-app": "fixture_app/__init__.py missing",
        "filelock": "installed by pip",
        "torch": "RECORD missing",
        "triton": "METADATA missing",
        "bigpkg": "several versions installed (bigpkg-1.0.0.dist-info, bigpkg-2.0.0.dist-info)",
    }
    assert sorted(n for n, w in why.items() if install.torn(w)) == ["bigpkg", "fixture-app", "torch", "triton"]
    assert install.installed(None) == {} and install.broken(None, []) == {}


def test_remove_dist_takes_files_pycache_and_empty_folders(site) -> None:
    info = dist(site, "pkg", "1.0", {"pkg/__init__.py": "", "pkg/sub/mod.py": "", "../../../bin/pkg": "#!",
                                     "shared/ns/pkg_part.py": ""})
    (site / "shared" / "ns" / "other.py").write_text("another dist's file")
    (site / "pkg" / "sub" / "__pycache__").mkdir()
    (site / "pkg" / "sub" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"")
    (site / "pkg" / "sub" / "mod.py").unlink()  # half-removed already: tolerated
    install.remove_dist(site, info)
    venv = site.parent.parent.parent
    assert not (site / "pkg").exists() and not (site / info).exists() and not (venv / "bin" / "pkg").exists()
    assert (site / "shared" / "ns" / "other.py").is_file() and (venv / "bin").is_dir()
    assert install.installed(site) == {}


def test_remove_dist_never_leaves_the_venv(site, tmp_path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    info = dist(site, "evil", "1.0", {"evil/__init__.py": ""})
    with open(site / info / "RECORD", "a") as fh:
        fh.write("../../../../outside.txt,,\n")
    install.remove_dist(site, info)
    assert outside.read_text() == "keep"


# -- driver ----------------------------------------------------------------------------------------

def test_driver_version_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("ENVMGR_DRIVER_VERSION", "570.86.15")
    assert preflight.driver_version() == "570.86.15"
    monkeypatch.setenv("ENVMGR_DRIVER_VERSION", "none")  # a CPU host, whatever this machine has
    assert preflight.driver_version() is None


def test_check_driver() -> None:
    assert preflight.check_driver("cpu", "", "", None) is None
    assert preflight.check_driver("cu126", "12.6", "525.60.13", "580.95.05") is None
    assert "no NVIDIA driver found" in preflight.check_driver("cu126", "12.6", "525.60.13", None)
    with pytest.raises(CheckFailed) as exc:
        preflight.check_driver("cu130", "13.0", "580", "535.104.05")
    msg = str(exc.value)
    assert "535.104.05" in msg and ">= 580" in msg and "cu118" in msg and "cu129" in msg and "cu130" not in msg.split(
        "can run:")[1]
    assert exc.value.exit_code == 1
    with pytest.raises(CheckFailed, match="no CUDA variant"):
        preflight.check_driver("cu118", "11.8", "450.80.02", "418.0")
