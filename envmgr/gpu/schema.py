"""The documented JSON of ``envmgr check --json``, ``envmgr doctor --json`` and the probe.

JSON Schema (draft 2020-12) dictionaries; the tests validate real output against them.
Stable for consumers: field names and meanings change only with the ``schema`` string.

``envmgr check --json`` (``envmgr-check/1``)::

    {"schema": "envmgr-check/1", "ok": true,          # false when any check failed (exit 1)
     "target": {"kind": "venv|python|image", "python": "/path/bin/python",
                "profile": "cu126"|null, "image": "REF"|null, "engine": "podman|docker"|null},
     "expect": {...},  "expect_source": "lock locks/pylock.cu126.toml"|"image lock /opt/venv/pylock.toml"|null,
     "notes": ["image REF has no embedded lock (...): nothing to compare against", ...],
     "require_gpu": false, "world": 1,
     "python": {"version": "3.11.7", "executable": "..."},
     "torch": {"version", "cuda", "hip", "cudnn", "nccl", "git", "arch_list", "path"}|null,
     "driver": {"version": "580.159.04"|null, "cuda": 13000|null, "source": "nvml|sys|proc"|null},
     "gpus": [{"index", "name", "capability": [9, 0], "memory_mib", "sms", "uuid"?}],
     "libraries": ["/path/libcudart.so.13", ...],      # CUDA libraries mapped into the probe
     "checks": [{"name": "gpu0.matmul_bf16", "title": "...", "status": "pass|fail|skip",
                 "reason": "8192x8192 bfloat16 matmul: 795.1 TFLOP/s", "seconds": 0.01,
                 "metrics": {"tflops": 795.1, ...}}],
     "summary": {"pass": 14, "fail": 0, "skip": 1},
     "import_s": 5.5, "probe_s": 8.1, "seconds": 8.4}

Check names: python.version, torch.import, torch.version, torch.cuda_build, torch.libraries,
cuda.runtimes, cuda.available, driver.minimum, gpu.arch, gpuN.{matmul_fp32, matmul_bf16,
matmul_fp16, conv2d, sdpa, copy} per visible GPU (cpu.{matmul_fp32, conv2d, sdpa, copy} and a
skipped gpu.kernels when there is none), nccl.allreduce, nccl.allreduce_world (``--world``),
and probe.timeout / probe.crash / probe.error when the probe did not finish.

``envmgr doctor --json`` (``envmgr-doctor/1``)::

    {"schema": "envmgr-doctor/1", "driver": "580.159.04"|null,
     "driver_source": "env|nvml|nvidia-smi|sys|proc"|null,
     "cuda_driver_version": "13.0"|null, "cuda_source": "nvml|nvidia-smi|inferred"|null,
     "gpus": [{"index", "name", "uuid", "capability": [9, 0]|null, "arch": "sm_90"|null,
               "memory_mib", "pci_bus_id",
               "mig": null | [{"index", "gpu_instance", "compute_instance", "name", "uuid",
                               "memory_mib", "sms"}]}],
     "notes": [...],
     "profiles": [{"name", "variant", "torch", "source": "lock|profile"|null, "runs": bool,
                   "reasons": [why not], "notes": [caveats]}],
     "variants": [{"variant", "cuda", "torch", "min_driver", "arch_list", "ptx", "runs",
                   "reasons", "notes"}],
     "recommended_variant": "cu130", "recommended_profile": "cu130"|null,
     "recommendation": "why, in one line"}
"""

from __future__ import annotations

_STR_OR_NULL = {"type": ["string", "null"]}
_NUM_OR_NULL = {"type": ["number", "null"]}
_INT_OR_NULL = {"type": ["integer", "null"]}

CHECK_ENTRY = {
    "type": "object",
    "required": ["name", "title", "status", "reason", "seconds", "metrics"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9_]+\.[a-z0-9_]+$"},
        "title": {"type": "string"},
        "status": {"enum": ["pass", "fail", "skip"]},
        "reason": {"type": "string"},
        "seconds": {"type": "number", "minimum": 0},
        "metrics": {"type": "object"},
    },
}

_PROBE_GPU = {
    "type": "object",
    "required": ["index", "name", "capability"],
    "properties": {
        "index": {"type": "integer"},
        "name": _STR_OR_NULL,
        "capability": {"type": ["array", "null"], "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
        "memory_mib": _INT_OR_NULL,
        "sms": _INT_OR_NULL,
        "uuid": {"type": "string"},
    },
}

_TORCH = {
    "type": ["object", "null"],
    "required": ["version", "cuda", "cudnn", "nccl", "arch_list"],
    "properties": {
        "version": {"type": "string"},
        "cuda": _STR_OR_NULL,
        "hip": _STR_OR_NULL,
        "cudnn": _INT_OR_NULL,
        "nccl": _STR_OR_NULL,
        "git": _STR_OR_NULL,
        "arch_list": {"type": "array", "items": {"type": "string"}},
        "path": {"type": "string"},
    },
}

_DRIVER = {
    "type": ["object", "null"],
    "required": ["version", "cuda", "source"],
    "properties": {"version": _STR_OR_NULL, "cuda": _INT_OR_NULL, "source": _STR_OR_NULL},
}

PROBE = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "envmgr probe document",
    "type": "object",
    "required": ["schema", "ok", "python", "torch", "driver", "gpus", "libraries", "checks", "import_s", "total_s"],
    "properties": {
        "schema": {"const": "envmgr-probe/1"},
        "ok": {"type": "boolean"},
        "python": {"type": "object", "required": ["version", "executable"]},
        "torch": _TORCH,
        "driver": _DRIVER,
        "gpus": {"type": "array", "items": _PROBE_GPU},
        "libraries": {"type": "array", "items": {"type": "string"}},
        "checks": {"type": "array", "items": CHECK_ENTRY},
        "import_s": _NUM_OR_NULL,
        "total_s": _NUM_OR_NULL,
        "error": {"type": "string"},
    },
}

CHECK_REPORT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "envmgr check --json",
    "type": "object",
    "required": ["schema", "ok", "target", "expect", "expect_source", "require_gpu", "world", "python", "torch",
                 "driver", "gpus", "libraries", "checks", "summary", "import_s", "probe_s", "seconds"],
    "properties": {
        "schema": {"const": "envmgr-check/1"},
        "ok": {"type": "boolean"},
        "target": {
            "type": "object",
            "required": ["kind", "python", "profile", "image", "engine"],
            "properties": {
                "kind": {"enum": ["venv", "python", "image"]},
                "python": {"type": "string"},
                "profile": _STR_OR_NULL,
                "image": _STR_OR_NULL,
                "engine": _STR_OR_NULL,
            },
        },
        "expect": {"type": "object"},
        "expect_source": _STR_OR_NULL,
        "notes": {"type": "array", "items": {"type": "string"}},
        "require_gpu": {"type": "boolean"},
        "world": {"type": "integer", "minimum": 1},
        "python": {"type": ["object", "null"]},
        "torch": _TORCH,
        "driver": _DRIVER,
        "gpus": {"type": "array", "items": _PROBE_GPU},
        "libraries": {"type": "array", "items": {"type": "string"}},
        "checks": {"type": "array", "items": CHECK_ENTRY, "minItems": 1},
        "summary": {
            "type": "object",
            "required": ["pass", "fail", "skip"],
            "properties": {k: {"type": "integer", "minimum": 0} for k in ("pass", "fail", "skip")},
        },
        "import_s": _NUM_OR_NULL,
        "probe_s": _NUM_OR_NULL,
        "seconds": {"type": "number"},
    },
}

_VERDICT = {
    "runs": {"type": "boolean"},
    "reasons": {"type": "array", "items": {"type": "string"}},
    "notes": {"type": "array", "items": {"type": "string"}},
}

DOCTOR_REPORT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "envmgr doctor --json",
    "type": "object",
    "required": ["schema", "driver", "driver_source", "cuda_driver_version", "cuda_source", "gpus", "notes", "profiles",
                 "variants", "recommended_variant", "recommended_profile", "recommendation"],
    "properties": {
        "schema": {"const": "envmgr-doctor/1"},
        "driver": _STR_OR_NULL,
        "driver_source": {"enum": ["env", "nvml", "nvidia-smi", "sys", "proc", None]},
        "cuda_driver_version": _STR_OR_NULL,
        "cuda_source": {"enum": ["nvml", "nvidia-smi", "inferred", None]},
        "gpus": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "name", "uuid", "capability", "memory_mib", "mig"],
                "properties": {
                    "index": {"type": "integer"},
                    "name": {"type": "string"},
                    "uuid": {"type": "string"},
                    "capability": {"type": ["array", "null"], "items": {"type": "integer"}},
                    "arch": _STR_OR_NULL,
                    "memory_mib": _INT_OR_NULL,
                    "pci_bus_id": {"type": "string"},
                    "mig": {
                        "type": ["array", "null"],
                        "items": {
                            "type": "object",
                            "required": ["index", "name", "uuid", "memory_mib"],
                            "properties": {"index": {"type": "integer"}, "gpu_instance": _INT_OR_NULL,
                                           "compute_instance": _INT_OR_NULL, "name": {"type": "string"},
                                           "uuid": {"type": "string"}, "memory_mib": _INT_OR_NULL, "sms": _INT_OR_NULL},
                        },
                    },
                },
            },
        },
        "notes": {"type": "array", "items": {"type": "string"}},
        "profiles": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "variant", "torch", "source", "runs", "reasons", "notes"],
                "properties": {"name": {"type": "string"}, "variant": _STR_OR_NULL, "torch": _STR_OR_NULL,
                               "source": {"enum": ["lock", "profile", None]}, **_VERDICT},
            },
        },
        "variants": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["variant", "cuda", "torch", "runs", "reasons", "notes"],
                "properties": {"variant": {"type": "string"}, "cuda": _STR_OR_NULL, "torch": {"type": "string"},
                               "min_driver": _STR_OR_NULL, "arch_list": {"type": "array"}, "ptx": _STR_OR_NULL, **_VERDICT},
            },
        },
        "recommended_variant": {"type": "string"},
        "recommended_profile": _STR_OR_NULL,
        "recommendation": {"type": "string"},
    },
}
