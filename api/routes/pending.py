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

The job id is recorded in the registry's pending-commit store (pipeline.stores.pending: on the
registry's storage, not in process memory), so a later manifest PUT handled by ANY API
replica can wait for the commits of the blobs it names before sending its own job, and,
should blobs still be missing, for records that appeared meanwhile. It fails with one
MANIFEST_BLOB_UNKNOWN entry per blob whose commit failed (the commit error in
`detail.reason`), at once for a record reconcile marked failed and for a stale one (older
than its job's lease with no result: the job is gone). A record is removed once its blob
is seen committed; a failed one stays until the blob is pushed again.
"""

from __future__ import annotations

PREFER_ASYNC = "respond-async"
JOB_HEADER = "Lading-Job"


def wants_async(prefer: str | None) -> bool:
    """True when a `Prefer` header (RFC 7240) asks for respond-async."""
    if not prefer:
        return False
    return any(p.split(";")[0].strip().lower() == PREFER_ASYNC for p in prefer.split(","))
