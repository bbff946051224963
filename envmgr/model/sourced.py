"""Facts that say where they came from (the wheel's metadata or binary, the knowledge base,
or inferred): the one reading of those (fact, source) pairs, for the lock and the table."""

from __future__ import annotations

INFERRED = "inferred"


class Sourced:
    """A mixin: ``_source_pairs()`` gives the (fact, source) pairs of the value."""

    def _source_pairs(self) -> tuple[tuple[str, str], ...]:
        raise NotImplementedError

    def source_of(self, fact: str) -> str:
        return dict(self._source_pairs()).get(fact, "")

    @property
    def inferred(self) -> tuple[str, ...]:
        """The recorded facts that no primary source gave."""
        return tuple(name for name, src in self._source_pairs() if src == INFERRED)
