"""``envmgr export-image``: a lock + a base image -> a reproducible, layered OCI image.

Four steps, each a module with a value in and a value out, cheapest checks first:

1. plan (``plan``): read the lock and the profile's ``[image]`` table, check every output
   (``sinks.check``: a bad ``--output``/``--push``/``--load`` fails before any work), load the
   base and find its python (it must be the lock's), plan the layers and their cache keys;
2. build (``buildlayers``): look each layer up in the layer cache, install and byte-compile
   only the packages of the layers that missed, build those in parallel, build the top layer
   (venv skeleton, user, lock, SBOM);
3. assemble (``assemble``): base + layers + config and labels -> an ``Image``;
4. write (``sinks``): a layout directory or tar, a registry, the local engine.

Same lock + base + envmgr => same digest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core import settings
from ..net.fetch import NullReporter
from . import assemble, buildlayers, plan, sinks
from .plan import Options


@dataclass
class Result:
    digest: str = ""
    tag: str = ""
    tags: list[str] = field(default_factory=list)  # tag, then the human tag
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


class _Clock:
    """Seconds per step: ``mark(name)`` ends the step begun at the previous mark."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - self.last, 3)
        self.last = now

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.monotonic() - self.started, 3)}


def export(project: Path, opts: Options, *, reporter=None, log=None) -> Result:
    clock = _Clock()
    reporter = reporter or NullReporter()
    log = log or (lambda msg: None)
    req = plan.request(project, opts)
    sinks.check(opts)
    cache = settings.cache_dir()
    base, facts = plan.load_base(req, cache=cache, reporter=reporter)
    clock.mark("base")
    what = plan.plan(req, base, facts, opts)
    built = buildlayers.build(what, cache=cache / "oci", jobs=opts.jobs, reporter=reporter, log=log, mark=clock.mark)
    img = assemble.assemble(what, built.layers)
    res = Result(digest=img.digest(), tag=req.tag, tags=list(req.tags), base=req.base_ref, base_digest=base.digest, python=facts.python,
                 layers=[{"title": layer.title, "digest": layer.digest, "size": layer.size,
                          "uncompressed_size": layer.uncompressed_size, "cached": layer.cached}
                         for layer in built.layers],
                 outputs={"config": img.config_digest}, notes=list(built.notes), installed_bytes=built.installed_bytes)
    res.outputs.update(sinks.write(img, opts, tags=req.tags, epoch=req.epoch, base_ref=req.base_ref, cache=cache / "oci",
                                   reporter=reporter, mark=clock.mark))
    res.seconds = clock.total()
    return res
