"""pipeline.stores.pending: the one format of batch-mode pending-commit records."""

from __future__ import annotations

import json
import time

from pipeline.errors import DigestInvalid
from pipeline.formats.digest import Digest
from pipeline.storage import paths
from pipeline.storage.memory import MemoryDriver
from pipeline.stores.pending import DEFAULT_LEASE, PendingCommits

DIGEST = Digest.of(b"layer")


def test_a_record_round_trips_and_is_listed() -> None:
    store = PendingCommits(MemoryDriver())
    written = store.record("team/app", DIGEST, "job-1", "u-1", lease=30.0)
    assert store.lookup("team/app", DIGEST) == written
    assert [r.digest for r in store.records("team/app")] == [DIGEST]
    assert not written.expired(time.time())
    assert written.expired(time.time() + 31)
    store.clear("team/app", DIGEST)
    assert store.lookup("team/app", DIGEST) is None and store.digests("team/app") == []


def test_a_failure_is_kept_with_the_record_and_rebuilt_as_the_same_error() -> None:
    store = PendingCommits(MemoryDriver())
    record = store.record("app", DIGEST, "job-1", "u-1")
    store.mark_failed(record, DigestInvalid({"digest": str(DIGEST)}, "digest mismatch"))
    failure = store.lookup("app", DIGEST)
    assert failure is not None
    error = failure.failure()
    assert isinstance(error, DigestInvalid) and error.text == "digest mismatch"


def test_records_of_older_releases_are_read() -> None:
    driver = MemoryDriver()
    old = {"job_id": "j", "upload_id": "u", "created": "2020-01-01T00:00:00Z", "reconciled": {"error": {}}}
    driver.put_content(paths.pending_commit("app", DIGEST), json.dumps(old).encode())
    record = PendingCommits(driver).lookup("app", DIGEST)
    assert record is not None and record.lease == DEFAULT_LEASE
    assert record.failed is not None and record.failure() is not None
    assert record.expired(time.time())


def test_an_unreadable_record_is_skipped() -> None:
    driver = MemoryDriver()
    driver.put_content(paths.pending_commit("app", DIGEST), b"not json")
    assert PendingCommits(driver).lookup("app", DIGEST) is None
