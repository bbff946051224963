"""The variant knowledge base (envmgr/data/variants.toml) and ``envmgr variants``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from envmgr.model.names import canonical
from envmgr.model.variants import driver_at_least, is_variant_name, kb, parse_torch_spec

REPO = Path(__file__).resolve().parents[1]
# (variant, torch minor) the knowledge base names but has no compiled-arch list for yet.
# (variant, torch minor) the knowledge base names but has no compiled-arch list for yet: these
# are inferred (the nearest known release of the variant) and say so.
ARCH_GAPS = {("cu132", "2.12"), ("cu132", "2.13"), ("cu132", "2.14")}


def envmgr(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "envmgr", "variants", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


# -- the data -----------------------------------------------------------------------------

def test_every_entry_is_consistent_and_sourced() -> None:
    k = kb()
    assert k.sources
    for minor, rel in k.torch.items():
        assert rel.source, minor
        assert rel.pypi_default in rel.variants, minor  # PyPI's build is one of the CUDA variants
        assert all(v in k.variant_cuda for v in rel.variants), minor
        assert rel.python == tuple(sorted(rel.python, key=lambda v: tuple(map(int, v.split("."))))), minor
        for v in rel.variants:
            cuda = k.cuda_of(v)
            assert cuda in k.cuda, (minor, v)
            if (v, minor) not in ARCH_GAPS:
                assert k.arch_list(v, f"{minor}.0") is not None, f"no arch list for {v} torch {minor}"
    for version, info in k.cuda.items():
        assert info.source and driver_at_least(info.toolkit_driver, info.min_driver), version
    for entry in k.arch:
        assert entry.source and entry.archs, entry
        assert not entry.ptx or entry.ptx in entry.archs, entry
    assert k.cuda_of("cpu") == ""
    assert "torch" in k.torch_family and "triton" in k.torch_family and "numpy" not in k.torch_family


def test_known_facts() -> None:
    k = kb()
    assert k.release("2.7.1+cu118").minor == "2.7"
    assert k.release("2.7.1").pypi_default == "cu126"
    assert k.index_url("cu126").endswith("/whl/cu126")
    f = k.facts("cu126", "2.7.1+cu126")
    assert (f.cuda, f.min_driver) == ("12.6", "525.60.13") and "sm_90" in f.arch_list
    f = k.facts("cu128", "2.7.1")
    assert f.ptx == "sm_120" and "sm_120" in f.arch_list
    assert k.facts("cpu", "2.7.1").arch_list == ()
    assert [r.minor for r in k.releases_admitted(">=2.7,<2.9")] == ["2.7", "2.8"]
    assert [r.minor for r in k.releases_admitted("2.7.1")] == ["2.7"]
    assert k.releases_admitted("==9.9") == []
    assert "cu118" in k.variants_for_driver("470.57") and "cu126" not in k.variants_for_driver("470.57")
    assert "cu130" in k.variants_for_driver("580.65.06")
    assert k.is_known_variant("rocm6.3") and not k.is_known_variant("cu999")
    assert is_variant_name("rocm6.2.4") and not is_variant_name("gpu")
    assert str(parse_torch_spec("2.7.1")) == "==2.7.1"
    with pytest.raises(ValueError):
        parse_torch_spec("latest")
    assert canonical("Typing_Extensions") == "typing-extensions"


# -- the command --------------------------------------------------------------------------

def test_variants_json() -> None:
    proc = envmgr("--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [r["torch"] for r in data["releases"]] == list(kb().torch)
    rel = next(r for r in data["releases"] if r["torch"] == "2.7")
    assert rel["pypi_default"] == "cu126" and rel["source"]
    v = {x["variant"]: x for x in rel["variants"]}
    assert set(v) >= {"cpu", "cu118", "cu126", "cu128"}
    assert v["cu126"]["cuda"] == "12.6" and v["cu126"]["min_driver"] == "525.60.13" and v["cu126"]["pypi_default"]
    assert v["cu118"]["index"].endswith("/whl/cu118")
    assert v["cpu"]["cuda"] == "" and v["cpu"]["arch_list"] == []
    assert v["cu126"]["sources"] and v["cu118"]["sources"][0] == "NV"  # every fact with its source
    assert data["cuda"]["12.6"]["source"] and data["sources"]


@pytest.mark.parametrize("spec,minors", [("2.7", ["2.7"]), ("2.7.1", ["2.7"]), (">=2.11", ["2.11", "2.12", "2.13", "2.14", "2.15"])])
def test_variants_torch_filter(spec: str, minors: list[str]) -> None:
    proc = envmgr("--torch", spec, "--json")
    assert proc.returncode == 0, proc.stderr
    assert [r["torch"] for r in json.loads(proc.stdout)["releases"]] == minors


def test_variants_table() -> None:
    proc = envmgr("--torch", "2.7")
    assert proc.returncode == 0, proc.stderr
    for word in ("2.7", "cu118", "cu126", "cu128", "525.60.13", "default", "Sources"):
        assert word in proc.stdout, word
    assert "│ 2.8 " not in proc.stdout and "│ 2.6 " not in proc.stdout


@pytest.mark.parametrize("spec,words", [("x>", "not a version or specifier"), ("9.9", "no torch release"),
                                        ("", None)])
def test_variants_bad_torch(spec: str, words: str | None) -> None:
    proc = envmgr("--torch", spec)
    if words is None:  # an empty filter is no filter
        assert proc.returncode == 0
        return
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --torch") and words in lines[0], proc.stderr
    assert proc.stdout == ""


def test_a_bad_torch_range_in_the_table_is_one_line_when_read():
    """Arch entries' torch specifiers are parsed when first used (a lock reads the table before
    its resolver starts without them); a bad one is still the table's one-line error."""
    import copy

    from envmgr.core.compat import tomllib
    from envmgr.core.errors import UserError
    from envmgr.model import variants

    raw = tomllib.loads(variants.BASE.read_text("utf-8"))
    bad = copy.deepcopy(raw)
    entry = next(e for e in bad["arch"] if e["variant"] == "cu126")
    entry["torch"] = ">=2.6,,<"
    table = variants.build(bad, where="/tmp/overlay.toml")
    assert table.cuda_of("cu126")  # the rest of the table reads as before
    with pytest.raises(UserError) as err:
        table.facts("cu126", "2.7.1")
    assert "bad entry" in err.value.message and "/tmp/overlay.toml" in err.value.message
    assert "\n" not in err.value.message
    assert variants.build(raw).facts("cu126", "2.7.1").arch_list  # the shipped table's ranges parse
