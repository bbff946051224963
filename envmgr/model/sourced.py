"""Facts that say where they came from (the wheel's metadata or binary, the knowledge base,
or inferred): the one reading of those (fact, source) pairs, for the lock and the table."""

from __future__ import annotations

INFERRED = "inferred"


class Sourced:
    """A mixin for a value whose field named by ``_SOURCES`` holds its (fact, source) pairs."""

    _SOURCES: str

    def source_of(self, fact: str) -> str:
        return dict(getattr(self, self._SOURCES)).get(fact, "")

    @property
    def inferred(self) -> tuple[str, ...]:
        """The recorded facts that no primary source gave."""
        return tuple(name for name, src in getattr(self, self._SOURCES) if src == INFERRED)
