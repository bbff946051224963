"""The stamp that makes a no-op sync cheap (``envmgr.sync.stamp``): folder mtimes written, entries
compared with what the RECORDs put there only when a folder moved.

Imports are not edits (``__pycache__``); a file added, removed or deleted by hand is.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_sync import locked_template, project, site  # noqa: F401 (locked_template, project: fixtures)

from envmgr.sync import stamp
from envmgr.sync import syncer as syncing
from envmgr.sync.options import SyncOptions
from envmgr.sync.result import SyncResult


@pytest.fixture(autouse=True)
def no_driver(monkeypatch) -> None:
    monkeypatch.setenv("ENVMGR_DRIVER_VERSION", "none")


def run_sync(project: Path, venv: Path) -> SyncResult:
    return syncing.sync(project, "default", SyncOptions(venv=venv))


def test_stamp_ignores_bytecode_but_not_a_deleted_or_added_file(project: Path) -> None:
    venv = project / "a"
    run_sync(project, venv)
    lock_path = project / "locks" / "pylock.default.toml"
    pkg = site(venv) / "fixture_app"
    (pkg / "__pycache__").mkdir(exist_ok=True)
    (pkg / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    assert stamp.up_to_date(venv, profile="default", lock_path=lock_path)  # imports are not edits

    (pkg / "stray.py").write_text("")
    assert stamp.up_to_date(venv, profile="default", lock_path=lock_path) is None
    (pkg / "stray.py").unlink()
    assert stamp.up_to_date(venv, profile="default", lock_path=lock_path)  # the same entries again

    victim = next(p for p in pkg.iterdir() if p.suffix == ".py")
    victim.unlink()
    assert stamp.up_to_date(venv, profile="default", lock_path=lock_path) is None
    result = run_sync(project, venv)
    assert not result.noop and victim.exists()
    assert stamp.up_to_date(venv, profile="default", lock_path=lock_path)


def test_stamp_folders_are_what_the_records_list(project: Path) -> None:
    venv = project / "a"
    run_sync(project, venv)
    sp = site(venv)
    dirs, listed = stamp.folder_state(venv, sp)
    root = f"{venv}/"
    assert set(listed) == {"bin", str(sp)[len(root):]}
    walked = {str(p)[len(root):] for p in sp.rglob("*") if p.is_dir() and "__pycache__" not in p.parts}
    # every folder holding files is watched (namespace folders holding only folders are not)
    holding = {f for f in walked if any(c.is_file() for c in (venv / f).iterdir())}
    assert holding <= set(dirs)
    # right after a sync, each watched folder holds exactly what the RECORDs put there
    expected = stamp.record_children(sp, {root + r for r in dirs if r not in listed})
    for rel in dirs:
        if rel not in listed:
            assert {n for n in os.listdir(root + rel) if n != "__pycache__"} == expected[root + rel], rel
