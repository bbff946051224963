"""The variant knowledge base: which index, which CUDA, which driver, which GPUs.

Reads ``envmgr/model/data/variants.toml`` (the reviewed base: the only place these facts are
written down in envmgr) into frozen dataclasses, with the overlays ``envmgr variants
--refresh`` writes laid over it: ``CACHE/knowledge/variants.toml`` (the user's) and the
project's ``variants.toml`` beside ``profiles/`` (committed, wins). An overlay's tables add
or replace entries of the same name; its ``[[arch]]`` entries come before the base's. Every
other module asks this one; nothing else hard-codes them.

A fact the tables do not hold is inferred, and says so (``VariantFacts.sources``): the arch
list of the nearest known release of the same variant (else of the same CUDA major), the
driver minimum of the newest known CUDA of the same major.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from ..core.compat import tomllib
from ..core.errors import UserError
from .gpucompat import driver_at_least, version_tuple
from .names import canonical
from .sourced import Sourced
from .torchspec import is_variant_name, parse_torch_spec  # noqa: F401 - part of this module's API


@dataclass(frozen=True)
class CudaInfo:
    version: str
    min_driver: str  # minor-version compatibility minimum
    toolkit_driver: str  # the toolkit's own driver: needed for PTX JIT
    source: str
    toolkit_source: str = ""  # when the toolkit's driver has a source of its own

    @property
    def toolkit_known(self) -> bool:
        """The toolkit's own driver is recorded from a source, not inferred: a driver that meets
        it supports this CUDA in full (what a driver's own "CUDA Version" is read back from)."""
        return bool(self.toolkit_driver) and not _is_inferred(self.source) and not _is_inferred(self.toolkit_source)


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
class VariantFacts(Sourced):
    """What a lock records about its variant: looked up once, at lock time."""

    variant: str
    cuda: str
    min_driver: str
    toolkit_driver: str
    arch_list: tuple[str, ...]
    ptx: str
    sources: tuple[str, ...] = field(default=())
    # fact name (min-driver, toolkit-driver, arch-list, ptx) -> knowledge-base | inferred
    origin: tuple[tuple[str, str], ...] = field(default=())

    _SOURCES = "origin"  # Sourced reads the pairs from there (a class attribute, not a field)


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
    where: str = ""  # the overlay files it was read with, for errors

    def _torch_range(self, entry: ArchList):
        """An arch entry's ``torch`` specifier, parsed when first asked for: packaging's
        specifiers cost ~20 ms of imports, and a lock reads the table before its resolver
        starts without needing them. A bad one is the table's one-line error."""
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            return SpecifierSet(entry.torch)
        except InvalidSpecifier as exc:
            raise _bad_entry(self.where, exc) from None

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
            if entry.variant == variant and self._torch_range(entry).contains(base):
                return entry
        return None

    def cuda_info(self, cuda: str) -> tuple[CudaInfo | None, bool]:
        """(the driver facts of a CUDA version, inferred?): a version the table lacks takes the
        newest known one of its major (13.4 -> 13.2's)."""
        info = self.cuda.get(cuda)
        if info is not None or not cuda:
            return info, bool(info and _is_inferred(info.source))
        same = [v for v in self.cuda if v.split(".")[0] == cuda.split(".")[0]]
        if not same:
            return None, False
        return self.cuda[max(same, key=version_tuple)], True

    def arch_for(self, variant: str, torch_version: str, cuda: str = "") -> tuple[ArchList | None, bool]:
        """(the arch list entry, inferred?): the table's, else the nearest known release's of
        the same variant, else of the same CUDA major (newest)."""
        entry = self.arch_list(variant, torch_version)
        if entry is not None:
            return entry, _is_inferred(entry.source)
        cuda = cuda or self.cuda_of(variant)
        if not cuda:
            return None, False
        try:
            want = Version(Version(torch_version).base_version)
        except InvalidVersion:
            return None, False

        def lowest(e: ArchList) -> Version:
            bounds = [Version(s.version) for s in self._torch_range(e) if s.operator in (">=", "==", "~=")]
            return min(bounds) if bounds else Version("0")

        same = [e for e in self.arch if e.variant == variant]
        if not same:
            major = cuda.split(".")[0]
            same = [e for e in self.arch if self.cuda_of(e.variant).split(".")[0] == major]
        if not same:
            return None, False
        older = [e for e in same if lowest(e) <= want]
        pick = max(older or same, key=lambda e: (lowest(e), version_tuple(self.cuda_of(e.variant))))
        return pick, True

    def facts(self, variant: str, torch_version: str, cuda: str | None = None) -> VariantFacts:
        """Everything a lock records about (variant, torch version); "" where unknown. ``cuda``:
        the build's own CUDA version when read from its wheel (else the variant's)."""
        cuda = self.cuda_of(variant) if cuda is None else cuda
        info, info_inferred = self.cuda_info(cuda) if cuda else (None, False)
        arch, arch_inferred = self.arch_for(variant, torch_version, cuda) if cuda else (None, False)
        origin = []
        if info:
            origin += [("min-driver", "inferred" if info_inferred else "knowledge-base"),
                       ("toolkit-driver", "inferred" if info_inferred or _is_inferred(info.toolkit_source)
                        else "knowledge-base")]
        if arch:
            origin += [("arch-list", "inferred" if arch_inferred else "knowledge-base"),
                       ("ptx", "inferred" if arch_inferred else "knowledge-base")]
        return VariantFacts(
            variant=variant,
            cuda=cuda,
            min_driver=info.min_driver if info else "",
            toolkit_driver=info.toolkit_driver if info else "",
            arch_list=arch.sm if arch else (),
            ptx=("sm_" + arch.ptx.replace(".", "")) if arch and arch.ptx else "",
            sources=tuple(s for s in (info.source if info else "", arch.source if arch else "") if s)
            + (("inferred",) if (info_inferred or arch_inferred) and not any(
                _is_inferred(x) for x in (info.source if info else "", arch.source if arch else "")) else ()),
            origin=tuple(origin),
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


def _is_inferred(source: str) -> bool:
    return source.strip().lower().startswith("inferred")


BASE = Path(__file__).parent / "data" / "variants.toml"


def overlay_paths() -> list[Path]:
    """Where overlays are read from, weakest first: the user's cache, then the project's."""
    from ..core.settings import cache_dir, find_project

    return [cache_dir() / "knowledge" / "variants.toml", find_project() / "variants.toml"]


def read_overlay(path: Path) -> dict:
    """An overlay's tables ({} when the file does not exist); one-line error when unreadable."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the variants overlay: {exc}")
    return read_overlay_text(text, path)


def read_overlay_text(text: str, path: Path) -> dict:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: the variants overlay is not valid TOML: {exc}",
                        hint="fix it, or delete it and run `envmgr variants --refresh`")
    for table in ("torch", "cuda", "variants", "sources"):
        if not isinstance(data.get(table, {}), dict):
            raise UserError(f"{path}: [{table}] must be a table of tables")
    if not isinstance(data.get("arch", []), list):
        raise UserError(f"{path}: arch must be an array of tables ([[arch]])")
    return data


def merge(base: dict, overlay: dict) -> dict:
    """``overlay`` laid over ``base`` (see the module doc)."""
    out = dict(base)
    for table in ("torch", "cuda", "variants", "sources"):
        if table in overlay:
            out[table] = {**base.get(table, {}), **overlay[table]}
    if overlay.get("arch"):
        out["arch"] = [*overlay["arch"], *base.get("arch", [])]
    return out


@functools.cache
def kb() -> KnowledgeBase:
    # Read beside this module (the package is installed as files: wheel, editable, tool
    # venv): importlib.resources would cost every command ~4 ms of imports.
    raw = tomllib.loads(BASE.read_text("utf-8"))
    for path in overlay_paths():
        if path.is_file():
            raw = merge(raw, read_overlay(path))
    return build(raw, where=" or ".join(str(p) for p in overlay_paths()))


def _bad_entry(where: str, exc: Exception) -> UserError:
    return UserError(f"the variants knowledge base (with the overlay {where}) has a bad entry: "
                     f"{type(exc).__name__}: {exc}", hint="fix or delete the overlay")


def build(raw: dict, where: str = "") -> KnowledgeBase:
    try:
        return _build(raw, where)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _bad_entry(where, exc)


def _build(raw: dict, where: str) -> KnowledgeBase:
    idx = raw["index"]
    return KnowledgeBase(
        index_template=idx["url"],
        torch_family=frozenset(canonical(n) for n in idx["torch-family"]),
        cuda_runtime_family=tuple(idx["cuda-runtime-family"]),
        rocm_runtime_family=tuple(idx["rocm-runtime-family"]),
        variant_cuda={name: entry["cuda"] for name, entry in raw["variants"].items()},
        cuda={
            ver: CudaInfo(ver, e["min-driver"], e["toolkit-driver"], e["source"], e.get("toolkit-source", ""))
            for ver, e in raw["cuda"].items()
        },
        torch=dict(sorted((
            (minor, TorchRelease(
                minor=minor,
                variants=tuple(e["variants"]),
                pypi_default=e["pypi-default"],
                rocm=tuple(e["rocm"]),
                python=tuple(e["python"]),
                torchvision=e["torchvision"],
                torchaudio=e["torchaudio"],
                source=e["source"],
            ))
            for minor, e in raw["torch"].items()
        ), key=lambda item: version_tuple(item[0]))),
        arch=tuple(
            ArchList(e["variant"], e["torch"], tuple(e["list"]), e["ptx"], e["source"])
            for e in raw["arch"]
        ),
        sources=dict(raw["sources"]),
        where=where,
    )
