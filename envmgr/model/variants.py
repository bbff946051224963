"""The variant knowledge base: which index, which CUDA, which driver, which GPUs.

Reads ``envmgr/data/variants.toml`` (the only place these facts are written down) into
frozen dataclasses. Every other module asks this one; nothing else hard-codes them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from ..core.compat import tomllib
from .gpucompat import driver_at_least, version_tuple
from .names import canonical

_VARIANT_RE = re.compile(r"^(cpu|cu\d{3}|rocm\d+\.\d+(\.\d+)?|xpu)$")


@dataclass(frozen=True)
class CudaInfo:
    version: str
    min_driver: str  # minor-version compatibility minimum
    toolkit_driver: str  # the toolkit's own driver: needed for PTX JIT
    source: str


@dataclass(frozen=True)
class TorchRelease:
    minor: str
    variants: tuple[str, ...]  # CUDA variants
    pypi_default: str
    rocm: tuple[str, ...]
    python: tuple[str, ...]
    torchvision: str
    torchaudio: str
    source: str

    @property
    def all_variants(self) -> tuple[str, ...]:
        """Every variant of this release on the PyTorch index: cpu, CUDA, ROCm."""
        return ("cpu", *self.variants, *(f"rocm{r}" for r in self.rocm))

    def has_variant(self, variant: str) -> bool:
        return variant in self.all_variants


@dataclass(frozen=True)
class ArchList:
    variant: str
    torch: str  # specifier over torch versions
    archs: tuple[str, ...]  # "8.6", "9.0", ...
    ptx: str  # arch whose PTX is embedded, or ""
    source: str

    @property
    def sm(self) -> tuple[str, ...]:
        """The list as ``torch.cuda.get_arch_list()`` spells it (``sm_86``)."""
        return tuple("sm_" + a.replace(".", "") for a in self.archs)


@dataclass(frozen=True)
class VariantFacts:
    """What a lock records about its variant: looked up once, at lock time."""

    variant: str
    cuda: str
    min_driver: str
    toolkit_driver: str
    arch_list: tuple[str, ...]
    ptx: str
    sources: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class KnowledgeBase:
    index_template: str
    torch_family: frozenset[str]
    cuda_runtime_family: tuple[str, ...]
    rocm_runtime_family: tuple[str, ...]
    variant_cuda: dict[str, str]
    cuda: dict[str, CudaInfo]
    torch: dict[str, TorchRelease]
    arch: tuple[ArchList, ...]
    sources: dict[str, str]

    # -- variants -------------------------------------------------------------------------
    def is_known_variant(self, variant: str) -> bool:
        if variant in self.variant_cuda:
            return True
        return variant.startswith("rocm") and any(
            variant == f"rocm{r}" for rel in self.torch.values() for r in rel.rocm
        )

    def known_variants(self) -> list[str]:
        rocm = sorted({f"rocm{r}" for rel in self.torch.values() for r in rel.rocm}, key=version_tuple)
        return [*self.variant_cuda, *rocm]

    def cuda_of(self, variant: str) -> str:
        """The CUDA version of a variant, "" for cpu/rocm/xpu."""
        return self.variant_cuda.get(variant, "")

    def index_url(self, variant: str) -> str:
        return self.index_template.format(variant=variant)

    def driver_for_cuda(self, cuda: str) -> CudaInfo | None:
        return self.cuda.get(cuda)

    # -- torch releases -------------------------------------------------------------------
    def release(self, version: str) -> TorchRelease | None:
        """The release entry for a torch version (``2.7.1+cu118`` -> the 2.7 entry)."""
        try:
            v = Version(version)
        except InvalidVersion:
            return None
        return self.torch.get(f"{v.major}.{v.minor}")

    def releases_admitted(self, spec: str) -> list[TorchRelease]:
        """Known torch releases with at least one patch version (x.y.0 .. x.y.9) in ``spec``."""
        specifier = parse_torch_spec(spec)
        out = []
        for rel in self.torch.values():
            candidates = (Version(f"{rel.minor}.{patch}") for patch in range(10))
            if any(specifier.contains(c, prereleases=True) for c in candidates):
                out.append(rel)
        return out

    def releases_with_variant(self, variant: str) -> list[str]:
        return [m for m, rel in self.torch.items() if rel.has_variant(variant)]

    def newest_release(self) -> TorchRelease:
        return max(self.torch.values(), key=lambda r: version_tuple(r.minor))

    # -- GPUs -----------------------------------------------------------------------------
    def arch_list(self, variant: str, torch_version: str) -> ArchList | None:
        try:
            v = Version(torch_version)
        except InvalidVersion:
            return None
        base = Version(v.base_version)
        for entry in self.arch:
            if entry.variant == variant and SpecifierSet(entry.torch).contains(base):
                return entry
        return None

    def facts(self, variant: str, torch_version: str) -> VariantFacts:
        """Everything a lock records about (variant, torch version); "" where unknown."""
        cuda = self.cuda_of(variant)
        info = self.driver_for_cuda(cuda) if cuda else None
        arch = self.arch_list(variant, torch_version) if cuda else None
        return VariantFacts(
            variant=variant,
            cuda=cuda,
            min_driver=info.min_driver if info else "",
            toolkit_driver=info.toolkit_driver if info else "",
            arch_list=arch.sm if arch else (),
            ptx=("sm_" + arch.ptx.replace(".", "")) if arch and arch.ptx else "",
            sources=tuple(s for s in (info.source if info else "", arch.source if arch else "") if s),
        )

    def variants_for_driver(self, driver: str) -> list[str]:
        """CUDA variants whose minor-version minimum this driver meets, oldest first."""
        return [
            v
            for v, cuda in self.variant_cuda.items()
            if cuda and cuda in self.cuda and driver_at_least(driver, self.cuda[cuda].min_driver)
        ]

    def is_torch_family(self, name: str) -> bool:
        return canonical(name) in self.torch_family


def parse_torch_spec(spec: str) -> SpecifierSet:
    """``"2.7.1"`` means ``==2.7.1``; anything else must be a PEP 440 specifier."""
    text = spec.strip()
    if text and text[0].isdigit():
        text = "==" + text
    try:
        return SpecifierSet(text)
    except InvalidSpecifier as exc:
        raise ValueError(f"not a version or specifier: {spec!r}") from exc


def is_variant_name(variant: str) -> bool:
    return bool(_VARIANT_RE.match(variant))


@functools.cache
def kb() -> KnowledgeBase:
    # Read beside this module (the package is installed as files: wheel, editable, tool
    # venv): importlib.resources would cost every command ~4 ms of imports.
    raw = tomllib.loads((Path(__file__).parent / "data" / "variants.toml").read_text("utf-8"))
    idx = raw["index"]
    return KnowledgeBase(
        index_template=idx["url"],
        torch_family=frozenset(canonical(n) for n in idx["torch-family"]),
        cuda_runtime_family=tuple(idx["cuda-runtime-family"]),
        rocm_runtime_family=tuple(idx["rocm-runtime-family"]),
        variant_cuda={name: entry["cuda"] for name, entry in raw["variants"].items()},
        cuda={
            ver: CudaInfo(ver, e["min-driver"], e["toolkit-driver"], e["source"])
            for ver, e in raw["cuda"].items()
        },
        torch={
            minor: TorchRelease(
                minor=minor,
                variants=tuple(e["variants"]),
                pypi_default=e["pypi-default"],
                rocm=tuple(e["rocm"]),
                python=tuple(e["python"]),
                torchvision=e["torchvision"],
                torchaudio=e["torchaudio"],
                source=e["source"],
            )
            for minor, e in raw["torch"].items()
        },
        arch=tuple(
            ArchList(e["variant"], e["torch"], tuple(e["list"]), e["ptx"], e["source"])
            for e in raw["arch"]
        ),
        sources=dict(raw["sources"]),
    )
