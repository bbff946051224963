"""Benchmark: ``envmgr bundle`` against ``pip download``, and an offline sync from the bundle
against ``uv pip sync --offline`` from a warm cache.

Input: a profile and its fresh lock (default: the shipped ``default`` profile, torch from PyPI
with its CUDA wheels, several GB: pass ``--profile NAME``/``--project DIR`` for another, or
``--fixture`` for the tests' local PyTorch-shaped index and a small lock locked on it) and the
network to the URLs the lock records. Output: one table of wall-clock seconds and ratios:

* bundle: ``envmgr bundle NAME --output B.tar`` with empty caches (every file the lock names
  downloaded, hash-checked, written into a reproducible tar) against ``pip download
  --no-deps --require-hashes`` of the same files (``name @ URL --hash=...`` lines) with pip's
  cache off. envmgr's own wheels are gathered once before (built and downloaded, timed on
  their own line) and passed as ``--tool-wheels``: the comparison is the lock's files;
* offline sync: ``envmgr sync NAME --bundle B.tar --frozen`` into a new venv with an empty
  envmgr cache, inside ``unshare -n`` when that works (no network at all), against ``uv venv``
  + ``uv pip sync --offline --require-hashes LOCK`` with uv's cache warmed by an untimed
  online run: taking the files from a bundle against taking them from a warm cache.

Each figure is the median of ``--repeat`` runs (the bundle and pip download run once: they
download). Both sides run on the same interpreter and filesystem, with caches of their own.

    python bench/bundle.py [--profile default] [--project DIR] [--fixture] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from envmgr.core import settings  # noqa: E402
from envmgr.model import lockfile  # noqa: E402
from envmgr.venv.uvtool import uv_bin  # noqa: E402


def timed(argv: list[str], env: dict, cwd: Path | None = None) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(argv)}\n{proc.stderr[-3000:]}")
    return wall


def netns() -> list[str]:
    ok = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0 if shutil.which("unshare") else False
    return ["unshare", "-n"] if ok else []


def fixture_project(scratch: Path, env: dict):
    from fixture_index import FixtureIndex
    from test_lock import make_project, profile_text

    index = FixtureIndex(scratch / "index")
    index.start()
    project = make_project(scratch / "project", {"default": profile_text(index, "cpu", packages=("numpy", "fixture-app"))})
    timed([sys.executable, "-m", "envmgr", "lock", "default", "-q"], {**env, "ENVMGR_PROJECT": str(project)})
    return index, project


def copy_project(src: Path, name: str, scratch: Path) -> Path:
    dest = scratch / "project"
    shutil.copytree(src / "profiles", dest / "profiles")
    (dest / "locks").mkdir(parents=True)
    shutil.copy(settings.lock_path(src, name), settings.lock_path(dest, name))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--project", type=Path, default=REPO)
    ap.add_argument("--fixture", action="store_true", help="a small lock on the tests' local index (no internet needed)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir, removed)")
    args = ap.parse_args()

    scratch = Path(args.keep or tempfile.mkdtemp(prefix="bench-bundle-")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    uv = uv_bin()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "ENVMGR_"))}
    base_env.update(PYTHONPATH=str(REPO), ENVMGR_NO_PROGRESS="1", UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never",
                    PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", ENVMGR_DRIVER_VERSION="none",
                    ENVMGR_CACHE_DIR=str(scratch / "lock-cache"), UV_CACHE_DIR=str(scratch / "lock-uv-cache"))
    index = None
    try:
        if args.fixture:
            index, project = fixture_project(scratch, base_env)
            name = "default"
        else:
            project, name = copy_project(args.project.resolve(), args.profile, scratch), args.profile
        env = {**base_env, "ENVMGR_PROJECT": str(project)}
        lock = lockfile.read(settings.lock_path(project, name))
        files = {f.sha256: f for p in lock.packages for f in p.files}
        envmgr = [sys.executable, "-m", "envmgr"]

        from envmgr.bundle import tool

        started = time.monotonic()
        tools = scratch / "tools"
        shutil.rmtree(tools, ignore_errors=True)
        tools.mkdir()
        tool.gather(tools, lock.meta.python, lock.meta.platform.split("-", 1)[1], folder=None, log=lambda _: None)
        tool_s = time.monotonic() - started

        bundle = scratch / "bundle.tar"
        bundle_s = timed([*envmgr, "bundle", name, "--output", str(bundle), "--tool-wheels", str(tools), "-q"],
                         {**env, "ENVMGR_CACHE_DIR": str(scratch / "bundle-cache")})
        req = scratch / "requirements.txt"
        req.write_text("".join(f"{p.key} @ {f.url} --hash=sha256:{f.sha256}\n" for p in lock.packages for f in p.files))
        downloads = scratch / "pip-download"
        pip_s = timed([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-cache-dir", "--require-hashes",
                       "-d", str(downloads), "-r", str(req)], env)

        ns = netns()
        sync_runs, uv_runs = [], []
        uv_env = {**env, "UV_CACHE_DIR": str(scratch / "uv-cache")}
        lock_file = settings.lock_path(project, name)
        warm = scratch / "uv-warm"
        timed([uv, "venv", "-q", "--clear", "-p", sys.executable, str(warm)], uv_env)
        timed([uv, "pip", "sync", "-q", "-p", str(warm / "bin" / "python"), "--require-hashes", str(lock_file)], uv_env)
        for i in range(args.repeat):
            venv, cache = scratch / f"sync-venv-{i}", scratch / f"sync-cache-{i}"
            sync_runs.append(timed([*ns, *envmgr, "sync", name, "--bundle", str(bundle), "--frozen", "--venv", str(venv), "-q"],
                                   {**env, "ENVMGR_CACHE_DIR": str(cache)}))
            target = scratch / f"uv-venv-{i}"
            started = time.monotonic()
            timed([uv, "venv", "-q", "--clear", "-p", sys.executable, str(target)], uv_env)
            timed([uv, "pip", "sync", "-q", "--offline", "-p", str(target / "bin" / "python"), "--require-hashes",
                   str(lock_file)], uv_env)
            uv_runs.append(time.monotonic() - started)
            shutil.rmtree(venv), shutil.rmtree(cache), shutil.rmtree(target)
        sync_s, uv_s = statistics.median(sync_runs), statistics.median(uv_runs)

        size = sum(f.size for f in files.values())
        print(f"lock: {lock_file.name} ({len(lock.packages)} packages, {len(files)} files, {size / 1e6:.1f} MB); "
              f"bundle {bundle.stat().st_size / 1e6:.1f} MB; offline runs {'in unshare -n' if ns else 'with the network up'}")
        print(f"{'case':<44} {'envmgr s':>9} {'other s':>9} {'ratio':>7}")
        print(f"{'envmgr wheels for the bundle (once, online)':<44} {tool_s:>9.2f} {'':>9} {'':>7}")
        print(f"{'bundle vs pip download (cold)':<44} {bundle_s:>9.2f} {pip_s:>9.2f} {bundle_s / pip_s:>7.2f}")
        print(f"{'offline sync: --bundle vs uv --offline (warm)':<44} {sync_s:>9.2f} {uv_s:>9.2f} {sync_s / uv_s:>7.2f}")
    finally:
        if index is not None:
            index.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
