"""envmgr.report.diff and envmgr.report.diffreport on crafted lock pairs (pure: no index, no git).

The lock factory at the top (``make_lock``) is shared with the other test_diff*/test_export*
modules: locks shaped like real ones (torch from the variant's index with its local label,
the nvidia-* pins of that build, triton, a few PyPI packages) with the variant facts the
knowledge base gives.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from envmgr.core.errors import LockFileError
from envmgr.model import lockfile
from envmgr.model.lockfile import Lock, LockedFile, LockedPackage, LockMeta, fingerprint
from envmgr.model.variants import kb
from envmgr.report import diff, diffreport

HOST = "http://127.0.0.1:9"
PYPI_URL = f"{HOST}/simple"
TORCH_TAG = "cp311-cp311-manylinux_2_28_x86_64"
NVIDIA_TAG = "py3-none-manylinux2014_x86_64"

# The nvidia-* pins of each (torch, variant) build, as in the fixture index.
NVIDIA = {
    ("2.7.0", "cu126"): {"nvidia-cuda-runtime-cu12": "12.6.77", "nvidia-cudnn-cu12": "9.1.0.70", "nvidia-nccl-cu12": "2.21.5"},
    ("2.7.1", "cu126"): {"nvidia-cuda-runtime-cu12": "12.6.77", "nvidia-cudnn-cu12": "9.5.1.17", "nvidia-nccl-cu12": "2.26.2"},
    ("2.7.0", "cu128"): {"nvidia-cuda-runtime-cu12": "12.8.57", "nvidia-cudnn-cu12": "9.5.1.17", "nvidia-nccl-cu12": "2.21.5"},
    ("2.7.1", "cu128"): {"nvidia-cuda-runtime-cu12": "12.8.90", "nvidia-cudnn-cu12": "9.7.1.26", "nvidia-nccl-cu12": "2.26.2"},
    ("2.9.0", "cu130"): {"nvidia-cuda-runtime": "13.0.48", "nvidia-cudnn-cu13": "9.13.0.50", "nvidia-nccl-cu13": "2.27.7"},
}
TRITON = {"2.7.0": "3.3.0", "2.7.1": "3.3.1", "2.9.0": "3.5.0"}
DEFAULT_EXTRAS = {"numpy": "2.2.0", "filelock": "3.16.1", "typing-extensions": "4.12.2"}


def wheel(name: str, version: str, tag: str = "py3-none-any", *, store: str = f"{HOST}/files", size: int = 1000,
          salt: str = "") -> LockedFile:
    filename = f"{name.replace('-', '_')}-{version}-{tag}.whl"
    digest = hashlib.sha256((filename + salt).encode()).hexdigest()
    return LockedFile(url=f"{store}/{filename.replace('+', '%2B')}", sha256=digest, size=size)


def package(name: str, version: str, *, index: str = PYPI_URL, tag: str = "py3-none-any", size: int = 1000,
            salt: str = "", store: str | None = None) -> LockedPackage:
    store = store or (f"{HOST}/whl/files" if "/whl/" in index else f"{HOST}/files")
    return LockedPackage(name, version, index, (wheel(name, version, tag, store=store, size=size, salt=salt),))


def make_lock(profile: str = "gpu", variant: str = "cu126", torch: str = "2.7.0", *,
              extras: dict[str, str] | None = None, drop: tuple[str, ...] = (), inputs: dict | None = None,
              torch_size: int = 50_000, python: str = "3.11") -> Lock:
    torch_index = f"{HOST}/whl/{variant}"
    packages = [package("torch", f"{torch}+{variant}", index=torch_index, tag=TORCH_TAG, size=torch_size)]
    for name, version in NVIDIA.get((torch, variant), {}).items():
        packages.append(package(name, version, tag=NVIDIA_TAG, size=16_000))
    if variant != "cpu":
        packages.append(package("triton", TRITON[torch], index=torch_index, tag="cp311-cp311-manylinux_2_28_x86_64"))
    for name, version in {**DEFAULT_EXTRAS, **(extras or {})}.items():
        packages.append(package(name, version))
    packages = [p for p in packages if p.key not in drop]
    facts = kb().facts(variant, torch)
    inputs = inputs if inputs is not None else {"variant": variant, "torch": f"=={torch}", "python": python}
    meta = LockMeta(
        profile=profile, fingerprint=fingerprint(inputs), inputs=inputs, resolver="uv", resolver_version="0.13.9",
        python=python, platform="linux-x86_64", variant=variant, torch_index=torch_index, cuda=facts.cuda,
        min_driver=facts.min_driver, toolkit_driver=facts.toolkit_driver, arch_list=facts.arch_list, ptx=facts.ptx,
    )
    return Lock(packages=tuple(sorted(packages, key=lambda p: p.key)), meta=meta, requires_python=f"=={python}.*")


def key_components(d: diff.ProfileDiff) -> list[str]:
    return [k.component for k in d.key]


# -- versions -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("2.7.0", "2.7.1", ("upgraded", "patch")),
        ("2.7.1", "3.0.0", ("upgraded", "major")),
        ("2.7.1", "2.8.0", ("upgraded", "minor")),
        ("9.5.1.17", "9.7.1.26", ("upgraded", "minor")),
        ("9.5.1.17", "9.5.1.18", ("upgraded", "patch")),
        ("2.8.0", "2.7.1", ("downgraded", "minor")),
        ("2.7.1+cu126", "2.7.1+cu128", ("relabelled", "local")),
        ("2.7.1+cu128", "2.7.1+cu126", ("relabelled", "local")),
        ("2.7.0+cu126", "2.7.1+cu128", ("upgraded", "patch")),
        ("1.0rc1", "1.0", ("upgraded", "pre-release")),
        ("1.0", "1.0.post1", ("upgraded", "post-release")),
        ("2", "2.0.1", ("upgraded", "patch")),
        ("1!1.0", "2.0", ("downgraded", "major")),
        ("2.7.1", "2.7.1", ("", "")),
    ],
)
def test_classify(old, new, expected):
    assert diff.classify(old, new) == expected


# -- package changes ----------------------------------------------------------------------

def test_torch_upgrade_calls_out_torch_cudnn_nccl_triton_in_order():
    d = diff.diff_locks(make_lock(torch="2.7.0"), make_lock(torch="2.7.1"))
    assert d.status == "changed"
    assert (d.old_torch, d.new_torch) == ("2.7.0+cu126", "2.7.1+cu126")
    # CUDA is unchanged (12.6, runtime 12.6.77 on both): not called out.
    assert key_components(d) == ["torch", "cuDNN", "NCCL", "triton"]
    torch = d.key[0]
    assert (torch.old, torch.new, torch.kind, torch.level) == ("2.7.0+cu126", "2.7.1+cu126", "upgraded", "patch")
    cudnn = d.key[1]
    assert (cudnn.old, cudnn.new, cudnn.level, cudnn.new_package) == ("9.1.0.70", "9.5.1.17", "minor", "nvidia-cudnn-cu12")
    by_name = {p.name: p for p in d.packages}
    assert set(by_name) == {"torch", "nvidia-cudnn-cu12", "nvidia-nccl-cu12", "triton"}
    assert by_name["torch"].old_label == by_name["torch"].new_label == ""  # same label: not a label change
    assert d.arch is None and not d.facts


def test_variant_switch_relabels_torch_and_changes_cuda_and_archs():
    d = diff.diff_locks(make_lock(variant="cu126", torch="2.7.1"), make_lock(variant="cu128", torch="2.7.1"))
    assert key_components(d)[:2] == ["torch", "CUDA"]
    torch, cuda = d.key[0], d.key[1]
    assert (torch.kind, torch.level) == ("relabelled", "local")
    assert (cuda.old, cuda.new, cuda.kind, cuda.level) == ("12.6 (runtime 12.6.77)", "12.8 (runtime 12.8.90)", "upgraded", "minor")
    change = next(p for p in d.packages if p.name == "torch")
    assert (change.old_label, change.new_label) == ("cu126", "cu128")
    assert {f.name for f in d.facts} >= {"variant", "cuda", "toolkit-driver", "torch-index"}
    assert d.fact("min-driver") is None  # 525.60.13 for both 12.6 and 12.8
    a = d.arch
    assert a.removed == ("sm_50", "sm_60", "sm_70")
    assert a.added == ("sm_100", "sm_120")
    assert (a.old_ptx, a.new_ptx) == ("", "sm_120")
    assert "7.0 Volta: V100" in a.gpus_lost and "6.0 Pascal: P100" in a.gpus_lost
    assert "12.0 Blackwell: RTX 50xx, RTX PRO 6000" in a.gpus_gained and "10.0 Blackwell: B200, GB200" in a.gpus_gained
    # Hopper and Ampere run on both builds.
    assert not any(g.startswith(("9.0", "8.0", "8.6")) for g in a.gpus_lost + a.gpus_gained)


def test_new_cuda_major_raises_min_driver_and_renames_runtime_packages():
    d = diff.diff_locks(make_lock(variant="cu128", torch="2.7.1"), make_lock(variant="cu130", torch="2.9.0"))
    assert d.fact("min-driver").old == "525.60.13" and d.fact("min-driver").new == "580"
    cuda = next(k for k in d.key if k.component == "CUDA")
    assert (cuda.old, cuda.new, cuda.level) == ("12.8 (runtime 12.8.90)", "13.0 (runtime 13.0.48)", "major")
    cudnn = next(k for k in d.key if k.component == "cuDNN")
    assert (cudnn.old_package, cudnn.new_package) == ("nvidia-cudnn-cu12", "nvidia-cudnn-cu13")
    kinds = {p.name: p.kind for p in d.packages}
    assert kinds["nvidia-cudnn-cu12"] == "removed" and kinds["nvidia-cudnn-cu13"] == "added"
    text = diffreport.markdown([d])
    assert "**Minimum driver raised** from 525.60.13 to 580" in text


def test_added_removed_rebuilt_moved_and_size():
    old = make_lock(extras={"requests": "2.32.0", "six": "1.16.0"}, torch_size=50_000)
    rebuilt = package("numpy", "2.2.0", salt="other bytes")
    moved = replace(package("filelock", "3.16.1"), index=f"{HOST}/mirror/simple")
    new = make_lock(extras={"requests": "2.32.3", "idna": "3.7"}, drop=("six",), torch_size=60_000)
    new = new.with_packages([p for p in new.packages if p.key not in ("numpy", "filelock")] + [rebuilt, moved])
    d = diff.diff_locks(old, new)
    kinds = {p.name: (p.kind, p.level) for p in d.packages}
    assert kinds == {
        "requests": ("upgraded", "patch"),
        "idna": ("added", ""),
        "six": ("removed", ""),
        "numpy": ("rebuilt", ""),
        "filelock": ("moved", ""),
    }
    assert d.size_delta == new.download_size - old.download_size == 10_000
    assert d.counts() == {"upgraded": 1, "added": 1, "removed": 1, "rebuilt": 1, "moved": 1}


def test_added_and_removed_profiles():
    lock = make_lock()
    added = diff.diff_locks(None, lock)
    assert added.status == "added" and all(p.kind == "added" for p in added.packages)
    assert len(added.packages) == len(lock.packages) and added.new_size == lock.download_size
    removed = diff.diff_locks(lock, None)
    assert removed.status == "removed" and all(p.kind == "removed" for p in removed.packages)
    with pytest.raises(ValueError):
        diff.diff_locks(None, None)


def test_unchanged_and_inputs_only():
    assert diff.diff_locks(make_lock(), make_lock()).status == "unchanged"
    d = diff.diff_locks(make_lock(), make_lock(inputs={"variant": "cu126", "torch": ">=2.7", "python": "3.11"}))
    assert d.status == "changed" and not d.packages
    assert d.inputs == ("torch: ==2.7.0 -> >=2.7",)


# -- GPU architectures --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("cap", "archs", "ptx", "runs"),
    [
        ((8, 9), ("sm_86",), "", True),  # Ada runs Ampere code
        ((8, 6), ("sm_89",), "", False),
        ((8, 9), ("sm_90",), "", False),
        ((10, 0), ("sm_90",), "sm_90", True),  # by PTX JIT
        ((7, 5), ("sm_80",), "sm_80", False),  # PTX only runs upwards
        ((9, 0), ("sm_90a",), "", True),
        ((9, 1), ("sm_90a",), "", False),
        ((12, 1), ("sm_120",), "", True),
        ((7, 0), (), "", False),
    ],
)
def test_runs_on(cap, archs, ptx, runs):
    assert diff.runs_on(cap, archs, ptx) is runs


def test_describe_arch():
    assert diff.describe_arch("sm_70") == "sm_70 (Volta: V100)"
    assert diff.describe_arch("sm_90") == "sm_90 (Hopper: H100, H200, GH200)"
    assert diff.describe_arch("sm_88") == "sm_88 (Ampere/Ada)"
    assert diff.describe_arch("gfx90a") == "gfx90a"


# -- consistency --------------------------------------------------------------------------

def test_consistent_lock_passes():
    lockfile.check_consistency(make_lock(variant="cu128", torch="2.7.1"))


def test_hand_edited_version_is_detected():
    lock = make_lock(torch="2.7.0")
    torch = lock.package("torch")
    edited = lock.with_packages([p for p in lock.packages if p.key != "torch"] + [replace(torch, version="2.7.1+cu126")])
    with pytest.raises(LockFileError, match=r"package torch 2\.7\.1\+cu126 does not match its file torch-2\.7\.0\+cu126-.*edited by hand"):
        lockfile.check_consistency(edited, "locks/pylock.gpu.toml")


def test_file_of_another_package_is_detected():
    lock = make_lock()
    numpy = lock.package("numpy")
    swapped = replace(numpy, wheels=lock.package("filelock").wheels)
    with pytest.raises(LockFileError, match="package numpy"):
        lockfile.check_consistency(lock.with_packages([p for p in lock.packages if p.key != "numpy"] + [swapped]))


# -- markdown -----------------------------------------------------------------------------

def test_markdown_puts_torch_first_then_archs_then_packages():
    d = diff.diff_locks(make_lock(variant="cu126", torch="2.7.0"), make_lock(variant="cu128", torch="2.7.1"))
    text = diffreport.markdown([d], "HEAD")
    assert text.startswith("## envmgr lock changes\n")
    assert "### `gpu`: torch 2.7.0+cu126 → 2.7.1+cu128" in text
    rows = [text.index(f"| **{c}** |") for c in ("torch", "CUDA", "cuDNN", "NCCL", "triton")]
    assert rows == sorted(rows)
    assert text.index("| **torch** |") < text.index("**GPU architectures**") < text.index("| package |")
    assert "- sm_70 (Volta: V100) dropped" in text
    assert "- sm_120 (Blackwell: RTX 50xx, RTX PRO 6000) added" in text
    assert "**Stop being supported**: 5.0 Maxwell" in text
    assert "| GPU archs | sm_50 sm_60 sm_70 sm_75 sm_80 sm_86 sm_90 | sm_75 sm_80 sm_86 sm_90 sm_100 sm_120 +PTX sm_120 |" in text
    assert "| torch | 2.7.0+cu126 | 2.7.1+cu128 | upgraded (patch), local label `+cu126` → `+cu128` |" in text
    assert "| download |" in text
    # The summary line near the top names the torch change first.
    first = text.splitlines()[4]
    assert first.startswith("- `gpu`: torch 2.7.0+cu126 → 2.7.1+cu128; CUDA 12.6")


def test_markdown_folds_long_package_lists():
    many = {f"pkg{i}": "1.0.0" for i in range(12)}
    d = diff.diff_locks(make_lock(), make_lock(extras={k: "1.1.0" for k in many}))
    text = diffreport.markdown([d])
    assert "<details><summary>12 package changes: 12 added</summary>" in text and "</details>" in text
    short = diffreport.markdown([diff.diff_locks(make_lock(torch="2.7.0"), make_lock(torch="2.7.1"))])
    assert "<details>" not in short and "**Packages** (4 package changes: 4 upgraded)" in short


def test_markdown_nothing_changed_and_unchanged_profiles_listed():
    same = diff.diff_locks(make_lock(profile="cpu", variant="cpu"), make_lock(profile="cpu", variant="cpu"))
    assert diffreport.markdown([same], "main") == (
        "## envmgr lock changes\n\nNo lock changes compared with `main` (1 profile checked).\n"
    )
    moved = diff.diff_locks(make_lock(torch="2.7.0"), make_lock(torch="2.7.1"))
    text = diffreport.markdown([moved, same])
    assert "1 profile changed (`gpu`), 1 unchanged (`cpu`)" in text
    assert "### `cpu`" not in text


def test_markdown_added_and_removed_profiles():
    text = diffreport.markdown([diff.diff_locks(None, make_lock(profile="new")), diff.diff_locks(make_lock(profile="old"), None)])
    assert "### `new` (new lock): torch 2.7.0+cu126" in text
    assert "### `old` (lock removed)" in text
    assert "| **torch** | — | 2.7.0+cu126 | added |" in text


def test_markdown_escapes_table_cells():
    d = diff.diff_locks(make_lock(), make_lock(inputs={"variant": "cu126", "torch": "==2.7.0", "python": "3.11", "x": "a|b"}))
    assert "a\\|b" in diffreport.markdown([d]) or "`x: (none) -> a|b`" in diffreport.markdown([d])


def test_json_report():
    d = diff.diff_locks(make_lock(variant="cu126", torch="2.7.0"), make_lock(variant="cu128", torch="2.7.1"))
    data = json.loads(diffreport.json_text([d], "HEAD"))
    assert data["format"] == 1 and data["base"] == "HEAD" and data["changed"] is True
    (p,) = data["profiles"]
    assert p["profile"] == "gpu" and p["status"] == "changed"
    assert [k["component"] for k in p["key"]][:2] == ["torch", "CUDA"]
    assert p["arch"]["removed"] == ["sm_50", "sm_60", "sm_70"]
    assert p["size_delta"] == p["new_size"] - p["old_size"]
    torch = next(x for x in p["packages"] if x["name"] == "torch")
    assert torch["label_changed"] is True and torch["old_label"] == "cu126"


def test_render_rejects_unknown_format():
    from envmgr.core.errors import UserError

    with pytest.raises(UserError, match="unknown diff format 'xml'"):
        diffreport.render([], "xml")


def test_human_size():
    assert diffreport.human_size(512) == "512 B"
    assert diffreport.human_size(1536) == "1.5 KiB"
    assert diffreport.human_size(-3 * 1024 * 1024) == "-3.0 MiB"
    assert diffreport.size_delta(1000, 1100) == "+100 B (+10.0%)"
    assert diffreport.size_delta(5, 5) == "no change"


# -- the size limit (GitHub rejects a PR body over 65,536 characters) ----------------------

def many(prefix: str, n: int, version: str) -> dict[str, str]:
    return {f"{prefix}-package-with-a-long-name-{i:05d}": version for i in range(n)}


def big_upgrade(profile: str, n: int) -> diff.ProfileDiff:
    """torch 2.7.0 -> 2.7.1 and ``n`` more packages upgraded, as a lock refresh gives."""
    return diff.diff_locks(make_lock(profile=profile, extras=many(profile, n, "1.0.0")),
                           make_lock(profile=profile, torch="2.7.1", extras=many(profile, n, "1.1.0")))


@pytest.fixture(scope="module")
def big_diffs() -> list[diff.ProfileDiff]:
    return [big_upgrade("alpha", 1500), big_upgrade("bravo", 900), big_upgrade("charlie", 200), big_upgrade("delta", 12)]


KEY_ROWS = (
    "| **torch** | 2.7.0+cu126 | 2.7.1+cu126 | upgraded (patch) |",
    "| **cuDNN** | 9.1.0.70 | 9.5.1.17 | upgraded (minor) |",
    "| **NCCL** | 2.21.5 | 2.26.2 | upgraded (minor) |",
    "| **triton** | 3.3.0 | 3.3.1 | upgraded (patch) |",
)


def sections(text: str) -> dict[str, str]:
    """profile -> its ``### `name` ...`` section."""
    parts = text.split("\n### `")[1:]
    return {p.split("`", 1)[0]: p for p in parts}


def test_long_body_fits_and_keeps_every_key_table(big_diffs):
    full = diffreport.markdown(big_diffs, max_chars=0)
    assert len(full) > 100_000
    text = diffreport.markdown(big_diffs)
    assert len(text) <= diffreport.DEFAULT_MAX_CHARS
    assert text == diffreport.markdown(big_diffs)  # deterministic
    by_profile = sections(text)
    assert list(by_profile) == ["alpha", "bravo", "charlie", "delta"]
    for name, n in (("alpha", 1504), ("bravo", 904), ("charlie", 204), ("delta", 16)):
        assert f"- `{name}`: torch 2.7.0+cu126 → 2.7.1+cu126; cuDNN 9.1.0.70 → 9.5.1.17; NCCL 2.21.5 → 2.26.2; " \
               f"triton 3.3.0 → 3.3.1; {n} upgraded" in text
        section = by_profile[name]
        for row in KEY_ROWS:
            assert row in section, (name, row)
        assert "| download | " in section
    # The two largest lists went, and the body says so and how to see them.
    notice = next(line for line in text.splitlines() if line.startswith("> **Shortened"))
    assert "left out the package lists of `alpha`, `bravo`." in notice
    assert "`envmgr diff --format json`" in notice and "`envmgr diff NAME --max-chars 0`" in notice
    for name, n in (("alpha", 1504), ("bravo", 904)):
        assert "<details>" not in by_profile[name]
        assert f"**Packages** ({n} package changes: {n} upgraded): list left out to fit the size limit; " \
               f"`envmgr diff {name} --max-chars 0` shows it." in by_profile[name]
    for name in ("charlie", "delta"):
        assert "<details><summary>" in by_profile[name] and "-package-with-a-long-name-00011 |" in by_profile[name]
    # JSON is never shortened.
    assert len(json.loads(diffreport.render(big_diffs, "json"))["profiles"][0]["packages"]) == 1504


@pytest.mark.parametrize("limit", [2_000, 3_000, 6_000, 12_000, 20_000, 40_000])
def test_tighter_limits_still_fit(big_diffs, limit):
    text = diffreport.markdown(big_diffs, "origin/main", max_chars=limit)
    assert len(text) <= limit and text.endswith("\n")
    assert text.startswith("## envmgr lock changes\n\nCompared with `origin/main`: 4 profiles changed")
    assert text == diffreport.markdown(big_diffs, "origin/main", max_chars=limit)
    assert "Shortened to fit" in text or "cut to fit" in text
    assert "--base origin/main" in text
    if limit >= 6_000:  # room for every key table: the details go, the key rows stay
        for name, section in sections(text).items():
            assert all(row in section for row in KEY_ROWS), name


def test_small_body_is_unchanged_byte_for_byte():
    ds = [
        diff.diff_locks(make_lock(variant="cu126", torch="2.7.0"), make_lock(variant="cu128", torch="2.7.1")),
        diff.diff_locks(make_lock(profile="wide"), make_lock(profile="wide", extras={f"pkg{i}": "1.0" for i in range(10)})),
    ]
    text = diffreport.markdown(ds, "main")
    # the text this renderer gave before it had a size limit
    assert hashlib.sha256(text.encode()).hexdigest() == "c96696d0aa079ac79d4ac16e538fff32353206d0110c5c3fef67aa744301d52d"
    assert text == diffreport.markdown(ds, "main", max_chars=0) == diffreport.render(ds, "markdown", "main", len(text))
    assert "Shortened" not in text and "<details>" in text


@pytest.mark.parametrize("value, expected", [("0", 0), ("65000", 65_000), (" 2000 ", 2_000), (70_000, 70_000)])
def test_parse_max_chars(value, expected):
    assert diffreport.parse_max_chars(value) == expected


@pytest.mark.parametrize("value", ["-1", "abc", "", "1999", "1e5", "65000.5"])
def test_parse_max_chars_rejects(value):
    from envmgr.core.errors import UserError

    with pytest.raises(UserError, match="bad --max-chars"):
        diffreport.parse_max_chars(value)
