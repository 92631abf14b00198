"""Blob uploads: POST (end-4a/4b/4c, end-11 mount), PATCH (end-5), PUT (end-6), GET (end-13),
DELETE (end-14) on `/v2/<name>/blobs/uploads/[<uuid>]`.

The API only moves bytes: request bodies are streamed into the session's data file
(api.streaming.write_body) and the completing PUT sends a COMMIT_BLOB job, whose worker
hashes, verifies digest and size, moves the data into blobs/ and links it. Worker errors come
back as pipeline errors (DigestInvalid -> 400 DIGEST_INVALID, ...). A failed commit of a
body-less PUT leaves the session as it was, so the client may retry the PUT; one of a PUT
that carried a body cancels the session (as distribution does: its body is in the session,
and a retry would append it again), so the next request gets 404 and the client restarts.

- A chunk with `Content-Range: <start>-<end>` must start at the session's current size, else
  416 with the session's `Range`, `Location` and `Docker-Upload-UUID`; the stored bytes are
  unchanged. Without Content-Range a PATCH is a streamed append.
- A body whose length differs from its Content-Range is 400 SIZE_INVALID and not kept; a
  client that disconnects mid-chunk leaves nothing of that chunk behind.
- `Range` is `0-<size-1>` (`0-0` for an empty session, as CNCF distribution answers).
- Workers hash while the bytes arrive: whenever a streamed body (PATCH, or the PUT of a
  monolithic upload) carries the session across a 64 MiB boundary, ADVANCE_DIGEST is sent
  (fire and forget) right then, mid-request, so a worker saves the hash state at that offset
  while the rest streams in and the commit only hashes the tail. A small chunk crossing a
  boundary sends it after the append. The rule needs no state: crossing is computed from the
  sizes before and after each write.
- `?digest-algorithm=sha512` on POST is kept in the session's Location for later requests.
- Mount: `?mount=<digest>&from=<repo>` links the blob (201) when the caller may pull `from`
  (see api.access_table) and the blob is there; otherwise a new session (202) as the spec
  allows, revealing nothing. Without `from` there is no automatic discovery: 202. Nor with
  `mount` or `from` repeated with different values (api.query), while a `digest` or
  `digest-algorithm` so repeated is a 400 DIGEST_INVALID that leaves the session as it was.
- A completing PUT retried after a JobTimeout (503) whose commit finished meanwhile finds
  its session gone but the blob linked, and answers 201 like the first attempt would have
  (only for a UUID id, the form Lading issues, and without a second push event), with or
  without a body. A PUT with a body records (`completing`, pipeline.stores.uploads.CompletingPut)
  that its body is in the session before sending the commit; its retry with the same digest
  and a body of the same length, while the session is unchanged, skips the append, drops
  the body and sends the commit again (the job is idempotent).
- Batch mode (`Prefer: respond-async`) is described in api.routes.pending.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from api.access_table import MOUNT_SOURCE
from api.errors import ApiError, error_response
from api.query import single_or_400, single_or_none
from api.routes.context import RequestContext
from api.routes.pending import JOB_HEADER, PREFER_ASYNC, wants_async
from api.streaming import decimal, write_body
from pipeline import jobs as joblib
from pipeline.blob_commit import settle_failed_batch
from pipeline.errors import (
    BlobUnknown,
    BlobUploadUnknown,
    DigestInvalid,
    JobTimeout,
    RangeInvalid,
    RegistryError,
    SizeInvalid,
)
from pipeline.formats.digest import CANONICAL, HEX_LENGTHS, Digest
from pipeline.formats.names import is_valid_name
from pipeline.jobs import JobClient
from pipeline.registry import Registry
from pipeline.storage.driver import FileWriter
from pipeline.stores.pending import PendingCommits
from pipeline.stores.uploads import CompletingPut, is_upload_id

log = logging.getLogger("lading.api")

ADVANCE_EVERY = 64 * 1024 * 1024
SMALL_BODY = 256 * 1024  # chunks up to this size are read whole and written in one hop
STATUS_POLL_SECONDS = 0.05
_CONTENT_RANGE = re.compile(r"^\s*(?:bytes[ =])?\s*([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?\s*$")


# --- headers -----------------------------------------------------------------------------


def _range(size: int) -> str:
    return f"0-{max(size - 1, 0)}"


def _algorithm(ctx: RequestContext) -> str | None:
    alg = single_or_400(ctx.request.query_params, "digest-algorithm", "DIGEST_INVALID")
    if alg is None or alg == "":
        return None
    if alg not in HEX_LENGTHS:
        raise DigestInvalid(f"unsupported digest algorithm {alg!r}", message="unsupported digest algorithm")
    return alg


def _digest_parameter(ctx: RequestContext) -> str | None:
    """`?digest=`; given twice with different values, 400 DIGEST_INVALID before anything is
    read or changed (the spec lets a registry verify all of them: none can be skipped)."""
    return single_or_400(ctx.request.query_params, "digest", "DIGEST_INVALID")


def _session_headers(ctx: RequestContext, upload_id: str, size: int, algorithm: str | None) -> dict[str, str]:
    query = {"digest-algorithm": algorithm} if algorithm else None
    return {
        "Location": ctx.urls.upload(ctx.name, upload_id, query),
        "Range": _range(size),
        "Docker-Upload-UUID": upload_id,
        "Content-Length": "0",
    }


def _created(ctx: RequestContext, digest: str) -> Response:
    headers = {
        "Location": ctx.urls.blob(ctx.name, digest),
        "Docker-Content-Digest": digest,
        "Content-Length": "0",
    }
    return Response(status_code=201, headers=headers)


async def _range_error(ctx: RequestContext, upload_id: str, err: RangeInvalid) -> Response:
    size = err.current_size
    if size is None:
        size = (await ctx.blocking(ctx.registry.uploads.status, ctx.name, upload_id)).size
    headers = _session_headers(ctx, upload_id, size, _algorithm(ctx))
    headers.pop("Content-Length")
    return error_response(err, ctx.head, headers)


# --- body handling -----------------------------------------------------------------------


def _content_range(ctx: RequestContext) -> tuple[int | None, int | None]:
    """(offset, expected length) from Content-Range, or (None, None) for a streamed append."""
    raw = ctx.request.headers.get("content-range")
    if raw is None:
        return None, None
    m = _CONTENT_RANGE.match(raw)
    if not m:
        raise ApiError("BLOB_UPLOAD_INVALID", 400, "malformed Content-Range", {"content-range": raw})
    start, end = decimal(m.group(1)), decimal(m.group(2))
    if start is None or end is None or end < start:
        # Offsets past an int64 can never be the session's size: out of order, like any other.
        raise RangeInvalid({"content-range": raw[:100]})
    expected = end - start + 1
    declared = decimal(ctx.request.headers.get("content-length"))
    if declared is not None and declared != expected:
        raise SizeInvalid({"content-range": raw, "content-length": declared})
    return start, expected


def _has_body(ctx: RequestContext) -> bool:
    headers = ctx.request.headers
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return True
    declared = decimal(headers.get("content-length", "0"))
    return declared is not None and declared > 0


class _AdvancingWriter(FileWriter):
    """A session writer that sends ADVANCE_DIGEST each time the bytes written cross an
    ADVANCE_EVERY boundary (from the thread that wrote them, once they reached storage).
    Not when the body ends less than a quarter interval later (`end`: where the body ends,
    when its length is known): the commit that follows would race the job and both would
    hash the same bytes, so the commit hashes that short tail alone."""

    def __init__(self, inner: FileWriter, advance: Callable[[], None], end: int | None = None) -> None:
        self.inner = inner
        self.advance = advance
        self.end = end

    @property
    def size(self) -> int:
        return self.inner.size

    def write(self, data: bytes) -> int:
        before = self.inner.size
        written = self.inner.write(data)
        size = self.inner.size
        crossed = size // ADVANCE_EVERY > before // ADVANCE_EVERY
        if crossed and (self.end is None or self.end - size >= ADVANCE_EVERY // 4):
            self.advance()
        return written

    def commit(self) -> None:
        self.inner.commit()

    def cancel(self) -> None:
        self.inner.cancel()

    def close(self) -> None:
        self.inner.close()


async def _append(ctx: RequestContext, upload_id: str) -> tuple[int, int]:
    """Stream the request body into the session; (size before, size after).

    RangeInvalid when Content-Range does not start at the current size. Anything going wrong
    while the body streams (disconnect, size mismatch, storage error) cancels the writer, so
    the session keeps exactly the bytes it had."""
    offset, expected = _content_range(ctx)
    declared = decimal(ctx.request.headers.get("content-length"))
    if declared is not None and declared <= SMALL_BODY:
        # A small chunk costs one thread hop instead of three: read it (the server holds
        # the body to Content-Length), then open, write and commit in one go.
        body = await ctx.request.body()
        if expected is not None and len(body) != expected:
            raise SizeInvalid({"declared": expected, "received": len(body)})
        return await ctx.blocking(_append_small, ctx.registry, ctx.name, upload_id, offset, body)
    inner = await ctx.blocking(ctx.registry.uploads.open_append, ctx.name, upload_id, offset)
    algorithm = _algorithm(ctx) or CANONICAL
    length = expected if expected is not None else declared
    end = inner.size + length if length is not None else None
    writer = _AdvancingWriter(inner, partial(_advance_digest, ctx.jobs, ctx.name, upload_id, algorithm), end)
    try:
        before = writer.size
        written = await write_body(ctx.request, writer)
        if expected is not None and written != expected:
            raise SizeInvalid({"declared": expected, "received": written})
    except BaseException:
        with anyio.CancelScope(shield=True):
            await ctx.blocking(_abort, writer)
        raise
    await ctx.blocking(_finish, writer)
    return before, before + written


def _append_small(
    registry: Registry, repository: str, upload_id: str, offset: int | None, body: bytes
) -> tuple[int, int]:
    writer = registry.uploads.open_append(repository, upload_id, offset)
    before = writer.size
    try:
        writer.write(body)
    except BaseException:
        _abort(writer)
        raise
    _finish(writer)
    return before, before + len(body)


def _finish(writer: FileWriter) -> None:
    # One thread hop for both: commit, and always release the writer.
    try:
        writer.commit()
    except BaseException:
        writer.cancel()
        raise
    finally:
        writer.close()


def _abort(writer: FileWriter) -> None:
    try:
        writer.cancel()
    finally:
        writer.close()


def _advance_digest(client: JobClient, repository: str, upload_id: str, algorithm: str) -> None:
    """Fire-and-forget ADVANCE_DIGEST; a failure only means the commit hashes more."""
    try:
        client.send(joblib.ADVANCE_DIGEST, repository=repository, upload_id=upload_id, algorithm=algorithm)
    except Exception:
        log.warning("could not send %s for upload %s", joblib.ADVANCE_DIGEST, upload_id, exc_info=True)


# --- commit ------------------------------------------------------------------------------


async def _complete(
    ctx: RequestContext, upload_id: str, digest: Digest, size: int, carried_body: bool = False
) -> Response:
    """Commit the session as `digest`: wait for the job (201) or, in batch mode, don't (202);
    `carried_body`: this request brought bytes (a failed commit then cancels the session)."""
    kwargs: dict[str, Any] = {
        "repository": ctx.name,
        "upload_id": upload_id,
        "digest": str(digest),
        "size": size,
    }
    if wants_async(ctx.request.headers.get("prefer")):
        lease = ctx.settings.celery.commit_timeout
        await ctx.blocking(
            _send_and_record, ctx.jobs, ctx.registry.pending, kwargs, digest, lease, carried_body
        )
        status_url = ctx.urls.upload(ctx.name, upload_id) + f"?status&digest={digest}"
        headers = {
            "Location": ctx.urls.blob(ctx.name, str(digest)),
            "Docker-Content-Digest": str(digest),
            "Preference-Applied": PREFER_ASYNC,
            JOB_HEADER: status_url,
            "Content-Length": "0",
        }
        return Response(status_code=202, headers=headers)
    value = await ctx.jobs.run(joblib.COMMIT_BLOB, timeout=ctx.settings.celery.commit_timeout, **kwargs)
    committed = str(value.get("digest") or digest)
    await ctx.notify_blob("push", committed, value.get("size"))
    return _created(ctx, committed)


def _send_and_record(
    jobs: JobClient,
    store: PendingCommits,
    kwargs: dict[str, Any],
    digest: Digest,
    lease: float,
    discard: bool,
) -> None:
    """Batch mode: send the commit and record it for manifest PUTs (one thread hop)."""
    job_id = jobs.send(joblib.COMMIT_BLOB, **kwargs)
    store.record(kwargs["repository"], digest, job_id, kwargs["upload_id"], lease, discard)


async def _try_mount(ctx: RequestContext) -> tuple[str, str] | None:
    """(mounted digest, source repository), or None when the request must fall back to a
    plain session."""
    query = ctx.request.query_params
    source = single_or_none(query, "from")  # ambiguous arguments: the spec's fallback, 202
    if not source or not is_valid_name(source) or not ctx.grant(MOUNT_SOURCE):
        return None
    try:
        digest = Digest.parse(single_or_none(query, "mount") or "")
    except DigestInvalid:
        return None
    try:
        mounted = await ctx.blocking(ctx.registry.repo_blobs.mount, source, ctx.name, digest)
    except BlobUnknown:
        return None
    return (str(digest), source) if mounted else None


async def _discard(ctx: RequestContext, upload_id: str) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await ctx.blocking(ctx.registry.uploads.cancel, ctx.name, upload_id)
        except BlobUploadUnknown:
            pass


# --- handlers ----------------------------------------------------------------------------


async def start_upload(ctx: RequestContext) -> Response:
    """202 with a new session; 201 for a mount or a monolithic upload (`?digest=` + body)."""
    algorithm = _algorithm(ctx)
    query = ctx.request.query_params
    if query.get("mount") is not None:
        mounted = await _try_mount(ctx)
        if mounted is not None:
            digest_text, source = mounted
            await ctx.notify_blob("mount", digest_text, fromRepository=source)
            return _created(ctx, digest_text)
    raw_digest = _digest_parameter(ctx)
    digest = Digest.parse(raw_digest) if raw_digest is not None and "mount" not in query else None
    status = await ctx.blocking(ctx.registry.uploads.create, ctx.name)
    if digest is None:
        return Response(status_code=202, headers=_session_headers(ctx, status.upload_id, 0, algorithm))
    # Monolithic: the client never learns this session's URL, so a failure discards it.
    try:
        _, size = await _append(ctx, status.upload_id)
        return await _complete(ctx, status.upload_id, digest, size, carried_body=True)
    except JobTimeout:
        raise  # the commit may still be running on the session
    except BaseException:
        await _discard(ctx, status.upload_id)
        raise


async def upload_status(ctx: RequestContext) -> Response:
    """204 with Range/Location of a live session; with `?status&digest=` a batch commit's state."""
    upload_id = ctx.params["upload_id"]
    if "status" in ctx.request.query_params:
        return await _commit_status(ctx)
    status = await ctx.blocking(ctx.registry.uploads.status, ctx.name, upload_id)
    headers = _session_headers(ctx, upload_id, status.size, _algorithm(ctx))
    headers.pop("Content-Length")  # never on a 204 (RFC 9110 §8.6)
    return Response(status_code=204, headers=headers)


async def patch_upload(ctx: RequestContext) -> Response:
    """202 after appending the chunk; 416 if it is out of order."""
    upload_id = ctx.params["upload_id"]
    algorithm = _algorithm(ctx)
    try:
        before, after = await _append(ctx, upload_id)
    except RangeInvalid as err:
        return await _range_error(ctx, upload_id, err)
    response = Response(status_code=202, headers=_session_headers(ctx, upload_id, after, algorithm))
    if after - before <= SMALL_BODY and after // ADVANCE_EVERY > before // ADVANCE_EVERY:
        # A streamed body sent its ADVANCE_DIGEST jobs while it arrived (_AdvancingWriter).
        response.background = BackgroundTask(
            _advance_digest, ctx.jobs, ctx.name, upload_id, algorithm or CANONICAL
        )
    return response


async def complete_upload(ctx: RequestContext) -> Response:
    """201 once the commit job succeeded (202 in batch mode). A malformed or missing digest is
    a 400 and leaves the session untouched."""
    upload_id = ctx.params["upload_id"]
    raw = _digest_parameter(ctx)
    has_body = _has_body(ctx)
    digest = _parsed(raw)
    size = 0
    if digest is None or not has_body:
        # Without a body the size is the session's. With one, the append finds the session
        # itself (404 when it is gone), so this extra storage round trip is only made when
        # the digest is missing or malformed, to answer 404 before 400 as always.
        try:
            status = await ctx.blocking(ctx.registry.uploads.status, ctx.name, upload_id)
        except BlobUploadUnknown:
            if raw and not has_body and await _already_committed(ctx, upload_id, raw):
                return _created(ctx, raw)
            raise
        if not raw:
            raise DigestInvalid("the digest query parameter is required", message="digest missing")
        digest = Digest.parse(raw)
        size = status.size
    if not has_body:
        return await _complete(ctx, upload_id, digest, size)
    length = decimal(ctx.request.headers.get("content-length"))
    try:
        if length is not None and length <= SMALL_BODY:
            size = await _append_small_completing(ctx, upload_id, digest)
        else:
            size = await _append_streamed_completing(ctx, upload_id, digest, length)
    except RangeInvalid as err:
        return await _range_error(ctx, upload_id, err)
    except BlobUploadUnknown:
        if await _already_committed(ctx, upload_id, str(digest)):
            await _drain(ctx)
            return _created(ctx, str(digest))
        raise
    return await _complete_or_discard(ctx, upload_id, digest, size)


async def _complete_or_discard(ctx: RequestContext, upload_id: str, digest: Digest, size: int) -> Response:
    """`_complete` for a PUT that carried a body; a commit that failed cancels the session."""
    try:
        return await _complete(ctx, upload_id, digest, size, carried_body=True)
    except (DigestInvalid, SizeInvalid):
        # The commit job finished (it failed), so nothing else writes the session now.
        # Keeping the body would make every retry of this PUT append it again and fail;
        # like distribution, cancel: the next request gets 404 and the client restarts.
        try:
            await _discard(ctx, upload_id)
        except Exception:  # the client still learns why its PUT failed; purging removes it
            log.warning("could not cancel upload %s after a failed commit", upload_id, exc_info=True)
        raise


async def _append_small_completing(ctx: RequestContext, upload_id: str, digest: Digest) -> int:
    """The session's size once a small completing body is in it, in one thread hop: the
    retry check (`_appended_before`), the append and the completing record together."""
    offset, expected = _content_range(ctx)
    body = await ctx.request.body()
    if expected is not None and len(body) != expected:
        raise SizeInvalid({"declared": expected, "received": len(body)})
    return await ctx.blocking(_append_completing, ctx.registry, ctx.name, upload_id, digest, offset, body)


async def _append_streamed_completing(
    ctx: RequestContext, upload_id: str, digest: Digest, length: int | None
) -> int:
    """The session's size once a completing body of any size is in it (streamed)."""
    appended = await ctx.blocking(_appended_before, ctx.registry, ctx.name, upload_id, digest, length)
    if appended is not None:
        # A retry of a PUT that timed out (503) after its body was appended: commit
        # again (the job is idempotent) rather than append the body a second time.
        await _drain(ctx)
        return appended
    before, size = await _append(ctx, upload_id)
    put = CompletingPut(str(digest), size, size - before)
    await ctx.blocking(ctx.registry.uploads.mark_completing, ctx.name, upload_id, put)
    return size


def _append_completing(
    registry: Registry, repository: str, upload_id: str, digest: Digest, offset: int | None, body: bytes
) -> int:
    appended = _appended_before(registry, repository, upload_id, digest, len(body))
    if appended is not None:
        return appended  # a retry after a 503: commit again, never append twice
    before, size = _append_small(registry, repository, upload_id, offset, body)
    registry.uploads.mark_completing(repository, upload_id, CompletingPut(str(digest), size, size - before))
    return size


def _appended_before(
    registry: Registry, repository: str, upload_id: str, digest: Digest, length: int | None
) -> int | None:
    """The session's size when this PUT (same digest, body of the same length) already
    appended its body and the session has not changed since; else None."""
    if length is None:
        return None
    put = registry.uploads.completing(repository, upload_id)
    if put is None or put.digest != str(digest) or put.length != length:
        return None
    if registry.uploads.status(repository, upload_id).size != put.size:
        return None
    return put.size


async def _drain(ctx: RequestContext) -> None:
    """Read and drop a body the answer does not need, so the client can read the answer."""
    try:
        async for _ in ctx.request.stream():
            pass
    except ClientDisconnect:
        pass


def _parsed(raw: str | None) -> Digest | None:
    if not raw:
        return None
    try:
        return Digest.parse(raw)
    except DigestInvalid:
        return None


async def _already_committed(ctx: RequestContext, upload_id: str, raw: str) -> bool:
    """A retry of a PUT whose commit finished after the first attempt timed out: the session
    is gone because the blob is in place, so the retry succeeds too. Only for an id Lading
    could have issued (any other never existed: 404), and without a second push event:
    nothing was pushed by this request, and anyone with push rights could otherwise emit
    any number of them for an existing blob."""
    digest = _parsed(raw)
    if digest is None or not is_upload_id(upload_id):
        return False
    return await ctx.blocking(ctx.registry.repo_blobs.is_linked, ctx.name, digest)


async def cancel_upload(ctx: RequestContext) -> Response:
    """204 after deleting the session; 404 BLOB_UPLOAD_UNKNOWN if there is none."""
    upload_id = ctx.params["upload_id"]
    await ctx.blocking(ctx.registry.uploads.cancel, ctx.name, upload_id)
    return Response(status_code=204, headers={"Docker-Upload-UUID": upload_id})


async def _commit_status(ctx: RequestContext) -> Response:
    digest = Digest.parse(_digest_parameter(ctx) or "")
    store = ctx.registry.pending
    record = await ctx.blocking(store.lookup, ctx.name, digest)
    size = await ctx.blocking(_committed_size, ctx.registry, ctx.name, digest)
    if size is not None:
        if record is not None:
            await ctx.blocking(store.clear, ctx.name, digest)
        return _committed(ctx, str(digest), size)
    if record is None:
        raise BlobUploadUnknown({"digest": str(digest)})
    failure = record.failure()
    if failure is not None:
        raise failure
    try:
        value = await ctx.jobs.wait(record.job_id, timeout=STATUS_POLL_SECONDS)
    except JobTimeout:
        pending = {"status": "pending", "digest": str(digest)}
        return JSONResponse(pending, status_code=202, headers={"Retry-After": "1"})
    except RegistryError as err:
        # Failed for good: the session goes, the record keeps the error (the job may have
        # failed before the record was written, so it could not settle it itself).
        await ctx.blocking(settle_failed_batch, ctx.registry, record, err)
        raise
    await ctx.blocking(store.clear, ctx.name, digest)
    return _committed(ctx, str(value.get("digest") or digest), int(value.get("size") or 0))


def _committed_size(registry: Registry, repository: str, digest: Digest) -> int | None:
    """The blob's size once its commit is done (linked AND data in place: a commit links
    first, so a link alone is a commit still running), else None."""
    try:
        return registry.repo_blobs.stat(repository, digest)
    except BlobUnknown:
        return None


def _committed(ctx: RequestContext, digest: str, size: int) -> Response:
    headers = {"Location": ctx.urls.blob(ctx.name, digest), "Docker-Content-Digest": digest}
    return JSONResponse({"status": "committed", "digest": digest, "size": size}, headers=headers)
