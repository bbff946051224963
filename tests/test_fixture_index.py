"""Proof that the fixture index is real: uv and pip resolve, download and
install from it, and its pages have the shapes they imitate."""

from __future__ import annotations

import base64
import csv
import hashlib
import http.client
import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest
from fixture_index import (
    CUDA_OF_VARIANT,
    MISSING_HASH_FILE,
    PYPI,
    TORCH,
    TORCH_VARIANTS,
    WRONG_HASH_FILE,
    FixtureIndex,
    Release,
    build_wheel,
    default_catalogue,
    iter_anchors,
    sha256_hex,
    wheel_filename,
)

JSON_ACCEPT = "application/vnd.pypi.simple.v1+json"
TORCH_CP311 = "torch-2.7.1+cu118-cp311-cp311-manylinux_2_28_x86_64.whl"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def uv_bin() -> str:
    uv = pytest.importorskip("uv")
    return uv.find_uv_bin()


def run(
    *args: object, input: str | None = None, check: bool = True, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess:
    """Run a command with the (hermetic) test environment plus ``env``."""
    proc = subprocess.run(
        [str(a) for a in args],
        input=input,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{args} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def fetch(url: str, accept: str | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, method=method)
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def anchors(url: str) -> dict[str, dict[str, str]]:
    status, _, body = fetch(url + "/")
    assert status == 200, url
    return {a["text"]: a for a in iter_anchors(body)}


def pinned_hashes(lock_text: str) -> dict[str, list[str]]:
    """``{"name==version": [sha256, ...]}`` from a requirements file with hashes."""
    out: dict[str, list[str]] = {}
    current = None
    for line in lock_text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+==\S+)", line)
        if match:
            current = match.group(1)
            out[current] = []
        for digest in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            out[current].append(digest)
    return out


# ---------------------------------------------------------------------------
# wheels
# ---------------------------------------------------------------------------


def test_build_wheel_is_deterministic(tmp_path: Path) -> None:
    kwargs = dict(
        requires=["numpy>=2", 'triton==3.3.1 ; platform_system == "Linux"'],
        python_tag="cp311",
        abi_tag="cp311",
        platform_tag="manylinux_2_28_x86_64",
        files={"torch/version.py": 'cuda = "11.8"\n'},
        console_scripts={"torchrun": "torch.distributed.run:main"},
        requires_python=">=3.9",
        extra_size=5000,
    )
    first = build_wheel(tmp_path / "a", "torch", "2.7.1+cu118", **kwargs)
    second = build_wheel(tmp_path / "b", "torch", "2.7.1+cu118", **kwargs)
    assert first.name == TORCH_CP311
    assert first.read_bytes() == second.read_bytes()


def test_build_wheel_contents_and_record(tmp_path: Path) -> None:
    path = build_wheel(
        tmp_path,
        "Typing.Extensions",
        "4.12.2",
        requires=["numpy ; python_version >= '3.10'"],
        requires_python=">=3.8",
        console_scripts=["te-tool"],
        extra_size=1234,
    )
    assert path.name == "typing_extensions-4.12.2-py3-none-any.whl"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        dist_info = [n for n in names if n.startswith("typing_extensions-4.12.2.dist-info/")]
        package = [n for n in names if n not in dist_info]
        assert names == sorted(package) + sorted(dist_info[:-1]) + dist_info[-1:]  # dist-info last
        assert names[-1] == "typing_extensions-4.12.2.dist-info/RECORD"
        metadata = archive.read("typing_extensions-4.12.2.dist-info/METADATA").decode()
        assert "Metadata-Version: 2.1\n" in metadata
        assert "Name: Typing.Extensions\n" in metadata
        assert "Requires-Python: >=3.8\n" in metadata
        assert "Requires-Dist: numpy ; python_version >= '3.10'\n" in metadata
        assert "Root-Is-Purelib: true" in archive.read("typing_extensions-4.12.2.dist-info/WHEEL").decode()
        assert "te-tool = typing_extensions.__main__:main" in archive.read(
            "typing_extensions-4.12.2.dist-info/entry_points.txt"
        ).decode()
        assert len(archive.read("typing_extensions/_payload.bin")) == 1234
        for info in archive.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
        rows = list(csv.reader(io.StringIO(archive.read(names[-1]).decode())))
        assert {row[0] for row in rows} == set(names)
        for name, digest, size in rows:
            if name.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = archive.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={expected}"
            assert int(size) == len(data)


def test_wheel_filename_keeps_local_label() -> None:
    assert wheel_filename("nvidia-cudnn-cu12", "9.5.1.17", "py3", "none", "manylinux2014_x86_64") == (
        "nvidia_cudnn_cu12-9.5.1.17-py3-none-manylinux2014_x86_64.whl"
    )
    assert wheel_filename("torchvision", "0.22.1+cu118", "cp311", "cp311", "x") == (
        "torchvision-0.22.1+cu118-cp311-cp311-x.whl"
    )


def test_build_and_serve_is_fast(tmp_path: Path) -> None:
    start = time.perf_counter()
    index = FixtureIndex(tmp_path)
    try:
        status, _, _ = fetch(index.pypi_url + "/")
    finally:
        index.stop()
    assert status == 200
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------------------
# catalogue
# ---------------------------------------------------------------------------


def test_catalogue_torch_builds(fixture_index: FixtureIndex) -> None:
    for variant in TORCH_VARIANTS:
        torch = fixture_index.listings(TORCH, variant, "torch")
        assert sorted({item.version for item in torch}) == [f"2.7.0+{variant}", f"2.7.1+{variant}"]
        assert {item.filename.split("-")[2] for item in torch} == {"cp311", "cp312"}
        vision = fixture_index.listings(TORCH, variant, "torchvision")
        assert sorted({item.version for item in vision}) == [f"0.22.0+{variant}", f"0.22.1+{variant}"]
        listed = {(i.project, i.version) for i in fixture_index.listings(TORCH, variant)}
        assert {("numpy", "1.26.0"), ("typing-extensions", "4.10.0"), ("filelock", "3.0.0")} <= listed
        cuda_only = {p for p, _ in listed if p.startswith(("nvidia-", "triton"))}
        assert bool(cuda_only) == (CUDA_OF_VARIANT[variant] is not None)
    cu118 = {(i.project, i.version) for i in fixture_index.listings(TORCH, "cu118")}
    assert {("triton", "3.3.0"), ("triton", "3.3.1"), ("nvidia-cuda-runtime-cu11", "11.8.89")} <= cu118
    pypi = {(i.project, i.version) for i in fixture_index.listings(PYPI)}
    assert {
        ("numpy", "2.1.0"),
        ("numpy", "2.2.0"),
        ("fixture-app", "1.1.0"),
        ("torch", "2.7.1"),
        ("torch", "99.0.0"),
        ("torchvision", "0.22.1"),
        ("nvidia-nccl-cu12", "2.26.2"),
        ("triton", "3.3.1"),
    } <= pypi
    assert ("numpy", "9.0.0") not in pypi | cu118


def test_torch_upgrade_moves_cudnn_and_nccl(fixture_index: FixtureIndex) -> None:
    def requires(filename: str) -> list[str]:
        with zipfile.ZipFile(fixture_index.wheel_path(filename)) as archive:
            meta = archive.read(f"{filename.split('-')[0]}-{filename.split('-')[1]}.dist-info/METADATA").decode()
        return [line[len("Requires-Dist: ") :] for line in meta.splitlines() if line.startswith("Requires-Dist: ")]

    old = requires("torch-2.7.0+cu126-cp311-cp311-manylinux_2_28_x86_64.whl")
    new = requires("torch-2.7.1+cu126-cp311-cp311-manylinux_2_28_x86_64.whl")
    marker = ' ; platform_system == "Linux" and platform_machine == "x86_64"'
    assert "nvidia-cudnn-cu12==9.5.1.17" + marker in new
    assert "nvidia-nccl-cu12==2.26.2" + marker in new
    assert "triton==3.3.1" + marker in new
    assert {"filelock", "typing-extensions>=4.10.0", "numpy"} <= set(new)
    assert "nvidia-cudnn-cu12==9.5.1.17" + marker not in old
    assert "nvidia-nccl-cu12==2.21.5" + marker in old
    assert "triton==3.3.0" + marker in old
    assert requires("torch-2.7.1+cpu-cp311-cp311-manylinux_2_28_x86_64.whl") == [
        "filelock",
        "typing-extensions>=4.10.0",
        "numpy",
    ]
    assert requires("torchvision-0.22.1+cu128-cp311-cp311-manylinux_2_28_x86_64.whl") == [
        "numpy",
        "torch==2.7.1+cu128",
    ]


def test_catalogue_can_be_extended(tmp_path: Path) -> None:
    catalogue = [r for r in default_catalogue() if r.index == PYPI]
    catalogue.append(Release(PYPI, "extra-thing", "0.1.0", wheel={"requires": ["numpy"]}))
    with FixtureIndex(tmp_path, catalogue) as index:
        assert [i.filename for i in index.listings(PYPI, project="extra-thing")] == [
            "extra_thing-0.1.0-py3-none-any.whl"
        ]
        assert fetch(index.torch_url("cu118") + "/torch/")[0] == 404


# ---------------------------------------------------------------------------
# pages
# ---------------------------------------------------------------------------


def test_torch_project_page_shape(fixture_index: FixtureIndex) -> None:
    status, headers, body = fetch(fixture_index.torch_url("cu118") + "/torch/", accept=JSON_ACCEPT)
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")  # HTML only, like PyTorch's
    links = {a["text"]: a for a in iter_anchors(body)}
    assert set(links) == {
        f"torch-{v}+cu118-{py}-{py}-manylinux_2_28_x86_64.whl" for v in ("2.7.0", "2.7.1") for py in ("cp311", "cp312")
    }
    link = links[TORCH_CP311]
    wheel = fixture_index.wheel_path(TORCH_CP311)
    assert link["href"] == f"../../files/torch-2.7.1%2Bcu118-cp311-cp311-manylinux_2_28_x86_64.whl#sha256={sha256_hex(wheel.read_bytes())}"
    assert "data-requires-python" not in link
    assert link["data-core-metadata"] == link["data-dist-info-metadata"]
    assert link["data-core-metadata"].startswith("sha256=")


def test_pypi_project_page_shape(fixture_index: FixtureIndex) -> None:
    status, headers, body = fetch(fixture_index.pypi_url + "/numpy/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'data-requires-python="&gt;=3.10"' in body
    links = {a["text"]: a for a in iter_anchors(body)}
    assert set(links) == {"numpy-2.1.0-py3-none-any.whl", "numpy-2.2.0-py3-none-any.whl"}
    assert links["numpy-2.2.0-py3-none-any.whl"]["data-requires-python"] == ">=3.10"
    # non-normalised project names reach the same page
    assert fetch(fixture_index.pypi_url + "/Typing_Extensions/")[2] == fetch(fixture_index.pypi_url + "/typing-extensions/")[2]


def test_pypi_json_api(fixture_index: FixtureIndex) -> None:
    status, headers, body = fetch(fixture_index.pypi_url + "/fixture-app/", accept=JSON_ACCEPT)
    assert status == 200 and headers["Content-Type"] == JSON_ACCEPT
    doc = json.loads(body)
    assert doc["meta"]["api-version"] == "1.1"
    assert doc["versions"] == ["1.0.0", "1.1.0"]
    entry = {f["filename"]: f for f in doc["files"]}["fixture_app-1.1.0-py3-none-any.whl"]
    path = fixture_index.wheel_path(entry["filename"])
    assert entry["size"] == path.stat().st_size
    assert entry["hashes"] == {"sha256": sha256_hex(path.read_bytes())}
    assert entry["requires-python"] == ">=3.9"
    assert entry["url"] == "../../files/fixture_app-1.1.0-py3-none-any.whl"
    # HTML still wins when the client prefers it
    accept = f"text/html, {JSON_ACCEPT};q=0.5"
    assert fetch(fixture_index.pypi_url + "/fixture-app/", accept=accept)[1]["Content-Type"].startswith("text/html")
    root = json.loads(fetch(fixture_index.pypi_url + "/", accept=JSON_ACCEPT)[2])
    assert {"name": "fixture-app"} in root["projects"]


def test_root_listings(fixture_index: FixtureIndex) -> None:
    cpu = anchors(fixture_index.torch_url("cpu"))
    assert {"torch", "torchvision", "numpy", "filelock", "typing-extensions"} == set(cpu)
    assert cpu["torch"]["href"] == "torch/"
    cu126 = anchors(fixture_index.torch_url("cu126"))
    assert {"triton", "nvidia-cudnn-cu12", "nvidia-nccl-cu12", "nvidia-cuda-runtime-cu12"} <= set(cu126)
    assert "fixture-app" in anchors(fixture_index.pypi_url)
    assert fetch(fixture_index.url + "/whl/cu999/")[0] == 404


def test_metadata_endpoint_matches_attribute(fixture_index: FixtureIndex) -> None:
    link = anchors(fixture_index.torch_url("cu118") + "/torch")[TORCH_CP311]
    url = urllib.parse.urljoin(fixture_index.torch_url("cu118") + "/torch/", link["href"].split("#")[0])
    assert url == fixture_index.file_url(TORCH_CP311)
    url += ".metadata"
    status, _, metadata = fetch(url)
    assert status == 200
    assert link["data-core-metadata"] == f"sha256={sha256_hex(metadata)}"
    with zipfile.ZipFile(fixture_index.wheel_path(TORCH_CP311)) as archive:
        assert archive.read("torch-2.7.1+cu118.dist-info/METADATA") == metadata
    assert b"Requires-Python: >=3.9.0" in metadata


def test_missing_and_wrong_hash(fixture_index: FixtureIndex) -> None:
    missing = anchors(fixture_index.torch_url("cu126") + "/torch")[MISSING_HASH_FILE]
    assert "#" not in missing["href"]
    assert fixture_index.listing(TORCH, "cu126", MISSING_HASH_FILE).published_sha256 is None

    wrong = anchors(fixture_index.torch_url("cu118") + "/torchvision")[WRONG_HASH_FILE]
    published = wrong["href"].split("#sha256=")[1]
    real = sha256_hex(fixture_index.wheel_path(WRONG_HASH_FILE).read_bytes())
    assert re.fullmatch(r"[0-9a-f]{64}", published) and published != real
    assert fixture_index.listing(TORCH, "cu118", WRONG_HASH_FILE).sha256 == real

    # every other torch-index file publishes its true hash
    for item in fixture_index.listings(TORCH):
        if item.filename not in (MISSING_HASH_FILE, WRONG_HASH_FILE):
            assert item.published_sha256 == item.sha256


def test_head_and_not_found(fixture_index: FixtureIndex) -> None:
    url = fixture_index.file_url(TORCH_CP311)
    assert "%2B" in url
    status, headers, body = fetch(url, method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) == fixture_index.wheel_path(TORCH_CP311).stat().st_size
    assert fetch(fixture_index.pypi_url + "/no-such-project/")[0] == 404
    assert fetch(fixture_index.url + "/whl/files/../../../etc/passwd")[0] == 404


# ---------------------------------------------------------------------------
# log, mutation and faults (fresh_index)
# ---------------------------------------------------------------------------


def test_request_log(fresh_index: FixtureIndex) -> None:
    fresh_index.clear_log()
    fetch(fresh_index.pypi_url + "/numpy/")
    fetch(fresh_index.file_url("numpy-2.2.0-py3-none-any.whl") + ".metadata")
    fetch(fresh_index.file_url("numpy-2.2.0-py3-none-any.whl"))
    fetch(fresh_index.file_url("numpy-2.2.0-py3-none-any.whl"), method="HEAD")
    assert [(r.method, r.kind, r.status) for r in fresh_index.requests] == [
        ("GET", "project", 200),
        ("GET", "metadata", 200),
        ("GET", "wheel", 200),
        ("HEAD", "wheel", 200),
    ]
    assert [r.path for r in fresh_index.wheel_downloads()] == ["/files/numpy-2.2.0-py3-none-any.whl"]
    assert len(fresh_index.metadata_fetches()) == 1 and len(fresh_index.page_fetches()) == 1
    fresh_index.clear_log()
    assert fresh_index.requests == []


def test_add_and_remove_regenerate_pages(fresh_index: FixtureIndex) -> None:
    path = fresh_index.add(
        TORCH,
        "cu118",
        "torch",
        "2.7.2+cu118",
        python_tag="cp311",
        abi_tag="cp311",
        platform_tag="manylinux_2_28_x86_64",
        requires=["numpy"],
    )
    assert path.name in anchors(fresh_index.torch_url("cu118") + "/torch")
    assert path.name not in anchors(fresh_index.torch_url("cu126") + "/torch")
    fresh_index.add(PYPI, None, "brand-new", "1.0")
    assert "brand-new" in anchors(fresh_index.pypi_url)
    assert fresh_index.remove(TORCH, "cu118", "torch", "2.7.2+cu118") == 1
    assert path.name not in anchors(fresh_index.torch_url("cu118") + "/torch")
    assert fresh_index.remove(PYPI, None, "brand-new") == 1
    assert fetch(fresh_index.pypi_url + "/brand-new/")[0] == 404


def test_offline_and_back(fresh_index: FixtureIndex) -> None:
    url = fresh_index.pypi_url + "/"
    fresh_index.set_offline(True)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    fresh_index.set_offline(False)
    assert fresh_index.pypi_url + "/" == url  # same port again
    assert fetch(url)[0] == 200


def test_credentials(fresh_index: FixtureIndex) -> None:
    fresh_index.credentials = ("alice", "s3cret")
    status, headers, _ = fetch(fresh_index.pypi_url + "/numpy/")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    request = urllib.request.Request(fresh_index.pypi_url + "/numpy/")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"alice:s3cret").decode())
    assert urllib.request.urlopen(request, timeout=5).status == 200
    assert fresh_index.with_credentials(fresh_index.pypi_url).startswith("http://alice:s3cret@127.0.0.1:")
    assert [r.status for r in fresh_index.requests][-2:] == [401, 200]


def test_fail_after_bytes(fresh_index: FixtureIndex) -> None:
    url = fresh_index.file_url("numpy-2.2.0-py3-none-any.whl")
    fresh_index.fail_after_bytes(100, times=1)
    with pytest.raises(http.client.IncompleteRead):
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
    assert fetch(url)[2] == fresh_index.wheel_path("numpy-2.2.0-py3-none-any.whl").read_bytes()
    assert [r.truncated for r in fresh_index.wheel_downloads()] == [True, False]


# ---------------------------------------------------------------------------
# real clients: uv, pip, pip-tools
# ---------------------------------------------------------------------------


def test_hermetic_env() -> None:
    assert os.environ["PIP_CONFIG_FILE"] == os.devnull
    assert os.environ["PIP_NO_INPUT"] == "1"
    assert os.environ["UV_NO_CONFIG"] == "1"
    assert Path(os.environ["ENVMGR_CACHE_DIR"]).is_dir()
    allowed = {"PIP_CONFIG_FILE", "PIP_NO_INPUT", "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_CACHE_DIR"}
    allowed |= {"UV_CACHE_DIR", "UV_NO_CONFIG", "UV_PYTHON_DOWNLOADS", "ENVMGR_CACHE_DIR"}
    assert {k for k in os.environ if k.startswith(("PIP_", "UV_", "ENVMGR_"))} == allowed


def test_uv_pip_compile_resolves_fixture_app(fixture_index: FixtureIndex, uv_bin: str) -> None:
    proc = run(
        uv_bin, "pip", "compile", "-", "--index-url", fixture_index.pypi_url,
        "--generate-hashes", "--python-version", "3.11", "--no-header",
        input="fixture-app\n",
    )  # fmt: skip
    pins = pinned_hashes(proc.stdout)
    assert set(pins) == {"fixture-app==1.1.0", "numpy==2.2.0"}
    for pin, filename in (
        ("fixture-app==1.1.0", "fixture_app-1.1.0-py3-none-any.whl"),
        ("numpy==2.2.0", "numpy-2.2.0-py3-none-any.whl"),
    ):
        assert pins[pin] == [sha256_hex(fixture_index.wheel_path(filename, PYPI).read_bytes())]


def test_uv_installs_torch_cu118(fixture_index: FixtureIndex, uv_bin: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(uv_bin, "venv", venv, "--python", sys.executable)
    python = venv / "bin" / "python"
    run(uv_bin, "pip", "install", "--python", python, "--index-url", fixture_index.torch_url("cu118"), "torch==2.7.1+cu118")
    proc = run(python, "-c", "import torch; print(torch.__version__, torch.version.cuda)")
    assert proc.stdout.strip() == "2.7.1+cu118 11.8"
    assert run(venv / "bin" / "torchrun").stdout.strip() == "torchrun (fixture) 2.7.1+cu118"
    frozen = run(uv_bin, "pip", "freeze", "--python", python).stdout.split()
    assert "nvidia-cudnn-cu11==9.1.0.70" in frozen and "triton==3.3.1" in frozen
    assert "numpy==1.26.0" in frozen  # only the stale mirror is on this index


def test_uv_install_fixture_app_console_script(fixture_index: FixtureIndex, uv_bin: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(uv_bin, "venv", venv, "--python", sys.executable)
    run(uv_bin, "pip", "install", "--python", venv / "bin" / "python", "--index-url", fixture_index.pypi_url, "fixture-app")
    assert run(venv / "bin" / "fixture-app").stdout.strip() == "fixture-app 1.1.0 numpy 2.2.0"


def test_uv_rejects_wrong_published_hash(fixture_index: FixtureIndex, uv_bin: str, tmp_path: Path) -> None:
    proc = run(
        uv_bin, "pip", "install", "--target", tmp_path / "t", "--python", sys.executable, "--no-deps",
        "--index-url", fixture_index.torch_url("cu118"), "torchvision==0.22.1+cu118",
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Hash mismatch" in proc.stderr


def test_uv_compile_hashes_unpublished_file_itself(fresh_index: FixtureIndex, uv_bin: str) -> None:
    """uv trusts published hashes (even the wrong one) and downloads a file
    whose hash is unpublished to compute it."""
    proc = run(
        uv_bin, "pip", "compile", "-", "--index-url", fresh_index.torch_url("cu126"), "--generate-hashes",
        "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28", "--no-header",
        input="torch==2.7.1+cu126\n",
    )  # fmt: skip
    pins = pinned_hashes(proc.stdout)
    real = fresh_index.listing(TORCH, "cu126", MISSING_HASH_FILE).sha256
    assert real in pins["torch==2.7.1+cu126"]
    assert [r.path.rsplit("/", 1)[1] for r in fresh_index.wheel_downloads()] == [MISSING_HASH_FILE]

    proc = run(
        uv_bin, "pip", "compile", "-", "--index-url", fresh_index.torch_url("cu118"), "--generate-hashes",
        "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28", "--no-header",
        input="torchvision==0.22.1+cu118\n",
    )  # fmt: skip
    wrong = fresh_index.listing(TORCH, "cu118", WRONG_HASH_FILE)
    assert wrong.published_sha256 in pinned_hashes(proc.stdout)["torchvision==0.22.1+cu118"]


def test_second_uv_compile_downloads_nothing(fresh_index: FixtureIndex, uv_bin: str) -> None:
    args = (
        uv_bin, "pip", "compile", "-", "--index-url", fresh_index.torch_url("cu128"), "--generate-hashes",
        "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28", "--no-header",
    )  # fmt: skip
    first = run(*args, input="torch==2.7.1\n").stdout
    assert "torch==2.7.1+cu128" in first and "nvidia-cudnn-cu12==9.7.1.26" in first
    assert fresh_index.metadata_fetches() and not fresh_index.wheel_downloads()
    fresh_index.clear_log()
    assert run(*args, input="torch==2.7.1\n").stdout == first
    assert not fresh_index.metadata_fetches() and not fresh_index.wheel_downloads()
    assert {r.status for r in fresh_index.requests} == {304}  # pages revalidated only


def test_uv_sees_pypi_default_build_and_planted_torch(fixture_index: FixtureIndex, uv_bin: str) -> None:
    base = (
        uv_bin, "pip", "compile", "-", "--index-url", fixture_index.pypi_url,
        "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28", "--no-header",
    )  # fmt: skip
    assert "torch==99.0.0" in run(*base, input="torch\n").stdout
    pinned = run(*base, input="torchvision\n").stdout
    assert "torch==2.7.1\n" in pinned and "nvidia-cuda-runtime-cu12==12.6.77" in pinned


def test_pip_download_with_isolated_config(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    run(
        sys.executable, "-m", "pip", "download", "--no-deps", "--index-url", fixture_index.pypi_url,
        "fixture-app==1.1.0", "-d", tmp_path,
    )  # fmt: skip
    run(
        sys.executable, "-m", "pip", "download", "--no-deps", "--index-url", fixture_index.torch_url("cu126"),
        "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
        "torch==2.7.1+cu126", "-d", tmp_path,
    )  # fmt: skip
    for name in ("fixture_app-1.1.0-py3-none-any.whl", MISSING_HASH_FILE):
        assert (tmp_path / name).read_bytes() == fixture_index.wheel_path(name).read_bytes()


def test_pip_rejects_wrong_published_hash(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    proc = run(
        sys.executable, "-m", "pip", "download", "--no-deps", "--index-url", fixture_index.torch_url("cu118"),
        "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64",
        "torchvision==0.22.1+cu118", "-d", tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "DO NOT MATCH THE HASHES" in proc.stderr


def test_pip_compile_resolves_fixture_app(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    """pip-tools ignores published ``#sha256`` fragments: with
    ``--generate-hashes`` it downloads and hashes every matching file."""
    pytest.importorskip("piptools")
    (tmp_path / "requirements.in").write_text("fixture-app\n")
    run(
        sys.executable, "-m", "piptools", "compile", "--quiet", "--no-header", "--strip-extras",
        "--generate-hashes", "--index-url", fixture_index.pypi_url, "--cache-dir", tmp_path / "cache",
        "--output-file", tmp_path / "requirements.txt", "requirements.in",
        cwd=tmp_path,
    )  # fmt: skip
    pins = pinned_hashes((tmp_path / "requirements.txt").read_text())
    assert set(pins) == {"fixture-app==1.1.0", "numpy==2.2.0"}
    assert pins["numpy==2.2.0"] == [sha256_hex(fixture_index.wheel_path("numpy-2.2.0-py3-none-any.whl").read_bytes())]


def test_pip_compile_fails_on_wrong_published_hash(fixture_index: FixtureIndex, tmp_path: Path) -> None:
    """pip-tools downloads resolved wheels, and pip checks them against the
    published hash."""
    pytest.importorskip("piptools")
    (tmp_path / "requirements.in").write_text("torchvision==0.22.1+cu118\n")
    proc = run(
        sys.executable, "-m", "piptools", "compile", "--quiet", "--no-header", "--strip-extras",
        "--index-url", fixture_index.torch_url("cu118"), "--cache-dir", tmp_path / "cache",
        "--output-file", tmp_path / "requirements.txt", "requirements.in",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "HashMismatch" in proc.stderr
