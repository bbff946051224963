"""The lock model and its PEP 751 serialisation (``locks/pylock.NAME.toml``).

A lock is a frozen value: packages (name, version, the index it came from, every file for
the target with url, size and sha256) plus envmgr's ``[tool.envmgr]`` table (profile, the
inputs that affect resolution and their fingerprint, the resolver, the variant's CUDA
facts). ``dumps`` is deterministic: the same lock gives the same bytes; no timestamps, no
credentials. Reading is strict: a file that is not a PEP 751 lock is a one-line error.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..core.compat import tomllib
from ..core.errors import LockFileError
from ..core.settings import lock_path  # noqa: F401 - part of the lock model's API
from .names import canonical
from .platforms import PLATFORMS, host, wheel_fits
from .sourced import Sourced
from .tomltext import toml_str

LOCK_VERSION = "1.0"
FORMAT = 1  # [tool.envmgr] format; bump when the table's meaning changes


@dataclass(frozen=True)
class LockedFile:
    url: str
    sha256: str
    size: int

    @property
    def filename(self) -> str:
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    index: str
    wheels: tuple[LockedFile, ...] = ()
    sdist: LockedFile | None = None
    marker: str | None = None
    # In a lock for several platforms: the platforms this entry is for, when not all of
    # them (a package one platform lacks, or pinned apart); () = every platform of the lock.
    # Written as ``tool.envmgr.platforms``; the marker says the same to other installers.
    platforms: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return canonical(self.name)

    @property
    def files(self) -> tuple[LockedFile, ...]:
        return self.wheels + ((self.sdist,) if self.sdist else ())

    @property
    def install_file(self) -> LockedFile:
        """The file sync and export install: the first wheel, else the sdist."""
        return self.wheels[0] if self.wheels else self.sdist  # type: ignore[return-value]

    @property
    def size(self) -> int:
        return self.install_file.size if self.files else 0


@dataclass(frozen=True)
class LockMeta(Sourced):
    """The ``[tool.envmgr]`` table."""

    profile: str
    fingerprint: str
    inputs: dict  # input name -> value (str or list[str]); the fingerprint covers these
    resolver: str
    resolver_version: str
    python: str
    platform: str
    variant: str
    torch_index: str
    cuda: str = ""
    min_driver: str = ""
    toolkit_driver: str = ""
    arch_list: tuple[str, ...] = ()
    ptx: str = ""
    # What the torch file says of itself (``model.facts``): its version with the local label,
    # and the cuDNN, NCCL and triton it pins; "" for a lock made before envmgr read them.
    build: str = ""
    cudnn: str = ""
    nccl: str = ""
    triton: str = ""
    # fact (cuda, min-driver, toolkit-driver, arch-list, ptx) -> where it came from
    # (wheel-metadata, wheel-binary, knowledge-base, inferred); pairs, sorted
    sources: tuple[tuple[str, str], ...] = ()
    # A lock for several platforms: all of them (``platform`` is the first); () for one.
    platforms: tuple[str, ...] = ()
    # platform -> the facts above (TOML keys) where that platform's torch file differs from
    # the first platform's: pairs, values str or tuple; "sources" holds pairs of its own
    platform_facts: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()

    _SOURCES = "sources"  # Sourced reads the pairs from there (a class attribute, not a field)

    @property
    def all_platforms(self) -> tuple[str, ...]:
        return self.platforms or (self.platform,)


# the [tool.envmgr] facts a platform may state apart (its LockMeta field: the key with "_" for "-")
PLATFORM_FACTS = ("cuda", "min-driver", "toolkit-driver", "arch-list", "ptx", "build", "cudnn", "nccl", "triton", "sources")


@dataclass(frozen=True)
class Lock:
    packages: tuple[LockedPackage, ...]
    meta: LockMeta
    requires_python: str = ""
    environments: tuple[str, ...] = ()
    path: Path | None = field(default=None, compare=False)

    def package(self, name: str) -> LockedPackage | None:
        key = canonical(name)
        return next((p for p in self.packages if p.key == key), None)

    @property
    def platforms(self) -> tuple[str, ...]:
        return self.meta.all_platforms

    def for_host(self) -> "Lock":
        """The view of the machine envmgr runs on (what sync installs)."""
        return self.for_platform(host(), "")

    def for_platform(self, platform: str, where: str = "") -> "Lock":
        """The lock as one platform sees it: that platform's entries and files, its facts.

        A one-platform lock is its own view. LockFileError (exit 2) names the platforms the
        lock has when ``platform`` is not one of them.
        """
        have = self.platforms
        if platform not in have:
            name = where or (str(self.path) if self.path else f"the lock of {self.meta.profile}")
            raise LockFileError(
                f"{name} is for {', '.join(have)}, not {platform}{' (this machine)' if platform == host() else ''}",
                hint=f"add {platform!r} to the profile's platform list and run `envmgr lock {self.meta.profile}`",
            )
        if len(have) == 1:
            return self
        packages = []
        for p in self.packages:
            if p.platforms and platform not in p.platforms:
                continue
            wheels = tuple(w for w in p.wheels if wheel_fits(w.filename, platform))
            if wheels or p.sdist:
                packages.append(replace(p, wheels=wheels, platforms=()))
        changes = {k.replace("-", "_"): v for k, v in dict(self.meta.platform_facts).get(platform, ())}
        meta = replace(self.meta, platform=platform, platforms=(), platform_facts=(), **changes)
        return replace(self, packages=tuple(packages), meta=meta, environments=(PLATFORMS[platform][1],))

    @property
    def pins(self) -> dict[str, str]:
        return {p.key: p.version for p in self.packages}

    @property
    def download_size(self) -> int:
        return sum(p.size for p in self.packages)

    def dumps(self, local: dict[str, Path] | None = None) -> str:
        return dumps(self, local)

    def digest(self) -> str:
        """sha256 of the serialised lock: what sync stamps and images label."""
        import hashlib

        return "sha256:" + hashlib.sha256(self.dumps().encode()).hexdigest()

    def with_packages(self, packages) -> "Lock":
        return replace(self, packages=tuple(sorted(packages, key=lambda p: p.key)))


# -- fingerprint --------------------------------------------------------------------------

def fingerprint(inputs: dict) -> str:
    import hashlib  # where used: loading OpenSSL costs `lock` ~3 ms before the resolver starts

    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def changed_inputs(old: dict, new: dict) -> list[str]:
    """Human lines naming each input that differs: ``python: 3.11 -> 3.12``."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, list) or isinstance(b, list):
            a_set, b_set = set(a or []), set(b or [])
            parts = [f"+{x}" for x in sorted(b_set - a_set)] + [f"-{x}" for x in sorted(a_set - b_set)]
            lines.append(f"{key}: {', '.join(parts) or 'order changed'}")
        else:
            lines.append(f"{key}: {a if a not in (None, '') else '(none)'} -> {b if b not in (None, '') else '(none)'}")
    return lines


# -- serialisation ------------------------------------------------------------------------

def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def _file_table(f: LockedFile, local: dict[str, Path]) -> str:
    where = {"path": str(local[f.sha256])} if f.sha256 in local else {"url": f.url}
    return _value({"name": f.filename, **where, "size": f.size, "hashes": {"sha256": f.sha256}})


def dumps(lock: Lock, local: dict[str, Path] | None = None) -> str:
    """The lock as PEP 751 TOML, byte for byte the same for the same lock.

    Written directly (the schema is fixed and flat): ten times faster than building a
    tomlkit document, in the layout tomlkit gave (the committed lock round-trips).
    ``local`` (sha256 -> path) names verified local copies: those files get ``path``
    instead of ``url`` (the lock uv installs from envmgr's cache).
    """
    local = local or {}
    m = lock.meta
    out = [f"# envmgr lock for profile {m.profile!r}; regenerate with: envmgr lock {m.profile}",
           f"lock-version = {toml_str(LOCK_VERSION)}"]
    if lock.environments:
        out.append(f"environments = {_value(list(lock.environments))}")
    if lock.requires_python:
        out.append(f"requires-python = {toml_str(lock.requires_python)}")
    out.append('created-by = "envmgr"')
    for pkg in sorted(lock.packages, key=lambda p: p.key):
        out += ["", "[[packages]]", f"name = {toml_str(pkg.key)}", f"version = {toml_str(pkg.version)}"]
        if pkg.marker:
            out.append(f"marker = {toml_str(pkg.marker)}")
        out.append(f"index = {toml_str(pkg.index)}")
        if pkg.platforms:
            out.append(f"tool.envmgr.platforms = {_value(list(pkg.platforms))}")
        if pkg.sdist:
            out.append(f"sdist = {_file_table(pkg.sdist, local)}")
        if pkg.wheels:
            out += ["wheels = [", *(f"    {_file_table(w, local)}," for w in pkg.wheels), "]"]
    tool = {
        "format": FORMAT, "profile": m.profile, "fingerprint": m.fingerprint, "resolver": m.resolver,
        "resolver-version": m.resolver_version, "python": m.python,
        "platform": list(m.platforms) if m.platforms else m.platform, "variant": m.variant,
        "torch-index": m.torch_index, "cuda": m.cuda, "min-driver": m.min_driver, "toolkit-driver": m.toolkit_driver,
        "arch-list": list(m.arch_list), "ptx": m.ptx,
    }
    tool.update({k: v for k, v in (("build", m.build), ("cudnn", m.cudnn), ("nccl", m.nccl), ("triton", m.triton)) if v})
    out += ["", "[tool.envmgr]", *(f"{k} = {_value(v)}" for k, v in tool.items())]
    out += ["", "[tool.envmgr.inputs]", *(f"{k} = {_value(m.inputs[k])}" for k in sorted(m.inputs))]
    if m.sources:
        out += ["", "[tool.envmgr.sources]", *(f"{k} = {_value(v)}" for k, v in m.sources)]
    for platform, facts in m.platform_facts:
        table = f"[tool.envmgr.platform-facts.{toml_str(platform)}]"
        out += ["", table, *(f"{k} = {_value(v)}" for k, v in facts if k != "sources")]
        sources = dict(facts).get("sources")
        if sources:
            out += ["", f"[tool.envmgr.platform-facts.{toml_str(platform)}.sources]",
                    *(f"{k} = {_value(v)}" for k, v in sources)]
    return "\n".join(out) + "\n"


def _file(raw: dict, where: str) -> LockedFile:
    try:
        return LockedFile(url=raw["url"], sha256=raw["hashes"]["sha256"], size=int(raw["size"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise LockFileError(f"{where}: a file entry lacks url, size or hashes.sha256 ({exc})")


def loads(text: str, path: Path | str = "<lock>") -> Lock:
    """Parse and check a lock's text; a Lock is immutable, so the same text is parsed once
    per process (sync reads its lock up to five times: freshness, plan, under the venv lock)."""
    return _loads(text, str(path))


@functools.lru_cache(maxsize=16)
def _loads(text: str, path: str) -> Lock:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockFileError(f"{path}: not valid TOML: {exc}", hint="regenerate it with `envmgr lock`")
    if raw.get("lock-version") != LOCK_VERSION or not isinstance(raw.get("packages"), list):
        raise LockFileError(
            f"{path}: not a PEP 751 lock (lock-version {raw.get('lock-version')!r})",
            hint="regenerate it with `envmgr lock`",
        )
    tool = raw.get("tool", {}).get("envmgr")
    if not isinstance(tool, dict):
        raise LockFileError(f"{path}: no [tool.envmgr] table: not written by envmgr", hint="regenerate it with `envmgr lock`")
    packages = []
    for i, p in enumerate(raw["packages"]):
        where = f"{path}: packages[{i}]"
        if not isinstance(p, dict) or "name" not in p or "version" not in p:
            raise LockFileError(f"{where}: lacks name or version")
        where = f"{path}: package {p['name']}"
        sdist = _file(p["sdist"], where) if "sdist" in p else None
        wheels = tuple(_file(w, where) for w in p.get("wheels", []))
        if not wheels and not sdist:
            raise LockFileError(f"{where}: has no files", hint="regenerate it with `envmgr lock`")
        platforms = (p.get("tool") or {}).get("envmgr", {}).get("platforms", [])
        if not isinstance(platforms, list) or not all(isinstance(x, str) for x in platforms):
            raise LockFileError(f"{where}: tool.envmgr.platforms is not a list of platforms", hint="regenerate it with `envmgr lock`")
        packages.append(
            LockedPackage(
                name=canonical(p["name"]),
                version=str(p["version"]),
                index=p.get("index", ""),
                wheels=wheels,
                sdist=sdist,
                marker=p.get("marker"),
                platforms=tuple(platforms),
            )
        )
    platform = tool.get("platform")
    listed = platform if isinstance(platform, list) else [platform] if isinstance(platform, str) else []
    if not listed or any(x not in PLATFORMS for x in listed) or len(set(listed)) != len(listed):
        raise LockFileError(f"{path}: [tool.envmgr] platform {platform!r} is not a platform or a list of distinct ones",
                            hint=f"known: {', '.join(PLATFORMS)}; regenerate it with `envmgr lock`")
    try:
        meta = LockMeta(
            profile=tool["profile"],
            fingerprint=tool["fingerprint"],
            inputs=dict(tool.get("inputs", {})),
            resolver=tool["resolver"],
            resolver_version=tool["resolver-version"],
            python=tool["python"],
            platform=listed[0],
            platforms=tuple(listed) if len(listed) > 1 else (),
            platform_facts=_platform_facts(tool.get("platform-facts", {}), listed, path),
            variant=tool["variant"],
            torch_index=tool.get("torch-index", ""),
            cuda=tool.get("cuda", ""),
            min_driver=tool.get("min-driver", ""),
            toolkit_driver=tool.get("toolkit-driver", ""),
            arch_list=tuple(tool.get("arch-list", ())),
            ptx=tool.get("ptx", ""),
            build=tool.get("build", ""),
            cudnn=tool.get("cudnn", ""),
            nccl=tool.get("nccl", ""),
            triton=tool.get("triton", ""),
            sources=tuple(sorted((str(k), str(v)) for k, v in (tool.get("sources") if isinstance(tool.get("sources"), dict) else {}).items())),
        )
    except KeyError as exc:
        raise LockFileError(f"{path}: [tool.envmgr] lacks {exc.args[0]!r}", hint="regenerate it with `envmgr lock`")
    if fingerprint(meta.inputs) != meta.fingerprint:
        raise LockFileError(
            f"{path}: [tool.envmgr] fingerprint does not match its inputs (edited by hand?)",
            hint="regenerate it with `envmgr lock`",
        )
    lock = Lock(
        packages=tuple(packages),
        meta=meta,
        requires_python=raw.get("requires-python", ""),
        environments=tuple(raw.get("environments", ())),
        path=Path(path) if path != "<lock>" else None,
    )
    check_consistency(lock, path)
    return lock


def _platform_facts(raw, platforms: list[str], path: str) -> tuple:
    """``[tool.envmgr.platform-facts.PLATFORM]`` tables as LockMeta keeps them (pairs, sorted)."""
    if not isinstance(raw, dict) or any(k not in platforms[1:] or not isinstance(v, dict) for k, v in raw.items()) \
            or any(key not in PLATFORM_FACTS for v in raw.values() for key in v):
        raise LockFileError(f"{path}: [tool.envmgr.platform-facts] names a platform or fact the lock does not have",
                            hint="regenerate it with `envmgr lock`")

    def value(key, v):
        if key == "sources":
            return tuple(sorted((str(a), str(b)) for a, b in v.items()))
        return tuple(v) if isinstance(v, list) else v

    return tuple(sorted((p, tuple(sorted((k, value(k, v)) for k, v in facts.items()))) for p, facts in raw.items()))


def check_consistency(lock: Lock, where: str | Path = "<lock>") -> None:
    """Every file's name must carry its package's name and version.

    A version edited by hand (the URL and hash left as they were) would otherwise make a
    diff show an upgrade that installs nothing new, or an export pin a version whose hash
    can never match. LockFileError names the package and the file.
    """
    # packaging's filename parsers (~7 ms with packaging.tags) load here, where they are used
    from packaging.utils import (
        InvalidSdistFilename,
        InvalidWheelFilename,
        parse_sdist_filename,
        parse_wheel_filename,
    )
    from packaging.version import InvalidVersion, Version

    for pkg in lock.packages:
        for f in pkg.files:
            name = f.filename
            try:
                if name.endswith(".whl"):
                    fname, fversion = parse_wheel_filename(name)[:2]
                else:
                    fname, fversion = parse_sdist_filename(name)
            except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
                continue  # a name packaging cannot parse: nothing to compare against
            try:
                same_version = fversion == Version(pkg.version)
            except InvalidVersion:
                same_version = False
            if canonical(fname) != pkg.key or not same_version:
                raise LockFileError(
                    f"{where}: package {pkg.key} {pkg.version} does not match its file {name} (edited by hand?)",
                    hint="regenerate it with `envmgr lock`",
                )


def read(path: Path) -> Lock:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise LockFileError(f"{path}: no such lock", hint=f"create it with `envmgr lock {lock_profile_name(path)}`")
    except (OSError, UnicodeDecodeError) as exc:
        raise LockFileError(f"{path}: cannot read: {exc}")
    return loads(text, path)


def lock_profile_name(path: Path) -> str:
    name = path.name
    if name.startswith("pylock.") and name.endswith(".toml"):
        return name[len("pylock."):-len(".toml")]
    return path.stem
