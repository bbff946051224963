"""A base whose layers are zstd-compressed, as podman's zstd:chunked default on newer
Fedora/RHEL and ``skopeo copy --dest-compress-format zstd`` make them (issue 13): envmgr reads
it with its declared dependencies alone, exports onto it, and podman runs the result."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import image_fixtures as fx
import pytest

from envmgr.oci import layerfs


@pytest.fixture(scope="module")
def gzip_base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base")
    return fx.bookworm_layout(root / "bookworm", root / "cache")


def recompress(base: Path, dest: Path, fmt: str) -> Path:
    fx.need("skopeo")
    subprocess.run(["skopeo", "copy", "--dest-compress-format", fmt, f"oci:{base}", f"oci:{dest}"],
                   check=True, capture_output=True, timeout=600)
    return dest


def manifest_of(layout: Path) -> dict:
    digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]
    return json.loads((layout / "blobs" / "sha256" / digest).read_text())


@pytest.mark.podman
@pytest.mark.parametrize("fmt", ["zstd", "zstd:chunked"])
def test_zstd_base_exports_and_runs(fmt: str, gzip_base: Path, fixture_index, tmp_path: Path) -> None:
    base = recompress(gzip_base, tmp_path / "zbase", fmt)
    layers = manifest_of(base)["layers"]
    assert {layer["mediaType"] for layer in layers} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    if fmt == "zstd:chunked":
        assert any("io.containers.zstd-chunked.manifest-position" in (layer.get("annotations") or {}) for layer in layers)

    project = fx.write_project(tmp_path / "proj", fx.make_lock(fixture_index), image={"base": f"oci:{base}"})
    proc = fx.envmgr("export-image", "imgtest", "--output", str(tmp_path / "img.tar"), "--json", cwd=project)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    summary = json.loads(proc.stdout)

    fx.podman_ok()
    fx.podman("load", "-i", str(tmp_path / "img.tar"))
    image_id = summary["outputs"]["config"].split(":")[1]
    try:
        run = fx.podman("run", "--rm", image_id, "python", "-c", "import numpy, sys; print(sys.version_info[:2], numpy.__version__)")
        assert "(3, 11) 2.2.0" in run.stdout
    finally:
        fx.podman("rmi", "-f", image_id, check=False)


def test_every_frame_of_a_chunked_layer_is_read(tmp_path: Path) -> None:
    """zstd:chunked is many frames, one a file, then a skippable frame with its table of
    contents: every file of the layer is read, and the skippable frame is no tar data."""
    import io
    import tarfile

    import zstandard

    members = []
    for i in range(3):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
            data = f"file {i}\n".encode()
            info = tarfile.TarInfo(f"f{i}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        members.append(buf.getvalue()[:1024])  # one header block and one data block: no end-of-archive
    blob = b"".join(zstandard.ZstdCompressor().compress(m) for m in members)
    blob += zstandard.ZstdCompressor().compress(b"\0" * 1024)
    skippable = b"\x50\x2a\x4d\x18" + (8).to_bytes(4, "little") + b"toc!toc!"
    blob += skippable
    stream = layerfs.decompress(io.BytesIO(blob), "application/vnd.oci.image.layer.v1.tar+zstd")
    with tarfile.open(fileobj=stream, mode="r|") as tf:
        names = [m.name for m in tf]
    assert names == ["f0", "f1", "f2"]
