"""A job's status, serialised once and served again while nothing it shows has changed.

Many dashboards poll one job. Without this each poll re-reads the job and its shards, builds
the view and serialises the same few kB (~2 ms of CPU). With it, a poll costs one small
query: `shared.jobs.repository.job_status_stamp`, a token that changes whenever a row the view reads
was written (Postgres' row versions), and the stored bytes are sent when the token matches.
So a poll never shows an older state than the database holds, whoever wrote it (a worker,
another API process, this one).

The one thing the token does not see is the clock: a running job's rate and ETA are computed
at read time, so a running job's entry is reused for at most `max_age_s`
(DSGEN_API_STATUS_CACHE_S, 1 s; 0 turns the cache off).
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

Key = tuple[uuid.UUID, uuid.UUID]  # (tenant, job)


@dataclass(frozen=True)
class Entry:
    stamp: str
    body: bytes
    final: bool  # the job is terminal: its view no longer depends on the clock
    stored_at: float


class StatusCache:
    """Bounded by the bytes it holds (a view of a job with thousands of shards is large):
    past `max_bytes` the oldest entries go first."""

    def __init__(self, max_age_s: float, max_bytes: int = 64 * 2**20):
        self.max_age_s, self.max_bytes = max_age_s, max_bytes
        self._entries: dict[Key, Entry] = {}  # insertion order = age
        self._bytes = 0
        self._lock = threading.Lock()

    def read(self, key: Key, stamp: Callable[[], str | None], load: Callable[[], tuple[bytes, bool]]) -> bytes:
        """The view's bytes: the stored ones when `stamp()` still matches, else `load()` ->
        (bytes, final), stored under the stamp read *before* it (a load that raced a write
        is stored under the older token, so the next poll reads again)."""
        if self.max_age_s <= 0:
            return load()[0]
        token = stamp()
        if token is not None:
            with self._lock:
                hit = self._entries.get(key)
            if hit is not None and hit.stamp == token and (
                    hit.final or time.monotonic() - hit.stored_at <= self.max_age_s):
                return hit.body
        body, final = load()
        if token is not None and len(body) <= self.max_bytes:
            self._store(key, Entry(token, body, final, time.monotonic()))
        return body

    def _store(self, key: Key, entry: Entry) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old.body)
            while self._entries and self._bytes + len(entry.body) > self.max_bytes:
                self._bytes -= len(self._entries.pop(next(iter(self._entries))).body)
            self._entries[key] = entry
            self._bytes += len(entry.body)
