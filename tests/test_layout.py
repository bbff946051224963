"""The package's shape: one folder per stage, imports flowing down, no cycles (issue 11).

Read from the code with ``ast`` (no import runs), so a new module that imports against the
order fails here, naming the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "envmgr"

# Bottom up. A module may import its own stage and any stage of a lower layer; stages that
# share a layer do not import each other.
LAYERS = [
    {"core"},                    # errors, settings, console, files, urls
    {"model"},                   # lock model, profiles, knowledge base
    {"net", "venv", "host"},     # HTTP and the cache; one venv on disk; this machine's driver
    {"lock"},                    # profile -> lock
    {"sync", "report"},          # lock -> venv; lock -> text (PR body, SBOM, exports)
    {"oci"},                     # lock -> image (the SBOM inside it from report)
    {"bundle"},                  # locks -> an air-gapped bundle; a cache or bundle served as an index
    {"gpu", "up"},               # venv/interpreter/image -> check report; doctor; image -> a running container
    {"cluster"},                 # lock + image -> k8s manifests, sbatch scripts; fleet check -> table
    {"commands"},                # every command's parameters; the hot commands' bodies
    {"cli"},                     # typer
    {"entry"},                   # the console script
    {"__main__"},
]
RANK = {stage: i for i, layer in enumerate(LAYERS) for stage in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = ("envmgr",) + f.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules] or [base]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found += [(node.lineno, t) for t in targets if t in modules]
    return found


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "envmgr"


def test_imports_flow_down_the_stages() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        me = _stage(name)
        for line, target in _imports(name, path, modules):
            them = _stage(target)
            if them in (me, "envmgr"):  # its own stage; the package's __version__
                continue
            assert me in RANK and them in RANK, f"{name} -> {target}: a stage missing from LAYERS"
            if RANK[them] >= RANK[me]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {me} imports {target} ({them} is not below {me})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {n: {t for _, t in _imports(n, p, modules) if t != n and not n.startswith(t + ".")} for n, p in modules.items()}
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [n, m]))
            if m not in state:
                visit(m, stack + [n])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])


def test_one_folder_per_stage_and_a_small_top() -> None:
    top = sorted(f.name for f in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    stages = {d.name for d in PACKAGE.iterdir() if (d / "__init__.py").is_file()}
    assert stages == set().union(*LAYERS) - {"commands", "cli", "entry", "__main__"}
    for stage in stages:
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert doc and len(doc.splitlines()) >= 3, f"envmgr/{stage}/__init__.py: say what the stage takes and gives"
