"""Resolver backends: a profile in, pinned packages with their files out.

Both backends (uv, pip-tools) produce the same thing, a list of ``LockedPackage``, and
enforce the same index rule: torch-family packages come only from the variant's torch
index, everything else from the default index (and extra indexes). Hashes and sizes the
index does not publish are filled in afterwards by ``locker`` (download once, cache by URL).

uv: the requirements go into a throwaway pyproject whose ``[tool.uv.sources]`` pins each
torch-family requirement to an *explicit* index, so nothing else can come from it. uv
applies sources to direct requirements only, so torch-family packages that appear
transitively (triton under a CUDA torch) are added as direct requirements and resolved
again; the knowledge base names the usual ones up front, so one run is the normal case.

pip-tools: pip has no per-package index, so pip-compile talks to a local routing index
(``indexproxy``) that serves torch-family pages from the torch index and all others from
the default indexes. pip-compile only pins versions (no ``--generate-hashes``: that
downloads every torch wheel); envmgr then reads the files and published hashes from the
index pages itself.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol
from urllib.parse import urlsplit

from ..core.compat import tomllib
from ..core.errors import ResolutionError, UserError
from ..core.urls import expand_env, redact, strip_credentials
from ..model.names import canonical
from ..model.profiles import PYPI, Profile
from ..model.tomltext import toml_str
from ..venv.uvtool import clean_env, running_python, uv_bin, uv_version
from . import early

if TYPE_CHECKING:
    from ..model.lockfile import LockedPackage


@dataclass(frozen=True)
class Request:
    """What a backend needs: the profile, the previous lock's text and the upgrade policy."""

    profile: Profile
    workdir: Path
    previous: str | None = None  # text of the existing lock (pins are kept unless upgraded)
    upgrade: bool = False
    upgrade_packages: tuple[str, ...] = ()
    # Work for the caller while the resolver process runs (called each time a backend
    # waits for one; the caller makes it run-once). Its return value is ignored.
    meanwhile: Callable[[], object] | None = None
    # torch-family packages to resolve from the torch index up front, besides the profile's
    # (None: the knowledge base's usual ones for the variant, e.g. triton for CUDA on x86_64)
    family: tuple[str, ...] | None = None


@dataclass(frozen=True)
class UnfinishedFile:
    url: str
    sha256: str | None
    size: int | None
    computed: bool = False  # the index published no hash; the resolver hashed the bytes


@dataclass(frozen=True)
class Pinned:
    name: str
    version: str
    index: str
    wheels: tuple[UnfinishedFile, ...]
    sdist: UnfinishedFile | None
    marker: str | None = None


class Backend(Protocol):
    name: str

    def version(self) -> str:
        """The resolver's version, recorded in the lock."""

    def resolve(self, req: Request) -> list[Pinned]:
        """Pin every package for the profile's python/platform; raise ResolutionError."""


# -- indexes ------------------------------------------------------------------------------

def default_index_url() -> str:
    """PyPI's simple URL, asked of pip at run time (envmgr names no registry itself)."""
    from pip._internal.models.index import PyPI

    return PyPI.simple_url


def concrete(url: str) -> str:
    """An index URL as used for requests: keyword resolved, ``${VAR}`` expanded."""
    return default_index_url() if url == PYPI else expand_env(url).rstrip("/")


@dataclass(frozen=True)
class Indexes:
    given: str  # the default index: ``pypi``, or a concrete URL (with credentials)
    extra: tuple[str, ...]
    torch: str | None  # None: torch family comes from the default indexes

    @classmethod
    def of(cls, p: Profile) -> "Indexes":
        torch = None if p.torch_from_default else concrete(p.torch_index)
        given = PYPI if p.index_url == PYPI else concrete(p.index_url)
        return cls(given, tuple(concrete(u) for u in p.extra_index_urls), torch)

    @functools.cached_property
    def default(self) -> str:
        """The default index, concrete: for ``pypi``, asked of pip when first needed (uv is
        not told it: it is uv's default too; pip's modules cost ~3 ms to import)."""
        return default_index_url() if self.given == PYPI else self.given

    def recorded(self, name: str, file_url: str) -> str:
        """The index a package is recorded as coming from (no credentials)."""
        from ..model.variants import kb

        if self.torch and kb().is_torch_family(name):
            return strip_credentials(self.torch)
        if self.extra:
            # The index whose server (host and port) serves the file, under the index's root
            # (the index URL less a trailing /simple); the longest root wins, the default on
            # a tie. Indexes on one host (two ports, two repositories) are told apart.
            f = urlsplit(file_url)

            def claim(index: str) -> int:
                i = urlsplit(index)
                if (i.hostname, i.port) != (f.hostname, f.port):
                    return 0
                root = i.path.rstrip("/")
                root = root[: -len("/simple")] if root.endswith("/simple") else root
                return len(root) + 1 if f.path.startswith(root + "/") else 0

            best = max((self.default, *self.extra), key=claim)
            if claim(best):
                return strip_credentials(best)
        return strip_credentials(self.default)

    def configured_urls(self) -> list[str]:
        """The URLs the profile configures, where credentials can be (the ``pypi`` keyword's,
        pip's, carries none)."""
        return [*([self.given] if self.given != PYPI else []), *self.extra, *([self.torch] if self.torch else [])]


# -- uv -----------------------------------------------------------------------------------

class UvBackend:
    name = "uv"

    def __init__(self) -> None:
        # torch-family packages added as direct requirements by the last resolve (the caller
        # resolves again without those the torch build turns out not to require)
        self.added_family: tuple[str, ...] = ()
        # (command line, pyproject text) of this backend's first uv run, when it named no local
        # routing index: the recipe a later lock of the same profile files starts early (lock.early)
        self.first_command: tuple[list[str], str] | None = None
        self._runs = 0

    def version(self) -> str:
        return uv_version()

    def resolve(self, req: Request) -> list[Pinned]:
        p = req.profile
        idx = Indexes.of(p)
        if idx.torch:  # the knowledge base: read before uv starts on a torch index's route only
            from ..model.variants import kb
        direct = direct_names(p) if idx.torch else set()
        extra_family: list[str] = []
        if req.family is not None and idx.torch:
            extra_family = [n for n in req.family if n not in direct]
        elif idx.torch and kb().cuda_of(p.variant) and p.platform == "linux-x86_64":
            extra_family = [n for n in kb().cuda_runtime_family if n not in direct]
        guessed = req.family is None and bool(extra_family)
        for _attempt in range(3):
            try:
                pinned = self._run(req, idx, extra_family)
            except ResolutionError:
                if not guessed:
                    raise
                # the guess (triton) may not be on this index at all (a partial mirror, a
                # build that needs none): resolve without it; what torch requires comes back
                extra_family, guessed = [], False
                pinned = self._run(req, idx, extra_family)
            guessed = False
            self.added_family = tuple(extra_family)
            if not idx.torch:
                return pinned
            sourced = direct | set(extra_family)
            strays = sorted(x.name for x in pinned if kb().is_torch_family(x.name) and x.name not in sourced)
            if not strays:
                return pinned
            extra_family += strays
        raise ResolutionError(f"torch-family packages keep appearing from the default index: {', '.join(strays)}")

    def _run(self, req: Request, idx: Indexes, extra_family: list[str]) -> list[Pinned]:
        if not idx.torch:
            return self._compile(req, idx, extra_family, None)
        sourced = _sourced(req.profile, extra_family)
        if idx.torch.startswith(("http://", "https://")) and set(sourced) <= hashed_projects(idx.torch):
            # The torch index published a hash for every file of these projects when last read
            # through the routing index: uv reads it directly. (Should one lose its hash since,
            # uv hashes the bytes it downloads, and the lock records that.)
            return self._compile(req, idx, extra_family, None)
        from ..net.fetch import cached_url_digest
        from .indexproxy import RoutingIndex

        def known(url: str) -> str | None:
            hit = cached_url_digest(url)
            return hit[0] if hit else None

        # The torch index goes through a local view that fills hashes envmgr has already
        # computed (so uv downloads nothing it hashed before) and serves the unhashed files
        # itself, so that uv's downloads of one reach the upstream index once. The pages uv asks
        # of it first (the torch family's) are read while uv starts.
        with RoutingIndex(idx.torch, known_hash=known, serve_unhashed=True, prefetch=sourced) as proxy:
            pinned = self._compile(req, idx, extra_family, proxy)
        remember_hashed(idx.torch, proxy.hashed - proxy.partly_hashed, proxy.partly_hashed)
        return pinned

    def _compile(self, req: Request, idx: Indexes, extra_family: list[str], proxy) -> list[Pinned]:
        torch_url = proxy.url if proxy else None
        p = req.profile
        work = req.workdir
        lines = ["[project]", f"name = {toml_str('envmgr-lock-' + canonical(p.name))}", 'version = "0"',
                 f"dependencies = [{', '.join(toml_str(r) for r in (*p.requirements, *extra_family))}]"]
        if idx.torch:
            names = _sourced(p, extra_family)
            lines += ["", "[tool.uv.sources]", *(f'{n} = {{ index = "envmgr-torch" }}' for n in names),
                      "", "[[tool.uv.index]]", 'name = "envmgr-torch"', f"url = {toml_str(torch_url or idx.torch)}",
                      "explicit = true"]
        pyproject = "\n".join(lines) + "\n"
        cmd = [uv_bin(), "pip", "compile", "pyproject.toml", "--format", "pylock.toml", "-o", early.PYLOCK,
               "--no-config", "--no-header", "--quiet", "--python-version", p.python,
               "--python-platform", p.uv_platform, "--no-build", *_interpreter_args(p.python)]
        if p.index_url != PYPI:
            cmd += ["--index-url", idx.default]
        for url in idx.extra:
            cmd += ["--extra-index-url", url]
        if req.upgrade:
            cmd.append("--upgrade")
        for name in req.upgrade_packages:
            cmd += ["--upgrade-package", name]
        self._runs += 1
        if self._runs == 1 and proxy is None:
            self.first_command = (cmd, pyproject)
        env = clean_env()
        started = early.take(cmd, env, pyproject, req.previous)  # uv started from the last lock's recipe
        if started is not None:
            proc, work = started
        else:
            (work / "pyproject.toml").write_text(pyproject)
            if req.previous is not None:
                (work / early.PYLOCK).write_text(req.previous)  # uv keeps these pins unless told to upgrade
            proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            stderr = _wait(proc, req)
            if proc.returncode != 0:
                errors = "\n".join(proxy.errors) if proxy else ""
                raise ResolutionError(
                    f"profile {p.name}: uv could not resolve {', '.join(p.requirements)}",
                    hint="see the resolver's explanation below",
                    detail=_scrub("\n".join(x for x in (stderr, errors) if x), idx),
                )
            text = (work / early.PYLOCK).read_text()
        finally:
            if started is not None:
                shutil.rmtree(work, ignore_errors=True)
        unhashed = {strip_credentials(u) for u in proxy.unhashed} if proxy else set()
        return self._parse(text, idx, unhashed, proxy.original if proxy else (lambda u: u))

    @staticmethod
    def _parse(text: str, idx: Indexes, unhashed: set[str], original=lambda u: u) -> list[Pinned]:
        data = tomllib.loads(text)
        pinned = []
        for pkg in data.get("packages", []):
            def f(raw: dict) -> UnfinishedFile:
                url = strip_credentials(original(raw["url"]))
                return UnfinishedFile(url, raw.get("hashes", {}).get("sha256"), raw.get("size"), url in unhashed)

            wheels = tuple(sorted((f(w) for w in pkg.get("wheels", [])), key=lambda w: w.url))
            sdist = f(pkg["sdist"]) if "sdist" in pkg and not wheels else None
            if not wheels and not sdist:
                raise ResolutionError(f"{pkg['name']} {pkg['version']}: the resolver gave no file for it")
            name = canonical(pkg["name"])
            first = (wheels[0] if wheels else sdist).url
            pinned.append(Pinned(name, str(pkg["version"]), idx.recorded(name, first), wheels, sdist, pkg.get("marker")))
        return pinned


_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")  # a PEP 508 requirement's name


def direct_names(p: Profile) -> set[str]:
    """The canonical names of the profile's requirements: the route with a torch index and a
    re-lock's family guess need them before the resolver starts. A PEP 508 requirement starts
    with its name, read here without packaging's parser (its tokenizer's imports cost more than
    uv takes to start); ``profiles.check_late`` parses each one in full, and a bad one stops
    the resolver."""
    return {canonical(m.group(1)) for r in p.requirements if (m := _NAME.match(r))}


def _sourced(p: Profile, extra_family: list[str]) -> list[str]:
    """The torch-family projects uv takes from the torch index (``[tool.uv.sources]``)."""
    from ..model.variants import kb

    return sorted({n for n in direct_names(p) if kb().is_torch_family(n)} | set(extra_family))


def _hashed_record() -> Path:
    from ..core.settings import cache_dir

    return cache_dir() / "index-hashes.json"


def _hashed_all() -> dict:
    import json

    try:
        data = json.loads(_hashed_record().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def hashed_projects(index: str) -> set[str]:
    """The projects whose pages on ``index`` published a hash for every file, when last read
    through the routing index (remembered in envmgr's cache; none when not known)."""
    known = _hashed_all().get(strip_credentials(index))
    return set(known) if isinstance(known, list) else set()


def remember_hashed(index: str, hashed: set[str], unhashed: set[str]) -> None:
    """Record which projects' pages on ``index`` hash every file (``hashed``) or not (``unhashed``)."""
    every = _hashed_all()
    key = strip_credentials(index)
    known = set(every.get(key) or ())
    now = (known | hashed) - unhashed
    if now == known:
        return
    import json

    from ..core.files import write_atomic

    every[key] = sorted(now)
    try:  # a hint: a lost or torn one is read as none (the routing index is used), so no fsync
        write_atomic(_hashed_record(), json.dumps(every, sort_keys=True, indent=1), fsync=False)
    except OSError:
        pass  # a cache that cannot be written: the next lock reads through the routing index again


def _wait(proc: subprocess.Popen, req: Request) -> str:
    """The resolver's stderr once it exits; the caller's side work runs meanwhile."""
    try:
        if req.meanwhile:
            req.meanwhile()
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    _stdout, stderr = proc.communicate()
    return stderr


def _interpreter_args(version: str) -> list[str]:
    """``--python`` naming the interpreter envmgr runs on, when it is the profile's python.

    uv pip compile needs an interpreter even with ``--python-version`` (for its marker
    environment), and finding one can cost more than the resolution: on a host with pyenv
    shims on PATH each run starts the shim's shell scripts (~0.15 s). A real binary is
    queried once and remembered in uv's cache. The resolution is the same: the version,
    platform and implementation are the profile's either way. For another python, uv
    looks for one itself.
    """
    python = running_python(version) if sys.implementation.name == "cpython" else None
    return ["--python", python] if python else []


def _scrub(text: str, idx: Indexes) -> str:
    """Resolver output with credentials removed and noise trimmed."""
    for url in idx.configured_urls():
        if url != strip_credentials(url):
            text = text.replace(url, redact(url))
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return text.strip()


# -- pip-tools ----------------------------------------------------------------------------

class PipToolsBackend:
    name = "pip-tools"

    def version(self) -> str:
        from importlib.metadata import version

        return version("pip-tools")

    def resolve(self, req: Request) -> list[Pinned]:
        from ..model.platforms import host
        from ..model.variants import kb
        from ..net import indexclient
        from .indexproxy import RoutingIndex

        p = req.profile
        host_python = f"{sys.version_info.major}.{sys.version_info.minor}"
        if p.python != host_python or p.platform != host():
            raise UserError(
                f"profile {p.name}: pip-tools resolves for the interpreter it runs on (python {host_python}, "
                f"{host()}), but the profile targets python {p.python} on {p.platform}",
                hint="use --resolver uv, which resolves for any target",
            )
        idx = Indexes.of(p)
        work = req.workdir
        (work / "requirements.in").write_text("".join(f"{r}\n" for r in p.requirements))
        out = work / "requirements.txt"
        if req.previous is not None:
            out.write_text(_pins_as_requirements(req.previous))
        with RoutingIndex(idx.default, idx.extra, idx.torch, set(kb().torch_family)) as proxy:
            cmd = [sys.executable, "-m", "envmgr.lock._piptools_main", "--quiet", "--no-header", "--no-annotate",
                   "--no-emit-index-url", "--strip-extras", "--index-url", proxy.url,
                   "--pip-args", "--only-binary :all:", "--output-file", str(out), str(work / "requirements.in")]
            if req.upgrade:
                cmd.append("--upgrade")
            for name in req.upgrade_packages:
                cmd += ["--upgrade-package", name]
            proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=clean_env({"PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}))
            stderr = _wait(proc, req)
        if proc.returncode != 0:
            raise ResolutionError(
                f"profile {p.name}: pip-tools could not resolve {', '.join(p.requirements)}",
                hint="see the resolver's explanation below",
                detail=_scrub(stderr.replace(proxy.url, "<routing index>"), idx),
            )
        pins = _read_pins(out.read_text())
        tags = indexclient.target_tags(p.python, p.platform)
        pinned = []
        for name, version in sorted(pins.items()):
            sources = [idx.torch] if idx.torch and kb().is_torch_family(name) else [idx.default, *idx.extra]
            files = indexclient.files_for(name, version, sources, tags)
            if not files:
                raise ResolutionError(f"{name}=={version}: no file for python {p.python} on {p.platform} on its index")
            wheels = tuple(sorted((UnfinishedFile(strip_credentials(f.url), f.sha256, f.size) for f in files if f.is_wheel), key=lambda w: w.url))
            sdists = [UnfinishedFile(strip_credentials(f.url), f.sha256, f.size) for f in files if not f.is_wheel]
            sdist = sdists[0] if sdists and not wheels else None
            pinned.append(Pinned(name, version, idx.recorded(name, files[0].url), wheels, sdist))
        return pinned


def _pins_as_requirements(lock_text: str) -> str:
    data = tomllib.loads(lock_text)
    return "".join(f"{p['name']}=={p['version']}\n" for p in data.get("packages", []))


def _read_pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            pins[canonical(m.group(1))] = m.group(3)
    return pins


BACKENDS: dict[str, type] = {"uv": UvBackend, "pip-tools": PipToolsBackend}


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise UserError(f"unknown resolver {name!r}", hint=f"choose one of: {', '.join(BACKENDS)}")


def finish(pinned: list[Pinned], *, auth, cache: Path | None = None) -> list[LockedPackage]:
    """Fill in unpublished hashes (download once, cached by URL) and sizes (HEAD, cached)."""
    from ..model.lockfile import LockedFile, LockedPackage

    files = [f for p in pinned for f in (*p.wheels, *((p.sdist,) if p.sdist else ()))]
    # Files with a published hash and size need nothing (no thread, no request); the rest in parallel.
    finished = {f: LockedFile(f.url, f.sha256, f.size) for f in files
                if f.sha256 is not None and f.size is not None and not f.computed}
    todo = [f for f in files if f not in finished]
    if todo:
        from concurrent.futures import ThreadPoolExecutor

        from ..net.fetch import remember_url_digest, url_digest, url_size

        def done(f: UnfinishedFile) -> LockedFile:
            if f.sha256 is None:
                digest, size = url_digest(f.url, cache=cache, auth=auth)
                return LockedFile(f.url, digest, size)
            size = f.size if f.size is not None else url_size(f.url, cache=cache, auth=auth)
            if f.computed:
                remember_url_digest(f.url, f.sha256, size, cache=cache)
            return LockedFile(f.url, f.sha256, size)

        with ThreadPoolExecutor(max_workers=8) as pool:
            finished.update(zip(todo, pool.map(done, todo)))
    return [
        LockedPackage(p.name, p.version, p.index, tuple(finished[w] for w in p.wheels),
                      finished[p.sdist] if p.sdist else None, p.marker)
        for p in pinned
    ]
