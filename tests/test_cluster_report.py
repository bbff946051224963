"""``envmgr cluster report``: fleet check output as kubectl and Slurm leave it -> one row a node.

The documents are shaped like the probe's and the check's own (validated against
``envmgr.gpu.schema`` first), then wrapped the ways logs wrap them: ``kubectl logs --prefix``
with several pods interleaved, ``--timestamps``, ``srun --label``, pretty-printed JSON, noise.
(The real one-node Slurm test reads a real ``envmgr check --json`` back.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest

from envmgr.cluster import report
from envmgr.gpu import schema


def envmgr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "envmgr", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)


def check(name: str, status: str = "pass", reason: str = "") -> dict:
    return {"name": name, "title": name, "status": status, "reason": reason or status, "seconds": 0.01, "metrics": {}}


def probe_doc(driver: str | None, cap: tuple[int, int] | None, gpus: int = 8, *, failed: dict | None = None) -> dict:
    names = ["python.version", "torch.import", "torch.version", "torch.cuda_build", "cuda.runtimes", "cuda.available",
             "driver.minimum", "gpu.arch"] + [f"gpu{i}.matmul_bf16" for i in range(gpus)] + ["nccl.allreduce"]
    checks = [check(n, "fail" if n in (failed or {}) else "pass", (failed or {}).get(n, "")) for n in names]
    doc = {"schema": "envmgr-probe/1", "ok": not failed, "python": {"version": "3.11.2", "executable": "/opt/venv/bin/python"},
           "torch": {"version": "2.12.1+cu130", "cuda": "13.0", "cudnn": 92000, "nccl": "2.28.9", "arch_list": ["sm_90"]},
           "driver": {"version": driver, "cuda": 13000, "source": "nvml"},
           "gpus": [{"index": i, "name": "NVIDIA H200", "capability": list(cap) if cap else None, "memory_mib": 143771}
                    for i in range(gpus)],
           "libraries": [], "checks": checks, "import_s": 5.5, "total_s": 8.4}
    jsonschema.validate(doc, schema.PROBE)
    return doc


def kubectl_log(pods: dict[str, tuple[str, dict]], *, pretty: bool = False, timestamps: bool = False) -> str:
    """What ``kubectl logs -l ... --prefix [--timestamps]`` prints for these pods, interleaved."""
    streams = []
    for pod, (node, doc) in pods.items():
        body = json.dumps(doc, indent=2) if pretty else json.dumps(doc)
        lines = [f"envmgr-node: {node}", "W1130 some warning from a library"] + body.splitlines()
        stamp = "2026-11-30T12:00:00.123456789Z " if timestamps else ""
        streams.append([f"[pod/{pod}/check] {stamp}{line}" for line in lines])
    out = []
    for i in range(max(map(len, streams))):
        out += [s[i] for s in streams if i < len(s)]
    return "\n".join(out) + "\n"


def test_kubectl_logs_of_several_pods_interleaved_pretty_and_with_timestamps(tmp_path):
    pods = {
        "envmgr-cu130-check-0-abcde": ("gpu-a1", probe_doc("580.95.05", (9, 0))),
        "envmgr-cu130-check-1-fghij": ("gpu-a2", probe_doc("570.86.10", (9, 0), failed={
            "driver.minimum": "driver 570.86.10 is older than 580, the minimum for CUDA 13.0"})),
        "envmgr-cu130-check-2-klmno": ("gpu-v1", probe_doc("580.95.05", (7, 0), failed={
            "gpu.arch": "sm_70 is not compiled in (sm_75 sm_80 sm_86 sm_90 sm_100 sm_120) and no PTX reaches it"})),
    }
    for pretty, stamps in ((False, False), (True, False), (True, True)):
        rows = report.parse_text(kubectl_log(pods, pretty=pretty, timestamps=stamps), "checks.log")
        assert [r.node for r in rows] == ["gpu-a1", "gpu-a2", "gpu-v1"]
        assert [r.ok for r in rows] == [True, False, False]
        assert rows[0].gpu == "8 x NVIDIA H200 (sm_90)" and rows[1].driver == "570.86.10"
        assert rows[1].family(("driver.",)) == "fail" and rows[2].family(("gpu.arch",)) == "fail"
    log = tmp_path / "checks.log"
    log.write_text(kubectl_log(pods, pretty=True))
    proc = envmgr("cluster", "report", str(log))
    assert proc.returncode == 1, proc.stderr  # some node cannot run the lock
    lines = proc.stdout.splitlines()
    assert any(line.startswith("gpu-a1 ") and line.split()[-1] == "ok" for line in lines), proc.stdout
    assert any(line.startswith("gpu-v1 ") and "cannot run" in line for line in lines), proc.stdout
    assert "3 node(s): 1 ok, 2 cannot run the lock" in proc.stdout
    assert "gpu-a2: driver.minimum: driver 570.86.10 is older than 580" in proc.stdout
    assert "gpu-v1: gpu.arch: sm_70 is not compiled in" in proc.stdout
    data = json.loads(envmgr("cluster", "report", str(log), "--json").stdout)
    assert data["schema"] == "envmgr-cluster-report/1" and data["failed"] == 2
    assert {c["node"] for c in data["cannot_run"]} == {"gpu-a2", "gpu-v1"}
    assert data["rows"][0]["verdicts"]["kernels"] == "pass" and data["rows"][0]["checks"]["gpu7.matmul_bf16"] == "pass"


def test_slurm_output_files_one_a_node_and_srun_labels(tmp_path):
    folder = tmp_path / "envmgr-checks-42"
    folder.mkdir()
    healthy = probe_doc("580.95.05", (10, 0), gpus=4)
    check_doc = {"schema": "envmgr-check/1", "ok": True, "target": {"kind": "venv", "python": "/tmp/v/bin/python",
                                                                    "profile": "cu130", "image": None, "engine": None},
                 "expect": {}, "expect_source": None, "notes": [], "require_gpu": True, "world": 1,
                 **{k: healthy[k] for k in ("python", "torch", "driver", "gpus", "libraries", "checks", "import_s")},
                 "summary": {"pass": len(healthy["checks"]), "fail": 0, "skip": 0}, "probe_s": 8.0, "seconds": 9.0}
    jsonschema.validate(check_doc, schema.CHECK_REPORT)
    (folder / "node017.json").write_text(json.dumps(check_doc, indent=2) + "\n")  # srun --output=%N.json
    (folder / "node017.err").write_text("some warning\n")
    (folder / "node003.json").write_text(json.dumps(probe_doc(None, None, gpus=0, failed={
        "cuda.available": "torch.cuda.is_available() is False: no driver"})) + "\n")
    labelled = "\n".join(f"1: {line}" for line in json.dumps(healthy, indent=1).splitlines())
    (folder / "job-42.out").write_text("envmgr: job 42 on 2 node(s)\n" + labelled + "\n")
    rows = report.read([folder])
    assert [r.node for r in rows] == ["job-42 task 1", "node003", "node017"]
    assert rows[1].gpu == "none" and not rows[1].ok and rows[2].ok
    proc = envmgr("cluster", "report", str(folder))
    assert proc.returncode == 1
    assert "node003: cuda.available: torch.cuda.is_available() is False" in proc.stdout


def test_a_node_reported_twice_counts_once_with_its_last_report():
    text = (f"envmgr-node: n1\n{json.dumps(probe_doc('570.1', (9, 0), failed={'driver.minimum': 'old'}))}\n"
            f"envmgr-node: n1\n{json.dumps(probe_doc('580.1', (9, 0)))}\n")
    (row,) = report.latest(report.parse_text(text, "x.log"))
    assert row.node == "n1" and row.ok and row.driver == "580.1"


@pytest.mark.parametrize("text", ["", "no json here\n", '{"checks": "not a list"}\n', "{ broken json\n"])
def test_text_without_a_check_document_gives_no_rows(text):
    assert report.parse_text(text, "x.log") == []
