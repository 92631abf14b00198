"""The commit flow with RabbitMQ as the broker and Redis as the result backend: a real
Celery worker (threads pool, in this process) consuming from RabbitMQ on 127.0.0.1:5672.

The module creates a virtual host of its own with `rabbitmqctl` (a fresh name per run, so
it never consumes another suite's jobs nor depends on anything made by hand) and deletes it
at the end. Without `rabbitmqctl` or a RabbitMQ on 5672 the tests fail, never skip."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest

from api.jobclient import CeleryJobClient
from pipeline import jobs
from pipeline.config import CelerySettings, Settings, StorageSettings
from pipeline.errors import DigestInvalid
from pipeline.formats.digest import Digest
from pipeline.registry import build_registry
from tests.workers.conftest import REDIS_URL, LoopThread, require_redis, sha256, upload
from workers.app import create_app
from workers.embedded import EmbeddedWorker, start_embedded_worker

pytestmark = pytest.mark.integration


def amqp_url(vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


def rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.fail("these tests need rabbitmqctl (apt rabbitmq-server) to create their virtual host")
    done = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")


@pytest.fixture(scope="module")
def vhost_url() -> Iterator[str]:
    """A virtual host of this module's own, with guest allowed on it."""
    vhost = f"lading-test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        url = amqp_url(vhost)
        with kombu.Connection(url, connect_timeout=5) as connection:
            connection.ensure_connection(max_retries=3)
        yield url
    finally:
        rabbitmqctl("delete_vhost", vhost)


class Rabbit:
    def __init__(self, root: Path, broker: str) -> None:
        require_redis(REDIS_URL)
        self.settings = Settings(
            storage=StorageSettings(driver="filesystem", root=str(root)),
            celery=CelerySettings(broker_url=broker, result_backend=REDIS_URL),
        )
        self.app = create_app(self.settings)
        self.client = CeleryJobClient(self.app)
        self.registry = build_registry(self.settings)


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory: pytest.TempPathFactory, loop: LoopThread, vhost_url: str) -> Iterator[Rabbit]:
    r = Rabbit(tmp_path_factory.mktemp("rabbit"), vhost_url)
    worker: EmbeddedWorker = start_embedded_worker(r.app, concurrency=2)
    yield r
    worker.stop()
    loop.run(r.client.aclose())


def test_commit_through_rabbitmq(loop: LoopThread, rabbit: Rabbit) -> None:
    assert rabbit.client.uses_pubsub  # results come back through Redis pub/sub
    data = b"via amqp" * 1000
    upload_id = upload(rabbit.registry, "amqp/app", data, chunks=4)
    value = loop.run(
        rabbit.client.run(
            jobs.COMMIT_BLOB,
            30,
            repository="amqp/app",
            upload_id=upload_id,
            digest=sha256(data),
            size=len(data),
        )
    )
    assert value == {"digest": sha256(data), "size": len(data)}
    assert rabbit.registry.blobs.get(Digest.parse(sha256(data))) == data
    assert rabbit.registry.repo_blobs.is_linked("amqp/app", Digest.parse(sha256(data)))


def test_digest_mismatch_through_rabbitmq(loop: LoopThread, rabbit: Rabbit) -> None:
    upload_id = upload(rabbit.registry, "amqp/app", b"actual")
    with pytest.raises(DigestInvalid):
        loop.run(
            rabbit.client.run(
                jobs.COMMIT_BLOB,
                30,
                repository="amqp/app",
                upload_id=upload_id,
                digest=sha256(b"claimed"),
                size=6,
            )
        )
    assert not rabbit.registry.blobs.exists(Digest.parse(sha256(b"actual")))
