"""BlobStore (global, content-addressed) and RepositoryBlobs (the per-repository links)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import BlobUnknown, NameInvalid
from pipeline.formats.digest import Digest
from pipeline.storage import paths
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import FileWriter, StorageDriver
from pipeline.storage.filesystem import FilesystemDriver
from pipeline.storage.memory import MemoryDriver
from pipeline.stores.blobs import BlobStore, RepositoryBlobs


class CountingDriver(CheckedDriver):
    """Counts every call that could write."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.writes: list[str] = []

    def put_content(self, path: str, content: bytes) -> None:
        self.writes.append(path)
        super().put_content(path, content)

    def writer(self, path: str, append: bool = False) -> FileWriter:
        self.writes.append(path)
        return super().writer(path, append)

    def move(self, source: str, dest: str) -> None:
        self.writes.append(dest)
        super().move(source, dest)


@pytest.fixture(params=["memory", "filesystem"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CountingDriver]:
    inner: StorageDriver = MemoryDriver() if request.param == "memory" else FilesystemDriver(str(tmp_path))
    yield CountingDriver(inner)


@pytest.fixture
def blobs(driver: CountingDriver) -> BlobStore:
    return BlobStore(driver)


@pytest.fixture
def repo_blobs(driver: CountingDriver, blobs: BlobStore) -> RepositoryBlobs:
    return RepositoryBlobs(driver, blobs)


def test_put_stores_under_digest_and_reads_back(blobs: BlobStore, driver: CountingDriver) -> None:
    data = b"layer bytes" * 1000
    digest = blobs.put(data)
    assert digest == Digest.of(data)
    assert blobs.get(digest) == data
    assert blobs.stat(digest) == len(data)
    assert blobs.exists(digest)
    with blobs.open(digest, 5) as stream:
        assert stream.read() == data[5:]
    assert driver.get_content(f"/docker/registry/v2/blobs/sha256/{digest.hex[:2]}/{digest.hex}/data") == data


def test_put_sha512(blobs: BlobStore) -> None:
    digest = blobs.put(b"x", "sha512")
    assert digest.algorithm == "sha512"
    assert blobs.get(digest) == b"x"


def test_second_put_never_rewrites(blobs: BlobStore, driver: CountingDriver) -> None:
    data = b"same content"
    digest = blobs.put(data)
    assert driver.writes == [paths.blob_data(digest)]
    before = driver.stat(paths.blob_data(digest)).modified
    assert blobs.put(data) == digest
    assert driver.writes == [paths.blob_data(digest)]  # no second writer opened
    assert driver.stat(paths.blob_data(digest)).modified == before


def test_second_put_keeps_file_identity_on_disk(tmp_path: Path) -> None:
    blobs = BlobStore(CheckedDriver(FilesystemDriver(str(tmp_path))))
    digest = blobs.put(b"content")
    on_disk = tmp_path / "docker/registry/v2/blobs/sha256" / digest.hex[:2] / digest.hex / "data"
    first = os.stat(on_disk)
    blobs.put(b"content")
    second = os.stat(on_disk)
    assert (second.st_ino, second.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


def test_absent_blob_is_unknown(blobs: BlobStore) -> None:
    digest = Digest.of(b"never stored")
    assert not blobs.exists(digest)
    for call in (blobs.stat, blobs.get, blobs.open, blobs.delete):
        with pytest.raises(BlobUnknown):
            call(digest)


def test_delete_removes_blob(blobs: BlobStore) -> None:
    digest = blobs.put(b"garbage")
    blobs.delete(digest)
    assert not blobs.exists(digest)


def test_local_path_and_redirect(tmp_path: Path) -> None:
    fs = BlobStore(CheckedDriver(FilesystemDriver(str(tmp_path))))
    digest = fs.put(b"zero copy")
    local = fs.local_path(digest)
    assert local is not None
    assert Path(local).read_bytes() == b"zero copy"
    with pytest.raises(BlobUnknown):
        fs.local_path(Digest.of(b"absent"))
    mem = BlobStore(CheckedDriver(MemoryDriver()))
    assert mem.local_path(mem.put(b"x")) is None
    assert mem.redirect_url(Digest.of(b"x")) is None


def test_link_file_is_byte_exact(
    repo_blobs: RepositoryBlobs, blobs: BlobStore, driver: CountingDriver
) -> None:
    digest = blobs.put(b"config")
    repo_blobs.link("library/alpine", digest)
    link = f"/docker/registry/v2/repositories/library/alpine/_layers/sha256/{digest.hex}/link"
    assert driver.get_content(link) == f"sha256:{digest.hex}".encode()
    assert repo_blobs.is_linked("library/alpine", digest)
    assert repo_blobs.stat("library/alpine", digest) == len(b"config")


def test_link_on_disk_has_no_newline(tmp_path: Path) -> None:
    driver = CheckedDriver(FilesystemDriver(str(tmp_path)))
    blobs = BlobStore(driver)
    digest = blobs.put(b"abc")
    RepositoryBlobs(driver, blobs).link("a/b/c", digest)
    link = tmp_path / "docker/registry/v2/repositories/a/b/c/_layers/sha256" / digest.hex / "link"
    assert link.read_bytes() == b"sha256:" + digest.hex.encode()


def test_relinking_writes_nothing(
    repo_blobs: RepositoryBlobs, blobs: BlobStore, driver: CountingDriver
) -> None:
    digest = blobs.put(b"abc")
    repo_blobs.link("repo", digest)
    count = len(driver.writes)
    repo_blobs.link("repo", digest)
    assert len(driver.writes) == count


def test_unlinked_blob_is_invisible_to_repository(repo_blobs: RepositoryBlobs, blobs: BlobStore) -> None:
    digest = blobs.put(b"private layer of another repository")
    repo_blobs.link("owner/private", digest)
    assert not repo_blobs.is_linked("other", digest)
    with pytest.raises(BlobUnknown):
        repo_blobs.stat("other", digest)
    with pytest.raises(BlobUnknown):
        repo_blobs.open("other", digest)


def test_link_without_data_is_invisible(repo_blobs: RepositoryBlobs) -> None:
    digest = Digest.of(b"data never stored")
    repo_blobs.link("repo", digest)
    assert repo_blobs.is_linked("repo", digest)
    with pytest.raises(BlobUnknown):
        repo_blobs.stat("repo", digest)
    with pytest.raises(BlobUnknown):
        repo_blobs.open("repo", digest)


def test_open_reads_from_offset(repo_blobs: RepositoryBlobs, blobs: BlobStore) -> None:
    digest = blobs.put(b"0123456789")
    repo_blobs.link("repo", digest)
    with repo_blobs.open("repo", digest, 4) as stream:
        assert stream.read() == b"456789"


def test_link_naming_another_digest_serves_the_target(
    repo_blobs: RepositoryBlobs, blobs: BlobStore, driver: CountingDriver
) -> None:
    # distribution may link a sha512 lookup to the canonical sha256 blob.
    data = b"cross-algorithm"
    canonical = blobs.put(data)
    other = Digest.of(data, "sha512")
    driver.put_content(paths.layer_link("repo", other), str(canonical).encode())
    assert repo_blobs.stat("repo", other) == len(data)


def test_unlink(repo_blobs: RepositoryBlobs, blobs: BlobStore) -> None:
    digest = blobs.put(b"abc")
    repo_blobs.link("repo", digest)
    repo_blobs.unlink("repo", digest)
    assert not repo_blobs.is_linked("repo", digest)
    assert blobs.exists(digest)  # unlinking never touches the shared data
    with pytest.raises(BlobUnknown):
        repo_blobs.unlink("repo", digest)


def test_mount_links_without_copying(
    repo_blobs: RepositoryBlobs, blobs: BlobStore, driver: CountingDriver
) -> None:
    digest = blobs.put(b"shared base layer")
    repo_blobs.link("source", digest)
    writes = len(driver.writes)
    assert repo_blobs.mount("source", "target", digest) is True
    assert driver.writes[writes:] == [paths.layer_link("target", digest)]  # the link, and no data
    assert repo_blobs.stat("target", digest) == len(b"shared base layer")
    assert list(driver.list(paths.blob_algorithm_dir("sha256") + "/" + digest.hex[:2])) == [
        paths.blob_dir(digest)
    ]


def test_mount_keeps_one_file_on_disk(tmp_path: Path) -> None:
    driver = CheckedDriver(FilesystemDriver(str(tmp_path)))
    blobs = BlobStore(driver)
    repo_blobs = RepositoryBlobs(driver, blobs)
    digest = blobs.put(b"layer")
    repo_blobs.link("a", digest)
    inode = os.stat(tmp_path / paths.blob_data(digest).lstrip("/")).st_ino
    assert repo_blobs.mount("a", "b", digest)
    data_files = [p for p in (tmp_path / "docker/registry/v2").rglob("data")]
    assert len(data_files) == 1 and data_files[0].stat().st_ino == inode


def test_mount_refuses_a_source_without_the_link(repo_blobs: RepositoryBlobs, blobs: BlobStore) -> None:
    digest = blobs.put(b"exists globally but not in source")
    repo_blobs.link("elsewhere", digest)
    assert repo_blobs.mount("source", "target", digest) is False
    assert not repo_blobs.is_linked("target", digest)


def test_mount_refuses_a_source_whose_data_is_gone(repo_blobs: RepositoryBlobs) -> None:
    digest = Digest.of(b"never stored")
    repo_blobs.link("source", digest)
    assert repo_blobs.mount("source", "target", digest) is False
    assert not repo_blobs.is_linked("target", digest)


def test_mount_from_invalid_source_name_is_false(repo_blobs: RepositoryBlobs, blobs: BlobStore) -> None:
    digest = blobs.put(b"x")
    assert repo_blobs.mount("../etc", "target", digest) is False
    with pytest.raises(NameInvalid):
        repo_blobs.mount("source", "Bad/Name", digest)


def test_links_lists_every_linked_digest(repo_blobs: RepositoryBlobs, blobs: BlobStore) -> None:
    assert list(repo_blobs.links("repo")) == []
    digests = [blobs.put(b"a"), blobs.put(b"b"), blobs.put(b"c", "sha512")]
    for d in digests:
        repo_blobs.link("repo", d)
    repo_blobs.link("other", blobs.put(b"d"))
    assert list(repo_blobs.links("repo")) == sorted(digests)
    repo_blobs.unlink("repo", digests[0])
    assert list(repo_blobs.links("repo")) == sorted(digests[1:])


def test_invalid_repository_name_is_rejected_before_storage(repo_blobs: RepositoryBlobs) -> None:
    with pytest.raises(NameInvalid):
        repo_blobs.is_linked("../../blobs", Digest.of(b"x"))
