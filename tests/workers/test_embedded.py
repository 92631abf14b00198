"""Embedded mode: a real Celery worker in this process on the in-memory broker, the API's
job client on the same app, the same task code as a scaled-out worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import _state as celery_state
from celery.signals import task_postrun

from api.jobclient import CeleryJobClient
from pipeline import jobs
from pipeline.digest import Digest
from pipeline.errors import DigestInvalid, JobTimeout, StorageUnavailable
from pipeline.registry import Registry
from pipeline.settings import MaintenanceSettings, Settings, StorageSettings, UploadPurging
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import FileInfo
from pipeline.storage.memory import MemoryDriver
from tests.workers.conftest import LoopThread, sha256, upload
from workers.app import create_app
from workers.embedded import EmbeddedWorker, start_embedded_worker


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
    value = loop.run(e.client.run(jobs.COMMIT_BLOB, 30, repository="emb/app", upload_id=upload_id,
                                  digest=sha256(data), size=len(data)))
    assert value == {"digest": sha256(data), "size": len(data)}
    assert e.registry.repo_blobs.is_linked("emb/app", Digest.parse(sha256(data)))


def test_domain_errors_come_back_as_themselves(
    loop: LoopThread, embedded: tuple[Embedded, EmbeddedWorker]
) -> None:
    e, _ = embedded
    upload_id = upload(e.registry, "emb/app", b"abc")
    with pytest.raises(DigestInvalid):
        loop.run(e.client.run(jobs.COMMIT_BLOB, 30, repository="emb/app", upload_id=upload_id,
                              digest=sha256(b"abd"), size=3))


def test_storage_unavailable_is_retried_until_it_succeeds(
    loop: LoopThread, embedded: tuple[Embedded, EmbeddedWorker]
) -> None:
    e, _ = embedded
    data = b"committed on the third try"
    upload_id = upload(e.registry, "emb/flaky", data)
    e.driver.failures = 2
    value = loop.run(e.client.run(jobs.COMMIT_BLOB, 60, repository="emb/flaky", upload_id=upload_id,
                                  digest=sha256(data), size=len(data)))
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
