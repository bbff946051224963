"""``envmgr.venv.install`` as the image exporter uses it: a lock's verified files into a venv built
in a staging folder, then moved to where it runs (``relocatable=True``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_sync import locked_template  # noqa: F401 (fixture)

from envmgr.core.errors import UserError
from envmgr.model import lockfile
from envmgr.net import fetch
from envmgr.venv import install, uvtool


def files_for(lock) -> dict:
    return fetch.fetch([(p.key, p.install_file) for p in lock.packages])


def test_install_relocatable_venv_moves_and_runs(locked_template: Path, tmp_path: Path) -> None:
    lock = lockfile.read(lockfile.lock_path(locked_template, "cpu"))
    staging = tmp_path / "staging" / "opt" / "venv"
    result = install.install(lock, staging, python=sys.executable, files=files_for(lock), relocatable=True)
    assert sorted(p.key for p in result.plan.install) == sorted(lock.pins)
    assert result.python.minor == lock.meta.python and "+ torch 2.7.1+cpu" in result.plan.lines()
    assert "relocatable = true" in (staging / "pyvenv.cfg").read_text()

    final = tmp_path / "elsewhere" / "venv"
    final.parent.mkdir()
    shutil.move(staging, final)
    script = final / "bin" / "fixture-app"
    assert str(staging) not in script.read_text()
    proc = subprocess.run([str(script)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("fixture-app 1.0.0"), proc.stderr
    proc = subprocess.run([str(final / "bin" / "python"), "-c", "import sys, torch; print(sys.prefix, torch.__version__)"],
                          capture_output=True, text=True)
    assert proc.stdout.split() == [str(final), "2.7.1+cpu"], proc.stderr
    assert install.drift(lock, final) == []
    # installing the same lock again is a no-op plan
    again = install.install(lock, final, files={})
    assert again.plan.empty and again.output == ""


def test_install_refuses_before_touching_anything(locked_template: Path, tmp_path: Path) -> None:
    lock = lockfile.read(lockfile.lock_path(locked_template, "cpu"))
    with pytest.raises(UserError, match="not a venv and no python"):
        install.install(lock, tmp_path / "nothing", files={})
    assert not (tmp_path / "nothing").exists()
    venv = tmp_path / "v"
    uvtool.create_venv(venv, sys.executable)
    before = sorted(p.name for p in venv.rglob("*"))
    with pytest.raises(UserError, match=r"file\(s\) to install were not fetched: .*torch \(torch-2.7.1\+cpu-"):
        install.install(lock, venv, files={})
    assert sorted(p.name for p in venv.rglob("*")) == before
    from dataclasses import replace

    other = replace(lock, meta=replace(lock.meta, python="3.99"))
    with pytest.raises(UserError, match="the lock is for Python 3.99"):
        install.install(other, venv, files=files_for(lock))
    with pytest.raises(UserError, match="the lock is for Python 3.99"):
        install.install(other, tmp_path / "v2", python=sys.executable, files=files_for(lock))
    assert not (tmp_path / "v2").exists()
