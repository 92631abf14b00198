"""Per-repository locks shared by every worker process: `RedisLocks`.

It implements `pipeline.locks.RepositoryLocks` with one redis-py `Lock` per repository
name (never a global lock). The lock holds a short lease that a background thread renews
while the holder runs, so a long critical section keeps its lock and a worker that dies
releases it within one lease. Waiting longer than `timeout` raises `TooManyRequests`.

`locks_for(settings)` picks the implementation a worker process uses: Redis whenever the
broker or result backend is Redis (workers are then separate processes), the in-process
`LocalLocks` otherwise (embedded mode, where every worker is a thread of one process).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.exceptions import LockError

from pipeline.errors import TooManyRequests
from pipeline.locks import LocalLocks, RepositoryLocks
from pipeline.settings import Settings

log = logging.getLogger(__name__)

KEY_PREFIX = "lading:lock:repository:"


class RedisLocks:
    """Repository locks in Redis (see module docstring)."""

    def __init__(self, client: redis.Redis, lease: float = 30.0, prefix: str = KEY_PREFIX) -> None:
        if lease <= 0:
            raise ValueError("lease must be positive")
        self._client = client
        self._lease = lease
        self._prefix = prefix
        self._renewer: _Renewer | None = None
        self._renewer_pid = 0
        self._guard = threading.Lock()

    @classmethod
    def from_url(cls, url: str, lease: float = 30.0) -> RedisLocks:
        return cls(redis.Redis.from_url(url), lease=lease)

    @contextmanager
    def lock(self, repository: str, timeout: float = 60.0) -> Iterator[None]:
        """Hold `repository`'s lock for the `with` block, waiting at most `timeout` s."""
        lock = self._client.lock(
            self._prefix + repository, timeout=self._lease, blocking_timeout=timeout, thread_local=False
        )
        if not lock.acquire():
            raise TooManyRequests(
                {"repository": repository, "reason": f"repository is locked; waited {timeout:g}s"}
            )
        renewer = self._get_renewer()
        renewer.add(lock)
        try:
            yield
        finally:
            renewer.discard(lock)
            try:
                lock.release()
            except LockError:
                # The lease ran out (renewal failed, e.g. Redis was unreachable): someone else
                # may hold it now, and there is nothing of ours left to release.
                log.warning("lock for repository %r expired before release", repository)

    def _get_renewer(self) -> _Renewer:
        # A renewer thread does not survive fork: a prefork child starts its own.
        with self._guard:
            if self._renewer is None or self._renewer_pid != os.getpid():
                self._renewer = _Renewer(self._lease)
                self._renewer_pid = os.getpid()
            return self._renewer


class _Renewer:
    """One daemon thread per process that extends the lease of every held lock."""

    def __init__(self, lease: float) -> None:
        self._lease = lease
        self._held: weakref.WeakSet[redis.lock.Lock] = weakref.WeakSet()
        self._mutex = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lading-lock-renewer", daemon=True)
        self._thread.start()

    def add(self, lock: redis.lock.Lock) -> None:
        with self._mutex:
            self._held.add(lock)

    def discard(self, lock: redis.lock.Lock) -> None:
        with self._mutex:
            self._held.discard(lock)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._lease / 3)
            with self._mutex:
                held = list(self._held)
            for lock in held:
                try:
                    lock.reacquire()
                except (LockError, redis.RedisError) as exc:
                    log.warning("could not renew lock %r: %s", lock.name, exc)


def redis_url_of(settings: Settings) -> str | None:
    """The Redis URL lock state lives in: the broker's, else the result backend's."""
    for url in (settings.celery.broker_url, settings.celery.result_backend):
        if url and url.split("://", 1)[0] in ("redis", "rediss"):
            return url
    return None


def locks_for(settings: Settings) -> RepositoryLocks:
    """Redis locks when a Redis is configured, in-process locks otherwise."""
    url = redis_url_of(settings)
    if url is not None:
        return RedisLocks.from_url(url)
    if not settings.celery.embedded:
        log.warning("no Redis configured: repository locks are per process, so run a single worker process")
    return LocalLocks()
