"""The delivery guard (workers.tasks.DeliveryGuard) on a real Redis: a first delivery costs
no Redis command, each redelivery is counted, and the start past MAX_DELIVERIES is parked
with the number of times the job's process died. The end-to-end proof (a job that SIGKILLs
its prefork process, redelivered by kombu and parked) is tests/workers/test_poison.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from pipeline import jobs
from pipeline.config import CelerySettings, Settings, StorageSettings
from pipeline.stores.deadletter import COUNT_PREFIX, MAX_DELIVERIES, DeadLetters
from tests.support import redis_server
from workers.tasks import DeliveryGuard

URL = redis_server.url(28)  # this module's own database


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    with redis_server.emptied(URL) as client:
        yield client


def guard() -> DeliveryGuard:
    return DeliveryGuard(
        Settings(
            storage=StorageSettings(driver="inmemory"),
            celery=CelerySettings(broker_url=URL, result_backend=URL),
        )
    )


def request(job_id: str, redelivered: bool, host: str = "w1@h") -> Any:
    return SimpleNamespace(
        id=job_id,
        retries=0,
        hostname=host,
        delivery_info={"routing_key": jobs.ROUTES[jobs.COMMIT_BLOB], "redelivered": redelivered},
    )


def test_a_first_delivery_sends_nothing_to_redis(client: redis.Redis) -> None:
    the_guard = guard()
    assert the_guard.enabled
    the_guard.letters()  # its client, connected
    client.config_resetstat()
    assert the_guard.admit(jobs.COMMIT_BLOB, request(str(uuid.uuid4()), False), {}) is None
    stats = client.info("commandstats")
    assert set(stats) <= {"cmdstat_config|resetstat"}
    assert client.keys(COUNT_PREFIX + "*") == []


def test_redeliveries_are_counted_and_the_one_past_the_cap_is_parked(client: redis.Redis) -> None:
    the_guard = guard()
    job_id = str(uuid.uuid4())
    kwargs = {"repository": "a/b", "upload_id": "u"}
    assert the_guard.admit(jobs.COMMIT_BLOB, request(job_id, False), kwargs) is None
    for n in range(1, MAX_DELIVERIES):  # starts 2..MAX run
        assert the_guard.admit(jobs.COMMIT_BLOB, request(job_id, True, f"w{n}@h"), kwargs) is None
    letters = DeadLetters(client)
    assert letters.get(job_id) is None

    parked = the_guard.admit(jobs.COMMIT_BLOB, request(job_id, True, "last@h"), kwargs)

    assert parked is not None and parked["ok"] is False
    record = letters.get(job_id)
    assert record is not None
    assert record.deliveries == MAX_DELIVERIES  # the times its process died
    assert record.kwargs == kwargs and record.queue == jobs.ROUTES[jobs.COMMIT_BLOB]
    assert f"died {MAX_DELIVERIES} times (last on w{MAX_DELIVERIES - 1}@h)" in record.last_error
