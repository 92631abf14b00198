"""api.middleware: one middleware doing the request id, fixed headers, metrics, the access
log and the endpoints answered before the app, as `lading serve` wraps the registry."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from api.app import VERSION_HEADERS
from api.logs import RequestLog
from api.metrics import Metrics, metrics_endpoint
from api.middleware import RequestMiddleware
from api.request_id import current_request_id
from tests.api.helpers import json_lines, json_log

pytestmark = pytest.mark.anyio

VERSION = ("docker-distribution-api-version", "registry/2.0")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    with json_log("lading.access") as stream:
        yield stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return json_lines(stream)


def count(metrics: Metrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


async def upload(request: Request) -> Response:
    body = await request.body()
    # A response that already carries the version header (as OCI error bodies do) and an
    # X-Request-Id of its own: each must come out once, with the middleware's value.
    headers = {VERSION[0]: VERSION[1], "X-Request-Id": "from-the-app"}
    headers["X-Seen-Id"] = current_request_id() or ""
    return PlainTextResponse(str(len(body)), status_code=202, headers=headers)


async def download(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"d" * 100

    return StreamingResponse(chunks())


async def boom(request: Request) -> Response:
    raise RuntimeError("kaput")


async def health(scope: Any, receive: Any, send: Any) -> None:
    await PlainTextResponse("ok")(scope, receive, send)


def observed() -> tuple[RequestMiddleware, Metrics]:
    app = Starlette(
        routes=[
            Route("/v2/{name:path}/blobs/uploads/", upload, methods=["POST"]),
            Route("/download", download),
            Route("/boom", boom),
        ]
    )
    metrics = Metrics()
    middleware = RequestMiddleware(
        app,
        log=RequestLog(),
        metrics=metrics,
        headers=VERSION_HEADERS,
        endpoints={"/metrics": metrics_endpoint(metrics), "/healthz": health},
    )
    return middleware, metrics


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


async def test_one_middleware_sets_headers_counts_and_logs(access_lines: io.StringIO) -> None:
    app, metrics = observed()
    async with client(app) as c:
        pushed = await c.post(
            "/v2/a/b/blobs/uploads/", content=b"x" * 1234, headers={"X-Request-Id": "rid-1"}
        )
        pulled = await c.get("/download")
    assert pushed.status_code == 202 and pushed.text == "1234"
    assert pushed.headers.get_list(VERSION[0]) == [VERSION[1]]
    assert pushed.headers.get_list("x-request-id") == ["rid-1"]
    assert pushed.headers["x-seen-id"] == "rid-1"  # the handler ran with the request's id
    assert pulled.content == b"d" * 300 and pulled.headers[VERSION[0]] == VERSION[1]
    assert pulled.headers["x-request-id"] != "rid-1"

    route = "/v2/{name:path}/blobs/uploads/"
    assert count(metrics, "lading_http_requests_total", method="POST", route=route, status="202") == 1
    assert count(metrics, "lading_bytes_pushed_total", route=route) == 1234
    assert count(metrics, "lading_bytes_pulled_total", route="/download") == 300
    assert count(metrics, "lading_http_requests_in_flight") == 0
    assert count(metrics, "lading_uploads_in_progress") == 0
    first, second = lines(access_lines)
    assert (first["request_id"], first["route"], first["status"]) == ("rid-1", route, 202)
    assert first["bytes_in"] == 1234
    assert (second["route"], second["bytes_out"]) == ("/download", 300)
    assert current_request_id() is None


async def test_endpoints_are_answered_first_logged_and_not_counted(access_lines: io.StringIO) -> None:
    app, metrics = observed()
    async with client(app) as c:
        health_answer = await c.get("/healthz")
        exposition = await c.get("/metrics")
        posted = await c.post("/healthz")  # only GET/HEAD are the endpoint's
    assert health_answer.text == "ok" and health_answer.headers[VERSION[0]] == VERSION[1]
    assert "lading_http_requests_total" in exposition.text
    assert posted.status_code == 404 and posted.headers["x-request-id"]
    assert [e["route"] for e in lines(access_lines)][:2] == ["/healthz", "/metrics"]
    assert count(metrics, "lading_http_requests_total", method="GET", route="/healthz", status="200") is None


async def test_a_crash_is_counted_logged_and_answered_with_headers(access_lines: io.StringIO) -> None:
    app, metrics = observed()
    async with client(app) as c:
        r = await c.get("/boom")
    assert r.status_code == 500
    assert r.headers["x-request-id"]
    assert count(metrics, "lading_http_requests_total", method="GET", route="/boom", status="500") == 1
    (entry,) = lines(access_lines)
    assert entry["status"] == 500 and "RuntimeError: kaput" in entry["error"]
    assert current_request_id() is None
