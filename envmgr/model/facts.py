"""Facts of one torch build, read from its own files, and where every recorded fact came from.

A lock's CUDA facts were looked up in the knowledge base by the profile's variant; a build
published after envmgr was may say otherwise. :class:`BuildFacts` is what the pinned torch
file says of itself: ``torch/version.py`` (its version with the local label, ``cuda``,
``hip``) and its ``METADATA`` (the ``Requires-Dist`` lines: cuDNN, NCCL, triton pins). The
compiled GPU architectures come from its binary when the wheel is at hand. Pure parsing;
reading the bytes is ``net.wheelmeta``'s.

Sources, as the lock's ``[tool.envmgr.sources]`` and ``envmgr variants`` spell them:
``wheel-metadata`` (the file's METADATA or torch/version.py), ``wheel-binary`` (its
``libtorch_cuda.so``), ``knowledge-base`` (the reviewed table or an overlay), ``inferred``
(no primary source: e.g. the arch list of the nearest known release with the same CUDA).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ..core.errors import UserError
from .names import canonical

WHEEL_METADATA, WHEEL_BINARY, KNOWLEDGE_BASE, INFERRED = "wheel-metadata", "wheel-binary", "knowledge-base", "inferred"
SOURCES = (WHEEL_METADATA, WHEEL_BINARY, KNOWLEDGE_BASE, INFERRED)
FACTS = ("cuda", "min-driver", "toolkit-driver", "arch-list", "ptx")  # recorded with a source

VERSION_PY = "torch/version.py"
LIBTORCH_CUDA = "torch/lib/libtorch_cuda.so"

_ASSIGN = r"^{name}\s*(?::[^=\n]*)?=\s*(?:'([^'\n]*)'|\"([^\"\n]*)\"|(None))"
_CUDNN = re.compile(r"^nvidia-cudnn(-cu\d+)?$")
_NCCL = re.compile(r"^nvidia-nccl(-cu\d+)?$")
_TRITON = re.compile(r"^(pytorch-)?triton(-rocm|-xpu)?$")


class WheelFactsError(UserError):
    """A torch file whose own files cannot be read or say nothing usable. Exit 2."""


@dataclass(frozen=True)
class BuildFacts:
    """What a torch file says of itself."""

    version: str  # torch/version.py's __version__ (with the local label: 2.15.0+cu132)
    cuda: str  # "13.2"; "" for a CPU or ROCm build
    hip: str  # ROCm builds' HIP version, else ""
    requires: tuple[str, ...] = ()  # METADATA's Requires-Dist lines
    arch_list: tuple[str, ...] = ()  # sm_XX compiled in (from the binary, when read)
    ptx: tuple[str, ...] = field(default=())  # sm_XX whose PTX is embedded

    @property
    def label(self) -> str:
        return self.version.partition("+")[2]

    @property
    def variant(self) -> str:
        """The variant this build is: its local label when it names one, else from CUDA/HIP."""
        label = self.label
        if re.fullmatch(r"cpu|cu\d{3}|rocm\d+\.\d+(\.\d+)?|xpu", label):
            return label
        if self.cuda:
            return cuda_variant(self.cuda)
        if self.hip:
            return "rocm" + ".".join(self.hip.split(".")[:2])
        return "cpu"

    def describe(self) -> str:
        what = f"CUDA {self.cuda}" if self.cuda else (f"ROCm (HIP {self.hip})" if self.hip else "no CUDA")
        return f"a {self.variant} build ({VERSION_PY}: {self.version}, {what})"

    def pin(self, pattern: re.Pattern, env: dict | None = None) -> str:
        """The version a Requires-Dist line pins for the first package matching ``pattern``."""
        for name, spec in self.requirements(env):
            if pattern.match(name):
                return spec.removeprefix("==")
        return ""

    def requirements(self, env: dict | None = None) -> list[tuple[str, str]]:
        """(canonical name, specifier) of each Requires-Dist that applies in ``env`` (all when None)."""
        from packaging.requirements import InvalidRequirement, Requirement

        out = []
        for line in self.requires:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if env is not None and req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            if req.extras and "extra" in str(req.marker or ""):
                continue
            out.append((canonical(req.name), str(req.specifier)))
        return out

    def pins(self, env: dict | None = None) -> dict[str, str]:
        """cuDNN, NCCL and triton as this build pins them ("" where it pins none)."""
        return {"cudnn": self.pin(_CUDNN, env), "nccl": self.pin(_NCCL, env), "triton": self.pin(_TRITON, env)}

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> "BuildFacts":
        return cls(data["version"], data["cuda"], data.get("hip", ""), tuple(data.get("requires", ())),
                   tuple(data.get("arch_list", ())), tuple(data.get("ptx", ())))


def cuda_variant(cuda: str) -> str:
    """``13.2`` -> ``cu132``."""
    major, _, minor = cuda.partition(".")
    return f"cu{major}{minor.split('.')[0] or '0'}"


def target_env(python: str, platform: str) -> dict:
    """PEP 508 marker values of a profile's target (``3.11``, ``linux-x86_64``)."""
    machine = platform.split("-", 1)[1]
    return {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": machine, "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "platform_release": "", "platform_version": "", "implementation_version": f"{python}.0"}


def parse(where: str, metadata: bytes, version_py: bytes) -> BuildFacts:
    """BuildFacts from a torch file's METADATA and ``torch/version.py``; one-line error if unusable."""
    text = version_py.decode("utf-8", "replace")

    def value(name: str) -> str | None:
        m = re.search(_ASSIGN.format(name=re.escape(name)), text, re.M)
        if not m:
            return None
        return m.group(1) if m.group(1) is not None else (m.group(2) if m.group(2) is not None else "")

    version = value("__version__")
    cuda = value("cuda")
    if not version:
        raise WheelFactsError(f"{where}: {VERSION_PY} names no __version__", hint="is this a torch wheel?")
    if cuda is None:
        raise WheelFactsError(f"{where}: {VERSION_PY} says nothing about CUDA (no `cuda = ...`)",
                              hint="a torch build records its CUDA version there (None for CPU builds)")
    if cuda and not re.fullmatch(r"\d+\.\d+(\.\d+)?", cuda):
        raise WheelFactsError(f"{where}: {VERSION_PY} gives CUDA {cuda!r}, not a version")
    from email.parser import HeaderParser  # ~10 ms, and a warm lock never parses (facts cached by sha256)

    headers = HeaderParser().parsestr(metadata.decode("utf-8", "replace"))
    if not headers.get("Name"):
        raise WheelFactsError(f"{where}: its METADATA has no Name", hint="is this a wheel?")
    cuda = ".".join(cuda.split(".")[:2])
    return BuildFacts(version=version, cuda=cuda, hip=value("hip") or "",
                      requires=tuple(headers.get_all("Requires-Dist") or ()))


def sm(arch: int | str) -> str:
    """``90`` / ``9.0`` -> ``sm_90``."""
    text = str(arch).replace(".", "")
    return text if text.startswith("sm_") else f"sm_{text}"


def sm_sorted(archs) -> tuple[str, ...]:
    def key(a: str) -> tuple[int, str]:
        digits = re.match(r"sm_(\d+)", a)
        return (int(digits.group(1)) if digits else 0, a)

    return tuple(sorted(set(archs), key=key))
