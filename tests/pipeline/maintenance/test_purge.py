"""Upload purging: abandoned sessions go, live ones stay — including a session that started
long ago but is still receiving data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.config import Settings, StorageSettings, UploadPurging
from pipeline.errors import BlobUploadUnknown
from pipeline.maintenance.purge import purge_uploads
from pipeline.registry import Registry
from pipeline.storage import paths
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.filesystem import FilesystemDriver
from pipeline.storage.s3 import MIN_PART
from tests.pipeline.maintenance.helpers import age, fs_registry, settings
from tests.pipeline.storage.test_filesystem import temp_files
from tests.pipeline.storage.test_s3 import new_driver as new_s3_driver
from tests.support.emulators import moto_server

WEEK = 7 * 24 * 3600


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return fs_registry(str(tmp_path))


def session(registry: Registry, repo: str, data: bytes, started: str | None, data_age: float) -> str:
    upload_id = registry.uploads.create(repo).upload_id
    registry.uploads.append(repo, upload_id, data)
    if started is not None:
        registry.driver.put_content(paths.upload_started_at(repo, upload_id), started.encode())
    if data_age:
        age(registry, paths.upload_data(repo, upload_id), data_age)
    return upload_id


def test_stale_sessions_are_purged_and_live_ones_kept(registry: Registry) -> None:
    stale = session(registry, "app", b"x" * 1000, "2020-01-01T00:00:00Z", 2 * WEEK)
    fresh = session(registry, "app", b"y" * 10, None, 0)
    # Started a year ago, but a chunk arrived a minute ago: still uploading.
    slow = session(registry, "team/slow", b"z" * 50, "2020-01-01T00:00:00Z", 60)
    summary = purge_uploads(registry, older_than_seconds=WEEK)
    assert summary["purged"] == 1 and summary["kept"] == 2 and summary["bytes"] == 1000
    assert summary["sessions"][0]["upload_id"] == stale
    with pytest.raises(BlobUploadUnknown):
        registry.uploads.status("app", stale)
    assert not registry.driver.exists(paths.upload_dir("app", stale))
    assert registry.uploads.status("app", fresh).size == 10
    assert registry.uploads.append("team/slow", slow, b"more") == 54  # the slow push goes on


def test_old_data_of_a_recently_started_session_is_kept(registry: Registry) -> None:
    recent = session(registry, "app", b"x", None, 2 * WEEK)
    assert purge_uploads(registry, older_than_seconds=WEEK)["purged"] == 0
    assert registry.uploads.status("app", recent).size == 1


def test_dry_run_deletes_nothing(registry: Registry) -> None:
    stale = session(registry, "app", b"x" * 5, "2020-01-01T00:00:00Z", 2 * WEEK)
    summary = purge_uploads(registry, older_than_seconds=WEEK, dry_run=True)
    assert summary["dry_run"] is True and summary["purged"] == 1 and summary["bytes"] == 5
    assert registry.uploads.status("app", stale).size == 5


def test_defaults_come_from_storage_maintenance_uploadpurging(tmp_path: Path) -> None:
    settings = Settings(
        storage=StorageSettings(upload_purging=UploadPurging(age_seconds=3600, dryrun=True)),
    )
    registry = Registry.from_driver(settings, CheckedDriver(FilesystemDriver(str(tmp_path))))
    old = session(registry, "app", b"x", "2020-01-01T00:00:00Z", 7200)
    summary = purge_uploads(registry)
    assert summary["purged"] == 1 and summary["dry_run"] is True
    assert registry.uploads.status("app", old).size == 1


def test_leftover_session_without_startedat_is_purged_by_its_age(registry: Registry) -> None:
    upload_id = session(registry, "app", b"x", None, 2 * WEEK)
    registry.driver.delete(paths.upload_started_at("app", upload_id))
    full = registry.driver.inner.root + paths.upload_dir("app", upload_id)  # type: ignore[attr-defined]
    when = os.stat(full).st_mtime - 2 * WEEK
    os.utime(full, (when, when))
    assert purge_uploads(registry, older_than_seconds=WEEK)["purged"] == 1
    assert not registry.driver.exists(paths.upload_dir("app", upload_id))


def test_a_second_purge_while_one_runs_is_skipped(registry: Registry) -> None:
    with registry.locks.lock("_purge_uploads"):
        assert "skipped" in purge_uploads(registry)


def test_a_dead_writers_temporary_file_goes_with_the_purge(registry: Registry) -> None:
    stale = registry.driver.writer("/docker/registry/v2/blobs/stale/data")
    stale.write(b"s" * (3 << 20))  # its process dies here: the temporary file stays
    fresh = registry.driver.writer("/docker/registry/v2/blobs/fresh/data")
    fresh.write(b"f" * 7)
    root = registry.driver.inner.root  # type: ignore[attr-defined]
    (old,) = (f for f in temp_files(root) if "/stale/" in f)
    st = os.stat(old)
    os.utime(old, (st.st_mtime - 2 * WEEK, st.st_mtime - 2 * WEEK))
    dry = purge_uploads(registry, older_than_seconds=WEEK, dry_run=True)
    assert dry["unfinished_writes"] == 1 and dry["unfinished_bytes"] == st.st_size > 0
    assert old in temp_files(root)
    summary = purge_uploads(registry, older_than_seconds=WEEK)
    assert summary["unfinished_writes"] == 1 and summary["unfinished_bytes"] == st.st_size
    assert [f for f in temp_files(root) if "/stale/" in f] == []
    fresh.write(b"g")
    fresh.commit()  # the live writer was left alone
    assert registry.driver.get_content("/docker/registry/v2/blobs/fresh/data") == b"f" * 7 + b"g"
    del stale


def test_an_abandoned_s3_multipart_upload_is_aborted() -> None:
    with moto_server() as endpoint:
        s3 = new_s3_driver(endpoint)
        bucket = s3.bucket
        registry = Registry.from_driver(settings(), CheckedDriver(s3))
        dead = registry.driver.writer("/docker/registry/v2/blobs/x/data")
        dead.write(b"p" * (MIN_PART + 1))  # a part is uploaded; then the process dies
        assert len(s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])) == 1
        kept = purge_uploads(registry, older_than_seconds=WEEK)
        assert kept["unfinished_writes"] == 0
        summary = purge_uploads(registry, older_than_seconds=0)
        assert summary["unfinished_writes"] == 1 and summary["unfinished_bytes"] == MIN_PART + 1
        assert s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert not registry.driver.exists("/docker/registry/v2/blobs/x/data")
        del dead
