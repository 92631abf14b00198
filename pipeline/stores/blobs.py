"""Blobs: the global content-addressed store, and each repository's linked view of it.

`BlobStore` owns `blobs/<alg>/<hex[:2]>/<hex>/data`. A blob's path is its digest, so a
write of bytes that are already stored is skipped: an existing blob is never rewritten.

Two of Lading's own markers change what `BlobStore` does (pipeline.maintenance):
- a *quarantine* marker (written by scrub when the bytes no longer hash to the digest)
  makes `stat`/`open`/`get` raise BlobCorrupt, a BlobUnknown: a pull gets an error, never
  corrupt bytes, and a push of the same digest stores fresh bytes and clears the marker;
- a *GC candidate* marker says a garbage collection intends to delete the blob. Every
  writer that relies on an existing blob calls `rescue` BEFORE checking that it exists,
  which makes the sweep keep it (the protocol is explained in pipeline.maintenance.gc).

`RepositoryBlobs` owns `repositories/<name>/_layers/<alg>/<hex>/link`. The link is the
access boundary: a repository sees a blob only when the link is present *and* the blob's
data exists. Link files hold the digest string with no trailing newline, exactly as CNCF
distribution writes them, so either registry can serve the other's storage.

Both keep a blob descriptor cache (pipeline.stores.blobcache) current: every storage stat that
finds a blob records it, every one that does not, and every delete, drops it. Only
`RepositoryBlobs.describe` (the HEAD/GET path) answers from the cache; `stat` and `exists`
always ask storage, so nothing that writes trusts a cached "exists".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

from pipeline.errors import BlobCorrupt, BlobUnknown, DigestInvalid, PathNotFound
from pipeline.formats.digest import CANONICAL, Digest
from pipeline.formats.names import is_valid_name, validate_name
from pipeline.storage import paths
from pipeline.storage.driver import StorageDriver
from pipeline.stores.blobcache import BlobCache, NoBlobCache
from pipeline.stores.digest_dirs import digests_in


class BlobStore:
    """Global blob data, addressed by digest. Knows nothing of repositories."""

    def __init__(self, driver: StorageDriver, cache: BlobCache | None = None) -> None:
        self.driver = driver
        self.cache: BlobCache = cache if cache is not None else NoBlobCache()

    def stat(self, digest: Digest) -> int:
        """The blob's size in bytes, from storage (never the cache). BlobUnknown if it is
        not stored, BlobCorrupt if it is quarantined."""
        try:
            size = self._stat(digest)
        except BlobUnknown:
            self.cache.forget(digest)
            raise
        self.cache.remember(digest, size)
        return size

    def stored_size(self, digest: Digest) -> int | None:
        """The blob's size from storage, None when it is not stored or is quarantined.
        Leaves the cache alone: for a writer that records the outcome itself (a commit
        remembers the blob once, when it is in place, and drops it on every way it fails)."""
        try:
            return self._stat(digest)
        except BlobUnknown:  # BlobCorrupt included
            return None

    def _stat(self, digest: Digest) -> int:
        try:
            info = self.driver.stat(paths.blob_data(digest))
        except PathNotFound:
            raise BlobUnknown(str(digest)) from None
        if info.is_dir:
            raise BlobUnknown(str(digest))
        self._refuse_quarantined(digest)
        return info.size

    def _refuse_quarantined(self, digest: Digest) -> None:
        if self.driver.exists(paths.quarantine_marker(digest)):
            raise BlobCorrupt(str(digest))

    def is_quarantined(self, digest: Digest) -> bool:
        return self.driver.exists(paths.quarantine_marker(digest))

    def clear_quarantine(self, digest: Digest) -> None:
        """Forget a quarantine (after fresh, verified bytes replaced the blob's data)."""
        self._drop(paths.quarantine_marker(digest))

    def rescue(self, digest: Digest) -> None:
        """Withdraw the blob from a running garbage collection's sweep (delete its candidate
        marker). Call it BEFORE checking the blob exists when about to rely on it."""
        self.rescue_all([digest])

    def rescue_all(self, digests: Iterable[Digest]) -> None:
        """`rescue` for several blobs; one storage check when no collection is sweeping."""
        if not self.driver.exists(paths.gc_sweeping()):
            return
        for digest in digests:
            self._drop(paths.gc_candidate(digest))

    def _drop(self, marker: str) -> None:
        # Markers are rare: look before deleting, so the common case writes nothing.
        if not self.driver.exists(marker):
            return
        try:
            self.driver.delete(marker)
        except PathNotFound:
            pass

    def exists(self, digest: Digest) -> bool:
        try:
            self.stat(digest)
        except BlobUnknown:
            return False
        return True

    def open(self, digest: Digest, offset: int = 0) -> BinaryIO:
        """A seekable stream of the blob from `offset`. The caller closes it."""
        self._refuse_quarantined(digest)
        try:
            return self.driver.reader(paths.blob_data(digest), offset)
        except PathNotFound:
            raise BlobUnknown(str(digest)) from None

    def get(self, digest: Digest) -> bytes:
        self._refuse_quarantined(digest)
        try:
            return self.driver.get_content(paths.blob_data(digest))
        except PathNotFound:
            raise BlobUnknown(str(digest)) from None

    def put(self, data: bytes, algorithm: str = CANONICAL) -> Digest:
        """Store `data` under its digest and return the digest. Idempotent: when the blob
        is already stored nothing is written (its bytes, mtime and identity stay as they are).
        A quarantined blob is rewritten with `data` and its quarantine cleared."""
        digest = Digest.of(data, algorithm)
        self.rescue(digest)
        if self.exists(digest):
            return digest
        # The writer makes nothing visible until commit, so a reader never sees a partial blob.
        with self.driver.writer(paths.blob_data(digest)) as writer:
            writer.write(data)
            writer.commit()
        self.clear_quarantine(digest)
        self.cache.remember(digest, len(data))
        return digest

    def local_path(self, digest: Digest) -> str | None:
        """The OS path of the blob's data for zero-copy sending; None when the driver has
        no local files. BlobUnknown if the blob is not stored."""
        if not self.driver.capabilities.local_path:
            return None
        self.stat(digest)
        return self.driver.local_path(paths.blob_data(digest))

    def redirect_url(self, digest: Digest, method: str = "GET") -> str | None:
        """A URL the client may fetch the blob from directly; None when the driver cannot
        redirect. Whether to redirect at all is the caller's (configuration's) decision."""
        if not self.driver.capabilities.redirect:
            return None
        self._refuse_quarantined(digest)
        return self.driver.redirect_url(paths.blob_data(digest), method)

    def delete(self, digest: Digest) -> None:
        """Remove the blob's data (garbage collection only). BlobUnknown if absent."""
        try:
            self.driver.delete(paths.blob_dir(digest))
        except PathNotFound:
            raise BlobUnknown(str(digest)) from None
        finally:
            self.cache.forget(digest)


class RepositoryBlobs:
    """The blobs a repository may see: those linked under its `_layers/`."""

    def __init__(self, driver: StorageDriver, blobs: BlobStore) -> None:
        self.driver = driver
        self.blobs = blobs

    def _target(self, repo: str, digest: Digest) -> Digest | None:
        """The digest the repository's link for `digest` names, or None without a link.

        distribution allows a link to name another digest of the same content (a
        cross-algorithm lookup); the data read is then the target's. A link whose content
        is not a digest counts as absent rather than failing the whole request."""
        try:
            content = self.driver.get_content(paths.layer_link(validate_name(repo), digest))
        except PathNotFound:
            return None
        try:
            return Digest.parse(content.decode("utf-8", errors="replace").strip())
        except DigestInvalid:
            return None

    def is_linked(self, repo: str, digest: Digest) -> bool:
        """True when the repository holds a link for `digest` (the data may still be absent)."""
        return self._target(repo, digest) is not None

    def stat(self, repo: str, digest: Digest) -> int:
        """The blob's size, from storage. BlobUnknown unless it is linked here AND its data
        exists."""
        target = self._target(repo, digest)
        if target is None:
            raise BlobUnknown(str(digest))
        try:
            size = self.blobs.stat(target)
        except BlobUnknown as exc:
            raise type(exc)(str(digest)) from None  # BlobCorrupt stays BlobCorrupt
        self.blobs.cache.remember(digest, size, repo, target)
        return size

    def describe(self, repo: str, digest: Digest) -> int:
        """`stat` answered from the blob descriptor cache when it can (HEAD and GET of a
        blob). For readers only: a writer that relies on the blob calls `stat`."""
        size = self.blobs.cache.describe(repo, digest)
        return self.stat(repo, digest) if size is None else size

    def open(self, repo: str, digest: Digest, offset: int = 0) -> BinaryIO:
        """A stream of the blob from `offset`; the same visibility rule as `stat`."""
        target = self._target(repo, digest)
        if target is None:
            raise BlobUnknown(str(digest))
        try:
            return self.blobs.open(target, offset)
        except BlobUnknown as exc:
            raise type(exc)(str(digest)) from None  # BlobCorrupt stays BlobCorrupt

    def link(self, repo: str, digest: Digest) -> None:
        """Write `_layers/<alg>/<hex>/link` containing `alg:hex` (no newline). Idempotent."""
        path = paths.layer_link(validate_name(repo), digest)
        content = str(digest).encode("ascii")
        try:
            if self.driver.get_content(path) == content:
                return
        except PathNotFound:
            pass
        self.driver.put_content(path, content)

    def unlink(self, repo: str, digest: Digest) -> None:
        """Remove the repository's link for `digest`. BlobUnknown if it has none."""
        try:
            self.driver.delete(paths.layer_link_dir(validate_name(repo), digest))
        except PathNotFound:
            raise BlobUnknown(str(digest)) from None
        finally:
            self.blobs.cache.forget_link(repo, digest)

    def mount(self, source_repo: str, target_repo: str, digest: Digest) -> bool:
        """Link a blob the source repository can see into the target repository; no bytes
        are copied. False (and nothing written) when the source cannot see the blob — the
        client then uploads it normally. An invalid source name counts as "cannot see"."""
        validate_name(target_repo)
        if not is_valid_name(source_repo):
            return False
        self.blobs.rescue(digest)
        try:
            self.stat(source_repo, digest)
        except BlobUnknown:
            return False
        self.link(target_repo, digest)
        return True

    def links(self, repo: str) -> Iterator[Digest]:
        """Every digest linked into the repository, in lexical order (data may be absent)."""
        for digest in digests_in(self.driver, paths.layers_dir(validate_name(repo))):
            if self.driver.exists(paths.layer_link(repo, digest)):
                yield digest
