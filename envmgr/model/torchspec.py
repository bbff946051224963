"""What a profile's ``torch`` and ``variant`` keys may say, read without the knowledge base
(packaging's specifiers only: ``lock`` reads them before its resolver starts, and the
knowledge base while it works). ``variants`` offers both with the rest."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from packaging.specifiers import SpecifierSet

_VARIANT_RE = re.compile(r"^(cpu|cu\d{3}|rocm\d+\.\d+(\.\d+)?|xpu)$")
_PLAIN = re.compile(r"(?:==)?\s*(\d+(?:\.\d+)*)")  # 2.15.0 or ==2.15.0: a release, nothing more


def torch_requirement(spec: str) -> str:
    """``torch`` and the spec as :func:`parse_torch_spec` writes it. A plain release (``2.15.0``,
    ``==2.15.0``: what profiles say) is written without packaging, whose specifiers module
    costs a lock ~20 ms of imports before its resolver can start."""
    plain = _PLAIN.fullmatch(spec.strip())
    return f"torch=={plain.group(1)}" if plain else "torch" + str(parse_torch_spec(spec))


def parse_torch_spec(spec: str) -> "SpecifierSet":
    """``"2.7.1"`` means ``==2.7.1``; anything else must be a PEP 440 specifier."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    text = spec.strip()
    if text and text[0].isdigit():
        text = "==" + text
    try:
        return SpecifierSet(text)
    except InvalidSpecifier as exc:
        raise ValueError(f"not a version or specifier: {spec!r}") from exc


def is_variant_name(variant: str) -> bool:
    return bool(_VARIANT_RE.match(variant))
