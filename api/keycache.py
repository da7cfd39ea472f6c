"""Verified API keys, remembered by an API process while it hears of every change to them.

Checking a key reads the `api_keys` table on a thread-pool hop, and on a busy host that hop is a
good part of a request's latency. An API process that listens for notifications (PostgreSQL,
api/notify.py) also hears of every change to that table (a trigger, migration 0014) and then
remembers the keys it verified, for at most `api_key_cache_s`:

- any change to the table (a key revoked or deleted, by anyone), or the listening connection
  lost or re-made, forgets every key remembered;
- a key is remembered only when no such change was heard while it was being read;
- a key that failed is never remembered, and nothing is remembered while not listening (SQLite,
  an outage), when every request reads the table as before.

So a revoked key is refused as soon as this process hears of the change, within milliseconds of
its commit; by the process that revoked it (DELETE /keys/{id}), at once. The time limit bounds
the case of a listening connection that died without the process noticing.
"""

from __future__ import annotations

import time

from shared.auth import Caller, hash_key


class KeyCache:
    """The keys this process verified since it last heard of a change to them."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Caller, float]] = {}  # key hash -> (caller, expiry)
        self._live = False
        # Bumped by every forget(): a read begun before a change must not be remembered after it.
        self.generation = 0

    @property
    def live(self) -> bool:
        """Whether keys are remembered now (listening, and a time limit above zero)."""
        return self._live

    def listening(self, live: bool) -> None:
        """The notification listener started (True) or lost (False) its connection."""
        self._live = live and self.ttl_s > 0
        self.forget()

    def forget(self) -> None:
        """Forget every key (a change to the keys was heard, or may have gone unheard)."""
        self._entries.clear()
        self.generation += 1

    def get(self, presented: str | None) -> Caller | None:
        """The caller a remembered key belongs to; None when it must be read."""
        if not self._live or not presented:
            return None
        digest = hash_key(presented)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        caller, expires = entry
        if time.monotonic() >= expires:
            del self._entries[digest]
            return None
        return caller

    def remember(self, presented: str | None, caller: Caller, generation: int) -> None:
        """Remember a key verified by a read begun at `generation` (dropped if a change came
        since, or while not listening)."""
        if not self._live or not presented or generation != self.generation:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[hash_key(presented)] = (caller, time.monotonic() + self.ttl_s)
