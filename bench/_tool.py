"""Shared by the benchmarks: envmgr installed the way command-line tools are installed.

A user runs envmgr from its own venv (``uv tool install``, pipx), byte-compiled, not from a
crowded site-packages whose ``.pth`` files alone can cost a Python start 30-50 ms. The
benchmarks time that, so envmgr's start-up is measured as users pay it. ``--in-place``
in each benchmark runs this checkout with the current interpreter instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def install_tool(dest: Path, uv: str, env: dict, src: Path = REPO) -> tuple[str, str]:
    """A venv at ``dest`` holding the envmgr of checkout ``src``; returns (python, envmgr) paths."""
    subprocess.run([uv, "venv", "-q", "--clear", "-p", sys.executable, str(dest)], check=True, env=env)
    subprocess.run([uv, "pip", "install", "-q", "--compile-bytecode", "-p", str(dest / "bin" / "python"), str(src)],
                   check=True, env=env)
    return str(dest / "bin" / "python"), str(dest / "bin" / "envmgr")
