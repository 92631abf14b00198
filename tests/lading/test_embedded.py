"""lading.embedded: the process `lading serve` assembles, driven in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
from celery.signals import before_task_publish, task_retry

from lading.embedded import Assembly, _count_retries, assemble
from pipeline import jobs
from pipeline.config import AuthSettings, HtpasswdAuth, HttpSettings, Settings, StorageSettings
from tests.api.helpers import push_image

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Assembly]:
    root = tmp_path_factory.mktemp("embedded") / "data"
    assembly = assemble(Settings(storage=StorageSettings(root=str(root))))
    try:
        yield assembly
    finally:
        assembly.close()


def client(assembly: Assembly) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=assembly.app), base_url="http://test")


async def test_embedded_assembly_serves_registry_health_and_metrics(embedded: Assembly) -> None:
    assert embedded.embedded and embedded.worker is not None and embedded.worker.alive
    async with client(embedded) as c:
        base = await c.get("/v2/")
        assert base.status_code == 200 and base.headers["x-request-id"]
        assert base.headers["docker-distribution-api-version"] == "registry/2.0"
        health = await c.get("/healthz")
        assert health.status_code == 200 and health.json()["checks"]["broker"]["broker"] == "embedded"
        metrics = await c.get("/metrics")
        assert 'route="/v2/"' in metrics.text


async def test_configured_htpasswd_auth_is_enforced(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=4)).decode() + "\n")
    settings = Settings(
        storage=StorageSettings(root=str(tmp_path / "data")),
        auth=AuthSettings(htpasswd=HtpasswdAuth(realm="test-realm", path=str(htpasswd))),
    )
    assembly = assemble(settings)
    try:
        async with client(assembly) as c:
            anonymous = await c.get("/v2/")
            assert anonymous.status_code == 401
            assert "test-realm" in anonymous.headers["www-authenticate"]
            assert (await c.get("/v2/", auth=("alice", "wonderland"))).status_code == 200
    finally:
        assembly.close()
    assert not assembly.worker.alive  # close() stopped the in-process worker
    assembly.close()  # and is idempotent


async def test_a_push_runs_its_jobs_without_the_broker(tmp_path: Path) -> None:
    assembly = assemble(Settings(storage=StorageSettings(root=str(tmp_path / "data"))))
    published: list[str] = []

    def on_publish(sender: object = None, **_: object) -> None:
        published.append(str(sender))

    before_task_publish.connect(on_publish, weak=False)
    try:
        async with client(assembly) as c:
            digest, _ = await push_image(c, "direct/app", "v1", [b"layer one", b"layer two"])
            pulled = await c.get(f"/v2/direct/app/manifests/{digest}")
            assert pulled.status_code == 200
            assert (await c.get("/v2/direct/app/manifests/v1")).headers["docker-content-digest"] == digest
    finally:
        before_task_publish.disconnect(on_publish)
        assembly.close()
    # Every commit ran directly: none went through the broker (beat's jobs may have).
    assert [name for name in published if name in (jobs.COMMIT_BLOB, jobs.COMMIT_MANIFEST)] == []
    assert not assembly.worker.alive


@pytest.mark.parametrize("protected", [False, True])
async def test_metrics_open_or_protected_by_the_registrys_auth(tmp_path: Path, protected: bool) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=4)).decode() + "\n")
    settings = Settings(
        storage=StorageSettings(root=str(tmp_path / "data")),
        auth=AuthSettings(htpasswd=HtpasswdAuth(realm="test-realm", path=str(htpasswd))),
        http=HttpSettings(metrics_protected=protected),
    )
    assembly = assemble(settings)
    try:
        async with client(assembly) as c:
            anonymous = await c.get("/metrics")
            if protected:
                assert anonymous.status_code == 401
                assert "test-realm" in anonymous.headers["www-authenticate"]
                assert anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
                assert (await c.get("/metrics", auth=("alice", "wrong"))).status_code == 401
            else:
                assert anonymous.status_code == 200
            authorized = await c.get("/metrics", auth=("alice", "wonderland"))
            assert authorized.status_code == 200 and "lading_http_requests" in authorized.text
    finally:
        assembly.close()


def test_retries_of_this_app_are_counted(embedded: Assembly) -> None:
    from workers.app import create_app

    mine = next(t for t in embedded.worker.worker.app.tasks.values() if t.name == "lading.commit_blob")
    other_app = create_app(Settings())
    theirs = other_app.tasks["lading.commit_blob"]
    disconnect = _count_retries(embedded.worker.worker.app, embedded.metrics)
    try:
        task_retry.send(sender=mine, request=None, reason="StorageUnavailable", einfo=None)
        task_retry.send(sender=theirs, request=None, reason="StorageUnavailable", einfo=None)
    finally:
        disconnect()
    # the assembly's own hook counted too; the other app's retry counted nowhere
    text = embedded.metrics.exposition().decode()
    assert 'lading_jobs_retried_total{job="lading.commit_blob"} 2.0' in text


async def test_an_error_escaping_the_router_is_a_500_that_reveals_nothing(
    embedded: Assembly, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.routes.router import RegistryRouter

    async def bug(self: RegistryRouter, request: object) -> None:
        raise ZeroDivisionError("secret detail")

    monkeypatch.setattr(RegistryRouter, "dispatch", bug)
    transport = httpx.ASGITransport(app=embedded.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        r = await c.get("/v2/repo/tags/list")
    assert r.status_code == 500 and r.json()["errors"][0]["code"] == "UNKNOWN"
    assert "secret" not in r.text
    assert r.headers["docker-distribution-api-version"] == "registry/2.0" and r.headers["x-request-id"]
