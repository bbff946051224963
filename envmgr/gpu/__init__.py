"""GPU: prove that an environment computes on this machine, and say which variant fits it.
Takes a venv, an interpreter or an image (``oci``), the lock's expectations and the host's
driver and GPUs (``host``); gives a check report and doctor's verdicts.

- ``probe``: the standalone probe (stdlib + torch) run by the target's own interpreter; it
  decides arch coverage and versions with ``model.gpucompat``, which ``runner`` sends along.
- ``runner``: runs the probe in a local interpreter or inside an image (podman, docker SDK).
- ``expect``: what the lock says the environment must be (torch, CUDA, cuDNN, NCCL, archs).
- ``imagelock``: the lock an exported image carries, read from its layers.
- ``check``: ``envmgr check`` -- target, expectations, judging the result.
- ``doctor``: ``envmgr doctor`` and ``envmgr init --variant auto``.
- ``render`` (tables) and ``schema`` (the documented JSON).
"""
