"""Venv: one Python environment on disk. Takes verified files (from ``net``) and a lock;
gives a venv holding exactly them. Uses the model; knows nothing of locking or images.

- ``distinfo``: what a venv holds, read with the standard library only.
- ``uvtool``: the uv binary: ``uv venv``, ``uv pip sync`` of a PEP 751 lock, its version.
- ``install``: the lock's verified files into a target prefix (the venv, or the image's).
"""
