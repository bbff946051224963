"""The pure rules the probe and doctor share: arch coverage, versions, CUDA-runtime conflicts."""

from __future__ import annotations

import json

import pytest
from test_gpu_helpers import fixture_text

from envmgr.gpu import probe
from envmgr.model import gpucompat

CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


@pytest.mark.parametrize("entry, want", [
    ("sm_86", ("sm", 8, 6, "")), ("sm_120", ("sm", 12, 0, "")), ("sm_100", ("sm", 10, 0, "")),
    ("compute_90", ("compute", 9, 0, "")), ("sm_90a", ("sm", 9, 0, "a")), ("sm_100f", ("sm", 10, 0, "f")),
    ("sm_5", None), ("gfx90a", None), ("", None),
])
def test_parse_arch(entry, want):
    assert gpucompat.parse_arch(entry) == want


def test_h200_fixture_is_covered_by_its_own_arch_list():
    data = json.loads(fixture_text("torch-probe.json"))
    cov = probe.arch_coverage(data["device"]["cap"], data["arch_list"])
    assert cov == {"covered": True, "via": "sm_90", "reason": "sm_90 is compiled in"}


@pytest.mark.parametrize("cap, archs, via", [
    ((9, 0), ["sm_80", "sm_90"], "sm_90"),
    ((8, 9), CU126, "sm_86"),  # Ada runs Ampere code
    ((8, 7), ["sm_80", "sm_86"], "sm_86"),  # the highest minor at or below wins
    ((12, 1), CU130, "sm_120"),
    ((10, 3), ["sm_100f"], "sm_100f"),  # family-specific: the family's later minors
])
def test_sass_binary_compatible_within_a_major(cap, archs, via):
    cov = probe.arch_coverage(cap, archs)
    assert cov["covered"] and cov["via"] == via


@pytest.mark.parametrize("cap, archs, words", [
    ((12, 0), CU126, ["sm_120 is not compiled in", "no PTX"]),  # RTX 5090 on cu126
    ((8, 6), ["sm_75", "sm_89"], ["sm_89 code does not run on the lower minor sm_86"]),
    ((10, 0), ["sm_90"], ["sm_100 is not compiled in"]),  # never across majors
    ((9, 1), ["sm_90a"], ["sm_91 is not compiled in"]),  # arch-specific builds run on exactly that GPU
    ((7, 0), CU130, ["sm_70 is not compiled in"]),  # Volta dropped
])
def test_not_covered(cap, archs, words):
    cov = probe.arch_coverage(cap, archs)
    assert not cov["covered"] and cov["via"] is None
    for w in words:
        assert w in cov["reason"]


def test_arch_specific_exact_match_runs():
    assert probe.arch_coverage((9, 0), ["sm_90a"])["covered"]


def test_ptx_from_arch_list_reaches_newer_gpus():
    cov = probe.arch_coverage((12, 0), ["sm_80", "sm_90", "compute_90"])
    assert cov["covered"] and cov["via"] == "compute_90" and "JIT" in cov["reason"]
    assert not probe.arch_coverage((8, 6), ["sm_90", "compute_90"])["covered"]  # PTX never runs on older GPUs


def test_ptx_from_the_lock_and_the_driver_it_needs():
    # cu128/torch 2.7 per the knowledge base: ... 12.0+PTX; a future sm_130 GPU gets the PTX by JIT
    archs = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    ok = probe.arch_coverage((13, 0), archs, ["sm_120"], driver="580.159.04", toolkit_driver="570.26")
    assert ok["covered"] and ok["via"] == "sm_120" and "PTX of sm_120" in ok["reason"]
    old = probe.arch_coverage((13, 0), archs, ["sm_120"], driver="535.104.05", toolkit_driver="570.26")
    assert not old["covered"] and "needs driver >= 570.26" in old["reason"]
    unknown = probe.arch_coverage((13, 0), archs, ["sm_120"], toolkit_driver="570.26")
    assert unknown["covered"] and "JIT needs driver >= 570.26" in unknown["reason"]


def test_versions():
    assert probe.version_tuple("580.159.04") == (580, 159, 4)
    assert probe.driver_at_least("580.159.04", "580") and not probe.driver_at_least("575.51.03", "580")
    assert probe.cuda_int("13.0") == 13000 and probe.cuda_int("12.2") == 12020 and probe.cuda_int("") is None
    assert probe.cuda_str(13000) == "13.0" and probe.cuda_str(12080) == "12.8" and probe.cuda_str(None) is None
    assert probe.cudnn_tuple(91900) == (9, 19, 0)  # the H200 fixture: nvidia-cudnn-cu13 9.19.0.56
    assert probe.cudnn_tuple(90501) == (9, 5, 1) and probe.cudnn_tuple(8700) == (8, 7, 0)


@pytest.mark.parametrize("actual, expected, ok", [
    ("2.11.0+cu130", "2.11.0+cu130", True),
    ("2.12.1+cu130", "2.12.1", True),  # PyPI's build: no local label in the lock
    ("2.7.1+cpu", "2.7.1+cu126", False),  # a CPU wheel where a CUDA one was locked
    ("2.7.0+cu126", "2.7.1+cu126", False),
    ("2.13.0+cpu", "2.13.0+cpu", True),
])
def test_compare_torch_version(actual, expected, ok):
    assert probe.compare_torch_version(actual, expected)[0] is ok


MAPS = """7f0000000000-7f0000001000 r-xp 00000000 08:01 1 /venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12
7f0000001000-7f0000002000 r--p 00001000 08:01 1 /venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12
7f0000003000-7f0000004000 r-xp 00000000 08:01 2 /venv/lib/python3.11/site-packages/nvidia/cudnn/lib/libcudnn.so.9
7f0000005000-7f0000006000 r-xp 00000000 08:01 3 /venv/lib/python3.11/site-packages/nvidia/cudnn/lib/libcudnn_ops.so.9
7f0000007000-7f0000008000 r-xp 00000000 08:01 4 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000009000-7f000000a000 rw-p 00000000 00:00 0
"""


def test_cuda_libraries_from_maps():
    assert probe.cuda_libraries(MAPS) == [
        "/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12",
        "/venv/lib/python3.11/site-packages/nvidia/cudnn/lib/libcudnn.so.9",
    ]


def test_runtime_conflicts():
    loaded = probe.cuda_libraries(MAPS)
    assert probe.runtime_conflicts(loaded, "12.6") == []
    two = loaded + ["/usr/local/cuda-11.8/lib64/libcudart.so.11.0"]
    problems = probe.runtime_conflicts(two, "12.6")
    assert any("two copies of libcudart loaded" in p for p in problems)
    assert any("CUDA 11 runtime, torch is built for CUDA 12.6" in p for p in problems)
    bundled = ["/venv/site-packages/torch/lib/libcudart-d0da41ae.so.11.0"]  # older wheels bundle a hashed copy
    assert probe.runtime_conflicts(bundled, "11.8") == []
    assert probe.runtime_conflicts(bundled, "12.1")
    ld = probe.runtime_conflicts(loaded, "12.6", {"/usr/local/cuda-11.8/lib64": ["libcudart.so.11.0"]})
    assert ld == ["LD_LIBRARY_PATH holds a CUDA 11 runtime (/usr/local/cuda-11.8/lib64/libcudart.so.11.0), torch is built for CUDA 12.6"]
    assert probe.runtime_conflicts([], None, {"/opt/cuda/lib64": ["libcudart.so.12"]}) == []  # a CPU build does not care
