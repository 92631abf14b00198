"""Running an ASGI app under uvicorn the way Lading wants it.

httptools for HTTP/1.1 parsing, with bounds on each request's head (size, header count,
read time: `lading.http_limits`) and on concurrent connections, uvloop when installed, a
keep-alive long enough for clients that reuse connections across a push, no uvicorn access
log (api.logs writes one JSON line per request), no `Server: uvicorn` header, and a
graceful shutdown: on SIGTERM or SIGINT uvicorn stops accepting, lets in-flight requests finish for up to
`http.drain_timeout_seconds`, runs the app's lifespan shutdown, and `serve` returns
normally so the caller can stop what it started (the embedded worker).

With `http.tls` the listener speaks HTTPS only (`pipeline.config.tls` builds the context): a TLS
setting that cannot be honoured stops start-up, never falls back to plain HTTP.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import math
import signal
import ssl
from collections.abc import Callable
from types import FrameType

import uvicorn
from prometheus_client import start_http_server
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lading.http_limits import HeadLimits, limited_protocol
from pipeline.config import Settings, TlsSettings, parse_addr
from pipeline.config.tls import server_context

__all__ = ["serve", "uvicorn_config"]

log = logging.getLogger("lading.server")


_ContextFactory = Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]


def _tls_factory(tls: TlsSettings) -> _ContextFactory:
    """uvicorn's `ssl_context_factory` for `http.tls`: the whole context is ours (uvicorn's
    own options cannot set a minimum version), so the default factory is never called."""
    context = server_context(tls)  # built now: a bad file stops start-up before binding

    def factory(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return context

    return factory


def uvicorn_config(app: ASGIApp, settings: Settings) -> uvicorn.Config:
    host, port = parse_addr(settings.http.addr)
    http = settings.http
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=limited_protocol(
            HeadLimits(http.max_header_bytes, http.max_headers, http.header_timeout_seconds)
        ),
        limit_concurrency=http.max_connections or None,
        ws="none",
        lifespan="auto",
        log_config=None,  # the process configured JSON logging already
        access_log=False,
        server_header=False,
        timeout_keep_alive=max(1, math.ceil(http.keepalive_seconds)),
        timeout_graceful_shutdown=max(1, math.ceil(http.drain_timeout_seconds)),
        ssl_context_factory=_tls_factory(http.tls) if http.tls is not None else None,
    )


class _ProbesAtDebug(logging.Filter):
    """uvicorn warns "Invalid HTTP request received." for every byte stream that is not
    HTTP, and clients probing for TLS on a plain-HTTP port (skopeo, docker) send one per
    command: noise, not a problem. Those records are demoted to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().startswith("Invalid HTTP request"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = None  # the parser's exception says nothing more
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


_PROBES_AT_DEBUG = _ProbesAtDebug()


def answer_cut_requests(app: ASGIApp, shutting_down: Callable[[], bool], drain_seconds: float) -> ASGIApp:
    """`app`, but a request still running when the graceful shutdown's `http.draintimeout`
    runs out (uvicorn cancels it) gets 503 + Retry-After and one log line, not uvicorn's
    traceback and 500. The client retries the upload against a replica that is up (upload
    sessions live in storage, so it resumes where it was cut)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not shutting_down():
                raise
            log.warning(
                "%s %s cut by shutdown: still running after http.draintimeout (%gs)%s",
                scope.get("method"),
                scope.get("path"),
                drain_seconds,
                "" if started else "; answered 503",
            )
            if not started:
                body = json.dumps(
                    {
                        "errors": [
                            {
                                "code": "UNAVAILABLE",
                                "message": "registry shutting down: retry",
                                "detail": None,
                            }
                        ]
                    }
                ).encode()
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"5"),
                    (b"connection", b"close"),
                ]
                await send({"type": "http.response.start", "status": 503, "headers": headers})
                await send({"type": "http.response.body", "body": body})

    return guarded


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def serve(app: ASGIApp, settings: Settings, metrics_registry: object | None = None) -> None:
    """Serve `app` on `settings.http.addr` until SIGTERM/SIGINT; return after a graceful
    shutdown. With `settings.http.metrics_addr` set, `metrics_registry` (a prometheus
    CollectorRegistry) is served there on a separate port for as long."""
    holder: list[uvicorn.Server] = []
    app = answer_cut_requests(
        app, lambda: bool(holder and holder[0].should_exit), settings.http.drain_timeout_seconds
    )
    config = uvicorn_config(app, settings)
    server = uvicorn.Server(config)
    holder.append(server)
    logging.getLogger("uvicorn.error").addFilter(_PROBES_AT_DEBUG)
    metrics_server = None
    http = settings.http
    if http.metrics_enabled and http.metrics_addr and metrics_registry is not None:
        mhost, mport = parse_addr(http.metrics_addr, "http.debug.addr")
        metrics_server, _thread = start_http_server(mport, addr=mhost, registry=metrics_registry)  # type: ignore[arg-type]
        log.info("metrics on http://%s:%d/metrics", mhost, mport)
    # uvicorn re-raises the SIGTERM it handled once it has shut down; turn that into a
    # normal exit so the caller's cleanup runs instead of the default handler killing us.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        server.run()
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
