"""``envmgr up``: run a profile's image the way people use it (a stage above ``oci``).

Takes a profile (its lock and ``[image]`` table) and the run options; gives a running
container through the docker SDK (``DOCKER_HOST``; podman's socket works), exporting and
loading the image first when the engine lacks it, or, with ``--print``, the equivalent
``docker run`` / ``podman run`` lines and a compose file.

- ``spec``: options + profile -> a ``Spec`` (mode, ports, GPUs, limits, workspace), checked;
  the command lines and the compose file from it (pure functions).
- ``run``: a ``Spec`` -> the container: engine, image, port, start, the URL or ssh command.
"""
