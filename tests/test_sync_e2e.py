"""The real thing: sync the shipped default profile from PyPI (a multi-GB CUDA build of torch).

Marked ``online`` and ``slow``: the quick suite (``-m "not slow"``) skips it. Run it with
``pytest -m online tests/test_sync_e2e.py -s`` to see the time and venv size it prints.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from test_sync import REPO, envmgr, installed, ok, venv_of, vpy

from envmgr.model import lockfile


def du(path: Path) -> int:
    seen, total = set(), 0
    for root, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


@pytest.mark.online
@pytest.mark.slow
def test_sync_shipped_default_profile_from_pypi_and_import_torch(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    for part in ("profiles", "locks"):
        shutil.copytree(REPO / part, project / part)
    lock = lockfile.read(lockfile.lock_path(project, "default"))

    started = time.monotonic()
    # the host's real driver (or none: a warning on a CPU machine)
    proc = ok(envmgr(project, "sync", "--json", timeout=3600, ENVMGR_DRIVER_VERSION=""))
    wall = time.monotonic() - started
    data = json.loads(proc.stdout)
    venv = venv_of(project)
    assert installed(venv) == lock.pins
    probe = vpy(venv, "import json, torch; print(json.dumps([torch.__version__, torch.version.cuda, "
                      "torch.cuda.is_available(), float(torch.ones(3).sum())]))")
    assert probe.returncode == 0, probe.stderr
    version, cuda, available, total = json.loads(probe.stdout)
    assert version.split("+")[0] == lock.pins["torch"].split("+")[0] and cuda == lock.meta.cuda and total == 3.0

    noop_start = time.monotonic()
    assert json.loads(ok(envmgr(project, "sync", "--json")).stdout)["noop"]
    noop = time.monotonic() - noop_start
    print(f"\ne2e sync of the default profile: {len(lock.packages)} packages, "
          f"{data['bytes_downloaded'] / 1e9:.2f} GB downloaded, {wall:.1f} s wall, venv {du(venv) / 1e9:.2f} GB, "
          f"torch {version} (CUDA {cuda}, GPU available: {available}); no-op sync {noop:.2f} s")
