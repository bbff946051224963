"""Names as the packaging standards compare them (stdlib only: the fast paths import it)."""

import re


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()
