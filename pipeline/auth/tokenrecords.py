"""What every token server replica must agree on about refresh tokens it issued: which
were already used (rotation), which families were revoked after a replay, and since when
each user's tokens are revoked (`lading tokens revoke USER`).

`TokenRecords` is the protocol; `LocalTokenRecords` keeps the records in this process
(embedded mode: the only process), `RedisTokenRecords` in the deployment's Redis, so a
refresh token used at one API replica is refused at every other. Records expire with the
tokens they are about, so neither grows without bound.
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import redis

    from pipeline.infra.coordination import Coordination

__all__ = ["LocalTokenRecords", "RedisTokenRecords", "TokenRecords", "subject_key", "token_records_for"]

USER_REVOCATION_TTL = 400 * 24 * 3600  # longer than any refresh token lives


def subject_key(subject: str) -> str:
    """A fixed-length key for a user name (no user name in Redis key names)."""
    return hashlib.sha256(subject.encode("utf-8")).hexdigest()[:32]


class TokenRecords(Protocol):
    def consume(self, token_id: str, ttl_seconds: float) -> bool:
        """Record `token_id` as used; True the first time, False if it was used before."""

    def revoke_family(self, family: str, ttl_seconds: float) -> None:
        """Refuse every token of `family` from now on (a used token was replayed)."""

    def family_revoked(self, family: str) -> bool: ...

    def revoke_subject(self, subject: str, at: float) -> None:
        """Refuse every token of `subject` issued at or before `at` (Unix seconds)."""

    def subject_revoked_at(self, subject: str) -> float | None:
        """When `subject`'s tokens were last revoked, or None."""


class LocalTokenRecords:
    """In-process records (embedded mode)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._used: dict[str, float] = {}  # token id → expiry (monotonic)
        self._families: dict[str, float] = {}
        self._subjects: dict[str, float] = {}

    def _purge(self, table: dict[str, float], now: float) -> None:
        if len(table) > 1024:
            for key in [k for k, expiry in table.items() if expiry <= now]:
                del table[key]

    def consume(self, token_id: str, ttl_seconds: float) -> bool:
        now = time.monotonic()
        with self._lock:
            self._purge(self._used, now)
            expiry = self._used.get(token_id)
            if expiry is not None and expiry > now:
                return False
            self._used[token_id] = now + max(ttl_seconds, 1.0)
            return True

    def revoke_family(self, family: str, ttl_seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            self._purge(self._families, now)
            self._families[family] = now + max(ttl_seconds, 1.0)

    def family_revoked(self, family: str) -> bool:
        with self._lock:
            expiry = self._families.get(family)
            return expiry is not None and expiry > time.monotonic()

    def revoke_subject(self, subject: str, at: float) -> None:
        with self._lock:
            self._subjects[subject_key(subject)] = at

    def subject_revoked_at(self, subject: str) -> float | None:
        with self._lock:
            return self._subjects.get(subject_key(subject))


class RedisTokenRecords:
    """Records in Redis, shared by every replica (keys under `prefix`)."""

    def __init__(self, client: redis.Redis, prefix: str = "lading:tokens:") -> None:
        self._redis = client
        self._prefix = prefix

    def consume(self, token_id: str, ttl_seconds: float) -> bool:
        key = f"{self._prefix}used:{token_id}"
        return bool(self._redis.set(key, b"1", nx=True, ex=max(int(ttl_seconds) + 1, 1)))

    def revoke_family(self, family: str, ttl_seconds: float) -> None:
        self._redis.set(f"{self._prefix}family:{family}", b"1", ex=max(int(ttl_seconds) + 1, 1))

    def family_revoked(self, family: str) -> bool:
        return bool(self._redis.exists(f"{self._prefix}family:{family}"))

    def revoke_subject(self, subject: str, at: float) -> None:
        self._redis.set(f"{self._prefix}user:{subject_key(subject)}", repr(at), ex=USER_REVOCATION_TTL)

    def subject_revoked_at(self, subject: str) -> float | None:
        value = self._redis.get(f"{self._prefix}user:{subject_key(subject)}")
        return float(value) if value is not None else None


def token_records_for(coordination: Coordination) -> TokenRecords:
    """Where this deployment keeps token records: in the Redis every process shares
    (`pipeline.infra.coordination`, which refuses a scaled-out deployment without one), or in
    this process when embedded."""
    if coordination.redis is None:
        return LocalTokenRecords()
    return RedisTokenRecords(coordination.redis.client())
