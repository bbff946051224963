"""The command line (typer): parses arguments, calls one stage, renders the result.

No logic lives here. Every EnvmgrError is caught once, in ``main``, and printed as one
line (exit 2 for bad input, 1 for a failed check or stale lock); no traceback. The
console script enters through ``entry``, which runs ``lock`` and ``sync`` without loading
typer and hands every other command line to ``main`` here; those two and ``run`` are
declared from ``commands``' tables, so the fast path and typer cannot drift apart.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import List, Optional  # noqa: F401 - the generated commands' annotations name them

import typer

from . import __version__, commands
from .core.console import DownloadBar, err, line_log, out, print_error, print_json
from .core.errors import EnvmgrError
from .core.settings import find_project

app = typer.Typer(
    name="envmgr",
    help="Reproducible PyTorch/CUDA environments: profiles -> hashed PEP 751 locks -> venvs and OCI images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        out.print(f"envmgr {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Exit codes: 0 ok; 1 a check failed or a lock is stale; 2 usage or input error."""


# --- variants ----------------------------------------------------------------------------

@app.command()
def variants(
    torch: Optional[str] = typer.Option(None, "--torch", help="Only releases this version/specifier admits (2.7, >=2.8)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    refresh: bool = typer.Option(False, "--refresh", help="Learn torch releases newer than the table from the indexes' wheels; write an overlay."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="With --refresh: the overlay to write (default: the user cache's; a project's variants.toml is read too)."),
    index_url: str = typer.Option("pypi", "--index-url", help="With --refresh: the index whose torch releases to read (default: pypi)."),
    torch_index: Optional[str] = typer.Option(None, "--torch-index", help="With --refresh: the PyTorch index, with {variant} (default: the table's)."),
) -> None:
    """Show the variant knowledge base: variants, CUDA, driver minimums, GPU archs (inferred facts marked)."""
    from .report import knowledge as report

    if refresh:
        from .lock import refresh as learning
        from .model import variants as kbase

        learned = learning.refresh(output, index_url, torch_index)
        kbase.kb.cache_clear()
        if not torch:
            if as_json:
                print_json(learned.to_json())
            else:
                out.print(learned.describe(), markup=False, highlight=False)
                for note in learned.notes:
                    err.print(f"note: {note}", markup=False, highlight=False)
            return
    elif output is not None:
        from .core.errors import UserError

        raise UserError("--output needs --refresh")
    data = report.variants_table(torch)
    if as_json:
        print_json(data)
    else:
        report.render_variants(out, data)


# --- lock, sync, run: declared from ``commands``' tables -----------------------------------

_ANNOTATION = {"bool": "bool", "int": "int", "str": "Optional[str]", "path": "Optional[Path]",
               "strs": "List[str]", "paths": "List[Path]"}


def _declare(name: str, params, body, doc: str, **settings) -> None:
    """A typer command named ``name`` whose parameters are ``params`` (one ``commands.Param``
    each) and whose body is ``body(**arguments)``, returning the exit code."""

    def command(**arguments) -> None:
        raise typer.Exit(body(**arguments) or 0)

    declared = []
    for p in params:
        if not p.flags:
            info = typer.Argument(... if p.required else None, help=p.help)
        else:
            info = typer.Option(None if p.many else p.default, *p.flags, help=p.help)
        declared.append(inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=info,
                                          annotation=_ANNOTATION[p.kind]))
    command.__signature__ = inspect.Signature(declared)
    command.__annotations__ = {p.name: _ANNOTATION[p.kind] for p in params}
    command.__name__ = command.__qualname__ = name.replace("-", "_")
    command.__doc__ = doc
    app.command(name, **settings)(command)
    globals()[command.__name__] = command


_declare("lock", commands.LOCK, commands.lock, "Resolve profiles into hashed PEP 751 locks (locks/pylock.NAME.toml).")
_declare("sync", commands.SYNC, commands.sync,
         "Make the profile's venv exactly its lock: hash-verified, extras removed, instant when nothing changed.")
_declare("run", commands.RUN, commands.run,
         "Run a command inside the profile's venv, syncing it first when needed (like `uv run`).",
         context_settings={"allow_extra_args": True, "ignore_unknown_options": True})

# --- image commands ----------------------------------------------------------------------

@app.command("export-image")
def export_image(
    name: Optional[str] = typer.Argument(None, help="Profile whose lock becomes the image (default: default)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base image: HOST/NAME:TAG, oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE (default: [image] base)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Take the lock's files (and, made --with-base, the base) from this bundle: no network."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write an OCI layout DIR, or FILE.tar (docker load and OCI tools read it)."),
    push: Optional[str] = typer.Option(None, "--push", help="Push to HOST/NAME:TAG (skips blobs the registry has)."),
    load: bool = typer.Option(False, "--load", help="Load into the local engine through the docker SDK (honours DOCKER_HOST)."),
    tag: Optional[str] = typer.Option(None, "--tag", "-t", help="Image name:tag (default: from profile and lock digest)."),
    builder: str = typer.Option("native", "--builder", help="native (default, no daemon), docker or podman (Containerfile.in through the docker SDK)."),
    layer_threshold: int = typer.Option(1 << 20, "--layer-threshold", help="Wheel bytes from which a package gets its own layer."),
    no_compile: bool = typer.Option(False, "--no-compile", help="Do not byte-compile the venv."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Layers compressed at once (default: one per CPU)."),
    platform: List[str] = typer.Option(None, "--platform", help="With a lock for several platforms: only these (linux/amd64,linux/arm64 or linux-x86_64; repeat or comma-separate; default: all)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary (digest, layers with sizes, seconds)."),
) -> None:
    """Build a reproducible, layered OCI image from the lock and a base image, without a daemon
    (an OCI image index, one image a platform, for a lock of several platforms)."""
    from .core import settings
    from .oci import export as exporting

    if bundle is not None:  # the lock's files, hash-checked, and the bundled base: no network
        from .bundle import image as bundled

        base = bundled.prepare(find_project(), name or "default", bundle, base)
    show = not quiet and not as_json
    opts = exporting.Options(name=name or "default", base=base, output=output, push=push, load=load, tag=tag,
                             threshold=layer_threshold, jobs=jobs, compile=not no_compile, platforms=tuple(platform or ()))
    reporter = DownloadBar() if show and err.is_terminal and settings.progress_enabled() else None
    if builder == "native":
        result = exporting.export(find_project(), opts, reporter=reporter, log=line_log(show))
    elif builder in ("docker", "podman"):
        from .oci import build as building

        result = building.build(find_project(), opts, engine=builder, log=line_log(show))
    else:
        raise typer.BadParameter("--builder must be native, docker or podman")
    if as_json:
        print_json(result.to_json())
    elif not quiet:
        for note in result.notes:
            err.print(f"note: {note}", markup=False, highlight=False)
        out.print(f"{result.tag} {result.digest}", markup=False, highlight=False)
        for also in result.tags[1:]:
            out.print(f"  tag: {also}", markup=False, highlight=False)
        for m in result.manifests:
            out.print(f"  {m['platform']}: {m['digest']}", markup=False, highlight=False)
        if result.manifests:
            out.print(f"  shared layers: {result.shared_layers}", markup=False, highlight=False)
        for where, what in result.outputs.items():
            if where != "config":
                out.print(f"  {where}: {what}", markup=False, highlight=False)


@app.command("bundle")
def bundle_cmd(
    names: List[str] = typer.Argument(None, help="Profiles to bundle (default: default); their locks must be fresh."),
    output: Path = typer.Option(..., "--output", "-o", help="FILE.tar (a reproducible tar) or a new folder."),
    with_base: bool = typer.Option(False, "--with-base", help="Carry the profiles' [image] base too, for export-image --bundle."),
    base: Optional[str] = typer.Option(None, "--base", help="With --with-base: this base instead of the profiles'."),
    tool_wheels: Optional[Path] = typer.Option(None, "--tool-wheels", help="Folder holding envmgr's wheel and its dependencies' (default: build and download them)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Profiles, locks, every file they name, envmgr's own wheels and bootstrap.sh: sync with no network."""
    from .bundle import make

    show = not quiet and not as_json
    result = make.make(find_project(), list(names or []), output, with_base=with_base, base=base, tool_wheels=tool_wheels,
                       reporter=DownloadBar() if show and err.is_terminal else None, log=line_log(show))
    if as_json:
        print_json(result.to_json())
    elif not quiet:
        out.print(result.describe(), markup=False, highlight=False)


@app.command("serve")
def serve_cmd(
    cache: bool = typer.Option(False, "--cache", help="Serve envmgr's file cache (the default)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Serve this bundle folder's files instead."),
    bind: str = typer.Option("127.0.0.1", "--bind", help="Address to listen on; anything but loopback needs --token."),
    port: int = typer.Option(8000, "--port", help="Port (0: any free one, printed)."),
    token: Optional[str] = typer.Option(None, "--token", help="Require it (Bearer, or as the password of http://USER:TOKEN@host)."),
) -> None:
    """A read-only PEP 503/691 simple index of the cached or bundled files, for nodes without the internet."""
    from .bundle import serve

    serve.serve(bundle=bundle, cache=cache, bind=bind, port=port, token=token, log=line_log(True))


@app.command("base")
def base_image(
    suite: str = typer.Argument("bookworm", help="Debian suite (bookworm)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="OCI layout directory to write (default: PROJECT/.envmgr/bases/SUITE)."),
    mirror: Optional[str] = typer.Option(None, "--mirror", help="Debian mirror URL (default: mmdebstrap's)."),
    include: List[str] = typer.Option(None, "--include", help="More Debian packages (repeat or comma-separate): openssh-server for the ssh mode."),
    platform: Optional[str] = typer.Option(None, "--platform", help="OCI platforms, comma-separated (linux/amd64,linux/arm64): several make an image index (default: this machine's)."),
) -> None:
    """Build a Debian + python3 base image with mmdebstrap into an OCI layout (no registry needed)."""
    from .core import settings
    from .oci import debian

    output = output or find_project() / ".envmgr" / "bases" / suite
    more = {"platforms": [platform]} if platform is not None else {}  # build_base reads comma-separated names
    dest = debian.build_base(suite, output, cache=settings.cache_dir(), mirror=mirror, include=include,
                             log=line_log(True), **more)
    out.print(f"oci:{dest}", markup=False, highlight=False)

@app.command("up")
def up_cmd(
    name: str = typer.Argument("default", help="Profile whose image to run."),
    mode: Optional[str] = typer.Option(None, "--mode", help="jupyter, ssh or shell (default: the image's first mode that is not shell)."),
    gpus: str = typer.Option("auto", "--gpus", help="all, N, none, or auto (all for a CUDA lock on a GPU host)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="Host directory bound at /workspace (default: the image's volume)."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Host port for the mode (default: 8888 for jupyter, 2222 for ssh)."),
    memory: str = typer.Option("", "--memory", help="Memory limit, e.g. 8g."),
    cpus: str = typer.Option("", "--cpus", help="CPU limit, e.g. 4."),
    shm_size: str = typer.Option("1g", "--shm-size", help="/dev/shm size (PyTorch DataLoader workers need more than docker's 64m)."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Start it and return (default: follow its logs; Ctrl-C stops it)."),
    print_only: bool = typer.Option(False, "--print", help="Print the equivalent docker run / podman run lines and a compose file; run nothing."),
    bind: str = typer.Option("127.0.0.1", "--bind", help="Host address the port is published on (0.0.0.0: every interface)."),
) -> None:
    """Run the profile's image: JupyterLab, sshd or a shell, with GPUs, /workspace and limits (docker SDK; DOCKER_HOST)."""
    import os

    from .up import run, spec

    opts = spec.UpOptions(name=name, mode=mode, gpus=gpus, workspace=workspace, port=port, memory=memory, cpus=cpus,
                          shm_size=shm_size, detach=detach, print_only=print_only, bind=bind)
    if print_only:
        sys.stdout.write(spec.printed(spec.spec(find_project(), opts, environ=dict(os.environ), home=Path.home())))
        return
    started = run.up(find_project(), opts, log=line_log(True),
                     out=lambda line: out.print(line, markup=False, highlight=False))
    if started.exit_code is not None:
        raise typer.Exit(started.exit_code)
    out.print(started.url, markup=False, highlight=False)
    err.print(f"stop it: {started.stop}", markup=False, highlight=False)

# --- report commands (diff, export) ------------------------------------------------------

def _emit_text(text: str, output: Optional[Path]) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        from .core.files import write_atomic

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
    from .report import diff as lockdiff
    from .report import diffreport

    fmt = "json" if as_json else fmt
    diffreport.check_format(fmt)
    limit = diffreport.parse_max_chars(max_chars)
    diffs = lockdiff.diff_project(find_project(), names or None, base)
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
    from .model import lockfile
    from .report import export

    export.check_format(fmt, output)
    lock = lockfile.read(lock_file or lockfile.lock_path(find_project(), name))
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
    from .core.errors import CheckFailed
    from .gpu import check as gpu_check
    from .gpu import render

    report = gpu_check.check(find_project(), name=name, python=python, image=image, image_python=image_python,
                             engine=engine, require_gpu=require_gpu, world=world, timeout=timeout)
    if as_json:
        print_json(report)
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

    data = doctor.report(find_project())
    if as_json:
        print_json(data)
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

    result = doctor.init_profile(find_project(), name, variant=variant, torch=torch, python=python, force=force)
    if as_json:
        print_json(result.to_json())
    else:
        out.print(f"wrote {result.path}: {result.variant}, torch {result.torch}, python {result.python} ({result.reason})",
                  highlight=False, markup=False)
        out.print(f"next: envmgr lock {result.name} && envmgr sync {result.name} && envmgr check {result.name}",
                  highlight=False, markup=False)



# --- cluster commands (k8s, slurm, report) -----------------------------------------------

cluster_app = typer.Typer(name="cluster", no_args_is_help=True,
                          help="Run a lock on Kubernetes and Slurm: manifests, an sbatch script, the fleet check's table.")
app.add_typer(cluster_app, name="cluster")
_TRAIN_ARGS = {"allow_extra_args": True}


@cluster_app.command("k8s", context_settings=_TRAIN_ARGS)
def cluster_k8s(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Profile whose lock the image carries (locks/pylock.NAME.toml)."),
    image: str = typer.Option(..., "--image", help="HOST/NAME@sha256:... or HOST/NAME:TAG (resolved to its digest through the registry)."),
    nodes: int = typer.Option(1, "--nodes", help="Nodes: training pods, and nodes the fleet check covers."),
    gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", help="GPUs a pod requests (default 1; none for a cpu lock)."),
    procs_per_node: Optional[int] = typer.Option(None, "--procs-per-node", help="torchrun processes a pod (default: one a GPU)."),
    namespace: Optional[str] = typer.Option(None, "--namespace", "-n", help="Namespace written into every manifest (default: none, kubectl's)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Directory for the manifests (default: k8s/NAME)."),
    cpus: str = typer.Option("", "--cpus-per-node", help="CPU request = limit of a training pod (default 8 a GPU, at least 4)."),
    memory: str = typer.Option("", "--memory-per-node", help="Memory request = limit of a training pod (default 32Gi a GPU, at least 16Gi); /dev/shm gets half."),
    workspace_claim: str = typer.Option("", "--workspace-claim", help="An existing PVC for /workspace (default: write workspace-pvc.yaml)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """Kubernetes manifests: a fleet check on every GPU node, and training (Indexed Job + headless Service, PyTorchJob).

    After `--`: the training script and its arguments (default: an all-reduce smoke test)."""
    from .cluster import affinity, k8s

    result = k8s.generate(find_project(), name, image=image, nodes=nodes, gpus_per_node=gpus_per_node,
                          procs_per_node=procs_per_node, namespace=namespace, output=output, cpus=cpus, memory=memory,
                          workspace_claim=workspace_claim, command=list(ctx.args))
    if as_json:
        print_json(result.to_json())
        return
    out.print(f"image {result.image}" + (f" (resolved from {result.image.given})" if result.image.resolved else ""),
              markup=False, highlight=False)
    for line in affinity.describe(result.affinity):
        out.print(f"  runs where: {line}", markup=False, highlight=False)
    for f in result.files:
        out.print(f"wrote {f}", markup=False, highlight=False)
    out.print("next:", markup=False, highlight=False)
    for step in result.next_steps:
        out.print(f"  {step}", markup=False, highlight=False)


@cluster_app.command("slurm", context_settings=_TRAIN_ARGS)
def cluster_slurm(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Profile to run (locks/pylock.NAME.toml)."),
    nodes: int = typer.Option(1, "--nodes", help="Nodes to allocate (#SBATCH --nodes)."),
    gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", help="GPUs a node (#SBATCH --gpus-per-node; default 1, none for a cpu lock)."),
    procs_per_node: Optional[int] = typer.Option(None, "--procs-per-node", help="torchrun processes a node (default: one a GPU)."),
    image: Optional[str] = typer.Option(None, "--image", help="Run in this image through pyxis (HOST/NAME@sha256:... or :TAG, resolved)."),
    venv: bool = typer.Option(False, "--venv", help="Sync a node-local venv on each node from the shared cache (the default)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="The script to write (default: envmgr-NAME.sbatch)."),
    time_limit: str = typer.Option("", "--time", help="#SBATCH --time (default: the partition's)."),
    partition: str = typer.Option("", "--partition", "-p", help="#SBATCH --partition."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable summary."),
) -> None:
    """An sbatch script: envmgr's check on every allocated node, then torchrun with rendezvous from Slurm's environment.

    After `--`: the training script and its arguments (default: an all-reduce smoke test)."""
    from .cluster import slurm

    result = slurm.generate(find_project(), name, nodes=nodes, gpus_per_node=gpus_per_node, procs_per_node=procs_per_node,
                            image=image, venv=venv, output=output, command=list(ctx.args), time=time_limit,
                            partition=partition)
    if as_json:
        print_json(result.to_json())
        return
    where = f"image {result.image}" if result.image else "a venv on each node"
    out.print(f"wrote {result.path}: {result.nodes} node(s) x {result.gpus} GPU(s), {result.procs} process(es) a node, {where}",
              markup=False, highlight=False)
    out.print(f"next: sbatch {result.path}", markup=False, highlight=False)


@cluster_app.command("report")
def cluster_report(
    paths: List[Path] = typer.Argument(..., help="Files or folders of fleet check output (check JSON, kubectl logs, Slurm output)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable report (schema envmgr-cluster-report/1)."),
) -> None:
    """One row a node: GPU, driver, a verdict per check family; which nodes cannot run the lock and why. Exit 1 if any."""
    from .cluster import report

    rows = report.read(list(paths))
    if as_json:
        print_json(report.summary(rows))
    else:
        report.render(out, rows)
    if not all(r.ok for r in rows):
        raise typer.Exit(1)



def main() -> None:
    try:
        rc = app(standalone_mode=False)
    except EnvmgrError as exc:
        print_error(exc)
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

