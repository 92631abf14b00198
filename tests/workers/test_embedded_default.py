"""Embedded mode as `lading serve` runs it without a registry handed in: the worker builds
its own from settings (filesystem storage) and stops cleanly."""

from __future__ import annotations

from pathlib import Path

from celery import _state as celery_state

from api.jobclient import CeleryJobClient
from pipeline import jobs
from pipeline.config import Settings, StorageSettings
from pipeline.formats.digest import Digest
from pipeline.registry import build_registry
from tests.workers.conftest import LoopThread, sha256, upload
from workers.app import create_app
from workers.embedded import start_embedded_worker


def test_embedded_worker_on_filesystem_storage(loop: LoopThread, tmp_path: Path) -> None:
    settings = Settings(storage=StorageSettings(driver="filesystem", root=str(tmp_path)))
    app = create_app(settings)
    before = celery_state.default_app
    worker = start_embedded_worker(app, concurrency=1)
    client = CeleryJobClient(app)
    try:
        api_side = build_registry(settings)
        data = b"on disk"
        upload_id = upload(api_side, "emb/fs", data)
        value = loop.run(
            client.run(
                jobs.COMMIT_BLOB,
                30,
                repository="emb/fs",
                upload_id=upload_id,
                digest=sha256(data),
                size=len(data),
            )
        )
        assert value == {"digest": sha256(data), "size": len(data)}
        assert api_side.blobs.get(Digest.parse(sha256(data))) == data
    finally:
        worker.stop()
        loop.run(client.aclose())
    assert not worker.alive
    assert celery_state.default_app is before
