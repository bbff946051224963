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
    """The missing layers' packages, made ready to be written as layers: ``start(ready)`` gets
    their files (downloading what the cache lacks) and calls ``ready(i)`` for each group once
    its files are at hand, from any thread, returning when every group was; then
    ``entries(i)`` gives group ``i``'s entries (its pycs included once compiled) and
    ``sources(i)`` its ``.py`` files on disk under ``site``, compiled by ``python`` when
    ``compile``."""

    start: Callable[[Callable[[int], None]], None]
    entries: Callable[[int], list[ly.Entry]]
    sources: Callable[[int], list[Path]]
    site: Path
    python: Path
    compile: bool


def _compile_ok(plan: Plan, notes: list[str]) -> bool:
    from ..venv.install import query_python

    version = plan.facts.version
    minor = query_python(plan.staging).minor
    if plan.compile and minor != version:
        notes.append(f"byte-compilation skipped: staging python {minor} is not the base's {version}")
    return plan.compile and minor == version


def _lay_out(plan: Plan, misses: list[int], reporter, notes: list[str], tmp: Path) -> _Staged:
    """Wheels only: each one's files straight from the wheel (``wheelfs``), nothing installed;
    the ``.py`` sources alone are written out (under ``tmp``), to be byte-compiled. A group is
    ready as soon as its wheels are: the layers of downloaded packages are compiled and
    compressed while the others still download."""
    from ..net import fetch
    from . import wheelfs

    groups = plan.groups
    version = plan.facts.version
    compile_ok = _compile_ok(plan, notes)
    site = tmp / "site"
    python = Path(plan.staging)
    cache_tag = venvlayers.host_cache_tag(python)
    image_site = plan.image_site.strip("/")
    layouts: dict[str, wheelfs.Layout] = {}
    own: dict[int, list[ly.Entry]] = {}  # each group's files, without pycs

    def start(ready: Callable[[int], None]) -> None:
        lock = threading.Lock()
        waiting = {i: {p.key for p in groups[i].packages} for i in misses}
        group_of = {p.key: i for i in misses for p in groups[i].packages}
        by_sha = {p.install_file.sha256: p for i in misses for p in groups[i].packages}

        def arrived(_name: str, f, path: Path) -> None:
            key = by_sha[f.sha256].key
            lay = wheelfs.layout(path, venv=plan.req.venv, version=version)
            if compile_ok:
                with wheelfs.Opened() as opened:
                    for rel, member in lay.sources:
                        dest = os.path.join(site, rel)
                        os.makedirs(os.path.dirname(dest), exist_ok=True)
                        with open(dest, "wb") as fh:
                            for chunk in member.chunks(opened):
                                fh.write(chunk)
            i = group_of[key]
            with lock:
                layouts[key] = lay
                waiting[i].discard(key)
                whole = not waiting[i]
            if whole:
                ready(i)

        # Largest first: from a warm cache the groups are ready (and compiled) in this order.
        packages = sorted(by_sha.values(), key=lambda p: (-p.size, p.key))
        fetch.fetch([(p.key, p.install_file) for p in packages], reporter=reporter, on_ready=arrived)

    def entries(i: int) -> list[ly.Entry]:
        if i not in own:
            own[i] = [ly.Entry(dest, data=c if isinstance(c, bytes) else None, member=None if isinstance(c, bytes) else c,
                               executable=exe) for p in groups[i].packages for dest, c, exe in layouts[p.key].files]
        pycs = []
        for p in groups[i].packages if compile_ok else ():
            for rel, _ in layouts[p.key].sources:
                pyc = venvlayers.pyc_of(rel, cache_tag)
                if os.path.isfile(os.path.join(site, pyc)):
                    pycs.append(ly.file_entry(f"{image_site}/{pyc}", site / pyc))
        return ly.with_parents(own[i] + pycs)

    def sources(i: int) -> list[Path]:
        return [site / rel for p in groups[i].packages for rel, _ in layouts[p.key].sources] if compile_ok else []

    return _Staged(start, entries, sources, site, python, compile_ok)


def _stage(plan: Plan, misses: list[int], reporter, notes: list[str], tmp: Path) -> _Staged:
    """Install the missing groups' packages (only those) into a relocatable venv under ``tmp``
    with uv: the route of a lock that holds an sdist (built here). Another platform's files
    (``plan.python_platform``) are laid out by uv for that platform, with this machine's python
    and no emulation: their markers were read for it already (``plan``)."""
    from dataclasses import replace

    from ..net import fetch
    from ..venv import install

    staged = tmp / "venv"
    site = staged / "lib" / f"python{plan.facts.version}" / "site-packages"
    compile_ok = _compile_ok(plan, notes)
    python = Path(plan.staging)  # the staged venv's interpreter: the same pycs
    cache_tag = venvlayers.host_cache_tag(python)

    def start(ready: Callable[[int], None]) -> None:
        packages = [p for i in misses for p in plan.groups[i].packages]
        files = fetch.fetch([(p.key, p.install_file) for p in packages], reporter=reporter)
        if plan.python_platform:
            packages = [replace(p, marker=None) for p in packages]
        install.install(plan.req.lock.with_packages(packages), staged, python=plan.staging, files=files,
                        reporter=reporter, relocatable=True, python_platform=plan.python_platform or None)
        if install.site_packages(staged) != site:
            raise EnvmgrError(f"the staged venv {staged} has no site-packages at {site}")
        for i in misses:
            ready(i)

    def entries(i: int) -> list[ly.Entry]:
        owned = venvlayers.owned_entries(staged, site, plan.groups[i].packages, image_venv=plan.req.venv,
                                         cache_tag=cache_tag)
        return ly.with_parents(e for p in plan.groups[i].packages for e in owned[p.key])

    def sources(i: int) -> list[Path]:
        return [e.src for e in entries(i) if e.src is not None and e.path.endswith(".py")] if compile_ok else []

    return _Staged(start, entries, sources, site, python, compile_ok)


def _build_missing(plan: Plan, misses: list[int], st: _Staged, cache: ly.LayerCache, *, jobs: int,
                   reporter, mark) -> tuple[dict[int, ly.BuiltLayer], int]:
    """Build the layers ``misses``, put them in the cache; (layers, their bytes).

    Each group goes on as soon as it is ready: compiled (if asked; one group at a time, in the
    order they come: from a warm cache, largest first), then written by the layer threads,
    which always take the largest layer waiting, so the last layer to finish is a small one.
    ``mark("install")`` when every group's files were at hand."""
    from ..net.fetch import counter as count_bar

    waiting: list[tuple[int, int, list[ly.Entry]]] = []  # (-bytes, group, entries): a heap
    lock = threading.Lock()
    futs = []
    built: dict[int, ly.BuiltLayer] = {}
    installed = 0

    def largest() -> tuple[int, ly.BuiltLayer]:
        with lock:
            _, i, es = heapq.heappop(waiting)
        layer = ly.build_layer(es, cache.store, mtime=plan.req.epoch)
        if counter is not None:
            counter.advance(1)
        return i, layer

    with count_bar(reporter, len(misses), f"building {len(misses)} layer(s)") as counter:
        with ThreadPoolExecutor(max_workers=jobs or max(2, os.cpu_count() or 2)) as pool:
            def submit(i: int) -> None:
                nonlocal installed
                es = st.entries(i)
                n = sum(e.size for e in es)
                with lock:
                    installed += n
                    heapq.heappush(waiting, (-n, i, es))
                    futs.append(pool.submit(largest))  # one run a layer: it takes the largest waiting

            compiler = venvlayers.Compiler(st.python, st.site, plan.image_site, submit) if st.compile else None
            try:
                st.start((lambda i: compiler.add(i, st.sources(i))) if compiler else submit)
                mark("install")
                if compiler is not None:
                    compiler.close()
            except BaseException:
                if compiler is not None:
                    compiler.kill()
                raise
            for fut in futs:
                i, layer = fut.result()
                built[i] = layer
                cache.put(plan.keys[i], layer)
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
            st = (_lay_out if plan.wheels else _stage)(plan, misses, reporter, notes, tmp)
            new, installed = _build_missing(plan, misses, st, layer_cache, jobs=jobs, reporter=reporter, mark=mark)
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
