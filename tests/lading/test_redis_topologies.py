"""Every Redis spelling pipeline.infra.coordination accepts runs a real deployment: a private
`redis-server` on a unix socket, and a real Redis Sentinel (`redis-server --sentinel`)
in front of a Redis. `lading serve` and `lading worker` run as processes on each, an image
is pushed and pulled through them, and their locks live in that Redis (`lading gc` from the
CLI shares them)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.infra.coordination import LOCK_CLIENT_PREFIX
from tests.lading.procs import lading_command
from tests.lading.scaled import Deployment, assert_pullable, deployment, push_image, random_image, sha256
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose unix socket path stays under the 107-byte limit."""
    with tempfile.TemporaryDirectory(prefix="lading-") as tmp:
        yield Path(tmp)


def push_pull_and_collect(d: Deployment, client: redis.Redis) -> None:
    image, deleted = random_image("topology/app", "v1", layers=2), random_image("topology/app", "v2")
    with d.client() as http:
        push_image(http, image)
        push_image(http, deleted)
        r = http.delete(f"/v2/topology/app/manifests/{sha256(deleted.body)}")  # under the lock
        assert r.status_code == 202, r.text
        assert_pullable(http, image)
        # /healthz PINGs the broker and /metrics reads its queue lengths: same Redis.
        health = http.get("/healthz")
        assert health.status_code == 200 and health.json()["checks"]["broker"]["ok"], health.text
        assert 'lading_queue_depth{queue="ingest"}' in http.get("/metrics").text
    # The API and the worker keep their locks in this Redis: both have a named lock
    # connection (the API's from the DELETE, the worker's from the commits).
    names = {str(c.get("name", "")) for c in client.client_list()}
    assert f"{LOCK_CLIENT_PREFIX}{d.worker.proc.pid}" in names
    assert f"{LOCK_CLIENT_PREFIX}{d.server.proc.pid}" in names
    run = subprocess.run(
        [*lading_command(), "gc", str(d.config), "--json"],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    assert result["repositories"] == 1 and not result.get("sweep_skipped")


def test_a_redis_on_a_unix_socket(short_dir: Path, tmp_path: Path) -> None:
    sock = str(short_dir / "redis.sock")
    server = RedisServer(str(short_dir), unixsocket=sock)
    try:
        url = f"unix://{sock}?db=3"
        with deployment(tmp_path, {"broker_url": url, "result_backend": url}) as d:
            push_pull_and_collect(d, redis.Redis(unix_socket_path=sock, db=3))
    finally:
        server.stop()


def test_a_redis_behind_sentinel(tmp_path: Path) -> None:
    master = RedisServer(str(tmp_path))
    sentinel = RedisServer(str(tmp_path), sentinel_of=master, master_name="lading-master")
    try:
        url = f"sentinel://127.0.0.1:{sentinel.port}/2"
        celery = {
            "broker_url": url,
            "result_backend": url,
            "broker_transport_options": {"master_name": "lading-master"},
            "result_backend_transport_options": {"master_name": "lading-master"},
        }
        with deployment(tmp_path, celery) as d:
            push_pull_and_collect(d, redis.Redis(port=master.port, db=2))
    finally:
        sentinel.stop()
        master.stop()
