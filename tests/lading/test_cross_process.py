"""The scaled-out shape's cross-process guarantees, with real processes over a real Redis:
`lading serve`, `lading worker` and `lading gc` each started as its own process, sharing
one Redis (the test session's server, DB 13) for the broker, results and locks.

- the gc lock excludes a worker's collection and a CLI one, either way round;
- `lading gc` (grace 0) run again and again from the CLI while 100+ images are pushed
  through the API and worker processes leaves every acknowledged image whole;
- an API DELETE and a worker's manifest commit on one repository wait for the same
  repository lock;
- a stale batch-mode record answers the manifest PUT at once.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from lading.composition import compose
from pipeline import jobs
from pipeline.formats.digest import Digest
from pipeline.infra.coordination import LOCK_CLIENT_PREFIX, coordination_for
from pipeline.infra.locks import KEY_PREFIX
from pipeline.registry import build_registry
from tests.lading.procs import lading_command
from tests.lading.scaled import (
    Deployment,
    Image,
    assert_pullable,
    deployment,
    push_blob,
    push_image,
    put_manifest,
    random_image,
    sha256,
)
from tests.support import redis_server

pytestmark = pytest.mark.integration

REDIS_URL = redis_server.url(13)
GC_LOCK_KEY = KEY_PREFIX + "_gc"
PUSHES = 120
PUSH_THREADS = 6


@pytest.fixture(scope="module")
def redis_client() -> Iterator[redis.Redis]:
    with redis_server.emptied(REDIS_URL) as client:
        yield client


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory, redis_client: redis.Redis) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("scaled")
    with deployment(base, {"broker_url": REDIS_URL, "result_backend": REDIS_URL}) as d:
        yield d


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


def lading_gc(d: Deployment, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*lading_command(), "gc", str(d.config), "--json", *extra],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, dict[str, Any]]:
    out, err = proc.communicate(timeout=timeout)
    try:
        return proc.returncode, json.loads(out)
    except ValueError:
        raise AssertionError(f"lading gc exited {proc.returncode}: {out}\n{err}") from None


def send_gc(d: Deployment) -> Any:
    """A GARBAGE_COLLECT job for the worker process (an AsyncResult; its `get` is called
    with disable_sync_subtasks=False because an embedded worker run earlier in this test
    process may have left Celery believing it runs inside a task)."""
    sender = compose(d.settings, "beat").celery
    assert sender is not None
    return sender.send_task(jobs.GARBAGE_COLLECT, kwargs={"grace_seconds": 0})


def test_the_gc_lock_excludes_a_worker_and_the_cli_either_way_round(
    scaled: Deployment, redis_client: redis.Redis
) -> None:
    d = scaled
    with d.client() as client:
        push_image(client, random_image("held/app", "v1"))
    # The test holds the repository lock (through the same backend) so that whoever
    # collects first stops at the per-repository barrier while holding the gc lock.
    locks = coordination_for(d.settings).locks()

    with locks.lock("held/app"):
        job = send_gc(d)
        wait_until(lambda: bool(redis_client.exists(GC_LOCK_KEY)), "the worker takes the gc lock")
        code, result = finished(lading_gc(d), timeout=120)
        assert code == 1, result
        assert result == {"skipped": "another garbage collection is running"}
    envelope = job.get(timeout=120, disable_sync_subtasks=False)
    assert envelope["ok"] and "skipped" not in envelope["value"], envelope

    with locks.lock("held/app"):
        cli = lading_gc(d)
        wait_until(lambda: bool(redis_client.exists(GC_LOCK_KEY)), "lading gc takes the gc lock")
        envelope = send_gc(d).get(timeout=120, disable_sync_subtasks=False)
        assert envelope == {"ok": True, "value": {"skipped": "another garbage collection is running"}}
    code, result = finished(cli, timeout=120)
    assert code == 0 and "skipped" not in result and not result.get("sweep_skipped"), result


def test_cli_gc_racing_pushes_through_api_and_worker_processes_leaves_every_image_whole(
    scaled: Deployment,
) -> None:
    d = scaled
    rng = random.Random(11)
    repos = [f"race/r{i}" for i in range(5)]
    # Garbage before the race, some of whose layers later pushes reuse ("hot"): HEAD finds
    # them, the upload is skipped and the manifest names a blob gc is about to collect.
    hot: list[Image] = []
    with d.client() as client:
        for i in range(12):
            victim = random_image(repos[i % len(repos)], f"victim{i}")
            push_image(client, victim)
            r = client.delete(f"/v2/{victim.repo}/manifests/{sha256(victim.body)}")
            assert r.status_code == 202, r.text
            hot.append(victim)

    done = threading.Event()
    gc_runs: list[dict[str, Any]] = []
    pushed: list[Image] = []
    attempts: list[int] = []
    lock = threading.Lock()

    def collector() -> None:
        while not done.is_set():
            code, result = finished(lading_gc(d))
            gc_runs.append({**result, "exit": code})

    def pusher(worker: int) -> None:
        with d.client() as client:
            for i in range(worker, PUSHES, PUSH_THREADS):
                repo = repos[i % len(repos)]
                image = random_image(repo, f"t{i}")
                reuse = [v for v in hot if v.repo == repo]
                if reuse and i % 3 == 0:
                    image.layers.append(rng.choice(reuse).layers[0])
                took = push_image(client, image)
                with lock:
                    pushed.append(image)
                    attempts.append(took)

    gc_thread = threading.Thread(target=collector)
    gc_thread.start()
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(PUSH_THREADS) as pool:
            for f in [pool.submit(pusher, w) for w in range(PUSH_THREADS)]:
                f.result(timeout=900)
    finally:
        done.set()
        gc_thread.join(600)
    elapsed = time.monotonic() - started
    final_code, final = finished(lading_gc(d))
    print(
        f"\n{len(pushed)} pushes through `lading serve` + `lading worker` in {elapsed:.1f}s beside "
        f"{len(gc_runs)} `lading gc` runs ({sum(r.get('blobs_deleted', 0) for r in gc_runs)} blobs "
        f"collected); {sum(a > 1 for a in attempts)} pushes retried after MANIFEST_BLOB_UNKNOWN"
    )
    assert len(pushed) == PUSHES
    assert len(gc_runs) >= 2
    # Nobody else collects here: every run swept, none skipped.
    assert final_code == 0 and all(r["exit"] == 0 for r in gc_runs), (gc_runs, final)
    with d.client() as client:
        for image in pushed:
            assert_pullable(client, image)


def lock_waiters(client: redis.Redis, pids: set[int]) -> set[int]:
    """The processes among `pids` whose lock connection is retrying SET NX right now."""
    waiting = set()
    for conn in client.client_list():
        name = str(conn.get("name", ""))
        if name.startswith(LOCK_CLIENT_PREFIX) and conn.get("cmd") == "set" and int(conn["idle"]) == 0:
            pid = int(name[len(LOCK_CLIENT_PREFIX) :])
            if pid in pids:
                waiting.add(pid)
    return waiting


def test_api_delete_and_worker_manifest_commit_wait_for_the_same_repository_lock(
    scaled: Deployment, redis_client: redis.Redis
) -> None:
    d = scaled
    first, second = random_image("serial/app", "v1"), random_image("serial/app", "v2")
    with d.client() as client:
        push_image(client, first)
        for blob in second.blobs:
            push_blob(client, "serial/app", blob)
    api_pid, worker_pid = d.server.proc.pid, d.worker.proc.pid
    locks = coordination_for(d.settings).locks()
    with ThreadPoolExecutor(2) as pool, d.client() as client:
        with locks.lock("serial/app"):
            delete: Future[httpx.Response] = pool.submit(
                client.delete, f"/v2/serial/app/manifests/{sha256(first.body)}"
            )
            put = pool.submit(put_manifest, client, "serial/app", "v2", second.body)
            # Both processes retry the lock this test holds: the API process for the
            # DELETE, the worker process for the commit job the PUT sent.
            wait_until(
                lambda: lock_waiters(redis_client, {api_pid, worker_pid}) == {api_pid, worker_pid},
                "the API and the worker both wait for the repository lock",
            )
            assert not delete.done() and not put.done()
        assert delete.result(timeout=120).status_code == 202
        assert put.result(timeout=120).status_code == 201
        assert client.get(f"/v2/serial/app/manifests/{sha256(first.body)}").status_code == 404
        assert_pullable(client, second)


def test_a_stale_pending_record_answers_the_manifest_put_at_once(scaled: Deployment) -> None:
    d = scaled
    image = random_image("stale/app", "v1", layers=2)
    registry = build_registry(d.settings)
    with d.client() as client:
        push_blob(client, image.repo, image.config)
        # Batch-mode records whose commit jobs were lost (a broker restart): no result will
        # ever come, and their lease is over.
        for layer in image.layers:
            registry.pending.record(image.repo, Digest.parse(sha256(layer)), str(uuid.uuid4()), "u", lease=0)
    # The old behaviour waited celery.manifest_timeout (10 min) for them: this client gives up
    # after a few seconds.
    with d.client(timeout=5.0) as client:
        started = time.monotonic()
        r = put_manifest(client, image.repo, image.tag, image.body)
        print(f"\nstale records: manifest PUT answered {r.status_code} in {time.monotonic() - started:.2f}s")
    assert r.status_code == 400, r.text
    entries = r.json()["errors"]
    assert {e["code"] for e in entries} == {"MANIFEST_BLOB_UNKNOWN"}
    assert sorted(e["detail"]["digest"] for e in entries) == sorted(sha256(b) for b in image.layers)
    assert all("lease" in e["detail"]["reason"]["message"] for e in entries)


def test_processes_name_their_lock_connections(scaled: Deployment, redis_client: redis.Redis) -> None:
    """The lock connections the tests above watch are the processes' own (pid-named)."""
    image = random_image("named/app", "v1")
    with scaled.client() as client:
        push_image(client, image)  # the worker's commit takes the lock
        assert client.delete(f"/v2/named/app/manifests/{sha256(image.body)}").status_code == 202  # the API's
    names = {str(c.get("name", "")) for c in redis_client.client_list()}
    assert f"{LOCK_CLIENT_PREFIX}{scaled.worker.proc.pid}" in names
    assert f"{LOCK_CLIENT_PREFIX}{scaled.server.proc.pid}" in names


def test_the_api_request_log_names_the_jobs_the_worker_ran(scaled: Deployment) -> None:
    data = os.urandom(1000)
    with scaled.client() as client:
        push_blob(client, "logged/app", data, request_id="trace-jobs-1")
    line = next(
        json.loads(text)
        for text in scaled.server.wait_for(r'"request_id":"trace-jobs-1"').splitlines()
        if '"request_id":"trace-jobs-1"' in text and '"logger":"lading.access"' in text
    )
    assert line["route"] == "/v2/{name}/blobs/uploads/" and line["status"] == 201
    (job_id,) = line["jobs"]
    scaled.worker.wait_for(rf"lading\.commit_blob\[{job_id}\] succeeded")
