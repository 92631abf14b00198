"""The commit flow with RabbitMQ as the broker and Redis as the result backend: a real
Celery worker (threads pool, in this process) consuming from RabbitMQ on 127.0.0.1:5672.

The tests use their own virtual host (created with rabbitmqctl when it is missing) so they
never consume another suite's jobs; without rabbitmqctl they fall back to "/"."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest
from kombu.exceptions import OperationalError

from api.jobclient import CeleryJobClient
from pipeline import jobs
from pipeline.digest import Digest
from pipeline.errors import DigestInvalid
from pipeline.registry import Registry
from pipeline.settings import CelerySettings, Settings, StorageSettings
from tests.workers.conftest import REDIS_URL, LoopThread, require_redis, sha256, upload
from workers.app import create_app
from workers.embedded import EmbeddedWorker, start_embedded_worker

pytestmark = pytest.mark.integration

VHOST = "lading-workers-test"


def amqp_url(vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


def reachable(url: str) -> bool:
    try:
        with kombu.Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
        return True
    except (OperationalError, OSError):
        return False


def broker() -> str:
    if reachable(amqp_url(VHOST)):
        return amqp_url(VHOST)
    ctl = shutil.which("rabbitmqctl")
    if ctl:
        subprocess.run([ctl, "add_vhost", VHOST], capture_output=True, timeout=60)
        subprocess.run([ctl, "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
                       capture_output=True, timeout=60)
        if reachable(amqp_url(VHOST)):
            return amqp_url(VHOST)
    if reachable(amqp_url("")):
        return amqp_url("")
    pytest.fail("these tests need RabbitMQ on 127.0.0.1:5672 (guest/guest)")


class Rabbit:
    def __init__(self, root: Path) -> None:
        require_redis(REDIS_URL)
        self.settings = Settings(
            storage=StorageSettings(driver="filesystem", root=str(root)),
            celery=CelerySettings(broker_url=broker(), result_backend=REDIS_URL),
        )
        self.app = create_app(self.settings)
        self.client = CeleryJobClient(self.app)
        self.registry = Registry.from_settings(self.settings)


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory, loop: LoopThread) -> Iterator[Rabbit]:
    r = Rabbit(tmp_path_factory.mktemp("rabbit"))
    worker: EmbeddedWorker = start_embedded_worker(r.app, concurrency=2)
    yield r
    worker.stop()
    loop.run(r.client.aclose())


def test_commit_through_rabbitmq(loop: LoopThread, rabbit: Rabbit) -> None:
    assert rabbit.client.uses_pubsub  # results come back through Redis pub/sub
    data = b"via amqp" * 1000
    upload_id = upload(rabbit.registry, "amqp/app", data, chunks=4)
    value = loop.run(rabbit.client.run(jobs.COMMIT_BLOB, 30, repository="amqp/app", upload_id=upload_id,
                                       digest=sha256(data), size=len(data)))
    assert value == {"digest": sha256(data), "size": len(data)}
    assert rabbit.registry.blobs.get(Digest.parse(sha256(data))) == data
    assert rabbit.registry.repo_blobs.is_linked("amqp/app", Digest.parse(sha256(data)))


def test_digest_mismatch_through_rabbitmq(loop: LoopThread, rabbit: Rabbit) -> None:
    upload_id = upload(rabbit.registry, "amqp/app", b"actual")
    with pytest.raises(DigestInvalid):
        loop.run(rabbit.client.run(jobs.COMMIT_BLOB, 30, repository="amqp/app", upload_id=upload_id,
                                   digest=sha256(b"claimed"), size=6))
    assert not rabbit.registry.blobs.exists(Digest.parse(sha256(b"actual")))
