"""Webhook notifications through a real `celery worker` process (prefork, Redis DB 10): every
event reaches a real HTTP receiver at least once with its stable id; an endpoint that is down
gets the events after it comes back (retries with backoff); and retries live in the broker,
so a worker SIGKILLed between two attempts and started again still delivers.

The config file sets a 5 s Redis visibility timeout (via `celery:` extra keys): a retry
waiting for its countdown is an unacknowledged message held by the worker, and after the
worker dies Redis hands it to the next worker only once that timeout has passed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from pipeline import events, jobs
from tests.pipeline.maintenance.webhook import Receiver, free_port
from tests.support import redis_server
from tests.workers.conftest import Deployment, LoopThread, WorkerProcess, flush, require_redis, settings_from

pytestmark = pytest.mark.integration

REDIS_URL = redis_server.url(10)
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
WAIT = 180.0  # bound on any delivery wait; backoff countdowns here stay well below it


def write_config(path: Path, root: Path, hook_url: str) -> Path:
    transport = {"visibility_timeout": 5, "unacked_restore_interval": 1, "unacked_restore_throttle": 1}
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(root)}},
        "notifications": {
            "endpoints": [
                {"name": "hook", "url": hook_url, "timeout": "2s", "headers": {"X-Lading-Test": ["yes"]}},
                {"name": "quiet", "url": hook_url, "ignore": {"actions": list(events.ACTIONS)}},
            ]
        },
        "celery": {
            "broker_url": REDIS_URL,
            "result_backend": REDIS_URL,
            "broker_transport_options": transport,
            "result_backend_transport_options": {"visibility_timeout": 5},
            # Countdowns capped at 4 s (production: 10 min): under load the first jobs retry
            # several times while the last fails once, and an uncapped countdown of minutes
            # would outlast WAIT after the restart, though nothing was lost.
            "task_annotations": {jobs.NOTIFY_EVENT: {"retry_backoff_max": 4}},
        },
    }
    path.write_text(yaml.safe_dump(config))
    return path


class Setup:
    def __init__(self, base: Path, deployment: Deployment, receiver: Receiver, config: Path) -> None:
        self.base = base
        self.d = deployment
        self.receiver = receiver
        self.config = config
        self.workers = 1

    def restart_worker(self) -> None:
        self.workers += 1
        self.d.worker = WorkerProcess(self.config, self.base / f"worker{self.workers}.log")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, loop: LoopThread) -> Iterator[Setup]:
    require_redis(REDIS_URL)
    flush(REDIS_URL)
    base = tmp_path_factory.mktemp("notify")
    (base / "root").mkdir()
    receiver = Receiver(free_port()).start()
    config = write_config(base / "config.yml", base / "root", receiver.url)
    worker = WorkerProcess(config, base / "worker1.log")
    s = Setup(base, Deployment(settings_from(config), worker), receiver, config)
    yield s
    loop.run(s.d.client.aclose())
    s.d.worker.stop()
    receiver.stop()
    flush(REDIS_URL)


def emit(s: Setup, n: int, tag: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """What the API does after n pushes: build each event, send one NOTIFY_EVENT job per
    endpoint that wants it. Returns (sent events by id, job ids)."""
    sent: dict[str, dict[str, Any]] = {}
    job_ids = []
    for i in range(n):
        target = {
            "mediaType": MANIFEST,
            "digest": "sha256:" + f"{i:064x}",
            "size": 100 + i,
            "tag": f"{tag}{i}",
            "url": f"http://registry.test/v2/app/manifests/{tag}{i}",
        }
        request = {"id": f"req-{tag}-{i}", "addr": "127.0.0.1:4000", "host": "reg.test", "method": "PUT"}
        for endpoint, envelope in events.events_for(s.d.settings, "push", "app", target, request, "alice"):
            assert endpoint == "hook"  # "quiet" ignores every action
            sent[envelope["events"][0]["id"]] = envelope["events"][0]
            job_ids.append(s.d.client.send(jobs.NOTIFY_EVENT, endpoint=endpoint, envelope=envelope))
    return sent, job_ids


def wait_for_retries(s: Setup, job_ids: list[str], timeout: float = 60.0) -> None:
    """Until every job has failed at least one attempt and is waiting for its retry: the
    result backend holds state RETRY for it (what Flower and `AsyncResult` show too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {job_id: s.d.app.AsyncResult(job_id).state for job_id in job_ids}
        if all(state == "RETRY" for state in states.values()):
            return
        time.sleep(0.2)
    pytest.fail(f"not every delivery was retried within {timeout}s: {states}")


def wait_until_held_by_the_broker(job_ids: list[str], timeout: float = 60.0) -> None:
    """Until each job's pending retry is stored in Redis: waiting in a queue, or delivered
    and recorded as unacknowledged. kombu's Redis transport takes a message off its queue
    (BRPOP) and only then records it as unacknowledged (a second round trip): a worker
    SIGKILLed between the two loses that message, which no Redis broker setting prevents.
    Killing the worker while a retry is stored somewhere is what "retries survive a killed
    worker" promises; killing it in that in-flight instant tests kombu's window instead."""
    client = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + timeout
    missing = set(job_ids)
    while time.monotonic() < deadline:
        stored = b"".join(client.hvals("unacked"))
        for key in client.scan_iter(_type="list"):
            stored += b"".join(client.lrange(key, 0, -1))
        missing = {job_id for job_id in job_ids if job_id.encode() not in stored}
        if not missing:
            return
        time.sleep(0.05)
    pytest.fail(f"retries of {sorted(missing)} were never stored in Redis within {timeout}s")


def assert_delivered(s: Setup, sent: dict[str, dict[str, Any]]) -> None:
    missing = s.receiver.wait_for(set(sent), WAIT)
    assert not missing, f"{len(missing)} of {len(sent)} events never arrived"
    received = {e["id"]: e for e in s.receiver.accepted_events() if e["id"] in sent}
    assert received == sent  # the same event, byte for byte in JSON terms, on every attempt
    for request in s.receiver.requests:
        assert request["headers"]["Content-Type"] == events.EVENTS_MEDIA_TYPE
        assert request["headers"]["X-Lading-Test"] == "yes"


def test_every_event_arrives_with_its_stable_id(setup: Setup) -> None:
    sent, _ = emit(setup, 30, "up")
    assert len(sent) == 30
    assert_delivered(setup, sent)


def test_an_endpoint_down_for_a_while_gets_the_events_when_it_is_back(setup: Setup) -> None:
    setup.receiver.stop()
    sent, job_ids = emit(setup, 5, "down")
    wait_for_retries(setup, job_ids)
    assert not any(e["id"] in sent for e in setup.receiver.accepted_events())
    setup.receiver.start()
    assert_delivered(setup, sent)


def test_retries_survive_a_worker_killed_between_attempts(setup: Setup) -> None:
    setup.receiver.stop()
    sent, job_ids = emit(setup, 5, "killed")
    wait_for_retries(setup, job_ids)
    wait_until_held_by_the_broker(job_ids)
    setup.d.worker.kill()  # SIGKILL the worker and its pool: the pending retries die with it…
    assert setup.d.worker.proc.poll() is not None  # no worker runs now: nothing can deliver
    setup.receiver.start()
    assert not any(e["id"] in sent for e in setup.receiver.accepted_events())
    setup.restart_worker()  # …but they are in Redis, and the new worker delivers them
    assert_delivered(setup, sent)
