"""Embedded mode: a real Celery worker in this process on the in-memory broker, the API's
job client on the same app, the same task code as a scaled-out worker."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import _state as celery_state
from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from celery.signals import task_postrun
from kombu import Connection, Consumer, Exchange, Queue
from kombu.message import Message

from api.jobclient import CeleryJobClient
from pipeline import jobs
from pipeline.config import MaintenanceSettings, Settings, StorageSettings, UploadPurging
from pipeline.errors import DigestInvalid, JobTimeout, StorageUnavailable
from pipeline.formats.digest import Digest
from pipeline.registry import Registry
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import FileInfo
from pipeline.storage.memory import MemoryDriver
from tests.workers.conftest import LoopThread, sha256, upload
from workers import embedded as embedded_module
from workers.app import create_app
from workers.embedded import EmbeddedWorker, InProcessBackend, WakingTransport, start_embedded_worker


class FlakyDriver(MemoryDriver):
    """The in-memory driver, throttled for the next `failures` stat calls."""

    failures = 0

    def stat(self, path: str) -> FileInfo:
        if self.failures > 0:
            self.failures -= 1
            raise StorageUnavailable("SlowDown")
        return super().stat(path)


class Embedded:
    def __init__(self) -> None:
        self.settings = Settings(
            storage=StorageSettings(driver="inmemory", upload_purging=UploadPurging(enabled=False)),
            maintenance=MaintenanceSettings(scrub_enabled=False, reconcile_interval_seconds=0.2),
        )
        self.driver = FlakyDriver()
        self.registry = Registry.from_driver(self.settings, CheckedDriver(self.driver))
        self.app = create_app(self.settings, registry=self.registry)
        self.client = CeleryJobClient(self.app)
        self.ran: list[str] = []

    def record(self, sender: Any = None, **kwargs: Any) -> None:
        self.ran.append(sender.name)


@pytest.fixture(scope="module")
def embedded(loop: LoopThread) -> Iterator[tuple[Embedded, EmbeddedWorker]]:
    e = Embedded()
    task_postrun.connect(e.record, weak=False)
    worker = start_embedded_worker(e.app, concurrency=2, beat=True)
    yield e, worker
    task_postrun.disconnect(e.record)
    worker.stop()
    assert not worker.alive
    loop.run(e.client.aclose())


def test_a_commit_round_trip(loop: LoopThread, embedded: tuple[Embedded, EmbeddedWorker]) -> None:
    e, _ = embedded
    assert not e.client.uses_pubsub
    data = b"embedded bytes"
    upload_id = upload(e.registry, "emb/app", data, chunks=2)
    value = loop.run(
        e.client.run(
            jobs.COMMIT_BLOB,
            30,
            repository="emb/app",
            upload_id=upload_id,
            digest=sha256(data),
            size=len(data),
        )
    )
    assert value == {"digest": sha256(data), "size": len(data)}
    assert e.registry.repo_blobs.is_linked("emb/app", Digest.parse(sha256(data)))


def test_domain_errors_come_back_as_themselves(
    loop: LoopThread, embedded: tuple[Embedded, EmbeddedWorker]
) -> None:
    e, _ = embedded
    upload_id = upload(e.registry, "emb/app", b"abc")
    with pytest.raises(DigestInvalid):
        loop.run(
            e.client.run(
                jobs.COMMIT_BLOB, 30, repository="emb/app", upload_id=upload_id, digest=sha256(b"abd"), size=3
            )
        )


def test_storage_unavailable_is_retried_until_it_succeeds(
    loop: LoopThread, embedded: tuple[Embedded, EmbeddedWorker]
) -> None:
    e, _ = embedded
    data = b"committed on the third try"
    upload_id = upload(e.registry, "emb/flaky", data)
    e.driver.failures = 2
    value = loop.run(
        e.client.run(
            jobs.COMMIT_BLOB,
            60,
            repository="emb/flaky",
            upload_id=upload_id,
            digest=sha256(data),
            size=len(data),
        )
    )
    assert value["digest"] == sha256(data)
    assert e.driver.failures == 0


def test_waiting_for_nothing_times_out(loop: LoopThread, embedded: tuple[Embedded, EmbeddedWorker]) -> None:
    e, _ = embedded
    with pytest.raises(JobTimeout):
        loop.run(e.client.wait("no-such-job", 0.2))


def test_embedded_beat_runs_the_maintenance_schedule(embedded: tuple[Embedded, EmbeddedWorker]) -> None:
    e, _ = embedded
    deadline = time.monotonic() + 20
    while jobs.RECONCILE not in e.ran and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.RECONCILE in e.ran


def test_the_running_worker_makes_its_app_the_default(
    embedded: tuple[Embedded, EmbeddedWorker],
) -> None:
    e, worker = embedded
    assert worker.alive
    assert celery_state.default_app is e.app


def test_concurrent_commits_each_get_their_own_result(
    loop: LoopThread, embedded: tuple[Embedded, EmbeddedWorker]
) -> None:
    e, _ = embedded
    blobs = [f"concurrent blob {i}".encode() for i in range(32)]
    uploads = [upload(e.registry, "emb/many", data) for data in blobs]

    async def commit_all() -> list[dict[str, Any]]:
        return await asyncio.gather(
            *(
                e.client.run(
                    jobs.COMMIT_BLOB,
                    60,
                    repository="emb/many",
                    upload_id=upload_id,
                    digest=sha256(data),
                    size=len(data),
                )
                for upload_id, data in zip(uploads, blobs, strict=True)
            )
        )

    values = loop.run(commit_all())
    assert values == [{"digest": sha256(data), "size": len(data)} for data in blobs]
    assert backend(e).waiting() == 0


def test_waiting_takes_no_thread_per_request_and_timeouts_clean_up(
    loop: LoopThread, embedded: tuple[Embedded, EmbeddedWorker]
) -> None:
    e, _ = embedded
    before = threading.active_count()
    most = before

    async def wait_for_nothing(n: int) -> list[BaseException | dict[str, Any]]:
        nonlocal most
        waits = [asyncio.ensure_future(e.client.wait(f"never-sent-{n}-{i}", 0.5)) for i in range(n)]
        await asyncio.sleep(0.1)  # every wait registered and pending
        most = max(most, threading.active_count())
        assert backend(e).waiting() == n
        return await asyncio.gather(*waits, return_exceptions=True)

    outcomes = loop.run(wait_for_nothing(64))
    assert all(isinstance(outcome, JobTimeout) for outcome in outcomes)
    assert most - before < 8  # the previous design parked one thread per waiting request
    assert backend(e).waiting() == 0


def test_a_result_that_landed_before_the_wait_is_found(
    loop: LoopThread, embedded: tuple[Embedded, EmbeddedWorker]
) -> None:
    e, _ = embedded
    data = b"done before anyone asked"
    upload_id = upload(e.registry, "emb/early", data)
    job_id = e.client.send(
        jobs.COMMIT_BLOB, repository="emb/early", upload_id=upload_id, digest=sha256(data), size=len(data)
    )
    deadline = time.monotonic() + 30
    while backend(e).get_task_meta(job_id, cache=False)["status"] != states.SUCCESS:
        assert time.monotonic() < deadline, "the job never finished"
        time.sleep(0.01)
    assert loop.run(e.client.wait(job_id, 5)) == {"digest": sha256(data), "size": len(data)}
    assert backend(e).waiting() == 0


def test_async_result_get_works_on_the_embedded_backend(embedded: tuple[Embedded, EmbeddedWorker]) -> None:
    e, _ = embedded
    data = b"awaited the Celery way"
    upload_id = upload(e.registry, "emb/get", data)
    job_id = e.client.send(
        jobs.COMMIT_BLOB, repository="emb/get", upload_id=upload_id, digest=sha256(data), size=len(data)
    )
    envelope = AsyncResult(job_id, app=e.app).get(timeout=30, disable_sync_subtasks=False)
    assert jobs.unwrap(envelope) == {"digest": sha256(data), "size": len(data)}
    with pytest.raises(CeleryTimeoutError):
        AsyncResult("never-sent", app=e.app).get(timeout=0.2, interval=0.05, disable_sync_subtasks=False)
    assert backend(e).waiting() == 0


def test_result_callbacks_fire_once_on_the_final_state_only() -> None:
    app = create_app(Settings(storage=StorageSettings(driver="inmemory")))
    store: InProcessBackend = app.backend
    seen: list[tuple[str, Any]] = []

    def record(meta: dict[str, Any]) -> None:
        seen.append((meta["status"], meta["result"]))

    cancel = store.add_result_callback("job-1", record)
    store.store_result("job-1", StorageUnavailable("SlowDown"), states.RETRY)
    assert seen == []  # a retry is not a result
    store.store_result("job-1", jobs.ok({"n": 1}), states.SUCCESS)
    store.store_result("job-1", jobs.ok({"n": 2}), states.SUCCESS)
    assert seen == [(states.SUCCESS, jobs.ok({"n": 1}))]
    cancel()  # harmless after it fired

    store.add_result_callback("job-1", record)  # registered after the result: called at once
    assert seen[-1] == (states.SUCCESS, jobs.ok({"n": 1}))

    cancel = store.add_result_callback("job-2", record)
    cancel()
    store.store_result("job-2", jobs.ok(), states.SUCCESS)
    assert len(seen) == 2
    assert store.waiting() == 0


def backend(e: Embedded) -> InProcessBackend:
    result: InProcessBackend = e.app.backend
    return result


@pytest.fixture
def woken_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting consumer sleeps for an hour unless woken: what it receives was woken for."""
    monkeypatch.setattr(embedded_module, "WAKE_BOUND", 3600.0)


def _broker() -> Connection:
    return Connection("memory://", transport=WakingTransport, transport_options={"polling_interval": 3600})


def _consuming(connection: Connection, queue: Queue, prefetch: int) -> tuple[Consumer, list[Message]]:
    got: list[Message] = []
    consumer = Consumer(connection, [queue], callbacks=[lambda body, message: got.append(message)])
    consumer.qos(prefetch_count=prefetch)
    consumer.consume()
    return consumer, got


def _drain_in_thread(connection: Connection) -> threading.Thread:
    thread = threading.Thread(target=connection.drain_events, kwargs={"timeout": 3600}, daemon=True)
    thread.start()
    return thread


@pytest.mark.usefixtures("woken_only")
def test_the_embedded_broker_wakes_its_consumer_on_a_message() -> None:
    queue = Queue(f"wake-{uuid.uuid4().hex}", Exchange("wake-test", type="direct"), routing_key="wake")
    with _broker() as connection:
        consumer, got = _consuming(connection, queue, prefetch=1)
        waiting = _drain_in_thread(connection)
        with _broker() as sender:
            sender.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="wake", declare=[queue])
        waiting.join(30)
        assert not waiting.is_alive()
        assert [m.payload for m in got] == [{"n": 1}]
        consumer.cancel()


@pytest.mark.usefixtures("woken_only")
def test_the_embedded_broker_wakes_its_consumer_when_a_prefetch_slot_frees() -> None:
    queue = Queue(f"wake-{uuid.uuid4().hex}", Exchange("wake-test", type="direct"), routing_key="wake")
    with _broker() as connection:
        consumer, got = _consuming(connection, queue, prefetch=1)
        producer = connection.Producer()
        for n in (1, 2):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="wake", declare=[queue])
        connection.drain_events(timeout=5)
        assert [m.payload for m in got] == [{"n": 1}]
        waiting = _drain_in_thread(connection)  # the second job waits for the first's slot
        got[0].ack()
        waiting.join(30)
        assert not waiting.is_alive()
        assert [m.payload for m in got] == [{"n": 1}, {"n": 2}]
        got[1].ack()
        consumer.cancel()
