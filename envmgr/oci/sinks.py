"""The write step of ``envmgr export-image``: an ``Image`` to wherever it was asked to go.

Three sinks, any together: ``--output`` (an OCI layout directory, or one ``.tar`` that
``docker load`` and OCI tools read: ``layout``), ``--push`` (a registry: ``remote``) and
``--load`` (the local engine through the docker SDK: ``engine``). ``check`` looks at every
one before any work, so a bad output fails in a second, not after the layers are built.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import UserError
from . import image as im
from . import layout, sources
from .plan import Options


def check(opts: Options, *, platforms=()) -> None:
    """A one-line error now for an output that cannot be written, a bad ref, no engine.
    ``platforms``: those of an image index (``linux-x86_64``), of which ``--load`` takes this machine's."""
    if opts.load and platforms:
        from ..model.platforms import oci_platform

        here = layout.host_platform()
        if here not in (names := [oci_platform(p) for p in platforms]):
            raise UserError(f"--load: the engine here runs {here} images, and the index has {', '.join(names)} only",
                            hint=f"add --platform {here}, or write the index with --output or --push")
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


def push(image: layout.Artifact, ref: str, *, base_ref: str, reporter=None) -> dict:
    """Push to ``ref`` (an index: each image by digest, then the index under ``ref``); the
    base's blobs are mounted from its repository when it is in the same registry."""
    from . import remote

    target = remote.parse_ref(ref)
    mount = None
    if not base_ref.startswith(sources.PREFIXES[:3]):
        try:
            mount = remote.parse_ref(base_ref.removeprefix("docker://"))
        except UserError:
            mount = None
    pushing = remote.push_index if isinstance(image, im.ImageIndex) else remote.push
    pushed = pushing(image, target, mount_from=mount, reporter=reporter)
    return {"ref": pushed.ref, "uploaded": len(pushed.uploaded), "skipped": len(pushed.skipped),
            "mounted": len(pushed.mounted)}


def write(image: layout.Artifact, opts: Options, *, tags, epoch: int, base_ref: str, cache: Path, reporter,
          mark) -> dict:
    """Each sink ``opts`` names, in order output, push, load, the image named by every one of
    ``tags`` (the layout, the tar, the engine); what each did, by name ("output",
    "push", "load"). ``cache`` is the oci cache (the tar ``--load`` streams); ``mark(step)`` is
    called as each ends ("write", "push", "load"). An index goes to the engine as its image
    for this machine (``check`` made sure it has one)."""
    outputs: dict = {}
    if opts.output:
        out = opts.output
        if out.suffix == ".tar":
            layout.write_tar(image, out, name=tags, mtime=epoch)
        else:
            layout.write_dir(image, out, name=tags)
        outputs["output"] = str(out)
        mark("write")
    if opts.push:
        outputs["push"] = push(image, opts.push, base_ref=base_ref, reporter=reporter)
        mark("push")
    if opts.load:
        from . import engine

        one = layout.docker_image(image)
        outputs["load"] = engine.load(one, tags, cache=cache, epoch=epoch, reporter=reporter)
        mark("load")
    return outputs
