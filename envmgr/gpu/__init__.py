"""GPU: prove that an environment computes on this machine, and say which variant fits it.

- ``probe``: the standalone probe (stdlib + torch) run by the target's own interpreter; also
  the pure arch-coverage and version rules both commands decide with.
- ``detect``: the host's NVIDIA driver and GPUs (env override, NVML, nvidia-smi, /proc).
- ``runner``: runs the probe in a local interpreter or inside an image (podman, docker SDK).
- ``check``: ``envmgr check`` -- target, expectations from the lock, judging the result.
- ``doctor``: ``envmgr doctor`` and ``envmgr init --variant auto``.
- ``render`` (tables) and ``schema`` (the documented JSON).
"""
