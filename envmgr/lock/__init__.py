"""Lock: profile -> hashed PEP 751 lock. Takes a ``Profile``; gives ``locks/pylock.NAME.toml``
through uv (default) or pip-tools. Uses the model, ``net`` (hashes, index pages) and ``venv``
(the uv binary).

- ``indexproxy``: a local routing index: torch-family packages only from the variant's index.
- ``resolve``: runs the resolver and normalises its output into locked packages.
- ``locker``: ``envmgr lock``: freshness (``--check``), upgrades, writing the lock.
- ``_piptools_main``: pip-compile as a module, run by ``resolve``.
"""
