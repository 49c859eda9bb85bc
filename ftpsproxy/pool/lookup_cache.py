"""The lookup's answers, kept for a while: found ones for ``ttl``, ``404`` for ``negative_ttl``.

Bounded in entries (the least recently used go first), so a client trying a million
user names costs memory for ``max_entries`` of them.  Failures are never kept: the
next login asks again.  Time is passed in, so the cache is tested without a clock.
"""

from __future__ import annotations

from collections import OrderedDict

from ftpsproxy.pool.lookup_reply import Answer, NotFound

MAX_ENTRIES = 10_000


class LookupCache:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Answer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user: str, now: float) -> Answer | None:
        """The answer kept for *user*, unless it has expired."""
        kept = self._entries.get(user)
        if kept is None:
            return None
        expires, answer = kept
        if now >= expires:
            del self._entries[user]
            return None
        self._entries.move_to_end(user)
        return answer

    def put(
        self, user: str, answer: Answer, now: float, *, ttl: float, negative_ttl: float
    ) -> None:
        lifetime = negative_ttl if isinstance(answer, NotFound) else ttl
        self._entries[user] = (now + lifetime, answer)
        self._entries.move_to_end(user)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
