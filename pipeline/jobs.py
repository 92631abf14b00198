"""Job names, their queues, payload shapes and the result envelope.

The API sends jobs *by name* (it never imports `workers`), so the names, the queue each
runs on and the shape of its arguments live here. `workers.tasks` registers one thin task
per name; a test checks that every name below is registered.

A job returns a JSON envelope instead of raising domain errors through Celery, so the
API can rebuild the exact `pipeline.errors` error the worker hit:

    {"ok": true,  "value": {...}}
    {"ok": false, "error": {"kind": "DigestInvalid", "message": "...", "detail": ...}}

Only transient failures (`StorageUnavailable`) are raised inside a task, so the task
layer retries them with backoff.
"""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.errors import LadingError, from_payload

# --- queues -----------------------------------------------------------------------------
INGEST = "ingest"  # commit blob, advance digest: latency-critical
VERIFY = "verify"  # manifest verification + commit, tarsum, deep verification
MAINTENANCE = "maintenance"  # scrub, purge uploads, gc, reconcile
NOTIFY = "notify"  # webhook deliveries

QUEUES: tuple[str, ...] = (INGEST, VERIFY, MAINTENANCE, NOTIFY)

# --- job names --------------------------------------------------------------------------
COMMIT_BLOB = "lading.commit_blob"
"""kwargs: repository, upload_id, digest, size (int | None). value: {digest, size}."""

ADVANCE_DIGEST = "lading.advance_digest"
"""kwargs: repository, upload_id, algorithm. value: {offset} hashed and saved so far."""

COMMIT_MANIFEST = "lading.commit_manifest"
"""kwargs: repository, reference (tag or digest), media_type, body_b64 (the manifest
bytes, base64), requested_at (ns since the epoch when the push arrived: a tag never moves
back to an older request's manifest). Verifies every reference, stores, links, tags,
records the subject.
value: {digest, subject (str | None), media_type, size}."""

TARSUM = "lading.tarsum"
"""kwargs: digest. value: {tarsum, diff_id, size} (also recorded in storage)."""

DEEP_VERIFY = "lading.deep_verify"
"""kwargs: repository, digest (a manifest), policy. value: {ok, mismatches, policy}."""

SCRUB = "lading.scrub"
PURGE_UPLOADS = "lading.purge_uploads"
GARBAGE_COLLECT = "lading.garbage_collect"
RECONCILE = "lading.reconcile"
NOTIFY_EVENT = "lading.notify"
"""kwargs: endpoint (name), envelope (the event envelope dict). Retries with backoff."""

PROXY_MANIFEST = "lading.proxy_manifest"
"""kwargs: repository (proxied), reference, accept (list of media types). Fetches the
manifest from the upstream into the cache unless the cache may answer (pipeline.proxy.cache).
value: {digest, media_type, fetched, stale (reason or None)}."""

PROXY_BLOB = "lading.proxy_blob"
"""kwargs: repository (proxied), digest. Single-flight fetch of a blob into an upload
session, committed (digest verified) into the cache. value: {fetched, size?}."""

PROXY_WARM = "lading.proxy_warm"
"""kwargs: repository (proxied), digest (a cached manifest). Fetches its blobs and the
children of an index for the upstream's platforms. value: {manifests, blobs, failed}."""

PROXY_EXPIRE = "lading.proxy_expire"
"""No kwargs. Unlinks cached content unused for its upstream's ttl. value: {manifests, blobs}."""

ROUTES: dict[str, str] = {
    COMMIT_BLOB: INGEST,
    ADVANCE_DIGEST: INGEST,
    COMMIT_MANIFEST: VERIFY,
    TARSUM: VERIFY,
    DEEP_VERIFY: VERIFY,
    SCRUB: MAINTENANCE,
    PURGE_UPLOADS: MAINTENANCE,
    GARBAGE_COLLECT: MAINTENANCE,
    RECONCILE: MAINTENANCE,
    NOTIFY_EVENT: NOTIFY,
    PROXY_MANIFEST: INGEST,
    PROXY_BLOB: INGEST,
    PROXY_WARM: VERIFY,
    PROXY_EXPIRE: MAINTENANCE,
}

ALL_JOBS: tuple[str, ...] = tuple(ROUTES)

# Jobs that expire shortly after the client's wait for them ends: nobody needs them later
# (the client retries its push), and a manifest commit run an hour late is pure risk. A
# blob commit is not among them: batch-mode pushes rely on it without waiting.
EXPIRE_WITH_WAIT: frozenset[str] = frozenset({COMMIT_MANIFEST})

# A job whose `reply_to` starts with this (behind the result backend's `global_keyprefix`)
# names the pub/sub channel its result is PUBLISHed on: the channel of the API replica that
# awaits it, so a replica reads its own results only. Any other job (beat, the CLI, a
# `send` whose result anyone may await) is PUBLISHed on its result key's name.
RESULT_CHANNEL_PREFIX = "lading-results-"


# --- result envelope --------------------------------------------------------------------


def ok(value: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ok": True, "value": value or {}}


def failed(error: LadingError) -> dict[str, Any]:
    return {"ok": False, "error": error.to_payload()}


def unwrap(result: Any) -> dict[str, Any]:
    """The value of a job envelope, or raise the domain error it carries."""
    if not isinstance(result, dict) or "ok" not in result:
        raise LadingError(f"malformed job result: {result!r}")
    if result["ok"]:
        return dict(result.get("value") or {})
    raise from_payload(result["error"])


class JobClient(Protocol):
    """Sends jobs by name and awaits their envelopes without blocking an event loop."""

    def send(self, job: str, **kwargs: Any) -> str:
        """Enqueue a job on its queue; return the job id."""
        ...

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        """The job's value, or raise its domain error; JobTimeout after `timeout`."""
        ...

    async def run(self, job: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        """send + wait."""
        ...
