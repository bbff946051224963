"""NVIDIA driver and GPU detection on the host: what ``envmgr doctor`` decides from.

Order (the first source that answers wins; later ones only fill gaps):

1. ``ENVMGR_DRIVER_VERSION``: pretend the driver is this version (image builds, tests,
   "what if"). GPUs are still looked up below; the driver's CUDA version is then inferred.
2. NVML through nvidia-ml-py (``pynvml``): driver, CUDA version, GPUs, MIG instances.
3. ``nvidia-smi --query-gpu=... --format=csv`` for GPUs and capabilities, plus
   ``nvidia-smi -q -x`` for the CUDA version and MIG, and ``nvidia-smi -L`` for MIG names.
4. ``/sys/module/nvidia/version``, ``/proc/driver/nvidia/version`` and
   ``/proc/driver/nvidia/gpus/*/information``: driver and GPU names, no capabilities.

Every parser is a pure function of the tool's text output, tested on the real outputs in
shared/fixtures/gpu. Only ``detect`` runs anything.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..model.gpucompat import driver_at_least, version_tuple
from ..model.variants import kb
from . import PROC_VERSION as _PROC_VERSION
from . import SYS_VERSION as _SYS_VERSION

ENV_DRIVER = "ENVMGR_DRIVER_VERSION"
QUERY_FIELDS = ("index", "name", "uuid", "driver_version", "compute_cap", "memory.total", "pci.bus_id")
SYS_VERSION = Path(_SYS_VERSION)
PROC_VERSION = Path(_PROC_VERSION)
PROC_GPUS = Path("/proc/driver/nvidia/gpus")
SMI_TIMEOUT = 20


@dataclass(frozen=True)
class MigDevice:
    index: int
    gpu_instance: int | None = None
    compute_instance: int | None = None
    name: str = ""  # the MIG profile, e.g. "1g.18gb" (from nvidia-smi -L / NVML)
    uuid: str = ""
    memory_mib: int | None = None
    sms: int | None = None

    def to_json(self) -> dict:
        return {"index": self.index, "gpu_instance": self.gpu_instance, "compute_instance": self.compute_instance,
                "name": self.name, "uuid": self.uuid, "memory_mib": self.memory_mib, "sms": self.sms}


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str = ""
    capability: tuple[int, int] | None = None
    memory_mib: int | None = None
    pci_bus_id: str = ""
    mig: tuple[MigDevice, ...] | None = None  # None: MIG off or not supported

    @property
    def arch(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}" if self.capability else "unknown"

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "capability": list(self.capability) if self.capability else None,
            "arch": self.arch if self.capability else None,
            "memory_mib": self.memory_mib,
            "pci_bus_id": self.pci_bus_id,
            "mig": [m.to_json() for m in self.mig] if self.mig is not None else None,
        }


@dataclass(frozen=True)
class Host:
    driver: str | None = None
    cuda: str | None = None  # newest CUDA the driver supports, "13.0"
    driver_source: str | None = None  # env | nvml | nvidia-smi | sys | proc
    cuda_source: str | None = None  # nvml | nvidia-smi | inferred
    gpus: tuple[Gpu, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        return {
            "driver": self.driver,
            "driver_source": self.driver_source,
            "cuda_driver_version": self.cuda,
            "cuda_source": self.cuda_source,
            "gpus": [g.to_json() for g in self.gpus],
            "notes": list(self.notes),
        }


# -- parsers --------------------------------------------------------------------------------

def _na(value: str | None) -> str | None:
    value = (value or "").strip()
    return None if value in ("", "[N/A]", "N/A", "[Not Supported]", "Not Supported") else value


def _mib(value: str | None) -> int | None:
    m = re.match(r"\s*(\d+)", value or "")
    return int(m.group(1)) if m else None


def _int(value: str | None) -> int | None:
    value = _na(value)
    return int(value) if value and value.isdigit() else None


def parse_capability(text: str | None) -> tuple[int, int] | None:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def parse_query_gpu_csv(text: str, fields: tuple[str, ...] | None = None) -> tuple[str | None, list[Gpu]]:
    """``nvidia-smi --query-gpu=... --format=csv`` -> (driver, GPUs).

    Reads the header when there is one (``memory.total [MiB]``), else takes ``fields``.
    """
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if r and any(c.strip() for c in r)]
    if not rows:
        return None, []
    first = [c.strip() for c in rows[0]]
    if "index" in first or "name" in first:
        names = [re.sub(r"\s*\[.*\]$", "", c) for c in first]
        rows = rows[1:]
    else:
        names = list(fields or QUERY_FIELDS)
    driver = None
    gpus = []
    for n, row in enumerate(rows):
        rec = {k: _na(v) for k, v in zip(names, row)}
        driver = driver or rec.get("driver_version")
        gpus.append(Gpu(
            index=_int(rec.get("index")) if rec.get("index") is not None else n,
            name=rec.get("name") or "",
            uuid=rec.get("uuid") or "",
            capability=parse_capability(rec.get("compute_cap")),
            memory_mib=_mib(rec.get("memory.total")),
            pci_bus_id=rec.get("pci.bus_id") or "",
        ))
    return driver, gpus


@dataclass(frozen=True)
class SmiXml:
    driver: str | None
    cuda: str | None
    gpus: tuple[dict, ...]  # {pci_bus_id, name, uuid, minor, memory_mib, mig_enabled, mig: [MigDevice]}


def parse_smi_xml(text: str) -> SmiXml:
    """``nvidia-smi -q -x``: driver, CUDA version, and each GPU's MIG mode and instances."""
    import xml.etree.ElementTree as ET  # where used: sync imports this module on every CPU host

    root = ET.fromstring(re.sub(r"<!DOCTYPE[^>]*>", "", text))
    gpus = []
    for g in root.findall("gpu"):
        mig_mode = _na(g.findtext("mig_mode/current_mig"))
        devices = []
        for d in g.findall("mig_devices/mig_device"):
            devices.append(MigDevice(
                index=_int(d.findtext("index")) or 0,
                gpu_instance=_int(d.findtext("gpu_instance_id")),
                compute_instance=_int(d.findtext("compute_instance_id")),
                memory_mib=_mib(d.findtext("fb_memory_usage/total")),
                sms=_int(d.findtext("device_attributes/shared/multiprocessor_count")),
            ))
        gpus.append({
            "pci_bus_id": g.get("id") or "",
            "name": _na(g.findtext("product_name")) or "",
            "uuid": _na(g.findtext("uuid")) or "",
            "minor": _int(g.findtext("minor_number")),
            "memory_mib": _mib(g.findtext("fb_memory_usage/total")),
            "mig_enabled": (mig_mode or "").lower() == "enabled",
            "mig": devices,
        })
    return SmiXml(driver=_na(root.findtext("driver_version")), cuda=_na(root.findtext("cuda_version")), gpus=tuple(gpus))


def parse_smi_header(text: str) -> tuple[str | None, str | None]:
    """Driver and CUDA version from plain ``nvidia-smi`` or ``nvidia-smi --version``."""
    driver = re.search(r"(?:Driver Version|DRIVER version)\s*:\s*([\d.]+)", text)
    cuda = re.search(r"CUDA Version\s*:\s*([\d.]+)", text)
    return (driver.group(1) if driver else None), (cuda.group(1) if cuda else None)


_L_GPU = re.compile(r"^GPU (\d+): (.*?) \(UUID: ([^)]+)\)")
_L_MIG = re.compile(r"^\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: ([^)]+)\)")


def parse_smi_list(text: str) -> list[tuple[int, str, str, list[tuple[int, str, str]]]]:
    """``nvidia-smi -L``: [(index, name, uuid, [(mig index, mig profile, mig uuid)])]."""
    out: list = []
    for line in text.splitlines():
        m = _L_GPU.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2), m.group(3), []))
            continue
        m = _L_MIG.match(line)
        if m and out:
            out[-1][3].append((int(m.group(2)), m.group(1), m.group(3)))
    return out


def parse_proc_version(text: str) -> str | None:
    """``/proc/driver/nvidia/version`` (proprietary or open kernel module) -> ``580.159.04``."""
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else None


def parse_proc_gpu_information(text: str) -> dict:
    """``/proc/driver/nvidia/gpus/BUS/information`` -> {name, uuid, pci_bus_id, minor}."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return {"name": fields.get("Model", ""), "uuid": fields.get("GPU UUID", ""),
            "pci_bus_id": fields.get("Bus Location", ""), "minor": _int(fields.get("Device Minor"))}


def infer_cuda(driver: str) -> str | None:
    """The newest CUDA whose toolkit driver this driver meets, by the knowledge base (a
    toolkit driver marked inferred there is not trusted for this)."""
    best = None
    for version, info in kb().cuda.items():
        if not info.toolkit_known:
            continue
        if driver_at_least(driver, info.toolkit_driver):
            if best is None or version_tuple(version) > version_tuple(best):
                best = version
    return best


def merge_mig(gpus: list[Gpu], xml: SmiXml | None, listing=None) -> list[Gpu]:
    """Attach MIG instances (from ``-q -x``, named by ``-L``) to GPUs by UUID, else by order."""
    if xml is None:
        return gpus
    by_uuid = {g["uuid"]: g for g in xml.gpus if g["uuid"]}
    names = {uuid: migs for (_i, _n, uuid, migs) in (listing or [])}
    out = []
    for n, gpu in enumerate(gpus):
        info = by_uuid.get(gpu.uuid) or (xml.gpus[n] if n < len(xml.gpus) else None)
        if info is None or not info["mig_enabled"]:
            out.append(gpu)
            continue
        listed = {i: (prof, uuid) for (i, prof, uuid) in names.get(info["uuid"] or gpu.uuid, [])}
        devices = tuple(
            MigDevice(d.index, d.gpu_instance, d.compute_instance,
                      name=listed.get(d.index, ("", ""))[0], uuid=listed.get(d.index, ("", ""))[1],
                      memory_mib=d.memory_mib, sms=d.sms)
            for d in info["mig"]
        )
        out.append(Gpu(gpu.index, gpu.name or info["name"], gpu.uuid or info["uuid"], gpu.capability,
                       gpu.memory_mib or info["memory_mib"], gpu.pci_bus_id or info["pci_bus_id"], devices))
    return out


# -- sources --------------------------------------------------------------------------------

def _pynvml():
    """The nvidia-ml-py module, initialised, or None when there is no NVML here."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def from_nvml(nvml) -> Host | None:
    """Read driver, CUDA and GPUs through an initialised pynvml-like module."""
    try:
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        try:
            cuda_v = int(nvml.nvmlSystemGetCudaDriverVersion_v2())
        except Exception:
            cuda_v = int(nvml.nvmlSystemGetCudaDriverVersion())
        gpus = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                cap = tuple(int(x) for x in nvml.nvmlDeviceGetCudaComputeCapability(h))
            except Exception:
                cap = None
            try:
                mem = int(nvml.nvmlDeviceGetMemoryInfo(h).total) // (1 << 20)
            except Exception:
                mem = None
            try:
                pci = _text(nvml.nvmlDeviceGetPciInfo(h).busId)
            except Exception:
                pci = ""
            mig = None
            try:
                current, _pending = nvml.nvmlDeviceGetMigMode(h)
            except Exception:
                current = 0
            if current == 1:
                devices = []
                for j in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(h))):
                    try:
                        m = nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                    except Exception:
                        continue
                    name = _text(nvml.nvmlDeviceGetName(m))
                    prof = re.search(r"(\d+g\.\d+gb)", name)
                    devices.append(MigDevice(
                        index=j,
                        gpu_instance=_safe(lambda: int(nvml.nvmlDeviceGetGpuInstanceId(m))),
                        compute_instance=_safe(lambda: int(nvml.nvmlDeviceGetComputeInstanceId(m))),
                        name=prof.group(1) if prof else name,
                        uuid=_text(nvml.nvmlDeviceGetUUID(m)),
                        memory_mib=_safe(lambda: int(nvml.nvmlDeviceGetMemoryInfo(m).total) // (1 << 20)),
                    ))
                mig = tuple(devices)
            gpus.append(Gpu(i, _text(nvml.nvmlDeviceGetName(h)), _text(nvml.nvmlDeviceGetUUID(h)), cap, mem, pci, mig))
    except Exception:
        return None
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    cuda = f"{cuda_v // 1000}.{(cuda_v % 1000) // 10}" if cuda_v else None
    return Host(driver=driver, cuda=cuda, driver_source="nvml", cuda_source="nvml" if cuda else None, gpus=tuple(gpus))


def _safe(fn):
    try:
        return fn()
    except Exception:
        return None


def _run(argv: list[str]) -> str | None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=SMI_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def from_nvidia_smi(smi: str) -> Host | None:
    exe = shutil.which(smi)
    if not exe:
        return None
    text = _run([exe, f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv"])
    fields = QUERY_FIELDS
    if text is None:  # drivers before ~510 do not know compute_cap
        fields = tuple(f for f in QUERY_FIELDS if f != "compute_cap")
        text = _run([exe, f"--query-gpu={','.join(fields)}", "--format=csv"])
    driver, gpus = parse_query_gpu_csv(text, fields) if text else (None, [])
    xml = None
    xml_text = _run([exe, "-q", "-x"])
    if xml_text:
        try:
            xml = parse_smi_xml(xml_text)
        except SyntaxError:  # xml.etree's ParseError
            xml = None
    cuda = xml.cuda if xml else None
    if cuda is None or driver is None:
        d2, c2 = parse_smi_header(_run([exe]) or "")
        driver, cuda = driver or d2 or (xml.driver if xml else None), cuda or c2
    if not gpus and xml:
        gpus = [Gpu(n, g["name"], g["uuid"], None, g["memory_mib"], g["pci_bus_id"]) for n, g in enumerate(xml.gpus)]
    listing = None
    if xml and any(g["mig_enabled"] for g in xml.gpus):
        listing = parse_smi_list(_run([exe, "-L"]) or "")
    if driver is None and not gpus:
        return None
    return Host(driver=driver, cuda=cuda, driver_source="nvidia-smi" if driver else None,
                cuda_source="nvidia-smi" if cuda else None, gpus=tuple(merge_mig(gpus, xml, listing)))


def from_proc(sys_version: Path = SYS_VERSION, proc_version: Path = PROC_VERSION, proc_gpus: Path = PROC_GPUS) -> Host | None:
    driver, source = None, None
    try:
        text = sys_version.read_text().strip()
        if re.fullmatch(r"\d+(\.\d+)+", text):
            driver, source = text, "sys"
    except OSError:
        pass
    if driver is None:
        try:
            driver, source = parse_proc_version(proc_version.read_text()), "proc"
        except OSError:
            pass
    gpus = []
    try:
        infos = sorted(proc_gpus.glob("*/information"))
    except OSError:
        infos = []
    for n, path in enumerate(infos):
        try:
            info = parse_proc_gpu_information(path.read_text())
        except OSError:
            continue
        gpus.append(Gpu(info["minor"] if info["minor"] is not None else n, info["name"], info["uuid"], None, None, info["pci_bus_id"]))
    if driver is None:
        return None
    return Host(driver=driver, driver_source=source, gpus=tuple(gpus))


def has_nvidia_driver() -> bool:
    """Cheap: is there an NVIDIA kernel driver here (for passing GPUs into a container)?"""
    return Path("/dev/nvidiactl").exists() or PROC_VERSION.exists()


def detect(*, environ: dict | None = None, use_nvml: bool = True, smi: str = "nvidia-smi",
           sys_version: Path = SYS_VERSION, proc_version: Path = PROC_VERSION, proc_gpus: Path = PROC_GPUS) -> Host:
    """The host's driver and GPUs, by the documented order. Never raises."""
    env = os.environ if environ is None else environ
    host = None
    if use_nvml:
        nvml = _pynvml()
        if nvml is not None:
            host = from_nvml(nvml)
    if host is None:
        host = from_nvidia_smi(smi)
    if host is None:
        host = from_proc(sys_version, proc_version, proc_gpus)
    if host is None:
        host = Host()
    notes = list(host.notes)
    override = (env.get(ENV_DRIVER) or "").strip()
    if override:
        if host.driver and host.driver != override:
            notes.append(f"{ENV_DRIVER}={override} overrides the detected driver {host.driver}")
        host = Host(driver=override, cuda=None, driver_source="env", cuda_source=None, gpus=host.gpus)
    if host.driver and not host.cuda:
        cuda = infer_cuda(host.driver)
        if cuda:
            host = Host(host.driver, cuda, host.driver_source, "inferred", host.gpus)
    for g in host.gpus:
        if g.mig is not None:
            notes.append(f"GPU {g.index} is in MIG mode: CUDA sees its {len(g.mig)} MIG instance(s), not the whole GPU"
                         " (one instance per process unless CUDA_VISIBLE_DEVICES names more)")
    caps = {g.capability for g in host.gpus if g.capability}
    if len(caps) > 1:
        notes.append("GPUs of different architectures: a build must cover every one of "
                     + ", ".join(sorted(f"sm_{a}{b}" for a, b in caps)))
    return Host(host.driver, host.cuda, host.driver_source, host.cuda_source, host.gpus, tuple(notes))
