"""Upload sessions: state in storage, offsets, ids, startedat, iteration for the purger."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline.errors import BlobUploadUnknown, NameInvalid, RangeInvalid
from pipeline.storage import paths
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import StorageDriver
from pipeline.storage.filesystem import FilesystemDriver
from pipeline.storage.memory import MemoryDriver
from pipeline.stores.uploads import CompletingPut, UploadStore, format_started_at, parse_started_at

GO_RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@pytest.fixture(params=["memory", "filesystem"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageDriver]:
    inner: StorageDriver = MemoryDriver() if request.param == "memory" else FilesystemDriver(str(tmp_path))
    yield CheckedDriver(inner)


@pytest.fixture
def uploads(driver: StorageDriver) -> UploadStore:
    return UploadStore(driver)


def test_create_writes_startedat_and_empty_data(uploads: UploadStore, driver: StorageDriver) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    status = uploads.create("library/alpine")
    after = datetime.now(UTC)
    assert uuid.UUID(status.upload_id).version == 4
    assert str(uuid.UUID(status.upload_id)) == status.upload_id
    assert status.size == 0
    assert status.repository == "library/alpine"
    started = driver.get_content(paths.upload_started_at("library/alpine", status.upload_id)).decode()
    assert GO_RFC3339_UTC.match(started), started
    assert parse_started_at(started) == status.started_at
    assert before <= status.started_at <= after
    assert status.started_at.tzinfo is not None
    assert driver.get_content(paths.upload_data("library/alpine", status.upload_id)) == b""
    assert uploads.status("library/alpine", status.upload_id) == status


def test_create_uses_fresh_ids(uploads: UploadStore) -> None:
    ids = {uploads.create("repo").upload_id for _ in range(20)}
    assert len(ids) == 20


def test_startedat_format_and_parsing() -> None:
    moment = datetime(2026, 11, 27, 21, 30, 32, 123456, tzinfo=UTC)
    assert format_started_at(moment) == "2026-11-27T21:30:32Z"
    plus_two = moment.astimezone(timezone(timedelta(hours=2)))
    assert format_started_at(plus_two) == "2026-11-27T21:30:32Z"
    assert parse_started_at("2026-11-27T21:30:32Z") == moment.replace(microsecond=0)
    assert parse_started_at("2026-11-27T21:30:32.123456789Z") == moment
    assert parse_started_at("2026-11-27T23:30:32.5+02:00") == datetime(
        2026, 11, 27, 21, 30, 32, 500000, tzinfo=UTC
    )
    for bad in ("", "yesterday", "2026-11-27 21:30", "2026-11-27T21:30:32"):
        with pytest.raises(ValueError):
            parse_started_at(bad)


def test_status_reads_a_session_distribution_wrote(uploads: UploadStore, driver: StorageDriver) -> None:
    upload_id = str(uuid.uuid4())
    driver.put_content(paths.upload_started_at("repo", upload_id), b"2026-11-27T21:30:32.123456789Z")
    driver.put_content(paths.upload_data("repo", upload_id), b"12345")
    status = uploads.status("repo", upload_id)
    assert status.size == 5
    assert status.started_at == datetime(2026, 11, 27, 21, 30, 32, 123456, tzinfo=UTC)


def test_appended_chunks_grow_the_session(uploads: UploadStore, driver: StorageDriver) -> None:
    upload_id = uploads.create("repo").upload_id
    assert uploads.append("repo", upload_id, b"abc", offset=0) == 3
    assert uploads.append("repo", upload_id, b"defg", offset=3) == 7
    assert uploads.append("repo", upload_id, b"h") == 8  # offset not given: appends at the end
    assert uploads.status("repo", upload_id).size == 8
    assert driver.get_content(paths.upload_data("repo", upload_id)) == b"abcdefgh"


def test_append_at_wrong_offset_is_range_invalid(uploads: UploadStore, driver: StorageDriver) -> None:
    upload_id = uploads.create("repo").upload_id
    uploads.append("repo", upload_id, b"abcde")
    for wrong in (0, 4, 6):
        with pytest.raises(RangeInvalid) as caught:
            uploads.append("repo", upload_id, b"zz", offset=wrong)
        assert caught.value.current_size == 5
    assert driver.get_content(paths.upload_data("repo", upload_id)) == b"abcde"


def test_open_append_streams_chunks(uploads: UploadStore) -> None:
    upload_id = uploads.create("repo").upload_id
    with uploads.open_append("repo", upload_id, 0) as writer:
        for _ in range(4):
            writer.write(b"x" * 1000)
        writer.commit()
    assert uploads.status("repo", upload_id).size == 4000
    with uploads.open_append("repo", upload_id, 4000) as writer:
        writer.write(b"lost")
        writer.cancel()
    assert uploads.status("repo", upload_id).size == 4000


def test_any_replica_continues_a_session(tmp_path: Path) -> None:
    first = UploadStore(CheckedDriver(FilesystemDriver(str(tmp_path))))
    second = UploadStore(CheckedDriver(FilesystemDriver(str(tmp_path))))
    upload_id = first.create("repo").upload_id
    first.append("repo", upload_id, b"one", 0)
    assert second.append("repo", upload_id, b"two", 3) == 6
    assert first.status("repo", upload_id).size == 6


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "not-a-uuid",
        "../../../blobs",
        "a/b",
        ".",
        "..",
        str(uuid.uuid4()).upper(),
        "x" * 300,
        "0f2ee1e2-6ac4-4c5a-9a5d-6c2d3c5f0e0/..",
        "0f2ee1e2-6ac4-4c5a-9a5d-6c2d3c5f0e0",
    ],
)
def test_malformed_upload_id_is_unknown(uploads: UploadStore, bad_id: str) -> None:
    uploads.create("repo")
    with pytest.raises(BlobUploadUnknown):
        uploads.status("repo", bad_id)
    with pytest.raises(BlobUploadUnknown):
        uploads.append("repo", bad_id, b"x")
    with pytest.raises(BlobUploadUnknown):
        uploads.open_append("repo", bad_id, 0)
    with pytest.raises(BlobUploadUnknown):
        uploads.cancel("repo", bad_id)


def test_unknown_session_is_unknown(uploads: UploadStore) -> None:
    upload_id = uploads.create("repo").upload_id
    with pytest.raises(BlobUploadUnknown):
        uploads.status("other", upload_id)  # sessions belong to their repository
    with pytest.raises(BlobUploadUnknown):
        uploads.status("repo", str(uuid.uuid4()))


def test_invalid_repository_name(uploads: UploadStore) -> None:
    with pytest.raises(NameInvalid):
        uploads.create("UPPER")
    with pytest.raises(NameInvalid):
        uploads.status("../x", str(uuid.uuid4()))


def test_cancel_deletes_the_session(uploads: UploadStore, driver: StorageDriver) -> None:
    upload_id = uploads.create("repo").upload_id
    uploads.append("repo", upload_id, b"abc")
    uploads.cancel("repo", upload_id)
    assert not driver.exists(paths.upload_dir("repo", upload_id))
    with pytest.raises(BlobUploadUnknown):
        uploads.status("repo", upload_id)
    with pytest.raises(BlobUploadUnknown):
        uploads.cancel("repo", upload_id)


def test_sessions_of_a_repository(uploads: UploadStore, driver: StorageDriver) -> None:
    assert list(uploads.sessions("repo")) == []
    a = uploads.create("repo")
    b = uploads.create("repo")
    uploads.append("repo", b.upload_id, b"1234")
    uploads.create("repo/nested")
    found = {s.upload_id: s.size for s in uploads.sessions("repo")}
    assert found == {a.upload_id: 0, b.upload_id: 4}


def test_sessions_include_crash_leftovers(uploads: UploadStore, driver: StorageDriver) -> None:
    # A session whose data was moved away by a commit killed before cleanup, and one with
    # no startedat: both must stay visible to the purger.
    moved = uploads.create("repo").upload_id
    driver.delete(paths.upload_data("repo", moved))
    orphan = str(uuid.uuid4())
    driver.put_content(paths.upload_hashstate("repo", orphan, "sha256", 10), b"state")
    by_id = {s.upload_id: s for s in uploads.sessions("repo")}
    assert set(by_id) == {moved, orphan}
    assert by_id[moved].size == 0
    assert by_id[orphan].started_at.tzinfo is not None
    with pytest.raises(BlobUploadUnknown):
        uploads.status("repo", moved)  # not a live session any more
    uploads.cancel("repo", orphan)  # but the purger can delete it
    assert [s.upload_id for s in uploads.sessions("repo")] == [moved]


def test_all_sessions_walks_every_repository(uploads: UploadStore, driver: StorageDriver) -> None:
    assert list(uploads.all_sessions()) == []
    made = {(repo, uploads.create(repo).upload_id) for repo in ("a", "a/b", "a/b/c", "library/alpine", "z")}
    # Other reserved directories are never mistaken for repositories or sessions.
    driver.put_content("/docker/registry/v2/repositories/a/_layers/sha256/" + "0" * 64 + "/link", b"x")
    driver.put_content("/docker/registry/v2/repositories/a/_manifests/tags/x/current/link", b"x")
    found = {(s.repository, s.upload_id) for s in uploads.all_sessions()}
    assert found == made


def test_two_patches_at_the_same_offset_cannot_both_append(tmp_path: Path) -> None:
    """The second writer re-checks the offset once it holds the append lock."""
    from pipeline.errors import RangeInvalid
    from pipeline.storage.checked import CheckedDriver
    from pipeline.storage.filesystem import FilesystemDriver
    from pipeline.stores.uploads import UploadStore

    store = UploadStore(CheckedDriver(FilesystemDriver(str(tmp_path))))
    session = store.create("race/repo")
    first = store.open_append("race/repo", session.upload_id, 0)
    first.write(b"abc")
    first.commit()
    first.close()
    with pytest.raises(RangeInvalid) as caught:
        store.open_append("race/repo", session.upload_id, 0)
    assert caught.value.current_size == 3
    assert store.status("race/repo", session.upload_id).size == 3


def test_completing_put_record_round_trips_and_goes_with_the_session(
    uploads: UploadStore, driver: StorageDriver
) -> None:
    status = uploads.create("repo")
    assert uploads.completing("repo", status.upload_id) is None
    put = CompletingPut("sha256:" + "a" * 64, 10, 4)
    uploads.mark_completing("repo", status.upload_id, put)
    assert uploads.completing("repo", status.upload_id) == put
    driver.put_content(paths.upload_completing("repo", status.upload_id), b"{not json")
    assert uploads.completing("repo", status.upload_id) is None  # only a cache of a retry
    uploads.cancel("repo", status.upload_id)
    assert uploads.completing("repo", status.upload_id) is None
    with pytest.raises(BlobUploadUnknown):
        uploads.completing("repo", "../../etc")
    with pytest.raises(BlobUploadUnknown):
        uploads.mark_completing("repo", "not-a-uuid", put)
