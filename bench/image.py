"""bench/image: native export-image vs `podman build` of the rendered Containerfile.in.

On a real venv (the default profile's torch stack, several GB), in one run:
  1. native full export (empty layer cache, empty uv cache) -> OCI layout, from a warm file cache
  2. the same from an empty file cache: the downloads overlap the layers' work
  3. native re-export after one small package changed (layer cache warm)
  4. `podman build` of the rendered Containerfile.in, no cache (through podman's Docker API)
  5. the same podman build after the same one-package change (its cache allowed)
Prints seconds, MB/s of installed bytes, the ratios and the image sizes.

With ``--platforms``, instead: the profile's two-platform twin (linux-x86_64 and
linux-aarch64, locked once, not timed) exported as one image index, against two single-platform
exports of it (``--platform``), each from an empty layer cache; prints the ratio and the layers
the two images share.

    python bench/image.py [--profile default] [--base oci:DIR] [--work DIR] [--platforms]

Needs: podman (+ runc), mmdebstrap when no --base is given (the bookworm base is built once
and cached), the lock's files (fetched once into ENVMGR_CACHE_DIR or ~/.cache/envmgr-bench).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from envmgr.core.files import write_atomic  # noqa: E402
from envmgr.model import lockfile  # noqa: E402
from envmgr.model.lockfile import LockedFile  # noqa: E402


def envmgr(args: list[str], env: dict, cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "envmgr", *args, "--json", "-q"], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=cwd)
    if proc.returncode != 0:
        sys.exit(f"envmgr {' '.join(args)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def bookworm_base(cache: Path) -> str:
    from envmgr.oci.debian import import_rootfs, mmdebstrap

    layout = cache / "bookworm-layout"
    if not (layout / "index.json").is_file():
        tar = cache / "bookworm-python.tar"
        if not tar.is_file():
            print("building the bookworm base with mmdebstrap (once) ...", flush=True)
            mmdebstrap("bookworm", tar)
        import_rootfs(tar, layout, cache=cache, name="envmgr-base:bookworm-python")
    return f"oci:{layout}"


def bookworm_index(cache: Path) -> str:
    """The bookworm base for linux/amd64 and linux/arm64 (``envmgr base --platform``), built once."""
    from envmgr.oci.debian import build_base

    layout = cache / "bookworm-index"
    if not (layout / "index.json").is_file():
        print("building the two-platform bookworm base with mmdebstrap (once) ...", flush=True)
        build_base("bookworm", layout, cache=cache, platforms=["linux/amd64", "linux/arm64"], log=print)
    return f"oci:{layout}"


def changed_lock(lock: lockfile.Lock, name: str) -> lockfile.Lock:
    """The lock with ``name`` swapped for its previous release on the lock's own index."""
    import requests
    from packaging.utils import parse_wheel_filename

    pkg = lock.package(name)
    page = requests.get(f"{pkg.index.rstrip('/')}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"},
                        timeout=30).json()
    best = None
    for f in page["files"]:
        if not f["filename"].endswith("-py3-none-any.whl") or f.get("yanked"):
            continue
        version = parse_wheel_filename(f["filename"])[1]
        if str(version) != pkg.version and (best is None or version > best[0]) and version < parse_wheel_filename(pkg.install_file.filename)[1]:
            best = (version, f)
    if not best:
        sys.exit(f"no other release of {name} to switch to")
    version, f = best
    new = type(pkg)(name=pkg.name, version=str(version), index=pkg.index, marker=pkg.marker,
                    wheels=(LockedFile(url=f["url"], sha256=f["hashes"]["sha256"], size=int(f.get("size") or 0)),))
    return lock.with_packages([new if p.key == pkg.key else p for p in lock.packages])


def podman_service(sock: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if sock.exists():
            return proc
        time.sleep(0.1)
    proc.terminate()
    sys.exit("podman system service did not start")


def engine_build(project: Path, name: str, base: str, sock: Path, nocache: bool, env: dict) -> dict:
    from envmgr.oci import build
    from envmgr.oci.export import Options

    old = dict(os.environ)
    os.environ.update({**env, "DOCKER_HOST": f"unix://{sock}"})
    try:
        started = time.monotonic()
        res = build.build(project, Options(name=name, base=base, load=True), engine="podman", nocache=nocache)
        res.seconds["total"] = round(time.monotonic() - started, 3)
        return res.to_json()
    finally:
        os.environ.clear()
        os.environ.update(old)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="default")
    ap.add_argument("--base")
    ap.add_argument("--change", default="filelock", help="the small package to change")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--skip-podman", action="store_true")
    ap.add_argument("--platforms", action="store_true", help="the two-platform export against two single ones")
    args = ap.parse_args()

    cache = Path(os.environ.get("ENVMGR_CACHE_DIR") or Path.home() / ".cache" / "envmgr-bench")
    work = args.work or Path(tempfile.mkdtemp(prefix="envmgr-bench-image-"))
    work.mkdir(parents=True, exist_ok=True)
    base = args.base or (bookworm_index(cache) if args.platforms else bookworm_base(cache))

    # A private project: the repo's profiles and the profile's lock, then the changed lock.
    proj = work / "project"
    shutil.rmtree(proj, ignore_errors=True)
    shutil.copytree(REPO / "profiles", proj / "profiles")
    lock = lockfile.read(lockfile.lock_path(REPO, args.profile))
    write_atomic(lockfile.lock_path(proj, args.profile), lock.dumps())
    env = {"ENVMGR_CACHE_DIR": str(cache), "ENVMGR_NO_PROGRESS": "1"}
    os.environ["ENVMGR_CACHE_DIR"] = str(cache)
    if args.platforms:
        return platforms(proj, args.profile, base, cache, work, env)
    changed = changed_lock(lock, args.change)

    from envmgr.net import fetch

    fetch.fetch([(p.key, p.install_file) for p in (*lock.packages, *changed.packages)])  # not timed: both need the files

    shutil.rmtree(cache / "oci" / "layers", ignore_errors=True)
    uv_cache = work / "uv-cache"
    shutil.rmtree(uv_cache, ignore_errors=True)
    native_env = {**env, "UV_CACHE_DIR": str(uv_cache)}
    print(f"native full export of {args.profile} ...", flush=True)
    full = envmgr(["export-image", args.profile, "--base", base, "--output", str(work / "native-full")], native_env, proj)
    print(f"native full export of {args.profile}, empty file cache (downloads overlapped) ...", flush=True)
    cold_cache = work / "cold-cache"
    shutil.rmtree(cold_cache, ignore_errors=True)
    cold = envmgr(["export-image", args.profile, "--base", base, "--output", str(work / "native-cold")],
                  {**native_env, "ENVMGR_CACHE_DIR": str(cold_cache)}, proj)
    shutil.rmtree(cold_cache, ignore_errors=True)
    shutil.rmtree(work / "native-cold", ignore_errors=True)
    write_atomic(lockfile.lock_path(proj, args.profile), changed.dumps())
    print(f"native re-export after {args.change} changed ...", flush=True)
    one = envmgr(["export-image", args.profile, "--base", base, "--output", str(work / "native-one")], native_env, proj)
    rebuilt = [layer["title"] for layer in one["layers"] if not layer["cached"]]

    installed = full["installed_bytes"]
    native_size = sum(layer["size"] for layer in full["layers"])
    base_size = sum(p.stat().st_size for p in (work / "native-full" / "blobs" / "sha256").iterdir()) - native_size
    rows = [("native full export", full["seconds"]["total"]),
            ("native full export, files downloaded", cold["seconds"]["total"]),
            (f"native, {args.change} changed", one["seconds"]["total"])]

    podman_full = podman_one = None
    if not args.skip_podman:
        write_atomic(lockfile.lock_path(proj, args.profile), lock.dumps())
        sock = work / "podman.sock"
        svc = podman_service(sock)
        try:
            print("podman build (no cache) ...", flush=True)
            podman_full = engine_build(proj, args.profile, base, sock, True, env)
            write_atomic(lockfile.lock_path(proj, args.profile), changed.dumps())
            print(f"podman build after {args.change} changed ...", flush=True)
            podman_one = engine_build(proj, args.profile, base, sock, False, env)
        finally:
            for res in (podman_full, podman_one):
                if res:
                    subprocess.run(["podman", "rmi", "-f", res["outputs"]["id"]], capture_output=True)
            svc.terminate()
            svc.wait()
        rows += [("podman build (no cache)", podman_full["seconds"]["total"]),
                 (f"podman build, {args.change} changed", podman_one["seconds"]["total"])]

    print()
    print(f"venv: {installed / 1e9:.2f} GB installed, {len(full['layers'])} env layers; "
          f"machine: {os.cpu_count()} CPUs; base {base}")
    for label, secs in rows:
        extra = f"  ({installed / 1e6 / secs:,.0f} MB/s of installed bytes)" if label == "native full export" else ""
        print(f"{label:<36} {secs:8.1f} s{extra}")
    steps = full["seconds"]
    print(f"where the native full export went: every wheel's files laid out {steps.get('install', 0):.1f} s, "
          f"then the rest of byte-compile and layer compression (both from the start, overlapped) "
          f"{steps.get('layers', 0):.1f} s, "
          f"writing the layout {steps.get('write', 0):.1f} s; {steps['total']:.1f} s in all "
          f"(target <= 30 s: {'ok' if steps['total'] <= 30 else 'MISSED'})")
    print(f"with an empty file cache the files download while the layers of those already here are built: "
          f"the last file at hand after {cold['seconds'].get('install', 0):.1f} s, {cold['seconds']['total']:.1f} s in all")
    print(f"native one-package change rebuilt: {', '.join(rebuilt)}")
    print(f"digest: full {full['digest']}  after change {one['digest']}")
    print(f"image size, native: {(native_size + base_size) / 1e9:.2f} GB compressed "
          f"({native_size / 1e9:.2f} GB env layers + {base_size / 1e9:.2f} GB base)")
    if podman_full:
        print(f"image size, podman: {podman_full['outputs']['size'] / 1e9:.2f} GB (engine storage, uncompressed)")
        r_full = podman_full["seconds"]["total"] / full["seconds"]["total"]
        r_one = podman_one["seconds"]["total"] / one["seconds"]["total"]
        print(f"ratio full export  (podman / native): {r_full:5.1f}x  (target >= 3x)")
        print(f"ratio one change   (podman / native): {r_one:5.1f}x  (target >= 20x)")


def platforms(proj: Path, profile: str, base: str, cache: Path, work: Path, env: dict) -> None:
    """The two-platform export (one index) against one export a platform, layer cache emptied
    before each; the files fetched first, not timed. ``base`` must hold both platforms."""
    from envmgr.model.platforms import PLATFORMS, oci_platform
    from envmgr.net import fetch

    path = proj / "profiles" / f"{profile}.toml"
    path.write_text(path.read_text() + f"platform = {json.dumps(list(PLATFORMS))}\n")
    print(f"locking {profile} for {', '.join(PLATFORMS)} (not timed) ...", flush=True)
    proc = subprocess.run([sys.executable, "-m", "envmgr", "lock", profile], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=proj)
    if proc.returncode != 0:
        sys.exit(f"envmgr lock failed:\n{proc.stderr}")
    lock = lockfile.read(lockfile.lock_path(proj, profile))
    fetch.fetch([(p.key, f) for p in lock.packages for f in p.files if f.is_wheel])  # not timed: every run needs them
    uv_cache = work / "uv-cache"
    native_env = {**env, "UV_CACHE_DIR": str(uv_cache)}

    def cold(label: str, *more: str) -> dict:
        shutil.rmtree(cache / "oci" / "layers", ignore_errors=True)
        shutil.rmtree(uv_cache, ignore_errors=True)
        print(f"{label} ...", flush=True)
        out = work / label.replace(" ", "-").replace("/", "_")
        shutil.rmtree(out, ignore_errors=True)
        return envmgr(["export-image", profile, "--base", base, "--output", str(out), *more], native_env, proj)

    both = cold("two-platform index")
    singles = [cold(f"single {oci_platform(p)}", "--platform", p) for p in PLATFORMS]
    one_total = sum(s["seconds"]["total"] for s in singles)
    print()
    print(f"venvs: {both['installed_bytes'] / 1e9:.2f} GB installed in all; machine: {os.cpu_count()} CPUs; base {base}")
    print(f"{'two-platform export (one index)':<36} {both['seconds']['total']:8.1f} s")
    for p, s in zip(PLATFORMS, singles):
        print(f"{'single export ' + oci_platform(p):<36} {s['seconds']['total']:8.1f} s")
    print(f"{'two single exports':<36} {one_total:8.1f} s")
    print(f"ratio two-platform / two singles: {both['seconds']['total'] / one_total:5.2f}x")
    layers = {m["platform"]: sum(1 for layer in both["layers"] if layer["platform"] == m["platform"]) for m in both["manifests"]}
    print(f"layer digests the two images share: {both['shared_layers']} "
          f"(envmgr's layers: {', '.join(f'{n} in {p}' for p, n in layers.items())}; the bases' are their own)")
    print(f"index digest: {both['digest']}")


if __name__ == "__main__":
    main()
