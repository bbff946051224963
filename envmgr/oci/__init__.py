"""Daemonless OCI images from a lock: values, layers, sources, sinks and the export.

One module a concern, arrows pointing down:

- ``layers``: deterministic tar + sha256 + gzip in one streaming pass; the layer cache.
- ``image``: the immutable ``Image``/``Layer`` values; functions return new images.
- ``layerfs``: layers read back without unpacking (media types, whiteouts): a file, the merged tree.
- ``layout``: OCI layout directories and the one tar both ``docker load`` and OCI tools read.
- ``remote``: a registry client (pull, push, bearer/basic auth, ``~/.docker/config.json``).
- ``sources``: base images from a registry, ``oci:``, ``oci-archive:``, ``docker-archive:``.
- ``venvlayers``: the layer groups by package, byte-compiling, a uv-staged venv's files by RECORD ownership.
- ``wheelfs``: a wheel -> the files it installs in the image's venv, streamed from the zip (no install).
- ``debian``: a Debian bookworm + python3 base built by mmdebstrap (``envmgr base``).

``envmgr export-image``, a step a module, each a value in and a value out (as
go-containerregistry splits mutate / layout / tarball / remote):

- ``plan``: the lock, the profile's ``[image]`` table and the base -> a ``Plan`` (layers, cache keys, user).
- ``buildlayers``: a ``Plan`` -> the new layers (cached, or laid out from the wheels, compiled and built) and the top layer.
- ``assemble``: base + layers + config -> an ``Image``; the labels every envmgr image carries.
- ``sinks``: an ``Image`` -> a layout directory or tar, a registry, the local engine.
- ``export``: the orchestration of the four.
- ``build``: engine builds (docker/podman) from ``Containerfile.in``, with ``assemble``'s labels.
"""
