"""The assemble step of ``envmgr export-image``: base + new layers + config -> an ``Image`` value.

Also the one home of the labels an envmgr image carries (``labels``), which the engine build
(``build``) writes into its ``Containerfile`` too: ``io.envmgr.*`` is what ``envmgr check
--image`` reads back (``gpu.imagelock``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import __version__
from . import image as im
from . import modes

if TYPE_CHECKING:
    from ..model.lockfile import Lock
    from .plan import Plan

LABEL = "io.envmgr."
BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"


def labels(lock: Lock, conf: dict, *, engine: bool = False, extra: dict | None = None, lock_file: Lock | None = None) -> dict:
    """The image's labels: the lock's ``io.envmgr.*`` and the builder, then ``extra``, then the
    profile's ``[image] labels`` (``conf``), which win. ``lock`` may be one platform's view
    (its facts) of ``lock_file``, the lock the image embeds (its digest)."""
    meta = lock.meta
    return {
        f"{LABEL}lock.digest": (lock_file or lock).digest(),
        f"{LABEL}profile": meta.profile,
        f"{LABEL}variant": meta.variant,
        f"{LABEL}cuda": meta.cuda,
        f"{LABEL}min-driver": meta.min_driver,
        f"{LABEL}builder": f"envmgr {__version__}" + (" (engine)" if engine else ""),
        **(extra or {}),
        **{str(k): str(v) for k, v in (conf.get("labels") or {}).items()},
    }


def assemble(plan: Plan, layers) -> im.Image:
    """The base with ``layers`` on top, the runtime config (venv on PATH, user, workdir,
    entrypoint, labels) and the manifest's annotations; every timestamp the plan's epoch."""
    req, base, facts = plan.req, plan.base, plan.facts
    conf = req.conf
    created = im.epoch_iso(req.epoch)
    all_labels = labels(req.lock, conf, lock_file=req.lock_file, extra={f"{LABEL}python": facts.version, f"{LABEL}venv": req.venv,
                                               BASE_NAME: req.base_ref, BASE_DIGEST: base.digest})
    run = modes.config(req.modes, python=facts.python, lock=req.lock, conf=conf, ld_library_path=facts.ld_library_path)
    env = {"PATH": f"{req.venv}/bin:{facts.path_env}", "VIRTUAL_ENV": req.venv, **run.pop("env")}
    img = im.append_layers(base.image, layers, created=created)
    img = im.with_config(img, created=created, env=env, user=plan.user, labels=all_labels, **run)
    return im.with_annotations(img, {
        **{k: v for k, v in all_labels.items() if k.startswith(LABEL)},
        BASE_NAME: req.base_ref,
        BASE_DIGEST: base.digest,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.title": req.lock.meta.profile,
    })
