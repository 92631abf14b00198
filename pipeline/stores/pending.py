"""Pending-commit records of batch mode: the one store and the one format.

In batch mode (api.routes.pending) the API answers a completing upload `PUT` before its
COMMIT_BLOB job ran, and records the job at `paths.pending_commit(repo, digest)` on the
registry's storage, which every API replica, worker and maintenance run shares. A manifest
`PUT` naming the blob waits for that job (api.routes.manifests); reconcile
(pipeline.maintenance.reconcile) settles records whose job was lost.

The record is JSON:

    {"job_id": "...", "upload_id": "...", "created": "2026-01-02T03:04:05Z",
     "lease": 600.0,
     "failed": {"error": {"kind": "DigestInvalid", "message": ..., "detail": ...},
                "at": "2026-01-02T03:20:00+00:00"},        # only once a commit failed
     "discard": true}                                     # only when the request carried the bytes

- `lease`: seconds the job may take (the API's `celery.commit_timeout` when it wrote the
  record). A record older than its lease whose job left no result is *stale*: its job is
  gone (lost with a broker, or its result expired), and waiting for it is pointless.
- `failed`: written by whoever first learns that the commit failed for good (the job itself,
  the status URL, a manifest `PUT`, reconcile: pipeline.blob_commit.settle_failed_batch);
  the status URL and manifest `PUT`s answer that error at once instead of waiting.
- `discard`: the completing request carried the bytes (a `PUT` with a body, a monolithic
  `POST`). A commit of it that fails for good cancels the upload session, as a synchronous
  `PUT` with a body does (its retry would append the body again); without it the session is
  kept, as after a failed body-less `PUT`, for a retry with the right digest.

Records written before `lease` existed get the reader's default lease; the older failure
key `reconciled` is read as `failed`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import BlobUnknown, PathNotFound, RegistryError, from_payload
from pipeline.formats.digest import Digest
from pipeline.storage import paths
from pipeline.storage.driver import StorageDriver
from pipeline.stores.digest_dirs import digests_in
from pipeline.stores.uploads import parse_started_at

__all__ = ["DEFAULT_LEASE", "PendingCommit", "PendingCommits"]

DEFAULT_LEASE = 600.0
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class PendingCommit:
    """One batch-mode commit recorded for `digest` in `repository`."""

    repository: str
    digest: Digest
    job_id: str
    upload_id: str
    created: str
    lease: float = DEFAULT_LEASE
    failed: dict[str, Any] | None = None
    discard: bool = False
    """The completing request carried the bytes (a PUT with a body, a monolithic POST): a
    commit that fails for good cancels the session, as the synchronous PUT does."""

    def age(self, now: float) -> float:
        """Seconds since the record was written (infinite when its time is unreadable:
        old enough to look at)."""
        try:
            return now - parse_started_at(self.created).timestamp()
        except ValueError:
            return float("inf")

    def expired(self, now: float) -> bool:
        """Older than its job's lease: the job should have finished by now."""
        return self.age(now) >= self.lease

    def failure(self) -> RegistryError | None:
        """The error the commit failed with (recorded by reconcile), None if none."""
        if not self.failed:
            return None
        payload = self.failed.get("error")
        error = from_payload(payload) if isinstance(payload, dict) else None
        if isinstance(error, RegistryError):
            return error
        return BlobUnknown({"digest": str(self.digest)}, "the blob's commit failed")

    def lost(self) -> RegistryError:
        """The error a manifest PUT answers for a stale record (see the module)."""
        return BlobUnknown(
            {"digest": str(self.digest), "job_id": self.job_id, "recorded": self.created},
            f"the blob's commit job left no result within its lease ({self.lease:g}s): push the blob again",
        )

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "job_id": self.job_id,
            "upload_id": self.upload_id,
            "created": self.created,
            "lease": self.lease,
        }
        if self.failed is not None:
            data["failed"] = self.failed
        if self.discard:
            data["discard"] = True
        return json.dumps(data).encode()

    @classmethod
    def from_json(cls, repository: str, digest: Digest, raw: bytes) -> PendingCommit | None:
        """The record stored as `raw`, None for anything unreadable."""
        try:
            data = json.loads(raw)
            failed = data.get("failed", data.get("reconciled"))
            return cls(
                repository=repository,
                digest=digest,
                job_id=str(data["job_id"]),
                upload_id=str(data.get("upload_id", "")),
                created=str(data.get("created", "")),
                lease=float(data.get("lease", DEFAULT_LEASE)),
                failed=failed if isinstance(failed, dict) else None,
                discard=data.get("discard") is True,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


class PendingCommits:
    """The pending-commit records of one registry storage."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    def record(
        self,
        repository: str,
        digest: Digest,
        job_id: str,
        upload_id: str,
        lease: float = DEFAULT_LEASE,
        discard: bool = False,
    ) -> PendingCommit:
        """Record (or replace: a blob pushed again) the commit job of `digest`."""
        created = datetime.now(UTC).strftime(_TIME_FORMAT)
        record = PendingCommit(repository, digest, job_id, upload_id, created, lease, discard=discard)
        self.driver.put_content(paths.pending_commit(repository, digest), record.to_json())
        return record

    def lookup(self, repository: str, digest: Digest) -> PendingCommit | None:
        try:
            raw = self.driver.get_content(paths.pending_commit(repository, digest))
        except PathNotFound:
            return None
        return PendingCommit.from_json(repository, digest, raw)

    def digests(self, repository: str) -> list[Digest]:
        """The digests `repository` has records for, from one walk of its pending directory
        ([] when there is none: the repository never used batch mode, or every record was
        cleared)."""
        return list(digests_in(self.driver, paths.pending_commits_dir(repository)))

    def records(self, repository: str) -> Iterator[PendingCommit]:
        """Every readable record of `repository`."""
        for digest in self.digests(repository):
            record = self.lookup(repository, digest)
            if record is not None:
                yield record

    def lookup_many(self, repository: str, digests: list[Digest]) -> dict[Digest, PendingCommit]:
        found = {}
        for digest in digests:
            record = self.lookup(repository, digest)
            if record is not None:
                found[digest] = record
        return found

    def mark_failed(self, record: PendingCommit, error: RegistryError) -> PendingCommit:
        """Keep `record` with the error its commit failed with (reconcile), so a manifest
        PUT answers it at once and the blob is not re-hashed on every run."""
        failed = {"error": error.to_payload(), "at": datetime.now(UTC).isoformat()}
        marked = PendingCommit(
            record.repository,
            record.digest,
            record.job_id,
            record.upload_id,
            record.created,
            record.lease,
            failed,
            record.discard,
        )
        self.driver.put_content(paths.pending_commit(record.repository, record.digest), marked.to_json())
        return marked

    def clear(self, repository: str, digest: Digest) -> None:
        try:
            self.driver.delete(paths.pending_commit(repository, digest))
        except PathNotFound:
            pass
