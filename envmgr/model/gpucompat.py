"""What runs on what: version numbers, driver minimums and GPU arch coverage.

The one home of these rules. ``envmgr check`` (through the probe) and ``envmgr doctor``
decide with them whether a build runs on a GPU, ``envmgr diff`` which GPUs a lock update
gains or loses; the knowledge base, host detection and the diff report compare versions
with them.

Stdlib only, Python 3.8+, importing nothing of envmgr: the probe runs in the target
environment's own interpreter (a venv, any python, the one inside an image), where envmgr
is not installed, and takes this file with it. ``gpu.runner`` sends its source ahead of the
probe's, registered as the module ``envmgr_gpucompat``; ``python probe.py`` loads it from
here (``../model/gpucompat.py`` beside the probe).
"""

from __future__ import annotations

import re

# -- versions ---------------------------------------------------------------------------------


def version_tuple(text):
    """``"580.159.04"`` -> ``(580, 159, 4)``; ``"2.7.1+cu126"`` -> ``(2, 7, 1)``.

    The numbers of a version in order, to compare as numbers (``2.12`` > ``2.9``): whatever
    is not a digit separates them, a local label (``+cu126``) is not part of the version,
    and ``None`` or ``""`` is ``()``.
    """
    public = str(text or "").split("+", 1)[0]
    return tuple(int(p) for p in re.findall(r"\d+", public))


def driver_at_least(driver, minimum):
    """``580.159.04`` >= ``580``: compared numerically, part by part."""
    return version_tuple(driver) >= version_tuple(minimum)


# -- GPU architectures ------------------------------------------------------------------------

# sm_XY: code (SASS) for compute capability X.Y; compute_XY: its PTX; lto_XY: LTO IR (no
# coverage of its own). Suffix "a": arch-specific (that capability only), "f": family-specific
# (that major, that minor and later).
_ARCH_RE = re.compile(r"^(sm|compute|lto)_(\d{2,})([af]?)$")


def parse_arch(entry):
    """``sm_86`` -> ``("sm", 8, 6, "")``; ``compute_90`` -> PTX; ``sm_90a`` -> arch-specific.

    The last digit is the minor version: ``sm_120`` is 12.0, ``sm_89`` is 8.9. ``None`` for
    anything else (``gfx90a``, ``sm_5``).
    """
    m = _ARCH_RE.match(str(entry).strip())
    if not m:
        return None
    digits = m.group(2)
    return (m.group(1), int(digits[:-1]), int(digits[-1]), m.group(3))


def arch_name(capability):
    return "sm_%d%d" % (capability[0], capability[1])


def _reaches(major, minor, suffix, cap, jit):
    """Whether code for ``major.minor`` (+ suffix) runs on capability ``cap``: SASS on the
    same major at the same or a higher minor, PTX (``jit``) on any capability at or above
    it; arch-specific code of either kind on exactly its capability, family-specific code
    within its major."""
    if suffix == "a":
        return (major, minor) == cap
    if suffix == "f" or not jit:
        return major == cap[0] and minor <= cap[1]
    return (major, minor) <= cap


def arch_coverage(capability, arch_list, ptx=(), driver="", toolkit_driver=""):
    """Can code compiled for ``arch_list`` run on a GPU of ``capability`` (major, minor)?

    - SASS (``sm_XY``) runs on the same major with the same or a higher minor: sm_86 code
      runs on sm_89, not the other way round, and never across majors (sm_90 is not sm_100).
      Arch-specific builds (``sm_90a``) run only on exactly that capability; family ones
      (``sm_100f``) like plain SASS.
    - PTX (``compute_XY`` entries, or ``ptx``: an arch name, or names, whose PTX is embedded)
      is compiled by the driver for any capability at or above it (``compute_90a`` for 9.0
      only, ``compute_100f`` within major 10), which needs the driver of the CUDA toolkit
      that wrote it (``toolkit_driver``); with an older driver (minor-version compatibility)
      there is no JIT.

    Returns ``{"covered": bool, "via": str | None, "reason": str}``.
    """
    cap = (int(capability[0]), int(capability[1]))
    gpu = arch_name(cap)
    sass, ptxs = [], []
    for entry in arch_list:
        parsed = parse_arch(entry)
        if parsed is None:
            continue
        kind, major, minor, suffix = parsed
        if kind == "compute":
            ptxs.append((major, minor, suffix, entry))
        elif kind == "sm":
            sass.append((major, minor, suffix, entry))
    for entry in ([ptx] if isinstance(ptx, str) else ptx or ()):
        parsed = parse_arch(entry)
        if parsed is not None:
            ptxs.append(parsed[1:] + (entry,))
    exact = [e for (ma, mi, _s, e) in sass if (ma, mi) == cap]
    if exact:
        return {"covered": True, "via": exact[0], "reason": "%s is compiled in" % exact[0]}
    compatible = [(mi, e) for (ma, mi, s, e) in sass if _reaches(ma, mi, s, cap, jit=False)]
    if compatible:
        via = max(compatible)[1]
        return {"covered": True, "via": via,
                "reason": "%s code runs on %s (binary compatible within major %d)" % (via, gpu, cap[0])}
    usable_ptx = sorted((ma, mi, e) for (ma, mi, s, e) in ptxs if _reaches(ma, mi, s, cap, jit=True))
    compiled = " ".join(e for (_ma, _mi, _s, e) in sorted(sass)) or "nothing"
    if usable_ptx:
        via = usable_ptx[-1][2]
        label = via if via.startswith("compute_") else "PTX of " + via
        if driver and toolkit_driver and not driver_at_least(driver, toolkit_driver):
            return {"covered": False, "via": None,
                    "reason": "%s is not compiled in (%s); %s would need JIT, which needs driver >= %s (have %s)"
                    % (gpu, compiled, label, toolkit_driver, driver)}
        need = " (JIT needs driver >= %s)" % toolkit_driver if toolkit_driver and not driver else ""
        return {"covered": True, "via": via,
                "reason": "%s is JIT-compiled for %s by the driver%s" % (label, gpu, need)}
    lower_minor = [e for (ma, mi, s, e) in sass if ma == cap[0] and mi > cap[1]]
    why = "%s is not compiled in (%s)" % (gpu, compiled)
    if lower_minor:
        why += "; %s code does not run on the lower minor %s" % (lower_minor[0], gpu)
    return {"covered": False, "via": None, "reason": why + " and no PTX reaches it"}


def runs_on(capability, arch_list, ptx=()):
    """``arch_coverage``'s verdict alone: does a build with ``arch_list`` (+ PTX of ``ptx``)
    run on a GPU of ``capability``? The driver is not asked."""
    return arch_coverage(capability, arch_list, ptx)["covered"]
