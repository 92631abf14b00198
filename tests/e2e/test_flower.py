"""Watching a push in Flower and in the registry's metrics, scaled out on a real Redis.

`lading serve CONFIG` (API only, Redis broker), a separate `lading worker` and
`celery -A lading.celery_app flower` all read the same config file (LADING_CONFIG). Task
events are off by default; Flower, started AFTER the worker, turns them on by broadcasting
`enable_events` (the worker logs it). Once it has, skopeo pushes and Flower records every job
of the push: one `lading.commit_blob` per layer and config digest and one
`lading.commit_manifest`, all SUCCESS. The registry's `/metrics` counts at least the image's
bytes as pushed.
"""

from __future__ import annotations

import ast
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.lading.procs import Running, process_env
from tests.support import redis_server, skopeo
from tests.support.flower import start_flower, start_worker_and_api
from tests.support.images import make_image, write_oci_layout
from tests.support.net import free_port

pytestmark = pytest.mark.e2e

REDIS_DB = 26  # this test's own database on the shared Redis, flushed first
BROKER = redis_server.url(REDIS_DB)
FLOWER_AUTH = ("flower-user", "flower-pass")

T = TypeVar("T")


@dataclass
class Cluster:
    registry: str  # host:port
    flower: str  # http://host:port
    server: Running
    worker: Running
    flower_proc: Running


def poll(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, procs: tuple[Running, ...] = ()
) -> T:
    """`probe()`'s first truthy result; fail after `timeout` s or when one of `procs` died."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.proc.poll() is None, f"{proc.proc.args!r} exited before {what}:\n{proc.output}"
        last = probe()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"no {what} within {timeout}s; last seen: {last!r}")


def flower_get(flower: str, path: str, **params: Any) -> Any:
    response = httpx.get(f"{flower}{path}", params=params, auth=FLOWER_AUTH, timeout=10)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("flower")
    redis.Redis.from_url(BROKER).flushdb()
    port, flower_port = free_port(), free_port()
    config = tmp / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "info"},
                "storage": {"filesystem": {"rootdirectory": str(tmp / "root")}},
                "http": {"addr": f"127.0.0.1:{port}"},
                "celery": {"broker_url": BROKER, "result_backend": BROKER},
            }
        )
    )
    env = process_env(LADING_CONFIG=str(config))
    flower = f"http://127.0.0.1:{flower_port}"
    with ExitStack() as stack:
        worker, server = start_worker_and_api(stack, config, env, tmp, port, "e2e-flower@%h")
        # Flower comes last: the worker runs with task events off until Flower enables them.
        assert "enabled by remote" not in worker.output
        flower_proc = start_flower(stack, flower_port, FLOWER_AUTH, env, tmp)
        # Celery logs "Events of group {task} enabled by remote." on Flower's broadcast.
        worker.wait_for(r"Events of group \{task\} enabled by remote", timeout=60)
        # Flower only records the tasks of workers it is already listening to.
        poll(
            "worker online in Flower",
            lambda: [
                name
                for name, info in flower_get(flower, "/api/workers", refresh="true").items()
                if name.startswith("e2e-flower@")
            ],
            timeout=60,
            procs=(flower_proc, worker, server),
        )
        yield Cluster(f"127.0.0.1:{port}", flower, server, worker, flower_proc)


def kwargs_of(task: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments Flower shows for a task. Celery sends their saferepr, which
    shortens long values (a manifest's body) but stays a Python literal."""
    raw = task.get("kwargs") or "{}"
    try:
        value = ast.literal_eval(raw) if isinstance(raw, str) else raw
    except (ValueError, SyntaxError):
        return {}
    return value if isinstance(value, dict) else {}


def tasks_for(flower: str, name: str, repository: str) -> list[dict[str, Any]]:
    tasks = flower_get(flower, "/api/tasks", taskname=name, limit=1000)
    return [t for t in tasks.values() if kwargs_of(t).get("repository") == repository]


def test_flower_shows_every_commit_of_a_push_and_metrics_count_its_bytes(
    cluster: Cluster, tmp_path: Path
) -> None:
    image = make_image([3000, 150_000, 1_200_000])
    layout = write_oci_layout(image, tmp_path / "src", tag="v1")
    repository = f"flower/{uuid.uuid4().hex[:8]}"
    skopeo.copy(f"oci:{layout}:v1", f"docker://{cluster.registry}/{repository}:v1")

    blob_digests = {layer.digest for layer in image.layers} | {image.config_digest}
    procs = (cluster.flower_proc, cluster.worker, cluster.server)

    def blob_commits() -> list[dict[str, Any]] | None:
        tasks = tasks_for(cluster.flower, "lading.commit_blob", repository)
        done = [t for t in tasks if t["state"] == "SUCCESS"]
        return done if {kwargs_of(t)["digest"] for t in done} >= blob_digests else None

    def manifest_commits() -> list[dict[str, Any]] | None:
        tasks = tasks_for(cluster.flower, "lading.commit_manifest", repository)
        return [t for t in tasks if t["state"] == "SUCCESS"] or None

    blobs = poll("blob commits in Flower", blob_commits, procs=procs)
    assert sorted(kwargs_of(t)["digest"] for t in blobs) == sorted(blob_digests)  # one commit per digest
    assert all(t["worker"].startswith("e2e-flower@") for t in blobs)
    assert all("'ok': True" in str(t["result"]) for t in blobs)

    manifests = poll("manifest commit in Flower", manifest_commits, procs=procs)
    assert len(manifests) == 1
    assert kwargs_of(manifests[0])["reference"] == "v1"
    assert "'ok': True" in str(manifests[0]["result"])
    assert image.manifest_digest in str(manifests[0]["result"])

    workers = flower_get(cluster.flower, "/api/workers")
    assert any(name.startswith("e2e-flower@") for name in workers)

    metrics = httpx.get(f"http://{cluster.registry}/metrics", timeout=10).text
    pushed = sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "lading_bytes_pushed_total"
    )
    assert pushed >= sum(len(data) for data in image.blobs.values())
