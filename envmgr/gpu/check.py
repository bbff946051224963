"""``envmgr check``: run the probe in a target environment and judge it against its lock.

Input: a target -- a profile's venv (``venv_root/NAME``), any interpreter (``--python``), or
an image (``--image``, through podman or the docker SDK) -- and the expectations taken from
the profile's lock (torch pin, CUDA, cuDNN/NCCL pins, minimum driver, arch list), else from
the profile and the knowledge base. Output: the report (``envmgr-check/1``, see
``envmgr.gpu.schema``): every check with pass / fail / skip, its reason and its time.

What the probe cannot report (it died, hung, or found no torch) is turned into a failed
check or a one-line input error here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import UserError
from ..core.settings import venv_root
from . import runner
from .expect import driver_table, expectations_from_lock, profile_expectations  # noqa: F401 - check's API

if TYPE_CHECKING:  # the profile module loads only when a profile is checked
    pass

CHECK_SCHEMA = "envmgr-check/1"


@dataclass(frozen=True)
class Target:
    kind: str  # venv | python | image
    python: str  # the interpreter (inside the image for kind image)
    profile: str | None = None
    image: str | None = None
    engine: str | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "python": self.python, "profile": self.profile, "image": self.image, "engine": self.engine}

    def describe(self) -> str:
        if self.kind == "image":
            return f"image {self.image} ({self.python}, {self.engine})"
        if self.kind == "venv":
            return f"venv of profile {self.profile} ({self.python})"
        return self.python


# -- targets --------------------------------------------------------------------------------

def resolve_python(python: str) -> str:
    """``--python``: a path, a name on PATH, or a venv directory."""
    path = Path(python).expanduser()
    if "/" not in python:
        found = shutil.which(python)
        if not found:
            raise UserError(f"--python {python}: not found on PATH")
        path = Path(found)
    if path.is_dir():
        inner = path / "bin" / "python"
        if not inner.exists():
            raise UserError(f"--python {python}: a directory without bin/python", hint="point it at an interpreter or a venv")
        path = inner
    if not path.exists():
        raise UserError(f"--python {python}: no such file")
    if not path.is_file() or not _executable(path):
        raise UserError(f"--python {python}: not an executable file")
    return str(path if path.is_absolute() else path.absolute())


def _executable(path: Path) -> bool:
    return os.access(path, os.X_OK)


def venv_python(project: Path, name: str) -> str:
    venv = venv_root(project) / name
    python = venv / "bin" / "python"
    if not python.exists():
        raise UserError(f"no venv for profile {name!r} at {venv}", hint=f"create it with `envmgr sync {name}`")
    return str(python)


def plan(project: Path, *, name: str | None, python: str | None, image: str | None,
         image_python: str | None = None, engine: str = "auto") -> tuple[Target, dict, str | None, list[str]]:
    """Which interpreter to probe, what to expect of it, from where, and notes; validates
    every input (exit 2).

    An image checked without a profile name is held to the lock embedded in it
    (``<venv>/pylock.toml``, see ``envmgr.gpu.imagelock``); a profile named explicitly wins.
    Inside an image the interpreter is ``--image-python``, else the profile's ``[image] venv``
    (or the image's ``io.envmgr.venv`` label) plus ``/bin/python``, else ``/opt/venv/bin/python``."""
    if python and image:
        raise UserError("--python and --image are exclusive", hint="check one target at a time")
    expect: dict = {}
    source = None
    profile = None
    notes: list[str] = []
    if name is not None or not (python or image):
        name = name or "default"
        expect, source, profile = profile_expectations(project, name)
    if image:
        picked = runner.pick_engine(engine, image)
        venv = (profile.image.get("venv") if profile else None) or ""
        if profile is None:
            from . import imagelock

            expect, source, notes, labels = imagelock.expectations(image, engine=picked, image_python=image_python)
            venv = venv or ((labels or {}).get(imagelock.LABEL + "venv") or "")
        if not image_python:
            image_python = venv.rstrip("/") + "/bin/python" if venv.strip("/") else runner.DEFAULT_IMAGE_PYTHON
        return Target("image", image_python, name, image, picked), expect, source, notes
    if python:
        return Target("python", resolve_python(python), name), expect, source, notes
    return Target("venv", venv_python(project, name), name), expect, source, notes


# -- running --------------------------------------------------------------------------------

def _signal_name(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit {code}"
    try:
        return f"signal {-code} {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


def _last_line(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip() and not x.startswith(runner.PROGRESS_PREFIX)]
    return lines[-1].strip()[:300] if lines else ""


def _fatal_check(name: str, title: str, reason: str, seconds: float) -> dict:
    return {"name": name, "title": title, "status": "fail", "reason": reason, "seconds": round(seconds, 6), "metrics": {}}


def judge(target: Target, run: runner.ProbeRun, timeout: float) -> dict:
    """The probe document, or one rebuilt from what it reported before it died."""
    doc = run.doc
    if doc is None:
        if not run.progress and not run.timed_out:
            raise UserError(f"{target.describe()} did not run the probe ({_signal_name(run.returncode)}): "
                            f"{_last_line(run.stderr) or 'no output'}")
        done = list(run.progress)
        last = done[-1]["name"] if done else "start"
        if run.timed_out:
            check = _fatal_check("probe.timeout", "the probe finished", f"timed out after {timeout:g} s (last finished: {last})", run.seconds)
        else:
            check = _fatal_check("probe.crash", "the probe finished",
                                 f"the probe died ({_signal_name(run.returncode)}) after {last}: {_last_line(run.stderr)}", run.seconds)
        doc = {"ok": False, "python": None, "torch": None, "driver": None, "gpus": [], "libraries": [],
               "checks": done + [check], "import_s": None, "total_s": None}
    if doc.get("error"):
        doc["checks"] = list(doc.get("checks") or []) + [_fatal_check("probe.error", "the probe finished", doc["error"], 0.0)]
        doc["ok"] = False
    imp = next((c for c in doc["checks"] if c["name"] == "torch.import"), None)
    if imp and imp["status"] == "fail" and imp.get("metrics", {}).get("missing"):
        where = {"venv": f"the venv of profile {target.profile!r} ({target.python})",
                 "python": target.python, "image": f"{target.python} in image {target.image}"}[target.kind]
        hint = {"venv": f"run `envmgr sync {target.profile}`", "python": "install torch there, or point --python at an environment with torch",
                "image": "export the image from a lock with torch, or pass --image-python"}[target.kind]
        raise UserError(f"{where} has no torch", hint=hint)
    return doc


def check(project: Path, *, name: str | None = None, python: str | None = None, image: str | None = None,
          image_python: str | None = None, engine: str = "auto", require_gpu: bool = False,
          world: int = 1, timeout: float = 600, sizes: dict | None = None, gpu: bool | None = None) -> dict:
    """Plan, run the probe, judge: the ``envmgr-check/1`` report."""
    start = time.perf_counter()
    if world < 1:
        raise UserError(f"--world {world}: must be 1 or more")
    if timeout <= 0:
        raise UserError(f"--timeout {timeout:g}: must be positive")
    target, expect, source, notes = plan(project, name=name, python=python, image=image, image_python=image_python, engine=engine)
    full = dict(expect, driver_table=driver_table(), require_gpu=require_gpu, world=world)
    if sizes:
        full["sizes"] = sizes
    expect_json = json.dumps(full, sort_keys=True, separators=(",", ":"))
    if target.kind == "image":
        from ..host.detect import has_nvidia_driver

        with_gpu = has_nvidia_driver() if gpu is None else gpu
        run = runner.run_image(target.image, target.python, expect_json, engine=target.engine, gpu=with_gpu, timeout=timeout)
    else:
        run = runner.run_python(target.python, expect_json, timeout=timeout)
    doc = judge(target, run, timeout)
    checks = doc["checks"]
    summary = {s: sum(1 for c in checks if c["status"] == s) for s in ("pass", "fail", "skip")}
    return {
        "schema": CHECK_SCHEMA,
        "ok": summary["fail"] == 0,
        "target": target.to_json(),
        "expect": expect,
        "expect_source": source,
        "notes": notes,
        "require_gpu": require_gpu,
        "world": world,
        "python": doc.get("python"),
        "torch": doc.get("torch"),
        "driver": doc.get("driver"),
        "gpus": doc.get("gpus") or [],
        "libraries": doc.get("libraries") or [],
        "checks": checks,
        "summary": summary,
        "import_s": doc.get("import_s"),
        "probe_s": doc.get("total_s"),
        "seconds": round(time.perf_counter() - start, 6),
    }


def failed(report: dict) -> list[str]:
    return [c["name"] for c in report["checks"] if c["status"] == "fail"]
