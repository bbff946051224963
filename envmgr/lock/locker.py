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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from packaging.version import Version

from ..core.errors import EnvmgrError, LockFileError, ResolutionError
from ..core.files import write_atomic
from ..core.urls import redact
from ..model import lockfile, profiles
from ..model.lockfile import Lock, LockMeta
from ..model.names import canonical
from ..model.profiles import Profile
from ..model.variants import kb
from ..net.credentials import Auth
from . import facts as wheelfacts
from . import resolve

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
    profile = profiles.load(project, name)
    path = lockfile.lock_path(project, name)
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
    reasons += wheelfacts.drift(current)  # the knowledge base (and overlays) and the torch binary
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
    from packaging.requirements import Requirement

    direct = {canonical(Requirement(r).name) for r in profile.requirements}
    return tuple(sorted(p.key for p in previous.packages
                        if kb().is_torch_family(p.key) and p.key != "torch" and p.key not in direct))


def build_lock(profile: Profile, backend_name: str, backend_version: str, packages, torch_index: str,
               build=None, binary: dict | None = None) -> Lock:
    """The lock of ``packages``; ``build``: the torch file's own facts (``model.facts``),
    ``binary``: the arch list read from its ``libtorch_cuda.so`` (``lock.facts``)."""
    torch = next(p for p in packages if p.name == "torch")
    facts, sources = wheelfacts.lock_facts(profile.variant, torch.version, build, binary, profile.python,
                                           profile.platform)
    inputs = profile.lock_inputs(backend_name, backend_version)
    meta = LockMeta(
        profile=profile.name,
        fingerprint=lockfile.fingerprint(inputs),
        inputs=inputs,
        resolver=backend_name,
        resolver_version=backend_version,
        python=profile.python,
        platform=profile.platform,
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
        environments=(profile.environment_marker,),
    )


def lock_one(project: Path, profile: Profile, *, resolver: str | None = None, upgrade: bool = False,
             upgrade_packages: tuple[str, ...] = (), verify: bool = False, log: Log = None) -> LockResult:
    started = time.monotonic()
    name = profile.name
    path = lockfile.lock_path(project, name)
    with _profile_lock(project, name):
        previous_text = path.read_text("utf-8") if path.exists() else None
        previous = None
        if previous_text is not None:
            try:
                previous = lockfile.loads(previous_text, path)
            except LockFileError as exc:
                if log:
                    log(f"{name}: ignoring the pins of an unreadable lock ({exc.message})")
                previous_text = None
        backend = resolve.backend(resolver or default_resolver(previous))
        idx = resolve.Indexes.of(profile)
        # The resolver's version, recorded in the lock (a process of its own the first
        # time), is asked while the resolver works, not before.
        version = functools.cache(backend.version)

        def meanwhile() -> None:
            version()
            import hashlib  # noqa: F401  (the fingerprint's; loaded here, off the critical path)

            # No torch file's facts cached yet (a first lock, a fresh cache): the facts of the
            # file the resolver will pick are read now, while it works, rather than after it.
            if not wheelfacts.any_cached():
                wheelfacts.read_ahead(profile, idx.torch or idx.default, auth)

        if log:
            log(f"{name}: resolving with {backend.name} for python {profile.python} on {profile.platform}")
        auth = Auth.from_urls(idx.all_urls())
        family = _family_guess(profile, previous)

        def resolved(family) -> tuple[list, object]:
            with tempfile.TemporaryDirectory(prefix=f"envmgr-lock-{name}-") as tmp:
                pinned = backend.resolve(resolve.Request(
                    profile=profile,
                    workdir=Path(tmp),
                    previous=None if upgrade else previous_text,
                    upgrade=upgrade,
                    upgrade_packages=tuple(upgrade_packages),
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

        packages, build = resolved(family)
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
        lock = build_lock(profile, backend.name, version(), packages,
                          resolve.strip_credentials(idx.torch or idx.default), build, binary)
        changed = write_atomic(path, lock.dumps())
    return LockResult(name, path, changed, lock, time.monotonic() - started, previous.pins if previous else {})


def lock_profiles(project: Path, names: list[str], *, resolver: str | None = None, upgrade: bool = False,
                  upgrade_packages: list[str] = (), verify: bool = False, jobs: int = 4,
                  log: Log = None) -> list[LockResult]:
    """Lock several profiles at once; every profile is attempted, then the first error raised."""
    loaded = {n: profiles.load(project, n) for n in names}  # every profile validates before any resolution
    if resolver is not None:
        resolve.backend(resolver)
    results: dict[str, LockResult] = {}
    errors: list[tuple[str, EnvmgrError]] = []

    def run(n: str) -> None:
        try:
            results[n] = lock_one(project, loaded[n], resolver=resolver, upgrade=upgrade,
                                  upgrade_packages=tuple(upgrade_packages), verify=verify, log=log)
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
