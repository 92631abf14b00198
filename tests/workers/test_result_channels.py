"""Each API replica reads its own job results only (api.jobclient + workers.results, a real
`celery worker` on real Redis): `run` names the replica's result channel in the job's
`reply_to` and the worker publishes there; jobs sent without it (beat, the CLI, Celery's
`send_task`, a `send` awaited later by any replica) are still awaited through pub/sub, and a
result published while the listener is cut off from Redis is still found."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from api import jobclient
from api.jobclient import CeleryJobClient
from pipeline import jobs
from pipeline.config import CelerySettings, Settings, StorageSettings
from pipeline.errors import BlobUploadUnknown, JobTimeout
from tests.support.redis_server import RedisServer
from tests.workers.conftest import Deployment, LoopThread, sha256, upload
from workers.app import create_app

pytestmark = pytest.mark.integration


def commit_kwargs(d: Deployment, repository: str, data: bytes) -> dict[str, Any]:
    upload_id = upload(d.registry, repository, data)
    return {"repository": repository, "upload_id": upload_id, "digest": sha256(data), "size": len(data)}


def unknown_upload() -> dict[str, Any]:
    """A commit the worker answers at once with BLOB_UPLOAD_UNKNOWN."""
    return {"repository": "channels/x", "upload_id": str(uuid.uuid4()), "digest": sha256(b"x"), "size": 1}


@pytest.fixture
def replicas(
    loop: LoopThread, redis_deployment: Deployment
) -> Iterator[tuple[CeleryJobClient, CeleryJobClient]]:
    settings = redis_deployment.settings
    pair = (CeleryJobClient(create_app(settings)), CeleryJobClient(create_app(settings)))
    yield pair
    for client in pair:
        loop.run(client.aclose())


def test_each_replica_reads_only_the_results_of_its_own_jobs(
    loop: LoopThread, replicas: tuple[CeleryJobClient, CeleryJobClient]
) -> None:
    first, second = replicas

    async def both() -> list[Any]:
        runs = [first.run(jobs.COMMIT_BLOB, 60, **unknown_upload()) for _ in range(5)]
        runs += [second.run(jobs.COMMIT_BLOB, 60, **unknown_upload()) for _ in range(3)]
        return await asyncio.gather(*runs, return_exceptions=True)

    results = loop.run(both())

    assert all(isinstance(r, BlobUploadUnknown) for r in results), results
    # With one pattern subscription to every result, each would have read all 8 (and
    # every other test's).
    assert (first.results_received, second.results_received) == (5, 3)


def test_a_job_sent_without_a_result_channel_is_awaited_through_pubsub(
    loop: LoopThread,
    redis_deployment: Deployment,
    replicas: tuple[CeleryJobClient, CeleryJobClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As beat, the CLI or an older API replica send it (Celery's send_task): the result is
    published on its key's name, which a waiting replica subscribes to for the wait."""
    monkeypatch.setattr(jobclient, "RECHECK", 3600.0)  # no re-read of the key: pub/sub only
    d = redis_deployment
    waiter = replicas[0]
    kwargs = commit_kwargs(d, "channels/sent", b"sent by send_task")
    job_id = str(uuid.uuid4())
    r = redis.Redis.from_url(d.settings.celery.result_backend or "")

    async def wait_then_send() -> dict[str, Any]:
        waiting = asyncio.ensure_future(waiter.wait(job_id, 60))
        while not dict(r.pubsub_numsub(f"celery-task-meta-{job_id}")).get(
            f"celery-task-meta-{job_id}".encode()
        ):
            assert not waiting.done(), waiting
            await asyncio.sleep(0.02)
        d.app.send_task(jobs.COMMIT_BLOB, kwargs=kwargs, task_id=job_id, queue=jobs.INGEST)
        return await waiting

    assert loop.run(wait_then_send()) == {"digest": kwargs["digest"], "size": kwargs["size"]}
    assert waiter.results_received == 1


def stored_with(r: redis.Redis, digest: str) -> bool:
    """A job result naming `digest` is stored."""
    for key in r.scan_iter("celery-task-meta-*"):
        raw = r.get(key)
        if raw is not None and digest.encode() in raw:
            return True
    return False


class CuttableProxy:
    """A TCP proxy to Redis whose connections can be cut: `cut()` closes them all and
    refuses new ones until `restore()`."""

    def __init__(self, port: int) -> None:
        self.upstream = ("127.0.0.1", port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = True
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if not self.open:
                conn.close()
                continue
            upstream = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_a_result_published_while_the_listener_is_cut_off_is_still_found(
    loop: LoopThread, redis_deployment: Deployment
) -> None:
    d = redis_deployment
    backend_url = d.settings.celery.result_backend or ""
    port = int(backend_url.rsplit(":", 1)[1].split("/", 1)[0])
    db = backend_url.rsplit("/", 1)[1]
    proxy = CuttableProxy(port)
    # The listener (pub/sub and its GETs) reaches Redis through the proxy; the job goes
    # to the broker and the worker stores its result directly.
    client = CeleryJobClient(create_app(d.settings), redis_url=f"redis://127.0.0.1:{proxy.port}/{db}")
    r = redis.Redis.from_url(backend_url)
    try:
        with pytest.raises(BlobUploadUnknown):  # the listener is subscribed
            loop.run(client.run(jobs.COMMIT_BLOB, 60, **unknown_upload()))
        kwargs = commit_kwargs(d, "channels/cut", b"published while cut off")
        proxy.cut()

        async def run_while_cut() -> dict[str, Any]:
            running = asyncio.ensure_future(client.run(jobs.COMMIT_BLOB, 60, **kwargs))
            # until its result is stored (and published on the replica's channel, to nobody)
            while not stored_with(r, kwargs["digest"]):
                assert not running.done(), running
                await asyncio.sleep(0.05)
            proxy.restore()
            return await running

        assert loop.run(run_while_cut()) == {"digest": kwargs["digest"], "size": kwargs["size"]}
    finally:
        loop.run(client.aclose())
        proxy.close()


def commands(r: redis.Redis) -> dict[str, int]:
    """The result reads and subscriptions Redis served since the last reset."""
    stats: dict[str, Any] = r.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    return {k: calls.get(k, 0) for k in ("mget", "subscribe", "unsubscribe", "psubscribe")}


def unsubscribed(r: redis.Redis, job_ids: list[str]) -> None:
    """Until no one subscribes to the channels of these jobs' keys (at most 10 s)."""
    keys = [f"celery-task-meta-{job_id}" for job_id in job_ids]
    deadline = time.monotonic() + 10
    while any(count for _, count in r.pubsub_numsub(*keys)):
        assert time.monotonic() < deadline, "the waits' subscriptions were left behind"
        time.sleep(0.02)


def test_the_waits_of_one_manifest_for_its_blobs_share_their_redis_commands(
    loop: LoopThread, own_redis: RedisServer
) -> None:
    """A batch-mode manifest PUT waits for each of its blobs' commit jobs at once: one
    MGET (and one SUBSCRIBE, one UNSUBSCRIBE) for all of them, not one per blob. No worker:
    the results are stored by the result backend as a worker's would be."""
    url = own_redis.url + "/0"
    app = create_app(
        Settings(
            storage=StorageSettings(driver="inmemory"),
            celery=CelerySettings(broker_url=url, result_backend=url),
        )
    )
    client = CeleryJobClient(app)
    r = redis.Redis.from_url(url)
    done, pending = [str(uuid.uuid4()) for _ in range(3)], [str(uuid.uuid4()) for _ in range(3)]
    for job_id in done:
        app.backend.mark_as_done(job_id, jobs.ok({"id": job_id}))
    app.backend.mark_as_done(str(uuid.uuid4()), jobs.ok())  # the store script is loaded
    try:
        r.config_resetstat()

        async def wait_all(ids: list[str]) -> list[dict[str, Any]]:
            return await asyncio.gather(*(client.wait(job_id, 30) for job_id in ids))

        ready = loop.run(wait_all(done))
        assert ready == [{"id": job_id} for job_id in done]
        assert commands(r) == {"mget": 1, "subscribe": 0, "unsubscribe": 0, "psubscribe": 0}

        warm = str(uuid.uuid4())
        with pytest.raises(JobTimeout):  # the listener subscribes to its own channel
            loop.run(client.wait(warm, 0.1))
        unsubscribed(r, [warm])

        r.config_resetstat()

        async def wait_then_store() -> list[dict[str, Any]]:
            waits = asyncio.gather(*(client.wait(job_id, 30) for job_id in pending))
            keys = [f"celery-task-meta-{job_id}".encode() for job_id in pending]
            while not all(dict(r.pubsub_numsub(*keys)).values()):
                await asyncio.sleep(0.02)
            for job_id in pending:  # a worker stores them (a thread: it blocks)
                await asyncio.to_thread(app.backend.mark_as_done, job_id, jobs.ok({"id": job_id}))
            return await waits

        assert loop.run(wait_then_store()) == [{"id": job_id} for job_id in pending]
        unsubscribed(r, pending)
        # each wait: a read before subscribing, SUBSCRIBE, a read again (a result stored
        # in between): shared by the three. UNSUBSCRIBE as each one ends.
        calls = commands(r)
        assert calls["mget"] == 2 and calls["subscribe"] == 1 and calls["psubscribe"] == 0, calls
        assert 1 <= calls["unsubscribe"] <= 3, calls
    finally:
        loop.run(client.aclose())
        app.close()
