"""envmgr's GPU probe: proves that an environment's torch really computes on this machine.

Input: expectations as JSON (``--expect-json '{...}'`` or ``--expect-file PATH``, ``-`` for
stdin), all keys optional::

    {"torch": "2.7.1+cu126", "python": "3.11", "variant": "cu126", "cuda": "12.6",
     "cudnn": "9.5.1.17", "nccl": "2.26.2", "min_driver": "525.60.13",
     "toolkit_driver": "560.28.03", "arch_list": ["sm_50", ...], "ptx": "",
     "driver_table": {"12.6": ["525.60.13", "560.28.03"], ...},
     "require_gpu": false, "world": 1, "dist_backend": "nccl", "sizes": {...}}

Output: one JSON document on stdout (schema ``envmgr-probe/1``, described in
``envmgr.gpu.schema``), exit 0 whenever the document was written, whatever the checks found.
Each finished check is also written to stderr as a line ``envmgr-probe: {...}`` so a caller
can tell how far a probe got that crashed (a segfault in a driver, a hang).

Constraints: stdlib + torch only (no envmgr imports), Python 3.8+, so the environment's own
interpreter runs it -- a venv, any python, or the one inside an image. torch is imported
once and every kernel runs in this one process; ``--world N`` adds N-1 worker processes
(torchrun-style environment variables) for an N-GPU all-reduce.

The version and arch-coverage rules are not written here: they live in
``envmgr/model/gpucompat.py`` (stdlib only, Python 3.8+), which ``envmgr doctor`` and
``envmgr diff`` decide with too, and which travels with the probe (see ``RULES_MODULE``).
"""

from __future__ import annotations

import ctypes
import glob
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import warnings

SCHEMA = "envmgr-probe/1"
PROGRESS_PREFIX = "envmgr-probe: "

# Kernel sizes; ``expect["sizes"]`` overrides any of them (tests use small ones).
DEFAULT_SIZES = {
    "gpu_mm_check": 1024,  # fp32 matmul checked against float64
    "gpu_mm_perf": 8192,  # bf16/fp16 matmul for TFLOP/s
    "gpu_conv": [32, 64, 56],  # batch, channels, height=width; 3x3 kernel
    "gpu_sdpa": [8, 16, 2048, 128],  # batch, heads, sequence, head dim
    "gpu_copy_mib": 256,
    "allreduce_elems": 1 << 20,
    "cpu_mm": 512,
    "cpu_conv": [4, 16, 32],
    "cpu_sdpa": [2, 4, 128, 64],
    "cpu_copy_mib": 64,
    "reps": 5,
}


# -- pure helpers (no torch) ----------------------------------------------------------------

# The version and arch rules are envmgr's one copy, shared with doctor and diff:
# envmgr/model/gpucompat.py (stdlib only, like this file). Imported as part of envmgr the
# probe takes the package's module; run alone it takes the copy envmgr's runner registered
# under RULES_MODULE before sending this source, or else (``python probe.py``) the file
# in the package beside this one.
RULES_MODULE = "envmgr_gpucompat"


def _rules_beside():
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "model", "gpucompat.py")
    spec = importlib.util.spec_from_file_location(RULES_MODULE, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[RULES_MODULE] = module
    spec.loader.exec_module(module)
    return module


if __package__:  # envmgr.gpu.probe
    from ..model import gpucompat as _rules
else:
    _rules = sys.modules.get(RULES_MODULE) or _rules_beside()
version_tuple, driver_at_least, arch_name, arch_coverage = (
    _rules.version_tuple, _rules.driver_at_least, _rules.arch_name, _rules.arch_coverage)


def cuda_int(version):
    """``"13.0"`` -> 13000 (the ``cuDriverGetVersion`` encoding); ``None`` if unknown."""
    parts = version_tuple(version)
    if not parts:
        return None
    return parts[0] * 1000 + (parts[1] if len(parts) > 1 else 0) * 10


def cuda_str(value):
    """13000 -> ``"13.0"``, 12020 -> ``"12.2"``."""
    if value is None:
        return None
    return "%d.%d" % (value // 1000, (value % 1000) // 10)


def cudnn_tuple(value):
    """torch.backends.cudnn.version(): 91900 -> (9, 19, 0) (cuDNN 9), 8700 -> (8, 7, 0)."""
    value = int(value)
    if value >= 90000:
        return (value // 10000, (value % 10000) // 100, value % 100)
    return (value // 1000, (value % 1000) // 100, value % 100)


def split_local(version):
    """``"2.7.1+cu126"`` -> ``("2.7.1", "cu126")``."""
    public, _, local = str(version).partition("+")
    return public, local


def compare_torch_version(actual, expected):
    """The lock's pin against ``torch.__version__``; a pin without a local label
    (PyPI's build, ``2.7.1``) matches ``2.7.1+cu126``. Returns ``(ok, reason)``."""
    a_pub, a_local = split_local(actual)
    e_pub, e_local = split_local(expected)
    if version_tuple(a_pub) != version_tuple(e_pub) or (e_local and a_local != e_local):
        return False, "torch %s installed, expected %s" % (actual, expected)
    return True, "torch %s matches the expected %s" % (actual, expected)


_LIB_RE = re.compile(r"/lib(cudart|cublasLt|cublas|cudnn|nccl)(?:-[0-9a-f]{8})?\.so(\.[0-9.]+)?$")


def cuda_libraries(maps_text):
    """CUDA runtime libraries mapped into a process, from ``/proc/PID/maps`` text."""
    seen = []
    for line in maps_text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6:
            path = parts[5].strip()
            if _LIB_RE.search(path) and path not in seen:
                seen.append(path)
    return seen


def runtime_conflicts(loaded, torch_cuda, ld_runtimes=None):
    """Two CUDA runtimes in one process is a crash waiting to happen.

    ``loaded``: library paths mapped in (``cuda_libraries``); ``torch_cuda``: torch.version.cuda;
    ``ld_runtimes``: {directory on LD_LIBRARY_PATH: [libcudart file names there]}.
    Returns a list of problems, empty when fine.
    """
    problems = []
    by_lib = {}
    for path in loaded:
        m = _LIB_RE.search(path)
        by_lib.setdefault(m.group(1), []).append(path)
    for lib, paths in sorted(by_lib.items()):
        if len(paths) > 1:
            problems.append("two copies of lib%s loaded: %s" % (lib, ", ".join(paths)))
    want = version_tuple(torch_cuda)[:1] if torch_cuda else ()
    for path in by_lib.get("cudart", []):
        m = _LIB_RE.search(path)
        major = version_tuple(m.group(2) or "")[:1]
        if want and major and major != want:
            problems.append("%s is a CUDA %d runtime, torch is built for CUDA %s" % (path, major[0], torch_cuda))
    for directory, names in sorted((ld_runtimes or {}).items()):
        for name in names:
            major = version_tuple(name.split(".so", 1)[1])[:1]
            if want and major and major != want:
                problems.append("LD_LIBRARY_PATH holds a CUDA %d runtime (%s/%s), torch is built for CUDA %s"
                                % (major[0], directory, name, torch_cuda))
    return problems


def first_line(text, limit=300):
    text = str(text).strip()
    line = text.splitlines()[0] if text else ""
    return line[:limit]


# -- checks ---------------------------------------------------------------------------------

class Skip(Exception):
    pass


class Fail(Exception):
    def __init__(self, reason, metrics=None):
        super().__init__(reason)
        self.metrics = metrics or {}


class Probe:
    """Records checks into the document and reports each one on stderr as it finishes."""

    def __init__(self, expect):
        self.expect = expect
        self.sizes = dict(DEFAULT_SIZES)
        self.sizes.update(expect.get("sizes") or {})
        self.checks = []
        self.doc = {
            "schema": SCHEMA,
            "ok": True,
            "python": {"version": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable},
            "torch": None,
            "driver": {"version": None, "cuda": None, "source": None},
            "gpus": [],
            "libraries": [],
            "checks": self.checks,
            "import_s": None,
            "total_s": None,
        }

    # Each check: fn() returns (reason, metrics) to pass, raises Skip/Fail, or anything else
    # (a RuntimeError from a kernel) to fail with its first line.
    def run(self, name, title, fn):
        start = time.perf_counter()
        metrics = {}
        try:
            reason, metrics = fn()
            status = "pass"
        except Skip as exc:
            status, reason = "skip", str(exc)
        except Fail as exc:
            status, reason, metrics = "fail", str(exc), exc.metrics
        except Exception as exc:  # a kernel that did not run: that is the finding
            status, reason = "fail", "%s: %s" % (type(exc).__name__, first_line(exc))
        entry = {"name": name, "title": title, "status": status, "reason": reason,
                 "seconds": round(time.perf_counter() - start, 6), "metrics": metrics or {}}
        self.checks.append(entry)
        if status == "fail":
            self.doc["ok"] = False
        try:
            sys.stderr.write(PROGRESS_PREFIX + json.dumps(entry) + "\n")
            sys.stderr.flush()
        except Exception:
            pass
        return status

    def skip_all(self, names_titles, reason):
        for name, title in names_titles:
            self.run(name, title, _raiser(Skip(reason)))


def _raiser(exc):
    def fn():
        raise exc
    return fn


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def driver_facts():
    """The NVIDIA driver as this process sees it: libcuda's CUDA version, NVML's driver
    version (ctypes, no pynvml), else /sys and /proc."""
    out = {"version": None, "cuda": None, "source": None}
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int(0)
        if libcuda.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value:
            out["cuda"] = v.value
    except (OSError, AttributeError):
        pass
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        init = getattr(nvml, "nvmlInit_v2", None) or nvml.nvmlInit
        if init() == 0:
            try:
                buf = ctypes.create_string_buffer(96)
                if nvml.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(96)) == 0 and buf.value:
                    out["version"], out["source"] = buf.value.decode(), "nvml"
                if out["cuda"] is None:
                    v = ctypes.c_int(0)
                    fn = getattr(nvml, "nvmlSystemGetCudaDriverVersion_v2", None) or nvml.nvmlSystemGetCudaDriverVersion
                    if fn(ctypes.byref(v)) == 0 and v.value:
                        out["cuda"] = v.value
            finally:
                nvml.nvmlShutdown()
    except (OSError, AttributeError):
        pass
    if out["version"] is None:
        text = _read("/sys/module/nvidia/version").strip()
        if re.fullmatch(r"\d+(\.\d+)+", text):
            out["version"], out["source"] = text, "sys"
    if out["version"] is None:
        m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", _read("/proc/driver/nvidia/version"))
        if m:
            out["version"], out["source"] = m.group(1), "proc"
    return out


def _ld_runtimes():
    found = {}
    for directory in os.environ.get("LD_LIBRARY_PATH", "").split(":"):
        if directory:
            names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(directory, "libcudart.so.*")))
            if names:
                found[directory] = names
    return found


def _free_port():
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


# The all-reduce both the main probe (rank 0) and the --world workers run. A string so that
# workers can be started as ``python -c`` without this file on disk (inside an image, the
# probe itself arrives on stdin).
DIST_SOURCE = r'''
def allreduce(torch, backend, rank, world, local_rank, elems, timeout_s=120.0):
    import datetime, time
    import torch.distributed as dist
    t0 = time.perf_counter()
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        init_s = time.perf_counter() - t0
        x = torch.full((elems,), float(rank + 1), device=device)
        dist.all_reduce(x)  # warm-up: NCCL sets up its communicator lazily
        x.fill_(float(rank + 1))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        dist.all_reduce(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        op_s = time.perf_counter() - t1
        want = world * (world + 1) / 2.0
        got = float(x[0].item()), float(x[-1].item())
        return {"rank": rank, "ok": got == (want, want), "got": got[0], "want": want,
                "init_s": init_s, "allreduce_s": op_s}
    finally:
        dist.destroy_process_group()
'''

WORKER_SOURCE = DIST_SOURCE + r'''
import json, os, sys
try:
    import torch
    r = allreduce(torch, os.environ["ENVMGR_DIST_BACKEND"], int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                  int(os.environ["LOCAL_RANK"]), int(os.environ["ENVMGR_DIST_ELEMS"]))
except Exception as exc:
    r = {"rank": int(os.environ.get("RANK", -1)), "ok": False, "error": "%s: %s" % (type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")}
sys.stdout.write(json.dumps(r) + "\n")
'''


def _dist():
    ns = {}
    exec(DIST_SOURCE, ns)
    return ns["allreduce"]


def _timed(fn, sync, reps):
    """Best of ``reps`` runs after one warm-up; ``sync`` waits for the device."""
    fn()
    sync()
    best = float("inf")
    for _ in range(max(1, reps)):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def _relerr(torch, got, ref):
    ref = ref.double()
    scale = float(ref.abs().max()) or 1.0
    return float((got.double() - ref).abs().max()) / scale


class Kernels:
    """The kernel checks for one device (``cuda:i`` or ``cpu``)."""

    def __init__(self, torch, device, sizes):
        self.torch = torch
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.sizes = sizes
        self.gen = torch.Generator(device="cpu").manual_seed(0)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def randn(self, *shape, dtype=None):
        t = self.torch.randn(*shape, generator=self.gen)
        return t.to(device=self.device, dtype=dtype or self.torch.float32)

    def matmul_fp32(self):
        torch = self.torch
        n = self.sizes["gpu_mm_check" if self.cuda else "cpu_mm"]
        a, b = self.randn(n, n), self.randn(n, n)
        old_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            secs = _timed(lambda: a @ b, self.sync, self.sizes["reps"])
            c = a @ b
            ref = a.double() @ b.double()
            self.sync()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old_tf32
        err = _relerr(torch, c, ref)
        metrics = {"n": n, "max_rel_err": err, "tflops": 2.0 * n ** 3 / secs / 1e12, "kernel_s": secs}
        if not err < 1e-4:
            raise Fail("fp32 matmul differs from the float64 reference by %.3g (limit 1e-4)" % err, metrics)
        return "%dx%d fp32 matmul within %.1e of float64, %.2f TFLOP/s" % (n, n, err, metrics["tflops"]), metrics

    def matmul_half(self, dtype_name):
        torch = self.torch
        dtype = getattr(torch, dtype_name)
        if dtype_name == "bfloat16" and self.cuda:
            supported = torch.cuda.is_bf16_supported()
            if not supported:
                raise Skip("bf16 is not supported on this GPU")
        n = self.sizes["gpu_mm_perf"]
        a, b = self.randn(n, n, dtype=dtype), self.randn(n, n, dtype=dtype)
        secs = _timed(lambda: a @ b, self.sync, self.sizes["reps"])
        c = a @ b
        k = min(64, n)
        ref = a[:k].float() @ b[:, :k].float()
        err = _relerr(torch, c[:k, :k], ref)
        tflops = 2.0 * n ** 3 / secs / 1e12
        metrics = {"n": n, "tflops": tflops, "max_rel_err": err, "kernel_s": secs}
        if not err < 2e-2:
            raise Fail("%s matmul differs from fp32 by %.3g" % (dtype_name, err), metrics)
        return "%dx%d %s matmul: %.1f TFLOP/s" % (n, n, dtype_name, tflops), metrics

    def conv2d(self):
        torch = self.torch
        F = torch.nn.functional
        batch, ch, hw = self.sizes["gpu_conv" if self.cuda else "cpu_conv"]
        dtype = torch.float16 if self.cuda else torch.float32
        if self.cuda and not (torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled):
            raise Fail("cuDNN is not available to torch")
        x = self.randn(batch, ch, hw, hw, dtype=dtype)
        w = self.randn(ch, ch, 3, 3, dtype=dtype) * (1.0 / math.sqrt(ch * 9))
        secs = _timed(lambda: F.conv2d(x, w, padding=1), self.sync, self.sizes["reps"])
        y = F.conv2d(x[:1], w, padding=1)
        ref = F.conv2d(x[:1].double().cpu(), w.double().cpu(), padding=1)
        err = _relerr(torch, y.cpu(), ref)
        flops = 2.0 * batch * ch * ch * 9 * hw * hw
        metrics = {"shape": [batch, ch, hw, hw], "dtype": str(dtype).replace("torch.", ""),
                   "tflops": flops / secs / 1e12, "max_rel_err": err, "kernel_s": secs}
        if self.cuda:
            metrics["cudnn"] = torch.backends.cudnn.version()
        limit = 1e-2 if self.cuda else 1e-4
        if not err < limit:
            raise Fail("conv2d differs from the float64 reference by %.3g" % err, metrics)
        what = "cuDNN %s conv2d" % metrics["dtype"] if self.cuda else "fp32 conv2d"
        return "%s %s: %.2f TFLOP/s" % (what, "x".join(map(str, metrics["shape"])), metrics["tflops"]), metrics

    def sdpa(self):
        torch = self.torch
        F = torch.nn.functional
        if not hasattr(F, "scaled_dot_product_attention"):
            raise Skip("torch %s has no scaled_dot_product_attention (added in 2.0)" % torch.__version__)
        b, h, s, d = self.sizes["gpu_sdpa" if self.cuda else "cpu_sdpa"]
        dtype = torch.float32
        if self.cuda:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        q, k, v = (self.randn(b, h, s, d, dtype=dtype) for _ in range(3))
        secs = _timed(lambda: F.scaled_dot_product_attention(q, k, v), self.sync, self.sizes["reps"])
        out = F.scaled_dot_product_attention(q, k, v)
        q0, k0, v0 = (t[0, 0].double() for t in (q, k, v))
        ref = torch.softmax(q0 @ k0.transpose(0, 1) / math.sqrt(d), dim=-1) @ v0
        err = _relerr(torch, out[0, 0], ref)
        metrics = {"shape": [b, h, s, d], "dtype": str(dtype).replace("torch.", ""),
                   "tflops": 4.0 * b * h * s * s * d / secs / 1e12, "max_rel_err": err, "kernel_s": secs}
        limit = 3e-2 if self.cuda else 1e-4
        if not err < limit:
            raise Fail("attention differs from the reference by %.3g" % err, metrics)
        return "%s attention %s: %.2f TFLOP/s" % (metrics["dtype"], "x".join(map(str, [b, h, s, d])), metrics["tflops"]), metrics

    def copy(self):
        torch = self.torch
        mib = self.sizes["gpu_copy_mib" if self.cuda else "cpu_copy_mib"]
        n = mib * (1 << 20) // 4
        src = torch.arange(n, dtype=torch.int32, device=self.device)
        dst = torch.empty_like(src)
        secs = _timed(lambda: dst.copy_(src), self.sync, self.sizes["reps"])
        ok = bool(torch.equal(src, dst))
        gbps = 2.0 * n * 4 / secs / 1e9  # read + write
        metrics = {"mib": mib, "gbps": gbps, "kernel_s": secs}
        if not ok:
            raise Fail("the copy does not equal its source", metrics)
        return "%d MiB %s copy: %.1f GB/s" % (mib, "device" if self.cuda else "memory", gbps), metrics


# -- the probe ----------------------------------------------------------------------------

GPU_KERNELS = (
    ("matmul_fp32", "fp32 matmul vs float64"),
    ("matmul_bf16", "bf16 matmul"),
    ("matmul_fp16", "fp16 matmul"),
    ("conv2d", "cuDNN conv2d"),
    ("sdpa", "scaled-dot-product attention"),
    ("copy", "device copy"),
)
CPU_KERNELS = (
    ("matmul_fp32", "fp32 matmul vs float64"),
    ("conv2d", "conv2d"),
    ("sdpa", "scaled-dot-product attention"),
    ("copy", "memory copy"),
)


def _kernel_fn(get, name):
    """The check for kernel ``name``; ``get()`` builds the device's Kernels inside the first
    check that needs them, so a torch that cannot even do that fails checks, not the probe."""
    def fn():
        k = get()
        if name == "matmul_bf16":
            return k.matmul_half("bfloat16")
        if name == "matmul_fp16":
            return k.matmul_half("float16")
        return getattr(k, name)()
    return fn


class Checks:
    """The checks, in the order they run; each method is one check for ``Probe.run``."""

    def __init__(self, probe):
        self.p = probe
        self.e = probe.expect
        self.doc = probe.doc
        self.torch = None
        self.arch_flags = []
        self.cudnn = None
        self.nccl = None
        self.driver = {"version": None, "cuda": None, "source": None}
        self.gpu_state = "unknown"  # ok | none | cpu-build | broken
        self.gpu_reason = ""
        self.count = 0
        self.world = int(self.e.get("world") or 1)
        self.backend = self.e.get("dist_backend") or "nccl"
        self.workers = []
        self.world_env = None
        self.world_problem = None

    @property
    def gpu_ok(self):
        return self.gpu_state == "ok"

    # -- environment ----------------------------------------------------------------------
    def python_version(self):
        have = "%d.%d" % sys.version_info[:2]
        if version_tuple(have) != version_tuple(self.e["python"])[:2]:
            raise Fail("python %s, the lock is for %s" % (have, self.e["python"]))
        return "python %s" % self.doc["python"]["version"], {}

    def import_torch(self):
        t = time.perf_counter()
        try:
            import torch  # the only heavy import, done once
        except ModuleNotFoundError as exc:
            if getattr(exc, "name", "") == "torch":
                raise Fail("no torch in this environment (No module named 'torch')", {"missing": True})
            raise
        self.doc["import_s"] = time.perf_counter() - t
        self.torch = torch
        return "torch %s imported in %.2f s" % (torch.__version__, self.doc["import_s"]), {"import_s": self.doc["import_s"]}

    def gather_facts(self):
        """torch's build, the driver and the CUDA libraries mapped in: facts, not checks."""
        torch = self.torch
        try:
            flags = torch._C._cuda_getArchFlags() if hasattr(torch._C, "_cuda_getArchFlags") else None
            self.arch_flags = flags.split() if flags else []
        except Exception:
            self.arch_flags = []
        if torch.version.cuda:
            try:
                self.cudnn = torch.backends.cudnn.version()
            except Exception:
                self.cudnn = None
            try:
                v = torch.cuda.nccl.version()
                self.nccl = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
            except Exception:
                self.nccl = None
        self.doc["torch"] = {
            "version": torch.__version__, "cuda": torch.version.cuda, "hip": getattr(torch.version, "hip", None),
            "cudnn": self.cudnn, "nccl": self.nccl, "git": getattr(torch.version, "git_version", None),
            "arch_list": self.arch_flags, "path": os.path.dirname(torch.__file__),
        }
        self.doc["driver"] = self.driver = driver_facts()
        self.doc["libraries"] = cuda_libraries(_read("/proc/self/maps"))

    def torch_version(self):
        ok, reason = compare_torch_version(self.torch.__version__, self.e["torch"])
        if not ok:
            raise Fail(reason)
        return reason, {}

    def cuda_build(self):
        torch, e = self.torch, self.e
        built = torch.version.cuda
        variant, want = e.get("variant") or "", e.get("cuda") or ""
        if variant == "cpu" or (variant == "" and not want):
            if built and variant == "cpu":
                raise Fail("a CUDA %s build of torch where the cpu variant was locked" % built)
            return ("CPU build" if not built else "CUDA %s build" % built), {}
        if variant.startswith("rocm"):
            if not getattr(torch.version, "hip", None):
                raise Fail("not a ROCm build of torch where %s was locked" % variant)
            return "ROCm %s build" % torch.version.hip, {}
        if not built:
            raise Fail("a CPU-only build of torch where %s (CUDA %s) was locked" % (variant or "a CUDA variant", want))
        if want and version_tuple(built)[:2] != version_tuple(want)[:2]:
            raise Fail("torch is built for CUDA %s, the lock is for CUDA %s (%s)" % (built, want, variant))
        if e.get("arch_list") and self.arch_flags:
            lock_sm = sorted(a for a in e["arch_list"] if a.startswith("sm_"))
            real_sm = sorted(a for a in self.arch_flags if a.startswith("sm_"))
            if lock_sm != real_sm:
                return ("CUDA %s build (its arch list differs from the lock's: %s)" % (built, " ".join(self.arch_flags)),
                        {"arch_list_lock": e["arch_list"], "arch_list_torch": self.arch_flags})
        return "CUDA %s build" % built, {}

    def libraries(self):
        if not self.torch.version.cuda:
            raise Skip("CPU build: no cuDNN or NCCL")
        e, found, problems = self.e, [], []
        if e.get("cudnn"):
            if self.cudnn is None:
                problems.append("cuDNN %s locked, torch finds no cuDNN" % e["cudnn"])
            else:
                have, want = cudnn_tuple(self.cudnn), version_tuple(e["cudnn"])[:3]
                if have != want:
                    problems.append("cuDNN %s loaded, the lock pins %s" % (".".join(map(str, have)), e["cudnn"]))
                else:
                    found.append("cuDNN %s" % ".".join(map(str, have)))
        if e.get("nccl") and self.nccl:
            if version_tuple(self.nccl)[:3] != version_tuple(e["nccl"])[:3]:
                problems.append("NCCL %s loaded, the lock pins %s" % (self.nccl, e["nccl"]))
            else:
                found.append("NCCL %s" % self.nccl)
        metrics = {"cudnn": self.cudnn, "nccl": self.nccl}
        if problems:
            raise Fail("; ".join(problems), metrics)
        if not found:
            return "cuDNN %s, NCCL %s (nothing locked to compare)" % (self.cudnn, self.nccl), metrics
        return ", ".join(found) + " match the lock", metrics

    def runtimes(self):
        loaded = self.doc["libraries"]
        problems = runtime_conflicts(loaded, self.torch.version.cuda, _ld_runtimes())
        metrics = {"loaded": loaded}
        if problems:
            raise Fail("; ".join(problems), metrics)
        if not self.torch.version.cuda:
            return "CPU build: no CUDA runtime", metrics
        cudart = [x for x in loaded if "libcudart" in x]
        return "one CUDA runtime: %s" % (cudart[0] if cudart else "(static or not yet loaded)"), metrics

    # -- the GPU ----------------------------------------------------------------------------
    def available(self):
        torch, require = self.torch, bool(self.e.get("require_gpu"))
        if getattr(torch.version, "hip", None):
            self.gpu_state, self.gpu_reason = "cpu-build", "a ROCm build: envmgr's GPU checks cover CUDA"
            raise Skip(self.gpu_reason)
        if not torch.version.cuda:
            self.gpu_state, self.gpu_reason = "cpu-build", "CPU build of torch: no GPU checks"
            if require:
                raise Fail("--require-gpu, but torch is a CPU-only build")
            raise Skip(self.gpu_reason)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ok = torch.cuda.is_available()
            count = torch.cuda.device_count() if ok else 0
        said = "; ".join(first_line(w.message) for w in caught if "CUDA" in str(w.message) or "driver" in str(w.message))
        if ok and count:
            self.gpu_state, self.count = "ok", count
            names = [torch.cuda.get_device_name(i) for i in range(count)]
            return "%d GPU%s: %s" % (count, "" if count == 1 else "s", ", ".join(names)), {"device_count": count}
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        no_gpu = None
        if self.driver["cuda"] is None and self.driver["version"] is None and not os.path.exists("/dev/nvidiactl"):
            no_gpu = "no NVIDIA driver (libcuda.so.1 not found)"
        elif visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
            no_gpu = "no GPU visible (CUDA_VISIBLE_DEVICES=%r)" % visible
        elif "no CUDA-capable device" in said:
            no_gpu = "no CUDA-capable device"
        if no_gpu:
            self.gpu_state, self.gpu_reason = "none", no_gpu
            if require:
                raise Fail("--require-gpu, but " + no_gpu)
            raise Skip(no_gpu + ": GPU checks skipped")
        self.gpu_state, self.gpu_reason = "broken", "CUDA is not available"
        raise Fail("torch.cuda.is_available() is False: %s" % (said or "a driver is present but CUDA did not initialise"))

    def driver_minimum(self):
        d = self.driver
        if self.gpu_state == "cpu-build" or (self.gpu_state == "none" and d["version"] is None and d["cuda"] is None):
            raise Skip(self.gpu_reason or "no driver")
        have, have_cuda, built = d["version"], d["cuda"], self.torch.version.cuda
        minimum, toolkit = self.e.get("min_driver") or "", self.e.get("toolkit_driver") or ""
        if not minimum and built:
            row = (self.e.get("driver_table") or {}).get(".".join(map(str, version_tuple(built)[:2])))
            if row:
                minimum, toolkit = row[0], row[1]
        metrics = {"driver": have, "driver_cuda": cuda_str(have_cuda), "min_driver": minimum, "toolkit_driver": toolkit}
        if have_cuda and built and version_tuple(cuda_str(have_cuda))[:1] < version_tuple(built)[:1]:
            raise Fail("driver %s supports CUDA %s; torch needs a CUDA %d driver (>= %s)"
                       % (have or "?", cuda_str(have_cuda), version_tuple(built)[0], minimum or "?"), metrics)
        if have and minimum:
            if not driver_at_least(have, minimum):
                raise Fail("driver %s is older than %s, the minimum for CUDA %s" % (have, minimum, built or self.e.get("cuda")), metrics)
            if toolkit and not driver_at_least(have, toolkit):
                return ("driver %s >= %s (minor-version compatibility: no PTX JIT below %s)" % (have, minimum, toolkit)), metrics
            return "driver %s >= %s (CUDA %s)" % (have, minimum, cuda_str(have_cuda) or "?"), metrics
        if have_cuda and built:
            return "driver supports CUDA %s; torch built for %s" % (cuda_str(have_cuda), built), metrics
        raise Skip("driver version unknown")

    def gather_gpus(self):
        for i in range(self.count):
            try:
                props = self.torch.cuda.get_device_properties(i)
                entry = {"index": i, "name": props.name, "capability": [props.major, props.minor],
                         "memory_mib": int(props.total_memory // (1 << 20)),
                         "sms": getattr(props, "multi_processor_count", None)}
                uuid = getattr(props, "uuid", None)
                if uuid is not None:
                    entry["uuid"] = str(uuid)
            except Exception as exc:
                entry = {"index": i, "name": None, "capability": None, "error": first_line(exc)}
            self.doc["gpus"].append(entry)

    def arch(self):
        if not self.gpu_ok:
            raise Skip(self.gpu_reason or "CUDA is not available")
        e = self.e
        ptx = [e["ptx"]] if e.get("ptx") and not self.arch_flags else []  # the lock's word only when torch says nothing
        results, bad = [], []
        for g in self.doc["gpus"]:
            if not g.get("capability"):
                bad.append("GPU %d: capability unknown (%s)" % (g["index"], g.get("error")))
                continue
            cov = arch_coverage(g["capability"], self.arch_flags or e.get("arch_list") or [], ptx,
                                self.driver["version"] or "", e.get("toolkit_driver") or "")
            results.append(dict(cov, index=g["index"], capability=arch_name(g["capability"])))
            if not cov["covered"]:
                bad.append("GPU %d %s: %s" % (g["index"], g["name"], cov["reason"]))
        metrics = {"arch_list": self.arch_flags, "gpus": results}
        if bad:
            raise Fail("; ".join(bad), metrics)
        return "; ".join("GPU %d %s: %s" % (r["index"], r["capability"], r["reason"]) for r in results), metrics

    # -- kernels ----------------------------------------------------------------------------
    def run_kernels(self):
        p = self.p
        if self.gpu_ok:
            for i in range(self.count):
                make = _once(lambda i=i: Kernels(self.torch, "cuda:%d" % i, p.sizes))
                for name, title in GPU_KERNELS:
                    p.run("gpu%d.%s" % (i, name), "GPU %d: %s" % (i, title), _kernel_fn(make, name))
            return
        make = _once(lambda: Kernels(self.torch, "cpu", p.sizes))
        for name, title in CPU_KERNELS:
            p.run("cpu.%s" % name, "CPU: %s" % title, _kernel_fn(make, name))
        p.skip_all([("gpu.kernels", "GPU kernels")], self.gpu_reason or "CUDA is not available")

    def nccl_single(self):
        if not self.gpu_ok:
            raise Skip(self.gpu_reason or "CUDA is not available")
        import torch.distributed as dist
        if not dist.is_available() or not dist.is_nccl_available():
            raise Fail("torch is built without NCCL")
        with _environ(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())):
            r = _dist()(self.torch, "nccl", 0, 1, 0, self.p.sizes["allreduce_elems"])
        metrics = {"init_s": r["init_s"], "allreduce_s": r["allreduce_s"], "nccl": self.nccl}
        if not r["ok"]:
            raise Fail("single-rank all_reduce gave %s, expected %s" % (r["got"], r["want"]), metrics)
        return "NCCL %s single-rank all_reduce (init %.2f s)" % (self.nccl, r["init_s"]), metrics

    # -- --world N ----------------------------------------------------------------------------
    def start_world(self):
        """Start ranks 1..N-1 now, so their `import torch` overlaps with the kernels."""
        if self.world <= 1:
            return
        if self.backend == "nccl" and not self.gpu_ok:
            self.world_problem = Skip(self.gpu_reason or "CUDA is not available")
            return
        if self.backend == "nccl" and self.count < self.world:
            self.world_problem = Fail("--world %d needs %d GPUs, %d visible" % (self.world, self.world, self.count))
            return
        self.world_env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(self.world),
                          "ENVMGR_DIST_BACKEND": self.backend, "ENVMGR_DIST_ELEMS": str(self.p.sizes["allreduce_elems"])}
        for rank in range(1, self.world):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), **self.world_env)
            self.workers.append(subprocess.Popen([sys.executable, "-c", WORKER_SOURCE], env=env,
                                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))

    def world_allreduce(self):
        if self.world_problem is not None:
            raise self.world_problem
        try:
            with _environ(RANK="0", LOCAL_RANK="0", **self.world_env):
                mine = _dist()(self.torch, self.backend, 0, self.world, 0, self.p.sizes["allreduce_elems"])
        except Exception as exc:
            mine = {"rank": 0, "ok": False, "error": "%s: %s" % (type(exc).__name__, first_line(exc))}
        ranks = [mine]
        for w in self.workers:
            try:
                out, err = w.communicate(timeout=180)
                lines = [x for x in out.splitlines() if x.startswith("{")]
                ranks.append(json.loads(lines[-1]) if lines else
                             {"ok": False, "error": "worker exited %s: %s" % (w.returncode, first_line(err[-2000:]))})
            except subprocess.TimeoutExpired:
                w.kill()
                ranks.append({"ok": False, "error": "worker timed out"})
        bad = [r for r in ranks if not r.get("ok")]
        metrics = {"world": self.world, "backend": self.backend, "ranks": ranks}
        if bad:
            raise Fail("; ".join("rank %s: %s" % (r.get("rank", "?"), r.get("error") or "wrong sum %s" % r.get("got"))
                                 for r in bad), metrics)
        return "%s all_reduce over %d ranks (%.2f ms)" % (self.backend, self.world, 1000 * mine["allreduce_s"]), metrics

    def stop_world(self):
        for w in self.workers:
            if w.poll() is None:
                w.kill()
                w.wait()


class _environ:
    """Set environment variables for a block, then put the old values back."""

    def __init__(self, **values):
        self.values, self.saved = values, {}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _once(make):
    cache = []

    def get():
        if not cache:
            cache.append(make())
        return cache[0]
    return get


def run_probe(expect, p=None):
    """Every check, in order; returns the document (``p.doc``)."""
    start = time.perf_counter()
    p = p if p is not None else Probe(expect)
    c = Checks(p)
    if expect.get("python"):
        p.run("python.version", "Python matches the lock", c.python_version)
    if p.run("torch.import", "torch imports", c.import_torch) != "pass":
        p.doc["driver"] = driver_facts()
        p.doc["total_s"] = time.perf_counter() - start
        return p.doc
    c.gather_facts()
    if expect.get("torch"):
        p.run("torch.version", "torch version matches the lock", c.torch_version)
    p.run("torch.cuda_build", "CUDA build matches the lock", c.cuda_build)
    p.run("torch.libraries", "cuDNN and NCCL match the lock", c.libraries)
    p.run("cuda.runtimes", "one CUDA runtime in the process", c.runtimes)
    p.run("cuda.available", "CUDA available", c.available)
    p.run("driver.minimum", "driver meets the variant's minimum", c.driver_minimum)
    c.gather_gpus()
    p.run("gpu.arch", "GPU architectures covered by the build", c.arch)
    c.start_world()
    try:
        c.run_kernels()
        p.run("nccl.allreduce", "NCCL all-reduce (1 rank)", c.nccl_single)
        if c.world > 1:
            p.run("nccl.allreduce_world", "all-reduce over --world ranks", c.world_allreduce)
    finally:
        c.stop_world()
    p.doc["total_s"] = time.perf_counter() - start
    return p.doc


def _parse_args(argv):
    expect = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--expect-json":
            expect.update(json.loads(argv[i + 1]))
            i += 2
        elif arg == "--expect-file":
            path = argv[i + 1]
            expect.update(json.loads(sys.stdin.read() if path == "-" else _read(path)))
            i += 2
        elif arg == "--require-gpu":
            expect["require_gpu"] = True
            i += 1
        elif arg == "--world":
            expect["world"] = int(argv[i + 1])
            i += 2
        else:
            raise SystemExit("probe: unknown argument %r (use --expect-json JSON, --expect-file PATH|-, --require-gpu, --world N)" % arg)
    return expect


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    expect = _parse_args(argv)
    # Libraries (NCCL's INFO lines, a driver banner) may write to fd 1; the document must be
    # the only thing on stdout, so keep a private copy of it and point fd 1 at stderr.
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    probe = Probe(expect)
    try:
        doc = run_probe(expect, probe)
    except BaseException as exc:  # report what we have rather than a bare traceback
        doc = probe.doc
        doc["ok"] = False
        doc["error"] = "%s: %s" % (type(exc).__name__, first_line(exc))
    data = (json.dumps(doc, default=str) + "\n").encode()
    while data:
        data = data[os.write(out_fd, data):]
    os.close(out_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
