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


def _userinfo(url: str):
    """(split URL, ``user:password`` part, host part), or None for a URL without one."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return None
    userinfo, host = parts.netloc.rsplit("@", 1)
    return parts, userinfo, host


def redact(url: str) -> str:
    """The URL without any password or token: safe to write and print."""
    found = _userinfo(url)
    if found is None:
        return url
    parts, userinfo, host = found
    user = userinfo.split(":", 1)[0]
    if _ENV_REF.fullmatch(userinfo) or (":" not in userinfo and not _ENV_REF.search(userinfo)):
        shown = "****"  # a bare token as user name is a secret too
    else:
        shown = f"{user}:****" if not _ENV_REF.search(user) else "****"
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


def strip_credentials(url: str) -> str:
    """The URL without its ``user:password@`` part."""
    return strip_secrets(url, refs=None)[0]


def strip_secrets(url: str, *, refs: re.Pattern | None = _ENV_REF) -> tuple[str, bool]:
    """(the URL fit to write, whether credentials were removed from it).

    Credentials made only of ``${VAR}`` references (``refs``: those the reader of the
    written URL expands) are kept, as is a plain user name before a ``${VAR}`` password;
    anything literal goes, the user name with it. ``refs=None`` removes every credential.
    """
    found = _userinfo(url)
    if found is None:
        return url, False
    parts, userinfo, host = found
    if refs is not None:
        user, _, password = userinfo.partition(":")
        if password and refs.fullmatch(password):
            return url, False  # user:${TOKEN}: the user name is not a secret
        if refs.fullmatch(user) and not password:
            return url, False
    return urlunsplit(parts._replace(netloc=host)), True
