"""Export a lock for other tools: a pip requirements file, a CycloneDX SBOM, a PEP 751 file.

Input: one lock. Output: text. The requirements file keeps what other exports drop: the
index lines (the torch index above all: without it ``torch==2.7.1+cu126`` cannot be found)
and every sha256 of every file, so ``pip install --require-hashes -r FILE`` installs exactly
the lock's files. torch-family pins keep their local label, because pip picks a file by
version across all indexes. No credentials are written: ``${VAR}`` references (which pip
expands) are kept, literal secrets are removed.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ..core.errors import UserError
from ..core.urls import strip_secrets
from ..model.lockfile import Lock, check_consistency, dumps
from ..model.variants import kb
from . import sbom

FORMATS = ("requirements", "cyclonedx", "pylock")
DEFAULT_INDEX = sbom.DEFAULT_INDEX
_PIP_REF = re.compile(r"\$\{[A-Z0-9_]+\}")  # the ${VAR} references pip expands in a requirements file
_PYLOCK_NAME = re.compile(r"^pylock(\.[^.]+)?\.toml$")


def safe_url(url: str) -> tuple[str, bool]:
    """(url fit to write, whether credentials were removed). ``${VAR}`` parts pip expands are kept."""
    return strip_secrets(url, refs=_PIP_REF)


def index_lines(lock: Lock) -> tuple[list[str], list[str]]:
    """(``--index-url``/``--extra-index-url`` lines, comment lines about removed credentials).

    The index most non-torch packages came from is the ``--index-url`` (none when that is
    the default index); every other index, the torch index first, is an extra.
    """
    family = kb().torch_family
    general = Counter(p.index or DEFAULT_INDEX for p in lock.packages if p.key not in family)
    torch_indexes = sorted({p.index or DEFAULT_INDEX for p in lock.packages if p.key in family})
    ranked = sorted(general, key=lambda i: (-general[i], i))
    primary = ranked[0] if ranked else DEFAULT_INDEX
    extras = [i for i in torch_indexes if i != primary] + [i for i in ranked[1:] if i not in torch_indexes]
    lines, notes = [], []
    if DEFAULT_INDEX in extras:
        # The default index cannot be an extra without naming its URL: make it the primary.
        extras.remove(DEFAULT_INDEX)
        extras.insert(0, primary)
        primary = DEFAULT_INDEX
    for option, url in ([("--index-url", primary)] if primary != DEFAULT_INDEX else []) + [
        ("--extra-index-url", u) for u in extras
    ]:
        written, stripped = safe_url(url)
        lines.append(f"{option} {written}")
        if stripped:
            notes.append(f"# credentials removed from {written}: give them to pip (netrc, keyring or ${{VAR}} in the URL)")
    return lines, notes


def requirements(lock: Lock) -> str:
    """A pip requirements file that installs exactly the lock's files (``--require-hashes``)."""
    check_consistency(lock, lock.path or f"lock of {lock.meta.profile}")
    index, notes = index_lines(lock)
    m = lock.meta
    out = [
        f"# exported by envmgr from the lock of profile {m.profile!r} ({lock.digest()})",
        f"# variant {m.variant}" + (f", CUDA {m.cuda}, minimum driver {m.min_driver}" if m.cuda else "")
        + f"; python {m.python}, {', '.join(m.all_platforms)}",
        "# install: pip install --require-hashes --no-deps -r THIS_FILE",
        *notes,
        *index,
        "",
    ]
    for pkg in sorted(lock.packages, key=lambda p: p.key):
        line = f"{pkg.key}=={pkg.version}"
        if pkg.marker:
            line += f" ; {pkg.marker}"
        hashes = sorted({f.sha256 for f in pkg.files})
        out.append(" \\\n".join([line, *(f"    --hash=sha256:{h}" for h in hashes)]))
    return "\n".join(out) + "\n"


def pylock(lock: Lock) -> str:
    """The lock as a standalone PEP 751 file (``pylock.toml``)."""
    check_consistency(lock, lock.path or f"lock of {lock.meta.profile}")
    return dumps(lock)


def cyclonedx(lock: Lock) -> str:
    check_consistency(lock, lock.path or f"lock of {lock.meta.profile}")
    text = sbom.cyclonedx_json(lock)
    sbom.validate(text)
    return text


def render(lock: Lock, fmt: str) -> str:
    if fmt == "requirements":
        return requirements(lock)
    if fmt == "cyclonedx":
        return cyclonedx(lock)
    if fmt == "pylock":
        return pylock(lock)
    raise UserError(f"unknown export format {fmt!r}", hint="use " + ", ".join(FORMATS))


def check_format(fmt: str, output: Path | None = None) -> None:
    """An unknown format, or a PEP 751 file not named ``pylock.toml``/``pylock.NAME.toml``."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}", hint="use " + ", ".join(FORMATS))
    if fmt == "pylock" and output is not None and not _PYLOCK_NAME.match(output.name):
        raise UserError(f"{output}: a PEP 751 lock must be named pylock.toml or pylock.NAME.toml")
