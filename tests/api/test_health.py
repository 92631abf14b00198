"""api.health: /healthz says 200 only when storage and the broker both answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from api.health import health_route
from pipeline.config import CelerySettings, HttpSettings, Settings, StorageSettings
from pipeline.errors import StorageUnavailable
from pipeline.storage.driver import FileInfo
from pipeline.storage.filesystem import FilesystemDriver
from pipeline.storage.memory import MemoryDriver
from tests.support import redis_server
from tests.support.net import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class BrokenDriver(MemoryDriver):
    def stat(self, path: str) -> FileInfo:
        raise StorageUnavailable("disk on fire")


async def get(app: Starlette, path: str = "/healthz", method: str = "GET") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await c.request(method, path)


def app_for(settings: Settings, driver: Any, **kw: Any) -> Starlette:
    return Starlette(routes=[health_route(settings, driver, **kw)])


async def test_embedded_with_a_fresh_filesystem_root_is_healthy(tmp_path: Path) -> None:
    settings = Settings(storage=StorageSettings(root=str(tmp_path / "not-yet-created")))
    response = await get(app_for(settings, FilesystemDriver(str(tmp_path / "not-yet-created"))))
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["storage"]["ok"] and body["checks"]["broker"] == {"ok": True, "broker": "embedded"}
    assert response.headers["cache-control"] == "no-store"


async def test_head_and_custom_path() -> None:
    settings = Settings(http=HttpSettings(health_path="/ready"))
    app = app_for(settings, MemoryDriver())
    assert (await get(app, "/ready", "HEAD")).status_code == 200
    assert (await get(app, "/healthz")).status_code == 404


async def test_failing_storage_is_503_and_says_why() -> None:
    response = await get(app_for(Settings(), BrokenDriver()))
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    storage = body["checks"]["storage"]
    assert storage["ok"] is False and storage["error"] == "storage read failed (StorageUnavailable)"
    assert "disk on fire" not in response.text  # the driver's words stay in the log


async def test_unreachable_redis_broker_is_503() -> None:
    settings = Settings(celery=CelerySettings(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    response = await get(app_for(settings, MemoryDriver()))
    assert response.status_code == 503
    broker = response.json()["checks"]["broker"]
    assert broker["ok"] is False and broker["error"]


async def test_reachable_redis_broker_is_healthy() -> None:
    settings = Settings(celery=CelerySettings(broker_url=redis_server.url(0)))
    response = await get(app_for(settings, MemoryDriver()))
    assert response.status_code == 200 and response.json()["checks"]["broker"] == {"ok": True}


async def test_unreachable_amqp_broker_is_503() -> None:
    settings = Settings(celery=CelerySettings(broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//"))
    response = await get(app_for(settings, MemoryDriver()))
    assert response.status_code == 503


async def test_dead_embedded_worker_is_503() -> None:
    response = await get(app_for(Settings(), MemoryDriver(), embedded_alive=lambda: False))
    assert response.status_code == 503
    assert "not running" in response.json()["checks"]["broker"]["error"]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 2 MiB tmpfs (needs the right to mount: skipped without it)."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_makes_a_real_registry_unhealthy_without_showing_paths(
    tiny_disk: Path, tmp_path: Path
) -> None:
    from tests.support.lading import lading_embedded

    root = tiny_disk / "root"
    with lading_embedded(root, tmp_path) as host, httpx.Client(base_url=f"http://{host}", timeout=30) as http:
        low = http.get("/healthz")
        assert low.status_code == 503
        assert "nearly full" in low.json()["checks"]["storage"]["error"]
        (tiny_disk / "filler").write_bytes(b"\0" * (2 * 1024 * 1024 - 8192))  # nearly every byte
        try:
            with open(tiny_disk / "filler", "ab") as f:
                f.write(b"\0" * 65536)
        except OSError:
            pass  # full now
        full = http.get("/healthz")
        assert full.status_code == 503
        assert "write failed" in full.json()["checks"]["storage"]["error"]
        # a push onto the full disk fails cleanly, and no answer names the storage root
        started = http.post("/v2/full/blobs/uploads/")
        answers = [full.text, low.text, started.text]
        if started.status_code == 202:
            pushed = http.patch(started.headers["location"], content=b"x" * 100_000)
            assert pushed.status_code == 503, pushed.text
            answers.append(pushed.text)
        else:
            assert started.status_code == 503, started.text
        assert all(str(tiny_disk) not in text for text in answers)
