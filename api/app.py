"""The ASGI application: `create_app(settings, registry, jobs, access=None)`.

Framework: Starlette (served by uvicorn with httptools + uvloop). Starlette is a thin ASGI
toolkit: requests can be streamed chunk by chunk into storage and responses streamed out
without buffering, and it adds almost nothing per request. Its path-parameter routing
does not fit repository names that contain slashes, so every `/v2/` path goes to one
catch-all route handled by api.routes.router, which matches by suffix.

Around the router:
- `Docker-Distribution-API-Version: registry/2.0` is added to every response, including
  404s, 405s and errors raised by other middleware (api.middleware.RequestMiddleware, or
  the caller's when it asks for none, + the 500 handler);
- the built-in token endpoint (api.auth `Access.routes()`), when enabled, is routed before
  the registry and outside its access checks;
- uncaught exceptions become a 500 OCI error body (UNKNOWN) that reveals nothing;
- with notification endpoints configured, routes emit events through an api.notify
  `Notifier` (app.state.notifier), which the lifespan drains at shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio.to_thread
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Lifespan

from api.access_table import Access
from api.errors import API_VERSION, API_VERSION_HEADER, error_response
from api.middleware import RequestMiddleware
from api.notify import Notifier
from api.routes.router import RegistryRouter
from pipeline.config import Settings
from pipeline.jobs import JobClient
from pipeline.registry import Registry

log = logging.getLogger("lading.api")

VERSION_HEADERS = ((API_VERSION_HEADER, API_VERSION),)
"""Set on every response (api.middleware.RequestMiddleware `headers=`)."""


async def _unhandled(request: Request, exc: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(exc, request.method == "HEAD")


def create_app(
    settings: Settings,
    registry: Registry,
    jobs: JobClient,
    access: Access | None = None,
    *,
    notifier: Notifier | None = None,
    lifespan: Lifespan[Any] | None = None,
    middleware: Sequence[Middleware] = (),
    version_header: bool = True,
) -> Starlette:
    """The registry API. `access` (api.auth) is consulted for every request via
    api.access_table when given; without it the registry is open. `middleware` wraps the
    router inside the version-header middleware. `version_header=False` leaves that header
    to the caller, which then wraps the app in an api.middleware.RequestMiddleware with
    `headers=VERSION_HEADERS` (lading.embedded does, together with the request log, metrics,
    health and metrics endpoints: one middleware for all of them). `notifier`: the
    composition root's (lading.composition); by default one built from `settings`."""
    if notifier is None:
        notifier = Notifier(settings, jobs)
    router = RegistryRouter(settings, registry, jobs, access, notifier)
    routes: list[BaseRoute] = []
    extra_routes = getattr(access, "routes", None)
    if callable(extra_routes):
        routes.extend(extra_routes())
    routes.append(Route("/{path:path}", router, methods=None))
    version = [Middleware(RequestMiddleware, headers=VERSION_HEADERS)] if version_header else []
    app = Starlette(
        routes=routes,
        middleware=[*version, *middleware],
        exception_handlers={Exception: _unhandled},
        lifespan=_closing(notifier, lifespan) if notifier.enabled else lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.jobs = jobs
    app.state.access = access
    app.state.notifier = notifier
    return app


def _closing(notifier: Notifier, lifespan: Lifespan[Any] | None) -> Lifespan[Any]:
    """`lifespan` (if any) that, at shutdown, first sends the notifications still queued:
    before the composition root's lifespan closes the job client."""

    @asynccontextmanager
    async def combined(app: Any) -> AsyncIterator[Any]:
        async with AsyncExitStack() as stack:
            state = await stack.enter_async_context(lifespan(app)) if lifespan is not None else None
            try:
                yield state
            finally:
                await anyio.to_thread.run_sync(notifier.close)

    return combined
