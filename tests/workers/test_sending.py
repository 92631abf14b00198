"""How the API's job client publishes: the task message Celery's own `send_task` would
publish (same queue, task headers, time limits, body), plus the `task-sent` event Flower
needs when events are on. Read back raw from the in-memory broker, no worker involved."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.signals import after_task_publish
from kombu import Connection, Exchange, Queue

from api.jobclient import CeleryJobClient
from pipeline import jobs
from pipeline.config import CelerySettings, Settings, StorageSettings
from pipeline.errors import JobsUnavailable
from workers.app import create_app

KWARGS = {"repository": "send/app", "upload_id": "u-1", "digest": "sha256:" + "0" * 64, "size": 3}
# Headers that differ by nature between two sends (ids, sender process/thread, the repr).
VARYING = {"id", "root_id", "origin", "kwargsrepr", "argsrepr", "ignore_result"}


@pytest.fixture
def app() -> Iterator[Celery]:
    events_on = CelerySettings(extra={"task_send_sent_event": True, "worker_send_task_events": True})
    celery = create_app(Settings(storage=StorageSettings(driver="inmemory"), celery=events_on))
    with celery.connection_for_write() as conn:
        drain(conn, jobs.INGEST)
        drain(conn, jobs.VERIFY)
    yield celery


def drain(conn: Connection, queue: str) -> list[Any]:
    """Every message waiting on `queue` (the memory broker is shared by the process)."""
    channel = conn.default_channel
    Queue(queue, Exchange(queue, type="direct"), routing_key=queue)(channel).declare()
    messages = []
    for _ in range(10_000):
        message = channel.basic_get(queue, no_ack=True)
        if message is None:
            break
        messages.append(message)
    return messages


def test_the_client_publishes_what_send_task_publishes(app: Celery) -> None:
    client = CeleryJobClient(app)
    ours = client.send(jobs.COMMIT_BLOB, **KWARGS)
    theirs = app.send_task(jobs.COMMIT_BLOB, kwargs=KWARGS, queue=jobs.INGEST, routing_key=jobs.INGEST).id
    with app.connection_for_write() as conn:
        by_id = {m.headers["id"]: m for m in drain(conn, jobs.INGEST)}
    mine, celery = by_id[ours], by_id[theirs]
    assert mine.headers["task"] == jobs.COMMIT_BLOB
    assert mine.headers["timelimit"] == celery.headers["timelimit"] != [None, None]  # the task's own limits
    assert set(mine.headers) == set(celery.headers)
    assert {k: v for k, v in mine.headers.items() if k not in VARYING} == {
        k: v for k, v in celery.headers.items() if k not in VARYING
    }
    assert mine.headers["ignore_result"] is False  # a commit's result is always stored
    assert (
        json.loads(mine.body)
        == json.loads(celery.body)
        == [[], KWARGS, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    assert (mine.content_type, mine.content_encoding) == (celery.content_type, celery.content_encoding)
    assert mine.delivery_info["routing_key"] == jobs.INGEST
    assert "send/app" in mine.headers["kwargsrepr"]


def test_each_job_goes_to_its_queue_and_long_arguments_are_shown_truncated(app: Celery) -> None:
    client = CeleryJobClient(app)
    body = "A" * 100_000
    job_id = client.send(
        jobs.COMMIT_MANIFEST,
        repository="send/app",
        reference="v1",
        media_type="application/vnd.oci.image.manifest.v1+json",
        body_b64=body,
    )
    with app.connection_for_write() as conn:
        assert drain(conn, jobs.INGEST) == []
        (message,) = drain(conn, jobs.VERIFY)
    assert message.headers["id"] == job_id
    assert json.loads(message.body)[1]["body_b64"] == body
    assert len(message.headers["kwargsrepr"]) <= 1024


def test_a_task_sent_event_goes_out_when_events_are_on(app: Celery) -> None:
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        events = Queue("test-sending-events", Exchange("celeryev", type="topic"), routing_key="task.#")
        events(channel).declare()

        def drain_events() -> list[dict[str, Any]]:
            get = lambda: channel.basic_get("test-sending-events", no_ack=True)  # noqa: E731
            return [json.loads(message.body) for message in iter(get, None)]

        drain_events()
        published: list[str] = []

        def record(sender: Any = None, headers: Any = None, **kwargs: Any) -> None:
            published.append(headers["id"])

        after_task_publish.connect(record, weak=False)
        try:
            job_id = CeleryJobClient(app).send(jobs.COMMIT_BLOB, **KWARGS)
        finally:
            after_task_publish.disconnect(record)
        sent = [e for e in drain_events() if e.get("type") == "task-sent"]
        drain(conn, jobs.INGEST)
    assert published == [job_id]  # publish signals fire as for send_task
    assert [(e["uuid"], e["name"], e["queue"]) for e in sent] == [(job_id, jobs.COMMIT_BLOB, jobs.INGEST)]


def test_unknown_jobs_are_refused_and_an_unreachable_broker_is_storage_unavailable() -> None:
    settings = Settings(
        storage=StorageSettings(driver="inmemory"),
        celery=CelerySettings(
            broker_url="redis://127.0.0.1:1/0",
            extra={
                "broker_transport_options": {"max_retries": 1, "interval_start": 0, "interval_step": 0},
                "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0},
            },
        ),
    )
    client = CeleryJobClient(create_app(settings))
    with pytest.raises(ValueError, match="unknown job"):
        client.send("lading.nope")
    with pytest.raises(JobsUnavailable, match="broker unreachable"):
        client.send(jobs.COMMIT_BLOB, **KWARGS)
    with pytest.raises(JobsUnavailable):  # the failed producer was dropped, a new one fails too
        client.send(jobs.COMMIT_BLOB, **KWARGS)


def test_a_sent_advance_asks_for_no_stored_result(app: Celery) -> None:
    client = CeleryJobClient(app)
    job_id = client.send(jobs.ADVANCE_DIGEST, repository="send/app", upload_id="u", algorithm="sha256")
    with app.connection_for_write() as conn:
        (message,) = drain(conn, jobs.INGEST)
    assert message.headers["id"] == job_id
    assert message.headers["ignore_result"] is True  # nobody waits for it
