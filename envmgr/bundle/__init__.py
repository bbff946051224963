"""Bundle: locks -> one folder or tar that syncs and builds with no network; a cache served to nodes.
Takes profiles and their locks (and a base image); gives a deterministic bundle (profiles,
locks, every file they name by sha256, envmgr's own wheels, ``bootstrap.sh``) and a read-only
PEP 503/691 index of a cache or a bundle. Uses ``net`` (fetch), ``lock`` (freshness) and
``oci`` (the base image); the reading side, used by ``sync --bundle``, is ``net.bundlefiles``.

- ``make``: ``envmgr bundle``: what goes in, written as a folder or a reproducible tar.
- ``tool``: envmgr's wheel and its dependencies' wheels for the lock's python and platform.
- ``image``: ``export-image --bundle``: the lock's files and the base taken from a bundle.
- ``serve``: ``envmgr serve``: the simple index over HTTP, safe by default.
"""
