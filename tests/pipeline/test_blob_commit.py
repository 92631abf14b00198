"""commit_blob / advance_digest: verification, placement, idempotence and crash safety."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

import fakeredis
import pytest

from pipeline import blob_commit
from pipeline.blob_commit import advance_digest, commit_blob
from pipeline.config import Settings
from pipeline.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    NameInvalid,
    SizeInvalid,
    StorageError,
)
from pipeline.formats.digest import Digest
from pipeline.formats.hashstate import resumable_available
from pipeline.infra.locks import FileLocks, LocalLocks, RedisLocks, RepositoryLocks
from pipeline.registry import Registry
from pipeline.storage import paths
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import StorageDriver
from pipeline.storage.filesystem import FilesystemDriver
from pipeline.storage.memory import MemoryDriver


class Crash(BaseException):
    """Stands for the worker being killed (BaseException: nothing may swallow it)."""


class FaultyDriver(CheckedDriver):
    """Kills the "worker" at the n-th state-changing storage call, before or after it ran,
    and records where readers start."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.crash_at: int | None = None
        self.crash_after = False
        self.changes = 0
        self.reads: list[tuple[str, int]] = []
        self.on_move: Any = None

    def _change(self, run: Any) -> Any:
        self.changes += 1
        hit = self.crash_at is not None and self.changes == self.crash_at
        if hit and not self.crash_after:
            raise Crash()
        result = run()
        if hit:
            raise Crash()
        return result

    def put_content(self, path: str, content: bytes) -> None:
        self._change(lambda: super(FaultyDriver, self).put_content(path, content))

    def move(self, source: str, dest: str) -> None:
        if self.on_move is not None:
            self.on_move(source, dest)
        self._change(lambda: super(FaultyDriver, self).move(source, dest))

    def delete(self, path: str) -> None:
        self._change(lambda: super(FaultyDriver, self).delete(path))

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        self.reads.append((path, offset))
        return super().reader(path, offset)


@pytest.fixture(params=["memory", "filesystem"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FaultyDriver]:
    inner: StorageDriver = MemoryDriver() if request.param == "memory" else FilesystemDriver(str(tmp_path))
    yield FaultyDriver(inner)


@pytest.fixture
def registry(driver: FaultyDriver) -> Registry:
    return Registry.from_driver(Settings(), driver)


def upload(registry: Registry, repo: str, *chunks: bytes) -> str:
    upload_id = registry.uploads.create(repo).upload_id
    for chunk in chunks:
        registry.uploads.append(repo, upload_id, chunk)
    return upload_id


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def assert_committed(registry: Registry, repo: str, upload_id: str, data: bytes, digest: str) -> None:
    d = Digest.parse(digest)
    assert registry.blobs.get(d) == data
    assert registry.repo_blobs.stat(repo, d) == len(data)
    with registry.repo_blobs.open(repo, d) as stream:
        assert stream.read() == data
    assert registry.driver.get_content(paths.layer_link(repo, d)) == digest.encode()
    assert not registry.driver.exists(paths.upload_dir(repo, upload_id))
    with pytest.raises(BlobUploadUnknown):
        registry.uploads.status(repo, upload_id)


def assert_nothing_written(registry: Registry, repo: str, digest: str) -> None:
    d = Digest.parse(digest)
    assert not registry.blobs.exists(d)
    assert not registry.repo_blobs.is_linked(repo, d)


# --- the ordinary flow ------------------------------------------------------------------


def test_chunks_commit_into_a_linked_blob(registry: Registry) -> None:
    chunks = [b"a" * 1000, b"b" * 2000, b"c"]
    data = b"".join(chunks)
    upload_id = upload(registry, "library/app", *chunks)
    assert registry.uploads.status("library/app", upload_id).size == len(data)
    result = commit_blob(registry, "library/app", upload_id, sha256(data), len(data))
    assert result == {"digest": sha256(data), "size": len(data)}
    assert_committed(registry, "library/app", upload_id, data, sha256(data))


def test_size_may_be_omitted(registry: Registry) -> None:
    upload_id = upload(registry, "repo", b"xyz")
    assert commit_blob(registry, "repo", upload_id, sha256(b"xyz"), None)["size"] == 3


def test_empty_blob(registry: Registry) -> None:
    upload_id = upload(registry, "repo")
    assert commit_blob(registry, "repo", upload_id, sha256(b""), 0) == {"digest": sha256(b""), "size": 0}
    assert_committed(registry, "repo", upload_id, b"", sha256(b""))


def test_sha512_digest(registry: Registry) -> None:
    data = b"sha512 content"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    upload_id = upload(registry, "repo", data)
    assert commit_blob(registry, "repo", upload_id, digest, len(data))["digest"] == digest
    assert_committed(registry, "repo", upload_id, data, digest)


def test_commit_moves_data_on_disk(tmp_path: Path) -> None:
    registry = Registry.from_driver(Settings(), CheckedDriver(FilesystemDriver(str(tmp_path))))
    upload_id = upload(registry, "repo", b"moved, not copied")
    inode = os.stat(tmp_path / paths.upload_data("repo", upload_id).lstrip("/")).st_ino
    digest = Digest.parse(sha256(b"moved, not copied"))
    commit_blob(registry, "repo", upload_id, str(digest), None)
    assert os.stat(tmp_path / paths.blob_data(digest).lstrip("/")).st_ino == inode


def test_commit_of_an_already_stored_blob_only_links(tmp_path: Path) -> None:
    registry = Registry.from_driver(Settings(), CheckedDriver(FilesystemDriver(str(tmp_path))))
    data = b"base layer"
    digest = registry.blobs.put(data)
    before = os.stat(tmp_path / paths.blob_data(digest).lstrip("/"))
    upload_id = upload(registry, "second", data)
    commit_blob(registry, "second", upload_id, str(digest), len(data))
    after = os.stat(tmp_path / paths.blob_data(digest).lstrip("/"))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert_committed(registry, "second", upload_id, data, str(digest))


# --- rejection leaves everything as it was ---------------------------------------------


def test_wrong_digest_writes_nothing_and_keeps_the_session(registry: Registry) -> None:
    data = b"the real bytes"
    upload_id = upload(registry, "repo", data)
    wrong = sha256(b"something else")
    with pytest.raises(DigestInvalid):
        commit_blob(registry, "repo", upload_id, wrong, len(data))
    assert_nothing_written(registry, "repo", wrong)
    assert_nothing_written(registry, "repo", sha256(data))
    assert registry.uploads.status("repo", upload_id).size == len(data)
    # The client may retry with the right digest.
    commit_blob(registry, "repo", upload_id, sha256(data), len(data))
    assert_committed(registry, "repo", upload_id, data, sha256(data))


def test_wrong_size_writes_nothing(registry: Registry) -> None:
    data = b"twelve bytes"
    upload_id = upload(registry, "repo", data)
    for wrong in (0, 11, 13):
        with pytest.raises(SizeInvalid):
            commit_blob(registry, "repo", upload_id, sha256(data), wrong)
    assert_nothing_written(registry, "repo", sha256(data))
    assert registry.uploads.status("repo", upload_id).size == len(data)


@pytest.mark.parametrize(
    "digest",
    ["md5:" + "0" * 32, "sha384:" + "0" * 96, "sha256:xyz", "sha256:" + "A" * 64, "nonsense", ""],
)
def test_malformed_or_unsupported_digest(registry: Registry, digest: str) -> None:
    upload_id = upload(registry, "repo", b"x")
    with pytest.raises(DigestInvalid):
        commit_blob(registry, "repo", upload_id, digest, 1)
    assert registry.uploads.status("repo", upload_id).size == 1


def test_unknown_or_malformed_session(registry: Registry) -> None:
    for upload_id in (str(uuid.uuid4()), "../../x", "not-a-uuid"):
        with pytest.raises(BlobUploadUnknown):
            commit_blob(registry, "repo", upload_id, sha256(b"x"), 1)
    with pytest.raises(NameInvalid):
        commit_blob(registry, "Bad", str(uuid.uuid4()), sha256(b"x"), 1)


def test_unknown_session_never_links_a_blob_stored_elsewhere(registry: Registry) -> None:
    secret = b"private layer"
    registry.repo_blobs.link("owner/private", registry.blobs.put(secret))
    with pytest.raises(BlobUploadUnknown):
        commit_blob(registry, "attacker", str(uuid.uuid4()), sha256(secret), len(secret))
    assert not registry.repo_blobs.is_linked("attacker", Digest.parse(sha256(secret)))


def test_session_stripped_of_data_never_links_a_blob_stored_elsewhere(registry: Registry) -> None:
    secret = b"private layer"
    registry.repo_blobs.link("owner/private", registry.blobs.put(secret))
    upload_id = upload(registry, "attacker")
    registry.driver.delete(paths.upload_data("attacker", upload_id))
    with pytest.raises(BlobUploadUnknown):
        commit_blob(registry, "attacker", upload_id, sha256(secret), None)
    assert not registry.repo_blobs.is_linked("attacker", Digest.parse(sha256(secret)))


def test_bytes_appended_during_the_move_are_never_served(registry: Registry, driver: FaultyDriver) -> None:
    data = b"verified"
    upload_id = upload(registry, "repo", data)

    def late_chunk(source: str, dest: str) -> None:
        driver.on_move = None
        registry.uploads.append("repo", upload_id, b"sneaked in")

    driver.on_move = late_chunk
    with pytest.raises(BlobUploadInvalid):
        commit_blob(registry, "repo", upload_id, sha256(data), len(data))
    assert_nothing_written(registry, "repo", sha256(data))


# --- idempotence and crash safety ------------------------------------------------------


def test_commit_twice_gives_the_same_result(registry: Registry) -> None:
    data = b"deliver me twice"
    upload_id = upload(registry, "repo", data)
    first = commit_blob(registry, "repo", upload_id, sha256(data), len(data))
    assert commit_blob(registry, "repo", upload_id, sha256(data), len(data)) == first
    assert commit_blob(registry, "repo", upload_id, sha256(data), None) == first
    assert_committed(registry, "repo", upload_id, data, sha256(data))


def test_redelivery_with_a_different_size_is_rejected(registry: Registry) -> None:
    data = b"abc"
    upload_id = upload(registry, "repo", data)
    commit_blob(registry, "repo", upload_id, sha256(data), 3)
    with pytest.raises(SizeInvalid):
        commit_blob(registry, "repo", upload_id, sha256(data), 4)


@pytest.mark.parametrize("after", [False, True], ids=["before-step", "after-step"])
def test_killed_at_any_step_the_redelivered_commit_finishes(driver: FaultyDriver, after: bool) -> None:
    registry = Registry.from_driver(Settings(), driver)
    probe_data = os.urandom(3000)
    probe_id = upload(registry, "probe", probe_data)
    driver.changes = 0
    commit_blob(registry, "probe", probe_id, sha256(probe_data), None)
    steps = driver.changes
    assert steps >= 3  # link, move, delete the session

    for step in range(1, steps + 1):
        repo, data = f"repo{step}", os.urandom(3000)
        digest = sha256(data)
        upload_id = upload(registry, repo, data)
        driver.changes, driver.crash_at, driver.crash_after = 0, step, after
        with pytest.raises(Crash):
            commit_blob(registry, repo, upload_id, digest, len(data))
        driver.crash_at = None
        result = commit_blob(registry, repo, upload_id, digest, len(data))
        assert result == {"digest": digest, "size": len(data)}
        assert_committed(registry, repo, upload_id, data, digest)


def test_killed_between_link_and_move_on_disk(tmp_path: Path) -> None:
    faulty = FaultyDriver(FilesystemDriver(str(tmp_path)))
    registry = Registry.from_driver(Settings(), faulty)
    data = b"x" * 5000
    upload_id = upload(registry, "repo", data)

    def killed(source: str, dest: str) -> None:
        raise Crash()

    faulty.on_move = killed
    with pytest.raises(Crash):
        commit_blob(registry, "repo", upload_id, sha256(data), len(data))
    d = Digest.parse(sha256(data))
    assert registry.repo_blobs.is_linked("repo", d)
    with pytest.raises(BlobUnknown):
        registry.repo_blobs.stat("repo", d)  # a link alone never makes a blob visible
    faulty.on_move = None
    commit_blob(registry, "repo", upload_id, sha256(data), len(data))
    assert_committed(registry, "repo", upload_id, data, sha256(data))


def test_killed_after_move_on_disk(tmp_path: Path) -> None:
    faulty = FaultyDriver(FilesystemDriver(str(tmp_path)))
    registry = Registry.from_driver(Settings(), faulty)
    data = b"y" * 5000
    upload_id = upload(registry, "repo", data)
    faulty.changes = 0
    faulty.crash_at, faulty.crash_after = 2, True  # 1 = link, 2 = move
    with pytest.raises(Crash):
        commit_blob(registry, "repo", upload_id, sha256(data), len(data))
    assert registry.driver.exists(paths.upload_dir("repo", upload_id))
    assert not registry.driver.exists(paths.upload_data("repo", upload_id))
    faulty.crash_at = None
    assert commit_blob(registry, "repo", upload_id, sha256(data), len(data))["size"] == len(data)
    assert_committed(registry, "repo", upload_id, data, sha256(data))


def run_concurrently(*calls: Any) -> list[Any]:
    """Start every call at the same moment on its own thread; their results or exceptions."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_concurrent_commits_of_one_digest_into_two_repositories(tmp_path: Path) -> None:
    for round_ in range(5):
        root = tmp_path / str(round_)
        registry = Registry.from_driver(Settings(), CheckedDriver(FilesystemDriver(str(root))))
        data = os.urandom(256 * 1024)
        digest = sha256(data)
        sessions = [(repo, upload(registry, repo, data)) for repo in ("team/a", "team/b")]
        results = run_concurrently(
            *(
                functools.partial(commit_blob, registry, repo, upload_id, digest, len(data))
                for repo, upload_id in sessions
            )
        )
        assert results == [{"digest": digest, "size": len(data)}] * 2
        for repo, upload_id in sessions:
            assert_committed(registry, repo, upload_id, data, digest)
        blob_files = [p for p in (root / "docker/registry/v2/blobs").rglob("*") if p.is_file()]
        assert [p.name for p in blob_files] == ["data"]


def test_duplicate_deliveries_of_one_commit_run_concurrently(tmp_path: Path) -> None:
    registry = Registry.from_driver(Settings(), CheckedDriver(FilesystemDriver(str(tmp_path))))
    data = os.urandom(512 * 1024)
    upload_id = upload(registry, "repo", data)
    commit = functools.partial(commit_blob, registry, "repo", upload_id, sha256(data), len(data))
    assert run_concurrently(commit, commit, commit) == [{"digest": sha256(data), "size": len(data)}] * 3
    assert_committed(registry, "repo", upload_id, data, sha256(data))


# --- resumable digests -------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
def test_advance_digest_between_chunks_gives_the_same_digest(
    registry: Registry, driver: FaultyDriver, algorithm: str
) -> None:
    chunks = [os.urandom(n) for n in (1, 63, 64, 65, 1000, 128 * 1024 + 7)]
    data = b"".join(chunks)
    digest = f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    upload_id = registry.uploads.create("repo").upload_id
    resumable = resumable_available(algorithm)
    for chunk in chunks:
        size = registry.uploads.append("repo", upload_id, chunk)
        assert advance_digest(registry, "repo", upload_id, algorithm) == {"offset": size if resumable else 0}
    if resumable:
        states = registry.driver.list(paths.upload_hashstates_dir("repo", upload_id, algorithm))
        assert paths.upload_hashstate("repo", upload_id, algorithm, len(data)) in states
        assert len(states) <= 2  # only the newest states are kept
    driver.reads.clear()
    result = commit_blob(registry, "repo", upload_id, digest, len(data))
    assert result == {"digest": digest, "size": len(data)}
    assert_committed(registry, "repo", upload_id, data, digest)
    data_reads = [offset for path, offset in driver.reads if path == paths.upload_data("repo", upload_id)]
    assert data_reads == ([len(data)] if resumable else [0])  # only the (empty) tail is read


def test_commit_hashes_only_the_tail_after_a_saved_state(registry: Registry, driver: FaultyDriver) -> None:
    if not resumable_available("sha256"):
        pytest.fail("resumable sha256 hashing is expected on this platform")
    upload_id = upload(registry, "repo", b"a" * 10_000)
    assert advance_digest(registry, "repo", upload_id) == {"offset": 10_000}
    registry.uploads.append("repo", upload_id, b"b" * 500)
    data = b"a" * 10_000 + b"b" * 500
    driver.reads.clear()
    commit_blob(registry, "repo", upload_id, sha256(data), len(data))
    assert driver.reads == [(paths.upload_data("repo", upload_id), 10_000)]


def test_a_stale_saved_state_never_rejects_a_good_upload(registry: Registry) -> None:
    # A saved state over bytes that were later truncated and rewritten (a cancelled chunk)
    # must not turn a correct upload into DigestInvalid.
    upload_id = upload(registry, "repo", b"first version of the bytes")
    advance_digest(registry, "repo", upload_id)
    registry.driver.put_content(paths.upload_data("repo", upload_id), b"second version of the bytes")
    data = b"second version of the bytes"
    assert commit_blob(registry, "repo", upload_id, sha256(data), len(data))["size"] == len(data)
    assert_committed(registry, "repo", upload_id, data, sha256(data))


def test_foreign_or_damaged_states_are_ignored(registry: Registry) -> None:
    data = b"z" * 4096
    upload_id = upload(registry, "repo", data)
    registry.driver.put_content(paths.upload_hashstate("repo", upload_id, "sha256", 4096), b"\x00garbage")
    registry.driver.put_content(paths.upload_hashstate("repo", upload_id, "sha256", 99999), b"beyond the end")
    assert commit_blob(registry, "repo", upload_id, sha256(data), None)["size"] == 4096
    assert_committed(registry, "repo", upload_id, data, sha256(data))


class _Watched:
    """A worker's locks, noting when the advance lock is asked for (before it is had)."""

    def __init__(self, inner: RepositoryLocks, asked: threading.Event) -> None:
        self.inner = inner
        self.asked = asked

    def lock(self, repository: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        if repository.startswith("_advance:"):
            self.asked.set()
        return self.inner.lock(repository, timeout)


def _two_workers(
    kind: str, driver: StorageDriver, tmp_path: Path, asked: threading.Event
) -> tuple[Registry, Registry]:
    """Two views of one storage whose advances may overlap: two threads of one worker
    (shared in-process locks), or two worker processes sharing file or Redis locks."""
    a: RepositoryLocks
    b: RepositoryLocks
    if kind == "threads":
        a = b = LocalLocks()
    elif kind == "file-locks":
        a, b = FileLocks(str(tmp_path / "locks")), FileLocks(str(tmp_path / "locks"))
    else:
        server = fakeredis.FakeServer()
        a, b = (RedisLocks(fakeredis.FakeRedis(server=server)) for _ in range(2))
    first = Registry.from_driver(Settings(), driver, a)
    return first, Registry.from_driver(Settings(), driver, _Watched(b, asked))


@pytest.mark.parametrize("kind", ["threads", "file-locks", "redis-locks"])
def test_advances_of_one_session_never_hash_the_same_bytes_twice(
    driver: FaultyDriver, tmp_path: Path, kind: str
) -> None:
    """A second advance sent while the first one hashes (the body kept arriving) waits for
    it, then hashes on from the state it saved: every byte is read once, and the commit
    after them reads nothing again."""
    asked = threading.Event()
    first_worker, second_worker = _two_workers(kind, driver, tmp_path, asked)
    head, more = os.urandom(50_000), os.urandom(30_000)
    upload_id = upload(first_worker, "repo", head)
    data_path = paths.upload_data("repo", upload_id)
    real_reader = driver.reader
    second: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: second.append(advance_digest(second_worker, "repo", upload_id)))

    def body_arrives_while_hashing(path: str, offset: int = 0) -> BinaryIO:
        if threading.current_thread() is worker:
            asked.set()
        elif path == data_path and not worker.is_alive() and not second:
            first_worker.uploads.append("repo", upload_id, more)
            worker.start()
            assert asked.wait(30)  # the second advance asks for the lock (or, with none, reads)
        return real_reader(path, offset)

    driver.reader = body_arrives_while_hashing  # type: ignore[method-assign]
    assert advance_digest(first_worker, "repo", upload_id) == {"offset": len(head)}
    worker.join(30)
    assert second == [{"offset": len(head) + len(more)}]
    assert [offset for path, offset in driver.reads if path == data_path] == [0, len(head)]

    driver.reads.clear()
    data = head + more
    commit_blob(second_worker, "repo", upload_id, sha256(data), len(data))
    assert [offset for path, offset in driver.reads if path == data_path] == [len(data)]  # nothing left
    assert_committed(first_worker, "repo", upload_id, data, sha256(data))
    if kind == "file-locks":
        assert list((tmp_path / "locks").iterdir()) == []  # no lock file per session


def test_a_commit_waits_for_the_running_advance_and_resumes_its_state(
    driver: FaultyDriver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PUT's commit arrives while the last advance still hashes: it waits for it and
    hashes only what that advance did not, instead of hashing the same bytes beside it."""
    monkeypatch.setattr(blob_commit, "COMMIT_WAITS_FROM", 0)
    asked = threading.Event()
    advancer, committer = _two_workers("redis-locks", driver, tmp_path, asked)
    data = os.urandom(60_000)
    upload_id = upload(advancer, "repo", data)
    data_path = paths.upload_data("repo", upload_id)
    real_reader = driver.reader
    results: list[dict[str, Any]] = []
    commit = threading.Thread(
        target=lambda: results.append(commit_blob(committer, "repo", upload_id, sha256(data), len(data)))
    )

    def commit_arrives_while_hashing(path: str, offset: int = 0) -> BinaryIO:
        if threading.current_thread() is commit:
            asked.set()
        elif path == data_path and not commit.is_alive() and not results:
            commit.start()
            assert asked.wait(30)  # the commit asks for the lock (or, with none, reads)
        return real_reader(path, offset)

    driver.reader = commit_arrives_while_hashing  # type: ignore[method-assign]
    assert advance_digest(advancer, "repo", upload_id) == {"offset": len(data)}
    commit.join(30)
    assert results == [{"digest": sha256(data), "size": len(data)}]
    assert [offset for path, offset in driver.reads if path == data_path] == [0, len(data)]
    assert_committed(advancer, "repo", upload_id, data, sha256(data))


def test_a_commit_without_its_advance_lock_still_commits(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blob_commit, "COMMIT_WAITS_FROM", 0)
    monkeypatch.setattr(blob_commit, "ADVANCE_WAIT", 0)
    data = b"w" * 5000
    upload_id = upload(registry, "repo", data)
    with registry.locks.lock(blob_commit.advance_lock_name(upload_id)):  # a stuck advance
        done = threading.Thread(
            target=commit_blob, args=(registry, "repo", upload_id, sha256(data), len(data))
        )
        done.start()
        done.join(30)
    assert_committed(registry, "repo", upload_id, data, sha256(data))


def test_advance_digest_errors(registry: Registry) -> None:
    with pytest.raises(BlobUploadUnknown):
        advance_digest(registry, "repo", "not-a-uuid")
    with pytest.raises(DigestInvalid):
        advance_digest(registry, "repo", upload(registry, "repo"), "md5")
    upload_id = upload(registry, "repo")
    assert advance_digest(registry, "repo", upload_id) == {"offset": 0}


# --- sessions handed over between CNCF distribution and Lading ------------------------


@pytest.mark.e2e
def test_lading_commits_a_session_distribution_started(tmp_path: Path) -> None:
    """distribution starts an upload (startedat, data, its Go-encoded hash states); Lading
    reads the session, saves states distribution could resume (byte-identical encoding),
    and commits it resuming distribution's state. Needs `docker-registry` (fails if missing)."""
    import httpx

    from pipeline.formats.hashstate import ResumableHash
    from tests.support.distribution import distribution

    root = tmp_path / "root"
    faulty = FaultyDriver(FilesystemDriver(str(root)))
    lading = Registry.from_driver(Settings(), faulty)
    first, second = os.urandom(70_001), os.urandom(5_000)
    data = first + second

    with distribution(root, tmp_path) as host, httpx.Client(base_url=f"http://{host}", timeout=30) as http:
        started = http.post("/v2/dist/started/blobs/uploads/")
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        upload_id = started.headers["Docker-Upload-UUID"]
        for offset, chunk in ((0, first), (len(first), second)):
            patched = http.patch(
                location,
                content=chunk,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                },
            )
            assert patched.status_code == 202, patched.text
            location = patched.headers["Location"]

    repo = "dist/started"
    status = lading.uploads.status(repo, upload_id)
    assert status.size == len(data)
    assert status.started_at.tzinfo is not None
    saved = faulty.list(paths.upload_hashstates_dir(repo, upload_id, "sha256"))
    assert saved, "distribution saved no hash state"
    for path in saved:
        offset = int(path.rsplit("/", 1)[-1])
        ours = ResumableHash("sha256")
        ours.update(data[:offset])
        assert faulty.get_content(path) == ours.state()  # distribution could resume ours too

    faulty.reads.clear()
    result = commit_blob(lading, repo, upload_id, sha256(data), len(data))
    assert result == {"digest": sha256(data), "size": len(data)}
    assert_committed(lading, repo, upload_id, data, sha256(data))
    data_reads = [o for p, o in faulty.reads if p == paths.upload_data(repo, upload_id)]
    assert data_reads == [max(int(p.rsplit("/", 1)[-1]) for p in saved)]  # resumed, not from byte 0


def test_advance_racing_a_commit_leaves_no_session_behind(registry: Registry, driver: FaultyDriver) -> None:
    data = b"q" * 10_000
    upload_id = upload(registry, "repo", data)
    real_reader = driver.reader

    def commit_while_hashing(path: str, offset: int = 0) -> BinaryIO:
        stream = real_reader(path, offset)
        driver.reader = real_reader  # type: ignore[method-assign]
        commit_blob(registry, "repo", upload_id, sha256(data), len(data))
        return stream

    driver.reader = commit_while_hashing  # type: ignore[method-assign]
    with pytest.raises(BlobUploadUnknown):
        advance_digest(registry, "repo", upload_id)
    assert not driver.exists(paths.upload_dir("repo", upload_id))
    assert_committed(registry, "repo", upload_id, data, sha256(data))


def test_a_hash_state_saved_while_the_session_is_removed_does_not_fail_the_commit(
    registry: Registry, driver: FaultyDriver
) -> None:
    """An advance_digest job sent mid-body may write a hash state into the session while the
    commit removes it ("directory not empty"): the blob is in place, the commit succeeds."""
    data = b"x" * 5000
    upload_id = upload(registry, "repo", data)
    failed: list[str] = []
    real_delete = driver.delete

    def racing_delete(path: str) -> None:
        if path == paths.upload_dir("repo", upload_id) and not failed:
            failed.append(path)
            raise StorageError(f"{path}: conflicts with an existing file or directory (Directory not empty)")
        real_delete(path)

    driver.delete = racing_delete  # type: ignore[method-assign]
    result = commit_blob(registry, "repo", upload_id, str(Digest.of(data)), len(data))
    assert result == {"digest": str(Digest.of(data)), "size": 5000} and failed
    assert registry.repo_blobs.stat("repo", Digest.of(data)) == 5000
    with pytest.raises(BlobUploadUnknown):
        registry.uploads.status("repo", upload_id)
