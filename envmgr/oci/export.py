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

A lock for several platforms gives an OCI image index: steps 2-3 once a platform, on that
platform's view of the lock and the base's image for it (docs/platforms.md).

Same lock + base + envmgr => same digest (an index's too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core import settings
from ..net.fetch import NullReporter
from . import assemble, buildlayers, layout, plan, sinks
from . import image as im
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
    manifests: list[dict] = field(default_factory=list)  # an image index: each platform's image
    shared_layers: int = 0  # an image index: layer digests more than one of its images carries

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("manifests", "shared_layers") or self.manifests}


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
    """The lock's image; for a lock of several platforms, an image index holding one image a
    platform (``opts.platforms``, default all), each built from that platform's view of the
    lock on the base's image for it. Every base is loaded before anything is built, so a base
    without one of the platforms fails first."""
    clock = _Clock()
    reporter = reporter or NullReporter()
    log = log or (lambda msg: None)
    req = plan.request(project, opts)
    sinks.check(opts, platforms=req.platforms if req.index else ())
    cache = settings.cache_dir()
    reqs = [req.for_platform(p) for p in req.platforms]
    bases = [plan.load_base(r, cache=cache, reporter=reporter) for r in reqs]
    clock.mark("base")
    images, parts = [], []
    for r, (base, facts) in zip(reqs, bases):
        platform = r.lock.meta.platform
        if req.index:
            log(f"{platform}:")
        mark = (lambda step, p=platform: clock.mark(f"{step} {p}")) if req.index else clock.mark
        what = plan.plan(r, base, facts, opts)
        built = buildlayers.build(what, cache=cache / "oci", jobs=opts.jobs, reporter=reporter, log=log, mark=mark)
        images.append(assemble.assemble(what, built.layers))
        parts.append((base, built))
    res = _result(req, images, parts, facts.python)
    image = im.ImageIndex(images=tuple(images)) if req.index else images[0]
    res.digest = image.digest()
    if req.index:
        res.shared_layers = image.shared_layers()
        if opts.load:
            res.notes.append(f"--load: the engine gets the {layout.host_platform()} image only; --output and --push carry the index")
    res.outputs.update(sinks.write(image, opts, tags=req.tags, epoch=req.epoch, base_ref=req.base_ref, cache=cache / "oci",
                                   reporter=reporter, mark=clock.mark))
    res.seconds = clock.total()
    return res


def _result(req: plan.Request, images, parts, python: str) -> Result:
    """The summary: one image's as it has always been; an index's with each image under
    ``manifests`` and each layer naming its platform."""
    res = Result(tag=req.tag, tags=list(req.tags), base=req.base_ref, python=python)
    for img, (base, built) in zip(images, parts):
        extra = {"platform": img.platform} if req.index else {}
        res.layers += [{"title": layer.title, "digest": layer.digest, "size": layer.size,
                        "uncompressed_size": layer.uncompressed_size, "cached": layer.cached, **extra}
                       for layer in built.layers]
        res.notes += [f"{img.platform}: {n}" if req.index else n for n in built.notes]
        res.installed_bytes += built.installed_bytes
        if req.index:
            res.manifests.append({"platform": img.platform, "digest": img.digest(), "base_digest": base.digest,
                                  "config": img.config_digest})
        else:
            res.base_digest, res.outputs = base.digest, {"config": img.config_digest}
    return res
