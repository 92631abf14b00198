"""Referrers: listing the manifests that name a subject, with artifactType filtering."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.formats.digest import Digest
from pipeline.formats.manifests import (
    EMPTY_DIGEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    parse_manifest,
)
from pipeline.storage import paths
from pipeline.storage.memory import MemoryDriver
from pipeline.stores.blobs import BlobStore, RepositoryBlobs
from pipeline.stores.manifests import ManifestStore
from pipeline.stores.referrers import Referrers

REPO = "app"
SUBJECT = Digest.of(b"the subject image manifest")
SBOM = "application/vnd.example.sbom.v1"
SIG = "application/vnd.example.signature.v1"
CONTENT: dict[Digest, bytes] = {}  # bytes behind every descriptor the tests build


class Env:
    def __init__(self) -> None:
        self.driver = MemoryDriver()
        self.blobs = BlobStore(self.driver)
        self.repo_blobs = RepositoryBlobs(self.driver, self.blobs)
        self.manifests = ManifestStore(self.driver, self.blobs, self.repo_blobs)
        self.referrers = Referrers(self.driver, self.manifests)

    def push(self, doc: dict[str, Any], repo: str = REPO) -> Manifest:
        m = parse_manifest(json.dumps(doc).encode(), None)
        for ref in m.blob_references():
            if ref.digest in CONTENT:
                self.repo_blobs.link(repo, self.blobs.put(CONTENT[ref.digest]))
        self.manifests.verify(repo, m)
        self.manifests.put(repo, m)
        if m.subject is not None:
            self.referrers.add(repo, m.subject.digest, m.digest)
        return m


@pytest.fixture
def env() -> Env:
    return Env()


def blob_desc(media_type: str, content: bytes) -> dict[str, Any]:
    digest = Digest.of(content)
    CONTENT[digest] = content
    return {"mediaType": media_type, "digest": str(digest), "size": len(content)}


def artifact(artifact_type: str | None, note: str, subject: Digest = SUBJECT, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_EMPTY, "digest": str(EMPTY_DIGEST), "size": 2},
        "layers": [blob_desc("application/octet-stream", note.encode())],
        "subject": {"mediaType": OCI_MANIFEST, "digest": str(subject), "size": 100},
        "annotations": {"note": note},
        **extra,
    }
    if artifact_type is not None:
        doc["artifactType"] = artifact_type
    return doc


def test_lists_every_referrer_with_its_descriptor_sorted_by_digest(env: Env) -> None:
    sbom = env.push(artifact(SBOM, "sbom"))
    sig = env.push(artifact(SIG, "sig"))
    # artifact type taken from config.mediaType when the manifest has no artifactType
    by_config = artifact(None, "cfg")
    by_config["config"] = blob_desc(SIG, b"signature config")
    cfg = env.push(by_config)
    idx = env.push(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": SBOM,
            "manifests": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": str(SUBJECT), "size": 100},
        }
    )
    listed = env.referrers.list(REPO, SUBJECT)
    assert [d.digest for d in listed] == sorted([sbom.digest, sig.digest, cfg.digest, idx.digest], key=str)
    by_digest = {d.digest: d for d in listed}
    assert by_digest[sbom.digest].to_json() == {
        "mediaType": OCI_MANIFEST,
        "digest": str(sbom.digest),
        "size": sbom.size,
        "artifactType": SBOM,
        "annotations": {"note": "sbom"},
    }
    assert by_digest[cfg.digest].artifact_type == SIG
    assert by_digest[idx.digest].media_type == OCI_INDEX
    assert by_digest[idx.digest].artifact_type == SBOM
    assert by_digest[idx.digest].annotations == {}


def test_filter_by_artifact_type(env: Env) -> None:
    sbom1 = env.push(artifact(SBOM, "one"))
    env.push(artifact(SIG, "two"))
    sbom2 = env.push(artifact(SBOM, "three"))
    assert {d.digest for d in env.referrers.list(REPO, SUBJECT, SBOM)} == {sbom1.digest, sbom2.digest}
    assert env.referrers.list(REPO, SUBJECT, "application/none") == []


def test_subjects_and_repositories_are_separate(env: Env) -> None:
    other_subject = Digest.of(b"another subject")
    env.push(artifact(SBOM, "a"))
    mine = env.push(artifact(SBOM, "b", subject=other_subject))
    env.push(artifact(SBOM, "c"), repo="elsewhere")
    assert [d.digest for d in env.referrers.list(REPO, other_subject)] == [mine.digest]
    assert len(env.referrers.list(REPO, SUBJECT)) == 1
    assert env.referrers.list(REPO, Digest.of(b"no referrers")) == []
    assert env.referrers.list("never/pushed", SUBJECT) == []


def test_deleted_referrer_disappears_even_with_a_stale_link(env: Env) -> None:
    keep = env.push(artifact(SBOM, "keep"))
    gone = env.push(artifact(SBOM, "gone"))
    env.manifests.delete(REPO, gone.digest)
    assert env.driver.exists(paths.referrer_link(REPO, SUBJECT, gone.digest))
    assert [d.digest for d in env.referrers.list(REPO, SUBJECT)] == [keep.digest]


def test_remove_is_idempotent(env: Env) -> None:
    m = env.push(artifact(SBOM, "x"))
    env.referrers.remove(REPO, SUBJECT, m.digest)
    env.referrers.remove(REPO, SUBJECT, m.digest)
    assert env.referrers.list(REPO, SUBJECT) == []
    env.referrers.add(REPO, SUBJECT, m.digest)
    env.referrers.add(REPO, SUBJECT, m.digest)
    assert [d.digest for d in env.referrers.list(REPO, SUBJECT)] == [m.digest]
