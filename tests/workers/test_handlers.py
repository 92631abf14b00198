"""`pipeline.handlers`: one handler per job name, and the envelope `run_job` returns."""

from __future__ import annotations

import base64
import hashlib

import pytest

from pipeline import jobs
from pipeline.errors import DigestInvalid, ManifestInvalid, OperationUnsupported, StorageUnavailable
from pipeline.handlers import HANDLERS, run_job
from pipeline.registry import Registry
from pipeline.storage.memory import MemoryDriver


def test_every_job_name_has_a_handler() -> None:
    assert set(HANDLERS) == set(jobs.ALL_JOBS)


def test_a_commit_returns_an_ok_envelope() -> None:
    registry = Registry.in_memory()
    status = registry.uploads.create("a/b")
    registry.uploads.append("a/b", status.upload_id, b"data")
    digest = "sha256:" + hashlib.sha256(b"data").hexdigest()
    envelope = run_job(
        registry,
        jobs.COMMIT_BLOB,
        {"repository": "a/b", "upload_id": status.upload_id, "digest": digest, "size": 4},
    )
    assert envelope == {"ok": True, "value": {"digest": digest, "size": 4}}


def test_a_registry_error_becomes_a_failed_envelope_the_api_can_rebuild() -> None:
    registry = Registry.in_memory()
    status = registry.uploads.create("a/b")
    registry.uploads.append("a/b", status.upload_id, b"data")
    envelope = run_job(
        registry,
        jobs.COMMIT_BLOB,
        {"repository": "a/b", "upload_id": status.upload_id, "digest": "sha256:" + "0" * 64, "size": None},
    )
    assert envelope["ok"] is False
    with pytest.raises(DigestInvalid):
        jobs.unwrap(envelope)


def test_storage_unavailable_propagates_for_the_task_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry.in_memory()
    status = registry.uploads.create("a/b")

    def unavailable(self: MemoryDriver, path: str) -> None:
        raise StorageUnavailable("throttled")

    monkeypatch.setattr(type(registry.driver), "stat", unavailable)
    with pytest.raises(StorageUnavailable):
        run_job(
            registry,
            jobs.COMMIT_BLOB,
            {
                "repository": "a/b",
                "upload_id": status.upload_id,
                "digest": "sha256:" + "0" * 64,
                "size": None,
            },
        )


def test_manifest_body_travels_as_base64() -> None:
    envelope = run_job(
        Registry.in_memory(),
        jobs.COMMIT_MANIFEST,
        {"repository": "a/b", "reference": "v1", "media_type": None, "body_b64": "***"},
    )
    with pytest.raises(ManifestInvalid):
        jobs.unwrap(envelope)
    body = base64.b64encode(b"not json").decode()
    envelope = run_job(
        Registry.in_memory(),
        jobs.COMMIT_MANIFEST,
        {"repository": "a/b", "reference": "v1", "media_type": None, "body_b64": body},
    )
    with pytest.raises(ManifestInvalid):
        jobs.unwrap(envelope)


def test_unknown_jobs_are_unsupported_and_every_job_name_runs_a_handler() -> None:
    with pytest.raises(OperationUnsupported, match="unknown job"):
        jobs.unwrap(run_job(Registry.in_memory(), "lading.nope", {}))
    assert set(jobs.ALL_JOBS) <= set(HANDLERS)
    # A maintenance job resolves to its function and runs (it used to be able to answer
    # "not implemented yet"; a registry without anything to collect deletes nothing).
    value = jobs.unwrap(run_job(Registry.in_memory(), jobs.GARBAGE_COLLECT, {}))
    assert value["blobs_deleted"] == 0 and value["blobs_examined"] == 0
