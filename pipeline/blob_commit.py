"""The blob use cases jobs run: finish an upload into a blob, and hash an upload ahead.

`commit_blob` verifies the declared size and digest against the bytes stored in the
session, then makes the blob visible in the repository. Its steps are ordered so that a
worker killed at any point, and the job delivered again, ends in the same state:

    1. verify size, then digest (resuming the newest saved hash state, hashing the tail)
    2. write the repository's `_layers` link      (not visible yet: the blob data is absent)
    3. move the session's `data` to `blobs/`      (skipped when an intact blob is stored)
    4. delete the session directory

Linking before moving means a session whose `data` is gone was either committed (the link
is present and the blob exists → report the same success) or never completed (→ unknown).
No step ever links a blob whose bytes this session did not prove to have. A mismatch
writes nothing and leaves the session as it was, so the client may retry its PUT.

`advance_digest` hashes a session from its newest saved hash state to the current end of
`data` and saves the new state (`_uploads/<id>/hashstates/<alg>/<offset>`), so the commit
only reads the tail. Saved states are a cache: an unreadable one is skipped, and when a
resumed digest disagrees the commit re-hashes from byte 0 before rejecting anything.

One advance at a time per session: an advance hashes while holding the session's advance
lock (the registry's locks, so across workers too); the next one waits for it, then resumes
the state it saved. A commit of an upload big enough to have been advanced hashes under
that lock too, so it resumes what a running advance is about to save instead of hashing
the same bytes beside it. (Overlapping advances each resumed the same older state and
hashed the same range again: worker CPU +50% with advances every 16 MiB.)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from pipeline.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    PathNotFound,
    RegistryError,
    SizeInvalid,
    StorageError,
    StorageUnavailable,
    TooManyRequests,
)
from pipeline.formats.digest import CANONICAL, Digest, new_hasher
from pipeline.formats.hashstate import ResumableHash, resumable_available
from pipeline.formats.names import validate_name
from pipeline.storage import paths
from pipeline.storage.driver import StorageDriver
from pipeline.stores.uploads import is_upload_id

if TYPE_CHECKING:
    from pipeline.registry import Registry
    from pipeline.stores.pending import PendingCommit

READ_CHUNK = 1 << 20
KEEP_STATES = 2
DROP_ATTEMPTS = 5
# How long an advance waits for the one hashing the same session (one pass over at most
# the API's advance interval); past that it gives up: the commit hashes more.
ADVANCE_WAIT = 60.0
# Commits of uploads this big (the API advances every 16 MiB) wait for a running advance.
COMMIT_WAITS_FROM = 8 << 20

log = logging.getLogger("lading.pipeline")


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def commit_blob(
    registry: Registry, repository: str, upload_id: str, digest: str, size: int | None
) -> dict[str, Any]:
    """Turn upload `upload_id` into blob `digest` linked into `repository`.

    Returns {"digest", "size"}. Raises DigestInvalid (malformed, unsupported or mismatching
    digest), SizeInvalid (declared size differs from the stored bytes), BlobUploadUnknown
    (no such session, and not already committed as this digest)."""
    validate_name(repository)
    target = Digest.parse(digest)
    if not is_upload_id(upload_id):
        raise BlobUploadUnknown(upload_id)
    driver = registry.driver
    data_path = paths.upload_data(repository, upload_id)
    try:
        stored = driver.stat(data_path).size
    except PathNotFound:
        return _already_committed(registry, repository, upload_id, target, size)
    if size is not None and size != stored:
        raise _failed(
            registry, repository, upload_id, target, SizeInvalid({"declared": size, "stored": stored})
        )
    try:
        with _advances_done(registry, upload_id, stored):
            computed = _digest_of_upload(driver, repository, upload_id, target, stored)
    except PathNotFound:
        # Another delivery of this job moved the data away while we were reading it.
        return _already_committed(registry, repository, upload_id, target, size)
    if computed != target:
        mismatch = DigestInvalid({"declared": str(target), "computed": str(computed)})
        raise _failed(registry, repository, upload_id, target, mismatch)

    registry.repo_blobs.link(repository, target)
    _place_blob(registry, repository, data_path, upload_id, target, stored)
    _drop_session(driver, repository, upload_id)
    # Linked and in place: the next HEAD of it (from any API replica) is a cache hit.
    registry.blobs.cache.remember(target, stored, repository)
    return {"digest": str(target), "size": stored}


FAILED_FOR_GOOD = (DigestInvalid, SizeInvalid, BlobUploadInvalid)
"""Commit errors no retry of the same session can mend: its bytes are not the blob."""


def _failed(
    registry: Registry, repository: str, upload_id: str, target: Digest, error: RegistryError
) -> RegistryError:
    """`error`, after settling the batch-mode commit of this session if it is one (a pending
    record names this upload): nobody waits for the job to discard the session."""
    record = registry.pending.lookup(repository, target)
    if record is not None and record.upload_id == upload_id:
        settle_failed_batch(registry, record, error)
    return error


def settle_failed_batch(registry: Registry, record: PendingCommit, error: RegistryError) -> None:
    """A batch-mode commit failed for good (FAILED_FOR_GOOD): keep the error on its record,
    so the status URL and manifest PUTs answer it at once (even once the job's result has
    expired), and, when the completing request carried the bytes (`record.discard`), cancel
    the upload session, so nothing of it remains: what a synchronous PUT does, only later.
    Called by whoever learns of the failure first: the job itself, the status URL, a
    manifest PUT, reconcile. Other errors change nothing."""
    if not isinstance(error, FAILED_FOR_GOOD):
        return
    if record.failed is None:
        registry.pending.mark_failed(record, error)
    if record.discard and is_upload_id(record.upload_id):
        with contextlib.suppress(BlobUploadUnknown):
            registry.uploads.cancel(record.repository, record.upload_id)


def advance_digest(
    registry: Registry, repository: str, upload_id: str, algorithm: str = CANONICAL
) -> dict[str, Any]:
    """Hash the session from its newest saved state to the current end of `data` and
    save the state there. Returns {"offset": bytes hashed and saved}; {"offset": 0} and
    nothing done when resumable hashing is unavailable for the algorithm."""
    validate_name(repository)
    new_hasher(algorithm)  # DigestInvalid for an unsupported algorithm
    if not resumable_available(algorithm):
        return {"offset": 0}
    registry.uploads.status(repository, upload_id)  # BlobUploadUnknown for no such session
    try:
        with registry.locks.lock(advance_lock_name(upload_id), timeout=ADVANCE_WAIT):
            offset = _advance_held(registry, repository, upload_id, algorithm)
    except TooManyRequests:
        log.info("advance of upload %s gave up waiting for the one before it", upload_id)
        return {"offset": 0}
    return {"offset": offset}


@contextlib.contextmanager
def _advances_done(registry: Registry, upload_id: str, size: int) -> Iterator[None]:
    """Hold the session's advance lock, for an upload big enough to have been advanced: a
    running advance finishes first (the commit resumes its state) and none starts beside
    the commit. Without it when it cannot be had (busy too long, locks unreachable): the
    commit then only hashes more."""
    with contextlib.ExitStack() as stack:
        if size >= COMMIT_WAITS_FROM:
            try:
                stack.enter_context(registry.locks.lock(advance_lock_name(upload_id), timeout=ADVANCE_WAIT))
            except (TooManyRequests, StorageUnavailable) as exc:
                log.info("committing upload %s without its advance lock: %s", upload_id, exc)
        yield


def advance_lock_name(upload_id: str) -> str:
    """The lock an advance of session `upload_id` holds (a maintenance-style `_` name)."""
    return f"_advance:{upload_id}"


def _advance_held(registry: Registry, repository: str, upload_id: str, algorithm: str) -> int:
    """advance_digest's work, under the session's advance lock; the offset saved."""
    driver = registry.driver
    data_path = paths.upload_data(repository, upload_id)
    size = registry.uploads.status(repository, upload_id).size
    hasher = _resume(driver, repository, upload_id, algorithm, size) or ResumableHash(algorithm)
    start = hasher.offset
    if start < size:
        try:
            with driver.reader(data_path, start) as stream:
                _feed(hasher, stream, size - start)
        except PathNotFound:
            raise BlobUploadUnknown(upload_id) from None
        driver.put_content(
            paths.upload_hashstate(repository, upload_id, algorithm, hasher.offset), hasher.state()
        )
        if not driver.exists(data_path):
            # Committed or cancelled while we hashed: our state file would resurrect a
            # session directory nobody owns.
            _drop_session(driver, repository, upload_id)
            raise BlobUploadUnknown(upload_id)
        _prune_states(driver, repository, upload_id, algorithm)
    return hasher.offset


# --- steps ------------------------------------------------------------------------------


def _already_committed(
    registry: Registry, repository: str, upload_id: str, target: Digest, size: int | None
) -> dict[str, Any]:
    """The session's data is gone: success only if this digest is linked here and stored
    (an earlier delivery of this commit got past the move); then finish its cleanup."""
    try:
        blob_size = registry.repo_blobs.stat(repository, target)
    except BlobUnknown:
        raise BlobUploadUnknown(upload_id) from None
    if size is not None and size != blob_size:
        raise SizeInvalid({"declared": size, "stored": blob_size})
    _drop_session(registry.driver, repository, upload_id)
    return {"digest": str(target), "size": blob_size}


def _place_blob(
    registry: Registry, repository: str, data_path: str, upload_id: str, target: Digest, size: int
) -> None:
    """Move verified data into `blobs/` unless an intact copy is already stored there. A
    quarantined (corrupt) copy counts as absent: these verified bytes replace it."""
    # Before the existence check: withdraws the blob from a running garbage collection's
    # sweep (pipeline.maintenance.gc).
    registry.blobs.rescue(target)
    # Storage stats that leave the blob cache alone: commit_blob records the blob once,
    # when it is linked and in place (one Redis round trip per commit, not three); the
    # ways out below that leave it absent drop the entry (exists, delete).
    if registry.blobs.stored_size(target) == size:
        return  # content-addressed: the stored blob is these very bytes
    try:
        # A rename on a filesystem; concurrent moves of the same digest carry identical bytes.
        registry.driver.move(data_path, paths.blob_data(target))
    except PathNotFound:
        if not registry.blobs.exists(target):
            raise BlobUploadUnknown(upload_id) from None
        return
    registry.blobs.clear_quarantine(target)
    moved = registry.blobs.stored_size(target)
    if moved is not None and moved != size:
        # A chunk was appended between verification and the move (a client writing to the
        # session while committing it): never serve those bytes under this digest.
        with contextlib.suppress(BlobUnknown):
            registry.blobs.delete(target)
        with contextlib.suppress(BlobUnknown):
            registry.repo_blobs.unlink(repository, target)
        raise BlobUploadInvalid(f"upload data changed while it was committed ({size} → {moved} bytes)")


def _drop_session(driver: StorageDriver, repository: str, upload_id: str) -> None:
    for attempt in range(DROP_ATTEMPTS):
        try:
            driver.delete(paths.upload_dir(repository, upload_id))
            return
        except PathNotFound:
            return
        except StorageError:
            # An advance_digest job (sent while the body streamed) saved a hash state into
            # the directory while it was being removed ("directory not empty"); that job
            # drops the session itself once it sees the data gone. The blob is in place:
            # try again, and leave any remainder to upload purging rather than fail.
            if attempt == DROP_ATTEMPTS - 1:
                log.warning("could not remove upload session %s of %s", upload_id, repository, exc_info=True)


# --- hashing ----------------------------------------------------------------------------


def _digest_of_upload(
    driver: StorageDriver, repository: str, upload_id: str, target: Digest, size: int
) -> Digest:
    """The digest of the session's `size` stored bytes, resuming a saved state if one fits."""
    algorithm = target.algorithm
    data_path = paths.upload_data(repository, upload_id)
    resumed = _resume(driver, repository, upload_id, algorithm, size)
    if resumed is not None:
        _hash_tail(driver, data_path, resumed, resumed.offset, size)
        digest = Digest(algorithm, resumed.hexdigest())
        if digest == target:
            return digest
        # A saved state may describe bytes a cancelled chunk later truncated; only a full
        # re-hash may reject the upload.
    hasher: _Hasher = new_hasher(algorithm)
    _hash_tail(driver, data_path, hasher, 0, size)
    return Digest(algorithm, hasher.hexdigest())


def _hash_tail(driver: StorageDriver, data_path: str, hasher: _Hasher, start: int, size: int) -> None:
    with driver.reader(data_path, start) as stream:
        hashed = _feed(hasher, stream, None)
    if start + hashed != size:
        raise BlobUploadInvalid(f"upload data changed during commit ({size} → {start + hashed} bytes)")


def _feed(hasher: _Hasher, stream: BinaryIO, limit: int | None) -> int:
    """Hash `limit` bytes (or everything) of `stream` in READ_CHUNK reads; return the count."""
    total = 0
    while limit is None or total < limit:
        want = READ_CHUNK if limit is None else min(READ_CHUNK, limit - total)
        chunk = stream.read(want)
        if not chunk:
            break
        hasher.update(chunk)
        total += len(chunk)
    return total


def _state_offsets(driver: StorageDriver, repository: str, upload_id: str, algorithm: str) -> list[int]:
    """Offsets of the saved hash states, newest (largest) first."""
    try:
        children = driver.list(paths.upload_hashstates_dir(repository, upload_id, algorithm))
    except PathNotFound:
        return []
    names = (child.rsplit("/", 1)[-1] for child in children)
    return sorted((int(n) for n in names if n.isdigit()), reverse=True)


def _resume(
    driver: StorageDriver, repository: str, upload_id: str, algorithm: str, limit: int
) -> ResumableHash | None:
    """The newest usable saved state at or below `limit`, or None."""
    if not resumable_available(algorithm):
        return None
    for offset in _state_offsets(driver, repository, upload_id, algorithm):
        if offset > limit or offset == 0:
            continue
        try:
            state = driver.get_content(paths.upload_hashstate(repository, upload_id, algorithm, offset))
        except PathNotFound:
            continue  # pruned by a concurrent advance
        try:
            hasher = ResumableHash.restore(algorithm, state)
        except Exception:
            continue  # foreign or damaged state (e.g. written by another registry): a cache miss
        if hasher.offset == offset:
            return hasher
    return None


def _prune_states(driver: StorageDriver, repository: str, upload_id: str, algorithm: str) -> None:
    for offset in _state_offsets(driver, repository, upload_id, algorithm)[KEEP_STATES:]:
        try:
            driver.delete(paths.upload_hashstate(repository, upload_id, algorithm, offset))
        except PathNotFound:
            pass
