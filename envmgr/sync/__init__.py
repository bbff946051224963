"""Sync: lock -> venv. Takes a lock (re-locked first when stale); gives a venv that is
exactly the lock, hash-verified, with a stamp that makes the next no-op sync instant. Uses
``lock`` (freshness), ``net`` (fetch), ``venv`` (install) and ``host`` (driver minimum).

- ``stamp``: what the last sync left, and the cheap check that nothing changed since.
- ``recipe``: a missing venv made again from how the last sync of the same inputs made it.
- ``syncer``: ``envmgr sync``, ``sync --check`` and ``envmgr run``.
"""
