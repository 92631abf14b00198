"""Faults injected into a scaled-out Lading from outside, as on an operator's bad day: real
`lading serve` and `lading worker` processes, real redis-server, SIGKILL and SIGSTOP.

DB 18 of the session's Redis for tests that kill only workers; tests that freeze or restart
Redis run their own redis-server (tests.support.redis_server.RedisServer)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from celery import Celery

from pipeline.config import load_settings
from tests.support import redis_server
from tests.support.cluster import Cluster, Proc, sha256
from tests.support.net import free_port
from tests.support.redis_server import RedisServer
from workers.app import create_app

pytestmark = pytest.mark.integration

DB_KILL = 18


@pytest.fixture
def flushed_db() -> Iterator[str]:
    url = redis_server.url(DB_KILL)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def held_job(client: redis.Redis, task: str, timeout: float = 30.0) -> str:
    """The id of a `task` message delivered to a worker and not yet acknowledged (kombu's
    Redis `unacked` hash holds [message, exchange, routing key] per delivery tag)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for raw in client.hvals("unacked"):
            message = json.loads(raw)[0]
            if message["headers"].get("task") == task:
                return str(message["headers"]["id"])
        time.sleep(0.05)
    raise AssertionError(f"no {task} job was delivered within {timeout}s")


def wait_result(client: redis.Redis, job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = client.get(f"celery-task-meta-{job_id}")
        if raw is not None:
            meta: dict[str, Any] = json.loads(raw)
            if meta.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                return meta
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} was not run again within {timeout}s")


def test_a_killed_workers_manifest_job_comes_back_within_a_minute_and_never_moves_a_tag_back(
    tmp_path: Path, flushed_db: str
) -> None:
    repo = "faults/late"
    cluster = Cluster(tmp_path, flushed_db, manifest_timeout=5, commit_timeout=30)
    client = redis.Redis.from_url(flushed_db)
    try:
        cluster.serve()
        first_worker = cluster.worker()
        with cluster.client() as http:
            m1, m2 = cluster.image(http, repo, "one"), cluster.image(http, repo, "two")
            # Hold the repository lock: the worker's commit of M1 blocks inside commit_manifest.
            lock = client.lock(f"lading:lock:repository:{repo}", timeout=120)
            assert lock.acquire(blocking_timeout=10)
            outcome: dict[str, httpx.Response] = {}
            pushing = threading.Thread(
                target=lambda: outcome.update(first=cluster.put_manifest(http, repo, "latest", m1))
            )
            pushing.start()
            job_id = held_job(client, "lading.commit_manifest")
            first_worker.kill()
            killed_at = time.monotonic()
            lock.release()
            pushing.join(60)
            assert outcome["first"].status_code == 503  # the client waited manifest_timeout

            cluster.worker()  # the replacement
            retried = cluster.put_manifest(http, repo, "latest", m1)
            assert retried.status_code == 201, retried.text
            newer = cluster.put_manifest(http, repo, "latest", m2)
            assert newer.status_code == 201, newer.text
            assert cluster.tag_digest(http, repo, "latest") == sha256(m2)

            # The killed worker's job comes back (same id) and runs to completion...
            meta = wait_result(client, job_id, timeout=90)
            delay = time.monotonic() - killed_at
            print(f"redelivery of the killed worker's job: {delay:.1f}s after the kill")
            assert delay < 60
            assert meta["status"] == "SUCCESS" and meta["result"]["ok"], meta
            # ...stores M1 (idempotent) and leaves the tag where the newer push put it.
            assert cluster.tag_digest(http, repo, "latest") == sha256(m2)
            assert http.head(f"/v2/{repo}/manifests/{sha256(m1)}").status_code == 200
    finally:
        client.close()
        cluster.close()


def test_a_frozen_redis_never_holds_a_request_past_its_bound(tmp_path: Path, own_redis: RedisServer) -> None:
    bound = 5.0  # commit_timeout and manifest_timeout
    repo = "faults/frozen"
    cluster = Cluster(tmp_path, own_redis.url + "/0", manifest_timeout=bound, commit_timeout=bound)
    try:
        cluster.serve()
        cluster.worker()
        with cluster.client(timeout=bound + 5) as http:
            manifest = cluster.image(http, repo, "frozen")
            uploads = []
            for i in range(3):
                started = http.post(f"/v2/{repo}/blobs/uploads/")
                assert started.status_code == 202
                uploads.append((started.headers["location"], f"blob {i}".encode()))

            own_redis.freeze()
            try:
                durations: dict[str, float] = {}
                statuses: dict[str, int] = {}

                def timed(name: str, call: Any) -> None:
                    start = time.monotonic()
                    try:
                        statuses[name] = call().status_code
                    except httpx.TimeoutException:
                        statuses[name] = -1  # no answer within bound + 5 s
                    durations[name] = time.monotonic() - start

                calls = {
                    f"manifest-{i}": (lambda i=i: cluster.put_manifest(http, repo, f"t{i}", manifest))
                    for i in range(3)
                }
                calls.update(
                    {
                        f"blob-{i}": (
                            lambda location=location, data=data: http.put(
                                location, params={"digest": sha256(data)}, content=data
                            )
                        )
                        for i, (location, data) in enumerate(uploads)
                    }
                )
                calls["delete"] = lambda: http.delete(f"/v2/{repo}/manifests/{sha256(manifest)}")
                threads = [threading.Thread(target=timed, args=item) for item in calls.items()]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(bound + 30)
                print("frozen Redis, request durations:", {k: round(v, 1) for k, v in durations.items()})
                assert statuses == dict.fromkeys(calls, 503), statuses
                assert max(durations.values()) < bound + 5
            finally:
                own_redis.thaw()

            # the registry recovers once Redis answers again
            deadline = time.monotonic() + 60
            while (pushed := cluster.put_manifest(http, repo, "after", manifest)).status_code != 201:
                assert time.monotonic() < deadline, pushed.text
                time.sleep(0.5)
            assert cluster.tag_digest(http, repo, "after") == sha256(manifest)
    finally:
        cluster.close()


def answers_ping(app: Celery, worker: Proc, timeout: float = 60.0) -> None:
    """Wait until `worker` answers a control ping through the broker (it consumes again)."""
    deadline = time.monotonic() + timeout
    while True:
        assert worker.alive(), f"worker exited:\n{worker.text()[-3000:]}"
        try:
            if app.control.ping(destination=[worker.hostname], timeout=1.0):
                return
        except Exception:  # the broker is still coming back
            time.sleep(0.2)
        assert time.monotonic() < deadline, f"worker did not answer within {timeout}s"


def test_workers_survive_twenty_redis_restarts(tmp_path: Path, own_redis: RedisServer) -> None:
    repo = "faults/restarts"
    # A webhook endpoint that never answers: every push leaves notify jobs that the workers
    # hold, unacknowledged, through their retry countdowns (kombu's crash restoring held
    # messages on reconnect needs some).
    dead = {"name": "dead", "url": f"http://127.0.0.1:{free_port()}/", "timeout": "1s", "backoff": "1s"}
    cluster = Cluster(
        tmp_path,
        own_redis.url + "/0",
        extra={"notifications": {"endpoints": [dead]}},
        manifest_timeout=30,
        commit_timeout=30,
    )
    app = create_app(load_settings(str(cluster.config), {}))
    queues = "ingest,verify,notify"
    try:
        cluster.serve()
        workers = [
            cluster.worker(pool="threads", queues=queues, concurrency=4),
            cluster.worker(pool="prefork", queues=queues, concurrency=2),
        ]
        for restart in range(20):
            with cluster.client() as http:  # more held notify jobs
                manifest = cluster.image(http, repo, f"before-{restart}")
                assert cluster.put_manifest(http, repo, "latest", manifest).status_code == 201
            own_redis.restart()
            for worker in workers:
                answers_ping(app, worker)
            print(f"restart {restart + 1}: both workers answer")
        assert "Unrecoverable error" not in "".join(w.text() for w in workers)
        with cluster.client() as http:  # and they still work
            manifest = cluster.image(http, repo, "restarted")
            assert cluster.put_manifest(http, repo, "latest", manifest).status_code == 201
    finally:
        app.close()
        cluster.close()


def test_deleting_a_manifest_while_it_is_pushed_answers_only_clean_statuses(
    tmp_path: Path, flushed_db: str
) -> None:
    """Six clients PUT one manifest to rotating tags while two DELETE it by digest: every
    answer is 201 / 202 / 404, never 500, and the API logs no error."""
    repo = "faults/race"
    cluster = Cluster(tmp_path, flushed_db, manifest_timeout=60, commit_timeout=60)
    try:
        cluster.serve()
        cluster.worker(concurrency=4)
        cluster.worker(concurrency=4)
        with cluster.client() as http:
            manifest = cluster.image(http, repo, "raced")
        digest = sha256(manifest)
        statuses: dict[str, list[int]] = {"put": [], "delete": []}
        stop = time.monotonic() + 12

        def pusher(n: int) -> None:
            with cluster.client() as http:
                i = 0
                while time.monotonic() < stop:
                    response = cluster.put_manifest(http, repo, f"t{n}-{i % 3}", manifest)
                    statuses["put"].append(response.status_code)
                    i += 1

        def deleter() -> None:
            with cluster.client() as http:
                while time.monotonic() < stop:
                    statuses["delete"].append(http.delete(f"/v2/{repo}/manifests/{digest}").status_code)

        threads = [threading.Thread(target=pusher, args=(n,)) for n in range(6)]
        threads += [threading.Thread(target=deleter) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        counts = {kind: {code: codes.count(code) for code in set(codes)} for kind, codes in statuses.items()}
        print("delete while push:", counts)
        assert set(statuses["put"]) <= {201}, counts
        assert set(statuses["delete"]) <= {202, 404}, counts
        assert 202 in statuses["delete"] and statuses["put"], counts  # the race did happen
        logs = "".join(proc.text() for proc in cluster.procs)
        assert '"level": "error"' not in logs and "Traceback" not in logs
    finally:
        cluster.close()


def test_a_live_workers_long_job_is_never_run_twice(tmp_path: Path, flushed_db: str) -> None:
    """A job held four leases long by a live worker keeps its lease (renewed): no other
    worker gets it, though every worker scans for expired leases each second."""
    repo = "faults/slow"
    lease = 3
    cluster = Cluster(
        tmp_path,
        flushed_db,
        manifest_timeout=60,
        commit_timeout=60,
        broker_transport_options={"visibility_timeout": lease, "unacked_restore_interval": 1},
    )
    client = redis.Redis.from_url(flushed_db)
    try:
        cluster.serve()
        workers = [cluster.worker(), cluster.worker()]
        with cluster.client() as http:
            manifest = cluster.image(http, repo, "slow")
            lock = client.lock(f"lading:lock:repository:{repo}", timeout=120)
            assert lock.acquire(blocking_timeout=10)
            outcome: dict[str, httpx.Response] = {}
            pushing = threading.Thread(
                target=lambda: outcome.update(put=cluster.put_manifest(http, repo, "latest", manifest))
            )
            pushing.start()
            job_id = held_job(client, "lading.commit_manifest")
            held_until = time.monotonic() + 4 * lease
            while time.monotonic() < held_until:  # the job is running (waiting for the lock)
                assert client.hlen("unacked") >= 1
                time.sleep(0.5)
            lock.release()
            pushing.join(60)
            assert outcome["put"].status_code == 201, outcome["put"].text
        received = sum(w.text().count(f"[{job_id}] received") for w in workers)
        assert received == 1, f"the job was delivered {received} times"
    finally:
        client.close()
        cluster.close()


def test_hostile_manifests_get_clean_400s_from_a_real_deployment(tmp_path: Path, flushed_db: str) -> None:
    """100,000 nested `[` and a descriptor whose size lies: MANIFEST_INVALID, no internals."""
    repo = "faults/hostile"
    cluster = Cluster(tmp_path, flushed_db, manifest_timeout=60, commit_timeout=60)
    try:
        cluster.serve()
        cluster.worker()
        with cluster.client() as http:
            nested = cluster.put_manifest(http, repo, "deep", b"[" * 100_000 + b"]" * 100_000)
            assert nested.status_code == 400, nested.text
            assert nested.json()["errors"][0]["code"] == "MANIFEST_INVALID"
            assert "Recursion" not in nested.text and "Traceback" not in nested.text

            document = json.loads(cluster.image(http, repo, "lying"))
            document["layers"][0]["size"] += 1
            lying = cluster.put_manifest(http, repo, "lie", json.dumps(document).encode())
            assert lying.status_code == 400, lying.text
            (error,) = lying.json()["errors"]
            assert error["code"] == "MANIFEST_INVALID"
            assert error["detail"][0]["digest"] == document["layers"][0]["digest"]
            assert cluster.tag_digest(http, repo, "lie") is None
    finally:
        cluster.close()
