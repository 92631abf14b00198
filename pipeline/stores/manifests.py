"""Manifests of a repository: revision links over the global blob store.

A manifest's bytes are an ordinary content-addressed blob; what makes it part of a
repository is `_manifests/revisions/<alg>/<hex>/link` (as in distribution, manifests are
*not* linked under `_layers`). `verify` checks everything a manifest references before
anything is written, and reports every missing digest at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pipeline.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    PathNotFound,
)
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import EMPTY_DIGEST, EMPTY_JSON, Manifest, detect_media_type
from pipeline.storage import paths
from pipeline.storage.driver import StorageDriver
from pipeline.stores.digest_dirs import digests_in
from pipeline.stores.tags import TagStore, put_link

if TYPE_CHECKING:
    from pipeline.stores.blobs import BlobStore, RepositoryBlobs


class ManifestStore:
    """Stores, verifies, serves and deletes manifests of every repository on a driver."""

    def __init__(self, driver: StorageDriver, blobs: BlobStore, repo_blobs: RepositoryBlobs) -> None:
        self.driver = driver
        self.blobs = blobs
        self.repo_blobs = repo_blobs
        self._tags = TagStore(driver)

    def _has_revision(self, repo: str, digest: Digest) -> bool:
        return self.driver.exists(paths.manifest_revision_link(repo, digest))

    def exists(self, repo: str, digest: Digest) -> bool:
        """True when the repository has a revision link for `digest` and its bytes exist."""
        return self._has_revision(repo, digest) and self.blobs.exists(digest)

    def get(self, repo: str, digest: Digest) -> tuple[bytes, str]:
        """(body, media type) of a manifest in the repository; ManifestUnknown otherwise."""
        if not self._has_revision(repo, digest):
            raise ManifestUnknown(f"manifest {digest} not found in {repo!r}")
        try:
            body = self.blobs.get(digest)
        except (BlobUnknown, PathNotFound):
            raise ManifestUnknown(f"manifest {digest} in {repo!r} has no bytes in storage") from None
        return body, detect_media_type(body)

    def _blob_size(self, repo: str, digest: Digest) -> int | None:
        """The blob's size if it is linked into `repo` AND its data is present, else None
        (RepositoryBlobs.stat's rule)."""
        try:
            return self.repo_blobs.stat(repo, digest)
        except BlobUnknown:
            return None

    def _blob_present(self, repo: str, digest: Digest) -> bool:
        return self._blob_size(repo, digest) is not None

    def verify(self, repo: str, manifest: Manifest) -> None:
        """Raise ONE ManifestBlobUnknown listing, in manifest order and each once, every
        referenced blob not linked into `repo` and every child manifest not in `repo`;
        then ManifestInvalid if a descriptor's `size` is not the stored content's size (the
        image spec: content whose length differs from the descriptor's must not be
        trusted; the blob is known, so MANIFEST_BLOB_UNKNOWN would send the client to push
        it again for nothing)."""
        missing: list[str] = []
        wrong: list[dict[str, object]] = []
        seen: set[Digest] = set()
        for desc in manifest.blob_references():
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            # The OCI empty descriptor's bytes are known (`{}`); `put` provides them.
            if desc.digest == EMPTY_DIGEST:
                if desc.size != len(EMPTY_JSON):
                    wrong.append({"digest": str(desc.digest), "size": desc.size, "stored": len(EMPTY_JSON)})
                continue
            size = self._blob_size(repo, desc.digest)
            if size is None:
                missing.append(str(desc.digest))
            elif size != desc.size:
                wrong.append({"digest": str(desc.digest), "size": desc.size, "stored": size})
        for desc in manifest.manifest_references():
            if desc.digest in seen:
                continue
            seen.add(desc.digest)
            if not self.exists(repo, desc.digest):
                missing.append(str(desc.digest))
                continue
            try:
                size = self.blobs.stat(desc.digest)
            except BlobUnknown:
                continue
            if size != desc.size:
                wrong.append({"digest": str(desc.digest), "size": desc.size, "stored": size})
        if missing:
            raise ManifestBlobUnknown(missing)
        if wrong:
            raise ManifestInvalid(wrong, "a descriptor's size differs from the stored content's size")

    def put(self, repo: str, manifest: Manifest) -> None:
        """Store the manifest bytes as a blob, then write its revision link (idempotent).
        Call `verify` first: `put` trusts that the references are present."""
        if any(d.digest == EMPTY_DIGEST for d in manifest.blob_references()) and not self._blob_present(
            repo, EMPTY_DIGEST
        ):
            self.blobs.put(EMPTY_JSON)
            self.repo_blobs.link(repo, EMPTY_DIGEST)
        stored = self.blobs.put(manifest.raw, manifest.digest.algorithm)
        if stored != manifest.digest:
            raise DigestInvalid(f"manifest stored as {stored}, expected {manifest.digest}")
        link = paths.manifest_revision_link(repo, manifest.digest)
        put_link(self.driver, link, str(stored).encode("ascii"))

    def delete(self, repo: str, digest: Digest) -> None:
        """Remove every tag pointing at `digest`, then its revision link (tags first, so a
        crash never leaves a tag naming a missing revision). ManifestUnknown if absent."""
        if not self._has_revision(repo, digest):
            raise ManifestUnknown(f"manifest {digest} not found in {repo!r}")
        for tag in self._tags.lookup(repo, digest):
            try:
                self._tags.untag(repo, tag)
            except ManifestUnknown:
                pass
        try:
            self.driver.delete(paths.manifest_revision_dir(repo, digest))
        except PathNotFound:
            raise ManifestUnknown(f"manifest {digest} not found in {repo!r}") from None

    def revisions(self, repo: str) -> Iterator[Digest]:
        """Digests of every manifest revision linked in the repository (lexical order)."""
        for digest in digests_in(self.driver, paths.manifest_revisions_dir(repo)):
            if self._has_revision(repo, digest):
                yield digest
