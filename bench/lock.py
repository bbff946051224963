#!/usr/bin/env python3
"""bench/lock: ``envmgr lock`` against ``uv pip compile`` (and pip-compile) on the same inputs.

    python bench/lock.py [--profile default] [--reps 5] [--pip-timeout 60] [--no-pip-compile]
                         [--no-pip-tools] [--no-floor] [--compare-src DIR] [--keep]
                         [--torch-index-route | --only-torch-index-route] [--two-platform]

Locks the profile (the shipped ``default`` resolves from PyPI alone) in a scratch copy of
the project, so the repository's own lock is never touched, and times, in one run:

* ``envmgr lock NAME`` (uv backend, the default), installed the way CLI tools are (its own
  venv, byte-compiled, like ``uv tool install``/pipx) so the machine's crowded
  site-packages does not slow its start; ``--in-place`` runs this checkout's
  ``python -m envmgr`` instead;
* ``uv pip compile requirements.in --format pylock.toml`` with the profile's requirements,
  python and platform: what a user would run instead;
* the same ``uv pip compile`` given ``--python`` (the interpreter envmgr hands uv): uv then
  skips its interpreter discovery, which on a host with pyenv shims on PATH costs ~0.1 s a
  run. envmgr / this row is envmgr's own overhead; envmgr / the plain row is what a user
  sees (the issue's bound);
* a bare ``python -c`` that only runs the plain uv command (the floor: what any Python
  front end pays to start);
* with ``--compare-src DIR``, the envmgr of another checkout, in a tool venv of its own
  (before/after in one run);
* ``envmgr lock NAME --resolver pip-tools`` and plain ``pip-compile`` (pip-compile downloads
  every resolved wheel, gigabytes for a CUDA torch, so it gets ``--pip-timeout`` seconds
  and is reported as not finishing when it does not);
* with ``--torch-index-route``, the other route: the same profile with the torch family from
  a separate, explicit index (the cu118 path; here a local PEP 503 index listing the default
  index's torch and triton files, as the PyTorch index lists its own), against ``uv pip
  compile`` of a pyproject giving uv the same explicit index (``[tool.uv.sources]``), and the
  floor for it;
* with ``--two-platform``, the profile locked for linux-x86_64 and linux-aarch64 at once
  (``platform = [...]``) against ``uv pip compile`` run once per platform, one after the other.

Paired ratios: the median of each rep's ratio (the tools run seconds apart, alternating).

Cold: every run gets fresh, empty caches (UV_CACHE_DIR, ENVMGR_CACHE_DIR, PIP_CACHE_DIR).
Warm: the caches are primed once, then kept. Runs of the tools alternate (interleaved, the
order flipping every rep) and the median of the reps is reported, with the ratios. Outputs
are removed before every run, so each run resolves from scratch. Needs network access to
the real index. Prints a sanity line: envmgr's pins equal uv's, and a second ``envmgr
lock`` leaves the lock byte-identical.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _tool import install_tool  # noqa: E402

from envmgr.model import profiles  # noqa: E402
from envmgr.venv.uvtool import clean_env, uv_bin, uv_version  # noqa: E402

TARGET = 1.15  # the bound on envmgr lock / uv pip compile


def base_env() -> dict[str, str]:
    """The caller's environment without pip/uv/envmgr settings (same for every tool)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "ENVMGR_"))}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
                "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never", "NO_COLOR": "1", "ENVMGR_NO_PROGRESS": "1"})
    env.pop("PYTHONPATH", None)
    return env


class Tool:
    def __init__(self, label: str, cmd: list[str], cwd: Path, outputs: list[Path], timeout: float,
                 env: dict[str, str] | None = None):
        self.label, self.cmd, self.cwd, self.outputs, self.timeout = label, cmd, cwd, outputs, timeout
        self.env = env or {}
        self.times: dict[str, list[float]] = {"cold": [], "warm": []}
        self.failed: dict[str, str] = {}

    def run(self, mode: str, caches: dict[str, Path]) -> float | None:
        if mode in self.failed:
            return None
        for out in self.outputs:
            out.unlink(missing_ok=True)
        env = base_env()
        env.update({"UV_CACHE_DIR": str(caches["uv"]), "ENVMGR_CACHE_DIR": str(caches["envmgr"]),
                    "PIP_CACHE_DIR": str(caches["pip"]), "ENVMGR_PROJECT": str(self.cwd),
                    "TMPDIR": str(caches["tmp"])})  # a killed pip-compile leaves its downloads in scratch
        caches["tmp"].mkdir(parents=True, exist_ok=True)
        env.update(self.env)
        start = time.perf_counter()
        try:
            proc = subprocess.run(self.cmd, cwd=self.cwd, env=env, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.failed[mode] = f"did not finish in {self.timeout:.0f} s"
            return None
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            self.failed[mode] = f"failed (exit {proc.returncode}): {tail[:120]}"
            print(f"{self.label} ({mode}) failed:\n{proc.stderr}", file=sys.stderr)
            return None
        self.times[mode].append(elapsed)
        return elapsed

    def median(self, mode: str) -> float | None:
        return statistics.median(self.times[mode]) if self.times[mode] and mode not in self.failed else None

    def cell(self, mode: str) -> str:
        if mode in self.failed:
            return self.failed[mode]
        t = self.times[mode]
        if not t:
            return "-"
        return f"{statistics.median(t):6.2f} s  ({min(t):.2f}-{max(t):.2f})"


def fresh_caches(root: Path, tag: str) -> dict[str, Path]:
    d = Path(tempfile.mkdtemp(prefix=f"cache-{tag}-", dir=root))
    return {k: d / k for k in ("uv", "envmgr", "pip", "tmp")}


def measure(tools: list[Tool], reps: int, scratch: Path) -> dict[str, dict[str, Path]]:
    """Cold then warm runs of ``tools``, interleaved, order flipping each rep; the warm caches."""
    for rep in range(reps):  # cold: every run with new, empty caches
        for tool in (tools if rep % 2 == 0 else tools[::-1]):
            tool.run("cold", fresh_caches(scratch, "cold"))
    warm = {t.label: fresh_caches(scratch, "warm") for t in tools}  # primed once, then kept
    for tool in tools:
        tool.run("warm", warm[tool.label])
        tool.times["warm"].clear()
    for rep in range(reps):
        for tool in (tools if rep % 2 == 0 else tools[::-1]):
            tool.run("warm", warm[tool.label])
    return warm


def paired(a: Tool, b: Tool, mode: str) -> float | None:
    """The median of the per-rep ratios a/b (None when a run failed)."""
    if mode in a.failed or mode in b.failed or not a.times[mode] or len(a.times[mode]) != len(b.times[mode]):
        return None
    return statistics.median(x / y for x, y in zip(a.times[mode], b.times[mode]))


def print_rows(tools: list[Tool]) -> None:
    width = max(len(t.label) for t in tools)
    print(f"\n{'':{width}}  {'cold':<26}  {'warm':<26}")
    for tool in tools:
        print(f"{tool.label:{width}}  {tool.cell('cold'):<26}  {tool.cell('warm'):<26}")
    print()


def torch_index_route(profile, scratch: Path, python: str, envmgr_bin: list[str], reps: int,
                      in_place: bool) -> bool:
    """The torch-index route: envmgr against uv given the same explicit index (see the doc)."""
    tools, stop = route_tools(profile, scratch, python, envmgr_bin, in_place)
    print("\ntorch-index route: the torch family from a separate explicit index", flush=True)
    try:
        measure(tools, reps, scratch)
    finally:
        stop()
    print_rows(tools)
    return report_paired(tools[0], tools[1], tools[2])


def profile_variant(profile, project: Path, name: str, key: str, value: str) -> Path:
    """A scratch project whose profile ``name`` is ``profile`` (and the files it extends) with
    ``key = value`` in place of its own ``key`` line, if any."""
    (project / "profiles").mkdir(parents=True)
    for f in profile.files:
        shutil.copy2(f, project / "profiles" / f.name)
    text = (project / "profiles" / f"{profile.name}.toml").read_text()
    text = "\n".join(line for line in text.splitlines() if line.split("=", 1)[0].strip() != key)
    (project / "profiles" / f"{name}.toml").write_text(text + f"\n{key} = {value}\n")
    return project


def route_tools(profile, scratch: Path, python: str, envmgr_bin: list[str], in_place: bool):
    """The torch-index route's rows (envmgr, uv, floor) and the function that stops its index."""
    import html
    import json
    import threading
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from envmgr.lock.resolve import default_index_url
    from envmgr.model.lockfile import toml_str

    pages = {}
    for project in ("torch", "triton"):
        req = urllib.request.Request(f"{default_index_url()}/{project}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
        rows = []
        for f in files:
            if not f["filename"].endswith(".whl") or "x86_64" not in f["filename"]:
                continue
            attrs = f' href="{html.escape(f["url"] + "#sha256=" + f["hashes"]["sha256"])}"'
            if f.get("requires-python"):
                attrs += f' data-requires-python="{html.escape(f["requires-python"])}"'
            meta = f.get("core-metadata")
            if isinstance(meta, dict) and meta.get("sha256"):
                attrs += f' data-core-metadata="sha256={meta["sha256"]}"'
            rows.append(f"<a{attrs}>{html.escape(f['filename'])}</a><br/>")
        pages[f"/whl/bench/{project}/"] = ("<!DOCTYPE html><html><body>\n" + "\n".join(rows) + "\n</body></html>\n").encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = pages.get(self.path.split("?")[0])
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    index = f"http://127.0.0.1:{server.server_address[1]}/whl/bench"
    project = profile_variant(profile, scratch / "route", "route", "torch-index-url", toml_str(index))
    work = scratch / "route-uv"
    work.mkdir()
    reqs = [*profile.requirements, "triton"]
    (work / "pyproject.toml").write_text("\n".join([
        "[project]", 'name = "bench"', 'version = "0"', f"dependencies = [{', '.join(toml_str(r) for r in reqs)}]", "",
        "[tool.uv.sources]", 'torch = { index = "torch" }', 'triton = { index = "torch" }', "",
        "[[tool.uv.index]]", 'name = "torch"', f"url = {toml_str(index)}", "explicit = true", ""]))
    uv_cmd = [uv_bin(), "pip", "compile", "pyproject.toml", "--format", "pylock.toml", "-o", "pylock.toml", "--quiet",
              "--no-config", "--python-version", profile.python, "--python-platform", profile.uv_platform]
    floor = scratch / "route-floor"
    shutil.copytree(work, floor)
    tools = [
        Tool("envmgr lock (torch index)", [*envmgr_bin[:-2], "route", "--quiet"], project,
             [project / "locks" / "pylock.route.toml"], 600, env={"PYTHONPATH": str(REPO)} if in_place else None),
        Tool("uv pip compile (explicit index)", uv_cmd, work, [work / "pylock.toml"], 600),
        Tool("python -c 'run uv' (floor)",
             [python, "-c", "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)", *uv_cmd],
             floor, [floor / "pylock.toml"], 600),
    ]
    tools[0].env = {**tools[0].env, "ENVMGR_PROJECT": str(project)}
    return tools, server.shutdown


def two_platform(profile, scratch: Path, envmgr_bin: list[str], reps: int, in_place: bool) -> None:
    """The profile locked for two platforms at once (``platform = [...]``: one resolution per
    platform, concurrently, then merged) against ``uv pip compile`` run once per platform, one
    run after the other (what a user without envmgr runs for the same two answers)."""
    platforms = ("linux-x86_64", "linux-aarch64")
    listed = ", ".join(f'"{p}"' for p in platforms)
    project = profile_variant(profile, scratch / "two-platform", "two", "platform", f"[{listed}]")
    work = scratch / "two-platform-uv"
    work.mkdir()
    (work / "requirements.in").write_text("".join(f"{r}\n" for r in profile.requirements))
    runs = []
    for platform in platforms:
        tag = profiles.PLATFORMS[platform][0]
        runs.append(" ".join([shlex.quote(uv_bin()), "pip", "compile", "requirements.in", "--format", "pylock.toml",
                              "-o", f"pylock.{platform.split('-')[1]}.toml", "--python-version", profile.python,
                              "--python-platform", tag, "--quiet"]))
    tools = [
        Tool("envmgr lock (2 platforms)", [*envmgr_bin[:-2], "two", "--quiet"], project,
             [project / "locks" / "pylock.two.toml"], 600,
             env={"ENVMGR_PROJECT": str(project), **({"PYTHONPATH": str(REPO)} if in_place else {})}),
        Tool("uv pip compile x86_64; aarch64", ["sh", "-c", " && ".join(runs)], work,
             [work / f"pylock.{p.split('-')[1]}.toml" for p in platforms], 600),
    ]
    print(f"\ntwo platforms: {' and '.join(platforms)} in one lock, against one uv pip compile a platform", flush=True)
    measure(tools, reps, scratch)
    print_rows(tools)
    for mode in ("cold", "warm"):
        a, b, pair = tools[0].median(mode), tools[1].median(mode), paired(tools[0], tools[1], mode)
        if a is None or b is None or pair is None:
            print(f"ratio {tools[0].label} / {tools[1].label} ({mode}): n/a")
            continue
        print(f"ratio {tools[0].label} / {tools[1].label} ({mode}): {a / b:.2f}x (paired {pair:.2f}x)")


def report_paired(envmgr: Tool, uv: Tool, floor: Tool | None) -> bool:
    """Paired ratios to uv; envmgr's within 0.10 of the floor's warm and 0.25 cold (issue 12)."""
    ok = True
    for mode, margin in (("cold", 0.25), ("warm", 0.10)):
        ours = paired(envmgr, uv, mode)
        base = paired(floor, uv, mode) if floor else None
        if ours is None:
            print(f"paired ratio {envmgr.label} / {uv.label} ({mode}): n/a")
            ok = False
            continue
        line = f"paired ratio {envmgr.label} / {uv.label} ({mode}): {ours:.2f}x"
        if base is not None:
            good = ours - base <= margin
            ok &= good
            line += f"; floor {base:.2f}x; over the floor by {ours - base:+.2f} (target <= {margin:.2f}): {'ok' if good else 'NO'}"
        print(line)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pip-timeout", type=float, default=60.0, help="seconds pip-compile gets per run")
    ap.add_argument("--no-pip-compile", action="store_true", help="skip plain pip-compile")
    ap.add_argument("--no-pip-tools", action="store_true", help="skip envmgr --resolver pip-tools too")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the floor row: a bare python process that only runs the same uv command")
    ap.add_argument("--in-place", action="store_true",
                    help="run envmgr from this checkout with this python instead of a tool venv")
    ap.add_argument("--compare-src", type=Path, metavar="DIR",
                    help="also time the envmgr in DIR (a checkout of another commit), in the same run")
    ap.add_argument("--torch-index-route", action="store_true",
                    help="also time the route with the torch family from a separate explicit index")
    ap.add_argument("--only-torch-index-route", action="store_true", help="time only that route")
    ap.add_argument("--two-platform", action="store_true",
                    help="also time the profile locked for linux-x86_64 and linux-aarch64 at once against "
                         "uv pip compile run once a platform")
    args = ap.parse_args()

    profile = profiles.load(REPO, args.profile)
    scratch = Path(tempfile.mkdtemp(prefix="envmgr-bench-lock-"))
    project = scratch / "project"
    (project / "profiles").mkdir(parents=True)
    for f in profile.files:  # the profile and every file it extends
        shutil.copy2(f, project / "profiles" / f.name)
    work = scratch / "baseline"
    work.mkdir()
    (work / "requirements.in").write_text("".join(f"{r}\n" for r in profile.requirements))
    index_args: list[str] = []  # the same indexes for the baselines (pip-compile and uv take the same flags)
    if profile.index_url != profiles.PYPI:
        index_args += ["--index-url", profile.index_url]
    for url in profile.extra_index_urls:
        index_args += ["--extra-index-url", url]
    if not profile.torch_from_default:
        print(f"note: profile {profile.name} takes torch from {profile.torch_index}; the baselines get it as an "
              "extra index (they cannot route per package)", file=sys.stderr)
        index_args += ["--extra-index-url", profile.torch_index]

    lock_path = project / "locks" / f"pylock.{profile.name}.toml"
    python = sys.executable
    if args.in_place:
        envmgr_cmd = [python, "-m", "envmgr", "lock", profile.name, "--quiet"]
    else:
        python, envmgr_bin = install_tool(scratch / "tool", uv_bin(), clean_env())
        envmgr_cmd = [envmgr_bin, "lock", profile.name, "--quiet"]
    tools = [
        Tool("envmgr lock", envmgr_cmd, project, [lock_path], 600,
             env={"PYTHONPATH": str(REPO)} if args.in_place else None),
        Tool("uv pip compile", [uv_bin(), "pip", "compile", "requirements.in", "--format", "pylock.toml",
                                "-o", "pylock.toml", "--python-version", profile.python,
                                "--python-platform", profile.uv_platform, "--quiet", *index_args],
             work, [work / "pylock.toml"], 600),
    ]
    given = scratch / "given-python"
    shutil.copytree(work, given)
    tools.append(Tool("uv pip compile --python", [*tools[1].cmd, "--python", os.path.realpath(python)], given,
                      [given / "pylock.toml"], 600))
    if not args.no_floor:
        # What any Python front end pays: an interpreter that starts uv and waits for it.
        floor = scratch / "floor"
        shutil.copytree(work, floor)
        tools.append(Tool("python -c 'run uv' (floor)",
                          [python, "-c", "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)",
                           *tools[1].cmd], floor, [floor / "pylock.toml"], 600))
    if args.compare_src:
        src = args.compare_src.resolve()
        other = scratch / "project-compare"
        shutil.copytree(project, other)
        _, other_bin = install_tool(scratch / "tool-compare", uv_bin(), clean_env(), src)
        tools.append(Tool(f"envmgr lock @{src.name}", [other_bin, *envmgr_cmd[1:]], other,
                          [other / "locks" / f"pylock.{profile.name}.toml"], 600,
                          env={"ENVMGR_PROJECT": str(other)}))
    extra: list[Tool] = []
    host = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not args.no_pip_tools and profile.python == host:
        extra.append(Tool("envmgr lock --resolver pip-tools", [*envmgr_cmd, "--resolver", "pip-tools"], project,
                          [lock_path], 600))
    if not args.no_pip_compile and profile.python == host:
        pip_compile = shutil.which("pip-compile") or ""
        cmd = [pip_compile] if pip_compile else [sys.executable, "-m", "piptools", "compile"]
        extra.append(Tool("pip-compile", [*cmd, "requirements.in", "-o", "requirements.txt", "--quiet",
                                          "--no-header", "--no-annotate", *index_args],
                          work, [work / "requirements.txt"], args.pip_timeout))

    if args.only_torch_index_route:
        ok = torch_index_route(profile, scratch, python, envmgr_cmd, args.reps, args.in_place)
        shutil.rmtree(scratch, ignore_errors=True)
        return 0 if ok else 1

    print(f"bench/lock: profile {profile.name} ({', '.join(profile.requirements)}; python {profile.python}, "
          f"{profile.platform}); uv {uv_version()}; python {sys.version.split()[0]}; {args.reps} reps, "
          f"median (min-max); load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)

    warm = measure(tools, args.reps, scratch)

    floor_ok = report_paired(tools[0], tools[1], tools[3]) if not args.no_floor else True
    # sanity: same pins as uv, and a second lock leaves the lock byte-identical
    for out in tools[0].outputs + tools[1].outputs:
        out.unlink(missing_ok=True)
    tools[0].run("warm", warm[tools[0].label])
    tools[1].run("warm", warm[tools[1].label])
    sanity = []
    if lock_path.exists() and (work / "pylock.toml").exists():
        ours = {p["name"]: p["version"] for p in tomllib.loads(lock_path.read_text())["packages"]}
        theirs = {p["name"]: p["version"] for p in tomllib.loads((work / "pylock.toml").read_text())["packages"]}
        sanity.append(f"pins equal to uv's: {'yes' if ours == theirs else 'NO'} ({len(ours)} packages)")
        first = lock_path.read_bytes()
        env = base_env()
        env.update({"UV_CACHE_DIR": str(warm[tools[0].label]["uv"]),
                    "ENVMGR_CACHE_DIR": str(warm[tools[0].label]["envmgr"]), "ENVMGR_PROJECT": str(project)})
        subprocess.run(envmgr_cmd, cwd=project, env=env, capture_output=True, check=False)
        sanity.append(f"second lock byte-identical: {'yes' if lock_path.read_bytes() == first else 'NO'}")

    for tool in extra:  # slow ones last, fewer reps: pip-compile may not finish at all
        reps = 1 if tool.label == "pip-compile" else max(1, args.reps // 2)
        for _ in range(reps):
            tool.run("cold", fresh_caches(scratch, "cold"))
        caches = fresh_caches(scratch, "warm")
        if tool.run("warm", caches) is not None:
            tool.times["warm"].clear()
            for _ in range(reps):
                tool.run("warm", caches)

    print_rows(tools + extra)
    ok = floor_ok
    for mode in ("cold", "warm"):
        a, b = tools[0].median(mode), tools[1].median(mode)
        if a is None or b is None:
            print(f"ratio envmgr lock / uv pip compile ({mode}): n/a")
            ok = False
            continue
        ratio = a / b
        ok &= ratio <= TARGET
        print(f"ratio envmgr lock / uv pip compile ({mode}): {ratio:.2f}x  (target <= {TARGET}x)")
    for mode in ("cold", "warm"):
        a, b = tools[0].median(mode), tools[2].median(mode)
        if a is not None and b is not None:
            print(f"ratio envmgr lock / uv pip compile --python ({mode}): {a / b:.2f}x  (envmgr's own overhead)")
    for tool in tools[3:]:
        for mode in ("cold", "warm"):
            a, b = tool.median(mode), tools[1].median(mode)
            if a is not None and b is not None:
                print(f"ratio {tool.label} / uv pip compile ({mode}): {a / b:.2f}x")
    if len(extra) == 2:
        for mode in ("cold", "warm"):
            a, b = extra[0].median(mode), extra[1].median(mode)
            if a is not None and b is not None:
                print(f"ratio envmgr lock --resolver pip-tools / pip-compile ({mode}): {a / b:.2f}x")
            elif a is not None:
                print(f"ratio envmgr lock --resolver pip-tools / pip-compile ({mode}): "
                      f"pip-compile {extra[1].failed.get(mode, 'n/a')}")
    for line in sanity:
        print(line)
    if args.torch_index_route:
        ok &= torch_index_route(profile, scratch, python, envmgr_cmd, args.reps, args.in_place)
    if args.two_platform:
        two_platform(profile, scratch, envmgr_cmd, args.reps, args.in_place)
    if args.keep:
        print(f"scratch kept: {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
