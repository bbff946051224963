"""Tables for people: the check report, the doctor report. Plain data in, rich out."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

_STATUS = {"pass": "[green]PASS[/]", "fail": "[bold red]FAIL[/]", "skip": "[yellow]SKIP[/]"}


def _secs(value) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def render_check(console: Console, report: dict) -> None:
    t = report["target"]
    where = {"venv": f"venv of profile [bold]{escape(str(t['profile']))}[/]", "python": "interpreter",
             "image": f"image [bold]{escape(str(t['image']))}[/] via {t['engine']}"}[t["kind"]]
    console.print(f"envmgr check: {where}: {escape(t['python'])}", highlight=False)
    if report.get("expect_source"):
        console.print(f"  expected: {escape(report['expect_source'])}", highlight=False)
    for note in report.get("notes") or []:
        console.print(f"  note: {escape(note)}", highlight=False)
    torch = report.get("torch") or {}
    if torch:
        cuda = f"CUDA {torch['cuda']}" if torch.get("cuda") else "CPU build"
        console.print(f"  torch {escape(str(torch.get('version')))} ({cuda}); python {escape(str((report.get('python') or {}).get('version')))}",
                      highlight=False)
    drv = report.get("driver") or {}
    if drv.get("version") or drv.get("cuda"):
        from .probe import cuda_str

        console.print(f"  driver {drv.get('version') or '?'} (CUDA {cuda_str(drv.get('cuda')) or '?'})", highlight=False)
    for g in report.get("gpus") or []:
        cap = "sm_%d%d" % tuple(g["capability"]) if g.get("capability") else "?"
        console.print(f"  GPU {g['index']}: {escape(str(g.get('name')))} ({cap}, {g.get('memory_mib') or '?'} MiB)", highlight=False)
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("check")
    table.add_column("result")
    table.add_column("time", justify="right")
    table.add_column("detail", overflow="fold")
    for c in report["checks"]:
        table.add_row(escape(c["name"]), _STATUS.get(c["status"], c["status"]), _secs(c.get("seconds")), escape(c.get("reason") or ""))
    console.print(table)
    s = report["summary"]
    imp = f", import torch {report['import_s']:.2f} s" if report.get("import_s") else ""
    colour = "green" if report["ok"] else "bold red"
    console.print(f"[{colour}]{s['pass']} passed, {s['fail']} failed, {s['skip']} skipped[/] in {report['seconds']:.2f} s{imp}",
                  highlight=False)


def render_doctor(console: Console, data: dict) -> None:
    if data.get("driver"):
        cuda = data.get("cuda_driver_version") or "?"
        inferred = " (inferred from the driver version)" if data.get("cuda_source") == "inferred" else ""
        console.print(f"NVIDIA driver {data['driver']} (from {data['driver_source']}); newest CUDA it supports: {cuda}{inferred}",
                      highlight=False)
    else:
        console.print("No NVIDIA driver found (NVML, nvidia-smi, /proc/driver/nvidia): CPU only.", highlight=False)
    if data["gpus"]:
        gt = Table(show_edge=False, box=None, header_style="bold", pad_edge=False)
        for col in ("GPU", "name", "arch", "memory", "MIG"):
            gt.add_column(col)
        for g in data["gpus"]:
            mig = "-" if g["mig"] is None else ", ".join(f"{m['name'] or 'instance'} ({m['memory_mib'] or '?'} MiB)" for m in g["mig"]) or "enabled, no instances"
            gt.add_row(str(g["index"]), escape(g["name"]), g.get("arch") or "?",
                       f"{g['memory_mib']} MiB" if g.get("memory_mib") else "?", escape(mig))
        console.print(gt)
    elif data.get("driver"):
        console.print("No GPU detected.", highlight=False)
    for note in data.get("notes") or []:
        console.print(f"note: {escape(note)}", highlight=False)
    if data["profiles"]:
        pt = Table(title="Profiles", show_edge=False, box=None, header_style="bold", title_justify="left", pad_edge=False)
        for col in ("profile", "variant", "torch", "runs", "why / notes"):
            pt.add_column(col, overflow="fold")
        for p in data["profiles"]:
            mark = "[green]yes[/]" if p["runs"] else "[red]no[/]"
            if p["name"] == data.get("recommended_profile"):
                mark += " [bold](recommended)[/]"
            pt.add_row(escape(p["name"]), escape(str(p["variant"] or "?")), escape(str(p["torch"] or "?")), mark,
                       escape("; ".join(p["reasons"] or p["notes"])))
        console.print(pt)
    vt = Table(title="Variants (newest torch with each)", show_edge=False, box=None, header_style="bold", title_justify="left", pad_edge=False)
    for col in ("variant", "torch", "CUDA", "runs", "why / notes"):
        vt.add_column(col, overflow="fold")
    rocm = [v for v in data["variants"] if v["variant"].startswith("rocm")]
    for v in data["variants"]:
        if v["variant"].startswith("rocm"):
            continue
        mark = "[green]yes[/]" if v["runs"] else "[red]no[/]"
        if v["variant"] == data["recommended_variant"]:
            mark += " [bold](recommended)[/]"
        vt.add_row(v["variant"], v["torch"], v["cuda"] or "-", mark, escape("; ".join(v["reasons"] or v["notes"])))
    if rocm:
        vt.add_row("rocm*", f"{rocm[0]['torch']}..{rocm[-1]['torch']}", "-", "[red]no[/]" if not any(v["runs"] for v in rocm) else "yes",
                   escape(rocm[0]["reasons"][0] if rocm[0]["reasons"] else ""))
    console.print(vt)
    rec = data.get("recommended_profile")
    console.print(f"Recommended variant: [bold]{data['recommended_variant']}[/] ({escape(data['recommendation'])})", highlight=False)
    if rec:
        console.print(f"Recommended profile: [bold]{escape(rec)}[/]  (envmgr sync {escape(rec)} && envmgr check {escape(rec)})", highlight=False)
    else:
        console.print(f"No profile here runs on this machine: `envmgr init --variant auto NAME` writes one for {data['recommended_variant']}.",
                      highlight=False)
