"""Daemonless OCI images from a lock: values, layers, sources, sinks and the export.

One module a concern, arrows pointing down:

- ``layers``: deterministic tar + sha256 + gzip in one streaming pass; the layer cache.
- ``image``: the immutable ``Image``/``Layer`` values; functions return new images.
- ``layout``: OCI layout directories and the one tar both ``docker load`` and OCI tools read.
- ``remote``: a registry client (pull, push, bearer/basic auth, ``~/.docker/config.json``).
- ``sources``: base images from a registry, ``oci:``, ``oci-archive:``, ``docker-archive:``.
- ``venvlayers``: a staged venv -> layers by package (RECORD ownership), byte-compiled.
- ``debian``: a Debian bookworm + python3 base built by mmdebstrap (``envmgr base``).
- ``build``: engine builds (docker/podman) from ``Containerfile.in``.
- ``export``: the orchestration behind ``envmgr export-image``.
"""
