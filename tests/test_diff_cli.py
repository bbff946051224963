"""``envmgr diff`` through the real CLI, in temporary git repositories with crafted locks.

Exit codes: 0 (changed or not), 1 with ``--exit-code`` when a lock changed, 2 for every bad
input (unknown ref, no git, a lock that is not PEP 751 or was edited by hand), always as one
line without a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_diff import make_lock

from envmgr.model.lockfile import dumps, lock_path


def envmgr(project: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, ENVMGR_PROJECT=str(project))
    return subprocess.run(
        [sys.executable, "-m", "envmgr", *args], cwd=cwd or project, env=env, capture_output=True, text=True, timeout=120
    )


def git(repo: Path, *args: str) -> str:
    env = dict(os.environ, GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    res = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(repo), *args],
        capture_output=True, text=True, env=env, check=True,
    )
    return res.stdout


def write_lock(project: Path, lock) -> Path:
    path = lock_path(project, lock.meta.profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(lock))
    return path


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A project in git: profiles/ and a committed lock of profile ``gpu`` (torch 2.7.0+cu126)."""
    project = tmp_path / "proj"
    (project / "profiles").mkdir(parents=True)
    (project / "profiles" / "gpu.toml").write_text('variant = "cu126"\ntorch = ">=2.7,<2.8"\n')
    write_lock(project, make_lock(torch="2.7.0"))
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "base")
    return project


def test_diff_against_head_names_the_torch_change(repo: Path):
    write_lock(repo, make_lock(variant="cu128", torch="2.7.1"))
    res = envmgr(repo, "diff")
    assert res.returncode == 0, res.stderr
    assert "### `gpu`: torch 2.7.0+cu126 → 2.7.1+cu128" in res.stdout
    assert "- sm_70 (Volta: V100) dropped" in res.stdout
    assert envmgr(repo, "diff", "--exit-code").returncode == 1
    data = json.loads(envmgr(repo, "diff", "--format", "json").stdout)
    assert data["changed"] is True and data["profiles"][0]["new_torch"] == "2.7.1+cu128"
    assert json.loads(envmgr(repo, "diff", "--json").stdout) == data


def test_nothing_changed_says_so(repo: Path):
    res = envmgr(repo, "diff", "--exit-code")
    assert res.returncode == 0, res.stderr
    assert "No lock changes compared with `HEAD` (1 profile checked)." in res.stdout
    assert json.loads(envmgr(repo, "diff", "--json").stdout)["changed"] is False


def test_output_file_and_named_profiles(repo: Path, tmp_path: Path):
    write_lock(repo, make_lock(torch="2.7.1"))
    write_lock(repo, make_lock(profile="cpu", variant="cpu"))
    out = tmp_path / "body.md"
    res = envmgr(repo, "diff", "gpu", "--output", str(out))
    assert res.returncode == 0 and res.stdout == ""
    text = out.read_text()
    assert "`gpu`" in text and "`cpu`" not in text
    both = envmgr(repo, "diff").stdout
    assert "### `cpu` (new lock): torch 2.7.0+cpu" in both


def test_profile_absent_at_base_is_all_added(repo: Path):
    write_lock(repo, make_lock(profile="cu128", variant="cu128", torch="2.7.1"))
    data = json.loads(envmgr(repo, "diff", "cu128", "--json").stdout)
    (p,) = data["profiles"]
    assert p["status"] == "added" and {x["kind"] for x in p["packages"]} == {"added"}


def test_removed_lock(repo: Path):
    lock_path(repo, "gpu").unlink()
    res = envmgr(repo, "diff")
    assert res.returncode == 0 and "### `gpu` (lock removed)" in res.stdout


def test_base_as_older_commit_and_as_directory(repo: Path, tmp_path: Path):
    first = git(repo, "rev-parse", "HEAD").strip()
    write_lock(repo, make_lock(torch="2.7.1"))
    git(repo, "commit", "-q", "-am", "upgrade")
    assert "No lock changes" in envmgr(repo, "diff").stdout
    assert "torch 2.7.0+cu126 → 2.7.1+cu126" in envmgr(repo, "diff", "--base", first).stdout
    assert "torch 2.7.0+cu126 → 2.7.1+cu126" in envmgr(repo, "diff", "--base", "HEAD~1").stdout
    old = tmp_path / "old"
    write_lock(old, make_lock(torch="2.7.0"))
    for base in (old, old / "locks"):
        res = envmgr(repo, "diff", "--base", str(base))
        assert res.returncode == 0 and "torch 2.7.0+cu126 → 2.7.1+cu126" in res.stdout, res.stderr


def test_project_in_a_subdirectory_of_the_repository(tmp_path: Path):
    top = tmp_path / "mono"
    project = top / "ml" / "env"
    (project / "profiles").mkdir(parents=True)
    write_lock(project, make_lock(torch="2.7.0"))
    git(top, "init", "-q", "-b", "main")
    git(top, "add", "-A")
    git(top, "commit", "-q", "-m", "base")
    write_lock(project, make_lock(torch="2.7.1"))
    res = envmgr(project, "diff", cwd=top)
    assert res.returncode == 0 and "torch 2.7.0+cu126 → 2.7.1+cu126" in res.stdout, res.stderr


# -- bad input: exit 2, one line ----------------------------------------------------------

def test_unknown_git_ref(repo: Path):
    one_line_error(envmgr(repo, "diff", "--base", "no-such-branch"), "unknown git ref 'no-such-branch'")
    one_line_error(envmgr(repo, "diff", "--base", "--upload-pack=x"), "unknown git ref")


def test_not_a_git_repository(tmp_path: Path):
    project = tmp_path / "plain"
    write_lock(project, make_lock())
    one_line_error(envmgr(project, "diff"), "is not in a git repository", "--base DIR")


def test_working_tree_lock_not_pep751(repo: Path):
    lock_path(repo, "gpu").write_text('lock-version = "0.9"\npackages = []\n')
    one_line_error(envmgr(repo, "diff"), "not a PEP 751 lock")
    lock_path(repo, "gpu").write_text("this is [not toml")
    one_line_error(envmgr(repo, "diff"), "not valid TOML")


def test_base_lock_not_pep751(repo: Path):
    lock_path(repo, "gpu").write_text('[project]\nname = "x"\n')
    git(repo, "commit", "-q", "-am", "broken")
    write_lock(repo, make_lock(torch="2.7.1"))
    one_line_error(envmgr(repo, "diff"), "HEAD:locks/pylock.gpu.toml", "not a PEP 751 lock")


def test_fingerprint_edited_by_hand(repo: Path):
    path = lock_path(repo, "gpu")
    path.write_text(path.read_text().replace('torch = "==2.7.0"', 'torch = "==2.7.9"'))
    one_line_error(envmgr(repo, "diff"), "fingerprint does not match its inputs")


def test_package_version_edited_by_hand(repo: Path):
    path = lock_path(repo, "gpu")
    text = path.read_text()
    edited = text.replace('version = "2.7.0+cu126"', 'version = "2.7.1+cu126"')
    assert edited != text
    path.write_text(edited)
    one_line_error(envmgr(repo, "diff"), "package torch 2.7.1+cu126 does not match its file", "edited by hand")


def test_no_lock_for_named_profile(repo: Path):
    one_line_error(envmgr(repo, "diff", "nope"), "no lock for profile 'nope'")


def test_unknown_format(repo: Path):
    one_line_error(envmgr(repo, "diff", "--format", "xml"), "unknown diff format 'xml'")


# -- --max-chars: the PR body stays under GitHub's limit ----------------------------------

def test_max_chars_shortens_a_long_body(repo: Path):
    from test_diff import many

    git(repo, "rm", "-q", str(lock_path(repo, "gpu")))
    write_lock(repo, make_lock(profile="gpu", extras=many("gpu", 1200, "1.0.0")))
    write_lock(repo, make_lock(profile="cpu", variant="cpu", extras=many("cpu", 30, "1.0.0")))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "many")
    write_lock(repo, make_lock(profile="gpu", torch="2.7.1", extras=many("gpu", 1200, "2.0.0")))
    write_lock(repo, make_lock(profile="cpu", variant="cpu", torch="2.7.1", extras=many("cpu", 30, "2.0.0")))

    full = envmgr(repo, "diff", "--max-chars", "0")
    assert full.returncode == 0, full.stderr
    assert len(full.stdout) > 65_000 and "Shortened" not in full.stdout
    assert full.stdout.count("<details>") == 2

    res = envmgr(repo, "diff", "--exit-code")  # default: 65,000
    assert res.returncode == 1, res.stderr
    body = res.stdout
    assert len(body) <= 65_000
    assert "left out the package lists of `gpu`." in body
    assert "`envmgr diff --format json`" in body and "`envmgr diff gpu --max-chars 0` shows it." in body
    assert "| **torch** | 2.7.0+cu126 | 2.7.1+cu126 | upgraded (patch) |" in body
    assert "| **torch** | 2.7.0+cpu | 2.7.1+cpu | upgraded (patch) |" in body
    assert body.count("<details>") == 1 and "cpu-package-with-a-long-name-00029" in body

    small = envmgr(repo, "diff", "--max-chars", "5000")
    assert small.returncode == 0 and len(small.stdout) <= 5000
    assert "| **torch** | 2.7.0+cpu | 2.7.1+cpu | upgraded (patch) |" in small.stdout
    assert len(json.loads(envmgr(repo, "diff", "--json", "--max-chars", "5000").stdout)["profiles"][1]["packages"]) == 1204


@pytest.mark.parametrize("value", ["-1", "abc", "100", "1.5"])
def test_bad_max_chars(repo: Path, value: str):
    one_line_error(envmgr(repo, "diff", "--max-chars", value), f"bad --max-chars '{value}'", "0 (no limit)")


def test_max_chars_default_matches_the_renderer():
    import inspect

    from envmgr.cli import diff_cmd
    from envmgr.report import diffreport

    assert int(inspect.signature(diff_cmd).parameters["max_chars"].default.default) == diffreport.DEFAULT_MAX_CHARS
