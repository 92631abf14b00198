"""Pull-through cache counters per upstream: cache hits and misses, upstream requests,
bytes and errors.

Counts are kept in the process (`add`) and, once `share(redis_client)` was called (every
process of a scaled deployment does, through pipeline.proxy.leases), also added to
one Redis hash, so the API's /metrics shows what the workers fetched. `snapshot()` reads
the shared totals when there are any, the process's own otherwise (embedded mode, where
API and worker are one process).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any

log = logging.getLogger("lading.proxy")

COUNTERS = ("cache_hits", "cache_misses", "upstream_requests", "upstream_bytes", "upstream_errors")
REDIS_KEY = "lading:proxy:stats"

_lock = threading.Lock()
_local: Counter[tuple[str, str]] = Counter()
_shared: Any = None  # a redis.Redis


def share(client: Any) -> None:
    """Also count into Redis (see module docstring)."""
    global _shared
    _shared = client


def add(upstream: str, counter: str, amount: int = 1) -> None:
    with _lock:
        _local[(upstream, counter)] += amount
    if _shared is not None:
        try:
            _shared.hincrby(REDIS_KEY, f"{upstream}\t{counter}", amount)
        except Exception as exc:  # a counter never fails the pull it counts
            log.warning("could not count %s in Redis: %s", counter, exc)


def snapshot() -> dict[tuple[str, str], int]:
    """{(upstream label, counter): total}."""
    if _shared is not None:
        try:
            raw = _shared.hgetall(REDIS_KEY)
        except Exception as exc:
            log.warning("could not read proxy counters from Redis: %s", exc)
        else:
            out: dict[tuple[str, str], int] = {}
            for field, value in raw.items():
                text = field.decode() if isinstance(field, bytes) else str(field)
                upstream, _, counter = text.partition("\t")
                out[(upstream, counter)] = int(value)
            return out
    with _lock:
        return dict(_local)
