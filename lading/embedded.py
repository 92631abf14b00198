"""Assembling the process `lading serve` runs from the "api" composition
(lading.composition): the ASGI app around it and, with no broker configured, the
in-process Celery worker that runs the jobs.

- Embedded (no `celery.broker_url`): one `Registry` shared by the API and a threads-pool
  Celery worker on kombu's in-memory transport (workers.embedded), which also runs the
  beat schedule. Nothing else to start: `lading serve` alone is a working registry.
- Scaled (a broker URL): the API only. Jobs go to the broker; `lading worker` processes
  consume them and `lading beat` schedules maintenance.

Either way the app is wrapped in request logging and metrics (api.logs, api.metrics) and
answers `http.health_path` (unless the app routes it itself): all in one
api.middleware.RequestMiddleware, which also sets the API version header.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from api.app import VERSION_HEADERS
from api.health import HealthCheck
from api.logs import RequestLog
from api.metrics import Metrics, add_queue_depth, metrics_endpoint
from api.middleware import RequestMiddleware
from lading.composition import compose
from pipeline.config import Settings
from pipeline.infra.coordination import redacted
from pipeline.registry import Registry

__all__ = ["Assembly", "assemble"]

log = logging.getLogger("lading.embedded")


@dataclass
class Assembly:
    """What `lading serve` runs; `close()` stops what was started (idempotent)."""

    app: ASGIApp
    settings: Settings
    registry: Registry
    metrics: Metrics
    embedded: bool
    worker: Any = None  # workers.embedded.EmbeddedWorker in embedded mode
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:
                log.exception("error while shutting down")


def assemble(settings: Settings, *, start: bool = True) -> Assembly:
    """Build (lading.composition, kind "api") and in embedded mode start everything
    `lading serve` needs, wrapped in the request middleware.

    `start=False` builds the same things and starts nothing: `lading check-config` runs
    every check `lading serve` runs at start (htpasswd, policy, keys, storage, Celery
    settings, a shared place for locks) by calling this, so the two cannot disagree."""
    from api.app import create_app as create_api

    parts = compose(settings, "api")
    registry, metrics, jobs = parts.registry, parts.metrics, parts.jobs
    assert registry is not None and metrics is not None and jobs is not None
    closers: list[Callable[[], None]] = []
    worker = None
    if parts.coordination.embedded:
        from workers.embedded import start_embedded_worker

        if start:
            worker = start_embedded_worker(parts.celery, settings.celery.embedded_concurrency, beat=True)
            closers.append(worker.stop)
            closers.append(_count_retries(parts.celery, metrics))
        direct = parts.direct
        if direct is not None:
            # Closers run last first: direct jobs drain (their retries still counted and
            # queued) before the worker stops.
            closers.append(direct.stop)
        log.info(
            "embedded mode: in-process worker (concurrency %d) on the in-memory broker",
            settings.celery.embedded_concurrency,
        )
    else:
        log.info(
            "scaled mode: jobs go to %s; run `lading worker` processes; %s",
            redacted(settings.celery.broker_url),
            parts.coordination.describe(),
        )
    try:
        app = create_api(
            settings,
            registry,
            jobs,
            parts.access,
            notifier=parts.notifier,
            lifespan=_lifespan(jobs),
            version_header=False,
        )
        asgi = observe(app, settings, registry, metrics, worker, parts.access)
    except BaseException:
        for closer in reversed(closers):
            closer()
        raise
    return Assembly(asgi, settings, registry, metrics, settings.celery.embedded, worker, closers)


def _count_retries(celery_app: Any, metrics: Metrics) -> Callable[[], None]:
    """Feed `lading_jobs_retried_total` from the in-process worker's retries (a scaled-out
    worker's retries are visible in Flower's metrics instead). Returns the disconnect."""
    from celery.signals import task_retry

    def on_retry(sender: Any = None, **kwargs: Any) -> None:
        if getattr(sender, "app", None) is celery_app:
            metrics.jobs_retried.labels(getattr(sender, "name", "unknown")).inc()

    task_retry.connect(on_retry, weak=False)
    return lambda: task_retry.disconnect(on_retry)


def _lifespan(jobs: Any) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """Closes the job client inside the server's event loop, where its connections live."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            aclose = getattr(jobs, "aclose", None)
            if aclose is not None:
                await aclose()

    return lifespan


def observe(
    app: Any, settings: Settings, registry: Registry, metrics: Metrics, worker: Any, access: Any = None
) -> ASGIApp:
    """`app` in the one RequestMiddleware (api.middleware) doing the request log, metrics,
    the API version header and the health and metrics endpoints."""
    endpoints: dict[str, ASGIApp] = {}
    http = settings.http
    if http.metrics_enabled and not http.metrics_addr:
        endpoint = metrics_endpoint(metrics)
        if settings.metrics_protected:
            if access is None:
                log.warning("lading.metrics.protected is set but no auth is configured: /metrics is open")
            else:
                endpoint = _authenticated(endpoint, access)
        endpoints[http.metrics_path] = endpoint
    state = getattr(app, "state", None)
    if state is not None:
        state.metrics = metrics
    add_queue_depth(settings, metrics)
    if access is not None:
        from api.auth.watch import ReloadFailedCollector

        metrics.registry.register(ReloadFailedCollector(access.reload_failures, access.watched_paths))
    if not _has_route(app, settings.http.health_path):
        alive = (lambda: bool(worker.alive)) if worker is not None else None
        failures = access.reload_failures if access is not None else None
        check = HealthCheck(settings, registry.driver, embedded_alive=alive, auth_failures=failures)
        endpoints[settings.http.health_path] = _health_endpoint(check)
    return RequestMiddleware(
        app, log=RequestLog(), metrics=metrics, headers=VERSION_HEADERS, endpoints=endpoints
    )


def _has_route(app: Any, path: str) -> bool:
    return any(getattr(route, "path", None) == path for route in getattr(app, "routes", ()))


def _authenticated(endpoint: ASGIApp, access: Any) -> ASGIApp:
    """`endpoint` answered only to a named caller the registry's auth accepts (never an
    anonymous token, nor one that grants nothing: `Access.authorize_metrics`)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.requests import Request

        from api.errors import error_response
        from pipeline.errors import LadingError

        try:
            await access.authorize_metrics(Request(scope, receive))
        except LadingError as exc:
            await error_response(exc, head=scope.get("method") == "HEAD")(scope, receive, send)
            return
        await endpoint(scope, receive, send)

    return guarded


def _health_endpoint(check: HealthCheck) -> ASGIApp:
    """The ASGI app answering the health path."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.requests import Request

        response = await check.respond(Request(scope, receive))
        await response(scope, receive, send)

    return endpoint
