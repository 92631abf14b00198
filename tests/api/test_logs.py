"""api.logs: one JSON line per request, and a request id that follows the request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio.to_thread
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from api.logs import JsonFormatter, RequestLog
from api.middleware import RequestMiddleware
from api.request_id import current_job_ids, current_request_id, note_job
from tests.api.helpers import json_lines, json_log

pytestmark = pytest.mark.anyio

seen_ids: list[str | None] = []


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """Everything logged under `lading.` (access log and app logs) as JSON lines."""
    with json_log("lading") as stream:
        yield stream


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    return json_lines(stream)


def access_entries(stream: io.StringIO) -> list[dict[str, Any]]:
    return [e for e in entries(stream) if e["logger"] == "lading.access"]


async def blob(request: Request) -> Response:
    seen_ids.append(current_request_id())
    logging.getLogger("lading.jobs").info("sent job %s", "job-123")
    return PlainTextResponse("blob bytes")


async def upload(request: Request) -> Response:
    note_job("job-commit-1")  # what the job client does for each job it sends
    await anyio.to_thread.run_sync(note_job, "job-commit-2")  # also from a worker thread
    body = await request.body()
    return Response(status_code=202, headers={"Location": "/next"}, content=b"" if body else b"?")


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"z" * 10

    return StreamingResponse(chunks())


async def boom(request: Request) -> Response:
    raise RuntimeError("kaput")


def app() -> RequestMiddleware:
    inner = Starlette(
        routes=[
            Route("/v2/{name:path}/blobs/{digest}", blob),
            Route("/v2/{name:path}/blobs/uploads/", upload, methods=["POST"]),
            Route("/stream", stream),
            Route("/boom", boom),
        ]
    )
    return RequestMiddleware(inner, log=RequestLog())


def client(raise_errors: bool = True) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app(), raise_app_exceptions=raise_errors), base_url="http://test"
    )


async def test_one_json_line_per_request_with_the_fields(log_lines: io.StringIO) -> None:
    async with client() as c:
        response = await c.post("/v2/a/b/blobs/uploads/", content=b"12345")
    assert response.status_code == 202
    (entry,) = access_entries(log_lines)
    assert entry["method"] == "POST"
    assert entry["route"] == "/v2/{name:path}/blobs/uploads/"
    assert entry["path"] == "/v2/a/b/blobs/uploads/"
    assert entry["status"] == 202
    assert entry["bytes_in"] == 5 and entry["bytes_out"] == 0
    assert entry["duration_ms"] >= 0
    assert entry["request_id"] == response.headers["x-request-id"]
    assert entry["level"] == "info" and "time" in entry
    assert entry["jobs"] == ["job-commit-1", "job-commit-2"]
    assert current_job_ids() == []  # reset after the request


async def test_a_request_that_sent_no_job_lists_none(log_lines: io.StringIO) -> None:
    async with client() as c:
        await c.get("/stream")
    (entry,) = access_entries(log_lines)
    assert "jobs" not in entry


async def test_request_id_is_generated_and_echoed_and_unique(log_lines: io.StringIO) -> None:
    async with client() as c:
        first = await c.get("/stream")
        second = await c.get("/stream")
    assert first.content == b"z" * 30
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(ids) and ids[0] != ids[1]
    assert [e["request_id"] for e in access_entries(log_lines)] == ids
    assert [e["bytes_out"] for e in access_entries(log_lines)] == [30, 30]


async def test_client_request_id_is_kept_and_visible_to_the_handler(log_lines: io.StringIO) -> None:
    seen_ids.clear()
    async with client() as c:
        response = await c.get("/v2/r/blobs/sha256:00", headers={"X-Request-Id": "trace-42"})
    assert response.headers["x-request-id"] == "trace-42"
    assert seen_ids == ["trace-42"]
    job_line = next(e for e in entries(log_lines) if e["logger"] == "lading.jobs")
    assert job_line["request_id"] == "trace-42" and job_line["msg"] == "sent job job-123"
    assert current_request_id() is None  # reset after the request


async def test_unsafe_client_request_id_is_replaced(log_lines: io.StringIO) -> None:
    async with client() as c:
        response = await c.get("/stream", headers={"X-Request-Id": "evil id\twith spaces" + "x" * 200})
    rid = response.headers["x-request-id"]
    assert " " not in rid and len(rid) <= 128
    assert access_entries(log_lines)[0]["request_id"] == rid


async def test_a_crashing_request_is_logged_with_its_error(log_lines: io.StringIO) -> None:
    async with client(raise_errors=False) as c:
        response = await c.get("/boom")
    assert response.status_code == 500
    (entry,) = access_entries(log_lines)
    assert entry["status"] == 500 and entry["route"] == "/boom"
    assert "RuntimeError: kaput" in entry["error"]


def test_formatter_renders_extra_fields_and_exceptions() -> None:
    record = logging.LogRecord("lading.x", logging.ERROR, __file__, 1, "failed %s", ("job",), None)
    record.job_id = "j-1"
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "failed job" and entry["level"] == "error" and entry["job_id"] == "j-1"
    assert "ValueError: bad" in entry["exc"]
