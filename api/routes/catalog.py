"""GET /v2/_catalog: every repository, lexical, paginated like the tag list.

Without `n` at most `PAGE_LIMIT` names are returned (with a Link when more exist), so one
request never walks an unbounded registry. With access control, the route itself needs the
catalog grant (api.access_table) and the list holds only repositories the caller may see
(`Access.catalog_visible`, when the access controller offers it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from starlette.responses import JSONResponse, Response

from api.routes.context import RequestContext
from api.routes.pagination import last_entry, next_link, page_size, paginate
from pipeline.registry import Registry

PAGE_LIMIT = 1000


def _visible_fetcher(
    registry: Registry, visible: Callable[[Any, str], bool], identity: Any
) -> Callable[[int | None, str | None], list[str]]:
    """One walk from `last`, filtered, stopped as soon as the page is full: the storage
    reads are those of the names examined, never a re-walk per batch."""

    def fetch(limit: int | None, last: str | None) -> list[str]:
        names = (name for name in registry.catalog.iter_repositories(last) if visible(identity, name))
        return list(itertools.islice(names, limit))

    return fetch


async def list_repositories(ctx: RequestContext) -> Response:
    """200 {"repositories": [...]} (empty list when the registry holds nothing)."""
    n = page_size(ctx.request, PAGE_LIMIT)
    last = last_entry(ctx.request, "NAME_INVALID")
    fetch: Callable[[int | None, str | None], list[str]] = ctx.registry.catalog.repositories
    visible = getattr(ctx.access, "catalog_visible", None)
    identity = getattr(ctx.request.state, "identity", None)
    if callable(visible) and identity is not None:
        fetch = _visible_fetcher(ctx.registry, visible, identity)
    items, more = await ctx.blocking(paginate, fetch, n, last)
    headers = {}
    if more and n:
        headers["Link"] = next_link(ctx.urls.catalog, n, items)
    return JSONResponse({"repositories": items}, headers=headers)
