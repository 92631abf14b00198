"""Counting failed logins so they can be throttled, the same at every API replica.

`FailureCounters` is the protocol: fixed-window counters keyed by strings.
`LocalFailureCounters` keeps them in this process (embedded mode: the only process),
`RedisFailureCounters` in the deployment's Redis (`INCR` + `EXPIRE`, so every replica
sees every failure). `LoginThrottle` holds the policy:

- per (user, client address) pair: at most `pair_limit` failures per window. An attacker
  guessing alice's password from one address stops after a few tries, while alice, from
  her own address, is not affected (no lockout an attacker can aim at a user);
- per client address: at most `address_limit` failures per window, whatever the user
  names (one address spraying passwords over many users).

A throttled attempt is refused before its password is checked (no bcrypt spent), with
the seconds until the window ends. A success clears its pair's counter, never the
address's (an attacker's own valid account must not reset the spray limit).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import redis

    from pipeline.infra.coordination import Coordination

__all__ = [
    "FailureCounters",
    "LocalFailureCounters",
    "LoginThrottle",
    "RedisFailureCounters",
    "failure_counters_for",
]


class FailureCounters(Protocol):
    def add(self, key: str, window_seconds: float) -> None:
        """Count one failure under `key` (its window starts at the first failure)."""

    def get(self, key: str) -> tuple[int, float]:
        """(failures in the current window, seconds until it ends); (0, 0) if none."""

    def clear(self, key: str) -> None: ...


class LocalFailureCounters:
    """In-process counters (embedded mode)."""

    MAX_KEYS = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}  # key → (count, window end, monotonic)

    def add(self, key: str, window_seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            count, end = self._counts.get(key, (0, 0.0))
            if end <= now:
                count, end = 0, now + window_seconds
            self._counts[key] = (count + 1, end)
            if len(self._counts) > self.MAX_KEYS:
                for stale in [k for k, (_, e) in self._counts.items() if e <= now]:
                    del self._counts[stale]

    def get(self, key: str) -> tuple[int, float]:
        now = time.monotonic()
        with self._lock:
            count, end = self._counts.get(key, (0, 0.0))
        return (count, end - now) if end > now else (0, 0.0)

    def clear(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)


class RedisFailureCounters:
    """Counters in Redis, shared by every replica (keys under `prefix`)."""

    def __init__(self, client: redis.Redis, prefix: str = "lading:login:") -> None:
        self._redis = client
        self._prefix = prefix

    def add(self, key: str, window_seconds: float) -> None:
        name = self._prefix + key
        pipe = self._redis.pipeline()
        pipe.incr(name)
        pipe.expire(name, max(1, math.ceil(window_seconds)), nx=True)
        pipe.execute()

    def get(self, key: str) -> tuple[int, float]:
        name = self._prefix + key
        pipe = self._redis.pipeline()
        pipe.get(name)
        pipe.pttl(name)
        value, pttl = pipe.execute()
        if value is None or pttl is None or pttl <= 0:
            return 0, 0.0
        return int(value), pttl / 1000

    def clear(self, key: str) -> None:
        self._redis.delete(self._prefix + key)


def failure_counters_for(coordination: Coordination) -> FailureCounters:
    """The Redis every process shares, or this process's memory when embedded."""
    if coordination.redis is None:
        return LocalFailureCounters()
    return RedisFailureCounters(coordination.redis.client())


def _h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class LoginThrottle:
    """The throttling policy over `counters` (see the module docstring)."""

    counters: FailureCounters
    pair_limit: int = 10
    address_limit: int = 100
    window_seconds: float = 900.0

    def _keys(self, user: str, address: str) -> tuple[str, str]:
        return f"pair:{_h(user)}:{_h(address)}", f"addr:{_h(address)}"

    def retry_after(self, user: str, address: str) -> float | None:
        """Seconds to wait if `user` at `address` may not try now, else None."""
        pair, addr = self._keys(user, address)
        pair_count, pair_left = self.counters.get(pair)
        addr_count, addr_left = self.counters.get(addr)
        waits = []
        if pair_count >= self.pair_limit:
            waits.append(pair_left)
        if addr_count >= self.address_limit:
            waits.append(addr_left)
        return max(max(waits), 1.0) if waits else None

    def failed(self, user: str, address: str) -> None:
        for key in self._keys(user, address):
            self.counters.add(key, self.window_seconds)

    def succeeded(self, user: str, address: str) -> None:
        self.counters.clear(self._keys(user, address)[0])
