"""Credentials for index hosts: ``user:token@`` in index URLs, used per host, never shown
(redaction itself is ``core.urls``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Auth:
    """Basic credentials by host, taken from index URLs (``user:token@host``)."""

    by_host: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def from_urls(cls, urls: Iterable[str]) -> "Auth":
        out = []
        for url in urls:
            parts = urlsplit(url)
            if parts.username is not None:
                out.append((parts.hostname or "", unquote(parts.username), unquote(parts.password or "")))
        return cls(tuple(out))

    def for_url(self, url: str) -> tuple[str, str] | None:
        host = urlsplit(url).hostname or ""
        for h, user, password in self.by_host:
            if h == host:
                return (user, password)
        return None


def profile_auth(project, name: str) -> Auth:
    """Credentials from a profile's index URLs (``user:token@host``, ``${VAR}`` expanded); none
    when the profile cannot be read (the lock's own URLs are then all there is)."""
    from ..core.errors import EnvmgrError
    from ..core.urls import expand_env
    from ..model import profiles

    try:
        p = profiles.load(project, name)
    except EnvmgrError:
        return Auth()
    urls = [u for u in (p.index_url, p.torch_index, *p.extra_index_urls) if "://" in u]
    return Auth.from_urls(expand_env(u) for u in urls if "@" in u)
