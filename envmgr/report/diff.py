"""Lock-vs-lock diff: what a lock update changes, for pull-request bodies and bots.

Input: two locks of one profile (either may be missing: an added or removed profile).
Output: a :class:`ProfileDiff` of frozen dataclasses: the packages added, removed,
upgraded, downgraded or rebuilt, each with the kind of change (major, minor, patch, a local
label such as ``+cu126 -> +cu128``); the torch, CUDA, cuDNN, NCCL and triton changes as
*key* changes; the minimum driver; the compiled GPU arch list and which GPUs stop or start
being supported (by ``model.gpucompat``'s coverage rule, the one ``check`` and ``doctor``
decide with); the download size. :func:`diff_locks` is pure; rendering lives in
``diffreport``.

The I/O half (:func:`load_pairs`) reads the base locks from git (``git show
REF:./locks/pylock.NAME.toml``) or from a directory, and the new ones from the working tree.
Both are read strictly: ``lockfile.loads`` also rejects a package whose version was edited
by hand so it no longer matches its files' names; that is an error, not a diff.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from packaging.version import InvalidVersion, Version

from ..core.errors import LockFileError, UserError
from ..model.gpucompat import parse_arch, runs_on
from ..model.lockfile import (
    Lock,
    LockedPackage,
    changed_inputs,
    loads,
    lock_path,
    lock_profile_name,
)

# -- key components -----------------------------------------------------------------------

# (label, pattern over canonical package names); CUDA also reads the lock's `cuda` fact.
KEY_COMPONENTS: tuple[tuple[str, re.Pattern], ...] = (
    ("torch", re.compile(r"^torch$")),
    ("CUDA", re.compile(r"^nvidia-cuda-runtime(-cu\d+)?$")),
    ("cuDNN", re.compile(r"^nvidia-cudnn(-cu\d+)?$")),
    ("NCCL", re.compile(r"^nvidia-nccl(-cu\d+)?$")),
    ("triton", re.compile(r"^(pytorch-)?triton(-rocm|-xpu)?$")),
)

# -- GPU architectures --------------------------------------------------------------------

# compute capability -> the GPUs that have it (family: examples)
GPU_FAMILIES: dict[tuple[int, int], str] = {
    (3, 5): "Kepler: K40, GTX 780",
    (3, 7): "Kepler: K80",
    (5, 0): "Maxwell: GTX 750, Quadro K620",
    (5, 2): "Maxwell: GTX 9xx, M40, Titan X",
    (5, 3): "Maxwell: Jetson TX1, Nano",
    (6, 0): "Pascal: P100",
    (6, 1): "Pascal: GTX 10xx, P4, P40",
    (6, 2): "Pascal: Jetson TX2",
    (7, 0): "Volta: V100",
    (7, 2): "Volta: Jetson Xavier",
    (7, 5): "Turing: T4, RTX 20xx, Quadro RTX",
    (8, 0): "Ampere: A100, A30",
    (8, 6): "Ampere: RTX 30xx, A10, A40, A6000",
    (8, 7): "Ampere: Jetson Orin",
    (8, 9): "Ada: RTX 40xx, L4, L40",
    (9, 0): "Hopper: H100, H200, GH200",
    (10, 0): "Blackwell: B200, GB200",
    (10, 3): "Blackwell: B300, GB300",
    (11, 0): "Blackwell: Jetson Thor",
    (12, 0): "Blackwell: RTX 50xx, RTX PRO 6000",
    (12, 1): "Blackwell: DGX Spark",
}
_FAMILY_BY_MAJOR = {3: "Kepler", 5: "Maxwell", 6: "Pascal", 7: "Volta/Turing", 8: "Ampere/Ada", 9: "Hopper", 10: "Blackwell", 11: "Blackwell", 12: "Blackwell"}


def describe_arch(arch: str) -> str:
    """``sm_70`` -> ``sm_70 (Volta: V100)``."""
    parsed = parse_arch(arch)
    if parsed is None:
        return arch
    _kind, major, minor, _suffix = parsed
    name = GPU_FAMILIES.get((major, minor)) or _FAMILY_BY_MAJOR.get(major)
    return f"{arch} ({name})" if name else arch


# -- the diff model -----------------------------------------------------------------------

@dataclass(frozen=True)
class PackageChange:
    name: str
    old: str | None  # version before (None: added)
    new: str | None  # version after (None: removed)
    kind: str  # added | removed | upgraded | downgraded | relabelled | rebuilt | moved
    level: str = ""  # major | minor | patch | pre-release | post-release | dev | local | ""
    old_label: str = ""  # local version labels, when they changed (cu126 -> cu128)
    new_label: str = ""
    old_index: str = ""
    new_index: str = ""
    size_delta: int = 0

    @property
    def label_changed(self) -> bool:
        return self.old_label != self.new_label


@dataclass(frozen=True)
class KeyChange:
    """A change to torch, CUDA, cuDNN, NCCL or triton, called out first."""

    component: str  # torch | CUDA | cuDNN | NCCL | triton
    old: str  # "" when absent
    new: str
    kind: str  # as PackageChange.kind
    level: str = ""
    old_package: str = ""  # the package carrying it (nvidia-cudnn-cu12), "" for CUDA's own fact
    new_package: str = ""
    old_label: str = ""  # local version labels, when they changed
    new_label: str = ""


@dataclass(frozen=True)
class ArchChange:
    old: tuple[str, ...]
    new: tuple[str, ...]
    old_ptx: str
    new_ptx: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    gpus_gained: tuple[str, ...]  # "7.0 Volta: V100"
    gpus_lost: tuple[str, ...]


@dataclass(frozen=True)
class FactChange:
    name: str  # variant | cuda | min-driver | toolkit-driver | python | platform | resolver
    old: str
    new: str


@dataclass(frozen=True)
class ProfileDiff:
    profile: str
    status: str  # added | removed | changed | unchanged
    old_torch: str = ""
    new_torch: str = ""
    key: tuple[KeyChange, ...] = ()
    packages: tuple[PackageChange, ...] = ()
    facts: tuple[FactChange, ...] = ()
    arch: ArchChange | None = None
    inputs: tuple[str, ...] = ()  # changed inputs, one line each
    old_size: int = 0
    new_size: int = 0
    old_count: int = 0
    new_count: int = 0
    old_digest: str = ""
    new_digest: str = ""
    # facts of the lock (the new one; the old one when removed) that no primary source gave
    # (arch-list, ptx, min-driver, toolkit-driver): a reviewer should not take them as read
    inferred: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.status != "unchanged"

    @property
    def size_delta(self) -> int:
        return self.new_size - self.old_size

    def fact(self, name: str) -> FactChange | None:
        return next((f for f in self.facts if f.name == name), None)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.packages:
            out[p.kind] = out.get(p.kind, 0) + 1
        return out

    def to_json(self) -> dict:
        data = asdict(self)
        data["changed"] = self.changed
        data["size_delta"] = self.size_delta
        for p, raw in zip(self.packages, data["packages"]):
            raw["label_changed"] = p.label_changed
        return data


# -- versions -----------------------------------------------------------------------------

def classify(old: str, new: str) -> tuple[str, str]:
    """(kind, level) of a version change: ``("upgraded", "minor")``, ``("relabelled", "local")``.

    Same version: ``("", "")``. Versions that do not parse compare as text.
    """
    try:
        a, b = Version(old), Version(new)
    except InvalidVersion:
        return ("", "") if old == new else ("upgraded" if new > old else "downgraded", "")
    if a == b:
        return "", ""
    pa, pb = Version(a.public), Version(b.public)
    if pa == pb:
        return "relabelled", "local"
    kind = "upgraded" if pb > pa else "downgraded"
    ra, rb = a.release, b.release
    width = max(len(ra), len(rb), 3)
    ra, rb = ra + (0,) * (width - len(ra)), rb + (0,) * (width - len(rb))
    if a.epoch != b.epoch or ra[0] != rb[0]:
        return kind, "major"
    if ra[1] != rb[1]:
        return kind, "minor"
    if ra != rb:
        return kind, "patch"
    if a.pre != b.pre:
        return kind, "pre-release"
    if a.post != b.post:
        return kind, "post-release"
    return kind, "dev"


def _label(version: str) -> str:
    try:
        return Version(version).local or ""
    except InvalidVersion:
        return ""


def _package_change(name: str, old: LockedPackage | None, new: LockedPackage | None) -> PackageChange | None:
    if old is None and new is None:
        return None
    if old is None:
        return PackageChange(name, None, new.version, "added", new_label=_label(new.version), new_index=new.index, size_delta=new.size)
    if new is None:
        return PackageChange(name, old.version, None, "removed", old_label=_label(old.version), old_index=old.index, size_delta=-old.size)
    kind, level = classify(old.version, new.version)
    if not kind:
        if {f.sha256 for f in old.files} != {f.sha256 for f in new.files}:
            kind = "rebuilt"  # same version, other bytes: worth a reviewer's look
        elif old.index != new.index:
            kind = "moved"
        else:
            return None
    la, lb = _label(old.version), _label(new.version)
    return PackageChange(
        name, old.version, new.version, kind, level,
        old_label=la if la != lb else "", new_label=lb if la != lb else "",
        old_index=old.index, new_index=new.index, size_delta=new.size - old.size,
    )


def _component_package(lock: Lock | None, pattern: re.Pattern) -> LockedPackage | None:
    if lock is None:
        return None
    found = sorted((p for p in lock.packages if pattern.match(p.key)), key=lambda p: p.key)
    return found[-1] if found else None  # cu13 sorts after cu12


def _key_changes(old: Lock | None, new: Lock | None) -> list[KeyChange]:
    out = []
    for label, pattern in KEY_COMPONENTS:
        a, b = _component_package(old, pattern), _component_package(new, pattern)
        va, vb = (a.version if a else ""), (b.version if b else "")
        if label == "CUDA":
            ca, cb = (old.meta.cuda if old else ""), (new.meta.cuda if new else "")
            if ca == cb and va == vb:
                continue
            kind, level = classify(ca or "0", cb or "0") if ca != cb else classify(va or "0", vb or "0")
            if not ca or not cb:
                kind, level = ("added" if cb else "removed"), ""
            out.append(KeyChange(label, _cuda_text(ca, va), _cuda_text(cb, vb), kind, level, a.key if a else "", b.key if b else ""))
            continue
        if a is None and b is None:
            continue
        if a is not None and b is not None:
            change = _package_change(a.key, a, b)
            if change is None and a.key == b.key:
                continue
            kind, level = (change.kind, change.level) if change else ("renamed", "")
            if a.key != b.key and change is not None and change.kind in ("rebuilt", "moved"):
                kind = "renamed"
        else:
            kind, level = ("added" if b else "removed"), ""
        la, lb = _label(va), _label(vb)
        if not (a and b) or la == lb:
            la = lb = ""
        out.append(KeyChange(label, va, vb, kind, level, a.key if a else "", b.key if b else "", la, lb))
    return out


def _cuda_text(cuda: str, runtime: str) -> str:
    if not cuda and not runtime:
        return ""
    if cuda and runtime:
        return f"{cuda} (runtime {runtime})"
    return cuda or f"runtime {runtime}"


def _arch_change(old: Lock | None, new: Lock | None) -> ArchChange | None:
    a = old.meta.arch_list if old else ()
    b = new.meta.arch_list if new else ()
    pa, pb = (old.meta.ptx if old else ""), (new.meta.ptx if new else "")
    if old is None or new is None or (tuple(a) == tuple(b) and pa == pb):
        return None
    gained, lost = [], []
    for cap, name in GPU_FAMILIES.items():
        before, after = runs_on(cap, a, pa), runs_on(cap, b, pb)
        if before != after:
            (gained if after else lost).append(f"{cap[0]}.{cap[1]} {name}")
    return ArchChange(
        old=tuple(a), new=tuple(b), old_ptx=pa, new_ptx=pb,
        added=tuple(x for x in b if x not in a), removed=tuple(x for x in a if x not in b),
        gpus_gained=tuple(gained), gpus_lost=tuple(lost),
    )


_FACTS = (
    ("variant", lambda m: m.variant),
    ("cuda", lambda m: m.cuda),
    ("min-driver", lambda m: m.min_driver),
    ("toolkit-driver", lambda m: m.toolkit_driver),
    ("python", lambda m: m.python),
    ("platform", lambda m: ", ".join(m.all_platforms)),
    ("resolver", lambda m: f"{m.resolver} {m.resolver_version}".strip()),
    ("torch-index", lambda m: m.torch_index),
)


def _package_changes(old: Lock | None, new: Lock | None) -> list[PackageChange]:
    old_pkgs = {p.key: p for p in old.packages} if old else {}
    new_pkgs = {p.key: p for p in new.packages} if new else {}
    return [c for name in sorted(set(old_pkgs) | set(new_pkgs))
            if (c := _package_change(name, old_pkgs.get(name), new_pkgs.get(name))) is not None]


def _fact_changes(old: Lock | None, new: Lock | None) -> list[FactChange]:
    if old is None or new is None:
        return []
    return [FactChange(name, get(old.meta), get(new.meta)) for name, get in _FACTS
            if name != "platform" and get(old.meta) != get(new.meta)]


def _per_platform(old: Lock | None, new: Lock | None, changes) -> tuple:
    """``changes(old, new)`` of one-platform locks; for locks of several platforms, of each
    platform's view: a change the same on every platform is listed once, one that differs
    (a package pinned apart, a platform added) per platform, as ``NAME [PLATFORM]``; a
    package's size change is the sum over the platforms."""
    have = [*(old.platforms if old else ()), *(new.platforms if new else ())]
    platforms = tuple(dict.fromkeys(have))
    if len(platforms) <= 1:
        return tuple(changes(old, new))

    def view(lock: Lock | None, platform: str) -> Lock | None:
        return lock.for_platform(platform) if lock is not None and platform in lock.platforms else None

    per = {pl: {c.name: c for c in changes(view(old, pl), view(new, pl))} for pl in platforms}
    out = []
    for name in sorted({n for found in per.values() for n in found}):
        found = [per[pl].get(name) for pl in platforms]
        same = [replace(c, size_delta=0) if isinstance(c, PackageChange) else c for c in found]
        if None not in found and all(c == same[0] for c in same):
            total = sum(getattr(c, "size_delta", 0) for c in found)
            out.append(replace(found[0], size_delta=total) if isinstance(found[0], PackageChange) else found[0])
        else:
            out += [replace(c, name=f"{name} [{pl}]") for pl, c in zip(platforms, found) if c is not None]
    return tuple(out)


def diff_locks(old: Lock | None, new: Lock | None, profile: str = "") -> ProfileDiff:
    """What changed from ``old`` to ``new`` (None: the profile had / has no lock). Pure."""
    if old is None and new is None:
        raise ValueError("diff_locks needs at least one lock")
    profile = profile or (new or old).meta.profile  # type: ignore[union-attr]
    packages = _per_platform(old, new, _package_changes)
    facts: tuple[FactChange, ...] = ()
    inputs: tuple[str, ...] = ()
    if old is not None and new is not None:
        if old.platforms != new.platforms:
            facts = (FactChange("platform", ", ".join(old.platforms), ", ".join(new.platforms)),)
        facts += _per_platform(old, new, _fact_changes)
        inputs = tuple(changed_inputs(old.meta.inputs, new.meta.inputs))
    key = tuple(_key_changes(old, new))
    arch = _arch_change(old, new)
    if old is None:
        status = "added"
    elif new is None:
        status = "removed"
    else:
        status = "changed" if (packages or facts or inputs or arch or key) else "unchanged"
    torch_of = lambda lock: (lock.package("torch").version if lock and lock.package("torch") else "")  # noqa: E731
    return ProfileDiff(
        profile=profile,
        status=status,
        old_torch=torch_of(old),
        new_torch=torch_of(new),
        key=key,
        packages=packages,
        facts=facts,
        arch=arch,
        inputs=inputs,
        old_size=old.download_size if old else 0,
        new_size=new.download_size if new else 0,
        old_count=len(old.packages) if old else 0,
        new_count=len(new.packages) if new else 0,
        old_digest=old.digest() if old else "",
        new_digest=new.digest() if new else "",
        inferred=(new or old).meta.inferred,  # type: ignore[union-attr]
    )


# -- consistency --------------------------------------------------------------------------

# -- reading both sides -------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    profile: str
    old: Lock | None
    new: Lock | None


@dataclass
class _GitBase:
    project: Path
    ref: str
    _names: list[str] | None = field(default=None)

    def _git(self, *args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                ["git", "-C", str(self.project), *args], capture_output=True, text=True, check=False
            )
        except FileNotFoundError:
            raise UserError("git is not installed", hint="install git or pass --base DIR")

    def verify(self) -> None:
        res = self._git("rev-parse", "--git-dir")
        if res.returncode != 0:
            why = (res.stderr.strip().splitlines() or [""])[0]
            detail = f" ({why})" if why and "not a git repository" not in why else ""
            raise UserError(f"{self.project} is not in a git repository{detail}", hint="pass --base DIR with the old locks")
        if self.ref.startswith("-") or self._git("rev-parse", "--verify", "--quiet", f"{self.ref}^{{commit}}").returncode != 0:
            raise UserError(
                f"unknown git ref {self.ref!r}", hint="name a commit, branch or tag, or a directory holding the old locks"
            )

    def names(self) -> list[str]:
        res = self._git("ls-tree", "--name-only", self.ref, "--", "locks/")
        if res.returncode != 0:
            return []
        return sorted(
            lock_profile_name(Path(line)) for line in res.stdout.splitlines()
            if Path(line).name.startswith("pylock.") and line.endswith(".toml")
        )

    def read(self, profile: str) -> Lock | None:
        spec = f"{self.ref}:./locks/pylock.{profile}.toml"
        res = self._git("show", spec)
        if res.returncode != 0:
            return None  # absent at the base: every package is new
        lock = loads(res.stdout, f"{self.ref}:locks/pylock.{profile}.toml")
        return lock


def _dir_locks(directory: Path) -> Path:
    """A directory of old locks: a project (``DIR/locks/``) or the locks folder itself."""
    return directory / "locks" if (directory / "locks").is_dir() else directory


def _read_dir(directory: Path, profile: str) -> Lock | None:
    path = directory / f"pylock.{profile}.toml"
    if not path.is_file():
        return None
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LockFileError(f"{path}: cannot read: {exc}")
    lock = loads(text, path)
    return lock


def _dir_names(directory: Path) -> list[str]:
    return sorted(lock_profile_name(p) for p in directory.glob("pylock.*.toml"))


def load_pairs(project: Path, names: list[str] | None, base: str = "HEAD") -> list[Pair]:
    """The (base, working tree) locks of each profile named (default: every profile with a lock
    on either side). ``base`` is a git ref, or a directory holding the old locks."""
    work_dir = lock_path(project, "x").parent
    base_dir = Path(base) if base and Path(base).is_dir() else None
    if base_dir is not None:
        old_dir = _dir_locks(base_dir)
        old_names, read_old = _dir_names(old_dir), lambda n: _read_dir(old_dir, n)
        label = str(base_dir)
    else:
        git = _GitBase(project, base or "HEAD")
        git.verify()
        old_names, read_old, label = git.names(), git.read, git.ref
    selected = list(dict.fromkeys(names)) if names else sorted(set(old_names) | set(_dir_names(work_dir)))
    pairs = []
    for name in selected:
        old, new = read_old(name), _read_dir(work_dir, name)
        if old is None and new is None:
            raise UserError(f"no lock for profile {name!r} at {label} or in {work_dir}", hint=f"create it with `envmgr lock {name}`")
        pairs.append(Pair(name, old, new))
    return pairs


def diff_project(project: Path, names: list[str] | None = None, base: str = "HEAD") -> list[ProfileDiff]:
    return [diff_locks(p.old, p.new, p.profile) for p in load_pairs(project, names, base)]
