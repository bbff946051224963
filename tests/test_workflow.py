"""``.github/workflows/lock-update.yml``, run for real.

The workflow's ``run:`` steps are taken from the YAML and executed with bash (as GitHub runs
them: ``bash -e``) in a temporary git repository whose profiles point at a private fixture
index, with a bare repository as ``origin``. Only ``gh`` is replaced, by a recorder on PATH;
``envmgr``, ``git`` and ``python`` are real. The ``uses:`` steps (checkout, setup-python) and
the ``pip install envmgr`` step prepare a runner and are skipped: the repository is already
checked out and envmgr is the one under test.

Scenario: the locks hold torch 2.7.0 (cu126 and cu128); then torch 2.7.1+cu126 and
2.8.0+cu128 are published. The scheduled run upgrades both, and the PR body names the
torch/CUDA changes first and the cu128 arch-list change (2.8 builds add sm_70 and drop PTX).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import fixture_index as fx
import pytest
import yaml
from fixture_index import TORCH, FixtureIndex
from test_diff_cli import git

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "lock-update.yml"
EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
IF_OUTPUT = re.compile(r"^steps\.([\w-]+)\.outputs\.([\w-]+)\s*==\s*'([^']*)'$")
SKIPPED_IDS = {"install"}  # installs envmgr on a runner; here envmgr is already the one under test

FAKE_GH = """#!{python}
import json, os, sys
args = sys.argv[1:]
record = {{"args": args}}
if "--body-file" in args:
    record["body"] = open(args[args.index("--body-file") + 1]).read()
with open(os.environ["GH_LOG"], "a") as fh:
    fh.write(json.dumps(record) + "\\n")
if args[:2] == ["pr", "view"]:
    sys.exit(0 if os.environ.get("GH_PR_EXISTS") == "1" else 1)
"""


# -- the workflow as data -----------------------------------------------------------------

def load_workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def triggers(doc: dict) -> dict:
    return doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true


def steps(doc: dict) -> list[dict]:
    (job,) = doc["jobs"].values()
    return job["steps"]


def test_workflow_shape():
    doc = load_workflow()
    on = triggers(doc)
    assert "schedule" in on and on["schedule"][0]["cron"]
    assert "workflow_dispatch" in on
    assert doc["permissions"] == {"contents": "write", "pull-requests": "write"}
    runs = [s for s in steps(doc) if "run" in s]
    for step in runs:
        # Expressions go through env:, never into a script (no injection, runnable here).
        assert "${{" not in step["run"], step.get("name")
    scripts = "\n".join(s["run"] for s in runs)
    for command in ("envmgr lock --all --upgrade", "envmgr lock --check", "envmgr diff --base HEAD", "gh pr create"):
        assert command in scripts
    assert "envmgr diff --base HEAD --format json" in scripts


# -- running it ---------------------------------------------------------------------------

class Runner:
    """Runs the workflow's run: steps like a GitHub runner would, recording gh calls."""

    def __init__(self, repo: Path, tmp: Path, inputs: dict[str, str] | None = None):
        self.repo = repo
        self.tmp = tmp
        self.inputs = inputs or {}
        self.outputs: dict[str, dict[str, str]] = {}
        self.ran: list[str] = []
        bindir = tmp / "bin"
        bindir.mkdir(exist_ok=True)
        shim = bindir / "envmgr"
        shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m envmgr \"$@\"\n")
        python = bindir / "python"
        python.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
        gh = bindir / "gh"
        gh.write_text(FAKE_GH.format(python=sys.executable))
        for f in (shim, python, gh):
            f.chmod(0o755)
        self.gh_log = tmp / "gh.jsonl"
        self.runner_temp = tmp / "runner-temp"
        self.runner_temp.mkdir(exist_ok=True)
        self.env = dict(
            os.environ,
            PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
            GH_LOG=str(self.gh_log),
            RUNNER_TEMP=str(self.runner_temp),
            GITHUB_STEP_SUMMARY=str(tmp / "summary.md"),
            GITHUB_WORKSPACE=str(repo),
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_CONFIG_NOSYSTEM="1",
        )
        self.env.pop("ENVMGR_PROJECT", None)  # found from the working directory, as on a runner

    def expr(self, text: str) -> str:
        def value(m: re.Match) -> str:
            e = m.group(1)
            if e.startswith("inputs."):
                return self.inputs.get(e[len("inputs."):], "")
            if e == "github.token":
                return "fake-token"
            if e == "github.ref_name":
                return "main"
            out = re.match(r"^steps\.([\w-]+)\.outputs\.([\w-]+)$", e)
            if out:
                return self.outputs.get(out.group(1), {}).get(out.group(2), "")
            raise AssertionError(f"the test does not know the expression {e!r}: teach Runner.expr")

        return EXPR.sub(value, str(text))

    def condition(self, cond: str | None) -> bool:
        if cond is None:
            return True
        m = IF_OUTPUT.match(cond.strip())
        assert m, f"the test does not know the condition {cond!r}: teach Runner.condition"
        return self.outputs.get(m.group(1), {}).get(m.group(2)) == m.group(3)

    def run(self, doc: dict) -> None:
        base = {k: self.expr(v) for k, v in doc.get("env", {}).items()}
        (job,) = doc["jobs"].values()
        base.update({k: self.expr(v) for k, v in job.get("env", {}).items()})
        for i, step in enumerate(job["steps"]):
            if "run" not in step or step.get("id") in SKIPPED_IDS or not self.condition(step.get("if")):
                continue
            output = self.tmp / f"output-{i}"
            output.write_text("")
            env = {**self.env, **base, **{k: self.expr(v) for k, v in step.get("env", {}).items()},
                   "GITHUB_OUTPUT": str(output)}
            res = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=self.repo, env=env,
                                 capture_output=True, text=True, timeout=600)
            assert res.returncode == 0, f"step {step.get('name')!r} failed:\n{res.stdout}\n{res.stderr}"
            self.ran.append(step.get("id") or step.get("name"))
            if step.get("id"):
                self.outputs[step["id"]] = dict(
                    line.split("=", 1) for line in output.read_text().splitlines() if "=" in line
                )

    def gh_calls(self) -> list[dict]:
        if not self.gh_log.exists():
            return []
        return [json.loads(line) for line in self.gh_log.read_text().splitlines()]


# -- the fixture repository ---------------------------------------------------------------

def _old_catalogue() -> list[fx.Release]:
    """The standard catalogue without torch/torchvision 2.7.1: locks start at 2.7.0."""
    return [r for r in fx.default_catalogue() if not (r.name in ("torch", "torchvision") and r.version.startswith(("2.7.1", "0.22.1")))]


def _publish_upgrades(index: FixtureIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.7.1+cu126 (newer cuDNN/NCCL) and 2.8.0+cu128 (a build with another arch list)."""
    index.add(TORCH, "cu126", "torch", "2.7.1+cu126",
              **fx._torch_wheel("2.7.1+cu126", "12.6", fx.NVIDIA_PINS[("2.7.1", "cu126")], "cp311"))
    monkeypatch.setitem(fx.TRITON_FOR_TORCH, "2.8.0", "3.3.1")
    index.add(TORCH, "cu128", "torch", "2.8.0+cu128",
              **fx._torch_wheel("2.8.0+cu128", "12.8", fx.NVIDIA_PINS[("2.7.1", "cu128")], "cp311"))


@pytest.fixture
def fixture_repo(tmp_path: Path):
    index = FixtureIndex(tmp_path / "index", _old_catalogue())
    origin = tmp_path / "origin.git"
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    (repo / "profiles").mkdir(parents=True)
    (repo / "profiles" / "_base.toml").write_text(
        f'python = "3.11"\npackages = ["fixture-app"]\nindex-url = "{index.pypi_url}"\n'
    )
    for variant, spec in (("cu126", ">=2.7,<2.8"), ("cu128", ">=2.7")):
        (repo / "profiles" / f"{variant}.toml").write_text(
            f'extends = "_base.toml"\nvariant = "{variant}"\ntorch = "{spec}"\n'
            f'torch-index-url = "{index.torch_url(variant)}"\n'
        )
    env = dict(os.environ, ENVMGR_PROJECT=str(repo))
    res = subprocess.run([sys.executable, "-m", "envmgr", "lock", "--all"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "locks at torch 2.7.0")
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "push", "-q", "origin", "main")
    yield index, repo, origin
    index.stop()


def test_scheduled_upgrade_opens_a_pr_naming_torch_cuda_and_archs(fixture_repo, tmp_path, monkeypatch):
    index, repo, origin = fixture_repo
    locks = (repo / "locks" / "pylock.cu126.toml", repo / "locks" / "pylock.cu128.toml")
    assert all('version = "2.7.0+' in p.read_text() for p in locks)
    _publish_upgrades(index, monkeypatch)

    runner = Runner(repo, tmp_path)
    runner.run(load_workflow())
    assert runner.ran == ["upgrade", "diff", "Open or update the pull request"]
    assert runner.outputs["diff"]["changed"] == "true"

    calls = runner.gh_calls()
    assert [c["args"][:2] for c in calls] == [["pr", "view"], ["pr", "create"]]
    create = calls[1]
    args = create["args"]
    assert args[args.index("--base") + 1] == "main" and args[args.index("--head") + 1] == "envmgr/lock-update"
    title = args[args.index("--title") + 1]
    assert title == "Update envmgr locks (torch 2.7.0+cu126 -> 2.7.1+cu126, torch 2.7.0+cu128 -> 2.8.0+cu128)"

    body = create["body"]
    assert body.startswith("## envmgr lock changes\n")
    assert "2 profiles changed (`cu126`, `cu128`)" in body
    # The summary names torch then CUDA first, for each profile.
    summary = [line for line in body.splitlines() if line.startswith("- `")]
    assert summary[0].startswith("- `cu126`: torch 2.7.0+cu126 → 2.7.1+cu126; cuDNN 9.1.0.70 → 9.5.1.17; NCCL 2.21.5 → 2.26.2")
    assert summary[1].startswith("- `cu128`: torch 2.7.0+cu128 → 2.8.0+cu128; CUDA 12.8 (runtime 12.8.57) → 12.8 (runtime 12.8.90)")
    assert "GPU archs +sm_70, PTX sm_120 → none" in summary[1]
    # Each profile's section opens with the torch row, CUDA next.
    section = body[body.index("### `cu128`"):]
    assert section.startswith("### `cu128`: torch 2.7.0+cu128 → 2.8.0+cu128")
    assert section.index("| **torch** | 2.7.0+cu128 | 2.8.0+cu128 | upgraded (minor) |") < section.index("| **CUDA** |")
    assert "- sm_70 (Volta: V100) added" in section
    assert "- PTX for sm_120 dropped" in section
    assert "Start being supported: 7.0 Volta: V100; 7.2 Volta: Jetson Xavier" in section
    assert "| GPU archs | sm_75 sm_80 sm_86 sm_90 sm_100 sm_120 +PTX sm_120 | sm_70 sm_75 sm_80 sm_86 sm_90 sm_100 sm_120 |" in section

    # The branch was pushed with the upgraded locks; main is untouched.
    pushed = git(origin, "show", "envmgr/lock-update:locks/pylock.cu128.toml")
    assert 'version = "2.8.0+cu128"' in pushed
    assert 'version = "2.7.0+cu128"' in git(origin, "show", "main:locks/pylock.cu128.toml")
    assert git(origin, "log", "-1", "--format=%s", "envmgr/lock-update").strip() == title
    # The job summary got the same body.
    assert (tmp_path / "summary.md").read_text() == body


def test_nothing_new_opens_no_pr(fixture_repo, tmp_path):
    _, repo, origin = fixture_repo
    runner = Runner(repo, tmp_path)
    runner.run(load_workflow())
    assert runner.outputs["diff"]["changed"] == "false"
    assert runner.ran == ["upgrade", "diff"]
    assert runner.gh_calls() == []
    assert "No lock changes compared with `HEAD` (2 profiles checked)." in (tmp_path / "summary.md").read_text()
    assert git(origin, "branch", "--list", "envmgr/lock-update").strip() == ""


def test_manual_run_for_one_package_updates_an_open_pr(fixture_repo, tmp_path, monkeypatch):
    index, repo, _ = fixture_repo
    _publish_upgrades(index, monkeypatch)
    monkeypatch.setenv("GH_PR_EXISTS", "1")
    runner = Runner(repo, tmp_path, inputs={"upgrade-package": "torch"})
    runner.run(load_workflow())
    calls = runner.gh_calls()
    assert [c["args"][:2] for c in calls] == [["pr", "view"], ["pr", "edit"]]
    assert "torch 2.7.0+cu128 → 2.8.0+cu128" in calls[1]["body"]
