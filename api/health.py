"""`/healthz`: is this API process able to serve? Checks storage and the broker.

Storage: `stat` of the storage root through the driver ("not found" is healthy: a fresh
root has nothing yet), then a small write and delete (a full disk, a read-only remount or a
revoked bucket permission fail it), and on a local filesystem the free space, unhealthy
below `MIN_FREE_BYTES`. Errors are reported by kind only: no path or driver message.
Broker: a Redis PING (or a kombu connection for other brokers),
bounded by a timeout; in embedded mode the in-process worker is the broker, so it is
reported as such (or checked with the `embedded_alive` callable if given).
Answers 200 `{"status": "ok", "checks": {...}}` or 503 `{"status": "unavailable", ...}`.
With access control, `checks.auth` reports an htpasswd or policy file that changed on disk
but could not be loaded (the last good version stays in force): `"status": "degraded"`,
still 200, since every replica reads the same file and taking them all out of a load
balancer would turn a bad edit into an outage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.config import Settings
from pipeline.errors import PathNotFound
from pipeline.infra.coordination import celery_url, redis_target
from pipeline.storage import paths
from pipeline.storage.driver import StorageDriver

__all__ = ["BrokerPing", "HealthCheck", "broker_ping", "health_route"]

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 2.0
MIN_FREE_BYTES = 256 * 1024 * 1024  # below this a push of one ordinary layer may not fit
PROBE = f"{paths.LADING}/health/probe"

BrokerPing = Callable[[], Awaitable[None]]


def broker_ping(
    broker_url: str, timeout: float = CHECK_TIMEOUT, transport_options: Mapping[str, Any] | None = None
) -> BrokerPing:
    """An async callable raising if the broker at `broker_url` does not answer (a Redis,
    Sentinel-managed or not, is PINGed; any other broker is connected to by kombu)."""
    target = redis_target(broker_url, transport_options)
    if target is not None:
        client = target.async_client(timeout)

        async def ping_redis() -> None:
            await client.ping()

        return ping_redis

    def connect() -> None:
        from kombu import Connection

        with Connection(celery_url(broker_url), connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)

    async def ping_other() -> None:
        await anyio.to_thread.run_sync(connect, abandon_on_cancel=True)

    return ping_other


class HealthCheck:
    """Runs the checks; `respond` is the Starlette endpoint."""

    def __init__(
        self,
        settings: Settings,
        driver: StorageDriver,
        ping: BrokerPing | None = None,
        embedded_alive: Callable[[], bool] | None = None,
        timeout: float = CHECK_TIMEOUT,
        auth_failures: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self.settings = settings
        self.auth_failures = auth_failures
        self.driver = driver
        self.timeout = timeout
        self.embedded_alive = embedded_alive
        broker = settings.celery.broker_url
        options = settings.celery.extra.get("broker_transport_options")
        if ping is None and broker:
            ping = broker_ping(broker, timeout, options if isinstance(options, Mapping) else None)
        self.ping = ping

    async def check_storage(self) -> dict[str, Any]:
        stage = ["read"]

        def probe() -> int | None:
            try:
                self.driver.stat("/")
            except PathNotFound:
                pass
            stage[0] = "write"
            self.driver.put_content(f"{PROBE}-{os.getpid()}", b"ok")
            self.driver.delete(f"{PROBE}-{os.getpid()}")
            root = getattr(self.driver, "root", None)  # a local filesystem's directory
            if not isinstance(root, str) and self.settings.storage.driver == "filesystem":
                root = self.settings.storage.root  # the driver is wrapped (metrics, cache)
            if isinstance(root, str) and os.path.isdir(root):
                return shutil.disk_usage(root).free
            return None

        try:
            with anyio.fail_after(self.timeout):
                free = await anyio.to_thread.run_sync(probe, abandon_on_cancel=True)
        except TimeoutError:
            return {"ok": False, "error": f"storage did not answer within {self.timeout}s ({stage[0]})"}
        except Exception as exc:
            log.error("health: storage %s failed", stage[0], exc_info=exc)
            return {"ok": False, "error": f"storage {stage[0]} failed ({type(exc).__name__})"}
        result: dict[str, Any] = {"ok": True, "driver": self.settings.storage.driver}
        if free is not None:
            result["free_bytes"] = free
            if free < MIN_FREE_BYTES:
                result.update(ok=False, error=f"storage nearly full: {free // (1024 * 1024)} MiB free")
        return result

    async def check_broker(self) -> dict[str, Any]:
        if self.ping is None:
            alive = self.embedded_alive() if self.embedded_alive is not None else True
            if alive:
                return {"ok": True, "broker": "embedded"}
            return {"ok": False, "broker": "embedded", "error": "the in-process worker is not running"}
        try:
            await asyncio.wait_for(self.ping(), self.timeout)
        except TimeoutError:
            return {"ok": False, "error": f"broker did not answer within {self.timeout}s"}
        except Exception as exc:
            return {"ok": False, "error": f"broker unreachable ({type(exc).__name__})"}
        return {"ok": True}

    async def respond(self, request: Request) -> Response:
        storage, broker = await asyncio.gather(self.check_storage(), self.check_broker())
        healthy = storage["ok"] and broker["ok"]
        checks: dict[str, Any] = {"storage": storage, "broker": broker}
        status = "ok" if healthy else "unavailable"
        if self.auth_failures is not None:
            stale = dict(await anyio.to_thread.run_sync(self.auth_failures))
            checks["auth"] = {"ok": not stale, **({"stale": stale} if stale else {})}
            if stale and healthy:
                status = "degraded"  # still serving (every replica shares the file): 200
        body = {"status": status, "checks": checks}
        return JSONResponse(body, status_code=200 if healthy else 503, headers={"Cache-Control": "no-store"})


def health_route(
    settings: Settings,
    driver: StorageDriver,
    ping: BrokerPing | None = None,
    embedded_alive: Callable[[], bool] | None = None,
) -> Route:
    """The `settings.http.health_path` route (GET and HEAD) for the app's route list."""
    check = HealthCheck(settings, driver, ping=ping, embedded_alive=embedded_alive)
    return Route(settings.http.health_path, check.respond, methods=["GET", "HEAD"], name="health")
