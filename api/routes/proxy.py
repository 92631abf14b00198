"""Pulls of proxied repositories (pull-through cache; pipeline.proxy).

The router sends every request on a repository that `pipeline.proxy.route` maps to an
upstream here: GET/HEAD of manifests, blobs, the tags list and referrers. Anything else
(pushes, uploads, deletes) answers 405 UNSUPPORTED, as distribution's proxy does, and
stores nothing.

- Manifests: a digest already cached, or a tag within its freshness window, is served
  from the cache with no job and no upstream request. Otherwise the PROXY_MANIFEST job
  fetches (or confirms) it, and the answer comes from the cache; a manifest the upstream
  sent is followed by a PROXY_WARM job that fetches its blobs in the background. A copy
  served without the upstream's word (upstream unreachable, 429, 5xx) carries
  `Warning: 110 - "Response is Stale"`.
- Blobs: a cached blob is served as any blob. Otherwise a PROXY_BLOB job fetches it (one
  fetch however many requests and API processes ask: its lease), and this request streams
  the bytes from the upload session as they arrive (pipeline.proxy.cache.BlobTail), the
  last ones only after the worker verified the digest. A `Range` request waits until the blob
  is cached and gets the 206 (or 416) of any cached blob.
- Tags list and referrers: asked of the upstream each time (they change), with the
  cached lists as the answer when the upstream cannot give one.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, BinaryIO

import anyio
import anyio.to_thread
from starlette.responses import JSONResponse, Response
from starlette.types import Send

from api.query import single_or_none
from api.routes import blobs
from api.routes.blobs import OCTET_STREAM, etag_of, if_none_match
from api.routes.context import RequestContext
from api.routes.pagination import last_entry, next_link, page_size
from api.streaming import READ_CHUNK, ContentResponse, first_error
from pipeline import jobs as joblib
from pipeline.config import Settings
from pipeline.errors import BlobUnknown, JobTimeout, ManifestUnknown, OperationUnsupported, RegistryError
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import OCI_INDEX
from pipeline.formats.names import is_digest_reference, is_valid_tag
from pipeline.proxy import ProxyTarget, cache, route, stats
from pipeline.proxy.leases import leases_for
from pipeline.stores.tags import paginate

log = logging.getLogger("lading.proxy")

STALE = '110 - "Response is Stale"'
MAX_FETCH_ATTEMPTS = 3
STALE_AFTER = 30.0  # seconds a pull with a cached copy waits for the upstream's answer


def prepare(settings: Settings) -> None:
    """Connect this process to the deployment's shared proxy state (leases, counters)
    before the first request, so /metrics shows deployment-wide counts from the start."""
    leases_for(settings)


def proxied(ctx: RequestContext) -> ProxyTarget | None:
    """The upstream `ctx.name` mirrors (None: a local repository)."""
    if not ctx.settings.proxy.enabled or not ctx.name:
        return None
    return route(ctx.settings, ctx.name)


async def refuse_write(ctx: RequestContext) -> Response:
    raise OperationUnsupported(f"{ctx.name!r} is a pull-through cache: pushes and deletes are not accepted")


def _accept(ctx: RequestContext) -> list[str]:
    values = ctx.request.headers.getlist("accept")
    return [part.split(";", 1)[0].strip() for value in values for part in value.split(",") if part.strip()]


# --- manifests ------------------------------------------------------------------------


async def get_manifest(ctx: RequestContext) -> Response:
    target = proxied(ctx)
    assert target is not None
    reference = ctx.params["reference"]
    if not is_digest_reference(reference) and not is_valid_tag(reference):
        raise ManifestUnknown(f"no manifest for {reference!r}")
    digest = await ctx.blocking(_cached, ctx, reference)
    stale: str | None = None
    if digest is not None:
        stats.add(target.upstream.label, "cache_hits")
    else:
        # With a copy to fall back on, a pull waits for the upstream's word only so long.
        cached = await ctx.blocking(_any_cached, ctx, reference)
        timeout = ctx.settings.celery.manifest_timeout
        try:
            value = await ctx.jobs.run(
                joblib.PROXY_MANIFEST,
                timeout=min(timeout, STALE_AFTER) if cached is not None else timeout,
                repository=ctx.name,
                reference=reference,
                accept=_accept(ctx),
            )
        except JobTimeout as exc:
            if cached is None:
                raise
            digest, stale = cached, f"no answer in time ({exc.text})"
        else:
            digest = Digest.parse(str(value["digest"]))
            stale = value.get("stale")
            if value.get("fetched"):
                ctx.jobs.send(joblib.PROXY_WARM, repository=ctx.name, digest=str(digest))
    if stale:
        log.warning("serving cached %s:%s: %s", ctx.name, reference, stale)
    return await _serve_manifest(ctx, digest, reference, stale)


def _cached(ctx: RequestContext, reference: str) -> Digest | None:
    if is_digest_reference(reference):
        digest = Digest.parse(reference)
        return digest if ctx.registry.manifests.exists(ctx.name, digest) else None
    return cache.fresh_tag(ctx.registry, ctx.name, reference)


def _any_cached(ctx: RequestContext, reference: str) -> Digest | None:
    try:
        digest = (
            Digest.parse(reference)
            if is_digest_reference(reference)
            else ctx.registry.tags.resolve(ctx.name, reference)
        )
    except RegistryError:
        return None
    return digest if ctx.registry.manifests.exists(ctx.name, digest) else None


def _load(ctx: RequestContext, digest: Digest) -> tuple[bytes, str]:
    body, media_type = ctx.registry.manifests.get(ctx.name, digest)
    cache.note_use(ctx.registry, ctx.name, digest)
    return body, media_type


async def _serve_manifest(ctx: RequestContext, digest: Digest, reference: str, stale: str | None) -> Response:
    body, media_type = await ctx.blocking(_load, ctx, digest)
    etag = etag_of(digest)
    headers = {"Docker-Content-Digest": str(digest), "ETag": etag}
    if stale:
        headers["Warning"] = STALE
    if if_none_match(ctx.request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(len(body))
    if not ctx.head:
        tag = None if is_digest_reference(reference) else reference
        await ctx.notify_manifest("pull", str(digest), media_type, len(body), tag)
    return Response(b"" if ctx.head else body, headers=headers, media_type=media_type)


# --- blobs ----------------------------------------------------------------------------


def _probe(ctx: RequestContext, digest: Digest) -> tuple[str, dict[str, Any] | None]:
    """("cached", None) | ("fetching", record) | ("failed", record) | ("none", None)."""
    try:
        # Linked AND stored: a commit links before it moves the data into place.
        ctx.registry.repo_blobs.stat(ctx.name, digest)
        return "cached", None
    except BlobUnknown:
        pass
    record = cache.blob_fetch_state(ctx.registry, ctx.name, digest)
    if record is None:
        return "none", None
    if record.get("state") == "failed":
        return "failed", record
    return "fetching", record


async def get_blob(ctx: RequestContext) -> Response:
    target = proxied(ctx)
    assert target is not None
    digest = Digest.parse(ctx.params["digest"])
    state, record = await ctx.blocking(_probe, ctx, digest)
    if state == "cached":
        stats.add(target.upstream.label, "cache_hits")
        return await blobs.get_blob(ctx)
    timeout = ctx.settings.celery.commit_timeout
    deadline = time.monotonic() + timeout
    try:
        return await _wait_and_serve(ctx, digest, state, record, deadline, timeout)
    except BaseExceptionGroup as group:
        raise first_error(group) from None


async def _wait_and_serve(
    ctx: RequestContext,
    digest: Digest,
    state: str,
    record: dict[str, Any] | None,
    deadline: float,
    timeout: float,
) -> Response:
    """Make sure a PROXY_BLOB job runs (again, if one ended without caching the blob), and
    answer as soon as the blob is cached or its fetch announced its upload session."""
    attempts = 0
    outcome: dict[str, Any] = {}
    job_id = ""

    async def watch(job_id: str) -> None:
        try:
            outcome[job_id] = await ctx.jobs.wait(job_id, timeout)
        except Exception as exc:
            outcome[job_id] = exc

    def announced(record: dict[str, Any] | None) -> bool:
        return record is not None and bool(record.get("upload_id")) and record.get("size") is not None

    # A Range request waits for the cached, verified blob and gets its 206 from there: the
    # tail streams the whole body from the first byte, and would answer 200 to it.
    tail_allowed = "range" not in ctx.request.headers
    async with anyio.create_task_group() as tg:
        while state != "cached" and not (tail_allowed and state == "fetching" and announced(record)):
            if state == "failed":
                assert record is not None
                cache.raise_failed(record)
            if state == "none":
                finished = outcome.get(job_id) if job_id else None
                if isinstance(finished, Exception):
                    raise finished
                if (not job_id or job_id in outcome) and attempts < MAX_FETCH_ATTEMPTS:
                    attempts += 1
                    job_id = ctx.jobs.send(joblib.PROXY_BLOB, repository=ctx.name, digest=str(digest))
                    tg.start_soon(watch, job_id)
            if time.monotonic() > deadline:
                raise JobTimeout({"digest": str(digest), "timeout": timeout})
            await anyio.sleep(cache.POLL_SECONDS)
            state, record = await ctx.blocking(_probe, ctx, digest)
        tg.cancel_scope.cancel()  # the job runs on; nobody needs its result any more
    if state == "cached":
        return await blobs.get_blob(ctx)
    assert record is not None
    return await _tail(ctx, digest, str(record["upload_id"]), int(record["size"]), timeout)


async def _tail(ctx: RequestContext, digest: Digest, upload_id: str, size: int, timeout: float) -> Response:
    headers = {"Docker-Content-Digest": str(digest), "ETag": etag_of(digest)}
    if ctx.head or size == 0:
        return ContentResponse(None, size, 200, headers, OCTET_STREAM)
    await ctx.notify_blob("pull", str(digest), size)
    stream = cache.BlobTail(ctx.registry, ctx.name, digest, upload_id, size, timeout)
    return TailResponse(stream, size, 200, headers, OCTET_STREAM)  # type: ignore[arg-type]


class TailResponse(ContentResponse):
    """A ContentResponse over a pipeline.proxy.cache.BlobTail that waits for bytes on the
    event loop, not in a thread: a thread per waiting client would exhaust the pool that
    every request's storage calls share when many clients pull one cold layer."""

    async def _stream(self, stream: BinaryIO, send: Send) -> None:
        assert isinstance(stream, cache.BlobTail)
        remaining = self.length
        try:
            while remaining > 0:
                chunk = await anyio.to_thread.run_sync(stream.read_available, min(READ_CHUNK, remaining))
                if not chunk:
                    await anyio.sleep(cache.POLL_SECONDS)
                    continue
                remaining -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
        except OSError as exc:
            # The fetch failed (or the client left): end the response short.
            log.warning("proxied blob stream ended early: %s", exc)


# --- lists ----------------------------------------------------------------------------


async def list_tags(ctx: RequestContext) -> Response:
    n = page_size(ctx.request)
    last = last_entry(ctx.request, "TAG_INVALID")
    tags, stale = await ctx.blocking(cache.list_tags, ctx.registry, ctx.name)
    page = paginate(tags, None if n is None else n + 1, last)
    more = n is not None and len(page) > n
    items = page[:n] if n is not None else page
    headers: dict[str, str] = {}
    if more and n:
        headers["Link"] = next_link(lambda q: ctx.urls.tags(ctx.name, q), n, items)
    if stale:
        headers["Warning"] = STALE
    return JSONResponse({"name": ctx.name, "tags": items}, headers=headers)


async def list_referrers(ctx: RequestContext) -> Response:
    subject = Digest.parse(ctx.params["digest"])
    artifact_type = single_or_none(ctx.request.query_params, "artifactType") or None
    found, stale = await ctx.blocking(cache.list_referrers, ctx.registry, ctx.name, subject, artifact_type)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found}
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
    if stale:
        headers["Warning"] = STALE
    return Response(json.dumps(index, separators=(",", ":")).encode(), headers=headers, media_type=OCI_INDEX)


HANDLERS = {
    "manifest": get_manifest,
    "blob": get_blob,
    "tags": list_tags,
    "referrers": list_referrers,
}
"""Route name → the handler of GET/HEAD on a proxied repository."""
