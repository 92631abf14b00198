"""Use cases that change a repository's manifests: commit (the commit-manifest job) and
delete.

Commit order under the repository lock, chosen for crash safety and for "a rejected
manifest leaves nothing behind":

    parse → (digest reference check) → verify every reference → deep verification
          (layers vs the config's diff_ids, per policy) → blob → revision link
          → referrer link → tag

Nothing is written before verification passes; the tag moves last, so a crash at any
point never leaves a tag naming a manifest that is not fully stored. Every step is
idempotent, so a redelivered job simply repeats it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from pipeline import deepverify
from pipeline.errors import DigestInvalid, ManifestInvalid, ManifestUnknown, OperationUnsupported
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import parse_manifest
from pipeline.formats.names import parse_reference, validate_name

if TYPE_CHECKING:
    from pipeline.registry import Registry


def commit_manifest(
    registry: Registry,
    repository: str,
    reference: str,
    media_type: str | None,
    body: bytes,
    requested_at: int | None = None,
) -> dict[str, Any]:
    """Verify and store a pushed manifest; tag it when `reference` is a tag.

    `requested_at` (ns since the epoch, when the push arrived): the tag moves only if no
    change of it requested later has been applied (pipeline.stores.tags) — a redelivered job of
    a client that gave up long ago stores the manifest (idempotent, harmless) but leaves
    the tag where newer pushes put it.

    Returns {"digest", "media_type", "size", "subject"}; "subject" is the subject digest
    (for the `OCI-Subject` response header) or None. Raises ManifestInvalid,
    DigestInvalid (digest reference does not match the body), TagInvalid, NameInvalid,
    ManifestBlobUnknown (listing every missing reference), TooManyRequests (lock busy).
    """
    validate_name(repository)
    ref = parse_reference(reference)
    manifest = parse_manifest(body, media_type)
    if isinstance(ref, Digest):
        if ref.algorithm != manifest.digest.algorithm:
            manifest = dataclasses.replace(manifest, digest=Digest.of(manifest.raw, ref.algorithm))
        if ref != manifest.digest:
            raise DigestInvalid(f"manifest body hashes to {manifest.digest}, not {ref}")
    subject = manifest.subject.digest if manifest.subject is not None else None

    policy = registry.settings.deep_verification
    with registry.locks.lock(repository):
        # Before verify checks they exist: withdraws every blob this manifest relies on from
        # a running garbage collection's sweep (the protocol: pipeline.maintenance.gc).
        references = (*manifest.blob_references(), *manifest.manifest_references())
        registry.blobs.rescue_all([manifest.digest, *(desc.digest for desc in references)])
        registry.manifests.verify(repository, manifest)
        verification = deepverify.check_manifest(registry, manifest, policy)
        deepverify.raise_if_rejected(verification)
        registry.manifests.put(repository, manifest)
        deepverify.record(registry, repository, verification)
        if subject is not None:
            registry.referrers.add(repository, subject, manifest.digest)
        if isinstance(ref, str):
            registry.tags.tag(repository, ref, manifest.digest, requested_at)

    return {
        "digest": str(manifest.digest),
        "media_type": manifest.media_type,
        "size": manifest.size,
        "subject": str(subject) if subject is not None else None,
    }


def _subject_of(registry: Registry, repository: str, digest: Digest) -> Digest | None:
    try:
        body, media_type = registry.manifests.get(repository, digest)
        manifest = parse_manifest(body, media_type)
    except (ManifestUnknown, ManifestInvalid):
        return None
    return manifest.subject.digest if manifest.subject is not None else None


def delete_manifest(registry: Registry, repository: str, reference: str) -> dict[str, Any]:
    """Delete by digest: every tag pointing at it, its revision link and its referrer
    link. Delete by tag: only the tag. Blobs stay for garbage collection.

    Returns {"digest": str, "tags": [removed tags]}. Raises OperationUnsupported when
    deletes are disabled, ManifestUnknown when there is nothing to delete.
    """
    if not registry.settings.storage.delete_enabled:
        raise OperationUnsupported("deletes are disabled (storage.delete.enabled is false)")
    validate_name(repository)
    ref = parse_reference(reference)
    with registry.locks.lock(repository):
        if isinstance(ref, str):
            digest = registry.tags.resolve(repository, ref)
            registry.tags.untag(repository, ref)
            return {"digest": str(digest), "tags": [ref]}
        tags = registry.tags.lookup(repository, ref)
        subject = _subject_of(registry, repository, ref)
        registry.manifests.delete(repository, ref)
        if subject is not None:
            registry.referrers.remove(repository, subject, ref)
        return {"digest": str(ref), "tags": tags}
