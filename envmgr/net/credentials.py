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
