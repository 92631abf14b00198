"""The Redis result backend (workers.results): a job's result is stored and published in
one Redis command, and a stored SUCCESS is never overwritten (a redelivered job's second
run), exactly as Celery's own read-then-write did, on a real Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.task import Context

from pipeline.config import CelerySettings, Settings, StorageSettings
from tests.support import redis_server
from workers.app import create_app
from workers.results import RedisResults, SentinelResults, backend_class

URL = redis_server.url(25)  # this module's own database
META = "celery-task-meta-"


def make_app(**extra: object) -> Celery:
    return create_app(
        Settings(
            storage=StorageSettings(driver="inmemory"),
            celery=CelerySettings(broker_url=URL, result_backend=URL, extra=dict(extra)),
        )
    )


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(URL)
    client.flushdb()
    yield client
    client.close()


def commands(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def stored(client: redis.Redis, job_id: str) -> dict[str, Any]:
    raw = client.get(META + job_id)
    assert raw is not None
    meta: dict[str, Any] = json.loads(raw)
    return meta


def test_a_redis_result_backend_is_the_one_round_trip_store() -> None:
    assert isinstance(make_app().backend, RedisResults)
    assert backend_class("rediss://h:6380/1") is RedisResults
    assert backend_class("redis+socket:///run/redis.sock") is RedisResults
    assert backend_class("sentinel://h:26379/0") is SentinelResults
    assert backend_class("db+postgresql://h/db") is None


def test_a_result_is_stored_and_published_with_one_command_and_no_read(client: redis.Redis) -> None:
    app = make_app()
    backend = app.backend
    backend.mark_as_done(str(uuid.uuid4()), {"warm": True})  # loads the script once
    pubsub = client.pubsub()
    pubsub.psubscribe(META + "*")
    assert pubsub.get_message(timeout=5)["type"] == "psubscribe"  # type: ignore[index]
    job_id = str(uuid.uuid4())
    client.config_resetstat()

    backend.mark_as_done(job_id, {"digest": "sha256:ab", "size": 4})

    # One command sent (EVALSHA); Redis counts the ones the script runs too.
    calls = commands(client)
    calls.pop("config|resetstat", None)
    assert calls == {"evalsha": 1, "get": 1, "setex": 1, "publish": 1}
    message = pubsub.get_message(timeout=5)
    assert message is not None and message["channel"] == (META + job_id).encode()
    meta = json.loads(message["data"])
    assert meta["status"] == "SUCCESS" and meta["result"] == {"digest": "sha256:ab", "size": 4}
    assert stored(client, job_id) == meta
    assert 0 < client.ttl(META + job_id) <= 3600  # result_expires
    assert backend.get_task_meta(job_id)["result"] == {"digest": "sha256:ab", "size": 4}
    pubsub.close()


def test_a_stored_success_is_kept_when_a_redelivered_run_ends_otherwise(client: redis.Redis) -> None:
    backend = make_app().backend
    job_id = str(uuid.uuid4())
    backend.mark_as_done(job_id, {"digest": "sha256:ab"})

    backend.mark_as_failure(job_id, RuntimeError("second run"))
    backend.mark_as_retry(job_id, RuntimeError("second run"))
    backend.mark_as_done(job_id, {"digest": "sha256:cd"})

    meta = stored(client, job_id)
    assert meta["status"] == "SUCCESS" and meta["result"] == {"digest": "sha256:ab"}


def test_a_retry_or_failure_is_replaced_by_the_final_result(client: redis.Redis) -> None:
    backend = make_app().backend
    job_id = str(uuid.uuid4())
    backend.mark_as_retry(job_id, RuntimeError("storage blip"))
    assert stored(client, job_id)["status"] == "RETRY"
    backend.mark_as_failure(job_id, RuntimeError("gave up"))
    assert stored(client, job_id)["status"] == "FAILURE"
    backend.mark_as_done(job_id, {"ok": 1})
    assert stored(client, job_id)["status"] == "SUCCESS"


def test_a_failure_keeps_its_own_expiry(client: redis.Redis) -> None:
    backend = make_app(result_failure_expires=120).backend
    failed, done = str(uuid.uuid4()), str(uuid.uuid4())
    backend.mark_as_failure(failed, RuntimeError("boom"))
    backend.mark_as_done(done, {"ok": 1})
    assert 0 < client.ttl(META + failed) <= 120
    assert 120 < client.ttl(META + done) <= 3600


def test_non_json_results_take_celerys_own_path(client: redis.Redis) -> None:
    backend = make_app(result_compression="zlib").backend
    job_id = str(uuid.uuid4())
    backend.mark_as_done(job_id, {"ok": 1})
    client.config_resetstat()
    backend.mark_as_failure(job_id, RuntimeError("second run"))
    assert "evalsha" not in commands(client)
    assert backend.get_task_meta(job_id)["status"] == "SUCCESS"


def listen(client: redis.Redis, *channels: str) -> Any:
    pubsub = client.pubsub()
    pubsub.subscribe(*channels)
    for _ in channels:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    return pubsub


def published(pubsub: Any) -> list[tuple[str, str]]:
    """(channel, task id) of every message waiting on `pubsub`."""
    seen = []
    while (message := pubsub.get_message(timeout=0.2)) is not None:
        seen.append((message["channel"].decode(), json.loads(message["data"])["task_id"]))
    return seen


def test_a_result_is_published_on_the_channel_its_job_names_and_only_there(client: redis.Redis) -> None:
    backend = make_app().backend
    channel = "lading-results-replica1"
    ours, celerys = str(uuid.uuid4()), str(uuid.uuid4())
    pubsub = listen(client, channel, META + ours, META + celerys)

    backend.mark_as_done(ours, {"ok": 1}, request=Context(reply_to=channel))
    # Celery's own reply_to (app.thread_oid, as beat, the CLI and send_task set it) names no
    # result channel of ours: published on the result key's name, as Celery does.
    backend.mark_as_done(celerys, {"ok": 2}, request=Context(reply_to=str(uuid.uuid4())))

    assert published(pubsub) == [(channel, ours), (META + celerys, celerys)]
    assert stored(client, ours)["result"] == {"ok": 1} and stored(client, celerys)["result"] == {"ok": 2}
    pubsub.close()


def test_the_result_channel_lives_behind_the_global_key_prefix(client: redis.Redis) -> None:
    backend = make_app(result_backend_transport_options={"global_keyprefix": "tenant:"}).backend
    job_id, other = str(uuid.uuid4()), str(uuid.uuid4())
    pubsub = listen(client, "tenant:lading-results-r1", "tenant:" + META + other)

    backend.mark_as_done(job_id, {"ok": 1}, request=Context(reply_to="tenant:lading-results-r1"))
    backend.mark_as_done(other, {"ok": 1}, request=Context(reply_to="lading-results-r1"))  # not ours

    assert published(pubsub) == [("tenant:lading-results-r1", job_id), ("tenant:" + META + other, other)]
    pubsub.close()
