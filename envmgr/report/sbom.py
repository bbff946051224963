"""A GPU-aware CycloneDX SBOM of a lock (JSON, CycloneDX 1.6).

Input: a :class:`~envmgr.model.lockfile.Lock`. Output: the SBOM text, built with
cyclonedx-python-lib. Every locked package is a component with a ``pkg:pypi`` purl (a
``repository_url`` qualifier when it does not come from the default index), the sha256 of
its files and a distribution reference per file. The GPU facts a reviewer or scanner needs
are properties: ``envmgr:variant``, ``envmgr:cuda``, ``envmgr:min-driver``,
``envmgr:arch-list`` ... on the metadata, ``envmgr:gpu-runtime=true`` on every ``nvidia-*``
component.

Deterministic: the same lock gives the same bytes. The serial number is a UUID derived from
the lock digest; there is no timestamp unless one is passed. Image builds embed this text.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from cyclonedx.model import (
    ExternalReference,
    ExternalReferenceType,
    HashAlgorithm,
    HashType,
    Property,
    XsUri,
)
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.dependency import Dependency
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from packageurl import PackageURL

from .. import __version__
from ..core.errors import UserError
from ..core.urls import strip_credentials
from ..model.lockfile import Lock, LockedPackage
from ..model.variants import kb

SCHEMA_VERSION = SchemaVersion.V1_6
DEFAULT_INDEX = "pypi"  # the keyword locks use for the resolver's default index
_NS = uuid.UUID("5b0f3a52-8c3e-4c4e-9d7b-3a1f6e0c2d41")  # envmgr's namespace for serial numbers


def is_gpu_runtime(name: str) -> bool:
    """The CUDA user-space libraries torch loads at run time: the ``nvidia-*`` wheels."""
    return name.startswith("nvidia-")


def is_default_index(index: str) -> bool:
    """Whether ``index`` is the default index (purls then need no ``repository_url``)."""
    from ..lock.resolve import default_index_url

    return not index or index == DEFAULT_INDEX or index.rstrip("/") == default_index_url().rstrip("/")


def purl(pkg: LockedPackage) -> PackageURL:
    qualifiers = {}
    if not is_default_index(pkg.index):
        qualifiers["repository_url"] = strip_credentials(pkg.index)
    return PackageURL(type="pypi", name=pkg.key, version=pkg.version, qualifiers=qualifiers or None)


def _component(pkg: LockedPackage, multi: bool = False) -> Component:
    """``multi``: the lock is for several platforms; a package's files are then each
    platform's (every one an external reference), and no one of them is *the* file."""
    install = None if multi and len(pkg.files) > 1 else pkg.install_file
    refs = [
        ExternalReference(
            type=ExternalReferenceType.DISTRIBUTION,
            url=XsUri(strip_credentials(f.url)),
            comment=f.filename,
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=f.sha256)],
        )
        for f in pkg.files
    ]
    props = [Property(name="envmgr:index", value=strip_credentials(pkg.index) or DEFAULT_INDEX)]
    if install is not None:
        props.append(Property(name="envmgr:file", value=install.filename))
        props.append(Property(name="envmgr:size", value=str(install.size)))
    if is_gpu_runtime(pkg.key):
        props.append(Property(name="envmgr:gpu-runtime", value="true"))
    if kb().is_torch_family(pkg.key):
        props.append(Property(name="envmgr:torch-family", value="true"))
    if pkg.marker:
        props.append(Property(name="envmgr:marker", value=pkg.marker))
    if pkg.platforms:
        props.append(Property(name="envmgr:platforms", value=" ".join(pkg.platforms)))
    p = purl(pkg)
    return Component(
        type=ComponentType.LIBRARY,
        name=pkg.key,
        version=pkg.version,
        bom_ref=p.to_string(),
        purl=p,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=install.sha256)] if install else None,
        external_references=refs,
        properties=props,
    )


def _metadata_properties(lock: Lock) -> list[Property]:
    m = lock.meta
    runtime = [f"{p.key}=={p.version}" for p in sorted(lock.packages, key=lambda p: p.key) if is_gpu_runtime(p.key)]
    values = {
        "envmgr:profile": m.profile,
        "envmgr:lock-digest": lock.digest(),
        "envmgr:variant": m.variant,
        "envmgr:cuda": m.cuda or "none",
        "envmgr:min-driver": m.min_driver or "none",
        "envmgr:toolkit-driver": m.toolkit_driver or "none",
        "envmgr:arch-list": " ".join(m.arch_list) or "none",
        "envmgr:ptx": m.ptx or "none",
        "envmgr:python": m.python,
        "envmgr:platform": " ".join(m.all_platforms),
        "envmgr:torch-index": strip_credentials(m.torch_index) or "none",
        "envmgr:resolver": f"{m.resolver} {m.resolver_version}".strip(),
        "envmgr:gpu-runtime-components": " ".join(runtime) or "none",
    }
    # what the torch file says of itself, and where each GPU fact came from (an inferred
    # fact is marked: no primary source gave it)
    for key, value in (("build", m.build), ("cudnn", m.cudnn), ("nccl", m.nccl), ("triton", m.triton)):
        if value:
            values[f"envmgr:{key}"] = value
    for fact, source in m.sources:
        values[f"envmgr:source:{fact}"] = source
    if m.sources:
        values["envmgr:inferred-facts"] = " ".join(m.inferred) or "none"
    return [Property(name=k, value=v) for k, v in values.items()]


def build(lock: Lock, *, timestamp: datetime | None = None) -> Bom:
    """The CycloneDX model of ``lock`` (deterministic but for ``timestamp``)."""
    digest = lock.digest()
    root = Component(
        type=ComponentType.APPLICATION,
        name=f"envmgr-profile-{lock.meta.profile}",
        version=digest.split(":", 1)[1][:12],
        bom_ref=f"envmgr-profile:{lock.meta.profile}",
        description=f"environment locked by envmgr for profile {lock.meta.profile!r} ({lock.meta.variant})",
    )
    components = [_component(p, len(lock.platforms) > 1) for p in sorted(lock.packages, key=lambda p: p.key)]
    tool = Component(type=ComponentType.APPLICATION, name="envmgr", version=__version__, bom_ref="envmgr-tool")
    metadata = BomMetaData(component=root, properties=_metadata_properties(lock), timestamp=timestamp)
    metadata.tools.components.add(tool)
    bom = Bom(
        components=components,
        metadata=metadata,
        serial_number=uuid.uuid5(_NS, digest),
    )
    bom.dependencies.add(Dependency(ref=root.bom_ref, dependencies=[Dependency(ref=c.bom_ref) for c in components]))
    for c in components:
        bom.dependencies.add(Dependency(ref=c.bom_ref))
    return bom


def cyclonedx_json(lock: Lock, *, timestamp: datetime | None = None) -> str:
    """The SBOM of ``lock`` as CycloneDX 1.6 JSON text (sorted keys, newline-terminated).

    Without ``timestamp`` the output has none, so the same lock always gives the same text.
    """
    text = JsonV1Dot6(build(lock, timestamp=timestamp)).output_as_string()
    data = json.loads(text)
    if timestamp is None:
        data.get("metadata", {}).pop("timestamp", None)
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def validate(text: str) -> None:
    """Validate SBOM text against the CycloneDX 1.6 JSON schema; UserError if invalid."""
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SCHEMA_VERSION).validate_str(text)
    if error is not None:
        raise UserError(f"SBOM does not validate against CycloneDX {SCHEMA_VERSION.to_version()}: {error}")
