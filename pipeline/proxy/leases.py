"""Single-flight state shared by every process that serves or fills the cache.

A fetch of one blob into one proxied repository is announced by a lease: a small JSON
record under a key, created only if absent (`claim`), rewritten by its owner while the
fetch runs (`put`, which also extends its expiry) and dropped when the fetch ends. The
first process to claim a key fetches; everyone else reads the record to find the upload
session the bytes are arriving in. A fetcher that dies stops renewing and its lease expires
within `LEASE_SECONDS`, after which the next request claims it again.

Backends: Redis (`SET NX PX`) — the one pipeline.infra.coordination names for the deployment's
locks — when API replicas and workers are separate processes, and one in-process table in
embedded mode (the API and its worker are threads of one process).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Protocol

from pipeline.config.settings import Settings
from pipeline.infra.coordination import coordination_for
from pipeline.proxy import stats

LEASE_SECONDS = 30.0
KEY_PREFIX = "lading:proxy:"


class Leases(Protocol):
    def claim(self, key: str, value: dict[str, Any], ttl: float) -> bool:
        """Create the record if there is none; True when this call created it."""
        ...

    def put(self, key: str, value: dict[str, Any], ttl: float) -> None:
        """Write the record (its owner's update), expiring in `ttl` seconds."""
        ...

    def get(self, key: str) -> dict[str, Any] | None: ...

    def drop(self, key: str) -> None: ...


class LocalLeases:
    """One process's table (embedded mode, tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[dict[str, Any], float]] = {}

    def _live(self, key: str) -> dict[str, Any] | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._items[key]
            return None
        return item[0]

    def claim(self, key: str, value: dict[str, Any], ttl: float) -> bool:
        with self._lock:
            if self._live(key) is not None:
                return False
            self._items[key] = (dict(value), time.monotonic() + ttl)
            return True

    def put(self, key: str, value: dict[str, Any], ttl: float) -> None:
        with self._lock:
            self._items[key] = (dict(value), time.monotonic() + ttl)

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            value = self._live(key)
            return dict(value) if value is not None else None

    def drop(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


class RedisLeases:
    def __init__(self, client: Any) -> None:
        self._client = client

    def claim(self, key: str, value: dict[str, Any], ttl: float) -> bool:
        return bool(self._client.set(KEY_PREFIX + key, json.dumps(value), nx=True, px=int(ttl * 1000)))

    def put(self, key: str, value: dict[str, Any], ttl: float) -> None:
        self._client.set(KEY_PREFIX + key, json.dumps(value), px=int(ttl * 1000))

    def get(self, key: str) -> dict[str, Any] | None:
        raw = self._client.get(KEY_PREFIX + key)
        if raw is None:
            return None
        value: dict[str, Any] = json.loads(raw)
        return value

    def drop(self, key: str) -> None:
        self._client.delete(KEY_PREFIX + key)


_local = LocalLeases()
_by_url: dict[str, RedisLeases] = {}
_guard = threading.Lock()


def leases_for(settings: Settings) -> Leases:
    """The deployment's leases, in the Redis pipeline.infra.coordination chooses for its locks
    (in-process in embedded mode); one object per process and Redis. Also makes
    pipeline.proxy.stats count into the same Redis."""
    target = coordination_for(settings).redis
    if target is None:
        return _local
    key = target.describe()
    with _guard:
        leases = _by_url.get(key)
        if leases is None:
            client = target.client()
            leases = _by_url[key] = RedisLeases(client)
            stats.share(client)
        return leases
