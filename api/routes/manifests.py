"""GET/HEAD (end-3), PUT (end-7a/7b) and DELETE (end-9) of `/v2/<name>/manifests/<reference>`.

`<reference>` is a digest when it contains ':' (malformed -> 400 DIGEST_INVALID), else a tag
(malformed -> 400 TAG_INVALID).

- GET/HEAD answers the stored bytes with the stored media type as Content-Type (no content
  negotiation: clients get exactly what was pushed), Docker-Content-Digest, ETag and
  Content-Length; If-None-Match with the ETag gives 304.
- PUT reads at most MAX_MANIFEST_SIZE bytes (more -> 413 MANIFEST_INVALID, nothing stored) and
  sends COMMIT_MANIFEST; the worker parses, verifies every reference (one
  MANIFEST_BLOB_UNKNOWN entry per missing digest), stores, tags and records the subject.
  201 carries Location (by digest), Docker-Content-Digest and `OCI-Subject` when the
  manifest has a subject. Blobs the manifest names whose batch-mode commits
  (api.routes.pending, pipeline.stores.pending) are still running are waited for BEFORE the job is
  sent, so it runs once; a failed one is reported (MANIFEST_BLOB_UNKNOWN with the commit's
  error), at once when reconcile recorded the failure or the record outlived its job's
  lease with no result (the job is gone): never a wait for a job that cannot answer.
  Blobs still missing whose commits were accepted meanwhile (by another replica) are waited
  for and the job retried once.
  Pushing by digest with `?tag=a&tag=b` (end-7b) also tags it; each tag is echoed in `OCI-Tag`.
- DELETE by digest removes the revision, every tag pointing at it and its referrer entry;
  by tag only the tag (pipeline.manifest_commit.delete_manifest, under the repository
  lock); both 202, and 405 UNSUPPORTED unless `storage.delete.enabled`.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import anyio
from starlette.responses import Response

from api.errors import ApiError, code_and_status, entry
from api.routes.blobs import etag_of, if_none_match
from api.routes.context import RequestContext
from api.streaming import read_limited
from pipeline import jobs as joblib
from pipeline import manifest_commit
from pipeline.blob_commit import settle_failed_batch
from pipeline.errors import (
    BlobUnknown,
    JobTimeout,
    ManifestBlobUnknown,
    ManifestUnknown,
    OperationUnsupported,
    RegistryError,
)
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import MAX_MANIFEST_SIZE
from pipeline.formats.names import is_digest_reference, is_valid_tag, validate_tag
from pipeline.registry import Registry
from pipeline.stores.pending import PendingCommit, PendingCommits

MAX_TAGS_PER_PUSH = 100
STALE_PROBE_SECONDS = 0.5
"""How long a manifest PUT looks for the result of a job older than its lease."""


def _readable_reference(reference: str) -> str:
    """A reference that no push could have created names no manifest: reads and deletes
    answer 404 MANIFEST_UNKNOWN (the spec's answer for a missing manifest), not 400."""
    if not is_digest_reference(reference) and not is_valid_tag(reference):
        raise ManifestUnknown(f"no manifest for {reference!r}")
    return reference


def _load(registry: Registry, name: str, reference: str) -> tuple[Digest, bytes, str]:
    if is_digest_reference(reference):
        digest = Digest.parse(reference)
    else:
        digest = registry.tags.resolve(name, _readable_reference(reference))
    body, media_type = registry.manifests.get(name, digest)
    return digest, body, media_type


async def get_manifest(ctx: RequestContext) -> Response:
    """200 with the manifest (HEAD: headers only); 404 MANIFEST_UNKNOWN."""
    digest, body, media_type = await ctx.blocking(_load, ctx.registry, ctx.name, ctx.params["reference"])
    etag = etag_of(digest)
    headers = {"Docker-Content-Digest": str(digest), "ETag": etag}
    if if_none_match(ctx.request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(len(body))
    if not ctx.head:
        reference = ctx.params["reference"]
        tag = None if is_digest_reference(reference) else reference
        await ctx.notify_manifest("pull", str(digest), media_type, len(body), tag)
    return Response(b"" if ctx.head else body, headers=headers, media_type=media_type)


def _media_type(content_type: str | None) -> str | None:
    """The Content-Type without parameters (the spec says to ignore them)."""
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip() or None


def _extra_tags(ctx: RequestContext, reference: str) -> list[str]:
    tags = ctx.request.query_params.getlist("tag")
    if not tags:
        return []
    if not is_digest_reference(reference):
        return [validate_tag(t) for t in tags]
    if len(tags) > MAX_TAGS_PER_PUSH:
        raise ApiError("MANIFEST_INVALID", 414, "too many tags in one push", {"limit": MAX_TAGS_PER_PUSH})
    return [validate_tag(t) for t in tags]


async def put_manifest(ctx: RequestContext) -> Response:
    """201 with Location, Docker-Content-Digest (and OCI-Subject / OCI-Tag when relevant)."""
    reference = ctx.params["reference"]
    if is_digest_reference(reference):
        Digest.parse(reference)
    else:
        validate_tag(reference)
    # `?tag=a&tag=a` tags once (and echoes `a` once in OCI-Tag).
    extra_tags = [t for t in dict.fromkeys(_extra_tags(ctx, reference)) if t != reference]
    body = await read_limited(ctx.request, MAX_MANIFEST_SIZE)
    if body is None:
        raise ApiError("MANIFEST_INVALID", 413, "manifest too large", {"limit": MAX_MANIFEST_SIZE})
    kwargs: dict[str, Any] = {
        "repository": ctx.name,
        "reference": reference,
        "media_type": _media_type(ctx.request.headers.get("content-type")),
        "body_b64": base64.b64encode(body).decode("ascii"),
        # The tag moves only if no later push moved it meanwhile (a late, redelivered job).
        "requested_at": time.time_ns(),
    }
    failed = await _await_pending(ctx, body, ctx.settings.celery.manifest_timeout)
    value = await _commit(ctx, kwargs, failed)
    digest = str(value["digest"])
    for tag in extra_tags:
        await _commit(ctx, {**kwargs, "reference": tag}, failed)
    pushed = extra_tags if is_digest_reference(reference) else [reference, *extra_tags]
    for tag in pushed or [""]:  # one push event per tag, or one untagged
        await ctx.notify_manifest("push", digest, value.get("media_type"), value.get("size"), tag or None)
    headers = {
        "Location": ctx.urls.manifest(ctx.name, digest),
        "Docker-Content-Digest": digest,
        "Content-Length": "0",
    }
    if value.get("subject"):
        headers["OCI-Subject"] = str(value["subject"])
    response = Response(status_code=201, headers=headers)
    if extra_tags:
        response.headers["OCI-Tag"] = ", ".join(extra_tags)
    return response


async def _commit(
    ctx: RequestContext, kwargs: dict[str, Any], failed: dict[Digest, RegistryError]
) -> dict[str, Any]:
    """Run COMMIT_MANIFEST. `failed`: batch-mode commits of named blobs that failed (the
    pre-wait's outcome, extended here); when blobs are missing and some of them were
    accepted in batch mode meanwhile (by another replica), wait for those and retry once."""
    timeout = ctx.settings.celery.manifest_timeout
    try:
        return await ctx.jobs.run(joblib.COMMIT_MANIFEST, timeout=timeout, **kwargs)
    except ManifestBlobUnknown as missing:
        digests = _missing_digests(missing)
        store = ctx.registry.pending
        late = await ctx.blocking(store.lookup_many, ctx.name, [d for d in digests if d not in failed])
        if not late and not any(d in failed for d in digests):
            raise
        failed.update(await _wait_for_commits(ctx, store, late, timeout))
        committed = {d for d in late if d not in failed}
        if late and all(d in committed for d in digests):
            return await ctx.jobs.run(joblib.COMMIT_MANIFEST, timeout=timeout, **kwargs)
        raise _blobs_missing(missing, [d for d in digests if d not in committed], failed) from None


def _missing_digests(missing: ManifestBlobUnknown) -> list[Digest]:
    digests: list[Digest] = []
    for item in missing.digests:
        try:
            digests.append(Digest.parse(str(item)))
        except RegistryError:
            continue
    return digests


def _pending_in(
    registry: Registry, store: PendingCommits, name: str, body: bytes
) -> dict[Digest, PendingCommit]:
    """The batch-mode commits still to wait for among the blobs this manifest names. The API
    never parses manifests: a digest names a blob here when its text occurs in the raw
    body. Records of blobs already committed (linked, data in place) need no wait and are
    cleared (they may be stale: their job's result long gone)."""
    found: dict[Digest, PendingCommit] = {}
    for digest in store.digests(name):
        if str(digest).encode("ascii") not in body:
            continue
        if _committed(registry, name, digest):
            store.clear(name, digest)
            continue
        record = store.lookup(name, digest)
        if record is not None:
            found[digest] = record
    return found


def _committed(registry: Registry, name: str, digest: Digest) -> bool:
    """The blob is linked AND its data is in place. A commit links before it moves the
    data, so a link alone may be a commit still running: its record must be waited for,
    not cleared (else the manifest job can run in between and find the blob missing)."""
    try:
        registry.repo_blobs.stat(name, digest)
    except BlobUnknown:
        return False
    return True


async def _await_pending(ctx: RequestContext, body: bytes, timeout: float) -> dict[Digest, RegistryError]:
    """Before the manifest job is sent: wait for the batch-mode commits of the blobs the
    manifest names, so it is verified once, after them. Returns the failed ones."""
    store = ctx.registry.pending
    records = await ctx.blocking(_pending_in, ctx.registry, store, ctx.name, body)
    if not records:
        return {}
    return await _wait_for_commits(ctx, store, records, timeout)


async def _wait_for_commits(
    ctx: RequestContext, store: PendingCommits, records: dict[Digest, PendingCommit], timeout: float
) -> dict[Digest, RegistryError]:
    """Wait (concurrently, each bounded by `timeout`) for the commit jobs of `records`;
    clear the records of those that succeeded and return the commit errors of the others.
    A wait that runs out (JobTimeout) or an error that is no registry error is raised."""
    outcomes: dict[Digest, Exception | None] = {}
    now = time.time()

    async def wait_one(digest: Digest, record: PendingCommit) -> None:
        # Errors are collected, not raised, so one failed blob never hides the others
        # (and no ExceptionGroup escapes the task group).
        failure = record.failure()  # reconcile found the commit failing: no job to wait for
        if failure is not None:
            outcomes[digest] = failure
            return
        # Never wait past the job's lease: a record older than it whose job left no
        # result is stale (the job is gone) and answered at once.
        bound = min(timeout, max(record.lease - record.age(now), STALE_PROBE_SECONDS))
        try:
            await ctx.jobs.wait(record.job_id, timeout=bound)
        except JobTimeout as err:
            outcomes[digest] = record.lost() if bound < timeout else err
        except Exception as err:
            outcomes[digest] = err
        else:
            outcomes[digest] = None

    async with anyio.create_task_group() as tg:
        for digest, record in records.items():
            tg.start_soon(wait_one, digest, record)

    committed = [digest for digest, outcome in outcomes.items() if outcome is None]
    if committed:
        await ctx.blocking(_clear, store, ctx.name, committed)  # one thread hop for all
    failures: dict[Digest, RegistryError] = {}
    for digest, outcome in outcomes.items():
        if outcome is None:
            continue
        if isinstance(outcome, JobTimeout) or not isinstance(outcome, RegistryError):
            raise outcome
        failures[digest] = outcome
    if failures:  # the failed uploads' sessions go, their records keep the errors
        await ctx.blocking(_settle_failed, ctx.registry, {d: (records[d], e) for d, e in failures.items()})
    return failures


def _settle_failed(registry: Registry, failed: dict[Digest, tuple[PendingCommit, RegistryError]]) -> None:
    for record, error in failed.values():
        settle_failed_batch(registry, record, error)


def _clear(store: PendingCommits, name: str, digests: list[Digest]) -> None:
    for digest in digests:
        store.clear(name, digest)


def _blobs_missing(
    missing: ManifestBlobUnknown, digests: list[Digest], failed: dict[Digest, RegistryError]
) -> ApiError:
    """The spec's error: one MANIFEST_BLOB_UNKNOWN entry per missing blob, the ones whose
    batch-mode commit failed with that commit's error as `detail.reason`."""
    code, status = code_and_status(missing)
    entries = []
    for digest in digests:
        err = failed.get(digest)
        if err is None:
            entries.append(entry(code, missing.text, {"digest": str(digest)}))
            continue
        reason_code, _ = code_and_status(err)
        reason = {"code": reason_code, "message": err.text, "detail": err.detail}
        entries.append(entry(code, "blob commit failed", {"digest": str(digest), "reason": reason}))
    return ApiError(code, status, missing.text, entries=entries)


async def delete_manifest(ctx: RequestContext) -> Response:
    """202 after deleting; 404 MANIFEST_UNKNOWN; 405 UNSUPPORTED when deletes are disabled."""
    if not ctx.settings.storage.delete_enabled:
        raise OperationUnsupported("deletes are disabled on this registry")
    reference = _readable_reference(ctx.params["reference"])
    await ctx.blocking(manifest_commit.delete_manifest, ctx.registry, ctx.name, reference)
    if is_digest_reference(reference):
        await ctx.notify_manifest("delete", reference)
    else:
        await ctx.notify_manifest("delete", None, tag=reference)
    return Response(status_code=202, headers={"Content-Length": "0"})
