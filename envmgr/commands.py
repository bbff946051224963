"""Every command's parameters, declared once as data, and the bodies of the hot commands.

``lock`` and ``sync`` are the commands bots and users run most, and their cost is the
point of their benchmarks: importing typer (~30 ms) and its pydantic-backed parsing
(~70 ms) would be a fifth of a warm lock and most of a no-op sync. So their parameters
live here as plain data: ``entry`` parses a command line with them directly, and ``cli``
builds the typer declarations (``--help``, completion, anything the plain parser declines)
from the same tables. Adding an option is one ``Param`` line and one body argument.
"""

from __future__ import annotations

from pathlib import Path

from .core.console import DownloadBar, err, line_log, out, print_json
from .core.settings import find_project


class Param:
    """One parameter of a command. ``flags`` empty: the positional argument.

    A plain class, not a dataclass: importing dataclasses costs ~10 ms, half a no-op sync.
    """

    __slots__ = ("name", "kind", "flags", "help", "default", "required")

    def __init__(self, name: str, kind: str, flags: tuple[str, ...] = (), help: str = "", default: object = None,
                 required: bool = False):
        self.name = name  # the Python parameter
        self.kind = kind  # bool, int, str, path, strs (repeatable), paths (repeatable)
        self.flags = flags
        self.help = help
        self.default = default
        self.required = required  # a positional that must be given

    @property
    def many(self) -> bool:
        return self.kind in ("strs", "paths")

    def initial(self):
        return [] if self.many else self.default


def parse(params: tuple[Param, ...], tokens: list[str]) -> dict | None:
    """The arguments ``tokens`` give ``params``, or None where typer must decide."""
    options = {flag: p for p in params for flag in p.flags}
    positional = next((p for p in params if not p.flags), None)
    args = {p.name: p.initial() for p in params}
    seen = False
    rest = iter(tokens)
    for token in rest:
        p = options.get(token)
        if p is not None:
            if p.kind == "bool":
                args[p.name] = True
                continue
            value = next(rest, None)
            if value is None or value.startswith("-"):
                return None
            if p.kind == "int":
                if not value.isdigit():
                    return None
                converted: object = int(value)
            else:
                converted = Path(value) if p.kind in ("path", "paths") else value
            if p.many:
                args[p.name].append(converted)
            else:
                args[p.name] = converted
        elif token.startswith("-") or positional is None or (seen and not positional.many):
            return None
        elif positional.many:
            args[positional.name].append(token)
        else:
            args[positional.name], seen = token, True
    return args


# -- lock ---------------------------------------------------------------------------------

LOCK = (
    Param("names", "strs", help="Profiles to lock (default: the default profile)."),
    Param("all_", "bool", ("--all",), "Lock every profile.", False),
    Param("resolver", "str", ("--resolver",), "uv (default) or pip-tools. Env: ENVMGR_RESOLVER."),
    Param("check", "bool", ("--check",), "Exit 1 if a lock is stale against its profile; no network.", False),
    Param("upgrade", "bool", ("--upgrade", "-U"), "Ignore the existing pins.", False),
    Param("upgrade_package", "strs", ("--upgrade-package", "-P"), "Allow upgrading NAME (repeatable)."),
    Param("verify", "bool", ("--verify",), "Download every locked file and check its published hash before writing.", False),
    Param("jobs", "int", ("--jobs", "-j"), "Profiles locked at once.", 4),
    Param("quiet", "bool", ("--quiet", "-q"), "Print nothing but errors.", False),
    Param("as_json", "bool", ("--json",), "Machine-readable summary.", False),
)


def lock(names, all_, resolver, check, upgrade, upgrade_package, verify, jobs, quiet, as_json) -> int:
    from .lock import early

    project = find_project()
    if not (all_ or check or resolver or upgrade or upgrade_package or verify) and len(names) <= 1:
        early.start(project, names[0] if names else "default")  # uv from the last lock's recipe, if it holds
    try:
        return _lock(project, names, all_, resolver, check, upgrade, upgrade_package, verify, jobs, quiet, as_json)
    finally:
        early.discard()  # an early uv the lock did not take


def _lock(project, names, all_, resolver, check, upgrade, upgrade_package, verify, jobs, quiet, as_json) -> int:
    from .lock import locker
    from .model import profiles

    selected = profiles.list_profiles(project) if all_ or (check and not names) else (names or ["default"])
    if check:
        results = locker.check(project, selected)
        if as_json:
            print_json([r.to_json() for r in results])
        else:
            for r in results:
                (out if r.fresh else err).line(r.describe())
        return 1 if any(not r.fresh for r in results) else 0
    results = locker.lock_profiles(
        project, selected, resolver=resolver, upgrade=upgrade, upgrade_packages=upgrade_package or [], verify=verify,
        jobs=jobs, log=line_log(not (quiet or as_json)),
    )
    if as_json:
        print_json([r.to_json() for r in results])
    elif not quiet:
        for r in results:
            out.line(r.describe())
    return 0


# -- sync ---------------------------------------------------------------------------------

# The options sync shares with run (cli declares run from these too); the bodies get them as
# one sync.options.SyncOptions, whose slots are these names.
SYNC_SHARED = (
    Param("venv", "path", ("--venv",), "Venv path (default: PROJECT/.envmgr/venvs/NAME). Env: ENVMGR_VENV_DIR sets the folder."),
    Param("python", "str", ("--python",), "Interpreter for the venv; must be the lock's python version (default: found by uv)."),
    Param("locked", "bool", ("--locked",), "Fail (exit 1) if the lock is stale instead of re-locking.", False),
    Param("frozen", "bool", ("--frozen",), "Use the lock as it is; do not check it against the profile.", False),
    Param("offline", "bool", ("--offline",), "No network: files from the cache or --find-links only.", False),
    Param("find_links", "paths", ("--find-links",), "Folder of wheels to take before downloading (repeatable); hashes still checked."),
    Param("bundle", "path", ("--bundle",), "Take the files from this bundle (`envmgr bundle`'s folder or tar); implies --offline; hashes still checked."),
    Param("skip_driver_check", "bool", ("--skip-driver-check",), "Install a CUDA variant even if the driver is too old.", False),
)

SYNC = (
    Param("name", "str", help="Profile to sync (default: the default profile)."),
    *SYNC_SHARED,
    Param("check", "bool", ("--check",), "Report how the venv differs from the lock (exit 1); change nothing.", False),
    Param("quiet", "bool", ("--quiet", "-q"), "Print nothing but errors.", False),
    Param("as_json", "bool", ("--json",), "Machine-readable summary.", False),
)


def sync(name, check, quiet, as_json, **options) -> int:
    """``options``: SYNC_SHARED's, handed on as one SyncOptions."""
    from .core import settings
    from .sync import syncer as syncing

    project, name = find_project(), name or "default"
    opts = _options(options, project, name)
    if check:
        from .sync import drift

        report = drift.check(project, name, opts)
        if as_json:
            print_json(report.to_json())
        elif not quiet or not report.exact:
            (out if report.exact else err).print(report.describe(), markup=False, highlight=False)
        return 0 if report.exact else 1
    show = not quiet and not as_json
    result = syncing.sync(project, name, opts, reporter=DownloadBar() if show and settings.progress_enabled() else None,
                          log=line_log(show))
    if as_json:
        print_json(result.to_json())
    elif not quiet:
        out.print(result.describe(), markup=False, highlight=False)
    return 0


# -- run ----------------------------------------------------------------------------------

RUN = (
    Param("name", "str", help="Profile whose venv runs the command.", required=True),
    Param("cmd", "strs", help="The command and its arguments, after --."),
    *SYNC_SHARED,
    Param("quiet", "bool", ("--quiet", "-q"), "Say nothing about the sync.", False),
)


def run(name, cmd, quiet, **options) -> int:
    """``options``: SYNC_SHARED's, handed on as one SyncOptions."""
    from .sync import run as running

    project = find_project()
    running.run(project, name, cmd or [], _options(options, project, name), log=line_log(not quiet))
    return 0


def _options(options: dict, project: Path, name: str):
    """SYNC_SHARED's values as one SyncOptions; a ``--bundle`` that is not one, or not for the
    lock's python and platform and this machine's, fails here, before anything else."""
    from .sync.options import SyncOptions

    opts = SyncOptions(**options)
    if opts.bundle is not None:
        from .core.settings import lock_path
        from .model import lockfile
        from .sync.preflight import check_bundle, opened

        opened(opts.bundle)
        if lock_path(project, name).is_file():
            check_bundle(lockfile.read(lock_path(project, name)), opts)
    return opts
