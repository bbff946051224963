"""``envmgr lock``: profiles in, ``locks/pylock.NAME.toml`` out; and ``lock --check``.

For each profile: load and validate it, resolve with a backend (keeping the existing
lock's pins unless upgrading), fill in unpublished hashes and sizes, check the result
against the variant (torch family from the torch index, the right local label), and write
the lock atomically. Profiles lock concurrently; each holds a file lock so two envmgr
processes never interleave on one lock. A failure leaves the old lock byte-identical.
"""

from __future__ import annotations

import fcntl
import functools
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..core.errors import EnvmgrError, LockFileError, ResolutionError
from ..core.files import write_atomic
from ..core.settings import lock_path
from ..core.urls import redact
from ..model import profiles
from ..model.profiles import Profile
from ..net.credentials import Auth
from . import facts as wheelfacts
from . import resolve

if TYPE_CHECKING:
    from ..model.lockfile import Lock

# The lock model (``model.lockfile``) is imported where it is used: a lock from scratch needs
# it only once the resolver is working.

Log = Callable[[str], None] | None


@dataclass
class LockResult:
    profile: str
    path: Path
    changed: bool
    lock: Lock
    seconds: float
    previous_pins: dict = field(default_factory=dict)

    def describe(self) -> str:
        torch = self.lock.package("torch")
        what = "updated" if self.changed else "unchanged"
        ups = [f"{n} {self.previous_pins[n]} -> {v}" for n, v in self.lock.pins.items()
               if n in self.previous_pins and self.previous_pins[n] != v]
        tail = f"; {', '.join(ups)}" if ups and len(ups) <= 5 else (f"; {len(ups)} upgrades" if ups else "")
        return (f"{self.profile}: {self.path} {what} ({len(self.lock.packages)} packages, "
                f"torch {torch.version if torch else '?'}, {self.seconds:.1f}s{tail})")

    def to_json(self) -> dict:
        return {
            "profile": self.profile,
            "path": str(self.path),
            "changed": self.changed,
            "packages": len(self.lock.packages),
            "digest": self.lock.digest(),
            "fingerprint": self.lock.meta.fingerprint,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class CheckResult:
    profile: str
    path: Path
    fresh: bool
    reasons: list[str]

    def describe(self) -> str:
        if self.fresh:
            return f"{self.profile}: {self.path} is fresh"
        return f"{self.profile}: {self.path} is stale: " + "; ".join(self.reasons) + f" (run `envmgr lock {self.profile}`)"

    def to_json(self) -> dict:
        return {"profile": self.profile, "path": str(self.path), "fresh": self.fresh, "reasons": self.reasons}


def default_resolver(previous: Lock | None) -> str:
    return os.environ.get("ENVMGR_RESOLVER") or (previous.meta.resolver if previous else "uv")


# -- check --------------------------------------------------------------------------------

def check_one(project: Path, name: str) -> CheckResult:
    """Is the lock fresh against its profile? No network: compares recorded inputs."""
    from ..model import lockfile

    profile = profiles.load(project, name)
    path = lock_path(project, name)
    if not path.exists():
        return CheckResult(name, path, False, ["no lock yet"])
    try:
        current = lockfile.read(path)
    except LockFileError as exc:
        return CheckResult(name, path, False, [f"unreadable lock: {exc.message}"])
    backend = resolve.backend(current.meta.resolver)
    inputs = profile.lock_inputs(backend.name, backend.version())
    reasons = [] if lockfile.fingerprint(inputs) == current.meta.fingerprint else \
        [f"input {line}" for line in lockfile.changed_inputs(current.meta.inputs, inputs)]
    # the knowledge base (and overlays) and the torch binary, for each platform the lock is for
    many = len(current.platforms) > 1
    for platform in current.platforms:
        reasons += [f"{platform}: {r}" if many else r for r in wheelfacts.drift(current.for_platform(platform))]
    return CheckResult(name, path, not reasons, reasons)


def check(project: Path, names: list[str]) -> list[CheckResult]:
    return [check_one(project, n) for n in names]


# -- lock ---------------------------------------------------------------------------------

@contextmanager
def _profile_lock(project: Path, name: str):
    d = project / ".envmgr" / "locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _verify(profile: Profile, idx: resolve.Indexes, packages) -> None:
    from packaging.version import Version

    from ..model.variants import kb

    torch = next((p for p in packages if p.name == "torch"), None)
    if torch is None:
        raise ResolutionError(f"profile {profile.name}: the resolution has no torch")
    local = Version(torch.version).local
    if idx.torch and local and local != profile.variant.replace(".", ""):
        raise ResolutionError(
            f"profile {profile.name}: the torch index served torch {torch.version}, not a {profile.variant} build",
            hint=f"point torch-index-url at the {profile.variant} index",
        )
    if idx.torch:
        expected = resolve.strip_credentials(idx.torch)
        for p in packages:
            if kb().is_torch_family(p.name) and p.index != expected:
                raise ResolutionError(f"profile {profile.name}: {p.name} came from {p.index}, not the torch index")


def _family_guess(profile: Profile, previous: Lock | None) -> tuple[str, ...] | None:
    """The torch-family packages to resolve up front: the previous lock's (None: the
    knowledge base's usual ones)."""
    if previous is None or previous.meta.variant != profile.variant:
        return None
    from ..model.variants import kb

    direct = resolve.direct_names(profile)
    return tuple(sorted(p.key for p in previous.packages
                        if kb().is_torch_family(p.key) and p.key != "torch" and p.key not in direct))


def build_lock(profile: Profile, backend_name: str, backend_version: str, packages, torch_index: str,
               build=None, binary: dict | None = None, platform_facts: tuple = ()) -> Lock:
    """The lock of ``packages``; ``build``: the torch file's own facts (``model.facts``),
    ``binary``: the arch list read from its ``libtorch_cuda.so`` (``lock.facts``), both of the
    first platform's torch; ``platform_facts``: where the other platforms' differ."""
    from ..model import lockfile
    from ..model.lockfile import Lock, LockMeta

    torch = next(p for p in packages if p.name == "torch" and (not p.platforms or profile.platform in p.platforms))
    facts, sources = _facts(profile, torch.version, build, binary)
    inputs = profile.lock_inputs(backend_name, backend_version)
    meta = LockMeta(
        profile=profile.name,
        fingerprint=lockfile.fingerprint(inputs),
        inputs=inputs,
        resolver=backend_name,
        resolver_version=backend_version,
        python=profile.python,
        platform=profile.platform,
        platforms=profile.platforms if profile.multi_platform else (),
        platform_facts=platform_facts,
        variant=profile.variant,
        torch_index=torch_index,
        cuda=facts["cuda"],
        min_driver=facts["min-driver"],
        toolkit_driver=facts["toolkit-driver"],
        arch_list=tuple(facts["arch-list"]),
        ptx=facts["ptx"],
        build=facts["build"],
        cudnn=facts.get("cudnn", ""),
        nccl=facts.get("nccl", ""),
        triton=facts.get("triton", ""),
        sources=tuple(sorted(sources.items())),
    )
    return Lock(
        packages=tuple(sorted(packages, key=lambda p: p.key)),
        meta=meta,
        requires_python=f"=={profile.python}.*",
        environments=tuple(profiles.PLATFORMS[p][1] for p in profile.all_platforms),
    )


def _facts(profile: Profile, torch_version: str, build, binary) -> tuple[dict, dict]:
    return wheelfacts.lock_facts(profile.variant, torch_version, build, binary, profile.python, profile.platform)


def _fact_table(facts: dict, sources: dict) -> dict:
    """The facts as ``[tool.envmgr]`` states them (TOML keys; ``sources`` as pairs)."""
    table = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in facts.items()}
    table["sources"] = tuple(sorted(sources.items()))
    return table


def platform_facts_apart(profile: Profile, first: tuple, others: dict) -> tuple:
    """``LockMeta.platform_facts``: for each platform after the first, the facts its torch
    file states otherwise than the first platform's (none: the platform is not listed)."""
    base = _fact_table(*first)
    out = []
    for platform in profile.all_platforms[1:]:
        table = _fact_table(*others[platform])
        apart = tuple(sorted((k, v) for k, v in table.items() if base.get(k, "" if k != "sources" else ()) != v))
        if apart:
            out.append((platform, apart))
    return tuple(out)


def merge_platforms(profile: Profile, per_platform: dict[str, list]) -> list:
    """One package list for several platforms: an entry per (name, version), its files the
    union of each platform's; an entry not on every platform names its platforms (and its
    marker says so to other installers)."""
    from ..model.platforms import machine_clause

    order = profile.all_platforms
    entries: dict[tuple[str, str], list] = {}
    for platform in order:
        for p in per_platform[platform]:
            entries.setdefault((p.name, p.version), []).append((platform, p))
    merged = []
    for (_name, _version), found in sorted(entries.items()):
        platforms = tuple(pl for pl, _ in found)
        first = found[0][1]
        wheels = {w.sha256: w for _, p in found for w in p.wheels}
        sdist = next((p.sdist for _, p in found if p.sdist), None)
        markers = {p.marker for _, p in found}
        marker = first.marker if len(markers) == 1 else None
        if platforms != order or len(markers) > 1:
            parts = [f"({p.marker}) and {machine_clause([pl])}" if p.marker else machine_clause([pl]) for pl, p in found]
            marker = parts[0] if len(parts) == 1 else " or ".join(f"({x})" for x in parts)
        merged.append(replace(first, wheels=tuple(sorted(wheels.values(), key=lambda w: w.url)), sdist=sdist,
                              marker=marker, platforms=() if platforms == order else platforms))
    return merged


def lock_one(project: Path, profile: Profile, *, resolver: str | None = None, upgrade: bool = False,
             upgrade_packages: tuple[str, ...] = (), verify: bool = False, log: Log = None,
             unchecked: bool = False, remember: bool = False) -> LockResult:
    """``unchecked``: the profile was loaded without ``profiles.check_late``, which runs here
    while the resolver starts (a failed check stops it, and nothing is written). ``remember``:
    keep the resolver's first command as the recipe a later plain lock of the same profile
    files starts early (``lock.early``)."""
    started = time.monotonic()
    name = profile.name
    path = lock_path(project, name)
    if unchecked and path.exists():
        # a re-lock (a bot's, or a user's after an edit): the profile is checked in full
        # first, as ``load`` does, so a bad edit is its one line before any resolving (a torch
        # index's route reads only the requirements' names and the knowledge base, which a
        # bad profile cannot break)
        profiles.check_late(profile)
        unchecked = False
    with _profile_lock(project, name):
        previous_text = path.read_text("utf-8") if path.exists() else None
        previous = None
        if previous_text is not None:
            from ..model import lockfile

            try:
                previous = lockfile.loads(previous_text, path)
            except LockFileError as exc:
                if log:
                    log(f"{name}: ignoring the pins of an unreadable lock ({exc.message})")
                previous_text = None
        backend_name = resolver or default_resolver(previous)
        backend = resolve.backend(backend_name)
        idx = resolve.Indexes.of(profile)
        # The resolver's version, recorded in the lock (a process of its own the first
        # time), is asked while the resolver works, not before.
        version = functools.cache(backend.version)
        auth = Auth.from_urls(idx.configured_urls())

        def meanwhile() -> None:
            if unchecked:
                profiles.check_late(profile)
            version()
            import hashlib  # noqa: F401  (the fingerprint's; loaded here, off the critical path)

            from ..model import facts, lockfile  # noqa: F401  (the lock model and the build's facts: likewise)

            idx.default  # noqa: B018  (the default index's URL, asked of pip: every package's record names it)
            if idx.torch:  # a torch index publishes no sizes: resolve.finish reads them (cached by URL)
                from concurrent.futures import ThreadPoolExecutor  # noqa: F401

                from ..net import fetch  # noqa: F401

            # No torch file's facts cached yet (a first lock, a fresh cache): the facts of the
            # file the resolver will pick are read now, while it works, rather than after it.
            if not wheelfacts.any_cached():
                wheelfacts.read_ahead(profile.for_platform(profile.platform), idx.torch or idx.default, auth)

        if log:
            where = " and ".join(profile.all_platforms)
            log(f"{name}: resolving with {backend.name} for python {profile.python} on {where}")
        once = functools.cache(meanwhile)
        run = functools.partial(_lock_platform, idx=idx, auth=auth, meanwhile=once,
                                upgrade=upgrade, upgrade_packages=tuple(upgrade_packages), verify=verify, log=log)
        if not profile.multi_platform:
            packages, build, binary = run(profile, backend, previous, previous_text)
            lock = build_lock(profile, backend.name, version(), packages,
                              resolve.strip_credentials(idx.torch or idx.default), build, binary)
        else:
            lock = _lock_platforms(profile, backend_name, version, run, previous, previous_text, idx, log)
        once()  # if no resolver process ran it, the profile is checked now
        changed = write_atomic(path, lock.dumps())
    first = getattr(backend, "first_command", None)
    # never kept where the command carries a secret (credentials in an index URL, or one taken
    # from the environment): the cache is no place for them
    secret = auth.by_host or any("${" in u for u in (profile.index_url, profile.torch_index_url, *profile.extra_index_urls))
    if remember and first and not profile.multi_platform and not secret:
        from . import early

        early.remember(project, name, profile.files, *first)
    return LockResult(name, path, changed, lock, time.monotonic() - started, previous.pins if previous else {})


def _lock_platform(profile: Profile, backend, previous: Lock | None, previous_text: str | None, *, idx, auth,
                   meanwhile, upgrade: bool, upgrade_packages: tuple[str, ...], verify: bool, log: Log):
    """Resolve a one-platform profile: (packages, the torch file's build facts, its binary's
    arch list when read)."""
    name = profile.name

    def resolved(family) -> tuple[list, object]:
        with tempfile.TemporaryDirectory(prefix=f"envmgr-lock-{name}-") as tmp:
            pinned = backend.resolve(resolve.Request(
                profile=profile,
                workdir=Path(tmp),
                previous=None if upgrade else previous_text,
                upgrade=upgrade,
                upgrade_packages=upgrade_packages,
                meanwhile=meanwhile,
                family=family,
            ))
        packages = resolve.finish(pinned, auth=auth)
        torch = next((p for p in packages if p.name == "torch"), None)
        if torch is None or not torch.files:
            _verify(profile, idx, packages)  # says what is missing
        # What the pinned torch file says of itself: a profile whose variant is not the
        # build's stops here, before any lock is written.
        build = wheelfacts.build_facts("torch", torch.install_file, auth=auth)
        wheelfacts.check_variant(profile, build, torch.version, redact(resolve.strip_credentials(profile.torch_index)))
        return packages, build

    packages, build = resolved(_family_guess(profile, previous))
    # torch-family packages the resolver was given up front (the usual triton) that this
    # torch build does not require are resolved away again: only what it needs is locked
    added = set(getattr(backend, "added_family", ()))
    needed = wheelfacts.family_required(build, profile)
    if added - needed:
        if log:
            log(f"{name}: torch {build.version} requires no {', '.join(sorted(added - needed))}; resolving without")
        packages, build = resolved(tuple(sorted(needed)))
    _verify(profile, idx, packages)
    binary = None
    torch = next(p for p in packages if p.name == "torch")
    if verify:
        # Download every file into the verified cache: a published hash that does not
        # match the bytes fails here, before the lock is written.
        from ..net.fetch import fetch

        paths = fetch([(p.name, f) for p in packages for f in p.files], auth=auth)
        if build.cuda:
            binary = wheelfacts.binary_archs(paths[torch.install_file.sha256], torch.install_file.sha256)
    elif build.cuda:
        binary = wheelfacts.cached_binary_of(torch)
    return packages, build, binary


def _lock_platforms(profile: Profile, backend_name: str, version, run, previous: Lock | None,
                    previous_text: str | None, idx, log: Log) -> Lock:
    """A lock for several platforms: one resolution per platform (concurrently), the
    others again with the first's pins preferred where versions came out apart, then merged."""
    from concurrent.futures import ThreadPoolExecutor

    platforms = profile.all_platforms
    torch_index = resolve.strip_credentials(idx.torch or idx.default)

    def one(platform: str, prev_text: str | None):
        view = previous.for_platform(platform) if previous is not None and platform in previous.platforms else None
        # a backend each: a backend remembers what its last run added
        return run(profile.for_platform(platform), resolve.backend(backend_name), view, prev_text)

    with ThreadPoolExecutor(max_workers=len(platforms)) as pool:
        results = dict(zip(platforms, pool.map(lambda pl: one(pl, previous_text), platforms)))
    first = platforms[0]
    pins = {p.name: p.version for p in results[first][0]}

    def apart(platform: str) -> list[str]:
        return sorted(p.name for p in results[platform][0] if p.name in pins and pins[p.name] != p.version)

    redo = [pl for pl in platforms[1:] if apart(pl)]
    if redo:
        # uv prefers the pins of the lock it is given: the first platform's, as a lock
        first_lock = build_lock(profile.for_platform(first), backend_name, version(), results[first][0], torch_index,
                                *results[first][1:]).dumps()
        for pl in redo:
            if log:
                log(f"{profile.name}: {pl} resolved {', '.join(apart(pl))} apart from {first}; resolving again preferring {first}'s pins")
            results[pl] = one(pl, first_lock)
            if apart(pl) and log:
                log(f"{profile.name}: {', '.join(apart(pl))} stay apart on {pl} (the lock records each platform's)")
    packages = merge_platforms(profile, {pl: results[pl][0] for pl in platforms})

    def facts_of(platform: str) -> tuple[dict, dict]:
        packages_, build, binary = results[platform]
        torch = next(p for p in packages_ if p.name == "torch")
        return _facts(profile.for_platform(platform), torch.version, build, binary)

    apart_facts = platform_facts_apart(profile, facts_of(first), {pl: facts_of(pl) for pl in platforms[1:]})
    return build_lock(profile, backend_name, version(), packages, torch_index, results[first][1], results[first][2],
                      apart_facts)


def lock_profiles(project: Path, names: list[str], *, resolver: str | None = None, upgrade: bool = False,
                  upgrade_packages: list[str] = (), verify: bool = False, jobs: int = 4,
                  log: Log = None) -> list[LockResult]:
    """Lock several profiles at once; every profile is attempted, then the first error raised."""
    # Every profile validates before any resolution; one profile's late checks (packaging's
    # requirement parser, the knowledge base) run while its resolver starts.
    one = len(names) == 1
    loaded = {n: profiles.load(project, n, late=one) for n in names}
    if resolver is not None:
        resolve.backend(resolver)
    results: dict[str, LockResult] = {}
    errors: list[tuple[str, EnvmgrError]] = []

    def run(n: str) -> None:
        try:
            results[n] = lock_one(project, loaded[n], resolver=resolver, upgrade=upgrade,
                                  upgrade_packages=tuple(upgrade_packages), verify=verify, log=log, unchecked=one,
                                  remember=one and resolver is None and not (upgrade or upgrade_packages or verify))
        except EnvmgrError as exc:
            errors.append((n, exc))

    if len(names) == 1:
        run(names[0])
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(run, names))
    if errors:
        errors.sort(key=lambda e: names.index(e[0]))  # the headline: the first profile named, not the first to fail
        name, first = errors[0]
        if len(errors) > 1:
            others = "; ".join(f"{n}: {e.message}" for n, e in errors[1:])
            first.detail = "\n".join(x for x in (first.detail, f"also failed: {others}") if x)
        raise first
    return [results[n] for n in names]
