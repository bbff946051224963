"""The lock model: deterministic PEP 751 text, strict reading, atomic writing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomllib

from envmgr.core.errors import LockFileError
from envmgr.core import files
from envmgr.model import lockfile
from envmgr.model.lockfile import Lock, LockedFile, LockedPackage, LockMeta

SHA = "a" * 64


def sample(**meta_changes) -> Lock:
    inputs = {"requirements": ["numpy", "torch==2.7.1"], "variant": "cu126", "python": "3.11",
              "platform": "linux-x86_64", "index-url": "pypi", "torch-index": "https://t.example/whl/cu126",
              "extra-index-urls": [], "resolver": "uv 0.13"}
    meta = LockMeta(profile="cu126", fingerprint=lockfile.fingerprint(inputs), inputs=inputs, resolver="uv",
                    resolver_version="0.13.9", python="3.11", platform="linux-x86_64", variant="cu126",
                    torch_index="https://t.example/whl/cu126", cuda="12.6", min_driver="525.60.13",
                    toolkit_driver="560.28.03", arch_list=("sm_80", "sm_90"), ptx="", **meta_changes)
    torch = LockedPackage("torch", "2.7.1+cu126", "https://t.example/whl/cu126", wheels=(
        LockedFile("https://t.example/whl/files/torch-2.7.1%2Bcu126-cp311-cp311-manylinux_2_28_x86_64.whl", SHA, 123),))
    numpy = LockedPackage("numpy", "2.2.0", "https://p.example/simple",
                          wheels=(LockedFile("https://p.example/files/numpy-2.2.0-py3-none-any.whl", "b" * 64, 45),),
                          marker="sys_platform == 'linux'")
    sd = LockedPackage("Some_Pkg", "1.0", "https://p.example/simple",
                       sdist=LockedFile("https://p.example/files/some_pkg-1.0.tar.gz", "c" * 64, 7))
    return Lock(packages=(torch, numpy, sd), meta=meta, requires_python="==3.11.*",
                environments=("sys_platform == 'linux' and platform_machine == 'x86_64'",))


def test_roundtrip_and_determinism() -> None:
    lock = sample()
    text = lock.dumps()
    assert text == sample().dumps()
    again = lockfile.loads(text)
    assert again == lockfile.loads(text)
    assert again.dumps() == text
    assert [p.name for p in again.packages] == ["numpy", "some-pkg", "torch"]  # sorted, canonical names
    assert again.meta == lock.meta
    assert again.package("Some.Pkg").sdist.size == 7
    assert again.package("torch").wheels[0].filename == "torch-2.7.1+cu126-cp311-cp311-manylinux_2_28_x86_64.whl"
    assert again.pins == {"numpy": "2.2.0", "some-pkg": "1.0", "torch": "2.7.1+cu126"}
    assert lock.digest() == again.digest() and lock.digest().startswith("sha256:")


def test_dumps_is_pep751() -> None:
    data = tomllib.loads(sample().dumps())
    assert data["lock-version"] == "1.0" and data["created-by"] == "envmgr"
    assert data["requires-python"] == "==3.11.*"
    for p in data["packages"]:
        assert {"name", "version", "index"} <= set(p)
        for f in [*p.get("wheels", []), *([p["sdist"]] if "sdist" in p else [])]:
            assert {"url", "size", "hashes"} <= set(f) and len(f["hashes"]["sha256"]) == 64
    tool = data["tool"]["envmgr"]
    for key in ("profile", "fingerprint", "resolver", "resolver-version", "cuda", "min-driver", "arch-list", "inputs"):
        assert key in tool, key


def test_dumps_keeps_the_committed_locks_bytes() -> None:
    """The committed lock (written when dumps built a tomlkit document) reads and writes back byte for byte."""
    committed = Path(__file__).resolve().parents[1] / "locks" / "pylock.default.toml"
    text = committed.read_text()
    assert lockfile.loads(text, committed).dumps() == text


@pytest.mark.parametrize("odd", ['a "quoted" marker', "back\\slash", "tab\tnew\nline", "caf\u00e9", "del\x7f", "bell\x07"])
def test_dumps_escapes_every_string(odd: str) -> None:
    lock = sample()
    numpy = lock.package("numpy")
    odd_pkg = LockedPackage(numpy.name, numpy.version, f"https://p.example/{odd}", numpy.wheels, marker=odd)
    lock = lock.with_packages([p for p in lock.packages if p.name != "numpy"] + [odd_pkg])
    data = tomllib.loads(lock.dumps())
    got = next(p for p in data["packages"] if p["name"] == "numpy")
    assert got["marker"] == odd and got["index"] == f"https://p.example/{odd}"
    assert lockfile.loads(lock.dumps()).package("numpy").marker == odd


def test_fingerprint_is_order_independent_and_changes_name_inputs() -> None:
    a = {"python": "3.11", "requirements": ["numpy"]}
    assert lockfile.fingerprint(a) == lockfile.fingerprint(dict(reversed(list(a.items()))))
    assert lockfile.fingerprint(a) != lockfile.fingerprint({**a, "python": "3.12"})
    lines = lockfile.changed_inputs({**a, "index-url": ""}, {"python": "3.12", "requirements": ["numpy", "scipy"],
                                                           "index-url": "https://x"})
    assert lines == ["index-url: (none) -> https://x", "python: 3.11 -> 3.12", "requirements: +scipy"]


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


GOOD = sample().dumps()
BAD = {
    "not-toml": ("lock-version = \n", "not valid TOML"),
    "no-lock-version": (GOOD.replace('lock-version = "1.0"\n', ""), "not a PEP 751 lock"),
    "other-lock-version": (_edit(GOOD, 'lock-version = "1.0"', 'lock-version = "2.0"'), "not a PEP 751 lock"),
    "requirements-txt": ("numpy==2.2.0 --hash=sha256:" + SHA + "\n", "not valid TOML"),
    "no-packages": ('lock-version = "1.0"\n[tool.envmgr]\nprofile = "x"\n', "not a PEP 751 lock"),
    "uv-pylock": ('lock-version = "1.0"\ncreated-by = "uv"\n[[packages]]\nname = "numpy"\nversion = "2.2.0"\n'
                  'wheels = [{url = "https://x/numpy-2.2.0-py3-none-any.whl", hashes = {sha256 = "' + SHA + '"}}]\n',
                  "no [tool.envmgr] table"),
    "edited-input": (_edit(GOOD, 'python = "3.11"\nrequirements', 'python = "3.12"\nrequirements'),
                     "fingerprint does not match"),
    "edited-requirements": (_edit(GOOD, '"torch==2.7.1"]', '"torch==2.7.0"]'), "fingerprint does not match"),
    "edited-fingerprint": (_edit(GOOD, 'fingerprint = "sha256:', 'fingerprint = "sha256:0'), "fingerprint does not match"),
    "meta-lacks-key": (_edit(GOOD, 'resolver = "uv"\n', ""), "lacks 'resolver'"),
    "file-lacks-hash": (_edit(GOOD, ', hashes = {sha256 = "' + "b" * 64 + '"}', ""), "lacks url, size or hashes.sha256"),
    "file-lacks-size": (_edit(GOOD, "size = 45, ", ""), "lacks url, size or hashes.sha256"),
    "package-no-files": ('lock-version = "1.0"\n[[packages]]\nname = "numpy"\nversion = "2.2.0"\n'
                         + GOOD[GOOD.index("[tool.envmgr]"):], "has no files"),
    "package-no-version": ('lock-version = "1.0"\n[[packages]]\nname = "numpy"\n'
                           + GOOD[GOOD.index("[tool.envmgr]"):], "lacks name or version"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_loads_rejects(case: str) -> None:
    text, words = BAD[case]
    with pytest.raises(LockFileError) as info:
        lockfile.loads(text, "locks/pylock.x.toml")
    msg = str(info.value)
    assert msg.startswith("locks/pylock.x.toml"), msg
    assert words in msg, msg
    assert "envmgr lock" in msg or case in ("file-lacks-hash", "file-lacks-size", "package-no-version")
    assert info.value.exit_code == 2


def test_read_missing_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(LockFileError) as info:
        lockfile.read(tmp_path / "locks" / "pylock.cu126.toml")
    assert "envmgr lock cu126" in str(info.value)


def test_write_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locks" / "pylock.x.toml"
    assert files.write_atomic(path, "one\n") is True
    os.utime(path, (1, 1))
    assert files.write_atomic(path, "one\n") is False  # unchanged: not even touched
    assert path.stat().st_mtime == 1
    assert files.write_atomic(path, "two\n") is True
    assert path.read_text() == "two\n" and oct(path.stat().st_mode & 0o777) == "0o644"

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        files.write_atomic(path, "three\n")
    assert path.read_text() == "two\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["pylock.x.toml"]  # no temp file left


def test_lock_path_and_name(tmp_path: Path) -> None:
    p = lockfile.lock_path(tmp_path, "cu126")
    assert p == tmp_path / "locks" / "pylock.cu126.toml"
    assert lockfile.lock_profile_name(p) == "cu126"
