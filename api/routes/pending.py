"""Batch-mode blob commits: what was accepted without waiting, kept on shared storage.

Batch mode (beyond the spec, opt-in per request) lets a pusher skip the wait for each blob's
commit job:

    PUT /v2/<name>/blobs/uploads/<uuid>?digest=<d>      (or POST .../uploads/?digest=<d>)
    Prefer: respond-async

is answered `202 Accepted` as soon as the bytes are stored and the COMMIT_BLOB job is sent,
with `Location: /v2/<name>/blobs/<d>`, `Docker-Content-Digest: <d>`,
`Preference-Applied: respond-async` and

    Lading-Job: /v2/<name>/blobs/uploads/<uuid>?status&digest=<d>

a status URL answering `202` + `{"status": "pending"}` while the job runs, `200` +
`{"status": "committed", "digest", "size"}` with the blob's Location once it is linked, and
the commit's own OCI error (e.g. 400 DIGEST_INVALID) if it failed.

The job id is recorded at `paths.pending_commit(repo, digest)` (JSON, on the registry's
storage, not in process memory), so a later manifest PUT handled by ANY API replica can wait
for the commits of the blobs it names before sending its own job (`digests` lists a
repository's records in one walk; a repository with none costs one failed lookup),
and, should blobs still be missing, for records that appeared meanwhile. It fails with one
MANIFEST_BLOB_UNKNOWN entry per blob whose commit failed (the commit error in
`detail.reason`). A record is removed once its blob is seen committed; a failed one stays
until the blob is pushed again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline import paths
from pipeline.digest import Digest
from pipeline.errors import PathNotFound, RegistryError
from pipeline.storage.driver import StorageDriver

PREFER_ASYNC = "respond-async"
JOB_HEADER = "Lading-Job"


def wants_async(prefer: str | None) -> bool:
    """True when a `Prefer` header (RFC 7240) asks for respond-async."""
    if not prefer:
        return False
    return any(p.split(";")[0].strip().lower() == PREFER_ASYNC for p in prefer.split(","))


@dataclass(frozen=True)
class PendingCommit:
    job_id: str
    upload_id: str
    created: str


class PendingCommits:
    """The records of batch-mode commits of one registry storage."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    def record(self, repository: str, digest: Digest, job_id: str, upload_id: str) -> None:
        data = {
            "job_id": job_id,
            "upload_id": upload_id,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        self.driver.put_content(paths.pending_commit(repository, digest), json.dumps(data).encode())

    def lookup(self, repository: str, digest: Digest) -> PendingCommit | None:
        try:
            raw = self.driver.get_content(paths.pending_commit(repository, digest))
        except PathNotFound:
            return None
        try:
            data = json.loads(raw)
            return PendingCommit(
                str(data["job_id"]), str(data.get("upload_id", "")), str(data.get("created", ""))
            )
        except (ValueError, KeyError, TypeError):
            return None

    def digests(self, repository: str) -> list[Digest]:
        """The digests `repository` has records for, from one walk of its pending directory
        ([] when that does not exist: the repository never used batch mode, or every record
        was cleared)."""
        root = paths.pending_commits_dir(repository)
        found = []
        try:
            for info in self.driver.walk(root):
                if not info.is_dir:
                    digest = _digest_of(repository, root, info.path)
                    if digest is not None:
                        found.append(digest)
        except PathNotFound:
            return []
        return found

    def lookup_many(self, repository: str, digests: list[Digest]) -> dict[Digest, PendingCommit]:
        found = {}
        for digest in digests:
            record = self.lookup(repository, digest)
            if record is not None:
                found[digest] = record
        return found

    def clear(self, repository: str, digest: Digest) -> None:
        try:
            self.driver.delete(paths.pending_commit(repository, digest))
        except PathNotFound:
            pass


def _digest_of(repository: str, root: str, path: str) -> Digest | None:
    """The digest whose record is at `path` (None for anything else found there)."""
    algorithm, _, hex_part = path[len(root) + 1 :].partition("/")
    try:
        digest = Digest.parse(f"{algorithm}:{hex_part}")
    except RegistryError:
        return None
    return digest if paths.pending_commit(repository, digest) == path else None
