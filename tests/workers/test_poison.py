"""A job that kills its own process is not redelivered forever: after MAX_DELIVERIES starts
it is parked where an operator sees it (`lading jobs dead`), its waiting client fails
cleanly, and `lading jobs retry|drop` send it again or forget it. Real Redis (DB 20), a
real prefork worker whose pool process the job SIGKILLs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api.jobclient import CeleryJobClient
from api.metrics import Metrics, RedisQueueDepth
from pipeline.config import load_settings
from pipeline.errors import JobFailed
from pipeline.stores.deadletter import MAX_DELIVERIES, DeadLetters
from tests.support import redis_server
from tests.support.cluster import Cluster, Proc
from tests.support.lading import lading_command
from tests.support.poison_app import POISON
from tests.workers.conftest import REPO_ROOT, LoopThread
from workers.app import create_app

pytestmark = pytest.mark.integration

URL = redis_server.url(20)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    client = redis.Redis.from_url(URL)
    client.flushdb()
    cluster = Cluster(tmp_path, URL)
    yield cluster
    cluster.close()
    client.flushdb()
    client.close()


def lading(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*lading_command(), "jobs", *args, str(cluster.config)],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def wait_parked(letters: DeadLetters, job_id: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while letters.get(job_id) is None:
        assert time.monotonic() < deadline, f"job {job_id} was not parked within {timeout}s"
        time.sleep(0.2)


def test_a_job_that_kills_its_process_is_parked_and_its_client_fails_cleanly(
    cluster: Cluster, loop: LoopThread
) -> None:
    worker = Proc(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.support.poison_app",
            "worker",
            "-P",
            "prefork",
            "-c",
            "1",
            "-Q",
            "verify",
            "-n",
            "poison@localhost",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
        ],
        cluster.env(PYTHONPATH=str(REPO_ROOT)),
        cluster.workdir / "poison-worker.log",
    )
    cluster.procs.append(worker)
    worker.wait_for_line(" ready.")
    app = create_app(load_settings(str(cluster.config), {}))
    client = CeleryJobClient(app)
    letters = DeadLetters(redis.Redis.from_url(URL))
    try:
        job_id = app.send_task(POISON, kwargs={"repository": "poison/x"}, queue="verify").id
        started = time.monotonic()
        with pytest.raises(JobFailed) as failed:
            loop.run(client.wait(job_id, 120), timeout=130)
        print(f"poison job parked after {time.monotonic() - started:.1f}s")
        assert failed.value.detail["job_id"] == job_id
        assert "Traceback" not in str(failed.value.detail)
        parked = letters.get(job_id)
        assert parked is not None
        assert parked.name == POISON and parked.deliveries == MAX_DELIVERIES
        assert parked.kwargs == {"repository": "poison/x"}
        assert "died" in parked.last_error
        assert worker.alive()  # the worker itself lives on, and stops running the job
        metrics = Metrics()
        metrics.registry.register(RedisQueueDepth(URL))
        assert "lading_jobs_dead 1.0" in metrics.exposition().decode()

        listed = lading(cluster, "dead", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [job["job_id"] for job in json.loads(listed.stdout)] == [job_id]

        retried = lading(cluster, "retry", job_id)
        assert retried.returncode == 0, retried.stderr
        new_id = retried.stdout.split()[-1]
        assert letters.get(job_id) is None
        wait_parked(letters, new_id)  # sent again, and parked again: it still kills its process

        dropped = lading(cluster, "drop", new_id)
        assert dropped.returncode == 0, dropped.stderr
        assert letters.list() == []
        missing = lading(cluster, "drop", new_id)
        assert missing.returncode == 1 and new_id in missing.stderr
    finally:
        loop.run(client.aclose())
        app.close()
