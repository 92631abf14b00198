"""Per-repository mutual exclusion for state-changing use cases (manifest commit/delete)
and maintenance runs (`pipeline.maintenance.locking`, lock names starting with `_`).

Locks are scoped to one name and never global, so a slow commit in one repository never
holds up another. Two implementations of `RepositoryLocks`:

- `LocalLocks`: in-process, for tests and embedded mode on storage no other process
  reaches (in-memory);
- `FileLocks`: `flock(2)` on files beside the storage, for embedded mode on filesystem
  storage, where `lading gc` / `scrub` / `purge-uploads` run as other processes next to
  `lading serve` on the same host;
- `RedisLocks`: one redis-py `Lock` per name in the deployment's shared Redis. The lock
  holds a short lease that a background thread renews while the holder runs, so a long
  critical section keeps its lock and a process that dies releases it within one lease.

Which one a process uses is decided once, by `pipeline.infra.coordination.coordination_for`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import redis
from redis.exceptions import LockError

from pipeline.errors import StorageUnavailable, TooManyRequests

log = logging.getLogger(__name__)


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


class FileLocks:
    """Locks shared by the processes of one host: an exclusive `flock` on one file per name
    in `directory`. Threads of one process first queue on an in-process lock, so flock only
    ever arbitrates between processes, which poll for it every `poll` seconds.

    The holder removes the file before unlocking it, so names used once (an upload
    session's) leave nothing behind. A process that opened the old file and gets its lock
    after that finds the path no longer names the file it locked, and starts again on the
    path's current file: the lock is never split between two files."""

    def __init__(self, directory: str, poll: float = 0.01) -> None:
        self.directory = directory  # made on first use
        self._poll = poll
        self._local = LocalLocks()

    @contextmanager
    def _hold(self, name: str, timeout: float) -> Iterator[None]:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._local.lock(name, timeout):
            path = os.path.join(self.directory, hashlib.sha256(name.encode()).hexdigest()[:32])
            fd = self._lock_current(path, name, deadline)
            try:
                yield
            finally:
                try:
                    os.unlink(path)  # while locked: see the class docstring
                except FileNotFoundError:
                    pass
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _lock_current(self, path: str, name: str, deadline: float) -> int:
        """A descriptor of the file at `path`, locked, that `path` still names."""
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:
                os.makedirs(self.directory, exist_ok=True)
                continue
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise TooManyRequests(
                                {"repository": name, "reason": "locked by another process"}
                            ) from None
                        time.sleep(self._poll)
                try:
                    current = os.stat(path).st_ino
                except FileNotFoundError:
                    current = None
            except BaseException:
                os.close(fd)
                raise
            if current == os.fstat(fd).st_ino:
                return fd
            os.close(fd)  # its holder removed it after we opened it: lock the current one

    def lock(self, repository: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        return self._hold(repository, timeout)


KEY_PREFIX = "lading:lock:repository:"
# How often a waiter retries a held Redis lock (redis-py's default, 0.1 s, would add up to
# 100 ms to a blob commit waiting for an advance-digest job that is about to finish).
POLL = 0.01


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

    @contextmanager
    def lock(self, repository: str, timeout: float = 60.0) -> Iterator[None]:
        """Hold `repository`'s lock for the `with` block, waiting at most `timeout` s."""
        lock = self._client.lock(
            self._prefix + repository,
            timeout=self._lease,
            sleep=POLL,
            blocking_timeout=timeout,
            thread_local=False,
        )
        try:
            acquired = lock.acquire()
        except redis.RedisError as exc:
            # Redis down, partitioned or frozen (its socket timeout ran out): 503, and a
            # job's StorageUnavailable retry, instead of an unmapped redis error (500).
            raise StorageUnavailable(
                {"repository": repository, "reason": f"repository locks unavailable ({type(exc).__name__})"}
            ) from None
        if not acquired:
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
            except redis.RedisError as exc:  # Redis unreachable: the lease expires by itself
                log.warning("could not release the lock of %r (%s)", repository, type(exc).__name__)

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
