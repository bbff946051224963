"""A small YAML writer for manifests: block mappings and sequences, literal blocks for
multi-line text, JSON-quoted strings wherever a plain scalar could be read as something else.

Only what manifests hold (dict, list, str, int, float, bool, None); keys keep their order.
The tests read every document back with PyYAML and compare it with the data written.
"""

from __future__ import annotations

import json
import re

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(value) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text, ensure_ascii=False)


def _literal_ok(text: str) -> bool:
    """A literal block keeps ``text`` exactly: no CR, no other control characters, no lines
    of only spaces after a more indented one (YAML folds those), first line not indented."""
    if "\n" not in text or "\r" in text or text.startswith((" ", "\t")):
        return False
    if any(ord(c) < 32 and c not in "\n\t" for c in text):
        return False
    if "\ufeff" in text or "\x85" in text or "\u2028" in text or "\u2029" in text:
        return False
    return not any(line and line.strip(" ") == "" for line in text.split("\n"))


def _literal(text: str, indent: int) -> str:
    body = text.rstrip("\n")
    trailing = len(text) - len(body)
    chomp = "-" if trailing == 0 else ("" if trailing == 1 else "+")
    pad = " " * indent
    lines = [pad + line if line else "" for line in body.split("\n")]
    lines += [""] * (trailing - 1 if trailing > 1 else 0)
    return "|" + chomp + "\n" + "\n".join(lines)


def _block(value, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(value, dict):
        if not value:
            return [pad + "{}"]
        for key, item in value.items():
            k = _scalar(str(key))
            out += _entry(pad + k + ":", item, indent)
        return out
    if isinstance(value, (list, tuple)):
        if not value:
            return [pad + "[]"]
        for item in value:
            if isinstance(item, dict) and item:
                inner = _block(item, indent + 2)
                out.append(pad + "- " + inner[0][indent + 2:])
                out += inner[1:]
            else:
                out += _entry(pad + "-", item, indent)
        return out
    return [pad + _scalar(value)]


def _entry(head: str, item, indent: int) -> list[str]:
    if isinstance(item, dict) and item:
        return [head] + _block(item, indent + 2)
    if isinstance(item, (list, tuple)) and item:
        return [head] + _block(item, indent + 2)
    if isinstance(item, dict):
        return [head + " {}"]
    if isinstance(item, (list, tuple)):
        return [head + " []"]
    if isinstance(item, str) and _literal_ok(item):
        return [head + " " + _literal(item, indent + 2)]
    return [head + " " + _scalar(item)]


def dump(doc) -> str:
    """One YAML document (no ``---``)."""
    return "\n".join(_block(doc, 0)) + "\n"


def dump_all(docs) -> str:
    """Several documents, each started by ``---``."""
    return "".join("---\n" + dump(d) for d in docs)
