"""One home for each rule (issue 11): versions and GPU-arch coverage live in ``model.gpucompat``.

``envmgr diff`` (which GPUs a lock update gains or loses), ``envmgr doctor`` and the probe
behind ``envmgr check`` must agree on which GPUs a build runs on, for every arch name and
arch list of the knowledge base and every GPU of the fixtures. The probe is asked as it runs
in a target environment: by an interpreter that cannot import envmgr (``-I -S``), from its
own file; the source ``runner`` sends is run the same way.
"""

from __future__ import annotations

import ast
import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from test_gpu_helpers import fixture_text, make_lock

from envmgr.gpu import doctor, probe, runner
from envmgr.host import detect
from envmgr.model import gpucompat
from envmgr.model.variants import VariantFacts, kb
from envmgr.report import diff, diffreport

RULES = Path(gpucompat.__file__)
H200_DRIVER = "580.159.04"  # the fixture machine's driver


# -- the cases: every arch list and arch name of the knowledge base, every fixture GPU ----------

def kb_lists() -> list[tuple[str, tuple[str, ...], str]]:
    """(label, arch list, PTX arch) of every ``[[arch]]`` entry, as a lock records them."""
    return [(f"{a.variant} torch{a.torch}", a.sm, ("sm_" + a.ptx.replace(".", "")) if a.ptx else "") for a in kb().arch]


def as_torch_says(archs: tuple[str, ...], ptx: str) -> tuple[str, ...]:
    """The list as the probe reads it from torch (``torch.cuda.get_arch_list()``): the PTX of a
    ``12.0+PTX`` build is an entry ``compute_120``, where the lock has ``ptx = "sm_120"``."""
    return archs + (("compute_" + ptx[len("sm_"):],) if ptx else ())


def fixture_gpus() -> dict[str, tuple[int, int]]:
    """The H200 as nvidia-smi and as torch saw it."""
    _driver, gpus = detect.parse_query_gpu_csv(fixture_text("query-gpu.csv"))
    seen = {f"query-gpu.csv GPU {g.index} {g.name}": g.capability for g in gpus}
    torch_probe = json.loads(fixture_text("torch-probe.json"))
    seen["torch-probe.json " + torch_probe["device"]["name"]] = tuple(torch_probe["device"]["cap"])
    assert all(seen.values()) and seen
    return seen


def capabilities() -> list[tuple[int, int]]:
    names = {n for _label, archs, ptx in kb_lists() for n in (*archs, ptx) if n}
    caps = {gpucompat.parse_arch(n)[1:3] for n in names}
    newer = (max(caps)[0] + 1, 0)  # a GPU newer than any the knowledge base knows: PTX's case
    return sorted(caps | set(fixture_gpus().values()) | set(diff.GPU_FAMILIES) | {newer})


STANDALONE = r'''
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("probe", sys.argv[1])
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)
assert not [m for m in sys.modules if m.split(".")[0] == "envmgr"], "the probe imported envmgr"
cases = json.loads(sys.stdin.read())
print(json.dumps({"rules": probe._rules.__name__,
                  "covered": [probe.arch_coverage(cap, archs, [ptx] if ptx else [])["covered"] for cap, archs, ptx in cases]}))
'''


@pytest.fixture(scope="module")
def probe_says() -> dict:
    """{(capability, arch list, ptx): covered} from the probe run alone, as in a target."""
    lists = kb_lists() + [(label + " (torch's spelling)", as_torch_says(archs, ptx), "") for label, archs, ptx in kb_lists() if ptx]
    lists.append(("the H200's torch", tuple(json.loads(fixture_text("torch-probe.json"))["arch_list"]), ""))
    cases = [(cap, archs, ptx) for cap, (_label, archs, ptx) in itertools.product(capabilities(), lists)]
    r = subprocess.run([sys.executable, "-I", "-S", "-c", STANDALONE, str(Path(probe.__file__))], input=json.dumps(cases),
                       capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["rules"] == probe.RULES_MODULE  # the file beside it, not the package
    return {(tuple(cap), tuple(archs), ptx): covered for (cap, archs, ptx), covered in zip(cases, out["covered"])}


def test_the_cases_cover_the_knowledge_base_and_the_fixture(probe_says):
    assert len(kb_lists()) == len(kb().arch) >= 10
    assert (9, 0) in fixture_gpus().values() and (12, 0) in capabilities() and (3, 7) in capabilities()
    assert True in probe_says.values() and False in probe_says.values()


def test_diff_and_the_probe_agree_on_every_gpu_and_arch_list(probe_says):
    wrong = [(cap, archs, ptx, said) for (cap, archs, ptx), said in probe_says.items() if diff.runs_on(cap, archs, ptx) is not said]
    assert not wrong


def test_diff_on_the_lock_and_the_probe_on_torchs_own_list_agree(probe_says):
    """The probe judges torch's arch flags (PTX as a ``compute_`` entry), diff the lock's list
    and PTX field: the same build, the same verdict on every GPU."""
    with_ptx = [(archs, ptx) for _label, archs, ptx in kb_lists() if ptx]
    assert with_ptx
    for (archs, ptx), cap in itertools.product(with_ptx, capabilities()):
        torch_says = as_torch_says(archs, ptx)
        assert diff.runs_on(cap, archs, ptx) is probe_says[cap, torch_says, ""] is diff.runs_on(cap, torch_says), (archs, cap)
    assert probe_says[(13, 0), as_torch_says(*with_ptx[0]), ""]  # a GPU newer than the list, by JIT


def test_diff_reports_the_gpus_the_probe_would_gain_and_lose(probe_says):
    base = make_lock("p", "cu126", "2.7.1+cu126")
    lists = kb_lists()
    for (_la, a, pa), (_lb, b, pb) in itertools.product(lists, lists):
        if (a, pa) == (b, pb):
            continue
        old = replace(base, meta=replace(base.meta, arch_list=a, ptx=pa))
        new = replace(base, meta=replace(base.meta, arch_list=b, ptx=pb))
        change = diff.diff_locks(old, new).arch
        lost = [f"{c[0]}.{c[1]} {n}" for c, n in diff.GPU_FAMILIES.items() if probe_says[c, a, pa] and not probe_says[c, b, pb]]
        gained = [f"{c[0]}.{c[1]} {n}" for c, n in diff.GPU_FAMILIES.items() if probe_says[c, b, pb] and not probe_says[c, a, pa]]
        assert (list(change.gpus_lost), list(change.gpus_gained)) == (lost, gained), (a, pa, b, pb)


def test_doctor_and_the_probe_agree_on_the_fixture_driver(probe_says):
    """doctor's verdict on a host with the fixture's driver and each GPU: runs iff the probe
    finds the GPU covered (that driver meets every variant's minimum and JIT driver)."""
    k = kb()
    for a in k.arch:
        info = k.driver_for_cuda(k.cuda_of(a.variant))
        ptx = ("sm_" + a.ptx.replace(".", "")) if a.ptx else ""
        facts = VariantFacts(a.variant, k.cuda_of(a.variant), info.min_driver, info.toolkit_driver, a.sm, ptx)
        for cap in capabilities():
            host = detect.Host(driver=H200_DRIVER, cuda="13.0", gpus=(detect.Gpu(0, "GPU", capability=cap),))
            assert doctor.assess(facts, host).runs is probe_says[cap, a.sm, ptx], (a.variant, a.torch, cap)


def test_the_h200_fixture_runs_its_own_torch_but_not_cu117(probe_says):
    archs = tuple(json.loads(fixture_text("torch-probe.json"))["arch_list"])
    assert probe_says[(9, 0), archs, ""]
    cu117 = next(a for a in kb().arch if a.variant == "cu117")
    assert not probe_says[(9, 0), cu117.sm, ""]


# -- the probe takes its rules with it --------------------------------------------------------

def test_rules_module_is_stdlib_only_and_python_38():
    tree = ast.parse(RULES.read_text(), feature_version=(3, 8))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(n.level for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_every_caller_uses_the_one_copy():
    assert probe.arch_coverage is gpucompat.arch_coverage and probe.version_tuple is gpucompat.version_tuple
    assert doctor.arch_coverage is gpucompat.arch_coverage and diff.runs_on is gpucompat.runs_on
    assert diff.parse_arch is gpucompat.parse_arch and diffreport.version_tuple is gpucompat.version_tuple
    assert detect.version_tuple is gpucompat.version_tuple and detect.driver_at_least is gpucompat.driver_at_least
    from envmgr.model import variants
    assert variants.version_tuple is gpucompat.version_tuple and variants.driver_at_least is gpucompat.driver_at_least


def test_the_source_runner_sends_runs_without_envmgr():
    source = runner.probe_source()
    assert repr(RULES.read_text("utf-8")) in source and repr(Path(probe.__file__).read_text("utf-8")) in source
    assert len(source.encode()) < 128 * 1024  # Linux's limit on one argv string (python -c SOURCE)
    r = subprocess.run([sys.executable, "-I", "-S", "-c", source, "--expect-json", "{}"], capture_output=True, text=True,
                       timeout=120, cwd="/")
    doc = json.loads(r.stdout)  # no torch without site-packages: the probe says so, in its document
    assert r.returncode == 0 and doc["schema"] == probe.SCHEMA, r.stderr
    assert [c["name"] for c in doc["checks"]] == ["torch.import"] and doc["checks"][0]["metrics"] == {"missing": True}


# -- versions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("580.159.04", (580, 159, 4)),
    ("2.7.1+cu126", (2, 7, 1)),  # a local label is not part of the version
    ("12.8", (12, 8)),
    ("rocm6.2.4", (6, 2, 4)),
    ("9.5.1.17", (9, 5, 1, 17)),
    ("570.86.10-1", (570, 86, 10, 1)),
    ("580.95a", (580, 95)),  # numbers inside a part count (the diff report's old copy dropped "95a")
    ("r580", (580,)),
    ("", ()),
    (None, ()),
    (12, (12,)),
])
def test_version_tuple(text, want):
    assert gpucompat.version_tuple(text) == want


def test_versions_compare_as_numbers():
    assert gpucompat.version_tuple("2.12") > gpucompat.version_tuple("2.9")
    assert gpucompat.version_tuple("2.7.1+cu128") == gpucompat.version_tuple("2.7.1+cu126")
    assert max(["2.9", "2.12", "2.10"], key=gpucompat.version_tuple) == "2.12"


@pytest.mark.parametrize("driver, minimum, ok", [
    ("580.159.04", "580", True),
    ("580.159.04", "580.65.06", True),
    ("575.51.03", "580", False),
    ("525.60.13", "525.60.13", True),
    ("525.60.9", "525.60.13", False),  # 9 < 13, not "9" > "1"
    ("535.104.05", "", True),  # no minimum
    ("", "525.60.13", False),  # no driver
])
def test_driver_at_least(driver, minimum, ok):
    assert gpucompat.driver_at_least(driver, minimum) is ok


# -- arch names and coverage ------------------------------------------------------------------

@pytest.mark.parametrize("entry, want", [
    (" sm_90 ", ("sm", 9, 0, "")),
    ("sm_89", ("sm", 8, 9, "")),
    ("sm_120", ("sm", 12, 0, "")),
    ("sm_103f", ("sm", 10, 3, "f")),
    ("compute_120", ("compute", 12, 0, "")),
    ("compute_90a", ("compute", 9, 0, "a")),
    ("lto_90", ("lto", 9, 0, "")),
    ("sm_90x", None),  # CUDA has the suffixes a and f only
    ("SM_90", None),
    ("sm_9", None),
    ("sm90", None),
    ("gfx942", None),
    ("", None),
])
def test_parse_arch_edges(entry, want):
    assert gpucompat.parse_arch(entry) == want


@pytest.mark.parametrize("cap, archs, ptx, covered", [
    ((9, 0), ["sm_90a"], "", True),  # arch-specific: that capability
    ((10, 0), ["sm_90a"], "", False),
    ((10, 3), ["sm_100f"], "", True),  # family-specific: later minors of the major
    ((10, 0), ["sm_103f"], "", False),
    ((12, 0), ["sm_100f"], "", False),
    ((12, 0), ["sm_80", "compute_90"], "", True),  # PTX in the arch list: JIT upwards, across majors
    ((8, 6), ["compute_90"], "", False),  # never downwards
    ((10, 0), ["sm_90", "compute_90a"], "", False),  # arch-specific PTX: no JIT to other GPUs
    ((9, 0), ["compute_90a"], "", True),
    ((10, 3), ["compute_100f"], "", True),  # family-specific PTX: within its major
    ((12, 0), ["compute_100f"], "", False),
    ((13, 0), ["sm_120"], "sm_120", True),  # the lock's PTX field: a string
    ((13, 0), ["sm_120"], ["sm_120"], True),  # or a list
    ((13, 0), ["sm_120"], "", False),
    ((9, 0), ["lto_90"], "", False),  # LTO IR covers nothing on its own
    ((9, 0), [], "", False),
])
def test_coverage_edges(cap, archs, ptx, covered):
    cov = gpucompat.arch_coverage(cap, archs, ptx)
    assert cov["covered"] is covered and (cov["via"] is None) is not covered
    assert gpucompat.runs_on(cap, archs, ptx) is covered


def test_jit_needs_the_toolkit_driver_but_compiled_code_does_not():
    archs, ptx = ["sm_90", "compute_90"], ""
    assert gpucompat.arch_coverage((9, 0), archs, ptx, driver="535.104.05", toolkit_driver="580.65.06")["covered"]
    old = gpucompat.arch_coverage((10, 0), archs, ptx, driver="535.104.05", toolkit_driver="580.65.06")
    assert not old["covered"] and "needs driver >= 580.65.06 (have 535.104.05)" in old["reason"]
    assert gpucompat.runs_on((10, 0), archs, ptx)  # diff asks no driver: the build can run there
