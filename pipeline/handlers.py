"""What each job does: `HANDLERS` maps every job name to a plain use-case function, and
`run_job` runs one and wraps its outcome in the job envelope.

A handler takes the process's `Registry` and the job's primitive kwargs (as sent by the
API, see `pipeline.jobs`) and returns a JSON-serialisable dict. `run_job` turns a
`RegistryError` into a failed envelope the API re-raises as the same error; it lets
`StorageUnavailable` through so the task layer retries it, and lets anything else through
as a genuine job failure (a bug: it shows as a failed task).

Maintenance and notification jobs run `pipeline.maintenance.scrub`, `purge_uploads`,
`garbage_collect`, `reconcile` and `pipeline.events.notify_event`, each
`(registry, **kwargs) -> dict`, imported here like every other use case so mypy and the
import contracts see each edge.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline import jobs
from pipeline.blob_commit import advance_digest, commit_blob
from pipeline.deepverify import deep_verify, tarsum_blob
from pipeline.errors import ManifestInvalid, OperationUnsupported, RegistryError
from pipeline.events import notify_event
from pipeline.maintenance import garbage_collect, purge_uploads, reconcile, scrub
from pipeline.manifest_commit import commit_manifest

if TYPE_CHECKING:
    from pipeline.registry import Registry

Handler = Callable[..., dict[str, Any]]


def _commit_blob(
    registry: Registry, *, repository: str, upload_id: str, digest: str, size: int | None = None
) -> dict[str, Any]:
    return commit_blob(registry, repository, upload_id, digest, size)


def _advance_digest(
    registry: Registry, *, repository: str, upload_id: str, algorithm: str = "sha256"
) -> dict[str, Any]:
    return advance_digest(registry, repository, upload_id, algorithm)


def _commit_manifest(
    registry: Registry,
    *,
    repository: str,
    reference: str,
    body_b64: str,
    media_type: str | None = None,
    requested_at: int | None = None,
) -> dict[str, Any]:
    try:
        body = base64.b64decode(body_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ManifestInvalid("manifest body is not valid base64") from None
    return commit_manifest(registry, repository, reference, media_type, body, requested_at)


def _tarsum(registry: Registry, *, digest: str) -> dict[str, Any]:
    return tarsum_blob(registry, digest)


def _deep_verify(
    registry: Registry, *, repository: str, digest: str, policy: str | None = None
) -> dict[str, Any]:
    return deep_verify(registry, repository, digest, policy or registry.settings.deep_verification)


def _proxy_manifest(
    registry: Registry, *, repository: str, reference: str, accept: list[str] | None = None
) -> dict[str, Any]:
    from pipeline.proxy import cache

    return cache.fetch_manifest(registry, repository, reference, accept)


def _proxy_blob(registry: Registry, *, repository: str, digest: str) -> dict[str, Any]:
    from pipeline.proxy import cache

    return cache.fetch_blob(registry, repository, digest)


def _proxy_warm(registry: Registry, *, repository: str, digest: str) -> dict[str, Any]:
    from pipeline.proxy import cache

    return cache.warm(registry, repository, digest)


def _proxy_expire(registry: Registry) -> dict[str, Any]:
    from pipeline.proxy import cache

    return cache.expire(registry)


HANDLERS: dict[str, Handler] = {
    jobs.COMMIT_BLOB: _commit_blob,
    jobs.ADVANCE_DIGEST: _advance_digest,
    jobs.COMMIT_MANIFEST: _commit_manifest,
    jobs.TARSUM: _tarsum,
    jobs.DEEP_VERIFY: _deep_verify,
    jobs.SCRUB: scrub,
    jobs.PURGE_UPLOADS: purge_uploads,
    jobs.GARBAGE_COLLECT: garbage_collect,
    jobs.RECONCILE: reconcile,
    jobs.NOTIFY_EVENT: notify_event,
    jobs.PROXY_MANIFEST: _proxy_manifest,
    jobs.PROXY_BLOB: _proxy_blob,
    jobs.PROXY_WARM: _proxy_warm,
    jobs.PROXY_EXPIRE: _proxy_expire,
}


def run_job(registry: Registry, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run job `name` and return its envelope: `jobs.ok(value)`, or `jobs.failed(error)`
    for a RegistryError. StorageUnavailable (retryable) and other errors propagate."""
    handler = HANDLERS.get(name)
    if handler is None:
        return jobs.failed(OperationUnsupported(f"unknown job {name!r}"))
    try:
        value = handler(registry, **kwargs)
    except RegistryError as exc:
        return jobs.failed(exc)
    return jobs.ok(value)
