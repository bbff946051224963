"""The command line: parses arguments, calls one stage, renders the result.

No logic lives here. Every EnvmgrError is caught once, in ``main``, and printed as one
line (exit 2 for bad input, 1 for a failed check or stale lock); no traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__
from .errors import EnvmgrError

app = typer.Typer(
    name="envmgr",
    help="Reproducible PyTorch/CUDA environments: profiles -> hashed PEP 751 locks -> venvs and OCI images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _Console:
    """A rich Console made on first use: importing rich costs a fast command ~20 ms."""

    def __init__(self, **kwargs) -> None:
        self._kwargs, self._console = kwargs, None

    def __getattr__(self, name: str):
        if self._console is None:
            from rich.console import Console

            self._console = Console(soft_wrap=True, **self._kwargs)
        return getattr(self._console, name)


out = _Console()
err = _Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"envmgr {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Exit codes: 0 ok; 1 a check failed or a lock is stale; 2 usage or input error."""


def _project() -> Path:
    from .settings import find_project

    return find_project()


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


# --- variants ----------------------------------------------------------------------------

@app.command()
def variants(
    torch: Optional[str] = typer.Option(None, "--torch", help="Only releases this version/specifier admits (2.7, >=2.8)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show the variant knowledge base: variants, CUDA, driver minimums, GPU archs."""
    from . import report

    data = report.variants_table(torch)
    if as_json:
        _print_json(data)
    else:
        report.render_variants(out, data)


# --- lock --------------------------------------------------------------------------------

@app.command()
def lock(
    names: List[str] = typer.Argument(None, help="Profiles to lock (default: the default profile)."),
    all_: bool = typer.Option(False, "--all", help="Lock every profile."),
    resolver: Optional[str] = typer.Option(None, "--resolver", help="uv (default) or pip-tools. Env: ENVMGR_RESOLVER."),
    check: bool = typer.Option(False, "--check", help="Exit 1 if a lock is stale against its profile; no network."),
    upgrade: bool = typer.Option(False, "--upgrade", "-U", help="Ignore the existing pins."),
    upgrade_package: List[str] = typer.Option(None, "--upgrade-package", "-P", help="Allow upgrading NAME (repeatable)."),
    verify: bool = typer.Option(False, "--verify", help="Download every locked file and check its published hash before writing."),
    jobs: int = typer.Option(4, "--jobs", "-j", help="Profiles locked at once."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Resolve profiles into hashed PEP 751 locks (locks/pylock.NAME.toml)."""
    _lock(names, all_, resolver, check, upgrade, upgrade_package, verify, jobs, quiet, as_json)


def _lock(names, all_, resolver, check, upgrade, upgrade_package, verify, jobs, quiet, as_json) -> None:
    from . import locker, profiles

    project = _project()
    selected = profiles.list_profiles(project) if all_ or (check and not names) else (names or ["default"])
    if check:
        results = locker.check(project, selected)
        if as_json:
            _print_json([r.to_json() for r in results])
        else:
            for r in results:
                (out if r.fresh else err).print(r.describe())
        if any(not r.fresh for r in results):
            raise typer.Exit(1)
        return
    results = locker.lock_profiles(
        project, selected, resolver=resolver, upgrade=upgrade, upgrade_packages=upgrade_package or [], verify=verify, jobs=jobs,
        log=None if quiet or as_json else err.print,
    )
    if as_json:
        _print_json([r.to_json() for r in results])
    elif not quiet:
        for r in results:
            out.print(r.describe())


def _fast_args(declaration, tokens: list[str]) -> dict | None:
    """A command's arguments read straight from its typer declaration, without typer.

    typer validates each option through pydantic, which costs ~70 ms before any work: a
    tenth of a warm ``lock`` and most of a no-op ``sync``. The options are taken from the
    command's signature (the one place they are declared); anything this does not read
    exactly (--help, --opt=value, -qU, an unknown option, a bad number, an extra
    argument) returns None and goes through typer as usual. Both paths run the same body.
    """
    import inspect

    options: dict[str, tuple[str, str]] = {}  # flag -> (parameter, annotation)
    args: dict = {}
    positional, many, seen = "", False, False
    for pname, param in inspect.signature(declaration).parameters.items():
        info, kind = param.default, str(param.annotation)
        if isinstance(info, typer.models.OptionInfo):
            options.update((decl, (pname, kind)) for decl in info.param_decls)
            args[pname] = [] if kind.startswith("List") else info.default
        else:
            positional, many = pname, kind.startswith("List")
            args[pname] = [] if many else info.default
    rest = iter(tokens)
    for token in rest:
        if token in options:
            pname, kind = options[token]
            if kind == "bool":
                args[pname] = True
                continue
            value = next(rest, None)
            if value is None or value.startswith("-"):
                return None
            if kind == "int":
                if not value.isdigit():
                    return None
                converted = int(value)
            else:
                converted = Path(value) if "Path" in kind else value
            if kind.startswith("List"):
                args[pname].append(converted)
            else:
                args[pname] = converted
        elif token.startswith("-") or not positional or (seen and not many):
            return None
        elif many:
            args[positional].append(token)
        else:
            args[positional], seen = token, True
    return args


# --- sync commands -----------------------------------------------------------------------

class _DownloadBar:
    """fetch's Reporter as a rich progress bar on stderr, drawn only once a download starts."""

    def __init__(self) -> None:
        self._progress = None

    def start(self, total: int, label: str) -> None:
        if not err.is_terminal:
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self._progress = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                  console=err, transient=True)
        self._progress.start()
        self._task = self._progress.add_task(label, total=total)

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _sync_log(show: bool):
    return (lambda line: err.print(line, markup=False, highlight=False)) if show else None


# Options sync and run share (one declaration each).
_VENV = typer.Option(None, "--venv", help="Venv path (default: PROJECT/.envmgr/venvs/NAME). Env: ENVMGR_VENV_DIR sets the folder.")
_PYTHON = typer.Option(None, "--python", help="Interpreter for the venv; must be the lock's python version (default: found by uv).")
_LOCKED = typer.Option(False, "--locked", help="Fail (exit 1) if the lock is stale instead of re-locking.")
_FROZEN = typer.Option(False, "--frozen", help="Use the lock as it is; do not check it against the profile.")
_OFFLINE = typer.Option(False, "--offline", help="No network: files from the cache or --find-links only.")
_FIND_LINKS = typer.Option(None, "--find-links", help="Folder of wheels to take before downloading (repeatable); hashes still checked.")
_SKIP_DRIVER = typer.Option(False, "--skip-driver-check", help="Install a CUDA variant even if the driver is too old.")


@app.command()
def sync(
    name: Optional[str] = typer.Argument(None, help="Profile to sync (default: the default profile)."),
    venv: Optional[Path] = _VENV,
    python: Optional[str] = _PYTHON,
    locked: bool = _LOCKED,
    frozen: bool = _FROZEN,
    offline: bool = _OFFLINE,
    find_links: List[Path] = _FIND_LINKS,
    skip_driver_check: bool = _SKIP_DRIVER,
    check: bool = typer.Option(False, "--check", help="Report how the venv differs from the lock (exit 1); change nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Make the profile's venv exactly its lock: hash-verified, extras removed, instant when nothing changed."""
    _sync(name, venv, python, locked, frozen, offline, find_links, skip_driver_check, check, quiet, as_json)


def _sync(name, venv, python, locked, frozen, offline, find_links, skip_driver_check, check, quiet, as_json) -> None:
    from . import settings, sync as syncing

    project, name = _project(), name or "default"
    if check:
        report = syncing.check(project, name, venv=venv, python=python, frozen=frozen)
        if as_json:
            _print_json(report.to_json())
        elif not quiet or not report.exact:
            (out if report.exact else err).print(report.describe(), markup=False, highlight=False)
        if not report.exact:
            raise typer.Exit(1)
        return
    show = not quiet and not as_json
    result = syncing.sync(project, name, venv=venv, python=python, locked=locked, frozen=frozen, offline=offline,
                          find_links=find_links or [], skip_driver_check=skip_driver_check,
                          reporter=_DownloadBar() if show and settings.progress_enabled() else None,
                          log=_sync_log(show))
    if as_json:
        _print_json(result.to_json())
    elif not quiet:
        out.print(result.describe(), markup=False, highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    name: str = typer.Argument(..., help="Profile whose venv runs the command."),
    cmd: List[str] = typer.Argument(None, help="The command and its arguments, after --."),
    venv: Optional[Path] = _VENV,
    python: Optional[str] = _PYTHON,
    locked: bool = _LOCKED,
    frozen: bool = _FROZEN,
    offline: bool = _OFFLINE,
    find_links: List[Path] = _FIND_LINKS,
    skip_driver_check: bool = _SKIP_DRIVER,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Say nothing about the sync."),
) -> None:
    """Run a command inside the profile's venv, syncing it first when needed (like `uv run`)."""
    from . import sync as syncing

    syncing.run(_project(), name, cmd or [], venv=venv, python=python, locked=locked, frozen=frozen,
                offline=offline, find_links=find_links or [], skip_driver_check=skip_driver_check,
                log=_sync_log(not quiet))

# --- image commands ----------------------------------------------------------------------

@app.command("export-image")
def export_image(
    name: Optional[str] = typer.Argument(None, help="Profile whose lock becomes the image (default: default)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base image: HOST/NAME:TAG, oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE (default: [image] base)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write an OCI layout DIR, or FILE.tar (docker load and OCI tools read it)."),
    push: Optional[str] = typer.Option(None, "--push", help="Push to HOST/NAME:TAG (skips blobs the registry has)."),
    load: bool = typer.Option(False, "--load", help="Load into the local engine through the docker SDK (honours DOCKER_HOST)."),
    tag: Optional[str] = typer.Option(None, "--tag", "-t", help="Image name:tag (default: from profile and lock digest)."),
    builder: str = typer.Option("native", "--builder", help="native (default, no daemon), docker or podman (Containerfile.in through the docker SDK)."),
    layer_threshold: int = typer.Option(1 << 20, "--layer-threshold", help="Wheel bytes from which a package gets its own layer."),
    no_compile: bool = typer.Option(False, "--no-compile", help="Do not byte-compile the venv."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Layers compressed at once (default: one per CPU)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary (digest, layers with sizes, seconds)."),
) -> None:
    """Build a reproducible, layered OCI image from the lock and a base image, without a daemon."""
    from . import settings
    from .oci import export as exporting

    show = not quiet and not as_json
    opts = exporting.Options(name=name or "default", base=base, output=output, push=push, load=load, tag=tag,
                             threshold=layer_threshold, jobs=jobs, compile=not no_compile)
    reporter = _DownloadBar() if show and err.is_terminal and settings.progress_enabled() else None
    if builder == "native":
        result = exporting.export(_project(), opts, reporter=reporter, log=_sync_log(show))
    elif builder in ("docker", "podman"):
        from .oci import build as building

        result = building.build(_project(), opts, engine=builder, log=_sync_log(show))
    else:
        raise typer.BadParameter("--builder must be native, docker or podman")
    if as_json:
        _print_json(result.to_json())
    elif not quiet:
        for note in result.notes:
            err.print(f"note: {note}", markup=False, highlight=False)
        out.print(f"{result.tag} {result.digest}", markup=False, highlight=False)
        for where, what in result.outputs.items():
            if where != "config":
                out.print(f"  {where}: {what}", markup=False, highlight=False)


@app.command("base")
def base_image(
    suite: str = typer.Argument("bookworm", help="Debian suite (bookworm)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="OCI layout directory to write (default: PROJECT/.envmgr/bases/SUITE)."),
    mirror: Optional[str] = typer.Option(None, "--mirror", help="Debian mirror URL (default: mmdebstrap's)."),
) -> None:
    """Build a Debian + python3 base image with mmdebstrap into an OCI layout (no registry needed)."""
    from . import settings
    from .oci import debian

    output = output or _project() / ".envmgr" / "bases" / suite
    dest = debian.build_base(suite, output, cache=settings.cache_dir(), mirror=mirror, log=_sync_log(True))
    out.print(f"oci:{dest}", markup=False, highlight=False)

# --- report commands (diff, export) ------------------------------------------------------

def _emit_text(text: str, output: Optional[Path]) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        from .lockfile import write_atomic

        write_atomic(output, text)
        err.print(f"wrote {output}", highlight=False)


@app.command("diff")
def diff_cmd(
    names: List[str] = typer.Argument(None, help="Profiles to compare (default: every profile with a lock at the base or now)."),
    base: str = typer.Option("HEAD", "--base", help="Old locks: a git ref (default HEAD) or a directory (DIR/locks/ or DIR)."),
    fmt: str = typer.Option("markdown", "--format", "-f", help="markdown (a PR body) or json."),
    as_json: bool = typer.Option(False, "--json", help="Same as --format json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout."),
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 1 when any lock changed (0: nothing changed)."),
    max_chars: str = typer.Option("65000", "--max-chars", metavar="N", help="Keep the markdown under N characters (GitHub's PR body limit is 65,536): the largest package lists go first. 0: no limit."),
) -> None:
    """What changed in the locks since BASE: torch/CUDA/cuDNN/NCCL first, GPU archs, driver, size."""
    from . import diff as lockdiff, diffreport

    fmt = "json" if as_json else fmt
    diffreport.check_format(fmt)
    limit = diffreport.parse_max_chars(max_chars)
    diffs = lockdiff.diff_project(_project(), names or None, base)
    _emit_text(diffreport.render(diffs, fmt, base, limit), output)
    if exit_code and any(d.changed for d in diffs):
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    name: str = typer.Argument("default", help="Profile whose lock to export."),
    fmt: str = typer.Option("requirements", "--format", "-f", help="requirements, cyclonedx or pylock."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout."),
    lock_file: Optional[Path] = typer.Option(None, "--lock", help="Export this lock file instead of the profile's."),
) -> None:
    """Export a lock: pip requirements with index lines and hashes, a CycloneDX SBOM, or PEP 751."""
    from . import export, lockfile

    export.check_format(fmt, output)
    lock = lockfile.read(lock_file or lockfile.lock_path(_project(), name))
    _emit_text(export.render(lock, fmt), output)

# --- gpu commands (check, doctor, init) --------------------------------------------------

@app.command("check")
def check_cmd(
    name: Optional[str] = typer.Argument(None, help="Profile whose venv to check, and whose lock to compare with (default: default)."),
    python: Optional[str] = typer.Option(None, "--python", help="Check this interpreter (a path, a name on PATH, or a venv dir) instead of the profile's venv."),
    image: Optional[str] = typer.Option(None, "--image", help="Check inside this image: a reference, oci:DIR[:TAG], oci-archive:FILE. Without NAME, expectations come from the lock the image carries."),
    image_python: Optional[str] = typer.Option(None, "--image-python", help="The interpreter inside the image (default: VENV/bin/python for the profile's image venv, else /opt/venv/bin/python)."),
    engine: str = typer.Option("auto", "--engine", help="Container engine for --image: auto, podman (CDI GPUs) or docker (SDK, --gpus all)."),
    require_gpu: bool = typer.Option(False, "--require-gpu", help="Fail (exit 1) when no GPU is usable instead of skipping the GPU checks."),
    world: int = typer.Option(1, "--world", help="Also run an N-GPU all-reduce with N torchrun-style worker processes."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds before the probe counts as hung."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report (schema envmgr-check/1)."),
) -> None:
    """Prove the environment computes on this GPU: torch, CUDA, driver, archs, real kernels, NCCL."""
    from .errors import CheckFailed
    from .gpu import check as gpu_check, render

    report = gpu_check.check(_project(), name=name, python=python, image=image, image_python=image_python,
                             engine=engine, require_gpu=require_gpu, world=world, timeout=timeout)
    if as_json:
        _print_json(report)
    else:
        render.render_check(out, report)
    if not report["ok"]:
        raise CheckFailed(f"{report['summary']['fail']} check(s) failed: {', '.join(gpu_check.failed(report))}")


@app.command("doctor")
def doctor_cmd(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report (schema envmgr-doctor/1)."),
) -> None:
    """The driver, the CUDA it supports and the GPUs here; which profile and variant can run, and why not.

    Env: ENVMGR_DRIVER_VERSION pretends the driver is that version."""
    from .gpu import doctor, render

    data = doctor.report(_project())
    if as_json:
        _print_json(data)
    else:
        render.render_doctor(out, data)


@app.command("init")
def init_cmd(
    name: str = typer.Argument("default", help="Profile to write: profiles/NAME.toml."),
    variant: str = typer.Option("auto", "--variant", help="auto (what envmgr doctor recommends here), cpu or cuNNN."),
    torch: Optional[str] = typer.Option(None, "--torch", help="torch version or specifier (default: the newest release with the variant)."),
    python: Optional[str] = typer.Option(None, "--python", help="Target python MAJOR.MINOR (default: this one, if the release supports it)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing profile."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Write a profile for this machine's variant (or the one named)."""
    from .gpu import doctor

    result = doctor.init_profile(_project(), name, variant=variant, torch=torch, python=python, force=force)
    if as_json:
        _print_json(result.to_json())
    else:
        out.print(f"wrote {result.path}: {result.variant}, torch {result.torch}, python {result.python} ({result.reason})",
                  highlight=False, markup=False)
        out.print(f"next: envmgr lock {result.name} && envmgr sync {result.name} && envmgr check {result.name}",
                  highlight=False, markup=False)



def main() -> None:
    try:
        argv = sys.argv[1:]
        fast = {"lock": (lock, _lock), "sync": (sync, _sync)}.get(argv[0] if argv else "")
        parsed = _fast_args(fast[0], argv[1:]) if fast else None
        rc = fast[1](**parsed) if parsed is not None else app(standalone_mode=False)
    except EnvmgrError as exc:
        from rich.text import Text

        err.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False)
        if exc.detail:
            err.print(exc.detail, highlight=False, markup=False)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        # click's usage errors (typer vendors click, so match by shape, not by class)
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
