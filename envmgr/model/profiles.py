"""Profiles: ``profiles/NAME.toml``, one PyTorch/CUDA variant each, validated up front.

A profile names a variant, a torch version or specifier, a python, extra packages and
indexes, and may ``extends`` a shared file (scalars override, ``packages`` and
``extra-index-urls`` append, ``[image]`` merges). Every error names the file and line and
says how to fix it. Files whose name starts with ``_`` are shared bases, not profiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.compat import tomllib
from ..core.errors import ProfileError
from .names import canonical
from .platforms import DEFAULT_PLATFORM, PLATFORMS
from .torchspec import is_variant_name, torch_requirement

PYPI = "pypi"  # keyword: the resolver's default index (PyPI), resolved at run time

# key -> (type, description); the schema users see in `envmgr profiles --help`-style docs.
KEYS: dict[str, tuple[type | tuple, str]] = {
    "description": (str, "free text"),
    "extends": (str, "a shared base file, relative to this one"),
    "variant": (str, "cpu, cuNNN or rocmX.Y"),
    "torch": (str, "torch version (2.7.1) or PEP 440 specifier (>=2.7,<2.8)"),
    "python": (str, "target python, MAJOR.MINOR"),
    "packages": (list, "extra requirements (PEP 508)"),
    "torch-index-url": (str, "index for torch-family packages (default: the variant's PyTorch index; 'pypi' for PyPI)"),
    "index-url": (str, "default index for everything else (default: pypi)"),
    "extra-index-urls": (list, "more indexes for non-torch packages, searched after index-url"),
    "platform": ((str, list), "target platform, or a list of them (default linux-x86_64; known: linux-x86_64, linux-aarch64)"),
    "image": (dict, "settings for envmgr export-image"),
}
IMAGE_KEYS: dict[str, tuple[type | tuple, str]] = {
    "base": (str, "base image: registry ref, oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE"),
    "python": (str, "the base's interpreter path (default: detected)"),
    "venv": (str, "venv path inside the image (default /opt/venv)"),
    "user": (str, "user the image runs as (default envmgr, uid 1000)"),
    "workdir": (str, "working directory"),
    "env": (dict, "extra environment variables"),
    "labels": (dict, "extra labels"),
    "entrypoint": (list, "entrypoint"),
    "cmd": (list, "default command"),
    "tag": (str, "image name and tag (default derived from profile and lock digest)"),
    "modes": (list, "how the image runs: shell, jupyter, ssh (default [\"shell\"])"),
}



@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    variant: str
    torch: str
    python: str
    packages: tuple[str, ...] = ()
    torch_index_url: str = ""  # "" = the variant's PyTorch index; "pypi" = the default
    index_url: str = PYPI
    extra_index_urls: tuple[str, ...] = ()
    platform: str = DEFAULT_PLATFORM  # the first of ``platforms``
    platforms: tuple[str, ...] = ()  # every target platform, when the profile names a list; () = (platform,)
    image: dict = field(default_factory=dict)
    description: str = ""
    files: tuple[Path, ...] = ()  # this file and every file it extends

    @property
    def torch_index(self) -> str:
        """The torch-family index: a URL or ``pypi``."""
        if self.torch_index_url:
            return self.torch_index_url
        from .variants import kb

        return kb().index_url(self.variant)

    @property
    def torch_from_default(self) -> bool:
        """True when the torch family resolves from the default index (PyPI's build)."""
        return self.torch_index == self.index_url

    @property
    def torch_requirement(self) -> str:
        return torch_requirement(self.torch)

    @property
    def requirements(self) -> tuple[str, ...]:
        return (self.torch_requirement, *self.packages)

    @property
    def all_platforms(self) -> tuple[str, ...]:
        return self.platforms or (self.platform,)

    @property
    def multi_platform(self) -> bool:
        return len(self.all_platforms) > 1

    def for_platform(self, platform: str) -> "Profile":
        """The same profile targeting one of its platforms (what a resolver run is for)."""
        return replace(self, platform=platform, platforms=())

    @property
    def uv_platform(self) -> str:
        return PLATFORMS[self.platform][0]

    @property
    def environment_marker(self) -> str:
        return PLATFORMS[self.platform][1]

    def where(self, key: str) -> str:
        """``FILE:LINE`` of the line that sets ``key`` (the last file of the chain that does)."""
        for f in reversed(self.files or (self.path,)):
            if _line_of(f, key):
                return _where(f, key)
        return str(self.path)

    def lock_inputs(self, resolver: str, resolver_version: str) -> dict:
        """Every input that affects resolution; the lock's fingerprint covers exactly these."""
        # Credentials (user:token@, ${VAR}@) never reach a lock, not even the user name.
        from ..core.urls import strip_credentials

        major_minor = ".".join(resolver_version.split(".")[:2])
        return {
            "requirements": sorted(self.requirements),
            "variant": self.variant,
            "python": self.python,
            "platform": list(self.platforms) if self.multi_platform else self.platform,
            "index-url": strip_credentials(self.index_url),
            "torch-index": strip_credentials(self.torch_index),
            "extra-index-urls": [strip_credentials(u) for u in self.extra_index_urls],
            "resolver": f"{resolver} {major_minor}",
        }


# -- loading ------------------------------------------------------------------------------

def profile_path(project: Path, name: str) -> Path:
    return project / "profiles" / f"{name}.toml"


def list_profiles(project: Path) -> list[str]:
    d = project / "profiles"
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.toml") if not p.name.startswith("_"))


def load(project: Path, name: str, *, late: bool = False) -> Profile:
    """The profile ``name``, validated. With ``late``, the checks that need packaging's
    requirement parser or the knowledge base (``check_late``, ~15 ms of imports) are left to
    the caller, which runs them before it uses the profile for anything but the resolver's
    input (``lock`` runs them while its resolver starts)."""
    path = profile_path(project, name)
    if name.startswith("_") and path.is_file():
        raise ProfileError(f"{path} is a shared base, not a profile (files starting with '_' are for 'extends')",
                           hint=f"profiles here: {', '.join(list_profiles(project)) or 'none'}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ProfileError(f"{name!r} is not a profile name", hint="a name starts with a letter or digit, then letters, digits, '-', '_', '.'")
    if not path.is_file():
        known = ", ".join(list_profiles(project)) or "none"
        raise ProfileError(f"no profile {name!r}: {path} does not exist", hint=f"profiles here: {known}")
    return load_file(path, name, late=late)


def load_file(path: Path, name: str | None = None, *, late: bool = False) -> Profile:
    data, origin, files = _load_chain(path, ())
    profile = _validate(name or path.stem, path, data, origin, files)
    if not late:
        check_late(profile)
    return profile


def check_late(p: Profile) -> None:
    """The variant against the knowledge base, and ``packages``: PEP 508 requirements, none of
    them torch (that is the ``torch`` key's). See ``load``."""
    from packaging.requirements import InvalidRequirement, Requirement

    from .variants import kb

    if not kb().is_known_variant(p.variant):
        raise _unknown_variant(p.where("variant"), p.variant)
    for req in p.packages:
        try:
            parsed = Requirement(req)
        except InvalidRequirement as exc:
            # packaging's message spans lines (a caret under the column); keep the first
            reason = str(exc).splitlines()[0] if str(exc) else "not PEP 508"
            raise ProfileError(f"{p.where('packages')}: bad requirement {req!r}: {reason}",
                               hint="write NAME, NAME==VERSION or NAME>=X,<Y")
        if canonical(parsed.name) == "torch":
            raise ProfileError(f"{p.where('packages')}: torch is set by the 'torch' key, not in packages",
                               hint="remove it from packages")
    _check_variant_facts(p, p.where)


def _unknown_variant(where: str, variant: str) -> ProfileError:
    from .variants import kb

    return ProfileError(f"{where}: unknown variant {variant!r}", hint=f"known variants: {', '.join(kb().known_variants())}")


def _line_of(path: Path, key: str) -> int:
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError:
        return 0
    pat = re.compile(rf"^\s*(\"{re.escape(key)}\"|{re.escape(key)})\s*=|^\s*\[\s*{re.escape(key)}\s*\]")
    for i, line in enumerate(lines, 1):
        if pat.match(line):
            return i
    return 0


def _where(path: Path, key: str) -> str:
    line = _line_of(path, key)
    return f"{path}:{line}" if line else str(path)


def _read_toml(path: Path) -> dict:
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such file")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read: {exc}")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        loc = f"{path}:{m.group(1)}:{m.group(2)}" if m else str(path)
        raise ProfileError(f"{loc}: invalid TOML: {msg}", hint="fix the syntax")


def _load_chain(path: Path, seen: tuple[Path, ...]) -> tuple[dict, dict, tuple[Path, ...]]:
    """Merge ``path`` over what it extends. Returns (data, key -> defining file, files)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ProfileError(f"{_where(seen[-1], 'extends')}: extends cycle: {chain}", hint="remove one 'extends'")
    data = _read_toml(path)
    _check_keys(path, data)
    base_data: dict = {}
    origin: dict = {}
    files: tuple[Path, ...] = ()
    if "extends" in data:
        ext = data["extends"]
        if not isinstance(ext, str):
            raise ProfileError(f"{_where(path, 'extends')}: 'extends' must be a string (a file path)")
        base_path = (path.parent / ext)
        if not base_path.is_file():
            raise ProfileError(f"{_where(path, 'extends')}: extends {ext!r}, which does not exist", hint=f"looked for {base_path}")
        base_data, origin, files = _load_chain(base_path, (*seen, path))
    merged = dict(base_data)
    for key, value in data.items():
        if key == "extends":
            continue
        if key in ("packages", "extra-index-urls") and key in merged:
            merged[key] = [*merged[key], *[v for v in value if v not in merged[key]]]
        elif key == "image" and key in merged:
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
        origin[key] = path
    return merged, origin, (*files, path)


def _suggest(key: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(sorted(known))}"


def _check_keys(path: Path, data: dict) -> None:
    for key, value in data.items():
        if key not in KEYS:
            raise ProfileError(f"{_where(path, key)}: unknown key {key!r}", hint=_suggest(key, KEYS))
        typ = KEYS[key][0]
        if not isinstance(value, typ):
            raise ProfileError(f"{_where(path, key)}: {key!r} must be a {_type_name(typ)}, not {type(value).__name__}", hint=KEYS[key][1])
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ProfileError(f"{_where(path, key)}: {key!r} must be a list of strings")
    for key, value in data.get("image", {}).items():
        if key not in IMAGE_KEYS:
            raise ProfileError(f"{_where(path, key)}: unknown key {key!r} in [image]", hint=_suggest(key, IMAGE_KEYS))
        typ = IMAGE_KEYS[key][0]
        if not isinstance(value, typ):
            raise ProfileError(f"{_where(path, key)}: [image] {key!r} must be a {_type_name(typ)}", hint=IMAGE_KEYS[key][1])


def _type_name(typ) -> str:
    if isinstance(typ, tuple):
        return " or a ".join(_type_name(t) for t in typ)
    return {str: "string", list: "list", dict: "table"}.get(typ, str(typ))


def _validate(name: str, path: Path, data: dict, origin: dict, files: tuple[Path, ...]) -> Profile:
    def where(key: str) -> str:
        return _where(origin.get(key, path), key)

    for required in ("variant", "torch", "python"):
        if required not in data:
            raise ProfileError(f"{path}: missing required key {required!r}", hint=KEYS[required][1])
    variant = data["variant"]
    if not is_variant_name(variant):
        raise _unknown_variant(where("variant"), variant)
    try:
        torch_requirement(data["torch"])
    except ValueError as exc:
        raise ProfileError(f"{where('torch')}: {exc}", hint="write a version (2.7.1) or a specifier (>=2.7,<2.8)")
    python = data["python"]
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise ProfileError(f"{where('python')}: python must be MAJOR.MINOR like \"3.11\", not {python!r}")
    platforms = _platforms(data.get("platform", DEFAULT_PLATFORM), where("platform"))
    packages = tuple(data.get("packages", ()))
    index_url = data.get("index-url", PYPI)
    torch_index_url = data.get("torch-index-url", "")
    for key in ("index-url", "torch-index-url"):
        if key in data and data[key] != PYPI and not re.match(r"^(https?|file)://", data[key]):
            raise ProfileError(f"{where(key)}: {key} must be an http(s):// or file:// URL or 'pypi', not {data[key]!r}")
    for url in data.get("extra-index-urls", ()):
        if url != PYPI and not re.match(r"^(https?|file)://", url):
            raise ProfileError(f"{where('extra-index-urls')}: not a URL: {url!r}")

    profile = Profile(
        name=name,
        path=path,
        variant=variant,
        torch=data["torch"],
        python=python,
        packages=packages,
        torch_index_url=torch_index_url,
        index_url=index_url,
        extra_index_urls=tuple(data.get("extra-index-urls", ())),
        platform=platforms[0],
        platforms=platforms if len(platforms) > 1 else (),
        image=dict(data.get("image", {})),
        description=data.get("description", ""),
        files=files,
    )
    return profile


def _platforms(value, where: str) -> tuple[str, ...]:
    """``platform`` as a tuple: a known keyword, or a list of distinct known keywords."""
    listed = [value] if isinstance(value, str) else list(value)
    if not listed:
        raise ProfileError(f"{where}: 'platform' is an empty list", hint=f"name one or more of: {', '.join(PLATFORMS)}")
    for platform in listed:
        if platform not in PLATFORMS:
            raise ProfileError(f"{where}: unknown platform {platform!r}", hint=f"known: {', '.join(PLATFORMS)}")
    twice = sorted({x for x in listed if listed.count(x) > 1})
    if twice:
        raise ProfileError(f"{where}: platform {', '.join(twice)} is listed twice", hint="name each platform once")
    return tuple(listed)


def _check_variant_facts(p: Profile, where) -> None:
    """Cross-check variant, torch, python and index against the knowledge base."""
    from .variants import kb

    k = kb()
    releases = k.releases_admitted(p.torch)
    if not releases:
        # Newer than the knowledge base (or older than it): nothing to check against.
        return
    with_variant = [r for r in releases if r.has_variant(p.variant)]
    if not with_variant:
        have = "; ".join(f"torch {r.minor} has {', '.join(r.all_variants)}" for r in releases)
        has_it = k.releases_with_variant(p.variant)
        span = f"{has_it[0]}-{has_it[-1]}" if len(has_it) > 1 else ", ".join(has_it) or "no release"
        raise ProfileError(
            f"{where('torch')}: torch {p.torch} has no {p.variant} build ({have})",
            hint=f"{p.variant} exists for torch {span}",
        )
    if not any(p.python in r.python for r in with_variant):
        supported = "; ".join(f"torch {r.minor}: {r.python[0]}-{r.python[-1]}" for r in with_variant)
        raise ProfileError(f"{where('python')}: python {p.python} is not supported by torch {p.torch} ({supported})",
                           hint="pick a supported python or another torch")
    if p.torch_index_url == PYPI or (p.torch_index_url and p.torch_index_url == p.index_url):
        wrong = [r for r in with_variant if r.pypi_default != p.variant]
        if wrong:
            r = wrong[0]
            cuda = k.cuda_of(r.pypi_default)
            raise ProfileError(
                f"{where('torch-index-url')}: torch {r.minor} on PyPI is a {r.pypi_default} build, not {p.variant}",
                hint=f"set variant = \"{r.pypi_default}\"{f' (CUDA {cuda})' if cuda else ''} in "
                     f"{where('variant')}, or drop torch-index-url to use the {p.variant} index",
            )
