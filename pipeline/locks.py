"""Per-repository mutual exclusion for state-changing use cases (manifest commit/delete).

Locks are scoped to one repository name and never global, so a slow commit in one
repository never holds up another. `LocalLocks` serves one process (embedded mode,
tests); `workers/locks.py` implements the same protocol on Redis for many workers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from pipeline.errors import TooManyRequests


class RepositoryLocks(Protocol):
    def lock(self, repository: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        """Hold the repository's lock for the `with` block; TooManyRequests if it cannot
        be had within `timeout` seconds."""
        ...


@dataclass
class _Entry:
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class LocalLocks:
    """In-process locks, one `threading.Lock` per repository name, created on first use
    and dropped when no thread holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()  # protects only the dict, never held while working
        self._entries: dict[str, _Entry] = {}

    @contextmanager
    def _hold(self, repository: str, timeout: float) -> Iterator[None]:
        with self._guard:
            entry = self._entries.setdefault(repository, _Entry())
            entry.users += 1
        try:
            acquired = entry.lock.acquire(timeout=timeout) if timeout > 0 else entry.lock.acquire(False)
            if not acquired:
                raise TooManyRequests(f"repository {repository!r} is busy; try again later")
            try:
                yield
            finally:
                entry.lock.release()
        finally:
            with self._guard:
                entry.users -= 1
                if entry.users == 0:
                    del self._entries[repository]

    def lock(self, repository: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        return self._hold(repository, timeout)
