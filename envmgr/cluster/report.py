"""``envmgr cluster report``: the fleet check's JSON, read back into one row a node.

Input: files (or a folder of them) holding what the fleet check printed: ``envmgr check
--json`` documents (``envmgr-check/1``) or the bare probe's (``envmgr-probe/1``, from the
Kubernetes fleet check), one line or pretty-printed, possibly behind log prefixes --
``kubectl logs --prefix`` (``[pod/NAME/CONTAINER] ``), ``--timestamps``, ``srun --label``
(``3: ``) -- and mixed with other lines. A node is named by the ``envmgr-node: NAME`` line
the Kubernetes launcher prints before the probe, else by the file (Slurm writes one file a
node, ``%N.json``), else by the pod. Output: rows (node, GPUs, driver, torch, a verdict per
family of checks, what failed and why) and which nodes cannot run the lock.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError
from .k8s import NODE_MARKER

SCHEMAS = ("envmgr-check/1", "envmgr-probe/1")
# Families of checks, in table order: a column each, the worst verdict of its checks.
FAMILIES = (
    ("torch", ("python.", "torch.")),
    ("cuda", ("cuda.",)),
    ("min-driver", ("driver.",)),
    ("arch", ("gpu.arch",)),
    ("kernels", ("gpu.kernels", "cpu.", "gpuN.")),
    ("nccl", ("nccl.",)),
    ("probe", ("probe.",)),
)
_WORST = {"fail": 3, "pass": 2, "skip": 1}
_PREFIXES = (
    re.compile(r"^\[pod/(?P<pod>[^/\]]+)/(?P<container>[^\]]+)\] ?"),  # kubectl logs --prefix
    re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d) "),  # kubectl logs --timestamps
    re.compile(r"^(?P<task>\d+): "),  # srun --label
)


@dataclass
class Row:
    node: str
    source: str  # FILE:LINE of the document
    doc: dict = field(repr=False)

    @property
    def ok(self) -> bool:
        checks = self.doc.get("checks") or []
        return bool(self.doc.get("ok", True)) and not any(c.get("status") == "fail" for c in checks)

    @property
    def failed(self) -> list[dict]:
        return [c for c in self.doc.get("checks") or [] if c.get("status") == "fail"]

    def family(self, prefixes: tuple[str, ...]) -> str:
        statuses = [c.get("status", "") for c in self.doc.get("checks") or []
                    if any(_in_family(c.get("name", ""), p) for p in prefixes)]
        return max(statuses, key=lambda s: _WORST.get(s, 0)) if statuses else ""

    @property
    def gpu(self) -> str:
        gpus = self.doc.get("gpus") or []
        if not gpus:
            return "none"
        names: dict[str, int] = {}
        for g in gpus:
            cap = g.get("capability")
            label = f"{g.get('name') or 'GPU'} (sm_{cap[0]}{cap[1]})" if cap else str(g.get("name") or "GPU")
            names[label] = names.get(label, 0) + 1
        return ", ".join(f"{n} x {label}" for label, n in names.items())

    @property
    def driver(self) -> str:
        return str((self.doc.get("driver") or {}).get("version") or "none")

    @property
    def torch(self) -> str:
        t = self.doc.get("torch") or {}
        if not t:
            return "none"
        return f"{t.get('version')}" + (f" (CUDA {t['cuda']})" if t.get("cuda") else "")

    def to_json(self) -> dict:
        return {"node": self.node, "source": self.source, "ok": self.ok, "schema": self.doc.get("schema"),
                "gpus": self.doc.get("gpus") or [], "driver": (self.doc.get("driver") or {}).get("version"),
                "torch": (self.doc.get("torch") or {}).get("version"),
                "verdicts": {name: self.family(p) or None for name, p in FAMILIES},
                "checks": {c["name"]: c.get("status") for c in self.doc.get("checks") or [] if "name" in c},
                "failed": [{"name": c.get("name"), "reason": c.get("reason", "")} for c in self.failed]}


def _in_family(name: str, prefix: str) -> bool:
    if prefix == "gpuN.":  # gpu0.matmul_bf16, ...: one GPU's kernels (not gpu.arch)
        return bool(re.match(r"^gpu\d+\.", name))
    return name == prefix or name.startswith(prefix) if prefix.endswith(".") else name == prefix


def _strip(line: str) -> tuple[str, str | None]:
    """The line without log prefixes, and the stream it belongs to (a pod, a task)."""
    stream = None
    changed = True
    while changed:
        changed = False
        for rx in _PREFIXES:
            m = rx.match(line)
            if m:
                groups = m.groupdict()
                if groups.get("pod"):
                    stream = f"pod/{groups['pod']}/{groups['container']}"
                elif groups.get("task"):
                    stream = stream or f"task {groups['task']}"
                line = line[m.end():]
                changed = True
    return line, stream


def _is_check(doc) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("checks"), list) and \
        (doc.get("schema") in SCHEMAS or ("gpus" in doc and "driver" in doc))


def parse_text(text: str, source: str) -> list[Row]:
    """Every check document in one file's text, each with its node's name."""
    streams: dict[str | None, list[tuple[int, str]]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line, stream = _strip(raw)
        streams.setdefault(stream, []).append((number, line))
    found: list[tuple[int, str | None, str | None, dict]] = []  # (line, marker node, stream, doc)
    decoder = json.JSONDecoder()
    for stream, lines in streams.items():
        node = None
        body = "\n".join(x for _, x in lines)  # the stream's text, decoded in place: linear in its size
        starts, at = [], 0
        for _, x in lines:
            starts.append(at)
            at += len(x) + 1
        i = 0
        while i < len(lines):
            number, line = lines[i]
            stripped = line.strip()
            if stripped.startswith(NODE_MARKER.strip()):
                node = stripped[len(NODE_MARKER.strip()):].strip() or None
                i += 1
                continue
            if stripped.startswith("{"):
                try:
                    doc, end = decoder.raw_decode(body, starts[i] + line.index("{"))
                except ValueError:
                    doc, end = None, 0
                if _is_check(doc):
                    found.append((number, node, stream, doc))
                    i = bisect.bisect_right(starts, end - 1)  # the line after the document's last
                    node = None  # a marker names the one document after it
                    continue
            i += 1
    rows = []
    single = len(found) == 1
    stem = Path(source).name.split(".")[0]
    for number, node, stream, doc in sorted(found, key=lambda f: f[0]):
        name = node or (stem if single and stream is None else None) \
            or (stream.split("/")[1] if stream and stream.startswith("pod/") else None) \
            or (f"{stem} {stream}" if stream else f"{stem}:{number}")
        rows.append(Row(node=name, source=f"{source}:{number}", doc=doc))
    return rows


def _files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            try:
                inside = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            except OSError as exc:
                raise UserError(f"{path}: cannot read the folder: {exc.strerror or exc}")
            files += inside
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def read(paths: list[Path]) -> list[Row]:
    """Rows from every file (a folder: every file under it); exit 2 when a file cannot be
    read or nothing holds a check document."""
    if not paths:
        raise UserError("name a file or folder of fleet check output", hint="e.g. kubectl logs ... > checks.log")
    rows: list[Row] = []
    for f in _files(paths):
        try:
            text = f.read_bytes().decode("utf-8", "replace")
        except OSError as exc:
            raise UserError(f"{f}: cannot read: {exc.strerror or exc}")
        rows += parse_text(text, str(f))
    if not rows:
        where = ", ".join(str(p) for p in paths)
        raise UserError(f"{where}: no envmgr check output found",
                        hint="collect `envmgr check --json` or the fleet check's logs (kubectl logs --prefix) into files")
    return latest(rows)


def latest(rows: list[Row]) -> list[Row]:
    """One row a node, in natural order: a node checked twice counts with its last report."""
    last: dict[str, Row] = {}
    for row in rows:
        last[row.node] = row
    return sorted(last.values(), key=lambda r: _natural(r.node))


def _natural(text: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text))


def summary(rows: list[Row]) -> dict:
    bad = [r for r in rows if not r.ok]
    return {"schema": "envmgr-cluster-report/1", "nodes": len(rows), "ok": len(rows) - len(bad), "failed": len(bad),
            "rows": [r.to_json() for r in rows],
            "cannot_run": [{"node": r.node, "why": [f"{c.get('name')}: {c.get('reason', '')}" for c in r.failed]
                            or ["the probe did not finish"]} for r in bad]}


_STATUS = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "skip": "[yellow]skip[/]", "": ""}


def render(console, rows: list[Row]) -> None:
    from rich.markup import escape
    from rich.table import Table

    used = [(name, p) for name, p in FAMILIES if any(r.family(p) for r in rows)]
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in ("node", "GPU", "driver", "torch", *(name for name, _ in used), "verdict"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(escape(r.node), escape(r.gpu), escape(r.driver), escape(r.torch),
                      *(_STATUS.get(r.family(p), r.family(p)) for _, p in used),
                      "[green]ok[/]" if r.ok else "[bold red]cannot run[/]")
    if not console.is_terminal:  # piped into a file or a log: a row stays one line, not wrapped at 80 columns
        from rich.console import Console

        console = Console(file=console.file, width=max(console.width, 200), soft_wrap=True)
    console.print(table)
    bad = [r for r in rows if not r.ok]
    console.print(f"{len(rows)} node(s): {len(rows) - len(bad)} ok, {len(bad)} cannot run the lock", highlight=False)
    for r in bad:
        why = [f"{c.get('name')}: {c.get('reason', '')}" for c in r.failed] or ["the probe did not finish"]
        console.print(f"  {escape(r.node)}: " + escape("; ".join(why)), highlight=False)
