"""``envmgr export-image``: a lock + a base image -> a reproducible, layered OCI image.

Order of work, cheapest checks first: read the lock and the profile's ``[image]`` table,
check every output (so a bad ``--output``/``--push``/``--load`` fails before any work), load
the base, find its python (it must be the lock's), plan the layers from the lock, look each
up in the layer cache, install and byte-compile only the packages of the layers that missed,
build those layers in parallel, build the top layer (venv skeleton, user, lock, SBOM),
assemble the image and write it wherever asked. Same lock + base + envmgr => same digest.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..core import settings
from ..core.errors import EnvmgrError, UserError
from ..model import lockfile
from ..net.fetch import NullReporter
from . import image as im
from . import layers as ly
from . import layout, sources, venvlayers

DEFAULT_VENV = "/opt/venv"
DEFAULT_USER = "envmgr"
DEFAULT_UID = 1000
LABEL = "io.envmgr."


@dataclass(frozen=True)
class Options:
    name: str = "default"
    base: str | None = None
    output: Path | None = None
    push: str | None = None
    load: bool = False
    tag: str | None = None
    threshold: int = venvlayers.DEFAULT_THRESHOLD
    jobs: int = 0  # 0: one per CPU
    compile: bool = True


@dataclass
class Result:
    digest: str = ""
    tag: str = ""
    base: str = ""
    base_digest: str = ""
    python: str = ""
    layers: list[dict] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    installed_bytes: int = 0

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _project_relative(ref: str | None, project: Path) -> str | None:
    """A profile's ``oci:``/archive base with a relative path is relative to the project."""
    for prefix in ("oci:", "oci-archive:", "docker-archive:"):
        if ref and ref.startswith(prefix) and not Path(ref[len(prefix):]).is_absolute():
            return f"{prefix}{project / ref[len(prefix):]}"
    return ref


def default_tag(lock: lockfile.Lock) -> str:
    return f"envmgr/{lock.meta.profile.lower()}:{lock.meta.variant}-{lock.digest().split(':', 1)[1][:12]}"


def _profile_image(project: Path, name: str) -> dict:
    from ..model import profiles

    if not profiles.profile_path(project, name).is_file():
        return {}
    return dict(profiles.load(project, name).image)


def _markers(platform: str, version: str) -> dict:
    machine = {"linux-x86_64": "x86_64", "linux-aarch64": "aarch64"}.get(platform, platform.split("-")[-1])
    return {"implementation_name": "cpython", "implementation_version": f"{version}.0", "os_name": "posix",
            "platform_machine": machine, "platform_release": "", "platform_system": "Linux", "platform_version": "",
            "python_full_version": f"{version}.0", "platform_python_implementation": "CPython",
            "python_version": version, "sys_platform": "linux"}


def _check_outputs(opts: Options) -> None:
    if not (opts.output or opts.push or opts.load):
        raise UserError("nothing to do: pass --output DIR|FILE.tar, --push REF or --load")
    if opts.output:
        out = opts.output.absolute()
        if not out.parent.is_dir():
            raise UserError(f"--output {opts.output}: {out.parent} does not exist")
        if not os.access(out.parent, os.W_OK):
            raise UserError(f"--output {opts.output}: {out.parent} is not writable")
        if out.suffix == ".tar":
            if out.is_dir():
                raise UserError(f"--output {opts.output} is a directory")
        elif out.exists() and not (out.is_dir() and ((out / "oci-layout").is_file() or not any(out.iterdir()))):
            raise UserError(f"--output {opts.output} exists and is not an OCI layout", hint="pick another path or remove it")
    if opts.push:
        from . import remote

        remote.parse_ref(opts.push)
    if opts.load:
        from . import engine

        engine.client()  # connect now: a missing engine fails before any work


def _user_files(user: str, facts: sources.BaseFacts) -> tuple[str, list[ly.Entry], str]:
    """(config User, entries for /etc/passwd, /etc/group and the home, home dir)."""
    if user in ("root", "0", "0:0"):
        return "0:0", [], "/root"
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise UserError(f"[image] user {user!r} is not a valid user name")
    passwd = facts.passwd.decode("utf-8", "replace").splitlines()
    group = facts.group.decode("utf-8", "replace").splitlines()
    for line in passwd:
        f = line.split(":")
        if len(f) >= 7 and f[0] == user:
            return f"{f[2]}:{f[3]}", [], f[5]
    used_uids = {int(f[2]) for f in (l.split(":") for l in passwd) if len(f) > 2 and f[2].isdigit()}
    used_gids = {int(f[2]) for f in (l.split(":") for l in group) if len(f) > 2 and f[2].isdigit()}
    uid = next(u for u in range(DEFAULT_UID, 65000) if u not in used_uids)
    gid = uid if uid not in used_gids else next(g for g in range(DEFAULT_UID, 65000) if g not in used_gids)
    home = f"/home/{user}"
    passwd.append(f"{user}:x:{uid}:{gid}::{home}:/bin/sh")
    if not any(l.split(":")[0] == user for l in group):
        group.append(f"{user}:x:{gid}:")
    entries = [
        ly.Entry("etc/passwd", data=("\n".join(passwd) + "\n").encode()),
        ly.Entry("etc/group", data=("\n".join(group) + "\n").encode()),
        ly.Entry(home.strip("/"), kind="dir", uid=uid, gid=gid),
    ]
    return f"{uid}:{gid}", entries, home


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


def _top_entries(lock: lockfile.Lock, venv: str, facts: sources.BaseFacts, user_entries: list[ly.Entry]) -> list[ly.Entry]:
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
    venv: Path
    site: Path
    python: Path
    cache_tag: str
    compile: bool


def _stage(lock, packages, facts: sources.BaseFacts, host_python: str, opts: Options, reporter, notes,
           tmp: Path) -> _Staged:
    """Install ``packages`` (only those) into a relocatable venv under ``tmp``."""
    from ..net import fetch
    from ..venv import install

    files = fetch.fetch([(p.key, p.install_file) for p in packages], reporter=reporter)
    staged = tmp / "venv"
    result = install.install(lock.with_packages(packages), staged, python=host_python, files=files, reporter=reporter,
                             relocatable=True)
    site = install.site_packages(staged)
    if site is None:
        raise EnvmgrError(f"the staged venv {staged} has no site-packages")
    python = install.venv_python(staged)
    compile_ok = opts.compile and result.python.minor == facts.version
    if opts.compile and not compile_ok:
        notes.append(f"byte-compilation skipped: staging python {result.python.version} is not the base's {facts.version}")
    return _Staged(staged, site, python, venvlayers.host_cache_tag(python), compile_ok)


def export(project: Path, opts: Options, *, reporter=None, log=None) -> Result:
    started = time.monotonic()
    reporter = reporter or NullReporter()
    log = log or (lambda msg: None)
    res = Result()
    mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        res.seconds[name] = round(now - mark, 3)
        mark = now

    lock = lockfile.read(lockfile.lock_path(project, opts.name))
    conf = _profile_image(project, opts.name)
    base_ref = opts.base or _project_relative(conf.get("base"), project)
    if not base_ref:
        raise UserError(f"no base image for profile {opts.name!r}",
                        hint="set [image] base in the profile or pass --base (see `envmgr base bookworm`)")
    venv_path = "/" + conf.get("venv", DEFAULT_VENV).strip("/")
    if not venv_path.strip("/") or ".." in venv_path.split("/"):
        raise UserError(f"[image] venv {conf.get('venv')!r} is not an absolute path")
    tag = opts.tag or conf.get("tag") or default_tag(lock)
    _check_outputs(opts)
    cache = settings.cache_dir()
    oci_cache = cache / "oci"
    epoch = ly.source_date_epoch()
    created = im.epoch_iso(epoch)

    base = sources.load(base_ref, platform=lock.meta.platform, cache=oci_cache, reporter=reporter)
    facts = sources.inspect(base.image, declared=conf.get("python"), ref=base_ref, cache=cache)
    if lock.meta.python and facts.version != lock.meta.python:
        raise UserError(f"base {base_ref} has Python {facts.version} ({facts.python}); the lock is for Python {lock.meta.python}",
                        hint="pick a base with the lock's python, or set [image] python to its path")
    res.base, res.base_digest, res.python = base_ref, base.digest, facts.python
    step("base")

    from ..venv.install import wanted
    from ..venv.uvtool import uv_version

    packages = wanted(lock, _markers(lock.meta.platform, facts.version))
    host_python, host_version = staging_python(facts.version)
    groups = venvlayers.plan(packages, threshold=opts.threshold)
    layer_cache = ly.LayerCache(oci_cache)
    common = {"venv": venv_path, "python": facts.version, "interpreter": facts.python, "epoch": epoch,
              "compile": opts.compile, "installer": f"uv {uv_version()}", "host-python": host_version}
    keys = [layer_cache.key({**common, "title": g.title, "packages": g.key_parts()}) for g in groups]
    built: dict[int, ly.BuiltLayer] = {}
    for i, k in enumerate(keys):
        hit = layer_cache.get(k)
        if hit:
            built[i] = hit
    misses = [i for i in range(len(groups)) if i not in built]
    log(f"{len(groups) - len(misses)} of {len(groups)} package layers cached" if groups else "no packages")

    staging_root = oci_cache / "staging"
    staging_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="export-", dir=staging_root))
    try:
        user_cfg, user_entries, home = _user_files(conf.get("user", DEFAULT_USER), facts)
        if misses:
            if not host_python:
                raise UserError(f"no Python {facts.version} on this machine to stage the venv with",
                                hint=f"install python{facts.version} (the base's version), or use a base with this machine's python")
            miss_pkgs = [p for i in misses for p in groups[i].packages]
            st = _stage(lock, miss_pkgs, facts, host_python, opts, reporter, res.notes, tmp)
            step("install")
            image_site = f"{venv_path}/lib/python{facts.version}/site-packages"

            def entries_of(i: int) -> list[ly.Entry]:
                owned = venvlayers.owned_entries(st.venv, st.site, groups[i].packages, image_venv=venv_path,
                                                 cache_tag=st.cache_tag)
                return ly.with_parents(e for p in groups[i].packages for e in owned[p.key])

            # Compile group by group (fewest .py files first) while finished groups compress:
            # the big nvidia libraries are in layers before torch's sources are compiled.
            pre = {i: entries_of(i) for i in misses}
            total = sum(e.size for es in pre.values() for e in es)
            reporter.start(total, f"compiling and compressing {len(misses)} layer(s)")
            futs: dict = {}
            try:
                jobs = opts.jobs or max(2, os.cpu_count() or 2)
                with ThreadPoolExecutor(max_workers=jobs) as pool:
                    def submit(i: int) -> None:
                        es = entries_of(i) if st.compile else pre[i]
                        res.installed_bytes += sum(e.size for e in es)
                        futs[i] = pool.submit(ly.build_layer, es, layer_cache.store, mtime=epoch, progress=reporter.advance)

                    if st.compile:
                        py = {i: [e.src for e in pre[i] if e.src is not None and e.path.endswith(".py")] for i in misses}
                        order = sorted(misses, key=lambda i: (len(py[i]), -sum(e.size for e in pre[i])))
                        venvlayers.compile_groups(st.python, st.site, image_site, [(i, py[i]) for i in order], submit)
                    else:
                        for i in sorted(misses, key=lambda i: -sum(e.size for e in pre[i])):
                            submit(i)
                    for i, fut in futs.items():
                        built[i] = fut.result()
                        layer_cache.put(keys[i], built[i])
            finally:
                reporter.finish()
        top_entries = _top_entries(lock, venv_path, facts, user_entries)
        top = ly.build_layer(top_entries, layer_cache.store, mtime=epoch)
        step("layers")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    env_layers = []
    for i, g in enumerate(groups):
        b = built[i]
        names = ", ".join(f"{p.key} {p.version}" for p in g.packages)
        env_layers.append(im.Layer(digest=b.digest, diff_id=b.diff_id, size=b.size, media_type=b.media_type,
                                   path=b.path, created_by=f"envmgr: {names}", title=g.title,
                                   uncompressed_size=b.uncompressed_size, cached=b.cached))
    env_layers.append(im.Layer(digest=top.digest, diff_id=top.diff_id, size=top.size, media_type=top.media_type,
                               path=top.path, created_by="envmgr: venv, user, lock, SBOM", title="top",
                               uncompressed_size=top.uncompressed_size))
    meta = lock.meta
    labels = {
        f"{LABEL}lock.digest": lock.digest(),
        f"{LABEL}profile": meta.profile,
        f"{LABEL}variant": meta.variant,
        f"{LABEL}cuda": meta.cuda,
        f"{LABEL}min-driver": meta.min_driver,
        f"{LABEL}python": facts.version,
        f"{LABEL}venv": venv_path,
        f"{LABEL}builder": f"envmgr {__version__}",
        "org.opencontainers.image.base.name": base_ref,
        "org.opencontainers.image.base.digest": base.digest,
        **{str(k): str(v) for k, v in (conf.get("labels") or {}).items()},
    }
    env = {"PATH": f"{venv_path}/bin:{facts.path_env}", "VIRTUAL_ENV": venv_path,
           **{str(k): str(v) for k, v in (conf.get("env") or {}).items()}}
    img = im.append_layers(base.image, env_layers, created=created)
    img = im.with_config(img, created=created, env=env, user=user_cfg, workdir=conf.get("workdir") or home,
                         entrypoint=conf.get("entrypoint"), cmd=conf.get("cmd"), labels=labels)
    img = im.with_annotations(img, {
        **{k: v for k, v in labels.items() if k.startswith(LABEL)},
        "org.opencontainers.image.base.name": base_ref,
        "org.opencontainers.image.base.digest": base.digest,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.title": meta.profile,
    })
    res.digest, res.tag = img.digest(), tag
    res.layers = [{"title": layer.title, "digest": layer.digest, "size": layer.size,
                   "uncompressed_size": layer.uncompressed_size, "cached": layer.cached}
                  for layer in img.layers[len(base.image.layers):]]
    res.outputs["config"] = img.config_digest

    if opts.output:
        out = opts.output
        if out.suffix == ".tar":
            layout.write_tar(img, out, name=tag, mtime=epoch)
        else:
            layout.write_dir(img, out, name=tag)
        res.outputs["output"] = str(out)
        step("write")
    if opts.push:
        from . import remote

        ref = remote.parse_ref(opts.push)
        mount = None
        if not base_ref.startswith(sources.PREFIXES[:3]):
            try:
                mount = remote.parse_ref(base_ref[len("docker://"):] if base_ref.startswith("docker://") else base_ref)
            except UserError:
                mount = None
        pushed = remote.push(img, ref, mount_from=mount, reporter=reporter)
        res.outputs["push"] = {"ref": pushed.ref, "uploaded": len(pushed.uploaded), "skipped": len(pushed.skipped),
                               "mounted": len(pushed.mounted)}
        step("push")
    if opts.load:
        from . import engine

        res.outputs["load"] = engine.load(img, tag, cache=oci_cache, epoch=epoch, reporter=reporter)
        step("load")
    res.seconds["total"] = round(time.monotonic() - started, 3)
    return res


def staging_python(version: str) -> tuple[str, str]:
    """(path, full version) of this machine's Python ``version`` that stages the venv; ("", "") if none."""
    import subprocess

    from ..venv.install import query_python
    from ..venv.uvtool import clean_env, uv_bin

    proc = subprocess.run([uv_bin(), "python", "find", "--no-config", "--no-project", version], capture_output=True,
                          text=True, env=clean_env({"UV_PYTHON_DOWNLOADS": "never"}))
    path = proc.stdout.strip()
    if proc.returncode != 0 or not path:
        return "", ""
    return path, query_python(path).version
