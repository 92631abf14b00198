"""pipeline.infra.coordination: which URLs name a Redis, and where a deployment's locks live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.config import CelerySettings, Settings, StorageSettings
from pipeline.errors import ConfigurationError
from pipeline.infra.coordination import (
    celery_url,
    coordination_for,
    is_redis,
    kind_of,
    redacted,
    redis_target,
)
from pipeline.infra.locks import FileLocks, LocalLocks, RedisLocks
from tests.support import redis_server


def settings(broker: str | None, backend: str | None = None, **extra: Any) -> Settings:
    return Settings(celery=CelerySettings(broker_url=broker, result_backend=backend, extra=extra))


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", "redis"),
        ("rediss://:secret@cache.example:6380/1?ssl_cert_reqs=required", "redis"),
        ("unix:///run/redis.sock?db=2", "redis"),
        ("redis+socket:///run/redis.sock?virtual_host=2", "redis"),
        ("sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379", "sentinel"),
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp"),
        ("pyamqp://127.0.0.1//", "amqp"),
        ("memory://localhost/", "memory"),
        ("rpc://", "other"),
        ("db+postgresql://x/y", "other"),
    ],
)
def test_every_url_kind_is_classified_once(url: str, kind: str) -> None:
    assert kind_of(url) == kind
    assert is_redis(url) == (kind in ("redis", "sentinel"))


def test_unix_urls_are_translated_for_kombu_and_back_for_redis_py() -> None:
    assert celery_url("unix:///run/redis.sock?db=3") == "redis+socket:///run/redis.sock?virtual_host=3"
    assert celery_url("redis://h:1/0") == "redis://h:1/0"
    target = redis_target("redis+socket:///run/redis.sock?virtual_host=3")
    assert target is not None
    pool = target.client().connection_pool
    assert pool.connection_kwargs["path"] == "/run/redis.sock"
    assert pool.connection_kwargs["db"] == 3


def test_sentinel_chain_with_master_name_and_sentinel_credentials() -> None:
    target = redis_target(
        "sentinel://:pw@10.0.0.1:26379/4;sentinel://10.0.0.2",
        {"master_name": "lading", "sentinel_kwargs": {"password": "sentinel-pw"}},
    )
    assert target is not None
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (target.master_name, target.db, target.password) == ("lading", 4, "pw")
    assert target.sentinel_kwargs == {"password": "sentinel-pw"}


def test_sentinel_without_master_name_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigurationError, match="master_name"):
        coordination_for(settings("sentinel://10.0.0.1:26379"))


def test_embedded_mode_on_filesystem_storage_uses_file_locks_beside_it(tmp_path: Path) -> None:
    fs = Settings(storage=StorageSettings(driver="filesystem", root=str(tmp_path)))
    coordination = coordination_for(fs)
    assert coordination.embedded
    locks = coordination.locks()
    assert isinstance(locks, FileLocks) and locks.directory == str(tmp_path / ".lading-locks")


def test_embedded_mode_on_memory_storage_uses_in_process_locks() -> None:
    coordination = coordination_for(Settings(storage=StorageSettings(driver="inmemory")))
    assert coordination.embedded
    assert isinstance(coordination.locks(), LocalLocks)


def test_redis_broker_holds_the_locks() -> None:
    url = redis_server.url(13)
    coordination = coordination_for(settings(url))
    assert coordination.redis is not None and coordination.redis.url == url
    assert coordination.results is not None and coordination.results.url == url  # results beside jobs
    assert isinstance(coordination.locks(), RedisLocks)


def test_rabbitmq_broker_with_redis_results_keeps_locks_in_that_redis() -> None:
    url = redis_server.url(13)
    coordination = coordination_for(settings("amqp://guest:guest@127.0.0.1:5672//", url))
    assert coordination.redis is not None and coordination.redis.url == url
    assert isinstance(coordination.locks(), RedisLocks)


def test_sentinel_broker_reads_master_name_from_the_broker_transport_options() -> None:
    coordination = coordination_for(
        settings("sentinel://10.0.0.1:26379", broker_transport_options={"master_name": "m"})
    )
    assert coordination.redis is not None and coordination.redis.master_name == "m"


@pytest.mark.parametrize("backend", ["rpc://", None, "db+sqlite:///results.db"])
def test_scaled_out_without_any_redis_is_refused_naming_the_keys(backend: str | None) -> None:
    with pytest.raises(ConfigurationError) as caught:
        coordination_for(settings("amqp://guest:guest@127.0.0.1:5672//", backend))
    message = str(caught.value)
    assert "celery.result_backend" in message
    assert "REGISTRY_CELERY_RESULT_BACKEND" in message
    assert "guest:guest" not in message  # no password in the message


def test_broker_urls_are_logged_without_passwords() -> None:
    assert redacted("redis://:hunter2@redis:6379/0") == "redis://***@redis:6379/0"
    assert redacted("amqp://guest:hunter2@rabbit//") == "amqp://guest:***@rabbit//"
    assert redacted("redis://redis:6379/0") == "redis://redis:6379/0"

    assert (
        redacted("sentinel://:pw@a:26379;sentinel://:pw@b:26379")
        == "sentinel://***@a:26379;sentinel://***@b:26379"
    )
