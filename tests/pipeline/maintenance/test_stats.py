"""Maintenance totals in storage: runs add up, a damaged record is rebuilt, and a storage
failure while recording never fails the run that did the work."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import StorageUnavailable
from pipeline.maintenance import garbage_collect, scrub, stats
from pipeline.registry import Registry
from pipeline.storage import paths
from tests.pipeline.maintenance.helpers import fs_registry, push_image


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return fs_registry(str(tmp_path), scrub_rate_bytes=0)


def test_runs_add_up_and_dry_runs_add_nothing(registry: Registry) -> None:
    push_image(registry, "app", "v1", layers=[os.urandom(1000)])
    assert stats.read(registry.driver, stats.SCRUB) == {}
    first = scrub(registry)
    scrub(registry, dry_run=True)
    second = scrub(registry, resume=False)
    garbage_collect(registry, dry_run=True)
    garbage_collect(registry)
    totals = stats.read(registry.driver, stats.SCRUB)
    assert totals == {
        "runs": 2,
        "blobs": first["checked"] + second["checked"],
        "bytes": first["bytes"] + second["bytes"],
        "corrupt": 0,
        "quarantined": 0,
    }
    assert stats.read(registry.driver, stats.GC) == {"runs": 1, "blobs": 0, "bytes": 0, "manifests": 0}


def test_a_damaged_record_is_rebuilt(registry: Registry) -> None:
    registry.driver.put_content(paths.maintenance_stats(stats.GC), b"{not json")
    assert stats.read(registry.driver, stats.GC) == {}
    totals = stats.add_run(registry.driver, stats.GC, {"blobs": 2, "bytes": 10})
    assert totals == {"runs": 1, "blobs": 2, "bytes": 10}


def test_storage_refusing_the_record_does_not_fail_the_run(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    push_image(registry, "app", "v1")
    put = registry.driver.put_content

    def refuse_stats(path: str, content: bytes) -> Any:
        if path.startswith(paths.maintenance_stats("")):
            raise StorageUnavailable("throttled")
        return put(path, content)

    monkeypatch.setattr(registry.driver, "put_content", refuse_stats)
    assert scrub(registry)["checked"] == 3
    assert "could not record scrub totals" in caplog.text
    assert stats.read(registry.driver, stats.SCRUB) == {}
