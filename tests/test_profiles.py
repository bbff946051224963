"""Profiles: the shipped ones validate; every bad input is one ``error:`` line naming file:line.

Validation is checked twice: in-process (``profiles.load``, fast, every rule) and through
the real CLI (exit 2, one line on stderr, no traceback, nothing changed on disk).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from envmgr.core.errors import ProfileError
from envmgr.model import profiles
from envmgr.model.variants import kb

REPO = Path(__file__).resolve().parents[1]
INDEX = "http://127.0.0.1:9/whl/cu126"  # never contacted: validation needs no network
SIMPLE = "http://127.0.0.1:9/simple"

GOOD = 'variant = "cu126"\ntorch = "2.7.1"\npython = "3.11"\n'


def write(root: Path, files: dict[str, str]) -> Path:
    (root / "profiles").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / "profiles" / name).write_bytes(text.encode() if isinstance(text, str) else text)
    return root


def load_error(tmp_path: Path, text: str | bytes, extra: dict[str, str] | None = None, name: str = "bad") -> str:
    project = write(tmp_path, {f"{name}.toml": text, **(extra or {})})
    with pytest.raises(ProfileError) as info:
        profiles.load(project, name)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def envmgr(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ENVMGR_PROJECT": str(project), "NO_COLOR": "1", "COLUMNS": "250",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "envmgr", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


# -- the shipped profiles -----------------------------------------------------------------

def test_every_shipped_profile_validates() -> None:
    names = profiles.list_profiles(REPO)
    assert {"cpu", "cu118", "cu126", "cu128", "cu130", "default"} <= set(names)
    assert not [n for n in names if n.startswith("_")]  # bases are not profiles
    for name in names:
        p = profiles.load(REPO, name)
        assert p.name == name and p.python and p.platform == "linux-x86_64"
        assert p.path.name == f"{name}.toml"
        assert p.files[-1] == p.path.resolve()
        if name in ("cpu", "cu118", "cu126", "cu128", "cu130"):
            assert p.variant == name
            assert p.torch_index == kb().index_url(name)
            assert not p.torch_from_default
    default = profiles.load(REPO, "default")
    assert default.torch_from_default and default.index_url == profiles.PYPI
    # PyPI's build of that torch is the profile's variant
    rel = kb().release(default.torch.lstrip("="))
    assert rel is not None and rel.pypi_default == default.variant


def test_shipped_default_lock_is_fresh_and_readable() -> None:
    """The committed lock matches its profile (no network: --check only compares inputs)."""
    from envmgr.model import lockfile

    lock = lockfile.read(REPO / "locks" / "pylock.default.toml")
    assert lock.meta.profile == "default" and lock.package("torch") is not None
    proc = envmgr(REPO, "lock", "--check", "default")
    assert proc.returncode == 0, proc.stderr
    assert "fresh" in proc.stdout


def test_extends_merges(tmp_path: Path) -> None:
    project = write(tmp_path, {
        "_base.toml": 'python = "3.11"\npackages = ["numpy", "filelock"]\nextra-index-urls = ["http://a.example/simple"]\n'
                      '[image]\nvenv = "/opt/venv"\nuser = "envmgr"\n',
        "_mid.toml": 'extends = "_base.toml"\nvariant = "cpu"\npackages = ["numpy", "fixture-app"]\n',
        "x.toml": 'extends = "_mid.toml"\nvariant = "cu128"\ntorch = ">=2.7,<2.8"\npackages = ["typing-extensions"]\n'
                  '[image]\nuser = "app"\n',
    })
    p = profiles.load(project, "x")
    assert p.variant == "cu128"  # scalars override
    assert p.packages == ("numpy", "filelock", "fixture-app", "typing-extensions")  # lists append, no duplicates
    assert p.extra_index_urls == ("http://a.example/simple",)
    assert p.image == {"venv": "/opt/venv", "user": "app"}  # tables merge
    assert [f.name for f in p.files] == ["_base.toml", "_mid.toml", "x.toml"]
    assert p.requirements[0] in ("torch<2.8,>=2.7", "torch>=2.7,<2.8") and p.requirements[1:] == p.packages
    assert profiles.list_profiles(project) == ["x"]


def test_lock_inputs_carry_no_credentials(tmp_path: Path) -> None:
    project = write(tmp_path, {"p.toml": GOOD + 'torch-index-url = "https://u:tok@host.example/whl/cu126"\n'
                                       'index-url = "https://${USER_X}:${TOKEN_X}@host.example/simple"\n'
                                       'extra-index-urls = ["https://tok2@other.example/simple"]\n'})
    inputs = profiles.load(project, "p").lock_inputs("uv", "0.13.9")
    text = repr(inputs)
    assert "tok" not in text and "u:" not in text and "USER_X" not in text and "@" not in text
    assert inputs["torch-index"] == "https://host.example/whl/cu126"
    assert inputs["resolver"] == "uv 0.13"


def test_newer_torch_than_knowledge_base_is_accepted(tmp_path: Path) -> None:
    project = write(tmp_path, {"n.toml": 'variant = "cu132"\ntorch = "==9.0.0"\npython = "3.14"\n'})
    assert profiles.load(project, "n").torch == "==9.0.0"


# -- every bad input ----------------------------------------------------------------------

BAD = [
    # (id, profile text, extra files, expected location, expected words)
    ("unknown-key", GOOD + 'pakages = ["numpy"]\n', {}, "bad.toml:4", ["unknown key 'pakages'", "did you mean 'packages'"]),
    ("unknown-image-key", GOOD + '[image]\nvenv = "/v"\nbsae = "x"\n', {}, "bad.toml:6", ["'bsae'", "[image]", "'base'"]),
    ("malformed-toml", 'variant = "cu126"\ntorch = "2.7.1\npython = "3.11"\n', {}, "bad.toml:2:", ["invalid TOML"]),
    ("duplicate-key", GOOD + 'python = "3.12"\n', {}, "bad.toml:4:", ["invalid TOML"]),
    ("unknown-variant", 'torch = "2.7.1"\npython = "3.11"\nvariant = "cu999"\n', {}, "bad.toml:3", ["unknown variant 'cu999'", "cu126"]),
    ("bad-variant-name", 'variant = "gpu"\ntorch = "2.7.1"\npython = "3.11"\n', {}, "bad.toml:1", ["unknown variant 'gpu'"]),
    ("release-lacks-variant", 'variant = "cu130"\ntorch = "==2.7.1"\npython = "3.11"\n', {}, "bad.toml:2",
     ["no cu130 build", "torch 2.7 has cpu, cu118, cu126, cu128", "cu130 exists for torch 2.9-2.15"]),
    ("release-lacks-old-variant", 'variant = "cu117"\ntorch = ">=2.5,<2.7"\npython = "3.11"\n', {}, "bad.toml:2",
     ["no cu117 build", "torch 2.5 has", "torch 2.6 has", "cu117 exists for torch 2.0"]),
    ("python-unsupported", 'variant = "cu126"\ntorch = "2.7.1"\npython = "3.8"\n', {}, "bad.toml:3",
     ["python 3.8 is not supported by torch 2.7.1", "3.9-3.13"]),
    ("python-too-new", 'variant = "cu118"\ntorch = "2.7.1"\npython = "3.14"\n', {}, "bad.toml:3", ["python 3.14"]),
    ("python-format", 'variant = "cu126"\ntorch = "2.7.1"\npython = "3.11.4"\n', {}, "bad.toml:3", ["MAJOR.MINOR"]),
    ("python-not-string", 'variant = "cu126"\ntorch = "2.7.1"\npython = 3.11\n', {}, "bad.toml:3", ["'python' must be a string"]),
    ("pypi-not-variant", 'variant = "cu118"\ntorch = "2.7.1"\npython = "3.11"\ntorch-index-url = "pypi"\n', {}, "bad.toml:4",
     ["torch 2.7 on PyPI is a cu126 build, not cu118", 'variant = "cu126"']),
    ("pypi-cpu", 'variant = "cpu"\ntorch = "2.12.1"\npython = "3.11"\ntorch-index-url = "pypi"\n', {}, "bad.toml:4",
     ["torch 2.12 on PyPI is a cu130 build, not cpu"]),
    ("pypi-mirror-not-variant", f'variant = "cu128"\ntorch = "2.7.1"\npython = "3.11"\ntorch-index-url = "{SIMPLE}"\n'
     f'index-url = "{SIMPLE}"\n', {}, "bad.toml:4", ["on PyPI is a cu126 build, not cu128"]),
    ("pypi-spec-spans-builds", 'variant = "cu126"\ntorch = ">=2.7"\npython = "3.11"\ntorch-index-url = "pypi"\n', {}, "bad.toml:4",
     ["on PyPI is a cu128 build, not cu126"]),
    ("bad-torch", 'variant = "cu126"\ntorch = "latest"\npython = "3.11"\n', {}, "bad.toml:2", ["not a version or specifier"]),
    ("missing-python", 'variant = "cu126"\ntorch = "2.7.1"\n', {}, "bad.toml", ["missing required key 'python'"]),
    ("packages-not-list", GOOD + 'packages = "numpy"\n', {}, "bad.toml:4", ["'packages' must be a list"]),
    ("packages-not-strings", GOOD + 'packages = ["numpy", 3]\n', {}, "bad.toml:4", ["list of strings"]),
    ("bad-requirement", GOOD + 'packages = ["num py!"]\n', {}, "bad.toml:4", ["bad requirement 'num py!'"]),
    ("torch-in-packages", GOOD + 'packages = ["numpy", "torch==2.7.0"]\n', {}, "bad.toml:4", ["torch is set by the 'torch' key"]),
    ("bad-platform", GOOD + 'platform = "windows-x86_64"\n', {}, "bad.toml:4", ["unknown platform 'windows-x86_64'", "linux-x86_64"]),
    ("bad-index-url", GOOD + 'index-url = "pypi.example/simple"\n', {}, "bad.toml:4", ["index-url must be an http(s)://"]),
    ("bad-torch-index-url", GOOD + 'torch-index-url = "cu126"\n', {}, "bad.toml:4", ["torch-index-url must be"]),
    ("bad-extra-index", GOOD + 'extra-index-urls = ["nope"]\n', {}, "bad.toml:4", ["not a URL: 'nope'"]),
    ("image-not-table", GOOD + 'image = "x"\n', {}, "bad.toml:4", ["'image' must be a table"]),
    ("image-bad-type", GOOD + '[image]\nenv = "A=1"\n', {}, "bad.toml:5", ["[image] 'env' must be a table"]),
    ("extends-missing", 'extends = "_nope.toml"\n' + GOOD, {}, "bad.toml:1", ["extends '_nope.toml', which does not exist"]),
    ("extends-cycle", 'extends = "_a.toml"\n' + GOOD, {"_a.toml": 'extends = "_b.toml"\n', "_b.toml": 'extends = "_a.toml"\n'},
     "_b.toml:1", ["extends cycle"]),
    ("base-unknown-key", 'extends = "_base.toml"\n' + GOOD, {"_base.toml": '\n\npythn = "3.11"\n'}, "_base.toml:3",
     ["unknown key 'pythn'"]),
    ("base-bad-python", 'extends = "_base.toml"\nvariant = "cu126"\ntorch = "2.7.1"\n', {"_base.toml": '# shared\npython = "3.7"\n'},
     "_base.toml:2", ["python 3.7 is not supported"]),
    ("base-malformed", 'extends = "_base.toml"\n' + GOOD, {"_base.toml": "[image\n"}, "_base.toml:1:", ["invalid TOML"]),
    ("not-utf8", b'variant = "cu126"\ntorch = "2.7.1"\npython = "3.11"\n# \xff\xfe\n', {}, "bad.toml", ["cannot read"]),
]


@pytest.mark.parametrize("text,extra,where,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_validation_error_names_file_and_line(tmp_path: Path, text, extra, where, words) -> None:
    msg = load_error(tmp_path, text, extra)
    assert where in msg, msg
    assert str(tmp_path / "profiles") in msg, msg  # the full path of the file
    for w in words:
        assert w in msg, (w, msg)


@pytest.mark.parametrize("case", ["unknown-key", "malformed-toml", "release-lacks-variant", "python-unsupported",
                                  "pypi-not-variant", "bad-requirement", "base-unknown-key", "not-utf8"])
def test_cli_bad_profile_is_one_line_and_changes_nothing(tmp_path: Path, case: str) -> None:
    _, text, extra, where, words = next(b for b in BAD if b[0] == case)
    project = write(tmp_path, {"bad.toml": text, **extra})
    (project / "locks").mkdir()
    (project / "locks" / "pylock.bad.toml").write_text("# an old lock, kept byte-identical\n")
    before = tree(project)
    for args in (["lock", "bad"], ["lock", "--check", "bad"], ["lock", "--all"]):
        proc = envmgr(project, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert where in lines[0] and words[0] in lines[0], lines[0]
        assert "Traceback" not in proc.stdout + proc.stderr
        assert tree(project) == before


@pytest.mark.parametrize("name,words", [("nope", ["no profile 'nope'", "profiles here: good"]),
                                         ("../good", ["not a profile name"]),
                                         ("_base", ["_base.toml is a shared base, not a profile", "good"])])
def test_cli_unknown_profile_name(tmp_path: Path, name: str, words: list[str]) -> None:
    project = write(tmp_path, {"good.toml": GOOD, "_base.toml": 'python = "3.11"\n'})
    before = tree(project)
    proc = envmgr(project, "lock", name)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for w in words:
        assert w in lines[0], lines[0]
    assert tree(project) == before
