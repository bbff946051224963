"""envmgr doctor and envmgr init --variant auto: which variant and profile run on a host, why
not, and the profile written for it. Hosts come from the real H200 fixture and from cases
written here (old drivers, an RTX 5090 at sm_120, 8 GPUs, MIG, mixed GPUs, no driver)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jsonschema
import pytest
import tomllib
from test_gpu_helpers import (
    MIG_LISTING,
    eight_h100_csv,
    envmgr,
    fake_nvidia_smi,
    fixture_text,
    json_out,
    make_lock,
    mig_xml,
    rtx5090_csv,
    write_lock,
    write_profile,
)

from envmgr.core.errors import UserError
from envmgr.gpu import doctor, schema
from envmgr.host import detect
from envmgr.model import profiles
from envmgr.model.variants import kb


def gpu(index, name, cap, mem=81559):
    return detect.Gpu(index, name, f"GPU-{index}", cap, mem)


def h200_host() -> detect.Host:
    driver, gpus = detect.parse_query_gpu_csv(fixture_text("query-gpu.csv"))
    _, cuda = detect.parse_smi_header(fixture_text("nvidia-smi.txt"))
    return detect.Host(driver, cuda, "nvidia-smi", "nvidia-smi", tuple(gpus))


def host(driver, cuda, *gpus, source="nvidia-smi") -> detect.Host:
    return detect.Host(driver, cuda, source, source if cuda else None, tuple(gpus))


def verdict(variant: str, h: detect.Host, torch: str | None = None) -> doctor.Verdict:
    torch = torch or doctor.newest_release_with(variant)
    return doctor.assess(kb().facts(variant, f"{torch}.0" if torch.count(".") == 1 else torch), h, torch)


def recommended(h: detect.Host) -> str:
    rows = doctor.variant_verdicts(h)
    runnable = [r for r in rows if r["runs"]]
    return max(runnable, key=lambda r: r["_rank"])["variant"] if runnable else "cpu"


# -- decisions --------------------------------------------------------------------------------

def test_h200_driver580_recommends_cu130():
    h = h200_host()
    v = verdict("cu130", h)
    assert v.runs and v.native and v.reasons == ()
    cu132 = verdict("cu132", h)  # 13.2 on a 13.0 driver: minor-version compatibility
    assert cu132.runs and not cu132.native and any("minor-version compatibility" in n for n in cu132.notes)
    assert verdict("cu126", h).runs and verdict("cu118", h, "2.7").runs
    cu117 = verdict("cu117", h)  # torch 2.0's cu117 build stops at sm_86
    assert not cu117.runs and "sm_90 is not compiled into cu117 (torch 2.0)" in cu117.reasons[0]
    assert recommended(h) == "cu130"


def test_old_driver_535():
    h = host("535.104.05", "12.2", gpu(0, "NVIDIA A100-SXM4-80GB", (8, 0)))
    cu130 = verdict("cu130", h)
    assert not cu130.runs
    assert cu130.reasons == ("driver 535.104.05 is too old for cu130: CUDA 13.0 needs >= 580",)
    cu126 = verdict("cu126", h)
    assert cu126.runs and not cu126.native and "no PTX JIT below driver 560.28.03" in cu126.notes[0]
    assert recommended(h) == "cu126"  # the newest torch this driver runs, through minor-version compatibility


def test_very_old_driver_470():
    h = host("470.239.06", "11.4", gpu(0, "Tesla T4", (7, 5), 15109))
    assert not verdict("cu126", h).runs and "needs >= 525.60.13" in verdict("cu126", h).reasons[0]
    assert verdict("cu118", h, "2.7").runs
    assert recommended(h) == "cu118"


def test_rtx5090_sm120_with_cu126():
    _, gpus = detect.parse_query_gpu_csv(rtx5090_csv())
    h = host("570.133.07", "12.8", *gpus)
    cu126 = verdict("cu126", h, "2.7.1")
    assert not cu126.runs
    assert cu126.reasons[0].startswith("GPU 0 NVIDIA GeForce RTX 5090: sm_120 is not compiled into cu126 (torch 2.7.1)")
    assert not verdict("cu130", h).runs  # 570 is too old for CUDA 13
    assert verdict("cu128", h, "2.11").runs
    assert recommended(h) == "cu128"


def test_eight_gpus_all_checked():
    driver, gpus = detect.parse_query_gpu_csv(eight_h100_csv())
    h = host(driver, "12.8", *gpus)
    assert all(verdict(v, h).runs for v in ("cu126", "cu128"))
    assert recommended(h) == "cu126"  # torch 2.12 has cu126, not cu128: the newer torch wins
    mixed = host(driver, "12.8", *gpus, gpu(8, "Tesla V100-SXM2-32GB", (7, 0), 32768))
    cu128 = verdict("cu128", mixed, "2.11")  # 2.11's cu128 dropped Volta
    assert not cu128.runs and len(cu128.reasons) == 1
    assert cu128.reasons[0].startswith(
        "GPU 8 Tesla V100-SXM2-32GB: sm_70 is not compiled into cu128 (torch 2.11) (sm_75 sm_80 sm_86 sm_90 sm_100 sm_120)")
    assert recommended(mixed) == "cu126"  # the newest build that covers every GPU


def test_mig_slices_share_the_parent_arch():
    driver, gpus = detect.parse_query_gpu_csv(fixture_text("query-gpu.csv"))
    merged = detect.merge_mig(gpus, detect.parse_smi_xml(mig_xml()), detect.parse_smi_list(MIG_LISTING))
    h = host(driver, "13.0", *merged)
    assert verdict("cu130", h).runs and recommended(h) == "cu130"


def test_no_driver_and_driver_without_gpus():
    none = detect.Host()
    assert verdict("cu126", none).reasons == ("no NVIDIA driver found",)
    assert verdict("cpu", none).runs and recommended(none) == "cpu"
    rocm = doctor.assess(kb().facts("rocm6.3", "2.8.0"), none)
    assert not rocm.runs and "AMD GPU" in rocm.reasons[0]
    bare = host("580.159.04", "13.0", source="env")  # an image build: a driver version, no GPU
    v = verdict("cu130", bare)
    assert v.runs and "no GPU detected: GPU architecture not checked" in v.notes
    assert recommended(bare) == "cu130"


def test_ptx_reaches_a_future_gpu_only_with_the_toolkit_driver():
    facts = kb().facts("cu129", "2.8.0")  # ... 12.0 + PTX
    assert facts.ptx == "sm_120"
    future = gpu(0, "future", (13, 0))
    ok = doctor.assess(facts, host("580.159.04", "13.0", future))
    assert ok.runs and any("PTX of sm_120 is JIT-compiled for sm_130" in n for n in ok.notes)
    old = doctor.assess(facts, host("570.133.07", "12.8", future))
    assert not old.runs and "needs driver >= 575.51.03" in old.reasons[0]


# -- the report over a project --------------------------------------------------------------

@pytest.fixture
def project(tmp_path) -> Path:
    write_profile(tmp_path, "cpu", "cpu", "==2.7.1")
    write_profile(tmp_path, "cu126", "cu126", "==2.7.1")
    write_profile(tmp_path, "cu128", "cu128", "==2.7.1")
    write_profile(tmp_path, "cu130", "cu130", "==2.12.1")
    write_lock(tmp_path, make_lock("cu130", "cu130", "2.12.1+cu130"))
    (tmp_path / "profiles" / "broken.toml").write_text('variant = "cu999"\ntorch = "2.7.1"\npython = "3.11"\n')
    return tmp_path


def test_report_h200(project):
    data = doctor.report(project, h200_host())
    jsonschema.validate(data, schema.DOCTOR_REPORT)
    assert data["driver"] == "580.159.04" and data["cuda_driver_version"] == "13.0"
    assert data["gpus"][0]["capability"] == [9, 0] and data["gpus"][0]["mig"] is None
    by = {p["name"]: p for p in data["profiles"]}
    assert by["cu130"]["source"] == "lock" and by["cu130"]["runs"]
    assert by["cu126"]["source"] == "profile" and by["cu126"]["runs"]
    assert not by["broken"]["runs"] and "unknown variant 'cu999'" in by["broken"]["reasons"][0]
    assert data["recommended_variant"] == "cu130" and data["recommended_profile"] == "cu130"
    assert {v["variant"] for v in data["variants"]} >= {"cpu", "cu118", "cu126", "cu128", "cu130", "cu132"}


def test_report_rtx5090_old_profiles(project):
    _, gpus = detect.parse_query_gpu_csv(rtx5090_csv())
    data = doctor.report(project, host("570.133.07", "12.8", *gpus))
    by = {p["name"]: p for p in data["profiles"]}
    assert not by["cu126"]["runs"] and "sm_120 is not compiled into cu126" in by["cu126"]["reasons"][0]
    assert by["cu128"]["runs"]  # torch 2.7's cu128 build has sm_120
    assert not by["cu130"]["runs"] and "too old for cu130" in by["cu130"]["reasons"][0]
    assert data["recommended_variant"] == "cu128" and data["recommended_profile"] == "cu128"


def test_report_no_driver(project):
    data = doctor.report(project, detect.Host())
    jsonschema.validate(data, schema.DOCTOR_REPORT)
    assert data["driver"] is None and data["gpus"] == []
    assert data["recommended_variant"] == "cpu" and data["recommended_profile"] == "cpu"
    assert data["recommendation"] == "no NVIDIA driver: cpu"


def test_report_nothing_runs(tmp_path):
    write_profile(tmp_path, "cu130", "cu130", "==2.12.1")
    data = doctor.report(tmp_path, detect.Host())
    assert data["recommended_profile"] is None
    assert any("envmgr init --variant auto" in n for n in data["notes"])


# -- the command line -------------------------------------------------------------------------

def run_main(args, monkeypatch, capsys):
    """``envmgr ARGS`` through cli.main in this process (NVML off), real exit codes."""
    from envmgr import cli

    monkeypatch.setattr(detect, "_pynvml", lambda: None)
    monkeypatch.setattr(sys, "argv", ["envmgr", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def _smi_on_path(tmp_path, monkeypatch, **kw):
    fake_nvidia_smi(tmp_path / "bin", **kw)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(detect, "SYS_VERSION", tmp_path / "no-sys")
    monkeypatch.setattr(detect, "PROC_VERSION", tmp_path / "no-proc")


def _detect_defaults(monkeypatch, tmp_path):
    # detect()'s keyword defaults were bound at import: point them away from the real /proc too
    real = detect.detect

    def fake(**kw):
        kw.setdefault("sys_version", tmp_path / "no-sys")
        kw.setdefault("proc_version", tmp_path / "no-proc")
        kw.setdefault("proc_gpus", tmp_path / "no-gpus")
        return real(**kw)
    monkeypatch.setattr(detect, "detect", fake)


def test_cli_doctor_json_with_fake_nvidia_smi(project, tmp_path, monkeypatch, capsys):
    _smi_on_path(tmp_path, monkeypatch, csv=fixture_text("query-gpu.csv"), xml=mig_xml(), listing=MIG_LISTING)
    _detect_defaults(monkeypatch, tmp_path)
    monkeypatch.setenv("ENVMGR_PROJECT", str(project))
    code, out, err = run_main(["doctor", "--json"], monkeypatch, capsys)
    assert code == 0, err
    data = json.loads(out)
    jsonschema.validate(data, schema.DOCTOR_REPORT)
    assert data["driver_source"] == "nvidia-smi" and data["cuda_driver_version"] == "13.0"
    assert [m["name"] for m in data["gpus"][0]["mig"]] == ["3g.71gb", "1g.18gb"]
    assert data["recommended_variant"] == "cu130" and data["recommended_profile"] == "cu130"


def test_cli_doctor_table(project, tmp_path, monkeypatch, capsys):
    _smi_on_path(tmp_path, monkeypatch, csv=rtx5090_csv(), plain="Driver Version: 570.133.07  CUDA Version: 12.8")
    _detect_defaults(monkeypatch, tmp_path)
    monkeypatch.setenv("ENVMGR_PROJECT", str(project))
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run_main(["doctor"], monkeypatch, capsys)
    assert code == 0
    assert "NVIDIA driver 570.133.07" in out and "NVIDIA GeForce RTX 5090" in out and "sm_120" in out
    assert "sm_120 is not compiled into cu126" in out
    assert "Recommended variant: cu128" in out and "Recommended profile: cu128" in out


def test_cli_doctor_env_override(project, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty") + os.pathsep + os.path.dirname(sys.executable))
    _detect_defaults(monkeypatch, tmp_path)
    monkeypatch.setenv("ENVMGR_PROJECT", str(project))
    monkeypatch.setenv("ENVMGR_DRIVER_VERSION", "535.104.05")
    code, out, _ = run_main(["doctor", "--json"], monkeypatch, capsys)
    data = json.loads(out)
    assert code == 0 and data["driver_source"] == "env" and data["cuda_source"] == "inferred"
    assert data["recommended_variant"] == "cu126"


@pytest.mark.skipif(Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists(),
                    reason="this host has an NVIDIA driver")
def test_cli_doctor_subprocess_no_driver(project):
    r = envmgr("doctor", "--json", project=project, env={"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    data = json_out(r)
    assert data["driver"] is None and data["recommended_variant"] == "cpu" and data["recommended_profile"] == "cpu"
    r = envmgr("doctor", project=project, env={"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin", "COLUMNS": "200"})
    assert "No NVIDIA driver found" in r.stdout and "Recommended profile: cpu" in r.stdout


# -- envmgr init --variant auto ------------------------------------------------------------------

def test_init_auto_writes_a_loadable_profile(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "_base.toml").write_text('python = "3.11"\npackages = ["numpy"]\n')
    r = doctor.init_profile(tmp_path, "here", host=h200_host())
    newest = max(kb().releases_with_variant("cu130"), key=lambda m: tuple(map(int, m.split("."))))
    assert (r.variant, r.torch) == ("cu130", f"=={newest}.*")
    data = tomllib.loads(r.path.read_text())
    assert data["variant"] == "cu130" and data["extends"] == "_base.toml" and data["torch"] == f"=={newest}.*"
    p = profiles.load(tmp_path, "here")
    assert p.variant == "cu130" and p.packages == ("numpy",)
    assert "NVIDIA H200" in r.reason


def test_init_refuses_overwrite_and_validates(tmp_path):
    doctor.init_profile(tmp_path, "gpu", host=detect.Host())
    assert tomllib.loads((tmp_path / "profiles" / "gpu.toml").read_text())["variant"] == "cpu"
    with pytest.raises(UserError, match="already exists"):
        doctor.init_profile(tmp_path, "gpu", host=h200_host())
    r = doctor.init_profile(tmp_path, "gpu", force=True, host=h200_host())
    assert r.variant == "cu130"
    r = doctor.init_profile(tmp_path, "old", variant="cu118")
    assert r.torch == "==2.7.*" and r.python in kb().torch["2.7"].python
    with pytest.raises(UserError, match="unknown variant"):
        doctor.init_profile(tmp_path, "x", variant="cu999")
    with pytest.raises(UserError, match="not a profile name"):
        doctor.init_profile(tmp_path, "../evil")
    from envmgr.core.errors import ProfileError

    with pytest.raises(ProfileError):  # torch 2.0 has no cu130 build: the written file is rolled back
        doctor.init_profile(tmp_path, "bad", variant="cu130", torch="==2.0.1")
    assert not (tmp_path / "profiles" / "bad.toml").exists()


def test_cli_init(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ENVMGR_PROJECT", str(tmp_path))
    monkeypatch.setenv("ENVMGR_DRIVER_VERSION", "580.159.04")
    monkeypatch.setenv("PATH", str(tmp_path / "empty") + os.pathsep + os.path.dirname(sys.executable))
    _detect_defaults(monkeypatch, tmp_path)
    code, out, err = run_main(["init", "--variant", "auto", "mine", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["variant"] == "cu130"  # native on driver 580 (CUDA 13.0); cu132 would need minor-version compatibility
    code, out, err = run_main(["init", "--variant", "auto", "mine"], monkeypatch, capsys)
    assert code == 2 and "already exists" in err and "--force" in err and "Traceback" not in err


def test_cli_init_subprocess_exit_codes(tmp_path):
    r = envmgr("init", "--variant", "cpu", "cpuonly", project=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and (tmp_path / "profiles" / "cpuonly.toml").is_file()
    r = envmgr("init", "--variant", "cpu", "cpuonly", project=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already exists" in r.stderr
    r = envmgr("init", "--variant", "nope", "x", project=tmp_path)
    assert r.returncode == 2 and "unknown variant" in r.stderr and "Traceback" not in r.stderr
