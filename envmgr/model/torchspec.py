"""What a profile's ``torch`` and ``variant`` keys may say, read without the knowledge base
(packaging's specifiers only: ``lock`` reads them before its resolver starts, and the
knowledge base while it works). ``variants`` offers both with the rest."""

from __future__ import annotations

import re

from packaging.specifiers import InvalidSpecifier, SpecifierSet

_VARIANT_RE = re.compile(r"^(cpu|cu\d{3}|rocm\d+\.\d+(\.\d+)?|xpu)$")


def parse_torch_spec(spec: str) -> SpecifierSet:
    """``"2.7.1"`` means ``==2.7.1``; anything else must be a PEP 440 specifier."""
    text = spec.strip()
    if text and text[0].isdigit():
        text = "==" + text
    try:
        return SpecifierSet(text)
    except InvalidSpecifier as exc:
        raise ValueError(f"not a version or specifier: {spec!r}") from exc


def is_variant_name(variant: str) -> bool:
    return bool(_VARIANT_RE.match(variant))
