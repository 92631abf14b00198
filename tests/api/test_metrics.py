"""api.metrics: what an operator scraping /metrics sees, on a tiny Starlette app."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from api.app import create_app
from api.metrics import InstrumentedJobs, Metrics, RedisQueueDepth, add_queue_depth, metrics_endpoint
from api.middleware import RequestMiddleware
from lading.embedded import observe
from pipeline import events
from pipeline.config import CelerySettings, HttpSettings, NotificationEndpoint, Settings
from pipeline.errors import DeliveryFailed, DigestInvalid
from pipeline.formats.digest import Digest
from pipeline.maintenance import garbage_collect, scrub
from pipeline.manifest_commit import delete_manifest
from pipeline.registry import Registry
from tests.pipeline.maintenance.helpers import age_blobs, flip_byte, fs_registry, push_image
from tests.support import redis_server
from tests.support.inline_jobs import InlineJobClient
from tests.support.net import free_port

pytestmark = pytest.mark.anyio

REDIS_URL = redis_server.url(0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


async def item(request: Request) -> Response:
    return PlainTextResponse(f"item {request.path_params['id']}")


async def upload(request: Request) -> Response:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
    return PlainTextResponse(str(total), status_code=202)


async def download(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 1000

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


def tiny_app(**http: Any) -> tuple[Any, Metrics]:
    app = Starlette(
        routes=[
            Route("/items/{id}", item),
            Route("/v2/{name:path}/blobs/uploads/{upload_id}", upload, methods=["PATCH", "PUT"]),
            Route("/download", download),
            Route("/boom", boom),
        ]
    )
    settings = Settings(http=HttpSettings(**http))
    metrics = Metrics()
    # Wired as `lading serve` wires its app (lading.embedded, the one place).
    return observe(app, settings, Registry.in_memory(settings), metrics, worker=None), metrics


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


async def test_requests_are_labelled_by_route_template_not_raw_path() -> None:
    app, _ = tiny_app()
    async with client(app) as c:
        for i in range(3):
            assert (await c.get(f"/items/{i}")).status_code == 200
        assert (await c.get("/nowhere/at/all")).status_code == 404
        text = (await c.get("/metrics")).text
    assert value(text, "lading_http_requests_total", method="GET", route="/items/{id}", status="200") == 3
    assert (
        value(
            text,
            "lading_http_request_duration_seconds_count",
            method="GET",
            route="/items/{id}",
            status="200",
        )
        == 3
    )
    assert value(text, "lading_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert "/items/1" not in text and "/nowhere" not in text


async def test_a_failing_handler_is_counted_as_500() -> None:
    app, _ = tiny_app()
    async with client(app) as c:
        assert (await c.get("/boom")).status_code == 500
        text = (await c.get("/metrics")).text
    assert value(text, "lading_http_requests_total", method="GET", route="/boom", status="500") == 1


async def test_bytes_pushed_and_pulled_and_streaming_passes_through() -> None:
    app, _ = tiny_app()
    async with client(app) as c:
        pushed = await c.patch("/v2/a/b/blobs/uploads/u1", content=b"y" * 5000)
        assert pushed.status_code == 202 and pushed.text == "5000"
        pulled = await c.get("/download")
        assert pulled.content == b"x" * 4000
        text = (await c.get("/metrics")).text
    assert value(text, "lading_bytes_pushed_total", route="/v2/{name:path}/blobs/uploads/{upload_id}") == 5000
    assert value(text, "lading_bytes_pulled_total", route="/download") == 4000


async def test_uploads_in_progress_rises_while_an_upload_streams() -> None:
    app, metrics = tiny_app()
    release = anyio.Event()
    started = anyio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"a" * 100
        started.set()
        await release.wait()
        yield b"b" * 100

    def gauge() -> float:
        return value(metrics.exposition().decode(), "lading_uploads_in_progress") or 0.0

    async with client(app) as c, anyio.create_task_group() as tg:
        results: list[httpx.Response] = []

        async def push() -> None:
            results.append(await c.patch("/v2/r/blobs/uploads/u2", content=body()))

        tg.start_soon(push)
        with anyio.fail_after(10):
            await started.wait()
        assert gauge() == 1
        release.set()
    assert results[0].text == "200"
    assert gauge() == 0


async def test_two_apps_in_one_process_have_separate_metrics() -> None:
    app1, _ = tiny_app()
    app2, _ = tiny_app()
    async with client(app1) as c1, client(app2) as c2:
        await c1.get("/items/1")
        text2 = (await c2.get("/metrics")).text
    assert value(text2, "lading_http_requests_total", method="GET", route="/items/{id}", status="200") is None


async def test_metrics_path_and_disabling() -> None:
    app, _ = tiny_app(metrics_path="/custom")
    async with client(app) as c:
        await c.get("/items/1")
        custom = await c.get("/custom")
        assert custom.headers["content-type"].startswith("text/plain")
        assert "lading_http_requests_total" in custom.text
        assert (await c.get("/metrics")).status_code == 404
    app, _ = tiny_app(metrics_enabled=False)
    async with client(app) as c:
        assert (await c.get("/metrics")).status_code == 404
    app, metrics = tiny_app(metrics_addr="127.0.0.1:9999")  # served on its own port by lading serve
    async with client(app) as c:
        assert (await c.get("/metrics")).status_code == 404
        await c.get("/items/1")
    assert (
        value(
            metrics.exposition().decode(),
            "lading_http_requests_total",
            method="GET",
            route="/items/{id}",
            status="200",
        )
        == 1
    )


async def test_explicit_route_label_wins() -> None:
    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        scope["lading.route"] = "manifest"
        await PlainTextResponse("ok")(scope, receive, send)

    metrics = Metrics()
    app = RequestMiddleware(endpoint, metrics=metrics, endpoints={"/metrics": metrics_endpoint(metrics)})
    async with client(app) as c:
        await c.get("/v2/some/repo/manifests/latest")
        text = (await c.get("/metrics")).text
    assert value(text, "lading_http_requests_total", method="GET", route="manifest", status="200") == 1


async def test_the_registry_router_labels_each_request_with_its_route_template(tmp_path: Path) -> None:
    registry = fs_registry(str(tmp_path))
    push_image(registry, "a/b", "latest", layers=[b"layer"])
    metrics = Metrics()
    app = observe(
        create_app(registry.settings, registry, InlineJobClient(registry)),
        registry.settings,
        registry,
        metrics,
        None,
    )
    async with client(app) as c:
        assert (await c.get("/v2/a/b/manifests/latest")).status_code == 200
        assert (await c.head(f"/v2/a/b/blobs/{Digest.of(b'layer')}")).status_code == 200
        assert (await c.get("/v2/")).status_code == 200
        assert (await c.get("/v2/a/b/nothing/here")).status_code == 404
        assert (await c.get("/favicon.ico")).status_code == 404
        text = (await c.get("/metrics")).text
    labelled = {
        (labels["method"], labels["route"], labels["status"])
        for (name, pairs), _ in samples(text).items()
        if name == "lading_http_requests_total"
        for labels in [dict(pairs)]
    }
    assert labelled == {
        ("GET", "/v2/{name}/manifests/{reference}", "200"),
        ("HEAD", "/v2/{name}/blobs/{digest}", "200"),
        ("GET", "/v2/", "200"),
        ("GET", "<unmatched>", "404"),
    }


class FakeJobs:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def send(self, job: str, **kwargs: Any) -> str:
        return "id-1"

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        if self.error:
            raise self.error
        return {"digest": "sha256:00"}

    async def run(self, job: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        return await self.wait(self.send(job, **kwargs), timeout)


async def test_job_round_trips_and_failures_are_recorded() -> None:
    metrics = Metrics()
    ok = InstrumentedJobs(FakeJobs(), metrics)
    assert await ok.run("lading.commit_blob", 5) == {"digest": "sha256:00"}
    job_id = ok.send("lading.commit_manifest")
    await ok.wait(job_id, 5)
    bad = InstrumentedJobs(FakeJobs(DigestInvalid("mismatch")), metrics)
    with pytest.raises(DigestInvalid):
        await bad.run("lading.commit_blob", 5)
    text = metrics.exposition().decode()
    assert value(text, "lading_job_round_trip_seconds_count", job="lading.commit_blob") == 2
    assert value(text, "lading_job_round_trip_seconds_count", job="lading.commit_manifest") == 1
    assert value(text, "lading_jobs_failed_total", job="lading.commit_blob", kind="DigestInvalid") == 1


async def test_unwaited_sends_never_stop_waited_jobs_being_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Numbered(FakeJobs):
        count = 0

        def send(self, job: str, **kwargs: Any) -> str:
            self.count += 1
            return f"id-{self.count}"

    monkeypatch.setattr("api.metrics.SENT_LIMIT", 3)
    metrics = Metrics()
    jobs = InstrumentedJobs(Numbered(), metrics)
    for _ in range(10):  # notifications, digest advances: sent, never waited for
        jobs.send("lading.notify")
    await jobs.wait(jobs.send("lading.commit_blob"), 5)
    text = metrics.exposition().decode()
    assert value(text, "lading_job_round_trip_seconds_count", job="lading.commit_blob") == 1
    assert len(jobs._sent) <= 3


MAINTENANCE = (
    "lading_scrub_blobs_total",
    "lading_scrub_bytes_total",
    "lading_scrub_corrupt_blobs_total",
    "lading_gc_blobs_total",
    "lading_gc_bytes_total",
)


def maintenance_values(metrics: Metrics) -> dict[str, float | None]:
    text = metrics.exposition().decode()
    return {name: value(text, name) for name in MAINTENANCE}


def test_maintenance_counters_are_the_totals_runs_in_other_processes_keep_in_storage(tmp_path: Path) -> None:
    # The API and the "worker" are separate Registry objects over one storage root, as
    # the API process and a worker process are: nothing but storage connects them.
    api_registry = fs_registry(str(tmp_path), scrub_rate_bytes=0, gc_grace_seconds=0)
    worker = fs_registry(str(tmp_path), scrub_rate_bytes=0, gc_grace_seconds=0)
    metrics = Metrics(driver=api_registry.driver)
    assert maintenance_values(metrics) == dict.fromkeys(MAINTENANCE, 0.0)

    kept = push_image(worker, "app", "v1", layers=[os.urandom(3000)])
    dropped = push_image(worker, "old", "v1", layers=[os.urandom(5000)])
    flip_byte(worker, Digest.of(kept.layers[0]))
    first = scrub(worker)
    assert first["checked"] == 6 and len(first["corrupt"]) == 1
    delete_manifest(worker, "old", str(dropped.digest))
    age_blobs(worker, 3600)
    assert garbage_collect(worker, dry_run=True)["would_delete"]["blobs"] == 3  # dry runs add nothing
    collected = garbage_collect(worker)
    assert collected["blobs_deleted"] == 3
    second = scrub(worker, resume=False)

    assert maintenance_values(metrics) == {
        "lading_scrub_blobs_total": first["checked"] + second["checked"],
        "lading_scrub_bytes_total": first["bytes"] + second["bytes"],
        "lading_scrub_corrupt_blobs_total": 2,  # the same bad layer, found by both runs
        "lading_gc_blobs_total": 3,
        "lading_gc_bytes_total": collected["bytes_freed"],
    }
    assert collected["bytes_freed"] == len(dropped.manifest) + len(dropped.config) + 5000


async def test_the_apps_metrics_endpoint_reads_maintenance_totals_from_its_registry(tmp_path: Path) -> None:
    registry = fs_registry(str(tmp_path), scrub_rate_bytes=0)
    push_image(registry, "app", "v1", layers=[b"layer" * 100])
    summary = scrub(registry)
    app = create_app(registry.settings, registry, InlineJobClient(registry))
    asgi = observe(app, registry.settings, registry, Metrics(driver=registry.driver), worker=None)
    async with client(asgi) as c:
        text = (await c.get("/metrics")).text
    assert value(text, "lading_scrub_blobs_total") == summary["checked"] == 3
    assert value(text, "lading_scrub_bytes_total") == summary["bytes"] > 500


def test_notification_counts_per_endpoint_and_outcome() -> None:
    metrics = Metrics()
    endpoint = f"hook-{uuid.uuid4().hex[:8]}"
    settings = Settings(notifications=(NotificationEndpoint(endpoint, "http://127.0.0.1:1/events"),))
    for _ in range(3):
        assert len(events.events_for(settings, "push", "app", {"digest": "sha256:" + "a" * 64})) == 1
    text = metrics.exposition().decode()
    assert value(text, "lading_notifications_total", endpoint=endpoint, outcome="pending") == 3
    with pytest.raises(DeliveryFailed):  # nothing listens on port 1
        events.deliver(settings.notifications[0], {"events": [{"id": "x"}]})
    text = metrics.exposition().decode()
    assert value(text, "lading_notifications_total", endpoint=endpoint, outcome="failed") == 1


def test_queue_depth_reads_real_redis_lists() -> None:
    queues = (f"lading-test-{uuid.uuid4().hex}", f"lading-test-{uuid.uuid4().hex}")
    r = redis.Redis.from_url(REDIS_URL)
    try:
        r.rpush(queues[0], "a", "b", "c")
        r.rpush(queues[0] + "\x06\x166", "d")  # kombu's priority-6 list of the same queue
        metrics = Metrics()
        metrics.registry.register(RedisQueueDepth(REDIS_URL, queues))
        text = metrics.exposition().decode()
        assert value(text, "lading_queue_depth", queue=queues[0]) == 4
        assert value(text, "lading_queue_depth", queue=queues[1]) == 0
    finally:
        r.delete(queues[0], queues[0] + "\x06\x166")


def test_queue_depth_with_broker_down_does_not_break_the_scrape() -> None:
    metrics = Metrics()
    metrics.registry.register(RedisQueueDepth(f"redis://127.0.0.1:{free_port()}/0"))
    metrics.requests.labels("GET", "/x", "200").inc()
    text = metrics.exposition().decode()
    assert "lading_queue_depth" not in text
    assert value(text, "lading_http_requests_total", method="GET", route="/x", status="200") == 1


async def test_a_redis_broker_adds_queue_depth() -> None:
    metrics = Metrics()
    add_queue_depth(Settings(celery=CelerySettings(broker_url=REDIS_URL)), metrics)
    assert value(metrics.exposition().decode(), "lading_queue_depth", queue="ingest") is not None
    embedded = Metrics()
    add_queue_depth(Settings(), embedded)
    assert "lading_queue_depth" not in embedded.exposition().decode()
