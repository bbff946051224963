"""envmgr.report.export and envmgr.report.sbom on crafted locks, and ``envmgr export`` through the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from test_diff import HOST, PYPI_URL, make_lock
from test_diff_cli import envmgr, one_line_error, write_lock

from envmgr.core import urls
from envmgr.core.errors import LockFileError, UserError
from envmgr.model.lockfile import loads
from envmgr.report import export, sbom


def requirement_blocks(text: str) -> dict[str, list[str]]:
    """``name==version`` line -> its --hash options."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in text.replace(" \\\n", "\n").splitlines():
        stripped = line.strip()
        if stripped.startswith("--hash="):
            blocks[current].append(stripped)
        elif stripped and not stripped.startswith(("#", "--")):
            current = stripped
            blocks[current] = []
    return blocks


# -- requirements -------------------------------------------------------------------------

def test_requirements_have_index_lines_labels_and_every_hash():
    lock = make_lock(variant="cu128", torch="2.7.1")
    text = export.requirements(lock)
    lines = text.splitlines()
    assert f"--index-url {PYPI_URL}" in lines
    assert f"--extra-index-url {HOST}/whl/cu128" in lines
    assert lines.index(f"--index-url {PYPI_URL}") < lines.index(f"--extra-index-url {HOST}/whl/cu128")
    blocks = requirement_blocks(text)
    assert set(blocks) == {f"{p.key}=={p.version}" for p in lock.packages}
    assert blocks["torch==2.7.1+cu128"] == [f"--hash=sha256:{lock.package('torch').install_file.sha256}"]
    assert "pip install --require-hashes" in text
    assert lock.digest() in text


def test_requirements_list_every_file_hash_and_markers():
    lock = make_lock()
    torch = lock.package("torch")
    two = replace(torch, wheels=torch.wheels + (replace(torch.wheels[0], url=torch.wheels[0].url.replace("cp311", "cp312"), sha256="ab" * 32),),
                  marker="sys_platform == 'linux'")
    text = export.requirements(lock.with_packages([p for p in lock.packages if p.key != "torch"] + [two]))
    blocks = requirement_blocks(text)
    (line,) = [k for k in blocks if k.startswith("torch==")]
    assert line == "torch==2.7.0+cu126 ; sys_platform == 'linux'"
    assert sorted(blocks[line]) == sorted([f"--hash=sha256:{torch.wheels[0].sha256}", f"--hash=sha256:{'ab' * 32}"])


def test_default_index_keyword_gives_no_index_url_line():
    lock = make_lock()
    lock = lock.with_packages([replace(p, index="pypi") if p.index == PYPI_URL else p for p in lock.packages])
    lines = export.requirements(lock).splitlines()
    assert not any(line.startswith("--index-url") for line in lines)
    assert f"--extra-index-url {HOST}/whl/cu126" in lines


@pytest.mark.parametrize(
    ("url", "written", "stripped"),
    [
        ("https://idx.example.invalid/simple", "https://idx.example.invalid/simple", False),
        ("https://user:s3cret@idx.example.invalid/simple", "https://idx.example.invalid/simple", True),
        ("https://tok3n@idx.example.invalid/simple", "https://idx.example.invalid/simple", True),
        ("https://user:${TOKEN}@idx.example.invalid/simple", "https://user:${TOKEN}@idx.example.invalid/simple", False),
        ("https://${USER}:${TOKEN}@idx.example.invalid/simple", "https://${USER}:${TOKEN}@idx.example.invalid/simple", False),
    ],
)
def test_credentials_never_written(url, written, stripped):
    assert export.safe_url(url) == (written, stripped)


def test_literal_credentials_removed_from_requirements():
    lock = make_lock()
    secret = "https://bot:hunter2@private.example.invalid/simple"
    lock = lock.with_packages([replace(p, index=secret) if p.key == "numpy" else p for p in lock.packages])
    text = export.requirements(lock)
    assert "hunter2" not in text and "bot:" not in text
    assert "--extra-index-url https://private.example.invalid/simple" in text
    assert "# credentials removed from https://private.example.invalid/simple" in text


def test_hand_edited_lock_is_refused():
    lock = make_lock()
    numpy = lock.package("numpy")
    edited = lock.with_packages([p for p in lock.packages if p.key != "numpy"] + [replace(numpy, version="2.3.0")])
    for fmt in export.FORMATS:
        with pytest.raises(LockFileError, match="package numpy 2.3.0 does not match its file"):
            export.render(edited, fmt)


# -- pylock -------------------------------------------------------------------------------

def test_pylock_round_trips():
    lock = make_lock(variant="cu128", torch="2.7.1")
    text = export.render(lock, "pylock")
    assert text.startswith("# envmgr lock for profile 'gpu'")
    assert loads(text) == lock


def test_pylock_output_name_checked(tmp_path):
    export.check_format("pylock", tmp_path / "pylock.toml")
    export.check_format("pylock", tmp_path / "pylock.gpu.toml")
    export.check_format("requirements", tmp_path / "requirements.txt")
    with pytest.raises(UserError, match="must be named pylock.toml or pylock.NAME.toml"):
        export.check_format("pylock", tmp_path / "gpu.lock")
    with pytest.raises(UserError, match="unknown export format 'csv'"):
        export.check_format("csv")


# -- CycloneDX ----------------------------------------------------------------------------

def test_sbom_validates_against_the_schema():
    text = sbom.cyclonedx_json(make_lock(variant="cu128", torch="2.7.1"))
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    sbom.validate(text)
    with pytest.raises(UserError, match="does not validate"):
        sbom.validate(text.replace('"bomFormat": "CycloneDX"', '"bomFormat": "SPDX"'))


def test_sbom_components_hashes_sources_and_gpu_facts():
    lock = make_lock(variant="cu128", torch="2.7.1")
    data = json.loads(sbom.cyclonedx_json(lock))
    assert data["specVersion"] == "1.6"
    comps = {c["name"]: c for c in data["components"]}
    assert set(comps) == {p.key for p in lock.packages}
    torch = comps["torch"]
    f = lock.package("torch").install_file
    assert torch["version"] == "2.7.1+cu128"
    assert torch["purl"] == f"pkg:pypi/torch@2.7.1%2Bcu128?repository_url={HOST}/whl/cu128"
    assert torch["hashes"] == [{"alg": "SHA-256", "content": f.sha256}]
    (ref,) = torch["externalReferences"]
    assert ref["type"] == "distribution" and ref["url"] == f.url and ref["hashes"][0]["content"] == f.sha256
    props = lambda c: {p["name"]: p["value"] for p in c.get("properties", [])}  # noqa: E731
    assert props(comps["nvidia-cudnn-cu12"])["envmgr:gpu-runtime"] == "true"
    assert "envmgr:gpu-runtime" not in props(comps["numpy"])
    assert props(torch)["envmgr:torch-family"] == "true"
    meta = props(data["metadata"])
    assert meta["envmgr:variant"] == "cu128"
    assert meta["envmgr:cuda"] == "12.8"
    assert meta["envmgr:min-driver"] == "525.60.13"
    assert meta["envmgr:arch-list"] == "sm_75 sm_80 sm_86 sm_90 sm_100 sm_120"
    assert meta["envmgr:ptx"] == "sm_120"
    assert meta["envmgr:gpu-runtime-components"] == (
        "nvidia-cuda-runtime-cu12==12.8.90 nvidia-cudnn-cu12==9.7.1.26 nvidia-nccl-cu12==2.26.2"
    )
    assert meta["envmgr:lock-digest"] == lock.digest()
    # The root depends on every package.
    root = next(d for d in data["dependencies"] if d["ref"] == data["metadata"]["component"]["bom-ref"])
    assert len(root["dependsOn"]) == len(lock.packages)


def test_sbom_is_deterministic_without_timestamp():
    lock = make_lock()
    a, b = sbom.cyclonedx_json(lock), sbom.cyclonedx_json(make_lock())
    assert a == b
    data = json.loads(a)
    assert "timestamp" not in data["metadata"]
    other = json.loads(sbom.cyclonedx_json(make_lock(torch="2.7.1")))
    assert other["serialNumber"] != data["serialNumber"]
    stamped = json.loads(sbom.cyclonedx_json(lock, timestamp=datetime(2025, 1, 2, tzinfo=timezone.utc)))
    assert stamped["metadata"]["timestamp"].startswith("2025-01-02T00:00:00")
    assert stamped["serialNumber"] == data["serialNumber"]


def test_sbom_cpu_lock_and_default_index_purls():
    lock = make_lock(profile="cpu", variant="cpu")
    lock = lock.with_packages([replace(p, index="pypi") if p.index == PYPI_URL else p for p in lock.packages])
    data = json.loads(sbom.cyclonedx_json(lock))
    meta = {p["name"]: p["value"] for p in data["metadata"]["properties"]}
    assert meta["envmgr:cuda"] == "none" and meta["envmgr:arch-list"] == "none"
    numpy = next(c for c in data["components"] if c["name"] == "numpy")
    assert numpy["purl"] == "pkg:pypi/numpy@2.2.0"
    sbom.validate(json.dumps(data))


def test_sbom_strips_credentials():
    lock = make_lock()
    secret = "https://bot:hunter2@private.example.invalid/simple"
    lock = lock.with_packages([replace(p, index=secret) if p.key == "numpy" else p for p in lock.packages])
    assert "hunter2" not in sbom.cyclonedx_json(lock)


# -- CLI ----------------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path):
    project = tmp_path / "proj"
    (project / "profiles").mkdir(parents=True)
    write_lock(project, make_lock(variant="cu128", torch="2.7.1"))
    return project


def test_cli_export_each_format(project, tmp_path):
    res = envmgr(project, "export", "gpu")
    assert res.returncode == 0, res.stderr
    assert "torch==2.7.1+cu128" in res.stdout and f"--extra-index-url {HOST}/whl/cu128" in res.stdout
    res = envmgr(project, "export", "gpu", "--format", "cyclonedx")
    assert res.returncode == 0, res.stderr
    sbom.validate(res.stdout)
    out = tmp_path / "pylock.toml"
    res = envmgr(project, "export", "gpu", "-f", "pylock", "-o", str(out))
    assert res.returncode == 0 and res.stdout == "", res.stderr
    assert loads(out.read_text()).pins == make_lock(variant="cu128", torch="2.7.1").pins
    other = tmp_path / "elsewhere" / "pylock.x.toml"
    other.parent.mkdir()
    other.write_text(out.read_text())
    res = envmgr(project, "export", "--lock", str(other))
    assert res.returncode == 0 and "torch==2.7.1+cu128" in res.stdout


def test_cli_export_bad_inputs(project, tmp_path):
    one_line_error(envmgr(project, "export", "gpu", "--format", "csv"), "unknown export format 'csv'")
    one_line_error(envmgr(project, "export", "missing"), "no such lock")
    one_line_error(envmgr(project, "export", "gpu", "-f", "pylock", "-o", str(tmp_path / "out.toml")), "pylock.toml")
    path = project / "locks" / "pylock.gpu.toml"
    good = path.read_text()
    path.write_text('lock-version = "2.0"\npackages = []\n')
    one_line_error(envmgr(project, "export", "gpu"), "not a PEP 751 lock")
    path.write_text(good.replace('profile = "gpu"\nfingerprint = "sha256:', 'profile = "gpu"\nfingerprint = "sha256:00'))
    one_line_error(envmgr(project, "export", "gpu", "-f", "cyclonedx"), "fingerprint does not match")
    path.write_text(good.replace('version = "9.7.1.26"', 'version = "9.8.0.1"'))
    one_line_error(envmgr(project, "export", "gpu"), "package nvidia-cudnn-cu12 9.8.0.1 does not match its file")


def test_only_references_pip_expands_are_kept():
    # pip expands ${UPPER_CASE} only: any other "reference" is written nowhere, like a secret
    assert export.safe_url("https://${tok}@idx.example.invalid/simple") == ("https://idx.example.invalid/simple", True)
    assert urls.strip_secrets("https://${tok}@idx.example.invalid/simple") == ("https://${tok}@idx.example.invalid/simple", False)
    assert urls.strip_secrets("https://${USER}:${TOKEN}@idx.example.invalid/s", refs=None) == ("https://idx.example.invalid/s", True)
