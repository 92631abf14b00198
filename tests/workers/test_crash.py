"""A worker killed in the middle of a commit loses nothing: the job is delivered again and
completes, the upload survives until then, and no partial blob or link appears.

Two crashes, both with SIGKILL while the pool process is hashing a 256 MiB upload:
1. only the pool process dies: `reject_on_worker_lost` re-queues the job at once;
2. the whole worker dies (main process and pool, a lost machine): the job stays
   unacknowledged in Redis and is re-queued once the visibility timeout passes (4 s here,
   via `celery:` extra keys in the config file) by the worker started in its place.
The API side keeps waiting on the original job id throughout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pipeline import jobs
from pipeline.errors import BlobUploadUnknown
from pipeline.formats.digest import Digest
from tests.support import redis_server
from tests.workers.conftest import (
    Deployment,
    LoopThread,
    WorkerProcess,
    flush,
    require_redis,
    settings_from,
    write_config,
)

pytestmark = pytest.mark.integration

REDIS_URL = redis_server.url(8)
SIZE = 256 * 1024 * 1024
CHUNK = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def crash_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    require_redis(REDIS_URL)
    flush(REDIS_URL)
    base = tmp_path_factory.mktemp("crash")
    (base / "root").mkdir()
    config = write_config(
        base / "config.yml",
        base / "root",
        REDIS_URL,
        REDIS_URL,
        broker_transport_options={
            "visibility_timeout": 4,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    )
    yield config, base
    flush(REDIS_URL)
    shutil.rmtree(base / "root", ignore_errors=True)  # half a gigabyte of uploads


def big_upload(d: Deployment, repository: str) -> tuple[str, str]:
    """(upload id, digest) of a SIZE-byte upload written in CHUNK pieces."""
    status = d.registry.uploads.create(repository)
    hasher = hashlib.sha256()
    with d.registry.uploads.open_append(repository, status.upload_id, 0) as writer:
        for _ in range(SIZE // CHUNK):
            chunk = os.urandom(CHUNK)
            hasher.update(chunk)
            writer.write(chunk)
        writer.commit()
    return status.upload_id, "sha256:" + hasher.hexdigest()


def kill_while_hashing(worker: WorkerProcess, kill: str) -> None:
    """Wait until the pool process has read a quarter of the upload, then SIGKILL it
    (kill="pool") or the whole worker (kill="worker"); fail unless it was mid-read."""
    (pid,) = worker.pool_pids()
    process = psutil.Process(pid)
    start = process.io_counters().read_chars
    deadline = time.monotonic() + 60
    while (done := process.io_counters().read_chars - start) < SIZE // 4:
        assert time.monotonic() < deadline, "the commit never started reading the upload"
        time.sleep(0.002)
    if kill == "pool":
        os.kill(pid, signal.SIGKILL)
    else:
        worker.kill()
    assert done < SIZE, "the commit had already read the whole upload: the kill came too late"


def assert_nothing_lost(d: Deployment, repository: str, upload_id: str, digest: str) -> None:
    assert d.registry.uploads.status(repository, upload_id).size == SIZE
    assert not d.registry.repo_blobs.is_linked(repository, Digest.parse(digest))


def assert_committed(d: Deployment, repository: str, upload_id: str, digest: str) -> None:
    hasher = hashlib.sha256()
    with d.registry.blobs.open(Digest.parse(digest)) as stream:
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
    assert "sha256:" + hasher.hexdigest() == digest
    assert d.registry.repo_blobs.is_linked(repository, Digest.parse(digest))
    with pytest.raises(BlobUploadUnknown):
        d.registry.uploads.status(repository, upload_id)


def test_commit_survives_its_pool_process_and_then_its_whole_worker_being_killed(
    loop: LoopThread, crash_setup: tuple[Path, Path]
) -> None:
    config, base = crash_setup
    worker = WorkerProcess(config, base / "worker-1.log", concurrency=1)
    d = Deployment(settings_from(config), worker)
    replacement: WorkerProcess | None = None
    try:
        # 1. the pool process dies; the worker lives on and gets the job back at once
        upload_id, digest = big_upload(d, "crash/pool")
        job_id = d.client.send(
            jobs.COMMIT_BLOB, repository="crash/pool", upload_id=upload_id, digest=digest, size=SIZE
        )
        kill_while_hashing(worker, "pool")
        assert_nothing_lost(d, "crash/pool", upload_id, digest)
        assert loop.run(d.client.wait(job_id, 120)) == {"digest": digest, "size": SIZE}
        assert_committed(d, "crash/pool", upload_id, digest)

        # 2. the whole worker dies; a new one takes the job over after the visibility timeout
        upload_id, digest = big_upload(d, "crash/worker")
        job_id = d.client.send(
            jobs.COMMIT_BLOB, repository="crash/worker", upload_id=upload_id, digest=digest, size=SIZE
        )
        kill_while_hashing(worker, "worker")
        assert_nothing_lost(d, "crash/worker", upload_id, digest)
        replacement = WorkerProcess(config, base / "worker-2.log", concurrency=1)
        assert loop.run(d.client.wait(job_id, 120)) == {"digest": digest, "size": SIZE}
        assert_committed(d, "crash/worker", upload_id, digest)
    finally:
        loop.run(d.client.aclose())
        worker.stop()
        if replacement is not None:
            replacement.stop()
