"""GET /v2/<name>/tags/list (end-8a, end-8b): lexical order, `n`/`last`, Link to the next page."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from api.routes.context import RequestContext
from api.routes.pagination import last_entry, next_link, page_size, paginate


async def list_tags(ctx: RequestContext) -> Response:
    """200 {"name", "tags"}; 404 NAME_UNKNOWN when the repository does not exist."""
    n = page_size(ctx.request)
    last = last_entry(ctx.request, "TAG_INVALID")
    name = ctx.name

    def fetch(limit: int | None, after: str | None) -> list[str]:
        return ctx.registry.tags.list(name, limit, after)

    items, more = await ctx.blocking(paginate, fetch, n, last)
    headers = {}
    if more and n:
        headers["Link"] = next_link(lambda q: ctx.urls.tags(name, q), n, items)
    return JSONResponse({"name": name, "tags": items}, headers=headers)
