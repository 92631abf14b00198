"""Embedded mode's direct path (workers.direct): a job's first attempt runs on a thread of
the API's process through the same task as a worker would, without the in-memory broker;
retries still go through the broker, with their backoff, to the embedded worker."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import states
from celery.app import autoretry
from celery.signals import before_task_publish, task_prerun, task_retry

from api.jobclient import CeleryJobClient
from pipeline import jobs
from pipeline.config import MaintenanceSettings, Settings, StorageSettings, UploadPurging
from pipeline.errors import DigestInvalid, JobFailed, JobsUnavailable, StorageUnavailable
from pipeline.formats.digest import Digest
from pipeline.infra.logs import JsonFormatter, request_id
from pipeline.registry import Registry
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import FileInfo
from pipeline.storage.memory import MemoryDriver
from tests.workers.conftest import LoopThread, sha256, upload
from workers.app import create_app
from workers.direct import DirectJobs
from workers.embedded import EmbeddedWorker, start_embedded_worker


class Driver(MemoryDriver):
    """The in-memory driver; its next `stat` calls can be throttled, broken or held."""

    def __init__(self) -> None:
        super().__init__()
        self.throttled = 0
        self.broken = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def stat(self, path: str) -> FileInfo:
        if self.gate is not None:
            self.entered.set()
            self.gate.wait(30)
        if self.throttled > 0:
            self.throttled -= 1
            raise StorageUnavailable("SlowDown")
        if self.broken > 0:
            self.broken -= 1
            raise RuntimeError("disk on fire at /secret/path")
        return super().stat(path)


class Direct:
    def __init__(self) -> None:
        self.settings = Settings(
            storage=StorageSettings(driver="inmemory", upload_purging=UploadPurging(enabled=False)),
            maintenance=MaintenanceSettings(scrub_enabled=False, reconcile_interval_seconds=3600),
        )
        self.driver = Driver()
        self.registry = Registry.from_driver(self.settings, CheckedDriver(self.driver))
        self.app = create_app(self.settings, registry=self.registry)
        self.runner = DirectJobs(self.app, 2)
        self.direct = CeleryJobClient(self.app, direct=self.runner)
        self.brokered = CeleryJobClient(self.app)  # the same app, through the broker
        self.starts: list[tuple[str, str, str]] = []  # (job id, job, thread name)
        self.published: list[dict[str, Any]] = []  # headers of every job message sent
        self.retried: list[str] = []

    def on_start(self, sender: Any = None, task_id: str = "", **_: Any) -> None:
        self.starts.append((task_id, sender.name, threading.current_thread().name))

    def on_publish(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        self.published.append(dict(headers or {}))

    def on_retry(self, sender: Any = None, **_: Any) -> None:
        self.retried.append(sender.name)

    def session(
        self, data: bytes, digest: str | None = None, repository: str = "direct/app"
    ) -> dict[str, Any]:
        """The kwargs of a commit of `data`, uploaded (the driver's faults arm after this)."""
        upload_id = upload(self.registry, repository, data)
        return {
            "repository": repository,
            "upload_id": upload_id,
            "digest": digest or sha256(data),
            "size": len(data),
        }

    def commit(self, client: CeleryJobClient, loop: LoopThread, kwargs: dict[str, Any]) -> Any:
        return loop.run(client.run(jobs.COMMIT_BLOB, 60, **kwargs))


@pytest.fixture(scope="module")
def env(loop: LoopThread) -> Iterator[tuple[Direct, EmbeddedWorker]]:
    d = Direct()
    task_prerun.connect(d.on_start, weak=False)
    before_task_publish.connect(d.on_publish, weak=False)
    task_retry.connect(d.on_retry, weak=False)
    worker = start_embedded_worker(d.app, concurrency=2)
    yield d, worker
    task_prerun.disconnect(d.on_start)
    before_task_publish.disconnect(d.on_publish)
    task_retry.disconnect(d.on_retry)
    d.runner.stop()
    worker.stop()
    loop.run(d.direct.aclose())
    loop.run(d.brokered.aclose())


@pytest.fixture
def d(env: tuple[Direct, EmbeddedWorker]) -> Direct:
    direct, _ = env
    direct.starts.clear()
    direct.published.clear()
    direct.retried.clear()
    return direct


def test_a_direct_commit_runs_without_the_broker_and_returns_the_same_value(
    loop: LoopThread, d: Direct
) -> None:
    data = b"directly committed"
    direct = d.commit(d.direct, loop, d.session(data))
    assert direct == {"digest": sha256(data), "size": len(data)}
    assert d.registry.repo_blobs.is_linked("direct/app", Digest.parse(sha256(data)))
    assert d.published == []  # nothing went through the broker
    assert [(job, thread.startswith("lading-direct")) for _, job, thread in d.starts] == [
        (jobs.COMMIT_BLOB, True)
    ]
    other = b"committed through the broker"
    assert d.commit(d.brokered, loop, d.session(other)) == {"digest": sha256(other), "size": len(other)}
    assert len(d.published) == 1


@pytest.mark.parametrize("through", ["direct", "brokered"])
def test_errors_come_back_as_through_the_broker(loop: LoopThread, d: Direct, through: str) -> None:
    client = d.direct if through == "direct" else d.brokered
    with pytest.raises(DigestInvalid):
        d.commit(client, loop, d.session(b"abc", digest=sha256(b"abd")))
    kwargs = d.session(b"a bug in the worker")
    d.driver.broken = 1
    with pytest.raises(JobFailed) as failed:
        d.commit(client, loop, kwargs)
    assert set(failed.value.detail) == {"job_id"}  # no path, no exception text
    assert "/secret/path" not in str(failed.value)


def test_a_failed_direct_job_is_logged_with_its_job_and_request(loop: LoopThread, d: Direct) -> None:
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("workers.direct")
    logger.addHandler(handler)
    kwargs = d.session(b"x", repository="direct/logged")
    d.driver.broken = 1

    async def in_a_request() -> None:
        request_id.set("req-direct-1")
        with pytest.raises(JobFailed):
            await d.direct.run(jobs.COMMIT_BLOB, 60, **kwargs)

    try:
        loop.run(in_a_request())
    finally:
        logger.removeHandler(handler)
    entries = [json.loads(line) for line in lines.getvalue().splitlines()]
    [failure] = [e for e in entries if e["level"] == "error"]
    assert failure["request_id"] == "req-direct-1"
    assert failure["job"] == jobs.COMMIT_BLOB and failure["repository"] == "direct/logged"
    assert failure["job_id"] == d.starts[-1][0]
    assert "RuntimeError: disk on fire" in failure["exc"]


def test_storage_unavailable_is_retried_later_through_the_broker(
    loop: LoopThread, d: Direct, monkeypatch: pytest.MonkeyPatch
) -> None:
    countdowns: list[int] = []

    def backoff(**kwargs: Any) -> int:
        countdowns.append(kwargs["retries"])
        return 1  # the policy's first countdown, without its jitter

    monkeypatch.setattr(autoretry, "get_exponential_backoff_interval", backoff)
    data = b"committed on the second try"
    kwargs = d.session(data)
    d.driver.throttled = 1
    value = d.commit(d.direct, loop, kwargs)
    assert value == {"digest": sha256(data), "size": len(data)}
    assert d.driver.throttled == 0
    [first, second] = d.starts
    assert first[0] == second[0]  # one job, two attempts
    assert first[2].startswith("lading-direct") and not second[2].startswith("lading-direct")
    [retry] = d.published  # the retry was published, with its countdown, not run inline
    assert retry["id"] == first[0] and retry["retries"] == 1 and retry["eta"] is not None
    assert countdowns == [0] and d.retried == [jobs.COMMIT_BLOB]


def test_a_sent_job_stores_its_result_for_a_later_wait(loop: LoopThread, d: Direct) -> None:
    data = b"sent, awaited later"
    job_id = d.direct.send(jobs.COMMIT_BLOB, **d.session(data))
    assert loop.run(d.direct.wait(job_id, 30)) == {"digest": sha256(data), "size": len(data)}
    assert d.published == []


def test_a_job_expired_before_it_started_is_dropped(d: Direct) -> None:
    outcome: list[tuple[str, Any]] = []
    done = threading.Event()

    def on_done(status: str, result: Any) -> None:
        outcome.append((status, result))
        done.set()

    kwargs = d.session(b"late")
    d.runner.submit(jobs.COMMIT_BLOB, str(uuid.uuid4()), kwargs, on_done, expires=time.time() - 1)
    assert done.wait(30)
    assert outcome[0][0] == states.REVOKED
    assert d.starts == []
    assert not d.registry.repo_blobs.is_linked("direct/app", Digest.parse(sha256(b"late")))


def test_stop_waits_for_the_jobs_in_flight_then_refuses_new_ones(loop: LoopThread) -> None:
    d = Direct()
    events: list[str] = []
    data = b"finished during the stop"
    kwargs = d.session(data)
    d.driver.gate = threading.Event()

    def on_done(status: str, result: Any) -> None:
        events.append(f"job {status}")

    d.runner.submit(jobs.COMMIT_BLOB, str(uuid.uuid4()), kwargs, on_done)
    assert d.driver.entered.wait(30)  # the job is running, held by the driver
    stopper = threading.Thread(target=lambda: (d.runner.stop(30), events.append("stopped")))
    stopper.start()
    deadline = time.monotonic() + 30
    while d.runner.accepting and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(JobsUnavailable):  # new jobs are refused once stop began
        d.runner.submit(jobs.COMMIT_BLOB, str(uuid.uuid4()), kwargs)
    d.driver.gate.set()
    stopper.join(30)
    assert events[-2:] == ["job SUCCESS", "stopped"]
    assert d.runner.in_flight == 0
    assert d.registry.repo_blobs.is_linked("direct/app", Digest.parse(sha256(data)))
