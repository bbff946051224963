"""``export-image --bundle``: the lock's files and the base image taken from a bundle, not the network.

Every file the lock names goes into the content-addressed cache from the bundle, hash-checked
(``net.bundlefiles``), so the exporter's fetch finds them there; a bundle made ``--with-base``
gives the base (its ``base.tar``, an OCI archive) when ``--base`` is not given.
"""

from __future__ import annotations

from pathlib import Path


def prepare(project: Path, name: str, bundle: Path, base: str | None) -> str | None:
    """Seed the cache with the lock's files from ``bundle``; the base reference to build on."""
    import hashlib

    from ..core import settings
    from ..core.files import atomic_path
    from ..model import lockfile
    from ..net.bundlefiles import MANIFEST, open_bundle

    lock = lockfile.read(settings.lock_path(project, name))
    opened = open_bundle(bundle)
    lock = opened.check_lock(lock, f"the lock {name}")
    opened.seed([(p.key, p.install_file) for p in lock.packages])
    carried = (opened.manifest.get("base") or {}).get("file")
    if base is not None or not carried:
        return base
    if bundle.is_dir():
        return f"oci-archive:{(bundle / carried).resolve()}"
    key = hashlib.sha256(opened.read(MANIFEST)).hexdigest()
    dest = settings.cache_dir() / "bundles" / key / carried
    if not dest.is_file():
        with atomic_path(dest, fsync=False) as tmp, open(tmp, "wb") as fh:
            for chunk in opened.chunks(carried):
                fh.write(chunk)
    return f"oci-archive:{dest}"
