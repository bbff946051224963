"""``envmgr.oci.wheelfs``: a wheel laid out for an image's venv straight from its zip is what uv
installs into a venv at that path (scripts, ``.data`` folders, modes, RECORD), every member is
checked as it streams, and a malformed wheel is one line."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fixture_index import build_wheel

from envmgr.core.errors import UserError
from envmgr.oci import wheelfs
from envmgr.venv import uvtool

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
ENTRY_POINTS = """[console_scripts]
rich-tool = richpkg.cli:main
nested = richpkg.cli:Group.run [extra]

[gui_scripts]
rich-gui = richpkg.cli:main
"""


def rich_wheel(tmp_path: Path) -> Path:
    """A wheel with every place a wheel's files can go, one executable member, a stored and a
    deflated member."""
    data = "richpkg-1.0.data"
    built = build_wheel(tmp_path / "src", "richpkg", "1.0", files={
        "richpkg/cli.py": "def main():\n    print('rich ok')\n\nclass Group:\n    run = staticmethod(main)\n",
        "richpkg/tool.sh": "#!/bin/sh\necho tool\n",
        "richpkg/blob.bin": os.urandom(3000),
        f"{data}/scripts/rich-legacy": "#!python\nimport richpkg.cli\nrichpkg.cli.main()\n",
        f"{data}/scripts/plain.sh": "#!/bin/sh\necho plain\n",
        f"{data}/headers/rich.h": "int rich(void);\n",
        f"{data}/data/share/richpkg/notes.txt": "notes\n",
        f"{data}/purelib/richextra.py": "X = 1\n",
        f"{data}/platlib/richplat.py": "Y = 2\n",
        "richpkg-1.0.dist-info/entry_points.txt": ENTRY_POINTS,
    })
    # Mark one member executable, as a build backend does for a shipped tool.
    out = tmp_path / built.name
    with zipfile.ZipFile(built) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename == "richpkg/tool.sh":
                info.external_attr = 0o100755 << 16
            dst.writestr(info, src.read(info.filename))
    return out


def tree(root: Path) -> dict[str, tuple[bytes, bool]]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_symlink() or "__pycache__" in p.parts:
                continue
            out[p.relative_to(root).as_posix()] = (p.read_bytes(), bool(p.stat().st_mode & 0o100))
    return out


def record_rows(data: bytes, *, drop=()) -> set[tuple[str, ...]]:
    return {tuple(r) for r in csv.reader(io.StringIO(data.decode())) if r and not r[0].endswith(drop)}


def test_a_wheel_laid_out_is_what_uv_installs_at_that_path(tmp_path):
    wheel = rich_wheel(tmp_path)
    venv = tmp_path / "venv"
    uvtool.create_venv(venv, sys.executable)
    before = tree(venv)
    subprocess.run([uvtool.uv_bin(), "pip", "install", "--no-config", "--quiet", "--cache-dir", str(tmp_path / "uvc"),
                    "--python", str(venv / "bin" / "python"), str(wheel)], check=True)
    by_uv = {k: v for k, v in tree(venv).items() if k not in before}

    lay = wheelfs.layout(wheel, venv=str(venv), version=VERSION)
    root = str(venv).strip("/")
    ours = {dest[len(root) + 1:]: (c if isinstance(c, bytes) else c.read(), exe) for dest, c, exe in lay.files}

    dist = f"lib/python{VERSION}/site-packages/richpkg-1.0.dist-info"
    machine = {f"{dist}/uv_cache.json", f"{dist}/direct_url.json", ".lock"}  # .lock: uv's venv lock
    assert set(ours) == set(by_uv) - machine
    for path, (data, exe) in ours.items():
        if path == f"{dist}/INSTALLER":
            assert data == b"envmgr\n" and by_uv[path][0] == b"uv"
        elif path == f"{dist}/RECORD":
            ignore = ("INSTALLER", "uv_cache.json", "direct_url.json")
            assert record_rows(data, drop=ignore) == record_rows(by_uv[path][0], drop=ignore)
        else:
            assert (data, exe) == by_uv[path], path
    assert ours["bin/rich-legacy"][0].startswith(f"#!/{root}/bin/python\n".encode())
    assert ours[f"include/site/python{VERSION}/richpkg/rich.h"] == (b"int rich(void);\n", False)
    assert ours[f"lib/python{VERSION}/site-packages/richpkg/tool.sh"][1] is True
    assert sorted(rel for rel, _ in lay.sources) == ["richextra.py", "richpkg/__init__.py", "richpkg/cli.py",
                                                      "richplat.py"]
    # The scripts run from the laid-out files, as uv's do.
    assert subprocess.run([str(venv / "bin" / "nested")], capture_output=True, text=True).stdout == "rich ok\n"


def corrupt(wheel: Path, member: str, dest: Path) -> Path:
    """``wheel`` with ``member``'s compressed bytes flipped in place (the zip directory untouched)."""
    data = bytearray(wheel.read_bytes())
    with zipfile.ZipFile(wheel) as zf:
        info = zf.getinfo(member)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 2] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


def test_members_are_checked_as_they_stream(tmp_path):
    wheel = rich_wheel(tmp_path)
    good = {dest: c.read() for dest, c, _ in wheelfs.layout(wheel, venv="/opt/venv", version=VERSION).files
            if not isinstance(c, bytes)}
    assert any(d.endswith("richpkg/blob.bin") for d in good)
    for member in ("richpkg/blob.bin", "richpkg/cli.py"):  # stored, deflated
        bad = corrupt(wheel, member, tmp_path / f"bad-{member.replace('/', '_')}.whl")
        lay = wheelfs.layout(bad, venv="/opt/venv", version=VERSION)
        target = next(c for dest, c, _ in lay.files if dest.endswith(member))
        with pytest.raises(UserError) as err:
            target.read()
        assert err.value.message.startswith(f"{bad.name}: {member} ")
        assert "\n" not in err.value.message


@pytest.mark.parametrize("case, message", [
    ("not-zip", "not a readable wheel"),
    ("escape", "would land outside the venv"),
    ("no-dist-info", "not a wheel"),
    ("bad-data", "unknown .data folder"),
    ("bad-entry", "is not 'module:function'"),
])
def test_malformed_wheels_are_one_line(tmp_path, case, message):
    dist = "badpkg-1.0.dist-info"
    files = {
        "escape": {"../evil.py": "x = 1\n"},
        "bad-data": {"badpkg-1.0.data/elsewhere/x": "x"},
        "bad-entry": {f"{dist}/entry_points.txt": "[console_scripts]\nbroken = nocolon\n"},
    }.get(case, {})
    wheel = build_wheel(tmp_path, "badpkg", "1.0", files=files)
    if case == "not-zip":
        wheel.write_bytes(b"<html>not a wheel</html>")
    elif case == "no-dist-info":
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("badpkg/__init__.py", "")
    with pytest.raises(UserError) as err:
        wheelfs.layout(wheel, venv="/opt/venv", version=VERSION)
    assert message in err.value.message and wheel.name in err.value.message
