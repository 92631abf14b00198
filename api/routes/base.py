"""GET /v2/ (end-1): the API version check."""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from api.routes.context import RequestContext


async def version_check(ctx: RequestContext) -> Response:
    """200 with an empty JSON object: this registry speaks the V2 API (the version header is
    added to every response by the app)."""
    return JSONResponse({})
