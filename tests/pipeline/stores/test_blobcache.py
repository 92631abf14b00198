"""The blob descriptor cache (storage.cache.blobdescriptor): a hit costs no storage call,
and every way a blob goes away (blob DELETE, gc, scrub's quarantine) drops it — across
processes when they share the Redis cache, here two registries on one storage root and one
real redis-server."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pipeline.blob_commit import commit_blob
from pipeline.config import CelerySettings, Settings, StorageSettings, load_settings
from pipeline.errors import BlobCorrupt, BlobUnknown, BlobUploadUnknown, ConfigurationError, PathNotFound
from pipeline.formats.digest import Digest
from pipeline.maintenance.gc import garbage_collect
from pipeline.maintenance.scrub import scrub
from pipeline.manifest_commit import delete_manifest
from pipeline.registry import Registry, build_registry
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.filesystem import FilesystemDriver
from pipeline.storage.memory import MemoryDriver
from pipeline.stores.blobcache import (
    InMemoryBlobCache,
    NoBlobCache,
    RedisBlobCache,
    blob_cache_from_settings,
)
from tests.pipeline.maintenance.helpers import age_blobs, flip_byte, push_blob, push_image, settings
from tests.support import redis_server

REDIS_DB = 27  # this module's own database on the session's redis-server


class CountingDriver:
    """A driver that counts every call made through it, by method name."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


@pytest.fixture
def shared_redis() -> Iterator[redis.Redis]:
    with redis_server.emptied(redis_server.url(REDIS_DB)) as client:
        yield client


def counting_registry(cache: Any) -> tuple[Registry, CountingDriver]:
    driver = CountingDriver(CheckedDriver(MemoryDriver()))
    registry = Registry.from_driver(Settings(storage=StorageSettings(driver="inmemory")), driver, None, cache)  # type: ignore[arg-type]
    return registry, driver


def fs_pair(root: Path, client: redis.Redis) -> tuple[Registry, Registry]:
    """Two registries over one storage root sharing the Redis cache (an API and a worker)."""

    def one() -> Registry:
        return Registry.from_driver(
            settings(), CheckedDriver(FilesystemDriver(str(root))), None, RedisBlobCache(client)
        )

    return one(), one()


@pytest.mark.parametrize("kind", ["inmemory", "redis"])
def test_a_cache_hit_answers_a_blob_head_without_storage(kind: str, shared_redis: redis.Redis) -> None:
    cache = InMemoryBlobCache() if kind == "inmemory" else RedisBlobCache(shared_redis)
    registry, driver = counting_registry(cache)
    data = os.urandom(3000)
    digest = push_blob(registry, "app", data)

    driver.calls.clear()
    assert registry.repo_blobs.describe("app", digest) == len(data)  # recorded by the commit
    assert registry.repo_blobs.describe("app", digest) == len(data)
    assert sum(driver.calls.values()) == 0, driver.calls

    # Without a cache the same HEAD reads the link, stats the data and looks for a marker.
    plain, plain_driver = counting_registry(NoBlobCache())
    push_blob(plain, "app", data)
    plain_driver.calls.clear()
    assert plain.repo_blobs.describe("app", digest) == len(data)
    assert sum(plain_driver.calls.values()) >= 3, plain_driver.calls


def test_a_hit_is_per_repository(shared_redis: redis.Redis) -> None:
    registry, _ = counting_registry(RedisBlobCache(shared_redis))
    digest = push_blob(registry, "app", os.urandom(100))
    with pytest.raises(BlobUnknown):
        registry.repo_blobs.describe("other", digest)  # not linked there


def test_writers_never_trust_the_cache(shared_redis: redis.Redis) -> None:
    registry, driver = counting_registry(RedisBlobCache(shared_redis))
    digest = push_blob(registry, "app", os.urandom(100))
    driver.calls.clear()
    registry.repo_blobs.stat("app", digest)  # what manifest verification and mounts call
    assert driver.calls["stat"] >= 1


def test_a_commit_records_the_blob_in_one_cache_write_and_drops_nothing(shared_redis: redis.Redis) -> None:
    # Every cache call of the Redis cache is a round trip for the worker running the commit.
    registry, _ = counting_registry(RedisBlobCache(shared_redis))
    cache = CountingDriver(registry.blobs.cache)
    registry.blobs.cache = cache  # type: ignore[assignment]
    data = os.urandom(700)

    digest = push_blob(registry, "app", data)  # a new blob
    assert dict(cache.calls) == {"remember": 1}
    push_blob(registry, "other", data)  # already stored: only linked into another repository
    assert dict(cache.calls) == {"remember": 2}

    assert registry.repo_blobs.describe("app", digest) == 700
    assert registry.repo_blobs.describe("other", digest) == 700


def test_a_commit_corrects_a_stale_entry_and_a_failed_one_drops_it(
    shared_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, driver = counting_registry(RedisBlobCache(shared_redis))
    data = os.urandom(900)
    digest = Digest.of(data)
    registry.blobs.cache.remember(digest, 5, "app")  # stale: written behind Lading's back
    push_blob(registry, "app", data)
    assert registry.repo_blobs.describe("app", digest) == 900

    lost = os.urandom(300)
    registry.blobs.cache.remember(Digest.of(lost), 300, "app")  # stale: not stored at all
    session = registry.uploads.create("app")
    registry.uploads.append("app", session.upload_id, lost)

    def vanished(source: str, target: str) -> None:  # the data went away before the move
        raise PathNotFound(source)

    monkeypatch.setattr(driver, "move", vanished)
    with pytest.raises(BlobUploadUnknown):
        commit_blob(registry, "app", session.upload_id, str(Digest.of(lost)), 300)
    assert registry.blobs.cache.describe("app", Digest.of(lost)) is None


@pytest.mark.parametrize("kind", ["inmemory", "redis"])
def test_unlink_drops_the_entry(kind: str, shared_redis: redis.Redis) -> None:
    cache = InMemoryBlobCache() if kind == "inmemory" else RedisBlobCache(shared_redis)
    registry, _ = counting_registry(cache)
    digest = push_blob(registry, "app", os.urandom(100))
    registry.repo_blobs.describe("app", digest)
    registry.repo_blobs.unlink("app", digest)  # DELETE /v2/app/blobs/<digest>
    with pytest.raises(BlobUnknown):
        registry.repo_blobs.describe("app", digest)


def test_a_blob_delete_in_one_process_is_seen_by_another(tmp_path: Path, shared_redis: redis.Redis) -> None:
    api, worker = fs_pair(tmp_path, shared_redis)
    digest = push_blob(worker, "app", os.urandom(500))
    assert api.repo_blobs.describe("app", digest) == 500

    worker.repo_blobs.unlink("app", digest)
    with pytest.raises(BlobUnknown):
        api.repo_blobs.describe("app", digest)

    other = push_blob(worker, "app", os.urandom(600))
    assert api.repo_blobs.describe("app", other) == 600
    worker.blobs.delete(other)
    with pytest.raises(BlobUnknown):
        api.repo_blobs.describe("app", other)


def test_gc_in_one_process_drops_what_another_cached(tmp_path: Path, shared_redis: redis.Redis) -> None:
    api, worker = fs_pair(tmp_path, shared_redis)
    image = push_image(worker, "app", "v1", layers=[os.urandom(3000)])
    layer = Digest.of(image.layers[0])
    assert api.repo_blobs.describe("app", layer) == 3000  # cached, as a client's HEAD
    delete_manifest(worker, "app", str(image.digest))
    age_blobs(worker)

    assert garbage_collect(worker, grace_seconds=0)["blobs_deleted"] >= 1

    with pytest.raises(BlobUnknown):
        api.repo_blobs.describe("app", layer)


def test_scrub_quarantine_in_one_process_drops_what_another_cached(
    tmp_path: Path, shared_redis: redis.Redis
) -> None:
    api, worker = fs_pair(tmp_path, shared_redis)
    digest = push_blob(worker, "app", os.urandom(4000))
    assert api.repo_blobs.describe("app", digest) == 4000
    flip_byte(worker, digest)

    assert scrub(worker, rate_bytes_per_s=0, quarantine=True)["quarantined"] == 1

    with pytest.raises(BlobCorrupt):
        api.repo_blobs.describe("app", digest)


def test_a_redis_outage_is_a_miss_not_an_error(tmp_path: Path) -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    registry = Registry.from_driver(
        settings(), CheckedDriver(FilesystemDriver(str(tmp_path))), None, RedisBlobCache(dead)
    )
    digest = push_blob(registry, "app", os.urandom(10))
    assert registry.repo_blobs.describe("app", digest) == 10
    registry.repo_blobs.unlink("app", digest)
    with pytest.raises(BlobUnknown):
        registry.repo_blobs.describe("app", digest)


# --- configuration ------------------------------------------------------------------------


def test_blobdescriptor_from_config_yml(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("version: 0.1\nstorage:\n  inmemory: {}\n  cache:\n    blobdescriptor: inmemory\n")
    embedded = load_settings(str(config), {})
    assert isinstance(blob_cache_from_settings(embedded), InMemoryBlobCache)

    # With a broker there are several processes: inmemory means the shared Redis cache,
    # on the deployment's Redis (pipeline.infra.coordination).
    scaled = load_settings(str(config), {"REGISTRY_CELERY_BROKER_URL": redis_server.url(REDIS_DB)})
    assert isinstance(build_registry(scaled).blobs.cache, RedisBlobCache)

    config.write_text("version: 0.1\nstorage:\n  inmemory: {}\n  cache:\n    blobdescriptor: memcached\n")
    with pytest.raises(ConfigurationError, match=r"storage\.cache\.blobdescriptor"):
        load_settings(str(config), {})


def test_a_redis_cache_needs_a_redis() -> None:
    no_redis = Settings(
        storage=StorageSettings(blob_cache="redis"),
        celery=CelerySettings(broker_url="amqp://guest:guest@127.0.0.1:5672//", result_backend="rpc://"),
    )
    with pytest.raises(ConfigurationError, match="redis"):
        blob_cache_from_settings(no_redis)
    assert isinstance(blob_cache_from_settings(Settings()), NoBlobCache)  # off by default
