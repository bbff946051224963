"""Credentials in URLs: ``${VAR}`` expanded at use, never shown (stdlib only).

Profiles keep secrets out of the repository by naming environment variables; the
resolver and downloads get the expanded URL, and everything written or printed gets the
redacted or stripped one. Every place that prints, logs or writes a URL goes through here.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from .errors import UserError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(url: str) -> str:
    """Expand ``${VAR}`` references (credentials kept out of profiles)."""

    def sub(m: re.Match) -> str:
        value = os.environ.get(m.group(1))
        if value is None:
            raise UserError(f"index URL refers to ${{{m.group(1)}}}, which is not set", hint="export it or edit the profile")
        return value

    return _ENV_REF.sub(sub, url)


def redact(url: str) -> str:
    """The URL without any password or token: safe to write and print."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    if _ENV_REF.fullmatch(userinfo) or (":" not in userinfo and not _ENV_REF.search(userinfo)):
        shown = "****"  # a bare token as user name is a secret too
    else:
        shown = f"{user}:****" if not _ENV_REF.search(user) else "****"
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


def strip_credentials(url: str) -> str:
    """The URL without its ``user:password@`` part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
