"""Tables of facts for people and bots: the variant knowledge base (``envmgr variants``)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..model.variants import kb


def variants_table(torch: str | None = None) -> dict:
    """The knowledge base as plain data, limited to the releases ``torch`` admits."""
    from ..core.errors import UserError

    k = kb()
    if torch:
        try:
            releases = k.releases_admitted(torch)
        except ValueError as exc:
            raise UserError(f"--torch: {exc}", hint="write a version (2.7) or a specifier (>=2.7)")
        if not releases:
            raise UserError(f"--torch {torch}: no torch release in the knowledge base matches",
                            hint=f"known: {', '.join(k.torch)}")
    else:
        releases = list(k.torch.values())
    rows = []
    for r in releases:
        variants = []
        for v in r.all_variants:
            facts = k.facts(v, f"{r.minor}.0")
            variants.append({
                "variant": v,
                "index": k.index_url(v),
                "cuda": facts.cuda,
                "min_driver": facts.min_driver,
                "toolkit_driver": facts.toolkit_driver,
                "arch_list": list(facts.arch_list),
                "ptx": facts.ptx,
                "pypi_default": v == r.pypi_default,
                # where the driver minimum and the arch list come from (keys of "sources" or text)
                "sources": list(facts.sources),
                # which of them no primary source gave (min-driver, toolkit-driver, arch-list, ptx)
                "inferred": list(facts.inferred),
            })
        rows.append({
            "torch": r.minor,
            "python": list(r.python),
            "pypi_default": r.pypi_default,
            "torchvision": r.torchvision,
            "torchaudio": r.torchaudio,
            "source": r.source,
            "variants": variants,
        })
    return {
        "releases": rows,
        "cuda": {c: {"min_driver": i.min_driver, "toolkit_driver": i.toolkit_driver, "source": i.source}
                 for c, i in k.cuda.items()},
        "sources": k.sources,
    }


def render_variants(console: Console, data: dict) -> None:
    table = Table(title="PyTorch variants (Linux x86_64)", show_lines=False)
    for col in ("torch", "python", "variant", "CUDA", "min driver", "GPU archs", "PyPI"):
        table.add_column(col)
    for r in data["releases"]:
        first = True
        for v in r["variants"]:
            if v["variant"].startswith("rocm") and not first:
                continue
            archs = " ".join(a.removeprefix("sm_") for a in v["arch_list"]) + (f" +PTX {v['ptx'].removeprefix('sm_')}" if v["ptx"] else "")
            if archs and "arch-list" in v["inferred"]:
                archs += " (inferred)"
            driver = (v["min_driver"] + " (inferred)") if v["min_driver"] and "min-driver" in v["inferred"] else v["min_driver"]
            table.add_row(
                r["torch"] if first else "",
                f"{r['python'][0]}-{r['python'][-1]}" if first else "",
                v["variant"] if not v["variant"].startswith("rocm") else "rocm " + ", ".join(x["variant"][4:] for x in r["variants"] if x["variant"].startswith("rocm")),
                v["cuda"] or "-",
                driver or "-",
                archs or "-",
                "default" if v["pypi_default"] else "",
            )
            first = False
    console.print(table)
    console.print("Sources: " + "; ".join(f"[{k}] {v}" for k, v in data["sources"].items()), highlight=False, markup=False)
