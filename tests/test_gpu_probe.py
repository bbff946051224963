"""The standalone probe, run by a real interpreter with a real CPU torch: its CPU kernels
run, its GPU checks skip with the reason, its document follows the schema."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
from test_gpu_helpers import no_torch_python, torch_python, torch_version  # noqa: F401 (fixtures)

from envmgr.gpu import probe, runner, schema

PROBE = Path(probe.__file__)


def run_probe(python: str, expect: dict | None = None, *args: str, env: dict | None = None, timeout: float = 300):
    argv = [python, str(PROBE)] + (["--expect-json", json.dumps(expect)] if expect is not None else []) + list(args)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r


def by_name(doc: dict) -> dict:
    return {c["name"]: c for c in doc["checks"]}


def test_probe_is_stdlib_plus_torch_only():
    """Nothing but the standard library at import time (torch comes later, inside a check)."""
    tree = ast.parse(PROBE.read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add((node.module or "").split(".")[0])
    assert top <= set(sys.stdlib_module_names) | {"__future__"}, top - set(sys.stdlib_module_names)
    assert not re.search(r"^\s*(from|import)\s+envmgr", PROBE.read_text(), re.M)


def test_probe_parses_as_python_38():
    """Target environments may run an older python than envmgr (torch 2.0 supports 3.8)."""
    ast.parse(PROBE.read_text(), feature_version=(3, 8))
    ast.parse(probe.WORKER_SOURCE, feature_version=(3, 8))


def test_cpu_host_probe(torch_python):
    doc, r = run_probe(torch_python, {"variant": "cpu", "torch": torch_version(torch_python)})
    jsonschema.validate(doc, schema.PROBE)
    checks = by_name(doc)
    assert doc["ok"] is True
    assert checks["torch.import"]["status"] == "pass" and doc["import_s"] > 0
    assert checks["torch.version"]["status"] == "pass"
    for name in ("cpu.matmul_fp32", "cpu.conv2d", "cpu.sdpa", "cpu.copy"):
        assert checks[name]["status"] == "pass", checks[name]
        assert checks[name]["seconds"] > 0
    assert checks["cpu.matmul_fp32"]["metrics"]["max_rel_err"] < 1e-4
    for name in ("cuda.available", "driver.minimum", "gpu.arch", "gpu.kernels", "nccl.allreduce"):
        assert checks[name]["status"] == "skip" and checks[name]["reason"], checks[name]
    assert "CPU build" in checks["cuda.available"]["reason"]
    # each finished check is also reported on stderr, for a caller whose probe dies
    progress = [json.loads(x[len(probe.PROGRESS_PREFIX):]) for x in r.stderr.splitlines() if x.startswith(probe.PROGRESS_PREFIX)]
    assert [c["name"] for c in progress] == [c["name"] for c in doc["checks"]]


def test_cpu_wheel_where_cuda_was_locked(torch_python):
    expect = {"variant": "cu126", "cuda": "12.6", "torch": "2.7.1+cu126", "cudnn": "9.5.1.17", "python": "3.11",
              "min_driver": "525.60.13", "arch_list": ["sm_80", "sm_90"]}
    doc, _ = run_probe(torch_python, expect)
    checks = by_name(doc)
    assert doc["ok"] is False
    assert checks["torch.cuda_build"]["status"] == "fail"
    assert "a CPU-only build of torch where cu126 (CUDA 12.6) was locked" in checks["torch.cuda_build"]["reason"]
    assert checks["torch.version"]["status"] == "fail" and "expected 2.7.1+cu126" in checks["torch.version"]["reason"]
    assert checks["cpu.matmul_fp32"]["status"] == "pass"  # the kernels still run and say so


def test_require_gpu_on_a_cpu_host(torch_python):
    doc, _ = run_probe(torch_python, None, "--require-gpu")
    checks = by_name(doc)
    assert checks["cuda.available"]["status"] == "fail" and "--require-gpu" in checks["cuda.available"]["reason"]
    assert not doc["ok"]


def test_wrong_python_minor(torch_python):
    doc, _ = run_probe(torch_python, {"python": "3.9"})
    assert by_name(doc)["python.version"]["status"] == "fail"


def test_world_allreduce_with_real_workers(torch_python):
    """--world N starts N-1 torchrun-style workers; with gloo this runs on a CPU host too."""
    doc, _ = run_probe(torch_python, {"world": 2, "dist_backend": "gloo", "sizes": {"allreduce_elems": 1024}})
    check = by_name(doc)["nccl.allreduce_world"]
    assert check["status"] == "pass", check
    assert [r["rank"] for r in check["metrics"]["ranks"]] == [0, 1]
    assert all(r["got"] == 3.0 for r in check["metrics"]["ranks"])
    nccl, _ = run_probe(torch_python, {"world": 2})  # NCCL needs GPUs: skipped here, with the reason
    assert by_name(nccl)["nccl.allreduce_world"]["status"] == "skip"


def test_no_torch(no_torch_python):
    doc, _ = run_probe(no_torch_python, {})
    jsonschema.validate(doc, schema.PROBE)
    imp = by_name(doc)["torch.import"]
    assert imp["status"] == "fail" and imp["metrics"] == {"missing": True}
    assert doc["torch"] is None and not doc["ok"]


def test_stdout_is_only_the_document(torch_python, tmp_path):
    """Libraries writing to fd 1 while the probe runs (NCCL's INFO lines) must not corrupt the JSON."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "class Noisy:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            os.write(1, b'noise from a library\\n')\n"
        "        return None\n"
        "sys.meta_path.insert(0, Noisy())\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    r = subprocess.run([torch_python, str(PROBE)], capture_output=True, text=True, env=env, cwd="/")
    assert r.returncode == 0, r.stderr
    assert "noise from a library" in r.stderr
    assert r.stdout.count("\n") == 1 and json.loads(r.stdout)["schema"] == "envmgr-probe/1"


def test_runner_via_dash_c_and_stdin(torch_python):
    """The two ways envmgr ships the probe: ``python -c SOURCE`` and ``python -`` (images)."""
    run = runner.run_python(torch_python, json.dumps({"variant": "cpu"}), timeout=300)
    assert run.doc and run.doc["ok"] and run.returncode == 0 and len(run.progress) == len(run.doc["checks"])
    run = runner.run_command([torch_python, "-", "--expect-json", "{}"], stdin=runner.probe_source(), timeout=300)
    assert run.doc and run.doc["ok"]


def test_bad_probe_argument_is_refused(torch_python):
    r = subprocess.run([sys.executable, str(PROBE), "--bogus"], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown argument" in r.stderr


GPU_BRANCHES = r'''
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("probe", sys.argv[1])
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)
import torch
# The GPU branches (bf16/fp16 matmul, fp16 conv, bf16 attention, their tolerances) on CPU
# tensors: there is no GPU here, and these lines would otherwise first run on one.
torch.cuda.is_bf16_supported = lambda *a, **k: True
torch.backends.cudnn.is_available = lambda: True
torch.backends.cudnn.version = lambda: 91900
sizes = dict(probe.DEFAULT_SIZES, gpu_mm_check=256, gpu_mm_perf=256, gpu_conv=[2, 8, 16], gpu_sdpa=[1, 2, 64, 32],
             gpu_copy_mib=4, reps=1)
k = probe.Kernels(torch, "cpu", sizes)
k.cuda, k.sync = True, (lambda: None)
p = probe.Probe({})
for name, title in probe.GPU_KERNELS:
    p.run("gpu0." + name, title, probe._kernel_fn(lambda: k, name))
print(json.dumps(p.checks))
'''


def test_gpu_kernel_branches_on_cpu_tensors(torch_python):
    r = subprocess.run([torch_python, "-c", GPU_BRANCHES, str(PROBE)], capture_output=True, text=True, timeout=300, cwd="/")
    assert r.returncode == 0, r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert [c for c in checks.values() if c["status"] != "pass"] == []
    assert "bfloat16 matmul" in checks["gpu0.matmul_bf16"]["reason"] and "tflops" in checks["gpu0.matmul_bf16"]["metrics"]
    assert checks["gpu0.conv2d"]["reason"].startswith("cuDNN float16 conv2d") and checks["gpu0.conv2d"]["metrics"]["cudnn"] == 91900
    assert "gbps" in checks["gpu0.copy"]["metrics"]
