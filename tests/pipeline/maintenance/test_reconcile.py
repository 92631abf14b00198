"""Reconcile: batch-mode commits whose job was lost are finished from storage alone;
settled records are forgotten; failures are kept once, not re-hashed every run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.formats.digest import Digest
from pipeline.maintenance.reconcile import reconcile
from pipeline.registry import Registry
from pipeline.storage import paths
from tests.pipeline.maintenance.helpers import fs_registry, push_blob

OLD = "2020-01-01T00:00:00Z"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return fs_registry(str(tmp_path))


def pending(registry: Registry, repo: str, digest: Digest, upload_id: str, created: str = OLD) -> None:
    record = {"job_id": "lost-job", "upload_id": upload_id, "created": created}
    registry.driver.put_content(paths.pending_commit(repo, digest), json.dumps(record).encode())


def uploaded(registry: Registry, repo: str, data: bytes) -> str:
    upload_id = registry.uploads.create(repo).upload_id
    registry.uploads.append(repo, upload_id, data)
    return upload_id


def test_a_lost_commit_is_finished(registry: Registry) -> None:
    data = os.urandom(5000)
    digest = Digest.of(data)
    upload_id = uploaded(registry, "app", data)
    pending(registry, "app", digest, upload_id)
    summary = reconcile(registry)
    assert summary["pending"]["recommitted"] == 1
    assert registry.repo_blobs.open("app", digest).read() == data
    assert not registry.driver.exists(paths.upload_dir("app", upload_id))
    assert not registry.driver.exists(paths.pending_commit("app", digest))


def test_settled_records_are_forgotten(registry: Registry) -> None:
    done = push_blob(registry, "app", b"committed already")
    pending(registry, "app", done, "0b8f2a7e-9a53-4a5e-9c62-3f1f5b0d6b11")
    gone = Digest.of(b"cancelled upload")
    pending(registry, "app", gone, "1c9f2a7e-9a53-4a5e-9c62-3f1f5b0d6b11")
    summary = reconcile(registry)["pending"]
    assert summary["committed"] == 1 and summary["abandoned"] == 1
    assert not registry.driver.exists(paths.pending_commit("app", done))
    assert not registry.driver.exists(paths.pending_commit("app", gone))


def test_fresh_records_are_left_to_their_job(registry: Registry) -> None:
    data = os.urandom(100)
    upload_id = uploaded(registry, "app", data)
    pending(registry, "app", Digest.of(data), upload_id, created="2999-01-01T00:00:00Z")
    assert reconcile(registry)["pending"]["waiting"] == 1
    assert registry.uploads.status("app", upload_id).size == 100


def test_a_commit_that_fails_again_is_recorded_once(registry: Registry) -> None:
    upload_id = uploaded(registry, "app", b"these bytes")
    claimed = Digest.of(b"other bytes")
    pending(registry, "app", claimed, upload_id)
    first = reconcile(registry)["pending"]
    assert [f["error"]["kind"] for f in first["failed"]] == ["DigestInvalid"]
    record = json.loads(registry.driver.get_content(paths.pending_commit("app", claimed)))
    assert record["job_id"] == "lost-job" and record["failed"]["error"]["kind"] == "DigestInvalid"
    assert registry.uploads.status("app", upload_id).size == len(b"these bytes")  # nothing lost
    second = reconcile(registry)["pending"]
    assert second["failed"] == [] and second["failed_earlier"] == 1


def test_gc_leftovers_wait_while_a_collection_runs(registry: Registry) -> None:
    registry.driver.put_content(paths.gc_candidate(Digest.of(b"x")), b"")
    with registry.locks.lock("_gc"):
        assert "skipped" in reconcile(registry)["gc"]
    assert registry.driver.exists(paths.gc_candidate(Digest.of(b"x")))
    assert reconcile(registry)["gc"] == {"restored": 0, "markers": 1}
