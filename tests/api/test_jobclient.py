"""The API's job clients: InlineJobClient end to end in threads, and how CeleryJobClient
turns what a worker stored into values and domain errors (its Redis and embedded paths run
against real workers in tests/workers/)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from celery import Celery
from celery.backends.base import BaseBackend

from api.jobclient import CeleryJobClient, job_error
from api.jobclient import _value as value_of
from pipeline import jobs
from pipeline.errors import (
    BlobUploadUnknown,
    DigestInvalid,
    JobFailed,
    JobTimeout,
    LadingError,
    StorageUnavailable,
)
from pipeline.registry import Registry
from pipeline.storage.memory import MemoryDriver
from tests.support.inline_jobs import InlineJobClient

pytestmark = pytest.mark.anyio


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_inline_client_runs_a_commit() -> None:
    registry = Registry.in_memory()
    status = registry.uploads.create("a/b")
    registry.uploads.append("a/b", status.upload_id, b"bytes")
    client = InlineJobClient(registry)
    value = await client.run(
        jobs.COMMIT_BLOB, 5, repository="a/b", upload_id=status.upload_id, digest=sha256(b"bytes"), size=5
    )
    assert value == {"digest": sha256(b"bytes"), "size": 5}
    client.close()


async def test_inline_client_raises_the_jobs_domain_error() -> None:
    registry = Registry.in_memory()
    status = registry.uploads.create("a/b")
    registry.uploads.append("a/b", status.upload_id, b"bytes")
    client = InlineJobClient(registry)
    job_id = client.send(
        jobs.COMMIT_BLOB, repository="a/b", upload_id=status.upload_id, digest=sha256(b"other"), size=None
    )
    with pytest.raises(DigestInvalid):
        await client.wait(job_id, 5)
    client.close()


async def test_inline_client_lets_storage_unavailable_through(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry.in_memory()

    def throttled(self: MemoryDriver, path: str) -> None:
        raise StorageUnavailable("SlowDown")

    monkeypatch.setattr(MemoryDriver, "stat", throttled)
    client = InlineJobClient(registry)
    with pytest.raises(StorageUnavailable):
        await client.run(
            jobs.COMMIT_BLOB, 5, repository="a/b", upload_id=str(uuid.uuid4()), digest=sha256(b""), size=0
        )
    client.close()


async def test_inline_client_times_out_a_slow_job(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry.in_memory()
    original = MemoryDriver.stat

    def slow(self: MemoryDriver, path: str) -> Any:
        time.sleep(0.5)
        return original(self, path)

    monkeypatch.setattr(MemoryDriver, "stat", slow)
    client = InlineJobClient(registry)
    with pytest.raises(JobTimeout):
        await client.run(
            jobs.COMMIT_BLOB, 0.05, repository="a/b", upload_id=str(uuid.uuid4()), digest=sha256(b""), size=0
        )
    client.close()


async def test_inline_client_checks_names_and_json_kwargs() -> None:
    client = InlineJobClient(Registry.in_memory())
    with pytest.raises(ValueError, match="unknown job"):
        client.send("lading.nope")
    with pytest.raises(TypeError):
        client.send(jobs.COMMIT_BLOB, repository="a/b", upload_id="x", digest=b"bytes are not JSON", size=1)
    with pytest.raises(JobTimeout):
        await client.wait("never-sent", 1)
    client.close()


def test_a_success_envelope_is_unwrapped() -> None:
    assert value_of("id", "SUCCESS", jobs.ok({"offset": 3})) == {"offset": 3}
    with pytest.raises(BlobUploadUnknown):
        value_of("id", "SUCCESS", jobs.failed(BlobUploadUnknown("x")))


def test_a_task_that_ran_out_of_storage_retries_is_storage_unavailable() -> None:
    stored = {
        "exc_type": "StorageUnavailable",
        "exc_module": "pipeline.errors",
        "exc_message": ["storage temporarily unavailable: SlowDown"],
    }
    with pytest.raises(StorageUnavailable) as raised:
        value_of("id", "FAILURE", stored)
    assert "SlowDown" not in str(raised.value)  # the driver's words stay in the worker's log
    with pytest.raises(StorageUnavailable):
        value_of("id", "FAILURE", StorageUnavailable("SlowDown"))  # as AsyncResult rebuilds it


def test_time_limits_are_job_timeouts_and_bugs_are_clean_job_failures() -> None:
    assert isinstance(job_error("id", "SoftTimeLimitExceeded", ""), JobTimeout)
    assert isinstance(job_error("id", "TimeLimitExceeded", "3660"), JobTimeout)
    crash = job_error("id", "RecursionError", "maximum recursion depth exceeded /srv/lading/x.py")
    assert isinstance(crash, JobFailed) and crash.detail == {"job_id": "id"}
    leak = job_error("id", "PathNotFound", "/docker/registry/v2/repositories/a/_manifests/x")
    assert isinstance(leak, JobFailed) and "/docker" not in str(leak)
    with pytest.raises(LadingError, match="job did not complete"):
        value_of("id", "REVOKED", None)


# --- a backend that pushes results (as the embedded worker's does) -----------------------


class PushBackend(BaseBackend):
    """Results handed over by the test: `finish(job_id, status, result)` from any thread."""

    def __init__(self, app: Celery, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.lock = threading.Lock()
        self.results: dict[str, dict[str, Any]] = {}
        self.callbacks: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.registered = threading.Condition(self.lock)

    def add_result_callback(
        self, task_id: str, callback: Callable[[dict[str, Any]], None]
    ) -> Callable[[], None]:
        with self.lock:
            meta = self.results.get(task_id)
            if meta is None:
                self.callbacks[task_id] = callback
                self.registered.notify_all()
        if meta is not None:
            callback(meta)

        def cancel() -> None:
            with self.lock:
                self.callbacks.pop(task_id, None)

        return cancel

    def finish(self, task_id: str, status: str, result: Any) -> None:
        meta = {"status": status, "result": result, "task_id": task_id}
        with self.lock:
            self.results[task_id] = meta
            callback = self.callbacks.pop(task_id, None)
        if callback is not None:
            callback(meta)

    def finish_next(self, status: str, result: Any, timeout: float = 10.0) -> threading.Thread:
        """In another thread: wait for a waiter to register, then finish its job."""

        def run() -> None:
            with self.lock:
                self.registered.wait_for(lambda: bool(self.callbacks), timeout)
                task_id = next(iter(self.callbacks))
            time.sleep(0.02)
            self.finish(task_id, status, result)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread


@pytest.fixture
async def push() -> AsyncIterator[tuple[CeleryJobClient, PushBackend]]:
    app = Celery(
        "push-test", broker="memory://localhost/", backend=f"{__name__}:PushBackend", set_as_current=False
    )
    client = CeleryJobClient(app)
    backend = app.backend
    assert isinstance(backend, PushBackend) and not client.uses_pubsub
    yield client, backend
    await client.aclose()
    with app.connection_for_write() as conn:  # the memory broker is process-wide: leave it empty
        channel = conn.default_channel
        while channel.basic_get(jobs.INGEST, no_ack=True) is not None:
            pass


async def test_a_pushed_result_resolves_the_waiting_request_from_another_thread(
    push: tuple[CeleryJobClient, PushBackend],
) -> None:
    client, backend = push
    finisher = backend.finish_next("SUCCESS", jobs.ok({"digest": "sha256:x", "size": 1}))
    value = await client.run(jobs.COMMIT_BLOB, 10, repository="a/b", upload_id="u", digest="sha256:x", size=1)
    finisher.join(5)
    assert value == {"digest": "sha256:x", "size": 1}
    assert backend.callbacks == {}

    finisher = backend.finish_next("SUCCESS", jobs.failed(DigestInvalid("sha256:x")))
    with pytest.raises(DigestInvalid):
        await client.run(jobs.COMMIT_BLOB, 10, repository="a/b", upload_id="u", digest="sha256:x", size=1)
    finisher.join(5)


async def test_a_result_pushed_before_the_wait_is_returned_at_once(
    push: tuple[CeleryJobClient, PushBackend],
) -> None:
    client, backend = push
    job_id = client.send(jobs.COMMIT_BLOB, repository="a/b", upload_id="u", digest="sha256:x", size=1)
    backend.finish(job_id, "FAILURE", StorageUnavailable("SlowDown"))
    with pytest.raises(StorageUnavailable):
        await client.wait(job_id, 10)
    assert backend.callbacks == {}


async def test_a_pushed_wait_that_runs_out_is_a_job_timeout_and_leaves_nothing_registered(
    push: tuple[CeleryJobClient, PushBackend],
) -> None:
    client, backend = push
    results = await asyncio.gather(
        *(client.wait(f"never-{i}", 0.1) for i in range(50)), return_exceptions=True
    )
    assert all(isinstance(r, JobTimeout) for r in results)
    assert backend.callbacks == {}
    backend.finish("never-0", "SUCCESS", jobs.ok())  # too late: nobody is called, nothing breaks
