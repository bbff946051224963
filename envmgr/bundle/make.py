"""``envmgr bundle``: profiles and their locks -> one folder or tar that syncs with no network.

What goes in (the layout ``net.bundlefiles`` reads): ``bundle.json`` (the manifest: format,
python, platform, the profiles and their locks' sha256, every file by sha256, envmgr's wheels,
the base), ``profiles/`` (the profile files, literal credentials removed from their URLs),
``locks/``, every file the locks name at ``files/sha256/<hex>/<filename>`` (fetched and
hash-checked into the cache first), ``tool/`` (envmgr's wheel and its dependencies', with a
hashed ``requirements.txt``), ``bootstrap.sh`` and, with ``--with-base``, ``base.tar`` (the
base image as an OCI archive, for ``export-image --bundle``).

Deterministic: the members are written in name order with mtime 0, uid/gid 0, no user names,
fixed modes, in GNU tar format, and nothing in them holds a time or a path of this machine, so
the same locks (and the same envmgr wheels) give the same bytes. Written atomically: a failure
leaves no bundle, the tar under a temporary name beside its place or the folder renamed in whole.
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..core.errors import StaleError, UserError
from ..core.files import atomic_path
from ..net.bundlefiles import FORMAT, MANIFEST, member

BOOTSTRAP = r"""#!/bin/sh
# envmgr bundle: install envmgr from this bundle into .envmgr/tool, then sync every bundled
# profile exactly into .envmgr/venvs/NAME. Needs python3 @PYTHON@ and nothing from the network.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python3}
fail() { echo "error: bootstrap: $*" >&2; exit 2; }
command -v "$py" >/dev/null 2>&1 || fail "no $py on PATH (this bundle needs Python @PYTHON@; set PYTHON=...)"
py=$(command -v "$py")
have=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || fail "$py does not run"
[ "$have" = "@PYTHON@" ] || fail "this bundle is for Python @PYTHON@; $py is Python $have (set PYTHON=/path/to/python@PYTHON@)"
[ "linux-$(uname -m)" = "@PLATFORM@" ] || fail "this bundle is for @PLATFORM@; this machine is linux-$(uname -m)"
tool="$here/.envmgr/tool"
export UV_OFFLINE=1 UV_NO_CONFIG=1 UV_PYTHON_DOWNLOADS=never ENVMGR_PROJECT="$here"
mkdir -p "$tool"
"$py" -I - "$here/tool/@UV_WHEEL@" "$tool/uv" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".data/scripts/uv"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        dst.write(src.read())
os.chmod(sys.argv[2] + ".part", 0o755)
os.replace(sys.argv[2] + ".part", sys.argv[2])
PY
"$tool/uv" venv --quiet --allow-existing --python "$py" "$tool/venv"
"$tool/uv" pip install --quiet --python "$tool/venv/bin/python" --offline --no-index --no-deps \
    --find-links "$here/tool" --require-hashes -r "$here/tool/requirements.txt"
echo "envmgr: $tool/venv/bin/envmgr"
for name in @PROFILES@; do
    "$tool/venv/bin/envmgr" sync "$name" --bundle "$here" --frozen --venv "$here/.envmgr/venvs/$name"
    echo "$name: $here/.envmgr/venvs/$name"
done
"""

_URL = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s"']+""")


@dataclass(frozen=True)
class BundleResult:
    path: Path
    profiles: tuple[str, ...]
    files: int  # the locks' files
    tool: int  # envmgr's wheels
    size: int  # bytes of the tar, or of the folder's files
    seconds: float
    base: bool

    def describe(self) -> str:
        base = ", the base image" if self.base else ""
        return (f"bundle {self.path}: {', '.join(self.profiles)} ({self.files} files, {self.tool} envmgr wheels{base}; "
                f"{self.size / 1e6:.1f} MB, {self.seconds:.1f}s)")

    def to_json(self) -> dict:
        return {"path": str(self.path), "profiles": list(self.profiles), "files": self.files, "tool": self.tool,
                "size": self.size, "seconds": round(self.seconds, 3), "base": self.base}


def _profile_text(path: Path) -> bytes:
    """A profile file as bundled: URLs without literal credentials (``${VAR}`` references stay)."""
    from ..core.urls import strip_secrets

    return _URL.sub(lambda m: strip_secrets(m.group(0))[0], path.read_text()).encode()


def _check_output(output: Path) -> None:
    if output.suffix == ".tar":
        if output.is_dir():
            raise UserError(f"--output {output} is a folder; a .tar names a file")
    elif output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"--output {output} exists and is not an empty folder",
                        hint="remove it, or name a FILE.tar or a new folder")
    if not output.parent.is_dir():
        raise UserError(f"--output {output}: {output.parent} is not a folder")


def make(project: Path, names: list[str], output: Path, *, with_base: bool = False, base: str | None = None,
         tool_wheels: Path | None = None, reporter=None, log: Callable[[str], None] | None = None) -> BundleResult:
    """Write the bundle of ``names`` to ``output`` (``.tar``: a tar; else a new folder)."""
    import tempfile

    from ..core import settings
    from ..lock import locker
    from ..model import lockfile, profiles
    from ..net import fetch
    from ..net.credentials import profile_auth
    from . import tool

    started, log = time.monotonic(), log or (lambda _: None)
    names = sorted(dict.fromkeys(names or ["default"]))
    _check_output(output)
    locks = {n: lockfile.read(settings.lock_path(project, n)) for n in names}
    stale = [r for r in locker.check(project, names) if not r.fresh]
    if stale:
        raise StaleError(f"{stale[0].path} is stale ({'; '.join(stale[0].reasons)}): a bundle carries fresh locks",
                         hint=f"run `envmgr lock {' '.join(r.profile for r in stale)}` first")
    digests = {n: lk.digest() for n, lk in locks.items()}  # of the lock files, every platform
    locks = _for_one_platform(locks)
    targets = {(lk.meta.python, lk.meta.platform) for lk in locks.values()}
    if len(targets) > 1:
        raise UserError(f"the locks are for different pythons or platforms ({', '.join(sorted(map(' on '.join, targets)))}): "
                        "one bundle serves one", hint="bundle them separately")
    python, platform = targets.pop()
    machine = platform.split("-", 1)[1]
    base_ref = _base_ref(project, names, base) if with_base else None

    entries: dict[str, Path | bytes] = {}
    for n in names:
        prof = profiles.load(project, n)
        for f in prof.files or (prof.path,):
            rel = f.relative_to(project / "profiles") if f.is_relative_to(project / "profiles") else Path(f.name)
            entries[f"profiles/{rel.as_posix()}"] = _profile_text(f)
        entries[f"locks/{settings.lock_path(project, n).name}"] = settings.lock_path(project, n).read_bytes()
    files: dict[str, dict] = {}
    for n, lk in locks.items():
        items = [(p.key, f) for p in lk.packages for f in p.files]
        log(f"{n}: {len(items)} file(s) into the cache, hash-checked")
        got = fetch.fetch(items, auth=profile_auth(project, n), reporter=reporter)
        for _, f in items:
            entries[member(f)] = got[f.sha256]
            files[f.sha256] = {"filename": f.filename, "size": f.size}
    with tempfile.TemporaryDirectory(prefix="envmgr-bundle-") as scratch:
        wheels = tool.gather(Path(scratch), python, machine, folder=tool_wheels, log=log)
        for w in wheels:
            entries[f"tool/{w.name}"] = w
        entries["tool/requirements.txt"] = tool.requirements(wheels).encode()
        uv_wheel = next(w.name for w in wheels if w.name.startswith("uv-"))
        manifest = {"format": FORMAT, "envmgr": __version__, "python": python, "platform": platform,
                    "profiles": {n: {"lock": f"locks/{settings.lock_path(project, n).name}", "digest": digests[n]}
                                 for n in names},
                    "files": dict(sorted(files.items())), "tool": [w.name for w in wheels]}
        if base_ref:
            entries["base.tar"] = _base_tar(base_ref, platform, Path(scratch) / "base.tar", log)
            manifest["base"] = {"file": "base.tar", "ref": _redacted(base_ref)}
        entries[MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        entries["bootstrap.sh"] = (BOOTSTRAP.replace("@PYTHON@", python).replace("@PLATFORM@", platform)
                                   .replace("@UV_WHEEL@", uv_wheel).replace("@PROFILES@", " ".join(names))).encode()
        size = write_tar(entries, output) if output.suffix == ".tar" else write_dir(entries, output)
    return BundleResult(path=output, profiles=tuple(names), files=len(files), tool=len(wheels), size=size,
                        seconds=time.monotonic() - started, base=bool(base_ref))


def _redacted(ref: str) -> str:
    return ref if "://" not in ref else _URL.sub(lambda m: m.group(0).split("@")[-1], ref)


def _base_ref(project: Path, names: list[str], base: str | None) -> str:
    from ..oci.plan import profile_image, project_relative

    if base:
        return base
    refs = {project_relative(profile_image(project, n).get("base"), project) for n in names}
    if None in refs or len(refs) != 1:
        raise UserError("--with-base: the profiles do not name one [image] base", hint="pass --base REF")
    return refs.pop()


def _for_one_platform(locks: dict) -> dict:
    """A bundle serves one platform: locks for several are taken as this machine's platform
    when they all have it, else as the first platform they share (their files only)."""
    from ..model.platforms import host

    if all(len(lk.platforms) == 1 for lk in locks.values()):
        return locks
    first = next(iter(locks.values())).platforms
    shared = [p for p in first if all(p in lk.platforms for lk in locks.values())]
    if not shared:
        return locks  # no platform in common: the one-target check below names them
    platform = host() if host() in shared else shared[0]
    return {n: lk.for_platform(platform) for n, lk in locks.items()}


def _base_tar(ref: str, platform: str, dest: Path, log: Callable[[str], None]) -> Path:
    from ..core import settings
    from ..oci import layout, sources

    log(f"base {ref} into the bundle")
    loaded = sources.load(ref, platform=platform, cache=settings.cache_dir() / "oci")
    return layout.write_tar(loaded.image, dest)


def _mode(name: str) -> int:
    return 0o755 if name == "bootstrap.sh" else 0o644


def _folders(names) -> list[str]:
    return sorted({"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)})


def write_tar(entries: dict[str, Path | bytes], output: Path) -> int:
    """``entries`` as a reproducible tar at ``output`` (atomically); its size."""
    import io

    def info(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.type, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = size, mode, kind, 0, 0, 0, "", ""
        return ti

    with atomic_path(output) as tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted([*entries, *_folders(entries)]):
            src = entries.get(name)
            if src is None:
                tar.addfile(info(name, 0, 0o755, tarfile.DIRTYPE))
            elif isinstance(src, bytes):
                tar.addfile(info(name, len(src), _mode(name)), io.BytesIO(src))
            else:
                with open(src, "rb") as fh:
                    tar.addfile(info(name, src.stat().st_size, _mode(name)), fh)
    return output.stat().st_size


def write_dir(entries: dict[str, Path | bytes], output: Path) -> int:
    """``entries`` as a new folder at ``output``, made beside it and renamed into place; the files' size."""
    import os
    import tempfile

    stage = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        size = 0
        for name, src in sorted(entries.items()):
            dest = stage / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                dest.write_bytes(src)
            else:
                shutil.copyfile(src, dest)
            os.chmod(dest, _mode(name))
            size += dest.stat().st_size
        os.chmod(stage, 0o755)
        if output.is_dir():
            output.rmdir()  # empty, checked before anything was fetched
        os.replace(stage, output)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return size
