"""Prometheus metrics of the API process, and the middleware that records requests in them.

Each `Metrics` owns a private `CollectorRegistry` (never prometheus_client's global one),
so a test can build several apps in one process. Requests are labelled by *route template*
(`/v2/{name:path}/blobs/{digest}`), never by raw path, so cardinality stays bounded.

Requests are recorded by api.middleware's one middleware, which calls
`Metrics.request_started` / `request_finished`. Wiring happens once, in lading.embedded:
the composition root (lading.composition) builds the `Metrics` and wraps the job client in
`InstrumentedJobs(jobs, metrics)` to time job round trips; lading.embedded puts the
middleware around the app, serves `metrics_endpoint(metrics)` at `http.metrics_path`
(unless `metrics_addr` asks for a separate port, which `lading serve` starts) and adds
`add_queue_depth`.

Numbers produced elsewhere are read at scrape time by custom collectors: the scrub and gc
totals that maintenance runs (in worker processes) keep in storage (`MaintenanceTotals`,
given the storage driver), and this process's notification counts (`NotificationCounts`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import anyio.to_thread
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from pipeline import events
from pipeline.config import Settings
from pipeline.errors import LadingError
from pipeline.infra.coordination import RedisTarget, coordination_for, redis_target
from pipeline.jobs import QUEUES, JobClient
from pipeline.maintenance import stats as maintenance_stats
from pipeline.proxy import stats as proxy_stats
from pipeline.storage.driver import StorageDriver
from pipeline.stores.deadletter import DEAD_KEY

__all__ = [
    "InstrumentedJobs",
    "MaintenanceTotals",
    "Metrics",
    "NotificationCounts",
    "RedisQueueDepth",
    "add_queue_depth",
    "metrics_endpoint",
]

log = logging.getLogger("lading.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
SENT_LIMIT = 100_000  # send times kept for jobs not yet waited for
# kombu's Redis transport keeps priority levels 3, 6 and 9 in lists named queue + sep + level.
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = ("", "3", "6", "9")


class Metrics:
    """Every metric Lading's API process exports, in one private registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, driver: StorageDriver | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lading_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "lading_http_request_duration_seconds",
            "Time from request start to last response byte",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "lading_http_requests_in_flight", "Requests being answered now", registry=r
        )
        self.bytes_pushed = Counter(
            "lading_bytes_pushed", "Request body bytes received (uploads, manifests)", ["route"], registry=r
        )
        self.bytes_pulled = Counter(
            "lading_bytes_pulled", "Response body bytes sent for GET requests", ["route"], registry=r
        )
        self.uploads_in_progress = Gauge(
            "lading_uploads_in_progress", "Upload requests (POST/PATCH/PUT) streaming now", registry=r
        )
        self.job_seconds = Histogram(
            "lading_job_round_trip_seconds",
            "Time from sending a job to receiving its result",
            ["job"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs_failed = Counter(
            "lading_jobs_failed", "Jobs that ended in an error, by error kind", ["job", "kind"], registry=r
        )
        self.jobs_retried = Counter(
            "lading_jobs_retried", "Job retries after transient errors", ["job"], registry=r
        )
        r.register(NotificationCounts())
        r.register(ProxyCounts())
        # Labelled children by label values: `labels()` validates and locks on every call,
        # and every request needs two to four of them. Bounded like the label values.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._route_children: dict[tuple[int, str], Counter] = {}
        self._maintenance: MaintenanceTotals | None = None
        if driver is not None:
            self.watch_maintenance(driver)

    def watch_maintenance(self, driver: StorageDriver) -> None:
        """Export the scrub / gc totals that maintenance runs keep in `driver` (once)."""
        if self._maintenance is None:
            self._maintenance = MaintenanceTotals(driver)
            self.registry.register(self._maintenance)

    def request_started(self, method: str, path: str) -> bool:
        """A request arrived: in flight. True when it is an upload (that gauge rose too);
        the route is only known once routing ran, so uploads are told by method and path
        shape, before the body streams."""
        self.requests_in_flight.inc()
        if method in ("POST", "PATCH", "PUT") and "/blobs/uploads" in path:
            self.uploads_in_progress.inc()
            return True
        return False

    def request_finished(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
        upload: bool,
    ) -> None:
        """A request `request_started` counted was answered (or failed: status 500)."""
        self.requests_in_flight.dec()
        if upload:
            self.uploads_in_progress.dec()
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            labels = (method, route, str(status))
            children = (self.requests.labels(*labels), self.request_seconds.labels(*labels))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if bytes_in:
            self._child(self.bytes_pushed, route).inc(bytes_in)
        if method == "GET" and bytes_out:
            self._child(self.bytes_pulled, route).inc(bytes_out)

    def _child(self, counter: Counter, route: str) -> Counter:
        key = (id(counter), route)
        child = self._route_children.get(key)
        if child is None:
            child = self._route_children[key] = counter.labels(route)
        return child

    def observe_job(self, job: str, seconds: float, error: BaseException | None = None) -> None:
        self.job_seconds.labels(job).observe(seconds)
        if error is not None:
            self.jobs_failed.labels(job, type(error).__name__).inc()

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


# (metric name without _total, help, stats job, key in its record)
MAINTENANCE_COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    ("lading_scrub_blobs", "Blobs re-hashed by scrub", maintenance_stats.SCRUB, "blobs"),
    ("lading_scrub_bytes", "Bytes re-hashed by scrub", maintenance_stats.SCRUB, "bytes"),
    ("lading_scrub_corrupt_blobs", "Corrupt blobs found by scrub", maintenance_stats.SCRUB, "corrupt"),
    ("lading_gc_blobs", "Blobs deleted by garbage collection", maintenance_stats.GC, "blobs"),
    ("lading_gc_bytes", "Bytes freed by garbage collection", maintenance_stats.GC, "bytes"),
)


class MaintenanceTotals(Collector):
    """The scrub and gc counters. Those jobs run in worker processes (or the CLI), never in
    the API, so each run adds its counts to a record in storage
    (pipeline.maintenance.stats) and this collector reads the records on every scrape: the
    numbers are registry-wide totals over all runs. Unreadable storage exports nothing
    rather than a wrong number."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    def collect(self) -> Iterator[Metric]:
        totals: dict[str, dict[str, int]] = {}
        try:
            for job in (maintenance_stats.SCRUB, maintenance_stats.GC):
                totals[job] = maintenance_stats.read(self.driver, job)
        except LadingError as exc:  # a scrape must not fail because storage does
            log.warning("maintenance totals unavailable: %s", exc)
            return
        for name, documentation, job, key in MAINTENANCE_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=totals[job].get(key, 0))

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected lazily; describing must not touch storage


class NotificationCounts(Collector):
    """`lading_notifications_total{endpoint, outcome}` from pipeline.events' counts in this
    process: `pending` events queued for an endpoint (the API), `delivered` / `failed`
    delivery attempts (wherever the notify job runs: here too in embedded mode)."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "lading_notifications",
            "Notification events by endpoint and outcome",
            labels=["endpoint", "outcome"],
        )
        for endpoint, outcomes in sorted(events.counts().items()):
            for outcome, n in sorted(outcomes.items()):
                family.add_metric([endpoint, outcome], float(n))
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


class ProxyCounts(Collector):
    """`lading_proxy_<counter>_total{upstream}`: the pull-through cache's counters
    (pipeline.proxy.stats; deployment-wide when Redis is configured). Nothing is exported
    by a registry that proxies nothing."""

    HELP = {
        "cache_hits": "Proxied pulls answered from the cache",
        "cache_misses": "Proxied pulls that needed the upstream's content",
        "upstream_requests": "Requests sent to upstream registries",
        "upstream_bytes": "Bytes received from upstream registries",
        "upstream_errors": "Upstream requests that failed (unreachable, 429/5xx, bad content)",
    }

    def collect(self) -> Iterator[Metric]:
        counts = proxy_stats.snapshot()
        for counter, documentation in self.HELP.items():
            family = CounterMetricFamily(f"lading_proxy_{counter}", documentation, labels=["upstream"])
            for (upstream, name), value in sorted(counts.items()):
                if name == counter:
                    family.add_metric([upstream], float(value))
            if counts:
                yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


class RedisQueueDepth(Collector):
    """`lading_queue_depth{queue=…}`: messages waiting in each queue of a Redis broker,
    read on every scrape (a failed read exports nothing rather than a stale number)."""

    def __init__(self, broker: RedisTarget | str, queues: Iterable[str] = QUEUES) -> None:
        target = broker if isinstance(broker, RedisTarget) else redis_target(broker)
        if target is None:
            raise ValueError(f"not a Redis broker: {broker!r}")
        self.queues = tuple(queues)
        self.client = target.client(timeout=1.0)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("lading_queue_depth", "Jobs waiting in the broker queue", labels=["queue"])
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for queue in self.queues:
                    for step in _PRIORITY_STEPS:
                        pipe.llen(queue + _PRIORITY_SEP + step if step else queue)
                pipe.hlen(DEAD_KEY)  # jobs set aside (pipeline.stores.deadletter), same Redis
                *lengths, dead = pipe.execute()
        except Exception as exc:  # a scrape must not fail because the broker is down
            log.warning("queue depth unavailable: %s", exc)
            return
        per_queue = len(_PRIORITY_STEPS)
        for i, queue in enumerate(self.queues):
            family.add_metric([queue], float(sum(lengths[i * per_queue : (i + 1) * per_queue])))
        yield family
        parked = GaugeMetricFamily(
            "lading_jobs_dead", "Jobs set aside after failing on every delivery (lading jobs dead)"
        )
        parked.add_metric([], float(dead))
        yield parked

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected lazily; describing must not touch the broker


def metrics_endpoint(metrics: Metrics) -> ASGIApp:
    """An ASGI app answering the text exposition; collection runs in a worker thread
    because collectors may do blocking I/O (queue depth)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = await anyio.to_thread.run_sync(metrics.exposition)
        headers = [
            (b"content-type", CONTENT_TYPE_LATEST.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})

    return app


class InstrumentedJobs:
    """A JobClient that times each job from send to result and counts failures by kind."""

    def __init__(self, inner: JobClient, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self._sent: dict[str, tuple[str, float]] = {}
        self._sent_lock = threading.Lock()  # send runs in threads (notifications, batch mode)

    def send(self, job: str, **kwargs: Any) -> str:
        job_id = self.inner.send(job, **kwargs)
        with self._sent_lock:
            # Fire-and-forget jobs (digest advances, notifications) are never waited for:
            # forget the oldest sends rather than refusing to time the new ones.
            while len(self._sent) >= SENT_LIMIT:
                del self._sent[next(iter(self._sent))]
            self._sent[job_id] = (job, time.perf_counter())
        return job_id

    async def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        with self._sent_lock:
            job, start = self._sent.pop(job_id, ("unknown", time.perf_counter()))
        try:
            value = await self.inner.wait(job_id, timeout)
        except LadingError as exc:
            self.metrics.observe_job(job, time.perf_counter() - start, exc)
            raise
        self.metrics.observe_job(job, time.perf_counter() - start)
        return value

    async def run(self, job: str, timeout: float, **kwargs: Any) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            value = await self.inner.run(job, timeout, **kwargs)
        except LadingError as exc:
            self.metrics.observe_job(job, time.perf_counter() - start, exc)
            raise
        self.metrics.observe_job(job, time.perf_counter() - start)
        return value

    def __getattr__(self, name: str) -> Any:  # anything else the concrete client offers
        return getattr(self.inner, name)


def add_queue_depth(settings: Settings, metrics: Metrics) -> None:
    """Register `lading_queue_depth` when metrics are on and the broker is a Redis."""
    if not settings.http.metrics_enabled or settings.celery.embedded:
        return
    broker = coordination_for(settings).redis
    if broker is not None and broker.url == settings.celery.broker_url:
        metrics.registry.register(RedisQueueDepth(broker))
