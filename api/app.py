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
- with no middleware of its own (`version_header=False`, no `middleware`: how lading.embedded
  builds it), a request for any path but the extra routes' goes straight to the router,
  past Starlette's error and exception middleware, router and route (~5% of the embedded
  API's GIL time on 4 KiB pushes): `_RegistryApp` answers an uncaught exception as
  ServerErrorMiddleware did (the 500 above, if the response has not started; then re-raised
  for the server to log);
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
from starlette.types import Lifespan, Message, Receive, Scope, Send

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


class _RegistryApp(Starlette):
    """Starlette whose registry requests skip its own stack (see module)."""

    def __init__(self, router: RegistryRouter, other_paths: frozenset[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._registry_router = router
        self._other_paths = other_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._other_paths:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._registry_router(scope, receive, sending)
        except Exception as exc:
            if not started:
                response = await _unhandled(Request(scope), exc)
                await response(scope, receive, send)
            raise


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
    options: dict[str, Any] = {
        "routes": routes,
        "middleware": [*version, *middleware],
        "exception_handlers": {Exception: _unhandled},
        "lifespan": _closing(notifier, lifespan) if notifier.enabled else lifespan,
    }
    app: Starlette
    if version or middleware:
        app = Starlette(**options)
    else:
        others = frozenset(str(getattr(route, "path", "")) for route in routes[:-1])
        app = _RegistryApp(router, others, **options)
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
