"""A small, real, local package index for envmgr's tests.

It imitates two shapes of index, served over HTTP on 127.0.0.1:

* **The PyTorch wheel index** -- one PEP 503 "simple" index per build variant
  at ``/whl/<variant>/`` (``cpu``, ``cu118``, ``cu126``, ``cu128``), with
  project pages at ``/whl/<variant>/<project>/``.  Like PyTorch's:

  - the torch family carries a local version label (``2.7.1+cu118``) that is
    kept verbatim in the wheel filename and quoted as ``%2B`` in hrefs;
  - every variant page links into one shared file store (here
    ``/whl/files/``), so a mirrored file has the same bytes on every variant;
  - pages are HTML only (no PEP 691 JSON) and carry **no**
    ``data-requires-python`` attribute: a resolver has to read
    ``Requires-Python`` from the PEP 658 metadata file;
  - third-party packages are mirrored there, some of them stale
    (``numpy`` 1.26.0, ``typing-extensions`` 4.10.0, ``filelock`` 3.0.0), and
    the CUDA variants mirror the ``nvidia-*`` and ``triton`` wheels their
    torch builds pin;
  - one file is listed with no ``#sha256=`` fragment and one with a wrong one.

* **A PyPI-shaped default index** at ``/simple/`` with files under
  ``/files/``: HTML (PEP 503 + PEP 592/658/714 attributes, including an
  HTML-escaped ``data-requires-python``) and, when asked with
  ``Accept: application/vnd.pypi.simple.v1+json``, PEP 691 JSON (API 1.1,
  with ``size`` and ``versions``).  It holds the newer numpy/filelock/
  typing-extensions, ``fixture-app``, the ``nvidia-*`` wheels, ``triton``, a
  label-less "PyPI default build" of torch 2.7.1 (CUDA 12.6 pins) and a
  planted ``torch`` 99.0.0 for dependency-confusion tests.

Every wheel is a real, installable wheel built here in a few milliseconds,
byte-for-byte the same on every build (fixed zip timestamps and modes,
sorted entries, deterministic payloads), so hashes can be asserted.

The tree under :attr:`FixtureIndex.root` mirrors the URL space (pages are also
written as ``index.html``/``index.json``), but the server answers pages from
memory so that :meth:`FixtureIndex.add`/:meth:`FixtureIndex.remove` swap them
atomically.

Only the standard library and ``packaging`` are used.

How the real clients treat it (uv 0.13, pip 23.2, pip-tools 7.6; pinned down
by tests/test_fixture_index.py):

* uv and pip ask the PyPI-shaped index for PEP 691 JSON, and resolve from
  PEP 658 metadata without downloading wheels.
* ``uv pip compile --generate-hashes`` copies published hashes without
  checking them (the wrong one lands in the lock); for a file with no
  published hash it downloads that one file and, for that version, writes
  only the hash it computed (other wheels of the version are left out).
* ``uv pip install`` and ``pip download/install`` check published hashes
  even without ``--require-hashes`` ("Hash mismatch").
* pip-tools downloads every resolved wheel while resolving (so the wrong
  hash makes ``pip-compile`` fail with HashMismatch), asks
  ``<index minus "simple">/<project>/json`` for hashes (404 here), and with
  ``--generate-hashes`` downloads and hashes every matching file itself.
* uv retries refused connections and cut downloads (about 8-13 s of
  back-off); set ``UV_HTTP_RETRIES=0`` in fault tests.
* With the torch index as ``--extra-index-url`` over the PyPI-shaped one,
  uv's default first-index strategy takes numpy/filelock/typing-extensions
  from the torch index too, i.e. the stale mirrors.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import posixpath
import re
import shutil
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from packaging.utils import canonicalize_name
from packaging.version import Version

__all__ = [
    "TORCH",
    "PYPI",
    "TORCH_VARIANTS",
    "CUDA_OF_VARIANT",
    "MISSING_HASH_FILE",
    "WRONG_HASH_FILE",
    "Release",
    "Listing",
    "RequestRecord",
    "FixtureIndex",
    "build_wheel",
    "wheel_filename",
    "default_catalogue",
    "sha256_hex",
    "iter_anchors",
]

# --------------------------------------------------------------------------
# Names and constants
# --------------------------------------------------------------------------

TORCH = "torch"  #: the PyTorch-shaped index (``/whl/<variant>/``)
PYPI = "pypi"  #: the PyPI-shaped index (``/simple/``)
INDEXES = (TORCH, PYPI)

TORCH_VARIANTS = ("cpu", "cu118", "cu126", "cu128")
CUDA_OF_VARIANT: dict[str, str | None] = {
    "cpu": None,
    "cu118": "11.8",
    "cu126": "12.6",
    "cu128": "12.8",
}

LINUX_X86_64 = 'platform_system == "Linux" and platform_machine == "x86_64"'
MANYLINUX = "manylinux_2_28_x86_64"  # torch / torchvision wheels
NVIDIA_PLATFORM = "manylinux2014_x86_64"  # nvidia-* wheels (py3-none-...)
TRITON_PLATFORM = "manylinux_2_27_x86_64.manylinux_2_28_x86_64"  # compressed tag set
CPYTHONS = ("cp311", "cp312")

#: The torch file listed without a ``#sha256=`` fragment (on ``cu126``).
MISSING_HASH_FILE = f"torch-2.7.1+cu126-cp311-cp311-{MANYLINUX}.whl"
#: The torchvision file whose published ``#sha256=`` is wrong (on ``cu118``).
WRONG_HASH_FILE = f"torchvision-0.22.1+cu118-cp311-cp311-{MANYLINUX}.whl"

HASH_CORRECT, HASH_MISSING, HASH_WRONG = "correct", "missing", "wrong"

JSON_TYPE = "application/vnd.pypi.simple.v1+json"
_JSON_TYPES = {JSON_TYPE, "application/vnd.pypi.simple.latest+json"}
_HTML_TYPES = {
    "application/vnd.pypi.simple.v1+html",
    "application/vnd.pypi.simple.latest+html",
    "text/html",
    "*/*",
    "text/*",
}

# Fixed zip timestamp: the earliest a zip file can record.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _escape_dist(name: str) -> str:
    """Distribution name as written in wheel filenames (PEP 427 / 491)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_filename(
    name: str,
    version: str,
    python_tag: str = "py3",
    abi_tag: str = "none",
    platform_tag: str = "any",
) -> str:
    """``{dist}-{version}-{python}-{abi}-{platform}.whl``; a local label
    such as ``+cu118`` stays verbatim."""
    return f"{_escape_dist(name)}-{version}-{python_tag}-{abi_tag}-{platform_tag}.whl"


def _payload(seed: str, size: int) -> bytes:
    """``size`` pseudo-random bytes, always the same for the same seed."""
    return hashlib.shake_256(seed.encode()).digest(size)


# --------------------------------------------------------------------------
# Building wheels
# --------------------------------------------------------------------------


def _default_main(name: str) -> bytes:
    return (
        '"""Console entry point of a fixture package."""\n'
        "import sys\n\n"
        "from . import __version__\n\n\n"
        "def main():\n"
        f'    print("{name} " + __version__)\n'
        "    return 0\n\n\n"
        'if __name__ == "__main__":\n'
        "    sys.exit(main())\n"
    ).encode()


def build_wheel(
    dest_dir: str | Path,
    name: str,
    version: str,
    *,
    requires: Iterable[str] = (),
    python_tag: str = "py3",
    abi_tag: str = "none",
    platform_tag: str = "any",
    files: Mapping[str, bytes | str] | None = None,
    console_scripts: Mapping[str, str] | Iterable[str] | None = None,
    requires_python: str | None = None,
    extra_size: int = 0,
    import_name: str | None = None,
    summary: str | None = None,
) -> Path:
    """Write a small valid wheel into ``dest_dir`` and return its path.

    The wheel holds a top-level package ``{import_name}/__init__.py``
    (``import_name`` defaults to the escaped dist name) defining
    ``__version__``, plus ``files`` (``{relpath: bytes|str}``, overriding
    generated files), plus, when ``extra_size`` > 0, a binary
    ``{import_name}/_payload.bin`` of that many deterministic bytes.

    ``console_scripts`` is either ``{script: "module:function"}`` or a list of
    script names, which then run ``{import_name}.__main__:main`` (a default
    one that prints ``"<name> <version>"`` is generated unless ``files``
    provides it).

    The ``.dist-info`` has METADATA (2.1: Name, Version, Summary,
    Requires-Python, Requires-Dist incl. markers), WHEEL, entry_points.txt and
    RECORD (urlsafe-b64 sha256 and sizes).  Entries are sorted (dist-info
    last, RECORD at the very end) and stamped 1980-01-01 with mode 0644, so
    the same arguments give the same bytes.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dist = _escape_dist(name)
    import_name = import_name or dist
    dist_info = f"{dist}-{version}.dist-info"
    filename = wheel_filename(name, version, python_tag, abi_tag, platform_tag)

    if console_scripts is None:
        scripts: dict[str, str] = {}
    elif isinstance(console_scripts, Mapping):
        scripts = dict(console_scripts)
    else:
        scripts = {script: f"{import_name}.__main__:main" for script in console_scripts}

    contents: dict[str, bytes] = {
        f"{import_name}/__init__.py": (
            f'"""Fixture stand-in for {name} (envmgr tests)."""\n'
            f'__version__ = "{version}"\n'
        ).encode(),
    }
    if any(entry == f"{import_name}.__main__:main" for entry in scripts.values()):
        contents[f"{import_name}/__main__.py"] = _default_main(name)
    if extra_size:
        seed = f"{filename}:payload"
        contents[f"{import_name}/_payload.bin"] = _payload(seed, extra_size)
    for relpath, data in (files or {}).items():
        contents[relpath] = data.encode() if isinstance(data, str) else bytes(data)

    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: {summary or f'Fixture stand-in for {name} (envmgr tests)'}",
    ]
    if requires_python:
        metadata.append(f"Requires-Python: {requires_python}")
    metadata += [f"Requires-Dist: {req}" for req in requires]
    contents[f"{dist_info}/METADATA"] = ("\n".join(metadata) + "\n\n").encode()

    purelib = platform_tag == "any"
    wheel_lines = [
        "Wheel-Version: 1.0",
        "Generator: envmgr-fixture-index (1.0)",
        f"Root-Is-Purelib: {'true' if purelib else 'false'}",
    ]
    for py in python_tag.split("."):
        for abi in abi_tag.split("."):
            for plat in platform_tag.split("."):
                wheel_lines.append(f"Tag: {py}-{abi}-{plat}")
    contents[f"{dist_info}/WHEEL"] = ("\n".join(wheel_lines) + "\n").encode()

    if scripts:
        lines = ["[console_scripts]"] + [f"{k} = {v}" for k, v in sorted(scripts.items())]
        contents[f"{dist_info}/entry_points.txt"] = ("\n".join(lines) + "\n").encode()

    record_path = f"{dist_info}/RECORD"
    contents.pop(record_path, None)
    order = sorted(contents, key=lambda p: (p.startswith(f"{dist_info}/"), p))

    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path in order:
        writer.writerow([path, _record_hash(contents[path]), len(contents[path])])
    writer.writerow([record_path, "", ""])
    contents[record_path] = record.getvalue().encode()
    order.append(record_path)

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in order:
            info = zipfile.ZipInfo(path, date_time=_ZIP_EPOCH)
            info.external_attr = 0o100644 << 16
            info.create_system = 3  # unix, whatever the host
            # Random payloads do not compress; store them and save the time.
            if path.endswith(".bin"):
                info.compress_type = zipfile.ZIP_STORED
            else:
                info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, contents[path], compresslevel=6)
    out = dest_dir / filename
    out.write_bytes(buffer.getvalue())
    return out


# --------------------------------------------------------------------------
# The catalogue
# --------------------------------------------------------------------------


@dataclass
class Release:
    """One wheel file of the catalogue and where it is listed.

    ``index`` is :data:`TORCH` or :data:`PYPI`; ``variants`` names the torch
    variant indexes that list the file (empty for PyPI).  ``wheel`` holds the
    :func:`build_wheel` keyword arguments (tags, requires, files...).
    ``published_hash`` is ``"correct"``, ``"missing"`` (no ``#sha256=``) or
    ``"wrong"`` (the sha256 of other bytes).
    """

    index: str
    name: str
    version: str
    variants: tuple[str, ...] = ()
    wheel: dict[str, Any] = field(default_factory=dict)
    published_hash: str = HASH_CORRECT

    @property
    def filename(self) -> str:
        return wheel_filename(
            self.name,
            self.version,
            self.wheel.get("python_tag", "py3"),
            self.wheel.get("abi_tag", "none"),
            self.wheel.get("platform_tag", "any"),
        )


#: nvidia-* pins of each CUDA torch build, by (torch version, variant).
#: 2.7.0 pins are older, so an upgrade visibly moves cuDNN/NCCL.
NVIDIA_PINS: dict[tuple[str, str], dict[str, str]] = {
    ("2.7.0", "cu118"): {"nvidia-cuda-runtime-cu11": "11.8.89", "nvidia-cudnn-cu11": "8.7.0.84"},
    ("2.7.1", "cu118"): {"nvidia-cuda-runtime-cu11": "11.8.89", "nvidia-cudnn-cu11": "9.1.0.70"},
    ("2.7.0", "cu126"): {
        "nvidia-cuda-runtime-cu12": "12.6.77",
        "nvidia-cudnn-cu12": "9.1.0.70",
        "nvidia-nccl-cu12": "2.21.5",
    },
    ("2.7.1", "cu126"): {
        "nvidia-cuda-runtime-cu12": "12.6.77",
        "nvidia-cudnn-cu12": "9.5.1.17",
        "nvidia-nccl-cu12": "2.26.2",
    },
    ("2.7.0", "cu128"): {
        "nvidia-cuda-runtime-cu12": "12.8.57",
        "nvidia-cudnn-cu12": "9.5.1.17",
        "nvidia-nccl-cu12": "2.21.5",
    },
    ("2.7.1", "cu128"): {
        "nvidia-cuda-runtime-cu12": "12.8.90",
        "nvidia-cudnn-cu12": "9.7.1.26",
        "nvidia-nccl-cu12": "2.26.2",
    },
}
TRITON_FOR_TORCH = {"2.7.0": "3.3.0", "2.7.1": "3.3.1"}
TORCHVISION_FOR_TORCH = {"2.7.0": "0.22.0", "2.7.1": "0.22.1"}
TORCH_REQUIRES_PYTHON = ">=3.9.0"
TORCH_EXTRA_SIZE = 48 * 1024  # torch is the biggest file, as in life
NVIDIA_EXTRA_SIZE = 16 * 1024


def _torch_wheel(version: str, cuda: str | None, pins: Mapping[str, str], python: str) -> dict:
    """build_wheel kwargs of a torch wheel (``version`` may carry a label)."""
    public = version.split("+")[0]
    requires = ["filelock", "typing-extensions>=4.10.0", "numpy"]
    if cuda is not None:
        requires += [f"{pkg}=={ver} ; {LINUX_X86_64}" for pkg, ver in sorted(pins.items())]
        requires.append(f"triton=={TRITON_FOR_TORCH[public]} ; {LINUX_X86_64}")
    cuda_literal = f'"{cuda}"' if cuda else "None"
    return dict(
        python_tag=python,
        abi_tag=python,
        platform_tag=MANYLINUX,
        requires=requires,
        requires_python=TORCH_REQUIRES_PYTHON,
        console_scripts={"torchrun": "torch.distributed.run:main"},
        extra_size=TORCH_EXTRA_SIZE,
        files={
            "torch/__init__.py": (
                '"""Fixture stand-in for torch (envmgr tests)."""\n'
                f'__version__ = "{version}"\n'
                "from . import version, cuda, backends  # noqa: E402,F401\n"
            ),
            "torch/version.py": (
                f'__version__ = "{version}"\n'
                "debug = False\n"
                f"cuda = {cuda_literal}\n"
                "hip = None\n"
                'git_version = "0000000000000000000000000000000000000000"\n'
            ),
            "torch/cuda/__init__.py": (
                '"""No GPU in a fixture: is_available() is always False."""\n\n\n'
                "def is_available():\n    return False\n\n\n"
                "def device_count():\n    return 0\n"
            ),
            "torch/backends/__init__.py": "from . import cudnn  # noqa: F401\n",
            "torch/backends/cudnn.py": (
                "def is_available():\n    return False\n\n\n"
                "def version():\n    return None\n"
            ),
            "torch/distributed/__init__.py": "",
            "torch/distributed/run.py": (
                "import sys\n\n"
                "from torch import __version__\n\n\n"
                "def main():\n"
                '    print("torchrun (fixture) " + __version__)\n'
                "    return 0\n\n\n"
                'if __name__ == "__main__":\n'
                "    sys.exit(main())\n"
            ),
        },
    )


def torch_wheel(version: str, cuda: str | None, pins: Mapping[str, str] = {}, python: str = "cp311", *,
                triton: str | None = "3.3.1", version_py: str | None = None,
                binary: bytes | None = None) -> dict:
    """:meth:`FixtureIndex.add` keyword arguments of a torch wheel: ``version`` (with or without
    a label), CUDA ``cuda`` (None: a CPU build), the ``pins`` it requires, ``triton`` (None:
    requires no triton), ``version_py`` replacing ``torch/version.py``, ``binary`` as
    ``torch/lib/libtorch_cuda.so`` (see :func:`fatbin`)."""
    public = version.split("+")[0]
    TRITON_FOR_TORCH.setdefault(public, triton or "3.3.1")
    kwargs = _torch_wheel(version, cuda, pins, python)
    if cuda is not None:
        kwargs["requires"] = [r for r in kwargs["requires"] if not r.startswith("triton")]
        if triton:
            kwargs["requires"].append(f"triton=={triton} ; {LINUX_X86_64}")
    if version_py is not None:
        kwargs["files"]["torch/version.py"] = version_py
    if binary is not None:
        kwargs["files"]["torch/lib/libtorch_cuda.so"] = binary
    return kwargs


def fatbin(sass: Iterable[int], ptx: Iterable[int] = (), *, pad: bytes = b"\x7fELF" + b"\0" * 60) -> bytes:
    """Bytes shaped like a shared library holding one CUDA fat binary: an ELF-ish prefix, then
    the fat binary header (magic 0xBA55ED50, version 1, header size 16) and one entry per
    arch (kind 2 = SASS, 1 = PTX; 64-byte entry header, the arch at offset 28)."""
    import struct

    entries = b""
    for kind, archs in ((2, sass), (1, ptx)):
        for arch in archs:
            payload = _payload(f"fatbin:{kind}:{arch}", 200 + arch)
            header = struct.pack("<HHIQII", kind, 0x101, 64, len(payload), 0, 0)
            header += struct.pack("<HHI", 0, 0, arch) + b"\0" * (64 - 28 - 4)
            entries += header + payload
    return pad + struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(entries)) + entries + b"\0" * 32


def _torchvision_wheel(version: str, torch_pin: str, cuda: str | None, python: str) -> dict:
    cuda_literal = f'"{cuda}"' if cuda else "None"
    return dict(
        python_tag=python,
        abi_tag=python,
        platform_tag=MANYLINUX,
        requires=["numpy", f"torch=={torch_pin}"],
        requires_python=">=3.9",
        files={
            "torchvision/__init__.py": (
                '"""Fixture stand-in for torchvision (envmgr tests)."""\n'
                f'__version__ = "{version}"\n'
                "from . import version  # noqa: E402,F401\n"
            ),
            "torchvision/version.py": f'__version__ = "{version}"\ncuda = {cuda_literal}\n',
        },
    )


def _nvidia_release(index: str, name: str, version: str, variants: tuple[str, ...] = ()) -> Release:
    return Release(
        index,
        name,
        version,
        variants,
        wheel=dict(
            platform_tag=NVIDIA_PLATFORM,
            requires_python=">=3",
            extra_size=NVIDIA_EXTRA_SIZE,
        ),
    )


def _triton_releases(index: str, version: str, variants: tuple[str, ...] = ()) -> list[Release]:
    return [
        Release(
            index,
            "triton",
            version,
            variants,
            wheel=dict(
                python_tag=py,
                abi_tag=py,
                platform_tag=TRITON_PLATFORM,
                requires_python=">=3.9,<3.14",
            ),
        )
        for py in CPYTHONS
    ]


def _pure(index: str, name: str, version: str, variants: tuple[str, ...] = (), **wheel: Any) -> Release:
    return Release(index, name, version, variants, wheel=dict(wheel))


def _fixture_app_main(version: str) -> str:
    return (
        '"""fixture-app: prints its version and numpy\'s."""\n'
        "import sys\n\n"
        "import numpy\n\n"
        "from . import __version__\n\n\n"
        "def main():\n"
        '    print(f"fixture-app {__version__} numpy {numpy.__version__}")\n'
        "    return 0\n\n\n"
        'if __name__ == "__main__":\n'
        "    sys.exit(main())\n"
    )


def default_catalogue() -> list[Release]:
    """The standard catalogue (a fresh list: extend or edit it freely).

    Torch index, per variant in :data:`TORCH_VARIANTS`:
      torch 2.7.0/2.7.1 ``+<variant>`` (cp311 and cp312, manylinux_2_28),
      torchvision 0.22.0/0.22.1 ``+<variant>`` pinning the matching torch,
      stale numpy 1.26.0, typing-extensions 4.10.0, filelock 3.0.0;
      CUDA variants add triton 3.3.0/3.3.1 and the nvidia-* wheels pinned by
      their torch builds.  :data:`MISSING_HASH_FILE` is listed without a hash,
      :data:`WRONG_HASH_FILE` with a wrong one.

    PyPI index: numpy 2.1.0/2.2.0, typing-extensions 4.12.2, filelock 3.16.1,
    fixture-app 1.0.0/1.1.0 (``numpy>=2``, console script ``fixture-app``),
    every nvidia-* wheel above, triton 3.3.1, torch 2.7.1 (no label, CUDA 12.6
    pins, cp311/cp312), torchvision 0.22.1 (``torch==2.7.1``) and a planted
    torch 99.0.0 (py3-none-any).
    """
    cat: list[Release] = []

    # ---- torch-shaped index -------------------------------------------
    nvidia_on_variant: dict[tuple[str, str], set[str]] = {}
    for variant in TORCH_VARIANTS:
        cuda = CUDA_OF_VARIANT[variant]
        for torch_version, vision_version in TORCHVISION_FOR_TORCH.items():
            pins = NVIDIA_PINS.get((torch_version, variant), {})
            for pkg, ver in pins.items():
                nvidia_on_variant.setdefault((pkg, ver), set()).add(variant)
            labelled = f"{torch_version}+{variant}"
            for py in CPYTHONS:
                torch = Release(TORCH, "torch", labelled, (variant,), _torch_wheel(labelled, cuda, pins, py))
                if torch.filename == MISSING_HASH_FILE:
                    torch.published_hash = HASH_MISSING
                cat.append(torch)
                vision = Release(
                    TORCH,
                    "torchvision",
                    f"{vision_version}+{variant}",
                    (variant,),
                    _torchvision_wheel(f"{vision_version}+{variant}", labelled, cuda, py),
                )
                if vision.filename == WRONG_HASH_FILE:
                    vision.published_hash = HASH_WRONG
                cat.append(vision)

    cuda_variants = tuple(v for v in TORCH_VARIANTS if CUDA_OF_VARIANT[v])
    for triton_version in sorted(set(TRITON_FOR_TORCH.values())):
        cat += _triton_releases(TORCH, triton_version, cuda_variants)
    for (pkg, ver), variants in sorted(nvidia_on_variant.items()):
        cat.append(_nvidia_release(TORCH, pkg, ver, tuple(v for v in TORCH_VARIANTS if v in variants)))

    # Stale mirrors, as PyTorch's index carries them.
    cat += [
        _pure(TORCH, "numpy", "1.26.0", TORCH_VARIANTS, requires_python=">=3.9"),
        _pure(TORCH, "typing-extensions", "4.10.0", TORCH_VARIANTS, requires_python=">=3.8"),
        _pure(TORCH, "filelock", "3.0.0", TORCH_VARIANTS),
    ]

    # ---- PyPI-shaped index ---------------------------------------------
    cat += [
        _pure(PYPI, "numpy", "2.1.0", requires_python=">=3.10"),
        _pure(PYPI, "numpy", "2.2.0", requires_python=">=3.10"),
        _pure(PYPI, "typing-extensions", "4.12.2", requires_python=">=3.8"),
        _pure(PYPI, "filelock", "3.16.1", requires_python=">=3.8"),
    ]
    for version in ("1.0.0", "1.1.0"):
        cat.append(
            _pure(
                PYPI,
                "fixture-app",
                version,
                requires=["numpy>=2"],
                requires_python=">=3.9",
                console_scripts=["fixture-app"],
                files={"fixture_app/__main__.py": _fixture_app_main(version)},
            )
        )
    for pkg, ver in sorted(nvidia_on_variant):
        cat.append(_nvidia_release(PYPI, pkg, ver))
    cat += _triton_releases(PYPI, "3.3.1")
    for py in CPYTHONS:
        cat.append(Release(PYPI, "torch", "2.7.1", (), _torch_wheel("2.7.1", "12.6", NVIDIA_PINS[("2.7.1", "cu126")], py)))
        cat.append(Release(PYPI, "torchvision", "0.22.1", (), _torchvision_wheel("0.22.1", "2.7.1", "12.6", py)))
    cat.append(
        _pure(
            PYPI,
            "torch",
            "99.0.0",
            summary="Planted package (dependency-confusion fixture)",
            files={
                "torch/__init__.py": '__version__ = "99.0.0"\nPLANTED = True\n',
                "torch/version.py": '__version__ = "99.0.0"\ncuda = None\n',
            },
        )
    )
    return cat


# --------------------------------------------------------------------------
# The index and its server
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Listing:
    """One file as one index page lists it."""

    index: str
    variant: str | None
    project: str  # canonical (PEP 503) name
    version: str
    filename: str
    path: Path
    sha256: str  # of the real bytes
    size: int
    metadata_sha256: str
    requires_python: str | None
    published_hash: str  # "correct" | "missing" | "wrong"

    @property
    def published_sha256(self) -> str | None:
        """The hash the page shows (None when unpublished)."""
        if self.published_hash == HASH_MISSING:
            return None
        if self.published_hash == HASH_WRONG:
            return sha256_hex(b"not these bytes: " + self.filename.encode())
        return self.sha256


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered."""

    method: str
    path: str  # unquoted, without query string
    status: int
    kind: str  # "root" | "project" | "wheel" | "metadata" | "other"
    index: str | None = None
    variant: str | None = None
    format: str | None = None  # "html" | "json" for pages
    truncated: bool = False


@dataclass
class _Page:
    content_type: str
    body: bytes

    @property
    def etag(self) -> str:
        return '"' + sha256_hex(self.body)[:32] + '"'


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fixture: "FixtureIndex"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "envmgr-fixture-index/1.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the fixture keeps its own log

    def do_GET(self) -> None:  # noqa: N802
        self.server.fixture._handle(self, head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.fixture._handle(self, head=True)


def _wants_json(accept: str) -> bool:
    """PEP 691 content negotiation: JSON only if it outranks HTML."""
    best_json = best_html = -1.0
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if media in _JSON_TYPES:
            best_json = max(best_json, q)
        elif media in _HTML_TYPES:
            best_html = max(best_html, q)
    return best_json > 0 and best_json > best_html


class FixtureIndex:
    """A built fixture index, served on ``127.0.0.1`` in a daemon thread.

    ``FixtureIndex(root)`` builds :func:`default_catalogue` (or
    ``catalogue``) into ``root`` and starts serving unless ``start=False``.

    URLs: :attr:`url` (base), :meth:`torch_url` (``{url}/whl/<variant>``),
    :attr:`pypi_url` (``{url}/simple``), :meth:`file_url`.
    Introspection: :meth:`wheel_path`, :meth:`listing`, :meth:`listings`.
    Mutation: :meth:`add`, :meth:`remove` (pages regenerate at once).
    Faults: :meth:`set_offline` / :meth:`stop` / :meth:`start` (connection
    refused on the same port), :meth:`fail_after_bytes` (wheel download cut
    mid-body), :attr:`credentials` (HTTP basic auth required, 401 without).
    Log: :attr:`requests` (list of :class:`RequestRecord`),
    :meth:`clear_log`, :meth:`wheel_downloads`, :meth:`metadata_fetches`,
    :meth:`page_fetches`.
    """

    def __init__(
        self,
        root: str | Path,
        catalogue: Iterable[Release] | None = None,
        *,
        credentials: tuple[str, str] | None = None,
        start: bool = True,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.credentials = credentials
        self.requests: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self._state_lock = threading.RLock()
        # (index, variant) -> canonical project -> filename -> Listing
        self._listings: dict[tuple[str, str | None], dict[str, dict[str, Listing]]] = {
            (TORCH, variant): {} for variant in TORCH_VARIANTS
        }
        self._listings[(PYPI, None)] = {}
        self._pages: dict[tuple[str, str], _Page] = {}
        self._fail_after: int | None = None
        self._fail_times: int | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        #: Answer ``Range: bytes=...`` requests for wheels with 206 (off by default: the
        #: faults above cut whole-file downloads; see :meth:`serve_ranges`).
        self.ranges = False

        built: dict[tuple[str, str], Release] = {}
        for release in default_catalogue() if catalogue is None else catalogue:
            self._add_release(release, built)
        self._render()
        if start:
            self.start()

    # ---- layout --------------------------------------------------------

    def store(self, index: str) -> Path:
        """Directory holding an index's files (mirrors its URL path)."""
        return self.root / ("whl/files" if index == TORCH else "files")

    def _store_url_path(self, index: str) -> str:
        return "/whl/files/" if index == TORCH else "/files/"

    # ---- URLs ----------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("fixture index was never started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def torch_url(self, variant: str) -> str:
        return f"{self.url}/whl/{variant}"

    @property
    def pypi_url(self) -> str:
        return f"{self.url}/simple"

    def file_url(self, filename: str, index: str | None = None) -> str:
        """Absolute URL of a file in an index's store (quoted: ``%2B``)."""
        index = index or self._index_of(filename)
        return f"{self.url}{self._store_url_path(index)}{quote(filename)}"

    def local_url(self, index: str, variant: str | None = None) -> str:
        """``file://`` URL of the on-disk copy of an index (no server, no
        faults, no log); uv accepts it as an index URL."""
        path = self.root / ("simple" if index == PYPI else f"whl/{variant}")
        return path.as_uri()

    def with_credentials(self, url: str) -> str:
        """``url`` with :attr:`credentials` embedded (``user:token@``)."""
        if not self.credentials:
            return url
        user, token = self.credentials
        parts = urlsplit(url)
        netloc = f"{quote(user, safe='')}:{quote(token, safe='')}@{parts.netloc}"
        return urlunsplit(parts._replace(netloc=netloc))

    # ---- introspection -------------------------------------------------

    def _index_of(self, filename: str) -> str:
        for index in INDEXES:
            if (self.store(index) / filename).is_file():
                return index
        raise FileNotFoundError(filename)

    def wheel_path(self, filename: str, index: str | None = None) -> Path:
        """Path of a built wheel.  Files mirrored on both indexes (nvidia-*,
        triton 3.3.1) are byte-identical; without ``index`` the torch copy is
        returned first."""
        return self.store(index or self._index_of(filename)) / filename

    def listings(
        self, index: str | None = None, variant: str | None = None, project: str | None = None
    ) -> list[Listing]:
        """Every listing, optionally narrowed by index, variant and project."""
        out = []
        with self._state_lock:
            for (idx, var), projects in self._listings.items():
                if index is not None and idx != index:
                    continue
                if variant is not None and var != variant:
                    continue
                for name, files in projects.items():
                    if project is not None and name != canonicalize_name(project):
                        continue
                    out.extend(files.values())
        return sorted(out, key=lambda item: (item.index, item.variant or "", item.project, item.filename))

    def listing(self, index: str, variant: str | None, filename: str) -> Listing:
        """The listing of ``filename`` on one index page."""
        for item in self.listings(index, variant):
            if item.filename == filename:
                return item
        raise KeyError((index, variant, filename))

    def variants(self) -> list[str]:
        with self._state_lock:
            return sorted(var for idx, var in self._listings if idx == TORCH)

    # ---- mutation ------------------------------------------------------

    def _add_release(self, release: Release, built: dict[tuple[str, str], Release] | None = None) -> Path:
        if release.index not in INDEXES:
            raise ValueError(f"unknown index {release.index!r}")
        if release.index == TORCH and not release.variants:
            raise ValueError(f"torch-index release {release.filename} lists no variant")
        if release.index == PYPI and release.variants:
            raise ValueError(f"PyPI release {release.filename} cannot have variants")
        if "files" in release.variants:
            raise ValueError("'files' is reserved for the torch file store")
        key = (release.index, release.filename)
        store = self.store(release.index)
        if built is not None and key in built:
            if built[key].wheel != release.wheel:
                raise ValueError(f"{release.filename} listed twice with different contents")
            path = store / release.filename
        else:
            path = build_wheel(store, release.name, release.version, **release.wheel)
            if built is not None:
                built[key] = release
        data = path.read_bytes()
        with zipfile.ZipFile(path) as archive:
            dist_info = f"{_escape_dist(release.name)}-{release.version}.dist-info"
            metadata = archive.read(f"{dist_info}/METADATA")
        Path(f"{path}.metadata").write_bytes(metadata)
        common = dict(
            index=release.index,
            project=canonicalize_name(release.name),
            version=release.version,
            filename=release.filename,
            path=path,
            sha256=sha256_hex(data),
            size=len(data),
            metadata_sha256=sha256_hex(metadata),
            requires_python=release.wheel.get("requires_python"),
            published_hash=release.published_hash,
        )
        with self._state_lock:
            # A rebuilt file changes bytes under every page that lists it.
            for (index, variant), projects in self._listings.items():
                listed = projects.get(common["project"], {})
                if index == release.index and release.filename in listed:
                    old = listed[release.filename]
                    listed[release.filename] = Listing(variant=variant, **{**common, "published_hash": old.published_hash})
            for variant in release.variants or (None,):
                projects = self._listings.setdefault((release.index, variant), {})
                projects.setdefault(common["project"], {})[release.filename] = Listing(variant=variant, **common)
        return path

    def add(
        self,
        index: str,
        variant: str | None,
        name: str,
        version: str,
        *,
        published_hash: str = HASH_CORRECT,
        **build_wheel_kwargs: Any,
    ) -> Path:
        """Build one more wheel and list it on ``index`` (``variant`` for the
        torch index, None for PyPI); pages are regenerated.  Returns its path.
        A new torch ``variant`` gets its own index at ``/whl/<variant>/``."""
        variants = (variant,) if variant is not None else ()
        release = Release(index, name, version, variants, dict(build_wheel_kwargs), published_hash)
        path = self._add_release(release)
        self._render()
        return path

    def remove(
        self,
        index: str,
        variant: str | None,
        name: str,
        version: str | None = None,
        *,
        filename: str | None = None,
    ) -> int:
        """Unlist files of ``name`` (all, one ``version``, or one ``filename``)
        from one index page; returns how many.  The files stay on disk."""
        project = canonicalize_name(name)
        removed = 0
        with self._state_lock:
            projects = self._listings.get((index, variant), {})
            files = projects.get(project, {})
            for fn, item in list(files.items()):
                if version is not None and item.version != version:
                    continue
                if filename is not None and fn != filename:
                    continue
                del files[fn]
                removed += 1
            if project in projects and not files:
                del projects[project]
        self._render()
        return removed

    # ---- page rendering -------------------------------------------------

    def _href(self, item: Listing) -> str:
        # Project pages sit two levels below the store's parent:
        # /simple/<p>/ -> /files/,  /whl/<variant>/<p>/ -> /whl/files/
        return "../../files/" + quote(item.filename)

    def _project_html(self, name: str, files: list[Listing], with_requires_python: bool) -> bytes:
        lines = [
            "<!DOCTYPE html>",
            "<html>",
            "  <head>",
            '    <meta name="pypi:repository-version" content="1.1">',
            f"    <title>Links for {html.escape(name)}</title>",
            "  </head>",
            "  <body>",
            f"    <h1>Links for {html.escape(name)}</h1>",
        ]
        for item in files:
            href = self._href(item)
            if item.published_sha256:
                href += f"#sha256={item.published_sha256}"
            attrs = [f'href="{html.escape(href)}"']
            if with_requires_python and item.requires_python:
                attrs.append(f'data-requires-python="{html.escape(item.requires_python)}"')
            attrs.append(f'data-dist-info-metadata="sha256={item.metadata_sha256}"')
            attrs.append(f'data-core-metadata="sha256={item.metadata_sha256}"')
            lines.append(f"    <a {' '.join(attrs)}>{html.escape(item.filename)}</a><br/>")
        lines += ["  </body>", "</html>", ""]
        return "\n".join(lines).encode()

    def _project_json(self, name: str, files: list[Listing]) -> bytes:
        entries = []
        for item in files:
            entry: dict[str, Any] = {
                "filename": item.filename,
                "url": self._href(item),
                "hashes": {"sha256": item.published_sha256} if item.published_sha256 else {},
                "requires-python": item.requires_python,
                "size": item.size,
                "core-metadata": {"sha256": item.metadata_sha256},
                "dist-info-metadata": {"sha256": item.metadata_sha256},
                "yanked": False,
            }
            entries.append(entry)
        versions = sorted({item.version for item in files}, key=Version)
        doc = {"meta": {"api-version": "1.1"}, "name": name, "versions": versions, "files": entries}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def _root_html(self, projects: Iterable[str]) -> bytes:
        lines = [
            "<!DOCTYPE html>",
            "<html>",
            "  <head>",
            '    <meta name="pypi:repository-version" content="1.1">',
            "    <title>Simple index</title>",
            "  </head>",
            "  <body>",
        ]
        lines += [f'    <a href="{quote(p)}/">{html.escape(p)}</a><br/>' for p in projects]
        lines += ["  </body>", "</html>", ""]
        return "\n".join(lines).encode()

    def _root_json(self, projects: Iterable[str]) -> bytes:
        doc = {"meta": {"api-version": "1.1"}, "projects": [{"name": p} for p in projects]}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def _render(self) -> None:
        """Regenerate every page in memory (swapped in atomically) and on disk."""
        html_type = "text/html; charset=utf-8"
        pages: dict[tuple[str, str], _Page] = {}
        with self._state_lock:
            snapshot = {
                key: {p: sorted(f.values(), key=lambda i: i.filename) for p, f in projects.items() if f}
                for key, projects in self._listings.items()
            }
        for (index, variant), projects in snapshot.items():
            base = f"/whl/{variant}/" if index == TORCH else "/simple/"
            names = sorted(projects)
            pages[(base, "html")] = _Page(html_type, self._root_html(names))
            if index == PYPI:
                pages[(base, "json")] = _Page(JSON_TYPE, self._root_json(names))
            for name, files in projects.items():
                path = f"{base}{name}/"
                pages[(path, "html")] = _Page(html_type, self._project_html(name, files, index == PYPI))
                if index == PYPI:
                    pages[(path, "json")] = _Page(JSON_TYPE, self._project_json(name, files))
        self._pages = pages

        # Disk copy (index.html / index.json), for browsing and debugging.
        for stale in [self.root / "simple", *(p for p in (self.root / "whl").glob("*") if p.name != "files")]:
            if stale.is_dir():
                shutil.rmtree(stale)
        for (path, fmt), page in pages.items():
            target = self.root / path.strip("/") / f"index.{fmt}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(page.body)

    # ---- faults and log ------------------------------------------------

    def fail_after_bytes(self, n: int | None, times: int | None = None) -> None:
        """Cut wheel downloads after ``n`` body bytes (headers promise the
        full length); only the next ``times`` downloads if given.  ``None``
        turns it off."""
        with self._state_lock:
            self._fail_after = n
            self._fail_times = times

    def _take_failure(self) -> int | None:
        with self._state_lock:
            if self._fail_after is None:
                return None
            if self._fail_times is not None:
                if self._fail_times <= 0:
                    return None
                self._fail_times -= 1
            return self._fail_after

    def clear_log(self) -> None:
        with self._log_lock:
            del self.requests[:]

    def _log(self, record: RequestRecord) -> None:
        with self._log_lock:
            self.requests.append(record)

    def _records(self, kind: str, method: str = "GET", ok_only: bool = True) -> list[RequestRecord]:
        with self._log_lock:
            return [
                r for r in self.requests if r.kind == kind and r.method == method and (not ok_only or r.status == 200)
            ]

    def wheel_downloads(self) -> list[RequestRecord]:
        """Successful GETs of wheel files."""
        return self._records("wheel")

    def metadata_fetches(self) -> list[RequestRecord]:
        """Successful GETs of PEP 658 ``.metadata`` files."""
        return self._records("metadata")

    def page_fetches(self) -> list[RequestRecord]:
        """GETs of project pages answered 200 (not 304)."""
        return self._records("project")

    # ---- serving ---------------------------------------------------------

    def start(self) -> None:
        """Serve (again).  A restart reuses the previous port, so URLs that
        tests already handed out stay valid."""
        if self._server is not None:
            return
        server = _Server(("127.0.0.1", self._port or 0), _Handler)
        server.fixture = self
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fixture-index:{self._port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving: new connections are refused, open ones are cut."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.connections_lock:
            for conn in list(server.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def set_offline(self, offline: bool) -> None:
        """Make the index unreachable (connection refused) or reachable."""
        if offline:
            self.stop()
        else:
            self.start()

    @property
    def online(self) -> bool:
        return self._server is not None

    def __enter__(self) -> "FixtureIndex":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _authorized(self, header: str | None) -> bool:
        if not self.credentials:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, token = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return (user, token) == tuple(self.credentials)

    def _route(self, path: str, accept: str) -> tuple[RequestRecord, _Page | Path | None]:
        """Map a request path to what answers it (a page, a file or None)."""
        segments = [s for s in path.split("/") if s]
        fmt = "json" if _wants_json(accept) else "html"

        def page(base: str, index: str, variant: str | None, rest: list[str]):
            if not rest:
                kind, key = "root", base
            elif len(rest) == 1:
                kind, key = "project", f"{base}{canonicalize_name(rest[0])}/"
            else:
                return RequestRecord("", path, 404, "other", index, variant), None
            use = fmt if index == PYPI else "html"
            found = self._pages.get((key, use))
            return RequestRecord("", path, 200 if found else 404, kind, index, variant, use), found

        def store_file(index: str, rest: list[str]):
            if len(rest) != 1:
                return RequestRecord("", path, 404, "other", index), None
            name = rest[0]
            kind = "wheel" if name.endswith(".whl") else "metadata" if name.endswith(".whl.metadata") else "other"
            target = self.store(index) / name
            ok = kind != "other" and target.is_file()
            return RequestRecord("", path, 200 if ok else 404, kind, index), target if ok else None

        if segments[:1] == ["simple"]:
            return page("/simple/", PYPI, None, segments[1:])
        if segments[:1] == ["files"]:
            return store_file(PYPI, segments[1:])
        if segments[:2] == ["whl", "files"]:
            return store_file(TORCH, segments[2:])
        if segments[:1] == ["whl"] and len(segments) >= 2:
            return page(f"/whl/{segments[1]}/", TORCH, segments[1], segments[2:])
        return RequestRecord("", path, 404, "other"), None

    def _handle(self, handler: _Handler, head: bool) -> None:
        method = "HEAD" if head else "GET"
        path = unquote(urlsplit(handler.path).path)
        # Resolve dot segments as ordinary web servers do (keeping a slash).
        normal = posixpath.normpath(path)
        path = normal + "/" if path.endswith("/") and normal != "/" else normal
        record, target = self._route(path, handler.headers.get("Accept", ""))
        record = _with(record, method=method)

        def send(status: int, body: bytes, content_type: str, headers: Mapping[str, str] = {}) -> None:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            if not head:
                handler.wfile.write(body)

        if not self._authorized(handler.headers.get("Authorization")):
            self._log(_with(record, status=401))
            send(401, b"401 Unauthorized\n", "text/plain", {"WWW-Authenticate": 'Basic realm="fixture-index"'})
            return
        if target is None:
            self._log(record)
            send(404, b"404 Not Found\n", "text/plain")
            return

        if isinstance(target, _Page):
            body, content_type, etag = target.body, target.content_type, target.etag
            cache = "max-age=0, must-revalidate"
        else:
            body = target.read_bytes()
            content_type = "application/octet-stream" if record.kind == "wheel" else "text/plain; charset=utf-8"
            etag = '"' + sha256_hex(body)[:32] + '"'
            cache = "max-age=365000000, immutable, public"
        headers = {"ETag": etag, "Cache-Control": cache}
        if record.kind in ("root", "project"):
            headers["Vary"] = "Accept"

        if handler.headers.get("If-None-Match") == etag:
            self._log(_with(record, status=304))
            handler.send_response(304)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            return

        rng = handler.headers.get("Range", "") if self.ranges and record.kind == "wheel" and not head else ""
        if rng:
            part = _byte_range(rng, len(body))
            if part is not None:
                start, stop = part
                self._log(_with(record, status=206))
                send(206, body[start:stop], content_type,
                     {**headers, "Content-Range": f"bytes {start}-{stop - 1}/{len(body)}", "Accept-Ranges": "bytes"})
                return

        cut = self._take_failure() if record.kind == "wheel" and not head else None
        if cut is not None:
            self._log(_with(record, truncated=True))
            handler.send_response(200)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body[:cut])
            handler.wfile.flush()
            handler.close_connection = True
            try:
                handler.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return

        self._log(record)
        send(200, body, content_type, headers)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=A-B``, ``bytes=A-`` or ``bytes=-N`` as (start, stop); None if not one range."""
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):
        return max(0, size - int(m.group(2))), size
    start = int(m.group(1))
    stop = min(size, int(m.group(2)) + 1) if m.group(2) else size
    return (start, stop) if start < stop else None


def _with(record: RequestRecord, **changes: Any) -> RequestRecord:
    values = dict(record.__dict__)
    values.update(changes)
    return RequestRecord(**values)


def iter_anchors(page: bytes) -> Iterator[dict[str, str]]:
    """Attributes (plus ``text``) of each ``<a>`` on a simple-index page.
    A small helper for tests; not a general HTML parser."""
    from html.parser import HTMLParser

    found: list[dict[str, str]] = []

    class _Parser(HTMLParser):
        current: dict[str, str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "a":
                self.current = {k: v or "" for k, v in attrs}

        def handle_data(self, data):
            if self.current is not None:
                self.current["text"] = self.current.get("text", "") + data

        def handle_endtag(self, tag):
            if tag == "a" and self.current is not None:
                found.append(self.current)
                self.current = None

    parser = _Parser()
    parser.feed(page.decode())
    parser.close()
    return iter(found)
