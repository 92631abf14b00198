"""Matching `/v2/...` paths to handlers, and the one place every request passes through.

Repository names contain slashes, so routes are matched on the whole (decoded) path by
suffix: `/v2/<name>/manifests/<reference>`, `/blobs/uploads/<id>`, `/blobs/<digest>`,
`/tags/list`, `/referrers/<digest>`. `<name>` is greedy, so `a/blobs/b` is a valid name in
`/v2/a/blobs/b/blobs/<digest>`. For each request the router, in this order:

1. strips `http.prefix`; an unknown path is a 404 with an OCI error body;
2. picks the handler by method (HEAD uses the GET handler); others get 405 UNSUPPORTED;
3. validates `<name>` (NAME_INVALID, 400);
4. enforces access through api.access_table (handlers never check access);
5. runs the handler and turns any raised error into the OCI error response (api.errors).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api import errors
from api.access_table import Access, enforce
from api.middleware import UNMATCHED
from api.notify import Notifier
from api.routes import base, blobs, catalog, manifests, proxy, referrers, tags, uploads
from api.routes.context import RequestContext, Urls
from pipeline.config import Settings
from pipeline.errors import LadingError
from pipeline.formats.names import validate_name
from pipeline.jobs import JobClient
from pipeline.registry import Registry

log = logging.getLogger("lading.api")

Handler = Callable[[RequestContext], Awaitable[Response]]


@dataclass(frozen=True)
class RouteSpec:
    name: str
    pattern: re.Pattern[str]
    handlers: dict[str, Handler]

    @functools.cached_property
    def template(self) -> str:
        """The path template (`/v2/{name}/blobs/{digest}`) for metrics and logs (computed
        once: every request reads it)."""
        return _GROUP.sub(r"{\1}", self.pattern.pattern).lstrip("^").rstrip("$").replace("/?", "/")

    def allowed(self) -> list[str]:
        methods = list(self.handlers)
        if "GET" in methods and "HEAD" not in methods:
            methods.append("HEAD")
        return methods


_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")
_NAME = r"(?P<name>.+)"
ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("base", re.compile(r"^/v2/?$"), {"GET": base.version_check}),
    RouteSpec("catalog", re.compile(r"^/v2/_catalog$"), {"GET": catalog.list_repositories}),
    RouteSpec("tags", re.compile(rf"^/v2/{_NAME}/tags/list$"), {"GET": tags.list_tags}),
    RouteSpec(
        "manifest",
        re.compile(rf"^/v2/{_NAME}/manifests/(?P<reference>[^/]+)$"),
        {"GET": manifests.get_manifest, "PUT": manifests.put_manifest, "DELETE": manifests.delete_manifest},
    ),
    RouteSpec("upload_start", re.compile(rf"^/v2/{_NAME}/blobs/uploads/?$"), {"POST": uploads.start_upload}),
    RouteSpec(
        "upload",
        re.compile(rf"^/v2/{_NAME}/blobs/uploads/(?P<upload_id>[^/]+)$"),
        {
            "GET": uploads.upload_status,
            "PATCH": uploads.patch_upload,
            "PUT": uploads.complete_upload,
            "DELETE": uploads.cancel_upload,
        },
    ),
    RouteSpec(
        "blob",
        re.compile(rf"^/v2/{_NAME}/blobs/(?P<digest>[^/]+)$"),
        {"GET": blobs.get_blob, "DELETE": blobs.delete_blob},
    ),
    RouteSpec(
        "referrers",
        re.compile(rf"^/v2/{_NAME}/referrers/(?P<digest>[^/]+)$"),
        {"GET": referrers.list_referrers},
    ),
)


def match(path: str) -> tuple[RouteSpec, dict[str, str]] | None:
    """The first route whose pattern matches `path`, with its captured parameters."""
    for route in ROUTES:
        m = route.pattern.match(path)
        if m:
            return route, {k: v for k, v in m.groupdict().items() if v is not None}
    return None


class RegistryRouter:
    """The ASGI app behind every `/v2/` path."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        jobs: JobClient,
        access: Access | None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.jobs = jobs
        self.access = access
        self.notifier = notifier
        self.urls = Urls(settings)
        self.prefix = settings.http.prefix.rstrip("/")
        if settings.proxy.enabled:
            proxy.prepare(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = await self.dispatch(request)
        await response(scope, receive, send)

    def _proxy_handler(self, request: Request, route: RouteSpec, name: str, handler: Handler) -> Handler:
        """A proxied repository (pipeline.proxy) is read-only and read through api.routes.proxy."""
        from pipeline.proxy import route as proxy_route

        if proxy_route(self.settings, name) is None:
            return handler
        if request.method not in ("GET", "HEAD") or route.name not in proxy.HANDLERS:
            return proxy.refuse_write
        return proxy.HANDLERS[route.name]

    async def dispatch(self, request: Request) -> Response:
        head = request.method == "HEAD"
        # The label of this request in metrics and logs (api.middleware.route_of): the
        # matched route's template below, never the raw path.
        request.scope["lading.route"] = UNMATCHED
        # request.url.path without building the whole URL (host, scheme, query): the
        # decoded path with what would end it escaped.
        path = request.scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")
        if self.prefix:
            if not (path == self.prefix or path.startswith(self.prefix + "/")):
                return errors.not_found(path, head)
            path = path[len(self.prefix) :]
        found = match(path)
        if found is None:
            return errors.not_found(path, head)
        route, params = found
        request.scope["lading.route"] = route.template
        method = "GET" if head and "HEAD" not in route.handlers else request.method
        handler = route.handlers.get(method)
        if handler is None:
            return errors.method_not_allowed(request.method, route.allowed(), head)
        try:
            name = params.pop("name", "")
            if name:
                validate_name(name)
            await enforce(self.access, request, route.name, name or None)
            if name and self.settings.proxy.enabled:
                handler = self._proxy_handler(request, route, name, handler)
            ctx = RequestContext(
                request,
                self.settings,
                self.registry,
                self.jobs,
                self.urls,
                name,
                params,
                self.access,
                self.notifier,
            )
            return await handler(ctx)
        except ClientDisconnect:
            # Nobody is listening; whatever the handler started has been cancelled.
            return Response(status_code=400)
        except (errors.ApiError, LadingError) as exc:
            response = errors.error_response(exc, head)
            if response.status_code >= 500 and response.status_code != 503:
                # A server fault the client cannot fix: the operator needs the traceback.
                log.error("%d on %s %s", response.status_code, request.method, path, exc_info=exc)
            return response
        except Exception:
            log.exception("unhandled error on %s %s", request.method, path)
            return errors.error_response(RuntimeError(), head)
