"""TOML text written by hand (stdlib only: ``lock`` writes the resolver's input with it before
anything else of the lock model is loaded)."""

from __future__ import annotations

import json


def toml_str(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's (\\" \\\\ \\n \\uXXXX); DEL must be escaped too."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
