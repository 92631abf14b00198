"""GET/HEAD /v2/<name>/blobs/<digest> (end-2) and DELETE (end-10).

A blob is served only if it is linked into the repository. Bytes are streamed from storage
(never loaded whole): from the OS file when the driver has a local path, from a driver
reader otherwise, or by a 307 to the driver's redirect URL when redirects are enabled. A
single `Range` gives 206 with `Content-Range`; a range past the end gives 416 with
`Content-Range: bytes */<size>`. `If-None-Match` with the blob's ETag gives 304.

DELETE only unlinks the blob from the repository (garbage collection reclaims the bytes)
and is refused with 405 UNSUPPORTED unless `storage.delete.enabled`.
"""

from __future__ import annotations

from typing import BinaryIO

from starlette.responses import RedirectResponse, Response

from api.routes.context import RequestContext
from api.streaming import ContentResponse, RangeNotSatisfiable, parse_range
from pipeline.errors import OperationUnsupported, UnsupportedMethod
from pipeline.formats.digest import Digest
from pipeline.registry import Registry

OCTET_STREAM = "application/octet-stream"
# Blob content never changes for a digest, so caches may keep it.
CACHE_CONTROL = "max-age=31536000"


def etag_of(digest: Digest | str) -> str:
    return f'"{digest}"'


def if_none_match(header: str | None, etag: str) -> bool:
    """True when an If-None-Match header names `etag` (or `*`)."""
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


def _local_path(registry: Registry, digest: Digest) -> str | None:
    try:
        return registry.blobs.local_path(digest)
    except UnsupportedMethod:
        return None


def _redirect_url(registry: Registry, digest: Digest, method: str) -> str | None:
    try:
        return registry.blobs.redirect_url(digest, method)
    except UnsupportedMethod:
        return None


def _open(registry: Registry, digest: Digest, offset: int) -> tuple[str | None, BinaryIO]:
    """(local path or None, stream at `offset`): the OS file when the driver has one."""
    path = _local_path(registry, digest)
    if path is not None:
        stream = open(path, "rb")  # noqa: SIM115 - closed by ContentResponse
        stream.seek(offset)
        return path, stream
    return None, registry.blobs.open(digest, offset)


async def get_blob(ctx: RequestContext) -> Response:
    """200 (or 206) with the blob; HEAD gives the same headers without a body."""
    digest = Digest.parse(ctx.params["digest"])
    size = await ctx.blocking(ctx.registry.repo_blobs.describe, ctx.name, digest)
    etag = etag_of(digest)
    headers = {
        "Docker-Content-Digest": str(digest),
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": CACHE_CONTROL,
    }
    if if_none_match(ctx.request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    if not ctx.head and not ctx.settings.storage.redirect_disabled:
        url = await ctx.blocking(_redirect_url, ctx.registry, digest, "GET")
        if url:
            await ctx.notify_blob("pull", str(digest), size)
            return RedirectResponse(url, status_code=307, headers={"Docker-Content-Digest": str(digest)})
    try:
        wanted = parse_range(ctx.request.headers.get("range"), size)
    except RangeNotSatisfiable:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if not ctx.head:
        await ctx.notify_blob("pull", str(digest), size)
    start, end = wanted if wanted is not None else (0, size - 1)
    length = end - start + 1 if size else 0
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if ctx.head or length == 0:
        return ContentResponse(None, length, status, headers, OCTET_STREAM)
    path, stream = await ctx.blocking(_open, ctx.registry, digest, start)
    return ContentResponse(stream, length, status, headers, OCTET_STREAM, path=path, whole=length == size)


async def delete_blob(ctx: RequestContext) -> Response:
    """202 after unlinking; 404 BLOB_UNKNOWN if not linked; 405 when deletes are disabled."""
    if not ctx.settings.storage.delete_enabled:
        raise OperationUnsupported("deletes are disabled on this registry")
    digest = Digest.parse(ctx.params["digest"])
    await ctx.blocking(ctx.registry.repo_blobs.unlink, ctx.name, digest)
    await ctx.notify_blob("delete", str(digest))
    return Response(status_code=202, headers={"Docker-Content-Digest": str(digest), "Content-Length": "0"})
