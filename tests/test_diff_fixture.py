"""``envmgr diff`` on real locks made by ``envmgr lock`` from the fixture index."""

from __future__ import annotations

import json
from pathlib import Path

from test_diff_cli import envmgr, git
from test_export_pip import write_profile


def test_variant_and_torch_change_between_real_locks(tmp_path: Path, fixture_index):
    project = tmp_path / "proj"
    write_profile(project, "gpu", fixture_index, variant="cu126", torch="==2.7.0")
    assert envmgr(project, "lock", "gpu").returncode == 0
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "cu126")

    write_profile(project, "gpu", fixture_index, variant="cu128", torch=">=2.7,<2.8")
    res = envmgr(project, "lock", "gpu")
    assert res.returncode == 0, res.stderr

    res = envmgr(project, "diff", "--exit-code")
    assert res.returncode == 1, res.stderr
    body = res.stdout
    assert "### `gpu`: torch 2.7.0+cu126 → 2.7.1+cu128" in body
    torch_row = body.index("| **torch** | 2.7.0+cu126 | 2.7.1+cu128 | upgraded (patch), local label `+cu126` → `+cu128` |")
    cuda_row = body.index("| **CUDA** | 12.6 (runtime 12.6.77) | 12.8 (runtime 12.8.90) | upgraded (minor) |")
    cudnn_row = body.index("| **cuDNN** | 9.1.0.70 | 9.7.1.26 | upgraded (minor) |")
    nccl_row = body.index("| **NCCL** | 2.21.5 | 2.26.2 | upgraded (minor) |")
    triton_row = body.index("| **triton** | 3.3.0 | 3.3.1 | upgraded (patch) |")
    assert torch_row < cuda_row < cudnn_row < nccl_row < triton_row < body.index("**GPU architectures**")
    assert "- sm_70 (Volta: V100) dropped" in body
    assert "- sm_120 (Blackwell: RTX 50xx, RTX PRO 6000) added" in body
    assert "- variant: `cu126` → `cu128`" in body

    data = json.loads(envmgr(project, "diff", "--json").stdout)
    (p,) = data["profiles"]
    assert p["arch"]["removed"] == ["sm_50", "sm_60", "sm_70"] and p["arch"]["new_ptx"] == "sm_120"
    assert {k["component"]: k["new"] for k in p["key"]}["cuDNN"] == "9.7.1.26"
    assert p["old_size"] > 0 and p["new_size"] > 0

    # Committed: nothing left to show.
    git(project, "commit", "-q", "-am", "cu128")
    res = envmgr(project, "diff", "--exit-code")
    assert res.returncode == 0 and "No lock changes" in res.stdout
