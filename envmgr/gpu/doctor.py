"""``envmgr doctor``: which profile and which variant can run on this machine, and why not.

Input: the host (``detect.detect()``: driver, the CUDA it supports, GPUs), the project's
profiles (their locks when present, else the knowledge base), every variant in the knowledge
base. Output: a report (plain data, rendered by ``render`` or printed as JSON) with a verdict
per profile and per variant and the recommended one of each.

The decisions are pure functions of (variant facts, host): ``assess`` and ``rank``, tested
on the fixture hosts without a GPU. ``init_profile`` writes a profile for the recommended
(or a named) variant.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import tomlkit

from ..core.errors import EnvmgrError, UserError
from ..core.files import write_atomic
from ..host import detect as detect_mod
from ..model import lockfile, profiles
from ..model.gpucompat import arch_coverage, driver_at_least, version_tuple
from ..model.variants import VariantFacts, kb

DOCTOR_SCHEMA = "envmgr-doctor/1"


@dataclass(frozen=True)
class Verdict:
    runs: bool
    reasons: tuple[str, ...] = ()  # why it cannot run
    notes: tuple[str, ...] = ()  # caveats when it can
    native: bool = False  # the driver supports this CUDA without minor-version compatibility


def assess(facts: VariantFacts, host: detect_mod.Host, torch_label: str = "") -> Verdict:
    """Can a build with these facts run on this host? Pure."""
    v = facts.variant
    if v == "cpu":
        return Verdict(True, notes=("CPU only: the GPU goes unused",) if host.gpus else ())
    if v.startswith("rocm"):
        return Verdict(False, ("a ROCm build needs an AMD GPU with ROCm; envmgr doctor detects NVIDIA GPUs only",))
    if not facts.cuda:
        return Verdict(False, (f"{v}: not a variant envmgr knows how to check",))
    if not host.driver:
        return Verdict(False, ("no NVIDIA driver found",))
    reasons: list[str] = []
    notes: list[str] = []
    build = f"{v}" + (f" (torch {torch_label})" if torch_label else "")
    if facts.min_driver and not driver_at_least(host.driver, facts.min_driver):
        reasons.append(f"driver {host.driver} is too old for {v}: CUDA {facts.cuda} needs >= {facts.min_driver}")
    elif not facts.min_driver:
        notes.append(f"minimum driver for CUDA {facts.cuda} unknown to the knowledge base")
    host_cuda = version_tuple(host.cuda)
    want = version_tuple(facts.cuda)
    if host_cuda and want and host_cuda[:1] < want[:1] and not reasons:
        reasons.append(f"driver {host.driver} supports CUDA {host.cuda}; {v} needs a CUDA {want[0]} driver")
    if host.cuda:  # read from the driver, or inferred from its version by the knowledge base
        native = bool(host_cuda and want and host_cuda[:2] >= want[:2])
    else:
        native = bool(facts.toolkit_driver) and driver_at_least(host.driver, facts.toolkit_driver)
    if not reasons and not native:
        no_jit = facts.toolkit_driver and not driver_at_least(host.driver, facts.toolkit_driver)
        notes.append(f"runs through CUDA minor-version compatibility (driver's CUDA {host.cuda or '?'} < {facts.cuda})"
                     + (f": no PTX JIT below driver {facts.toolkit_driver}" if no_jit else ""))
    if not host.gpus:
        notes.append("no GPU detected: GPU architecture not checked")
    elif not facts.arch_list:
        notes.append(f"the knowledge base has no arch list for {build}: GPU architecture not checked")
    else:
        for g in host.gpus:
            if g.capability is None:
                notes.append(f"GPU {g.index} {g.name}: compute capability unknown, not checked")
                continue
            cov = arch_coverage(g.capability, facts.arch_list, facts.ptx, host.driver, facts.toolkit_driver)
            if not cov["covered"]:
                why = cov["reason"].replace("is not compiled in", f"is not compiled into {build}", 1)
                reasons.append(f"GPU {g.index} {g.name}: {why}")
            elif cov["via"] and cov["via"] != g.arch:
                notes.append(f"GPU {g.index} {g.name}: {cov['reason']}")
    return Verdict(not reasons, tuple(reasons), tuple(notes), native)


def rank(torch_version: str, facts: VariantFacts, verdict: Verdict) -> tuple:
    """Higher is better among variants that run: the newest torch first, then a CUDA the
    driver supports natively, then the newest CUDA; cpu last."""
    gpu = bool(facts.cuda)
    return (verdict.runs, gpu, version_tuple(torch_version), verdict.native, version_tuple(facts.cuda))


def newest_release_with(variant: str) -> str | None:
    minors = kb().releases_with_variant(variant)
    return max(minors, key=version_tuple) if minors else None


def variant_verdicts(host: detect_mod.Host) -> list[dict]:
    k = kb()
    rows = []
    for v in k.known_variants():
        minor = newest_release_with(v)
        if minor is None:
            continue
        facts = k.facts(v, f"{minor}.0")
        verdict = assess(facts, host, minor)
        rows.append({"variant": v, "cuda": facts.cuda or None, "torch": minor, "min_driver": facts.min_driver or None,
                     "arch_list": list(facts.arch_list), "ptx": facts.ptx or None,
                     "runs": verdict.runs, "reasons": list(verdict.reasons), "notes": list(verdict.notes),
                     "_rank": rank(minor, facts, verdict)})
    return rows


def _torch_of(profile: profiles.Profile) -> str:
    spec = profile.torch.strip()
    m = re.fullmatch(r"(?:==)?\s*(\d+(?:\.\d+)*)", spec)
    if m:
        return m.group(1)
    try:
        releases = kb().releases_admitted(spec)
    except ValueError:
        return ""
    return max((r.minor for r in releases), key=version_tuple, default="")


def facts_from_lock(lock: lockfile.Lock) -> VariantFacts:
    m = lock.meta
    return VariantFacts(variant=m.variant, cuda=m.cuda, min_driver=m.min_driver, toolkit_driver=m.toolkit_driver,
                        arch_list=tuple(m.arch_list), ptx=m.ptx)


def profile_verdicts(project: Path, host: detect_mod.Host) -> list[dict]:
    rows = []
    for name in profiles.list_profiles(project):
        try:
            p = profiles.load(project, name)
        except EnvmgrError as exc:
            rows.append({"name": name, "variant": None, "torch": None, "source": None, "runs": False,
                         "reasons": [f"profile does not load: {exc}"], "notes": [], "_rank": (False,)})
            continue
        torch_version = _torch_of(p)
        source = "profile"
        facts = kb().facts(p.variant, torch_version or "0")
        notes: list[str] = []
        path = lockfile.lock_path(project, name)
        if path.is_file():
            try:
                lock = lockfile.read(path).for_host()
                if lock.meta.variant == p.variant:
                    facts = facts_from_lock(lock)
                    pkg = lock.package("torch")
                    torch_version = pkg.version if pkg else torch_version
                    source = "lock"
                else:
                    notes.append(f"the lock is for {lock.meta.variant}, the profile says {p.variant}: run `envmgr lock {name}`")
            except EnvmgrError as exc:
                notes.append(f"lock unreadable ({exc}); judged from the profile")
        verdict = assess(facts, host, torch_version)
        rows.append({"name": name, "variant": p.variant, "torch": torch_version or p.torch, "source": source,
                     "runs": verdict.runs, "reasons": list(verdict.reasons), "notes": notes + list(verdict.notes),
                     "_rank": rank(torch_version, facts, verdict) + (name == "default",)})
    return rows


def report(project: Path, host: detect_mod.Host | None = None) -> dict:
    """The whole doctor report as plain data (the ``--json`` document)."""
    host = host if host is not None else detect_mod.detect()
    variants = variant_verdicts(host)
    prof = profile_verdicts(project, host)
    runnable_v = [r for r in variants if r["runs"]]
    best_v = max(runnable_v, key=lambda r: r["_rank"])["variant"] if runnable_v else "cpu"
    runnable_p = [r for r in prof if r["runs"]]
    same = [r for r in runnable_p if r["variant"] == best_v]
    pool = same or runnable_p
    best_p = max(pool, key=lambda r: r["_rank"])["name"] if pool else None
    why = _why(host, best_v, variants)
    for rows in (variants, prof):
        for r in rows:
            r.pop("_rank", None)
    data = {"schema": DOCTOR_SCHEMA, **host.to_json(), "profiles": prof, "variants": variants,
            "recommended_variant": best_v, "recommended_profile": best_p, "recommendation": why}
    if best_p is None:
        data["notes"] = list(data["notes"]) + [f"no profile here runs on this machine; `envmgr init --variant auto NAME` writes one for {best_v}"]
    return data


def _why(host: detect_mod.Host, best: str, variants: list[dict]) -> str:
    if not host.driver:
        return "no NVIDIA driver: cpu"
    if best == "cpu":
        return f"no CUDA variant runs with driver {host.driver} on these GPUs: cpu"
    row = next(r for r in variants if r["variant"] == best)
    gpus = ", ".join(sorted({f"{g.name} ({g.arch})" for g in host.gpus})) or "no GPU detected"
    return f"{best}: the newest torch ({row['torch']}) and CUDA ({row['cuda']}) that driver {host.driver} runs on {gpus}"


# -- envmgr init ----------------------------------------------------------------------------

@dataclass(frozen=True)
class InitResult:
    name: str
    path: Path
    variant: str
    torch: str
    python: str
    reason: str

    def to_json(self) -> dict:
        return {"profile": self.name, "path": str(self.path), "variant": self.variant, "torch": self.torch,
                "python": self.python, "reason": self.reason}


def init_profile(project: Path, name: str, *, variant: str = "auto", torch: str | None = None,
                 python: str | None = None, force: bool = False, host: detect_mod.Host | None = None) -> InitResult:
    """Write ``profiles/NAME.toml`` for ``variant`` (``auto``: doctor's recommendation) with the
    knowledge base's newest torch release that has it. Refuses to overwrite without ``force``."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name.startswith("_"):
        raise UserError(f"{name!r} is not a profile name", hint="use letters, digits, '-', '_', '.'; not starting with '_'")
    path = profiles.profile_path(project, name)
    if path.exists() and not force:
        raise UserError(f"{path} already exists", hint="pass --force to overwrite it")
    k = kb()
    asked = variant
    reason = f"--variant {variant}"
    if variant == "auto":
        host = host if host is not None else detect_mod.detect()
        variants = variant_verdicts(host)
        runnable = [r for r in variants if r["runs"]]
        variant = max(runnable, key=lambda r: r["_rank"])["variant"] if runnable else "cpu"
        reason = _why(host, variant, variants)
    elif not k.is_known_variant(variant):
        raise UserError(f"--variant {variant!r}: unknown variant", hint=f"auto or one of: {', '.join(k.known_variants())}")
    minor = newest_release_with(variant)
    if torch is None:
        if minor is None:
            raise UserError(f"no torch release in the knowledge base has {variant}", hint="pass --torch VERSION")
        torch = f"=={minor}.*"
    release = k.release(re.sub(r"^[=<>!~ ]+", "", torch).replace("*", "0")) or (k.torch.get(minor) if minor else None)
    if python is None:
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        python = here if release is None or here in release.python else release.python[-1]
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"written by `envmgr init --variant {asked}`: {reason}"))
    doc.add("description", f"torch {torch.lstrip('=')} with {variant}" + (f" (CUDA {k.cuda_of(variant)})" if k.cuda_of(variant) else ""))
    if (project / "profiles" / "_base.toml").is_file():
        doc.add("extends", "_base.toml")
    doc.add("variant", variant)
    doc.add("torch", torch)
    doc.add("python", python)
    text = tomlkit.dumps(doc)
    old = path.read_text("utf-8") if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
    try:
        profiles.load(project, name)
    except EnvmgrError:
        if old is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, old)
        raise
    return InitResult(name, path, variant, torch, python, reason)
