"""``envmgr variants --refresh``: learn torch releases newer than the knowledge base.

Reads the default index's torch page (PyPI's releases), and for each torch minor the table
(plus overlays) does not know, reads its newest release's Linux x86_64 wheel the way a lock
does (``lock.facts``: METADATA and ``torch/version.py`` by range requests): PyPI's build is
that release's ``pypi-default`` variant, with its CUDA; the wheels' ``cpXY`` tags give its
pythons. Each variant folder of the PyTorch index (the knowledge base's template), where it
can be reached, says which variants the release has; where not, the variants are inferred
from the newest known release. A CUDA version the table lacks gets its driver minimum
inferred from its major. Arch lists are not written: a lock infers them (and says so) until
a wheel's binary is read.

The result is an overlay (``model.variants``): the user cache's ``knowledge/variants.toml``,
or ``--output FILE``; the shipped table is never changed. Offline, or on any error, nothing
is written (exit 2).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from ..core.errors import EnvmgrError, NetworkError
from ..core.files import write_atomic
from ..model import variants as V
from ..model.lockfile import LockedFile, toml_str
from ..model.profiles import PYPI
from . import facts as wheelfacts
from .resolve import concrete


@dataclass
class Learned:
    path: Path
    releases: list[dict] = field(default_factory=list)  # one per new torch minor
    variants: list[str] = field(default_factory=list)  # variants new to the knowledge base
    notes: list[str] = field(default_factory=list)
    changed: bool = False

    def to_json(self) -> dict:
        return {"overlay": str(self.path), "changed": self.changed, "releases": self.releases,
                "new_variants": self.variants, "notes": self.notes}

    def describe(self) -> str:
        if not self.releases:
            return f"no torch release newer than the knowledge base; overlay {self.path} unchanged"
        rows = [f"torch {r['torch']}: PyPI's build {r['version']} ({r['pypi-default']}, CUDA {r['cuda'] or 'none'}), "
                f"variants {', '.join(r['variants'])}{' (inferred)' if r['variants-inferred'] else ''}"
                for r in self.releases]
        new = f"; new variants: {', '.join(self.variants)}" if self.variants else ""
        return f"learned {len(self.releases)} torch release(s){new}; overlay {self.path}\n" + "\n".join(rows)


def default_overlay() -> Path:
    return V.overlay_paths()[0]


def refresh(output: Path | None = None, index_url: str = PYPI, torch_index: str | None = None,
            log=None) -> Learned:
    path = output or default_overlay()
    existing = V.read_overlay(path)  # an overlay that is not valid TOML stops here, untouched
    k = V.kb()
    template = torch_index or k.index_template
    if "{variant}" not in template:
        from ..core.errors import UserError

        raise UserError(f"--torch-index {template!r} has no {{variant}}", hint="e.g. https://host/whl/{variant}")
    from ..net import indexclient

    files = indexclient.project_page(concrete(index_url), "torch")
    if not files:
        raise NetworkError(f"the index {index_url} has no torch page", hint="check --index-url")
    by_minor: dict[str, dict[Version, list]] = {}
    known = V.version_tuple(k.newest_release().minor)
    for f in files:
        try:
            _n, version, _b, tags = parse_wheel_filename(f.filename)
        except (InvalidWheelFilename, InvalidVersion):
            continue
        if version.is_prerelease or version.is_devrelease:
            continue
        minor = f"{version.major}.{version.minor}"
        if minor in k.torch or V.version_tuple(minor) <= known:
            continue
        by_minor.setdefault(minor, {}).setdefault(version, []).append((f, tags))
    learned = Learned(path)
    overlay = {t: dict(existing.get(t, {})) for t in ("torch", "cuda", "variants", "sources")}
    overlay["arch"] = list(existing.get("arch", []))
    today = datetime.date.today().isoformat()
    newest = k.newest_release()
    for minor in sorted(by_minor, key=V.version_tuple):
        version = max(by_minor[minor])
        linux = [(f, tags) for f, tags in by_minor[minor][version]
                 if any(t.platform.endswith("x86_64") and t.platform.startswith("manylinux") for t in tags)]
        if not linux:
            learned.notes.append(f"torch {version}: no Linux x86_64 wheel on {index_url}; skipped")
            continue
        pythons = sorted({f"{t.interpreter[2]}.{t.interpreter[3:]}" for _f, tags in linux for t in tags
                          if t.interpreter.startswith("cp") and t.abi.startswith("cp") and not t.abi.endswith("t")},
                         key=V.version_tuple)
        f = max(linux, key=lambda item: item[0].filename)[0]
        if not f.sha256 or f.size is None:
            from ..net.fetch import url_digest

            sha, size = url_digest(f.url)  # an index publishing no hash: once, cached by URL
        else:
            sha, size = f.sha256, f.size
        build = wheelfacts.build_facts("torch", LockedFile(f.url, sha, size))
        variant = build.variant
        found, reachable = [], None
        for candidate in dict.fromkeys([*k.variant_cuda, variant]):
            if candidate == "cpu" or reachable is False:
                continue
            try:
                page = indexclient.project_page(template.format(variant=candidate), "torch")
            except EnvmgrError:
                reachable = reachable or False  # the first folder unreachable: the index is
                continue
            reachable = True
            if any(_minor_of(x.filename) == minor for x in page):
                found.append(candidate)
        reachable = bool(reachable)
        inferred = not reachable
        variants = found if reachable else sorted({*newest.variants, *([variant] if build.cuda else [])},
                                                  key=lambda v: V.version_tuple(k.cuda_of(v) or v[2:]))
        if build.cuda and variant not in variants:
            variants.append(variant)
        if not reachable:
            learned.notes.append(f"torch {minor}: the PyTorch index ({template}) was not reachable; variants inferred")
        if build.cuda and variant not in k.variant_cuda:
            overlay["variants"][variant] = {"cuda": build.cuda, "source": f"refresh {today}: {f.filename}"}
            learned.variants.append(variant)
        if build.cuda and build.cuda not in k.cuda:
            info, _ = k.cuda_info(build.cuda)
            if info is not None:
                overlay["cuda"][build.cuda] = {"min-driver": info.min_driver, "toolkit-driver": info.toolkit_driver,
                                               "source": f"inferred from CUDA {info.version}"}
        pins = build.pins()
        overlay["torch"][minor] = {
            "variants": [v for v in variants if v.startswith("cu")],
            "pypi-default": variant,
            "rocm": [] if reachable else list(newest.rocm),
            "python": pythons,
            "torchvision": "",
            "torchaudio": "",
            "source": (f"refresh {today}: {f.filename} ({build.version}, CUDA {build.cuda or 'none'}, cuDNN "
                       f"{pins['cudnn'] or '-'}, NCCL {pins['nccl'] or '-'}, triton {pins['triton'] or '-'})"
                       + ("; variants and ROCm inferred" if inferred else "; variants from the PyTorch index")),
        }
        learned.releases.append({"torch": minor, "version": build.version, "pypi-default": variant,
                                 "cuda": build.cuda, "python": pythons, "variants": overlay["torch"][minor]["variants"],
                                 "variants-inferred": inferred, "file": f.filename})
    if learned.releases:
        overlay["sources"].setdefault("refresh", "learned by `envmgr variants --refresh` from the wheels themselves")
        text = render(overlay)
        V.build(V.merge(_base_raw(), V.read_overlay_text(text, path)), str(path))  # it must load before it is written
        learned.changed = write_atomic(path, text)
    return learned


def _minor_of(filename: str) -> str:
    try:
        version = parse_wheel_filename(filename)[1]
    except (InvalidWheelFilename, InvalidVersion):
        return ""
    return f"{version.major}.{version.minor}"


def _base_raw() -> dict:
    from ..core.compat import tomllib

    return tomllib.loads(V.BASE.read_text("utf-8"))


def _value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return toml_str(str(v))


def render(overlay: dict) -> str:
    out = ["# envmgr variants overlay: written by `envmgr variants --refresh`; laid over the shipped table.",
           "# Review it like code before committing it beside profiles/ (as variants.toml)."]
    for table in ("sources", "variants", "cuda", "torch"):
        entries = overlay.get(table, {})
        if table == "sources" and entries:
            out += ["", "[sources]", *(f"{toml_str(k)} = {_value(v)}" for k, v in sorted(entries.items()))]
            continue
        for key in sorted(entries, key=lambda x: V.version_tuple(x) if table != "variants" else (0,)):
            out += ["", f"[{table}.{toml_str(key)}]", *(f"{k} = {_value(v)}" for k, v in entries[key].items())]
    for entry in overlay.get("arch", []):
        out += ["", "[[arch]]", *(f"{k} = {_value(v)}" for k, v in entry.items())]
    return "\n".join(out) + "\n"
