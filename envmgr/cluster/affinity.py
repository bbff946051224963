"""Where a lock can run, as Kubernetes node affinity on GPU feature discovery's labels.

Input: a lock's facts (minimum driver, the toolkit's driver, compiled arch list, PTX).
Output: a ``nodeAffinity`` whose required terms admit exactly the nodes whose labels say
the driver and the GPU's compute capability can run the build; ``None`` for a cpu lock
(nothing GPU). The rules are the probe's (``model.gpucompat.arch_coverage``):

- driver: ``nvidia.com/cuda.driver.major`` at least the lock's minimum's major (a minimum of
  450.80.02 admits 450 and up; the probe's ``driver.minimum`` check judges the full version);
- SASS ``sm_XY`` runs on compute major X with minor >= Y (``nvidia.com/gpu.compute.major`` /
  ``.minor``); arch-specific ``sm_XYa`` only on exactly X.Y;
- PTX (``compute_XY`` entries, or the lock's ``ptx``) is JIT-compiled for any capability at or
  above it (``compute_XYa`` for X.Y only, ``compute_XYf`` within major X), which needs the driver of the toolkit that wrote it: those terms ask for the
  toolkit driver's major instead of the minimum's.

Terms are ORed, expressions within a term ANDed; ``Gt`` compares the labels as integers.
``admits`` evaluates an affinity against a node's labels the way the scheduler does.
"""

from __future__ import annotations

from ..model.gpucompat import parse_arch, version_tuple

DRIVER_MAJOR = "nvidia.com/cuda.driver.major"
COMPUTE_MAJOR = "nvidia.com/gpu.compute.major"
COMPUTE_MINOR = "nvidia.com/gpu.compute.minor"
GPU_RESOURCE = "nvidia.com/gpu"

PLATFORM_ARCH = {"linux-x86_64": "amd64", "linux-aarch64": "arm64"}


ARCH_LABEL = "kubernetes.io/arch"


def node_selector(platforms) -> dict:
    """The lock's platform as well-known node labels (every lock, cpu included); a lock for
    several platforms is matched by :func:`arch_affinity` instead (a selector has no "or")."""
    platforms = (platforms,) if isinstance(platforms, str) else tuple(platforms)
    selector = {"kubernetes.io/os": "linux"}
    if len(platforms) == 1 and platforms[0] in PLATFORM_ARCH:
        selector[ARCH_LABEL] = PLATFORM_ARCH[platforms[0]]
    return selector


def arch_affinity(platforms) -> dict:
    """Nodes of any of the lock's architectures (the image index has a manifest for each)."""
    arches = [PLATFORM_ARCH[p] for p in platforms if p in PLATFORM_ARCH]
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": ARCH_LABEL, "operator": "In", "values": arches}]}]}}


def _at_least(key: str, value: int) -> list[dict]:
    """``key >= value`` for a non-negative integer label (nothing when any value does)."""
    if value <= 0:
        return [{"key": key, "operator": "Exists"}]
    return [{"key": key, "operator": "Gt", "values": [str(value - 1)]}]


def _major(driver: str) -> int:
    parts = version_tuple(driver)
    return parts[0] if parts else 0


def capability_terms(arch_list, ptx=()) -> list[tuple[list[dict], bool]]:
    """``(expressions, needs_jit)`` per way a GPU can be covered; empty: any capability."""
    from_minor: dict[tuple[int, bool], int] = {}  # (major, jit) -> lowest minor reached, same major
    exact: set[tuple[int, int, bool]] = set()  # arch-specific: that capability only
    upward: set[tuple[int, int]] = set()  # plain PTX: that capability and every later one
    ptxs = [ptx] if isinstance(ptx, str) else list(ptx or ())
    entries = [(e, False) for e in arch_list] + [(e, True) for e in ptxs if e]
    for entry, is_ptx in entries:
        parsed = parse_arch(entry)
        if parsed is None or parsed[0] == "lto":
            continue
        kind, major, minor, suffix = parsed
        jit = is_ptx or kind == "compute"
        if suffix == "a":
            exact.add((major, minor, jit))
        elif suffix == "f" or not jit:
            key = (major, jit)
            from_minor[key] = min(minor, from_minor.get(key, minor))
        else:
            upward.add((major, minor))

    def sass_reaches(major: int, minor: int) -> bool:
        return (major, False) in from_minor and from_minor[(major, False)] <= minor

    terms: list[tuple[list[dict], bool]] = []
    for jit in (False, True):
        whole = sorted(ma for (ma, j), mi in from_minor.items() if j == jit and mi == 0
                       and not (jit and sass_reaches(ma, 0)))  # every minor of these majors: one term
        if whole:
            terms.append(([{"key": COMPUTE_MAJOR, "operator": "In", "values": [str(m) for m in whole]}], jit))
        for (ma, j), mi in sorted(from_minor.items()):
            if j == jit and mi and not (jit and sass_reaches(ma, mi)):
                terms.append(([{"key": COMPUTE_MAJOR, "operator": "In", "values": [str(ma)]}]
                              + _at_least(COMPUTE_MINOR, mi), jit))
    for ma, mi, jit in sorted(exact):
        if sass_reaches(ma, mi) or (jit and (ma, mi, False) in exact):
            continue  # a broader term already admits it
        terms.append(([{"key": COMPUTE_MAJOR, "operator": "In", "values": [str(ma)]},
                       {"key": COMPUTE_MINOR, "operator": "In", "values": [str(mi)]}], jit))
    if upward:
        ma, mi = min(upward)
        if mi == 0 and not sass_reaches(ma, 0):
            terms.append((_at_least(COMPUTE_MAJOR, ma), True))
            return terms
        terms.append((_at_least(COMPUTE_MAJOR, ma + 1), True))
        if not sass_reaches(ma, mi):  # else SASS already runs there, no JIT needed
            terms.append(([{"key": COMPUTE_MAJOR, "operator": "In", "values": [str(ma)]}]
                          + (_at_least(COMPUTE_MINOR, mi) if mi else []), True))
    return terms


def node_affinity(*, cuda: str, min_driver: str, toolkit_driver: str = "", arch_list=(), ptx: str = "") -> dict | None:
    """The required node affinity for a lock with these facts; None for a cpu lock."""
    if not cuda:
        return None
    need = _major(min_driver)
    jit_need = max(_major(toolkit_driver), need)
    caps = capability_terms(arch_list, ptx) or [([], False)]
    terms = []
    for exprs, needs_jit in caps:
        driver = _at_least(DRIVER_MAJOR, jit_need if needs_jit else need) if (need or needs_jit) else \
            [{"key": DRIVER_MAJOR, "operator": "Exists"}]
        terms.append({"matchExpressions": driver + exprs})
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}


def _of(m) -> dict | None:
    return node_affinity(cuda=m.cuda, min_driver=m.min_driver, toolkit_driver=m.toolkit_driver,
                         arch_list=m.arch_list, ptx=m.ptx)


def for_workload(work) -> dict | None:
    """The lock's node affinity; for several platforms, each platform's terms (its own
    facts: a platform's torch may cover other GPUs) joined to its architecture."""
    if len(work.views) <= 1:
        return _of(work.meta)
    terms = []
    for platform, meta in work.views:
        arch = {"key": ARCH_LABEL, "operator": "In", "values": [PLATFORM_ARCH[platform]]}
        found = _of(meta)
        own = found["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] if found else [{"matchExpressions": []}]
        terms += [{"matchExpressions": [arch, *t["matchExpressions"]]} for t in own]
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}


# -- the scheduler's reading ------------------------------------------------------------------

def _matches(expr: dict, labels: dict) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op == "In":
        return key in labels and str(labels[key]) in values
    if op == "NotIn":
        return key not in labels or str(labels[key]) not in values
    if op in ("Gt", "Lt"):
        try:
            have, bound = int(str(labels[key])), int(values[0])
        except (KeyError, ValueError):
            return False
        return have > bound if op == "Gt" else have < bound
    raise ValueError(f"unknown operator {op!r}")


def admits(affinity: dict | None, labels: dict) -> bool:
    """Would the scheduler place a pod with this required affinity on a node with ``labels``?"""
    if not affinity:
        return True
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return any(all(_matches(e, labels) for e in t.get("matchExpressions", [])) for t in terms)


def describe(affinity: dict | None) -> list[str]:
    """One line a term, for people: ``driver.major > 579 and compute.major in (9)``."""
    if not affinity:
        return ["any node (no GPU affinity)"]
    lines = []
    for t in affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]:
        parts = []
        for e in t["matchExpressions"]:
            key = e["key"].replace("nvidia.com/", "")
            values = e.get("values") or []
            parts.append({"Gt": f"{key} > {values[0] if values else ''}", "In": f"{key} in ({', '.join(values)})",
                          "Exists": f"{key} set"}.get(e["operator"], f"{key} {e['operator']} {values}"))
        lines.append(" and ".join(parts))
    return lines
