"""Driver and GPU detection: parsers on the real H200 outputs and on written cases, and the
detection order (env override, NVML, nvidia-smi, /sys and /proc)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_gpu_helpers import (
    H200_UUID,
    MIG_LISTING,
    eight_h100_csv,
    fake_nvidia_smi,
    fixture_text,
    mig_xml,
    rtx5090_csv,
)

from envmgr.host import detect

# -- parsers on the real fixture ----------------------------------------------------------

def test_query_gpu_csv_h200():
    driver, gpus = detect.parse_query_gpu_csv(fixture_text("query-gpu.csv"))
    assert driver == "580.159.04"
    assert gpus == [detect.Gpu(0, "NVIDIA H200", H200_UUID, (9, 0), 143771, "00000000:00:06.0")]
    assert gpus[0].arch == "sm_90"


def test_smi_xml_h200():
    x = detect.parse_smi_xml(fixture_text("nvidia-smi-q.xml"))
    assert (x.driver, x.cuda) == ("580.159.04", "13.0")
    assert len(x.gpus) == 1
    g = x.gpus[0]
    assert g["name"] == "NVIDIA H200" and g["uuid"] == H200_UUID and g["memory_mib"] == 143771
    assert g["mig_enabled"] is False and g["mig"] == []
    assert g["pci_bus_id"] == "00000000:00:06.0"


@pytest.mark.parametrize("name", ["nvidia-smi.txt", "nvidia-smi-version.txt", "nvidia-smi-q.txt"])
def test_smi_header_fixtures(name):
    assert detect.parse_smi_header(fixture_text(name)) == ("580.159.04", "13.0")


def test_fixture_probe_agrees_with_parsers():
    """The H200's own probe (torch-probe.json) saw the driver the parsers read."""
    import json

    probe = json.loads(fixture_text("torch-probe.json"))
    driver, gpus = detect.parse_query_gpu_csv(fixture_text("query-gpu.csv"))
    assert probe["nvml_driver"] == driver
    assert probe["nvml_cuda"] == 13000 and detect.parse_smi_header(fixture_text("nvidia-smi.txt"))[1] == "13.0"
    assert tuple(probe["device"]["cap"]) == gpus[0].capability


# -- parsers on written cases -------------------------------------------------------------

def test_query_gpu_csv_eight_gpus_and_noheader():
    driver, gpus = detect.parse_query_gpu_csv(eight_h100_csv())
    assert driver == "570.124.06"
    assert [g.index for g in gpus] == list(range(8))
    assert {g.capability for g in gpus} == {(9, 0)} and gpus[7].pci_bus_id == "00000000:1F:00.0"
    noheader = "0, NVIDIA GeForce RTX 5090, GPU-x, 570.133.07, 12.0, 32607, 00000000:01:00.0\n"
    driver, gpus = detect.parse_query_gpu_csv(noheader)
    assert driver == "570.133.07" and gpus[0].capability == (12, 0) and gpus[0].memory_mib == 32607


def test_query_gpu_csv_without_compute_cap_and_na():
    text = "index, name, uuid, driver_version, memory.total [MiB], pci.bus_id\n0, Tesla T4, GPU-t4, 470.239.06, [N/A], 00000000:00:04.0\n"
    driver, gpus = detect.parse_query_gpu_csv(text)
    assert driver == "470.239.06"
    assert gpus[0].capability is None and gpus[0].memory_mib is None and gpus[0].arch == "unknown"
    assert detect.parse_query_gpu_csv("") == (None, [])


def test_smi_xml_mig():
    x = detect.parse_smi_xml(mig_xml())
    g = x.gpus[0]
    assert g["mig_enabled"] is True
    assert [(d.index, d.gpu_instance, d.compute_instance, d.memory_mib, d.sms) for d in g["mig"]] == [
        (0, 1, 0, 71424, 60), (1, 2, 0, 17920, 16)]


def test_smi_list_mig():
    listing = detect.parse_smi_list(MIG_LISTING)
    assert listing == [(0, "NVIDIA H200", H200_UUID, [
        (0, "3g.71gb", "MIG-11111111-2222-3333-4444-555555555555"),
        (1, "1g.18gb", "MIG-66666666-7777-8888-9999-000000000000")])]


def test_merge_mig_names_instances():
    _, gpus = detect.parse_query_gpu_csv(fixture_text("query-gpu.csv"))
    merged = detect.merge_mig(gpus, detect.parse_smi_xml(mig_xml()), detect.parse_smi_list(MIG_LISTING))
    mig = merged[0].mig
    assert [(m.name, m.memory_mib) for m in mig] == [("3g.71gb", 71424), ("1g.18gb", 17920)]
    assert mig[0].uuid.startswith("MIG-1111")
    assert merged[0].capability == (9, 0)  # MIG instances share the parent's architecture
    plain = detect.merge_mig(gpus, detect.parse_smi_xml(fixture_text("nvidia-smi-q.xml")))
    assert plain[0].mig is None


@pytest.mark.parametrize("text, want", [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Thu Oct  9 18:45:31 UTC 2025\n"
     "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n", "580.159.04"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.133.07  Release Build  (dvs-builder@U16)  Fri\n", "570.133.07"),
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.239.06  Wed Feb 28 2024\n", "470.239.06"),
    ("NVRM version: NVIDIA UNIX aarch64 Kernel Module  550.54.14  Thu\n", "550.54.14"),
    ("garbage", None),
])
def test_proc_version(text, want):
    assert detect.parse_proc_version(text) == want


def test_proc_gpu_information():
    text = ("Model: \t\t NVIDIA H200\nIRQ:   \t\t 47\nGPU UUID: \t " + H200_UUID + "\nVideo BIOS: \t 96.00.a5.00.1a\n"
            "Bus Type: \t PCIe\nDMA Size: \t 52 bits\nBus Location: \t 0000:00:06.0\nDevice Minor: \t 0\n")
    assert detect.parse_proc_gpu_information(text) == {"name": "NVIDIA H200", "uuid": H200_UUID,
                                                        "pci_bus_id": "0000:00:06.0", "minor": 0}


def test_infer_cuda_from_driver():
    assert detect.infer_cuda("580.159.04") == "13.0"
    assert detect.infer_cuda("570.133.07") == "12.8"
    assert detect.infer_cuda("535.104.05") == "12.1"  # the newest the knowledge base knows below 12.2
    assert detect.infer_cuda("450.80.02") is None


# -- NVML (a stand-in module shaped like pynvml; there is no NVML on this host) -------------

class FakeNvml:
    """pynvml's calls, answering like the H200 fixture; ``mig`` switches MIG on."""

    def __init__(self, mig: bool = False, fail: bool = False):
        self.mig, self.fail, self.shutdown = mig, fail, False

    def nvmlSystemGetDriverVersion(self):
        if self.fail:
            raise RuntimeError("NVML_ERROR_UNKNOWN")
        return "580.159.04"

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return 13000

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return (9, 0)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=143771 * (1 << 20) if h[0] == "gpu" else 71424 * (1 << 20))

    def nvmlDeviceGetPciInfo(self, h):
        return SimpleNamespace(busId=b"00000000:00:06.0")

    def nvmlDeviceGetMigMode(self, h):
        return (1, 1) if self.mig else (0, 0)

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, j):
        if j > 0:
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return ("mig", j)

    def nvmlDeviceGetGpuInstanceId(self, m):
        return 1

    def nvmlDeviceGetComputeInstanceId(self, m):
        return 0

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H200" if h[0] == "gpu" else "NVIDIA H200 MIG 3g.71gb"

    def nvmlDeviceGetUUID(self, h):
        return H200_UUID if h[0] == "gpu" else "MIG-11111111-2222-3333-4444-555555555555"

    def nvmlShutdown(self):
        self.shutdown = True


def test_from_nvml():
    nvml = FakeNvml()
    host = detect.from_nvml(nvml)
    assert (host.driver, host.cuda, host.driver_source) == ("580.159.04", "13.0", "nvml")
    assert host.gpus == (detect.Gpu(0, "NVIDIA H200", H200_UUID, (9, 0), 143771, "00000000:00:06.0", None),)
    assert nvml.shutdown


def test_from_nvml_mig_and_failure():
    host = detect.from_nvml(FakeNvml(mig=True))
    (m,) = host.gpus[0].mig
    assert (m.name, m.uuid, m.memory_mib, m.gpu_instance) == ("3g.71gb", "MIG-11111111-2222-3333-4444-555555555555", 71424, 1)
    assert detect.from_nvml(FakeNvml(fail=True)) is None


def test_real_pynvml_without_library_falls_through():
    """nvidia-ml-py is installed; with no libnvidia-ml here, NVML yields nothing, no exception."""
    pytest.importorskip("pynvml")
    if Path("/dev/nvidiactl").exists():
        pytest.skip("this host has an NVIDIA driver")
    assert detect._pynvml() is None


# -- the detection order --------------------------------------------------------------------

def _no_proc(tmp_path: Path) -> dict:
    return {"sys_version": tmp_path / "none-sys", "proc_version": tmp_path / "none-proc", "proc_gpus": tmp_path / "none-gpus"}


def test_detect_nvidia_smi_h200(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", csv=fixture_text("query-gpu.csv"), xml=fixture_text("nvidia-smi-q.xml"),
                    plain=fixture_text("nvidia-smi.txt"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    host = detect.detect(environ={}, use_nvml=False, **_no_proc(tmp_path))
    assert (host.driver, host.cuda, host.driver_source, host.cuda_source) == ("580.159.04", "13.0", "nvidia-smi", "nvidia-smi")
    assert host.gpus[0].capability == (9, 0) and host.gpus[0].mig is None and host.notes == ()


def test_detect_nvidia_smi_mig_and_old_driver(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", csv=fixture_text("query-gpu.csv"), xml=mig_xml(), listing=MIG_LISTING)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    host = detect.detect(environ={}, use_nvml=False, **_no_proc(tmp_path))
    assert [m.name for m in host.gpus[0].mig] == ["3g.71gb", "1g.18gb"]
    assert any("MIG mode" in n for n in host.notes)

    old = tmp_path / "old"
    fake_nvidia_smi(old, csv="index, name, uuid, driver_version, memory.total [MiB], pci.bus_id\n"
                             "0, Tesla T4, GPU-t4, 470.239.06, 15109 MiB, 00000000:00:04.0\n",
                    plain="| NVIDIA-SMI 470.239.06   Driver Version: 470.239.06   CUDA Version: 11.4     |\n",
                    csv_fails_with_compute_cap=True)
    monkeypatch.setenv("PATH", f"{old}{os.pathsep}{os.environ['PATH']}")
    host = detect.detect(environ={}, use_nvml=False, **_no_proc(tmp_path))
    assert (host.driver, host.cuda) == ("470.239.06", "11.4")
    assert host.gpus[0].name == "Tesla T4" and host.gpus[0].capability is None


def test_detect_env_override_keeps_gpus(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path / "bin", csv=rtx5090_csv(), plain="Driver Version: 570.133.07  CUDA Version: 12.8")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    host = detect.detect(environ={"ENVMGR_DRIVER_VERSION": "535.104.05"}, use_nvml=False, **_no_proc(tmp_path))
    assert (host.driver, host.driver_source, host.cuda, host.cuda_source) == ("535.104.05", "env", "12.1", "inferred")
    assert host.gpus[0].capability == (12, 0)
    assert any("overrides the detected driver 570.133.07" in n for n in host.notes)


def test_detect_proc_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Thu Oct  9 2025\n")
    gpus = tmp_path / "gpus" / "0000:00:06.0"
    gpus.mkdir(parents=True)
    (gpus / "information").write_text(f"Model: \t NVIDIA H200\nGPU UUID: \t {H200_UUID}\nBus Location: \t 0000:00:06.0\nDevice Minor: \t 0\n")
    host = detect.detect(environ={}, use_nvml=False, sys_version=tmp_path / "nosys", proc_version=proc,
                         proc_gpus=tmp_path / "gpus")
    assert (host.driver, host.driver_source, host.cuda, host.cuda_source) == ("580.159.04", "proc", "13.0", "inferred")
    assert host.gpus == (detect.Gpu(0, "NVIDIA H200", H200_UUID, None, None, "0000:00:06.0"),)
    sysv = tmp_path / "sysversion"
    sysv.write_text("570.133.07\n")
    host = detect.detect(environ={}, use_nvml=False, sys_version=sysv, proc_version=proc, proc_gpus=tmp_path / "gpus")
    assert (host.driver, host.driver_source) == ("570.133.07", "sys")


def test_detect_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    host = detect.detect(environ={}, use_nvml=False, **_no_proc(tmp_path))
    assert host == detect.Host()
    assert host.to_json()["driver"] is None and host.to_json()["gpus"] == []


def test_detect_mixed_architectures_note(tmp_path, monkeypatch):
    csv = eight_h100_csv().rstrip("\n") + "\n8, NVIDIA A100-SXM4-80GB, GPU-a100, 570.124.06, 8.0, 81920 MiB, 00000000:90:00.0\n"
    fake_nvidia_smi(tmp_path / "bin", csv=csv, plain="Driver Version: 570.124.06  CUDA Version: 12.8")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    host = detect.detect(environ={}, use_nvml=False, **_no_proc(tmp_path))
    assert len(host.gpus) == 9
    assert any("sm_80, sm_90" in n for n in host.notes)


def test_driver_absent_only_without_device_and_version_files(tmp_path) -> None:
    from envmgr import host as gd

    dev, sys_v, proc_v = tmp_path / "nvidiactl", tmp_path / "sys-version", tmp_path / "proc-version"
    assert gd.driver_absent(dev, sys_v, proc_v)
    for present in (dev, sys_v, proc_v):
        present.write_text("580.159.04\n")
        assert not gd.driver_absent(dev, sys_v, proc_v), present
        present.unlink()
