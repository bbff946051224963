"""Facts from the pinned torch file, at lock time and whenever its wheel is at hand.

- :func:`build_facts`: what the torch file says of itself (``model.facts.BuildFacts``), cached
  by its sha256 under ``CACHE/facts/``: read from the verified cached copy when there is one,
  else by range requests on the index's file (``net.wheelmeta``), else, as a last resort, the
  whole file into the verified cache.
- :func:`read_ahead`: while the resolver works, the same for the torch file it will pick when
  the profile pins torch exactly (the index page names that file), so a cold lock does not
  read it after the resolver.
- :func:`check_variant`: a profile whose variant is not the build's is an error before any
  lock is written, naming the build and the profile line to change.
- :func:`lock_facts`: the facts a lock records, each with its source: CUDA from the wheel, the
  driver minimums from the knowledge base (plus overlays), the arch list from the binary when
  it was read, else the knowledge base, else inferred.
- :func:`binary_archs`: the arch list compiled into a local wheel's ``libtorch_cuda.so``,
  cached by sha256; :func:`drift` compares a lock's recorded facts with the knowledge base
  and with that cache (``lock --check``); :func:`warn_binary` is sync's check of a wheel it
  just installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import settings
from ..core.errors import EnvmgrError, ProfileError
from ..core.files import write_atomic
from ..core.urls import redact
from ..model.torchspec import parse_torch_spec

if TYPE_CHECKING:
    from ..model import facts as F
    from ..model.lockfile import Lock, LockedFile, LockedPackage
    from ..model.profiles import Profile


def _cache(sha256: str, kind: str) -> Path:
    return settings.cache_dir() / "facts" / sha256[:2] / f"{sha256}.{kind}.json"


def _cached(sha256: str, kind: str) -> dict | None:
    try:
        return json.loads(_cache(sha256, kind).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _remember(sha256: str, kind: str, data: dict) -> None:
    write_atomic(_cache(sha256, kind), json.dumps(data, sort_keys=True), fsync=False)


def any_cached() -> bool:
    """Whether any torch file's facts were cached (else the first lock is reading some)."""
    return (settings.cache_dir() / "facts").is_dir()


# -- what the file says of itself ---------------------------------------------------------

def build_facts(name: str, f: LockedFile, *, auth=None) -> F.BuildFacts:
    """The torch file ``f``'s own facts (cached by sha256). One-line error if it is unreadable."""
    from ..model import facts as F

    hit = _cached(f.sha256, "build")
    if hit is not None:
        return F.BuildFacts.from_json(hit)
    from ..net import fetch, wheelmeta

    where = f"{name} file {f.filename}"
    local = fetch.cached_path(f)
    try:
        if local.is_file():
            got = wheelmeta.members(local, [F.VERSION_PY])
        else:
            try:
                remote = wheelmeta.RemoteZip(f.url, auth, f.filename)
                fetch.remember_url_size(f.url, remote.size)  # the lock's size of it, when the index names none
                got = wheelmeta.members(remote, [F.VERSION_PY])
            except wheelmeta.NoRanges:
                local = fetch.fetch_one(name, f, auth=auth)  # the last resort: the whole file, verified
                got = wheelmeta.members(local, [F.VERSION_PY])
    except wheelmeta.BROKEN as exc:
        raise F.WheelFactsError(f"{where} from {redact(f.url)} is not a readable wheel ({type(exc).__name__}: {exc})",
                                hint="the index serves a broken file; nothing was written") from None
    if F.VERSION_PY not in got or "METADATA" not in got:
        missing = F.VERSION_PY if F.VERSION_PY not in got else "METADATA"
        raise F.WheelFactsError(f"{where} has no {missing}", hint="is this a torch wheel? nothing was written")
    facts = F.parse(where, got["METADATA"], got[F.VERSION_PY])
    _remember(f.sha256, "build", facts.to_json())
    return facts


def read_ahead(profile: Profile, index: str, auth=None) -> None:
    """Cache the facts of the torch file the resolver will pick, while it works (``build_facts``
    then finds them by sha256). Only for an exact pin (``==X.Y.Z``, which a torch index's
    ``X.Y.Z+cu128`` matches) with one wheel for the profile's python and platform on
    ``index``'s page; best effort: a failure here is left for ``build_facts`` to meet (and
    report) with the file the resolver did pick.

    An index that publishes no sizes (the PyTorch index's pages) leaves the lock to ask them
    after the resolver (HEAD, cached by URL): the torch file's comes free with its ranges, and
    those of the torch-family files this build requires (its triton: the newest wheel for the
    target within what the build asks) are asked now too. A wrong guess costs a request made
    while the resolver works."""
    from ..model import facts as F

    spec = parse_torch_spec(profile.torch)
    pins = [s.version for s in spec if s.operator in ("==", "===") and "*" not in s.version]
    if len(pins) != 1:
        return
    from packaging.specifiers import SpecifierSet

    from ..net import indexclient

    tags = set(indexclient.target_tags(profile.python, profile.platform))
    try:
        f = _pick(index, "torch", spec, tags, prefix=f"torch-{pins[0]}")
        if f is None:
            return
        hit = _cached(f.sha256, "build")
        if hit is None:
            from ..model.lockfile import LockedFile

            build = build_facts("torch", LockedFile(f.url, f.sha256, f.size or 0), auth=auth)
        else:
            build = F.BuildFacts.from_json(hit)
        if f.size is not None:
            return
        from ..net.fetch import url_size

        env = F.target_env(profile.python, profile.platform)
        family = family_required(build, profile)
        for name, wanted in build.requirements(env):
            if name in family:
                other = _pick(index, name, SpecifierSet(wanted), tags)
                if other is not None and other.size is None:
                    url_size(other.url, auth=auth)
    except (EnvmgrError, ValueError):
        return


def _pick(index: str, project: str, spec, tags: set, prefix: str = ""):
    """The wheel of ``project`` a resolver picks within ``spec`` on ``index`` for the target
    ``tags`` (its newest version there, which must have one such wheel, hashed), or None."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    from ..net import indexclient

    best, found = None, []
    for f in indexclient.project_page(index, project):
        if not (f.is_wheel and f.sha256 and f.filename.startswith(prefix)):
            continue
        try:
            _, version, _, wheel_tags = parse_wheel_filename(f.filename)
        except InvalidWheelFilename:
            continue
        if not wheel_tags & tags or version not in spec:
            continue
        if best is None or version > best:
            best, found = version, [f]
        elif version == best:
            found.append(f)
    return found[0] if len(found) == 1 else None


def check_variant(profile: Profile, facts: F.BuildFacts, torch_version: str, index: str) -> None:
    """ProfileError when the profile's variant is not the build's (before any lock is written)."""
    if facts.variant == profile.variant:
        return
    line = profile.where("variant")
    raise ProfileError(
        f"{line}: variant = \"{profile.variant}\", but torch {torch_version} from {index} is {facts.describe()}",
        hint=f"set variant = \"{facts.variant}\" in {line}, or pin a torch built for {profile.variant}",
    )


def family_required(facts: F.BuildFacts, profile: Profile) -> set[str]:
    """The torch-family packages this build requires on the profile's target (triton, ...)."""
    from ..model import facts as F
    from ..model.variants import kb

    env = F.target_env(profile.python, profile.platform)
    return {n for n, _ in facts.requirements(env) if kb().is_torch_family(n)}


# -- what a lock records ------------------------------------------------------------------

def lock_facts(variant: str, torch_version: str, build: F.BuildFacts | None, binary: dict | None = None,
               python: str = "3.11", platform: str = "linux-x86_64") -> tuple[dict, dict]:
    """(facts, sources) a lock records: ``cuda``, ``min-driver``, ``toolkit-driver``,
    ``arch-list``, ``ptx``, the build's ``cudnn``/``nccl``/``triton`` pins and its version
    (``build``), and the source of each of the first five."""
    from ..model import facts as F
    from ..model.variants import kb

    k = kb()
    if build is not None:
        cuda, cuda_source = build.cuda, F.WHEEL_METADATA
    else:
        cuda, cuda_source = k.cuda_of(variant), F.KNOWLEDGE_BASE
    kbf = k.facts(variant, torch_version, cuda=cuda)
    out = {"cuda": cuda, "min-driver": kbf.min_driver, "toolkit-driver": kbf.toolkit_driver,
           "arch-list": tuple(kbf.arch_list), "ptx": kbf.ptx}
    sources = {"cuda": cuda_source if cuda else "", "min-driver": kbf.source_of("min-driver"),
               "toolkit-driver": kbf.source_of("toolkit-driver"), "arch-list": kbf.source_of("arch-list"),
               "ptx": kbf.source_of("ptx")}
    if binary is not None and cuda:
        out["arch-list"], out["ptx"] = tuple(binary["arch-list"]), (binary["ptx"][-1] if binary["ptx"] else "")
        sources["arch-list"] = sources["ptx"] = F.WHEEL_BINARY
    if not cuda:
        out.update({"min-driver": "", "toolkit-driver": "", "arch-list": (), "ptx": ""})
        sources = {}
    extra = {"build": build.version if build else ""}
    if build is not None:
        extra.update(build.pins(F.target_env(python, platform)))
    return {**out, **extra}, {k2: v for k2, v in sources.items() if v}


# -- the binary ---------------------------------------------------------------------------

def binary_archs(wheel: Path, sha256: str) -> dict | None:
    """``{"arch-list": [...], "ptx": [...]}`` compiled into the wheel's ``libtorch_cuda.so``
    (None for a build without one), cached by the wheel's sha256."""
    from ..model import facts as F

    hit = _cached(sha256, "binary")
    if hit is not None:
        return hit or None
    from ..net import wheelmeta

    try:
        chunks = wheelmeta.stream_member(wheel, F.LIBTORCH_CUDA)
        found = wheelmeta.fatbin_archs(chunks) if chunks is not None else None
    except wheelmeta.BROKEN as exc:
        raise F.WheelFactsError(f"{wheel.name}: cannot read {F.LIBTORCH_CUDA} ({type(exc).__name__}: {exc})")
    data = {} if not found or not (found[0] or found[1]) else {
        "arch-list": list(F.sm_sorted(F.sm(a) for a in found[0])), "ptx": list(F.sm_sorted(F.sm(a) for a in found[1]))}
    _remember(sha256, "binary", data)
    return data or None


def cached_binary(lock: Lock) -> dict | None:
    """The lock's torch binary's arch list if it was ever read (no network, no reading)."""
    return cached_binary_of(lock.package("torch"))


def cached_binary_of(torch: LockedPackage | None) -> dict | None:
    if torch is None or not torch.files:
        return None
    return _cached(torch.install_file.sha256, "binary") or None


def torch_wheel(paths: dict[str, Path], torch: LockedPackage | None) -> Path | None:
    if torch is None or not torch.files:
        return None
    return paths.get(torch.install_file.sha256)


def binary_mismatch(lock: Lock, binary: dict | None) -> str:
    """"" when the lock's arch list is its binary's; else a line saying how they differ."""
    if not binary or not lock.meta.cuda:
        return ""
    recorded, real = tuple(lock.meta.arch_list), tuple(binary["arch-list"])
    real_ptx = binary["ptx"][-1] if binary["ptx"] else ""
    if recorded == real and lock.meta.ptx == real_ptx:
        return ""
    return (f"fact arch-list: the lock records {' '.join(recorded) or 'none'}"
            f"{' +PTX ' + lock.meta.ptx if lock.meta.ptx else ''}, its torch binary has {' '.join(real) or 'none'}"
            f"{' +PTX ' + real_ptx if real_ptx else ''}")


def warn_binary(lock: Lock, paths: dict[str, Path]) -> str:
    """After a sync: read (once per wheel) the synced torch binary's arch list; a warning line
    when the lock says otherwise, else ""."""
    torch = lock.package("torch")
    wheel = torch_wheel(paths, torch)
    if wheel is None or not lock.meta.cuda:
        return ""
    return binary_mismatch(lock, binary_archs(wheel, torch.install_file.sha256))


def warn_after_sync(lock_path: Path) -> str:
    """Sync's check, once it is done: the synced lock's torch binary (from the verified cache)
    against the arch list the lock records; "" when they agree or there is nothing to read."""
    from ..core.errors import EnvmgrError
    from ..model import lockfile
    from ..net.fetch import cached_path

    try:
        lock = lockfile.read(lock_path).for_host()  # the torch file synced here
    except EnvmgrError:
        return ""
    torch = lock.package("torch")
    if torch is None or not torch.files or not lock.meta.cuda:
        return ""
    wheel = cached_path(torch.install_file)
    return warn_binary(lock, {torch.install_file.sha256: wheel}) if wheel.is_file() else ""


def drift(lock: Lock) -> list[str]:
    """Facts the lock records that the knowledge base (plus overlays) or its torch binary
    (when read before) no longer agree with: one line each, naming the fact."""
    from ..model import facts as F
    from ..model.variants import kb

    m = lock.meta
    torch = lock.package("torch")
    if torch is None:
        return []
    binary = cached_binary(lock)
    lines = []
    mismatch = binary_mismatch(lock, binary)
    if mismatch:
        lines.append(mismatch)
    if not m.cuda:
        return lines
    sources = dict(m.sources)
    cuda = m.cuda if sources.get("cuda") == F.WHEEL_METADATA else kb().cuda_of(m.variant)
    kbf = kb().facts(m.variant, torch.version, cuda=cuda)
    expected = {"cuda": cuda, "min-driver": kbf.min_driver, "toolkit-driver": kbf.toolkit_driver,
                "arch-list": tuple(kbf.arch_list), "ptx": kbf.ptx}
    recorded = {"cuda": m.cuda, "min-driver": m.min_driver, "toolkit-driver": m.toolkit_driver,
                "arch-list": tuple(m.arch_list), "ptx": m.ptx}
    for name in F.FACTS:
        if sources.get(name) == F.WHEEL_BINARY or (name in ("arch-list", "ptx") and binary):
            continue  # the binary is the truth; compared above
        if recorded[name] != expected[name]:
            show = lambda v: " ".join(v) if isinstance(v, tuple) else v  # noqa: E731
            lines.append(f"fact {name}: the lock records {show(recorded[name]) or '(none)'}, "
                         f"the knowledge base now says {show(expected[name]) or '(none)'}")
    return lines
