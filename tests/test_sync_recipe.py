"""A missing venv made again from the recipe of an earlier sync (``envmgr.sync.recipe``): what it
may trust, and when it refuses.

The replay must give the venv and stamp the slow path gives, and must never be used when
an input it stands for changed: the lock, the profile, the interpreter, envmgr's code, a
cached file. The slow path then runs, so each refusal is also checked to end in an exact venv.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_sync import (  # noqa: F401 (locked_template, project: fixtures)
    assert_exact,
    envmgr,
    failed,
    installed,
    locked_template,
    ok,
    pins,
    project,
    site,
)

from envmgr.core.files import keep_newest
from envmgr.sync import recipe, replay, slow, stamp, target
from envmgr.sync import syncer as syncing
from envmgr.sync.options import SyncOptions
from envmgr.sync.result import SyncResult


@pytest.fixture
def counted(monkeypatch) -> dict:
    """Counts how often the slow path and the replay run (in-process syncs)."""
    calls = {"slow": 0, "replay": 0, "replayed": 0}
    real_slow, real_replay = slow.sync, replay.replay

    def count_slow(*a, **k):
        calls["slow"] += 1
        return real_slow(*a, **k)

    def count_replay(*a, **k):
        calls["replay"] += 1
        out = real_replay(*a, **k)
        calls["replayed"] += out is not None
        return out

    monkeypatch.setattr(slow, "sync", count_slow)
    monkeypatch.setattr(replay, "replay", count_replay)
    monkeypatch.setenv("ENVMGR_DRIVER_VERSION", "none")
    return calls


def run_sync(project: Path, venv: Path, **kw) -> SyncResult:
    return syncing.sync(project, "default", SyncOptions(venv=venv, **kw))


def stamp_of(venv: Path) -> dict:
    data = json.loads((venv / stamp.STAMP).read_text())
    return {k: v for k, v in data.items() if k not in ("dirs", "listed", "python")} | {
        "python": {k: v for k, v in data["python"].items() if k != "cfg"}, "folders": sorted(data["dirs"])}


def test_missing_venv_is_replayed_exactly_like_the_slow_path(project: Path, counted: dict) -> None:
    first = run_sync(project, project / "a")
    assert counted == {"slow": 1, "replay": 1, "replayed": 0} and first.created
    assert len(list(recipe.folder().glob("*.json"))) == 1

    second = run_sync(project, project / "b")
    assert counted == {"slow": 1, "replay": 2, "replayed": 1}
    assert second.created and not second.noop
    assert sorted(second.installed) == sorted(first.installed)
    assert second.python == first.python and second.warnings == first.warnings
    assert_exact(project, venv=project / "b")
    # the same stamp (but for the venv's own folders), so the next sync is a no-op
    a, b = stamp_of(project / "a"), stamp_of(project / "b")
    assert a == b
    assert run_sync(project, project / "b").noop
    # and the same files
    assert sorted(p.relative_to(project / "a").as_posix() for p in site(project / "a").rglob("*")) == \
        sorted(p.relative_to(project / "b").as_posix() for p in site(project / "b").rglob("*"))


def test_replay_through_the_cli_then_noop(project: Path) -> None:
    ok(envmgr(project, "sync", "--venv", str(project / "a")))
    proc = ok(envmgr(project, "sync", "--venv", str(project / "b")))
    assert "creating" in proc.stderr and "+ torch 2.7.1+cu126" in proc.stderr
    assert "warning: no NVIDIA driver found" in proc.stderr  # the driver is asked again
    assert_exact(project, venv=project / "b")
    again = json.loads(ok(envmgr(project, "sync", "--venv", str(project / "b"), "--json")).stdout)
    assert again["noop"]


def _edit_profile(project: Path) -> None:
    path = project / "profiles" / "default.toml"
    path.write_text(path.read_text() + "\n# edited\n")


@pytest.mark.parametrize("change", ["lock", "profile", "code", "interpreter", "cached-file", "uv", "recipe-garbage"])
def test_recipe_refused_when_what_it_stands_for_changed(project: Path, counted: dict, monkeypatch, change) -> None:
    run_sync(project, project / "a")
    (path,) = recipe.folder().glob("*.json")
    data = json.loads(path.read_text())
    if change == "lock":  # another lock: another key
        lock = project / "locks" / "pylock.default.toml"
        lock.write_text(lock.read_text() + "\n")
    elif change == "profile":  # a profile file changed: the slow path decides whether the lock is stale
        _edit_profile(project)
    elif change == "code":
        identity = recipe._code_identity()
        monkeypatch.setattr(recipe, "_code_identity", lambda: identity + [["new.py", 1, 1]])
    elif change == "interpreter":
        data["python"]["binary"][2] += 1  # the binary was replaced (same path, another mtime)
    elif change == "cached-file":
        Path(data["files"][0][0]).unlink()
    elif change == "uv":
        data["uv"][1] += 1
    else:
        data = {"format": recipe.FORMAT, "python": 3}
    if change in ("interpreter", "uv", "recipe-garbage"):
        path.write_text(json.dumps(data))

    result = run_sync(project, project / "b")
    assert counted["replayed"] == 0 and counted["slow"] == 2
    assert result.created and installed(project / "b") == pins(project)
    assert stamp.up_to_date(project / "b", profile="default", lock_path=project / "locks" / "pylock.default.toml")


def test_frozen_recipe_is_not_replayed_for_a_checked_sync(project: Path, counted: dict) -> None:
    run_sync(project, project / "a", frozen=True)
    _edit_profile(project)  # --frozen does not care; a plain sync must ask whether the lock is still fresh
    run_sync(project, project / "b", frozen=True)
    assert counted["replayed"] == 1
    result = run_sync(project, project / "c")
    assert counted["replayed"] == 1 and counted["slow"] == 2 and result.created


def test_locked_stale_lock_fails_even_with_a_recipe(project: Path) -> None:
    ok(envmgr(project, "sync", "--venv", str(project / "a")))
    path = project / "profiles" / "default.toml"
    path.write_text(path.read_text().replace('"numpy"', '"numpy>=1"'))  # an input of the lock changed
    line = failed(envmgr(project, "sync", "--locked", "--venv", str(project / "b")), code=1)
    assert "stale" in line and "--locked" in line
    assert not (project / "b").exists()


def test_replay_checks_the_driver_before_anything(project: Path) -> None:
    ok(envmgr(project, "sync", "--venv", str(project / "a")))
    line = failed(envmgr(project, "sync", "--venv", str(project / "b"), ENVMGR_DRIVER_VERSION="520.61.05"), code=1)
    assert "520.61.05" in line and "525.60.13" in line
    assert not (project / "b").exists()


@pytest.mark.parametrize("meanwhile", ["synced", "relocked"])
def test_replay_steps_back_when_things_changed_while_it_waited(project: Path, counted: dict, monkeypatch,
                                                                meanwhile) -> None:
    """Another sync wins the venv's file lock first: it made the venv (the slow path finds a
    no-op) or re-wrote the lock (the slow path installs that lock, not the recipe's)."""
    run_sync(project, project / "a")
    lock = project / "locks" / "pylock.default.toml"
    real_lock = target.venv_lock

    def lock_after_the_other(venv, log):
        monkeypatch.setattr(target, "venv_lock", real_lock)
        if meanwhile == "synced":
            run_sync(project, venv)
        else:
            lock.write_text(lock.read_text() + "\n")
        return real_lock(venv, log)

    monkeypatch.setattr(target, "venv_lock", lock_after_the_other)
    result = run_sync(project, project / "b")
    assert counted["replayed"] == (1 if meanwhile == "synced" else 0)  # only the other sync's, if any
    assert result.noop == (meanwhile == "synced") and installed(project / "b") == pins(project)
    assert stamp.up_to_date(project / "b", profile="default", lock_path=lock)


def test_replay_result_is_checked(project: Path, counted: dict, monkeypatch) -> None:
    """A recipe whose install leaves the venv short of the lock fails, naming what is missing."""
    run_sync(project, project / "a")
    (path,) = recipe.folder().glob("*.json")
    data = json.loads(path.read_text())
    head, sep, _ = data["pylock"].partition('\n[[packages]]\nname = "numpy"')
    rest = data["pylock"][len(head) + len(sep):]
    data["pylock"] = head + rest[rest.index("\n[[packages]]"):]  # numpy's entry dropped
    path.write_text(json.dumps(data))
    with pytest.raises(Exception) as exc:
        run_sync(project, project / "b")
    assert "numpy" in str(exc.value) and "does not match the lock" in str(exc.value)
    assert not (project / "b" / stamp.STAMP).exists() and (project / "b" / stamp.MARKER).exists()
    run_sync(project, project / "b")  # the next sync finds the marker and makes it right
    assert installed(project / "b") == pins(project)


def test_recipes_are_pruned(project: Path, monkeypatch) -> None:
    monkeypatch.setattr(recipe, "KEEP", 3)
    d = recipe.folder()
    d.mkdir(parents=True)
    for i in range(5):
        (d / f"{i:040d}.json").write_text("{}")
        os.utime(d / f"{i:040d}.json", ns=(i * 10**9, i * 10**9))
    keep_newest(d, recipe.KEEP)  # what recipe.record does after each write
    assert sorted(p.stem[-1] for p in d.glob("*.json")) == ["2", "3", "4"]
