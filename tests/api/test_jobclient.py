"""The API's job clients: InlineJobClient end to end in threads, and how CeleryJobClient
turns what a worker stored into values and domain errors (its Redis and embedded paths run
against real workers in tests/workers/)."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import pytest

from api.jobclient import InlineJobClient, job_error
from api.jobclient import _value as value_of
from pipeline import jobs
from pipeline.errors import (
    BlobUploadUnknown,
    DigestInvalid,
    JobTimeout,
    LadingError,
    RegistryError,
    StorageUnavailable,
)
from pipeline.registry import Registry
from pipeline.storage.memory import MemoryDriver

pytestmark = pytest.mark.anyio


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def test_inline_client_runs_a_commit() -> None:
    registry = Registry.in_memory()
    status = registry.uploads.create("a/b")
    registry.uploads.append("a/b", status.upload_id, b"bytes")
    client = InlineJobClient(registry)
    value = await client.run(jobs.COMMIT_BLOB, 5, repository="a/b", upload_id=status.upload_id,
                             digest=sha256(b"bytes"), size=5)
    assert value == {"digest": sha256(b"bytes"), "size": 5}
    client.close()


async def test_inline_client_raises_the_jobs_domain_error() -> None:
    registry = Registry.in_memory()
    status = registry.uploads.create("a/b")
    registry.uploads.append("a/b", status.upload_id, b"bytes")
    client = InlineJobClient(registry)
    job_id = client.send(jobs.COMMIT_BLOB, repository="a/b", upload_id=status.upload_id,
                         digest=sha256(b"other"), size=None)
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
    stored = {"exc_type": "StorageUnavailable", "exc_module": "pipeline.errors",
              "exc_message": ["storage temporarily unavailable: SlowDown"]}
    with pytest.raises(StorageUnavailable, match="SlowDown"):
        value_of("id", "FAILURE", stored)
    with pytest.raises(StorageUnavailable):
        value_of("id", "FAILURE", StorageUnavailable("SlowDown"))  # as AsyncResult rebuilds it


def test_time_limits_are_job_timeouts_and_bugs_are_plain_lading_errors() -> None:
    assert isinstance(job_error("id", "SoftTimeLimitExceeded", ""), JobTimeout)
    assert isinstance(job_error("id", "TimeLimitExceeded", "3660"), JobTimeout)
    crash = job_error("id", "KeyError", "'digest'")
    assert type(crash) is LadingError and not isinstance(crash, RegistryError)
    with pytest.raises(LadingError, match="job did not complete"):
        value_of("id", "REVOKED", None)
