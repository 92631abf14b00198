"""Blob descriptor cache: what CNCF distribution calls `storage.cache.blobdescriptor`.

Clients HEAD every blob before uploading it; each HEAD costs a link read, a data stat and a
quarantine-marker check in storage. The cache remembers, per blob, its size (the global
descriptor) and, per repository, that the repository links it (and to which digest), so a
repeated HEAD is answered without touching storage.

Two implementations behind one small interface:
- `InMemoryBlobCache`: a bounded LRU in this process (embedded mode, one process);
- `RedisBlobCache`: on a redis-py client passed in, shared by every API replica, worker and
  CLI command of a deployment, so an invalidation by one process is seen by all.

Rules (LESSONS.md, distribution#4569):
- Only readers trust the cache (`RepositoryBlobs.describe`: HEAD/GET of a blob). Every writer
  that relies on an existing blob (commit, manifest verification, mount, gc) stats storage.
  Their storage stats refresh the cache, and a stat that finds nothing drops the entry.
- Whatever removes or condemns a blob drops its entries: deleting a blob or a repository
  link, gc's sweep, scrub's quarantine. A dropped entry costs one storage walk, never an error.
- Entries of the Redis cache expire after `ttl` seconds (a day), bounding how long a change
  made behind Lading's back (another registry on the same storage) can be misreported.
- A cache that fails (Redis down) is a miss: the request goes to storage.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.formats.digest import Digest

if TYPE_CHECKING:
    from pipeline.config.settings import Settings

__all__ = [
    "BlobCache",
    "InMemoryBlobCache",
    "NoBlobCache",
    "RedisBlobCache",
    "blob_cache_from_settings",
]

log = logging.getLogger("lading.blobcache")

DEFAULT_SIZE = 10_000
DEFAULT_TTL = 24 * 3600
KEY_PREFIX = "lading:blobcache:"


class BlobCache(Protocol):
    """What the stores need of a descriptor cache. Sizes are ints; None is a miss."""

    def describe(self, repo: str, digest: Digest) -> int | None:
        """The blob's size when `repo` is known to link `digest` and its data is known."""

    def remember(
        self, digest: Digest, size: int, repo: str | None = None, target: Digest | None = None
    ) -> None:
        """Record that `digest` is stored with `size` (and linked into `repo`, naming
        `target`, the digest whose data the link names)."""

    def forget(self, digest: Digest) -> None:
        """Drop the global descriptor of `digest` (deleted, swept or quarantined)."""

    def forget_link(self, repo: str, digest: Digest) -> None:
        """Drop `repo`'s membership entry for `digest` (the link was removed)."""


class NoBlobCache:
    """No cache: every lookup is a miss (the default, as in distribution)."""

    def describe(self, repo: str, digest: Digest) -> int | None:
        return None

    def remember(
        self, digest: Digest, size: int, repo: str | None = None, target: Digest | None = None
    ) -> None:
        pass

    def forget(self, digest: Digest) -> None:
        pass

    def forget_link(self, repo: str, digest: Digest) -> None:
        pass


class InMemoryBlobCache:
    """A bounded LRU of descriptors and memberships in this process (thread-safe)."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = max(1, size)
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._links: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def describe(self, repo: str, digest: Digest) -> int | None:
        with self._lock:
            target = self._links.get((repo, str(digest)))
            if target is None:
                return None
            size = self._sizes.get(target)
            if size is None:
                return None
            self._links.move_to_end((repo, str(digest)))
            self._sizes.move_to_end(target)
            return size

    def remember(
        self, digest: Digest, size: int, repo: str | None = None, target: Digest | None = None
    ) -> None:
        data = str(target or digest)
        with self._lock:
            self._sizes[data] = size
            self._sizes.move_to_end(data)
            if repo is not None:
                self._links[(repo, str(digest))] = data
                self._links.move_to_end((repo, str(digest)))
            for table in (self._sizes, self._links):
                while len(table) > self.size:
                    table.popitem(last=False)

    def forget(self, digest: Digest) -> None:
        with self._lock:
            self._sizes.pop(str(digest), None)

    def forget_link(self, repo: str, digest: Digest) -> None:
        with self._lock:
            self._links.pop((repo, str(digest)), None)


class RedisBlobCache:
    """Descriptors in Redis, shared by every process of a deployment.

    Keys: `<prefix>d:<digest>` → size, `<prefix>l:<repo>@<digest>` → target digest, each
    with a TTL. A lookup is one MGET (one round trip); a record one pipelined SET pair."""

    def __init__(self, client: Any, ttl: int = DEFAULT_TTL, prefix: str = KEY_PREFIX) -> None:
        self.client = client
        self.ttl = ttl
        self.prefix = prefix

    def _d(self, digest: str) -> str:
        return f"{self.prefix}d:{digest}"

    def _l(self, repo: str, digest: str) -> str:
        return f"{self.prefix}l:{repo}@{digest}"

    def describe(self, repo: str, digest: Digest) -> int | None:
        try:
            target, size = self.client.mget([self._l(repo, str(digest)), self._d(str(digest))])
            if target is None:
                return None
            if target.decode() != str(digest):  # a cross-algorithm link: the target's data
                size = self.client.get(self._d(target.decode()))
            return None if size is None else int(size)
        except Exception as exc:  # a cache failure is a miss
            log.debug("blob cache lookup failed: %s", exc)
            return None

    def remember(
        self, digest: Digest, size: int, repo: str | None = None, target: Digest | None = None
    ) -> None:
        data = str(target or digest)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self._d(data), size, ex=self.ttl)
            if repo is not None:
                pipe.set(self._l(repo, str(digest)), data, ex=self.ttl)
            pipe.execute()
        except Exception as exc:
            log.debug("blob cache record failed: %s", exc)

    def forget(self, digest: Digest) -> None:
        # A failed invalidation is logged loudly but does not fail the delete it follows:
        # only HEAD/GET trust the cache, and the entry expires after `ttl`.
        try:
            self.client.delete(self._d(str(digest)))
        except Exception:
            log.error("blob cache: could not drop %s (stale for up to %ss)", digest, self.ttl, exc_info=True)

    def forget_link(self, repo: str, digest: Digest) -> None:
        try:
            self.client.delete(self._l(repo, str(digest)))
        except Exception:
            log.error("blob cache: could not drop %s in %s", digest, repo, exc_info=True)


def blob_cache_from_settings(settings: Settings, client: Any = None) -> BlobCache:
    """The cache `storage.cache.blobdescriptor` asks for.

    `inmemory` in embedded mode is process-local. With a broker the deployment has several
    processes, so `inmemory` and `redis` both mean the shared Redis cache (a process-local
    one would miss other processes' invalidations), on `client`: the redis-py client of the
    deployment's Redis (pipeline.infra.coordination), None when it has none. Then `redis` is
    refused and `inmemory` runs without a cache (with a warning)."""
    from pipeline.errors import ConfigurationError

    kind = settings.storage.blob_cache
    if not kind:
        return NoBlobCache()
    if kind == "inmemory" and settings.celery.embedded:
        return InMemoryBlobCache(settings.storage.blob_cache_size)
    if client is None:
        if kind == "redis":
            raise ConfigurationError(
                "storage.cache.blobdescriptor: redis needs a Redis broker or result backend"
            )
        log.warning("storage.cache.blobdescriptor: no Redis to share the cache: running without one")
        return NoBlobCache()
    return RedisBlobCache(client)
