"""Every module envmgr imports at run time is a declared dependency (issue 13).

Read from the code with ``ast``: a new ``import x`` of a package that ``pyproject.toml`` does
not declare fails here, naming the file, instead of in a user's fresh venv.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from envmgr.core.compat import tomllib

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "envmgr"
# The probe runs in the *target* environment (stdlib + torch), never in envmgr's own.
TARGET_ONLY = {"envmgr/gpu/probe.py": {"torch"}}


def _imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = str(f.relative_to(REPO))
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "envmgr" or top in TARGET_ONLY.get(rel, ()):
                    continue
                found.setdefault(top, set()).add(rel)
    return found


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}


def test_every_runtime_import_is_declared() -> None:
    declared = _declared()
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, files in sorted(_imports().items()):
        # not installed on this Python (tomli, for 3.10 only): its distribution has its name
        dists = {canonicalize_name(d) for d in providers.get(module) or [module]}
        if not dists & declared:
            missing.append(f"{module} (from {', '.join(sorted(dists)) }), "
                           f"imported by {', '.join(sorted(files))}")
    assert not missing, "imported but not declared in pyproject.toml [project] dependencies:\n" + "\n".join(missing)


def test_tomllib_comes_from_the_compat_module() -> None:
    """Python 3.10 has no tomllib: every reader goes through core.compat (tomli there)."""
    direct = [str(f.relative_to(REPO)) for f in PACKAGE.rglob("*.py")
              if f.name != "compat.py" and any(isinstance(n, ast.Import) and any(a.name == "tomllib" for a in n.names)
                                               for n in ast.walk(ast.parse(f.read_text())))]
    assert not direct, direct
