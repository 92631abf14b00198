"""Workers run only job messages the API or beat signed (`lading.signing`).

Scaled out on a real Redis: `lading worker` and `lading serve` with the signing key, and
Flower (`celery -A lading.celery_app flower`) with the certificate but without the key.
skopeo pushes through the API (signed jobs: they run). Then, as an attacker who reaches
Flower or the broker would: Flower's `send-task` asks for `lading.commit_manifest` of a
new tag, and a plain Celery client sends the same job unsigned straight to the broker.
Neither creates the tag; the worker logs that it refused the unsigned message.

Before: Flower's send-task (with Flower's basic-auth credentials) created a tag, and so did
anyone who could write to the broker.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from celery import Celery

from lading.signing import write_signing_key
from pipeline import jobs
from tests.lading.procs import Running, process_env
from tests.support import redis_server, skopeo
from tests.support.flower import start_flower, start_worker_and_api
from tests.support.images import Image, make_image, write_oci_layout
from tests.support.net import free_port

pytestmark = pytest.mark.e2e

REDIS_DB = 22
BROKER = redis_server.url(REDIS_DB)
FLOWER_AUTH = ("flower-user", "flower-pass")
REPO = "signed/app"


@dataclass
class Cluster:
    registry: str
    flower: str
    worker: Running
    image: Image


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("signed")
    redis.Redis.from_url(BROKER).flushdb()
    key, cert = write_signing_key(tmp / "signing")
    port, flower_port = free_port(), free_port()
    config = tmp / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "storage": {"filesystem": {"rootdirectory": str(tmp / "root")}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "celery": {"broker_url": BROKER, "result_backend": BROKER},
                "lading": {"signing": {"key": str(key), "certificate": str(cert)}},
            }
        )
    )
    env = process_env(LADING_CONFIG=str(config))
    flower_env = process_env(LADING_CONFIG=str(config), REGISTRY_LADING_SIGNING_KEY="")  # no key
    flower = f"http://127.0.0.1:{flower_port}"
    with ExitStack() as stack:
        worker, _ = start_worker_and_api(stack, config, env, tmp, port, "e2e-signed@%h")
        start_flower(stack, flower_port, FLOWER_AUTH, flower_env, tmp)

        image = make_image([3000, 20_000])
        layout = write_oci_layout(image, tmp / "src", tag="v1")
        # Signed jobs from the API: the push commits every blob and the manifest.
        skopeo.copy(f"oci:{layout}:v1", f"docker://127.0.0.1:{port}/{REPO}:v1")
        yield Cluster(f"127.0.0.1:{port}", flower, worker, image)


def tag_exists(cluster: Cluster, tag: str) -> bool:
    r = httpx.head(f"http://{cluster.registry}/v2/{REPO}/manifests/{tag}", timeout=10)
    assert r.status_code in (200, 404), r.status_code
    return r.status_code == 200


def commit_kwargs(cluster: Cluster, tag: str) -> dict[str, str]:
    return {
        "repository": REPO,
        "reference": tag,
        "body_b64": base64.b64encode(cluster.image.manifest).decode(),
        "media_type": "application/vnd.oci.image.manifest.v1+json",
    }


def test_signed_jobs_from_the_api_run(cluster: Cluster) -> None:
    assert tag_exists(cluster, "v1")


def test_flower_without_the_key_cannot_create_a_tag(cluster: Cluster) -> None:
    refusals = cluster.worker.output.count("untrusted content")
    tag = f"flower-{uuid.uuid4().hex[:8]}"
    r = httpx.post(
        f"{cluster.flower}/api/task/send-task/{jobs.COMMIT_MANIFEST}",
        json={"kwargs": commit_kwargs(cluster, tag), "queue": jobs.VERIFY},
        auth=FLOWER_AUTH,
        timeout=30,
    )
    if r.status_code == 200:
        # Flower published it (unsigned): the worker must refuse it.
        deadline = time.monotonic() + 30
        while cluster.worker.output.count("untrusted content") <= refusals:
            assert time.monotonic() < deadline, cluster.worker.output[-3000:]
            time.sleep(0.1)
    assert not tag_exists(cluster, tag)


def test_an_unsigned_job_sent_to_the_broker_is_refused(cluster: Cluster) -> None:
    refusals = cluster.worker.output.count("untrusted content")
    tag = f"forged-{uuid.uuid4().hex[:8]}"
    intruder = Celery("intruder", broker=BROKER, set_as_current=False)
    intruder.conf.update(task_serializer="json", accept_content=["json"])
    try:
        intruder.send_task(
            jobs.COMMIT_MANIFEST,
            kwargs=commit_kwargs(cluster, tag),
            queue=jobs.VERIFY,
            routing_key=jobs.VERIFY,
        )
        deadline = time.monotonic() + 30
        while cluster.worker.output.count("untrusted content") <= refusals:
            assert time.monotonic() < deadline, cluster.worker.output[-3000:]
            time.sleep(0.1)
    finally:
        intruder.close()
    assert not tag_exists(cluster, tag)
    # The registry still works: a signed push after the refusal.
    assert tag_exists(cluster, "v1")


def test_compose_publishes_flower_on_loopback_only() -> None:
    from tests.lading.procs import REPO

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    ports = compose["services"]["flower"]["ports"]
    assert ports and all(str(p).startswith("127.0.0.1:") for p in ports), ports


def test_signing_that_cannot_be_set_up_stops_start_up(tmp_path: Path) -> None:
    from pipeline.config import load_settings
    from pipeline.errors import ConfigurationError
    from workers.app import create_app

    key, cert = write_signing_key(tmp_path / "k")
    base = {"celery": {"broker_url": BROKER, "result_backend": BROKER}}
    for signing, message in (
        ({"key": str(tmp_path / "absent.pem"), "certificate": str(cert)}, "lading.signing"),
        ({"key": str(key)}, "lading.signing.certificate"),
    ):
        path = tmp_path / "config.yml"
        path.write_text(yaml.safe_dump({**base, "lading": {"signing": signing}}))
        with pytest.raises(ConfigurationError, match=message.replace(".", r"\.")):
            create_app(load_settings(str(path), {}))
