"""The build step of ``envmgr export-image``: a ``Plan`` -> the image's new layers.

Each package layer is looked up in the layer cache by its key; only the packages of the
layers that miss are laid out: straight from their wheels (``wheelfs``: each file streamed
from the wheel into the layer, nothing installed, only the ``.py`` sources written out to be
compiled) or, when the lock holds an sdist, installed by uv into a relocatable venv staged in
a temp folder. If asked, they are byte-compiled group by group while finished groups are
already compressing, in parallel.
The top layer holds what no package owns: the venv skeleton, the user, the lock and its SBOM,
the entrypoint with its modes and ``/workspace`` (``modes``).
Output: ``Built``, the layers (blobs in the layer cache) as ``image.Layer`` values, in order.
"""

from __future__ import annotations

import heapq
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.errors import EnvmgrError, UserError
from ..model import lockfile
from . import image as im
from . import layers as ly
from . import sources, venvlayers
from .plan import Plan


@dataclass(frozen=True)
class Built:
    layers: tuple[im.Layer, ...]  # the package layers in plan order, then the top layer
    notes: tuple[str, ...] = ()
    installed_bytes: int = 0  # bytes of the layers built now (cached ones not counted)


_ACTIVATE = """# envmgr: source this file from sh/bash to use the venv
deactivate () {{
    if [ -n "${{_OLD_PATH:-}}" ]; then PATH="$_OLD_PATH"; export PATH; unset _OLD_PATH; fi
    unset VIRTUAL_ENV
    unset -f deactivate
}}
VIRTUAL_ENV={venv}
export VIRTUAL_ENV
_OLD_PATH="$PATH"
PATH="$VIRTUAL_ENV/bin:$PATH"
export PATH
"""


def top_entries(lock: lockfile.Lock, venv: str, facts: sources.BaseFacts, user_entries) -> list[ly.Entry]:
    """The top layer: the venv's skeleton (pointing at the base's python), the lock, its SBOM, the user.
    ``lock`` is the lock file (every platform's): the same top layer in each platform's image."""
    from ..report import sbom

    root = venv.strip("/")
    ver = facts.version
    cfg = f"home = {os.path.dirname(facts.python)}\ninclude-system-site-packages = false\nversion = {ver}\n"
    entries = [
        ly.Entry(f"{root}/pyvenv.cfg", data=cfg.encode()),
        ly.Entry(f"{root}/bin/python", kind="symlink", link=facts.python),
        ly.Entry(f"{root}/bin/python3", kind="symlink", link="python"),
        ly.Entry(f"{root}/bin/python{ver}", kind="symlink", link="python"),
        ly.Entry(f"{root}/bin/activate", data=_ACTIVATE.format(venv=venv).encode()),
        ly.Entry(f"{root}/include", kind="dir"),
        ly.Entry(f"{root}/lib/python{ver}/site-packages", kind="dir"),
        ly.Entry(f"{root}/lib64", kind="symlink", link="lib"),
        ly.Entry(f"{root}/pylock.toml", data=lock.dumps().encode()),
        ly.Entry(f"{root}/sbom.cdx.json", data=sbom.cyclonedx_json(lock).encode()),
        *user_entries,
    ]
    return ly.with_parents(entries)


@dataclass(frozen=True)
class _Staged:
    """The missing layers' packages, ready to be written as layers: ``entries(i)`` gives group
    ``i``'s entries (its pycs included once compiled), ``sources(i)`` its ``.py`` files on disk
    under ``site``, compiled by ``python`` when ``compile``."""

    entries: Callable[[int], list[ly.Entry]]
    sources: Callable[[int], list[Path]]
    site: Path
    python: Path
    compile: bool


def _compile_ok(plan: Plan, minor: str, notes: list[str]) -> bool:
    version = plan.facts.version
    if plan.compile and minor != version:
        notes.append(f"byte-compilation skipped: staging python {minor} is not the base's {version}")
    return plan.compile and minor == version


def _lay_out(plan: Plan, packages, reporter, notes: list[str], tmp: Path) -> _Staged:
    """Wheels only: each one's files straight from the wheel (``wheelfs``), nothing installed;
    the ``.py`` sources alone are written out (under ``tmp``), to be byte-compiled."""
    from ..net import fetch
    from ..venv.install import query_python
    from . import wheelfs

    files = fetch.fetch([(p.key, p.install_file) for p in packages], reporter=reporter)
    version = plan.facts.version
    layouts = {p.key: wheelfs.layout(files[p.install_file.sha256], venv=plan.req.venv, version=version)
               for p in packages}
    python = Path(plan.staging)
    compile_ok = _compile_ok(plan, query_python(python).minor, notes)
    site = tmp / "site"
    if compile_ok:
        made: set[str] = set()
        for lay in layouts.values():
            with wheelfs.Opened() as opened:
                for rel, member in lay.sources:
                    dest = os.path.join(site, rel)
                    folder = os.path.dirname(dest)
                    if folder not in made:
                        os.makedirs(folder, exist_ok=True)
                        made.add(folder)
                    with open(dest, "wb") as fh:
                        for chunk in member.chunks(opened):
                            fh.write(chunk)
    cache_tag = venvlayers.host_cache_tag(python)
    image_site = plan.image_site.strip("/")
    own: dict[int, list[ly.Entry]] = {}  # each group's files, without pycs

    def entries(i: int) -> list[ly.Entry]:
        if i not in own:
            own[i] = [ly.Entry(dest, data=c if isinstance(c, bytes) else None, member=None if isinstance(c, bytes) else c,
                               executable=exe) for p in plan.groups[i].packages for dest, c, exe in layouts[p.key].files]
        pycs = []
        for p in plan.groups[i].packages if compile_ok else ():
            for rel, _ in layouts[p.key].sources:
                pyc = venvlayers.pyc_of(rel, cache_tag)
                if os.path.isfile(os.path.join(site, pyc)):
                    pycs.append(ly.file_entry(f"{image_site}/{pyc}", site / pyc))
        return ly.with_parents(own[i] + pycs)

    def sources(i: int) -> list[Path]:
        return [site / rel for p in plan.groups[i].packages for rel, _ in layouts[p.key].sources] if compile_ok else []

    return _Staged(entries, sources, site, python, compile_ok)


def _stage(plan: Plan, packages, reporter, notes: list[str], tmp: Path) -> _Staged:
    """Install ``packages`` (only those) into a relocatable venv under ``tmp`` with uv: the
    route of a lock that holds an sdist (built here). Another platform's files
    (``plan.python_platform``) are laid out by uv for that platform, with this machine's python
    and no emulation: their markers were read for it already (``plan``)."""
    from dataclasses import replace

    from ..net import fetch
    from ..venv import install

    files = fetch.fetch([(p.key, p.install_file) for p in packages], reporter=reporter)
    staged = tmp / "venv"
    if plan.python_platform:
        packages = [replace(p, marker=None) for p in packages]
    result = install.install(plan.req.lock.with_packages(packages), staged, python=plan.staging, files=files,
                             reporter=reporter, relocatable=True, python_platform=plan.python_platform or None)
    site = install.site_packages(staged)
    if site is None:
        raise EnvmgrError(f"the staged venv {staged} has no site-packages")
    python = install.venv_python(staged)
    compile_ok = _compile_ok(plan, result.python.minor, notes)
    cache_tag = venvlayers.host_cache_tag(python)

    def entries(i: int) -> list[ly.Entry]:
        owned = venvlayers.owned_entries(staged, site, plan.groups[i].packages, image_venv=plan.req.venv,
                                         cache_tag=cache_tag)
        return ly.with_parents(e for p in plan.groups[i].packages for e in owned[p.key])

    def sources(i: int) -> list[Path]:
        return [e.src for e in entries(i) if e.src is not None and e.path.endswith(".py")] if compile_ok else []

    return _Staged(entries, sources, site, python, compile_ok)


def _build_missing(plan: Plan, misses: list[int], st: _Staged, cache: ly.LayerCache, *, jobs: int,
                   reporter) -> tuple[dict[int, ly.BuiltLayer], int]:
    """Build the layers ``misses``, put them in the cache; (layers, their bytes).

    Groups without sources are ready at once; the others are compiled largest layer first,
    and the layer threads always take the largest layer ready: the last layer to finish is a
    small one, not torch's started last."""
    pre = {i: st.entries(i) for i in misses}
    size = {i: sum(e.size for e in pre[i]) for i in misses}
    reporter.start(sum(size.values()), f"compiling and compressing {len(misses)} layer(s)")
    ready: list[tuple[int, int, list[ly.Entry]]] = []  # (-bytes, group, entries): a heap
    lock = threading.Lock()
    futs = []
    built: dict[int, ly.BuiltLayer] = {}
    installed = 0

    def largest() -> tuple[int, ly.BuiltLayer]:
        with lock:
            _, i, es = heapq.heappop(ready)
        return i, ly.build_layer(es, cache.store, mtime=plan.req.epoch, progress=reporter.advance)

    try:
        with ThreadPoolExecutor(max_workers=jobs or max(2, os.cpu_count() or 2)) as pool:
            def submit(i: int) -> None:
                nonlocal installed
                es = st.entries(i) if st.compile else pre[i]
                n = sum(e.size for e in es)
                installed += n
                with lock:
                    heapq.heappush(ready, (-n, i, es))
                futs.append(pool.submit(largest))  # one run a layer: it takes the largest waiting

            if st.compile:
                py = {i: st.sources(i) for i in misses}
                order = sorted(misses, key=lambda i: (bool(py[i]), -size[i]))
                venvlayers.compile_groups(st.python, st.site, plan.image_site, [(i, py[i]) for i in order], submit)
            else:
                for i in misses:
                    submit(i)
            for fut in futs:
                i, layer = fut.result()
                built[i] = layer
                cache.put(plan.keys[i], layer)
    finally:
        reporter.finish()
    return built, installed


def _image_layer(b: ly.BuiltLayer, *, created_by: str, title: str) -> im.Layer:
    return im.Layer(digest=b.digest, diff_id=b.diff_id, size=b.size, media_type=b.media_type, path=b.path,
                    created_by=created_by, title=title, uncompressed_size=b.uncompressed_size, cached=b.cached)


def build(plan: Plan, *, cache: Path, jobs: int, reporter, log, mark) -> Built:
    """The plan's layers: cached ones as they are, the others built now. ``cache`` is the oci
    cache folder (layer index and blobs); ``mark(step)`` is called as "install" and "layers" end."""
    layer_cache = ly.LayerCache(cache)
    groups = plan.groups
    built: dict[int, ly.BuiltLayer] = {}
    for i, k in enumerate(plan.keys):
        hit = layer_cache.get(k)
        if hit:
            built[i] = hit
    misses = [i for i in range(len(groups)) if i not in built]
    log(f"{len(groups) - len(misses)} of {len(groups)} package layers cached" if groups else "no packages")

    notes: list[str] = []
    installed = 0
    staging_root = cache / "staging"
    staging_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="export-", dir=staging_root))
    try:
        if misses:
            version = plan.facts.version
            if not plan.staging:
                raise UserError(f"no Python {version} on this machine to stage the venv with",
                                hint=f"install python{version} (the base's version), or use a base with this machine's python")
            packages = [p for i in misses for p in groups[i].packages]
            stage = _lay_out if all(p.install_file.is_wheel for p in packages) else _stage
            st = stage(plan, packages, reporter, notes, tmp)
            mark("install")
            new, installed = _build_missing(plan, misses, st, layer_cache, jobs=jobs, reporter=reporter)
            built.update(new)
        top = ly.build_layer(top_entries(plan.req.lock_file, plan.req.venv, plan.facts, (*plan.user_entries, *plan.mode_entries)),
                             layer_cache.store, mtime=plan.req.epoch)
        mark("layers")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    layers = [_image_layer(built[i], created_by="envmgr: " + ", ".join(f"{p.key} {p.version}" for p in g.packages),
                           title=g.title) for i, g in enumerate(groups)]
    layers.append(_image_layer(top, created_by="envmgr: venv, user, lock, SBOM, entrypoint", title="top"))
    return Built(layers=tuple(layers), notes=tuple(notes), installed_bytes=installed)
