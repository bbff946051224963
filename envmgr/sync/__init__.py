"""Sync: lock -> venv. Takes a lock (re-locked first when stale); gives a venv that is
exactly the lock, hash-verified, with a stamp that makes the next no-op sync instant. Uses
``lock`` (freshness), ``net`` (fetch), ``venv`` (install) and ``host`` (driver minimum).

- ``syncer``: ``envmgr sync``: the no-op, else the replay, else the slow path.
- ``options``: what the caller asks (``--venv``, ``--python``, ``--locked`` ...), as one value.
- ``result``: what a sync did, and the no-op's answer from the stamp.
- ``target``: the venv on disk: where, what is there, the file lock beside it.
- ``stamp``: what the last sync left, and the cheap check that nothing changed since.
- ``recipe``: how the last sync of the same inputs made a venv, kept in the cache.
- ``replay``: a missing venv made again from its recipe.
- ``preflight``: the checks before anything changes (inputs, lock, interpreter, driver, files).
- ``slow``: the slow path: check, fetch, install, stamp, record the recipe.
- ``drift``: ``envmgr sync --check``.
- ``run``: ``envmgr run``.
"""
