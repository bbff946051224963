"""Benchmark: ``envmgr sync`` against ``uv pip sync --require-hashes`` of the same lock.

Input: a lock (default ``locks/pylock.default.toml``, the shipped default profile: torch from
PyPI with its CUDA wheels, about 2.8 GB) and network access to the URLs it records.
Output: one table of wall-clock seconds and the ratio envmgr / uv for three cases, measured
in the same run on the same machine:

* cold cache: empty caches (envmgr's file cache and uv's cache) and no venv; both download
  every file and build the venv from nothing (``--cold-repeat`` pairs, caches emptied before
  each run). Beside it: the line rate (the same files fetched raw by 16 parallel connections,
  to /dev/null), what each cold run cost (CPU seconds, bytes written and read: on this 2-core
  machine the wall clock follows the CPU), and where envmgr's cold time went (download with
  unpacking overlapped, the install after the last file, and alone: hashing every file, uv
  unpacking the local files into an empty cache). Each cold run starts clean: the removed
  folders written back and the clean caches dropped (see :func:`clean_start`);
* warm cache: caches kept from the cold run, no venv: what a second checkout costs; uv
  hard-links from its cache (the default on one filesystem), and once more with
  ``UV_LINK_MODE=copy`` for both (a cache on another filesystem: CI volumes, containers);
* no-op: the venv is already the lock: what ``envmgr run`` and CI pay on every call.

The warm case also times a floor: a bare ``python -c`` that only runs the same two uv
commands (uv's cache shared with uv's row): what any Python front end pays before doing
any work of its own.

uv's side is ``uv venv`` + ``uv pip sync --require-hashes LOCK`` (uv reads PEP 751 locks and
installs the files they name, as envmgr does); envmgr's side is ``envmgr sync NAME --venv V``
in a scratch copy of the project (re-locking is not timed: the lock must be fresh, or
``--frozen`` is used and said so). Each warm and no-op figure is the median of ``--repeat``
runs; cold runs once. The hard part is fairness: both get the same interpreter, fresh caches
of their own, the same filesystem, and envmgr is started as a user starts it (a new python).

``--compare-src DIR`` adds rows for the envmgr of another checkout (e.g. ``git worktree add
DIR REV``: the previous landing) in a tool venv and caches of its own, against uv, in the
same run.

    python bench/sync.py [--lock locks/pylock.NAME.toml] [--repeat 5] [--cold-repeat 3] [--keep DIR]
                         [--compare-src DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
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

from _tool import install_tool  # noqa: E402

from envmgr.model import lockfile  # noqa: E402
from envmgr.venv import install  # noqa: E402
from envmgr.venv.uvtool import uv_bin  # noqa: E402

NOOP_TARGET = 0.25  # seconds
WARM_TARGET = 1.2  # envmgr / uv
COLD_TARGET = 1.0  # envmgr / uv, paired


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "ENVMGR_", "PIP_", "VIRTUAL_ENV"))}
    env.pop("PYTHONPATH", None)
    env.update(NO_COLOR="1", ENVMGR_NO_PROGRESS="1", UV_NO_PROGRESS="1")
    env.update(extra)
    return env


class Cost:
    """What the commands run between two :meth:`take` calls cost in all: CPU seconds (user + sys,
    from ``getrusage`` of the children waited for) and bytes passed to ``write(2)`` and got from
    ``read(2)`` (``/proc/self/io``, where Linux adds a child's counts when it is waited for: what a
    tool wrote into files, a cache, a venv; reads count a socket read through ``read(2)``, as
    Python's TLS does, but not through ``recv(2)``, as uv does)."""

    def __init__(self) -> None:
        self.mark = self._now()

    @staticmethod
    def _now() -> tuple[float, int, int]:
        import resource

        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        io = {}
        with contextlib.suppress(OSError):
            io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
        return r.ru_utime + r.ru_stime, int(io.get("wchar", 0)), int(io.get("rchar", 0))

    def take(self) -> tuple[float, int, int]:
        """(CPU s, bytes written, bytes read) since the last call."""
        now = self._now()
        took = tuple(b - a for a, b in zip(self.mark, now))
        self.mark = now
        return took


def clean_start() -> None:
    """Before a cold run, once its folders are removed: write everything back, then drop the
    clean caches (root) or wait 35 s. This disk is ext4 without a journal, which, allocating an
    inode, skips those freed in the last 30 s, scanning the inode table for each (the kernel's
    ``recently_deleted``): a run started right after a 45k-file cache was removed spent up to a
    third of its kernel time there (perf), and the second run of a round paid for both removals."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        time.sleep(35)


def run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """(seconds, stderr) of ``cmd``; a failure ends the benchmark."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return took, proc.stderr


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    return run(cmd, env, cwd)[0]


class Envmgr:
    def __init__(self, work: Path, lock: Path, name: str, frozen: bool, envmgr: list[str], tag: str = ""):
        self.project, self.venv, self.name, self.tag = work / "project", work / f"venv-envmgr{tag}", name, tag
        self.caches = (work / f"cache-envmgr{tag}", work / f"cache-uv-for-envmgr{tag}")
        self.env = clean_env(ENVMGR_PROJECT=str(self.project), ENVMGR_CACHE_DIR=str(self.caches[0]),
                             UV_CACHE_DIR=str(self.caches[1]))
        if envmgr[0] == sys.executable:  # --in-place: this checkout's sources
            self.env["PYTHONPATH"] = str(REPO)
        self.cmd = [*envmgr, "sync", name, "--venv", str(self.venv), *(["--frozen"] if frozen else [])]
        self.phases: list[tuple[float, float]] = []  # cold runs: (download s, install after it s), as logged
        self.costs: list[tuple[float, int, int]] = []  # cold runs: (CPU s, bytes written, bytes read)

    def sync(self) -> float:
        return timed([*self.cmd, "-q"], self.env, self.project)

    def cold(self) -> float:
        """A sync from empty caches, its log read for where the time went."""
        for d in (self.venv, *self.caches):
            shutil.rmtree(d, ignore_errors=True)
        clean_start()
        cost = Cost()
        took, log = run(self.cmd, self.env, self.project)
        self.costs.append(cost.take())
        down = re.search(r"downloaded \d+ file\(s\), \d+ MB in ([\d.]+) s", log)
        after = re.search(r"installed \d+ package\(s\) in ([\d.]+) s after", log)
        if down and after:
            self.phases.append((float(down.group(1)), float(after.group(1))))
        return took


class Uv:
    def __init__(self, work: Path, lock: Path, python: str):
        self.venv, self.lock, self.python, self.work = work / "venv-uv", lock, python, work
        self.env = clean_env(UV_CACHE_DIR=str(work / "cache-uv"))
        self.costs: list[tuple[float, int, int]] = []  # cold runs: (CPU s, bytes written, bytes read)

    def create_and_sync(self) -> float:
        return sum(timed(cmd, self.env, self.work) for cmd in self.commands(self.venv))

    def cold(self) -> float:
        for d in (self.venv, self.work / "cache-uv"):
            shutil.rmtree(d, ignore_errors=True)
        clean_start()
        cost = Cost()
        took = self.create_and_sync()
        self.costs.append(cost.take())
        return took

    def commands(self, venv: Path) -> list[list[str]]:
        return [[uv_bin(), "venv", "-q", "--no-config", "--python", self.python, str(venv)],
                [uv_bin(), "pip", "sync", "-q", "--no-config", "--python", str(venv / "bin" / "python"),
                 "--require-hashes", str(self.lock)]]

    def sync(self) -> float:
        return timed(self.commands(self.venv)[1], self.env, self.work)

    def floor(self, python: str = sys.executable) -> float:
        """``python`` (envmgr's interpreter) only running uv venv + uv pip sync (a separate venv, uv's cache)."""
        venv = self.work / "venv-floor"  # removed before each run, with the others (fresh_venvs)
        script = "import subprocess, sys, json; [subprocess.run(c, check=True) for c in json.loads(sys.argv[1])]"
        return timed([python, "-c", script, json.dumps(self.commands(venv))], self.env, self.work)


def settle(limit: float = 240.0) -> None:
    """Write back dirty pages, then wait (up to ``limit`` s) until the disk has been idle for
    a while (Linux pressure stall information: under 1% of the last 60 s stalled on I/O;
    ext4 goes on converting extents well after the writeback)."""
    os.sync()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            some = Path("/proc/pressure/io").read_text().splitlines()[0]
            if float(some.split("avg60=")[1].split()[0]) < 1.0:
                return
        except (OSError, IndexError, ValueError):
            return
        time.sleep(1)


def line_rate(lock, connections: int = 16) -> float:
    """Seconds to fetch every file of ``lock`` raw, ``connections`` at a time, to /dev/null (curl)."""
    urls = [p.install_file.url for p in lock.packages]
    cmd = ["xargs", "-P", str(connections), "-n", "1", "curl", "-sf", "-o", "/dev/null"]
    started = time.perf_counter()
    subprocess.run(cmd, input="\n".join(urls), text=True, check=True)
    return time.perf_counter() - started


def unpack_alone(work: Path, lock, files: Path, python: str) -> tuple[float, float]:
    """(hashing every cached file, uv installing them from envmgr's cache into an empty uv cache):
    the two steps a cold sync overlaps with the downloads, each alone."""
    paths = {p.install_file.sha256: files / p.install_file.sha256 / p.install_file.filename for p in lock.packages}
    for path in paths.values():  # in the page cache, as a sync finds a file it has just written
        with open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    started = time.perf_counter()
    for path in paths.values():
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    hashed = time.perf_counter() - started
    venv, cache, folder = work / "venv-unpack", work / "cache-uv-unpack", work / "unpack"
    for d in (venv, cache, folder):
        shutil.rmtree(d, ignore_errors=True)
    folder.mkdir()
    (folder / "pylock.toml").write_text(install.local_lock(lock, lock.packages, paths))
    env = clean_env(UV_CACHE_DIR=str(cache))
    os.sync()
    took = timed([uv_bin(), "venv", "-q", "--no-config", "--python", python, str(venv)], env, work) + timed(
        [uv_bin(), "pip", "sync", "-q", "--no-config", "--offline", "--preview-features", "pylock", "--python",
         str(venv / "bin" / "python"), "--require-hashes", str(folder / "pylock.toml")], env, work)
    for d in (venv, cache, folder):
        shutil.rmtree(d, ignore_errors=True)
    return hashed, took


def paired(a, b, repeat: int, before=None) -> tuple[float, float, float]:
    """Medians of ``repeat`` runs of ``a`` and ``b``, interleaved (order alternating) so that
    load from elsewhere on the machine falls on both alike, and the median of the ratios of
    each pair: runs seconds apart see the same disk, while this VM's disk drifts over minutes
    (uv's own warm sync ranges 0.2-0.8 s), so the paired figure is the steadier one."""
    ta, tb = [], []
    for i in range(repeat):
        for fn, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            if before:
                before()
            out.append(fn())
    return statistics.median(ta), statistics.median(tb), statistics.median(x / y for x, y in zip(ta, tb))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lock", type=Path, default=REPO / "locks" / "pylock.default.toml")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cold-repeat", type=int, default=3, help="cold pairs (each downloads the lock twice)")
    ap.add_argument("--compare-src", type=Path, metavar="DIR",
                    help="also time the envmgr of checkout DIR (e.g. the previous landing, a git worktree)")
    ap.add_argument("--keep", type=Path, help="work in DIR and keep it (default: a temp folder, removed)")
    ap.add_argument("--reuse-caches", action="store_true",
                    help="with --keep DIR of an earlier run: keep its caches and skip the cold row (warm and "
                         "no-op rows on caches the disk has long settled)")
    ap.add_argument("--in-place", action="store_true",
                    help="run envmgr from this checkout with this python instead of a tool venv")
    args = ap.parse_args()
    if args.reuse_caches and not (args.keep and (args.keep / "cache-uv").is_dir()):
        ap.error("--reuse-caches needs --keep DIR of an earlier run")
    if args.compare_src and not (args.compare_src / "envmgr" / "__init__.py").is_file():
        ap.error(f"--compare-src {args.compare_src}: not an envmgr checkout")
    if args.repeat < 1 or args.cold_repeat < 1:
        ap.error("--repeat and --cold-repeat must be at least 1")

    lock = lockfile.read(args.lock)
    name = lockfile.lock_profile_name(args.lock)
    work = Path(args.keep or tempfile.mkdtemp(prefix="envmgr-bench-sync-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        project = work / "project"
        shutil.rmtree(project, ignore_errors=True)
        shutil.copytree(REPO / "profiles", project / "profiles")
        (project / "locks").mkdir()
        shutil.copy(args.lock, project / "locks" / args.lock.name)
        check = subprocess.run([sys.executable, "-m", "envmgr", "lock", "--check", name], cwd=project,
                               env=clean_env(ENVMGR_PROJECT=str(project), PYTHONPATH=str(REPO)), capture_output=True, text=True)
        frozen = check.returncode != 0
        python = subprocess.run([uv_bin(), "python", "find", "--system", "--no-config", lock.meta.python],
                                capture_output=True, text=True, check=True, env=clean_env()).stdout.strip()
        for d in ("venv-envmgr", "venv-uv", "venv-envmgr@old") if args.reuse_caches else \
                ("cache-envmgr", "cache-uv-for-envmgr", "cache-uv", "venv-envmgr", "venv-uv",
                 "cache-envmgr@old", "cache-uv-for-envmgr@old", "venv-envmgr@old"):
            shutil.rmtree(work / d, ignore_errors=True)
        if args.in_place:
            envmgr_cmd = [sys.executable, "-m", "envmgr"]
        else:
            envmgr_cmd = [install_tool(work / "tool", uv_bin(), clean_env())[1]]
        envmgr, uv = Envmgr(work, args.lock, name, frozen, envmgr_cmd), Uv(work, args.lock, python)
        old = None
        if args.compare_src:
            old = Envmgr(work, args.lock, name, frozen,
                         [install_tool(work / "tool-compare", uv_bin(), clean_env(), args.compare_src.resolve())[1]],
                         tag="@old")

        def fresh_venvs() -> None:
            for venv in (envmgr.venv, uv.venv, work / "venv-floor", *([old.venv] if old else [])):
                shutil.rmtree(venv, ignore_errors=True)
            # Not timed: write back what the last runs and removals left dirty, so that the
            # next run is not charged for another's I/O (a cold run writes 5.5 GB).
            os.sync()

        print(f"lock: {args.lock} ({len(lock.packages)} packages, {lock.download_size / 1e9:.2f} GB), "
              f"python {python}, uv {subprocess.run([uv_bin(), '--version'], capture_output=True, text=True).stdout.split()[1]}"
              f"{', envmgr sync --frozen (the lock is not fresh here)' if frozen else ''}", flush=True)
        rows, notes = [], []
        if args.reuse_caches:
            envmgr.sync(), uv.create_and_sync()  # untimed: caches already warm
            if old:
                old.sync()
        else:
            tools = [envmgr.cold, uv.cold, *([old.cold] if old else [])]
            times: list[list[float]] = [[] for _ in tools]
            for i in range(args.cold_repeat):  # the order turns each round: disk drift falls on all alike
                for k in [(j + i) % len(tools) for j in range(len(tools))]:
                    times[k].append(tools[k]())
                print(f"cold round {i + 1}: envmgr {times[0][-1]:.2f}s, uv {times[1][-1]:.2f}s"
                      + (f", @old {times[2][-1]:.2f}s" if old else ""), flush=True)
            e, u = times[0], times[1]
            rows.append(("cold cache", statistics.median(e), statistics.median(u),
                         statistics.median(x / y for x, y in zip(e, u))))
            if old:
                rows.append(("cold @old", statistics.median(times[2]), statistics.median(u),
                             statistics.median(x / y for x, y in zip(times[2], u))))
            size = lock.download_size / 1e6
            raw = line_rate(lock)
            notes.append(f"line rate: the same files raw, 16 connections to /dev/null: {raw:.2f}s ({size / raw:.0f} MB/s); "
                         f"uv cold {statistics.median(u):.2f}s ({size / statistics.median(u):.0f} MB/s), envmgr cold "
                         f"{statistics.median(e):.2f}s ({size / statistics.median(e):.0f} MB/s)")
            hashed, unpacked = unpack_alone(work, lock, envmgr.caches[0] / "files" / "sha256", python)
            if envmgr.phases:
                down = statistics.median(d for d, _ in envmgr.phases)
                after = statistics.median(a for _, a in envmgr.phases)
                notes.append(f"where envmgr's cold time went: download {down:.2f}s (hashed as it streams, uv unpacking "
                             f"the verified files meanwhile), then install {after:.2f}s after the last file, the rest "
                             f"start-up and planning; byte-compile: none (neither tool compiles at sync)")
            (ec, ew, er), (uc, uw, ur) = ([statistics.median(c[i] for c in tool.costs) for i in range(3)]
                                          for tool in (envmgr, uv))
            notes.append(f"cold cost (medians): CPU user+sys envmgr {ec:.1f}s, uv {uc:.1f}s ({ec / uc:.2f}x; {os.cpu_count()} "
                         f"cores here); written envmgr {ew / 1e9:.2f} GB (with the verified wheels it keeps "
                         f"for export, bundles and offline syncs, {lock.download_size / 1e9:.2f} GB), uv {uw / 1e9:.2f} GB; "
                         f"read(2) envmgr {er / 1e9:.2f} GB (its TLS reads the sockets with read(2), then uv reads the "
                         f"wheels it keeps), uv {ur / 1e9:.2f} GB (its sockets use recv, which Linux does not count here)")
            notes.append(f"alone: sha256 of every file {hashed:.2f}s; uv unpacking the local files into an empty cache "
                         f"and linking {unpacked:.2f}s")
        settle()  # the cold runs wrote ~15 GB (downloads, caches, venvs): let the disk catch up
        rows.append(("warm cache", *paired(envmgr.sync, uv.create_and_sync, args.repeat, before=fresh_venvs)))
        if old:
            rows.append(("warm @old", *paired(old.sync, uv.create_and_sync, args.repeat, before=fresh_venvs)))
        tool_python = str(Path(envmgr_cmd[0]).with_name("python")) if envmgr_cmd[0] != sys.executable else sys.executable
        floor, uv_again, floor_ratio = paired(lambda: uv.floor(tool_python), uv.create_and_sync, args.repeat,
                                              before=fresh_venvs)
        fresh_venvs(), envmgr.sync(), uv.create_and_sync()  # both venvs synced for the no-op runs
        rows.append(("no-op", *paired(envmgr.sync, uv.sync, args.repeat * 2)))
        if old:
            old.sync()
            rows.append(("no-op @old", *paired(old.sync, uv.sync, args.repeat * 2)))
        for tool in (envmgr, uv):  # a cache on another filesystem than the venv (CI volumes, containers)
            tool.env["UV_LINK_MODE"] = "copy"
        rows.append(("warm, copy", *paired(envmgr.sync, uv.create_and_sync, max(3, args.repeat // 2),
                                           before=fresh_venvs)))
        print(f"{'':12} {'envmgr sync':>12} {'uv pip sync':>12} {'ratio':>7} {'paired':>7}")
        for label, e, u, r in rows:
            print(f"{label:12} {e:11.2f}s {u:11.2f}s {e / u:6.2f}x {r:6.2f}x")
        for note in notes:
            print(note)
        print(f"warm floor: python -c 'run uv venv && uv pip sync' {floor:.2f}s against uv {uv_again:.2f}s: "
              f"{floor / uv_again:.2f}x, paired {floor_ratio:.2f}x (what a Python front end pays before any work of its own)")
        row = {label: (e, u, r) for label, e, u, r in rows}
        warm, noop = row["warm cache"], row["no-op"]
        verdicts = []
        if "cold cache" in row:
            cold = row["cold cache"][2]
            verdicts.append(f"cold ratio {cold:.2f}x paired (target <= {COLD_TARGET}x): "
                            f"{'ok' if cold <= COLD_TARGET else 'MISSED'}")
        verdicts.append(f"warm-cache ratio {warm[2]:.2f}x paired, {warm[0] / warm[1]:.2f}x of medians (target <= "
                        f"{WARM_TARGET}x): {'ok' if warm[2] <= WARM_TARGET else 'MISSED'}")
        verdicts.append(f"no-op envmgr sync {noop[0]:.3f}s (target < {NOOP_TARGET}s): "
                        f"{'ok' if noop[0] < NOOP_TARGET else 'MISSED'}")
        print("; ".join(verdicts))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
