"""ManifestStore: verification that reports everything missing, storage in distribution's
layout, serving, deletion."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import pytest

from pipeline.errors import ManifestBlobUnknown, ManifestUnknown
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_DIGEST,
    OCI_CONFIG,
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
from pipeline.stores.tags import TagStore

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REPO = "team/app"


class Env:
    def __init__(self) -> None:
        self.driver = MemoryDriver()
        self.blobs = BlobStore(self.driver)
        self.repo_blobs = RepositoryBlobs(self.driver, self.blobs)
        self.manifests = ManifestStore(self.driver, self.blobs, self.repo_blobs)
        self.tags = TagStore(self.driver)

    def blob(self, content: bytes, repo: str = REPO) -> Digest:
        digest = self.blobs.put(content)
        self.repo_blobs.link(repo, digest)
        return digest

    def files(self) -> set[str]:
        return {info.path for info in self.driver.walk("/") if not info.is_dir}


@pytest.fixture
def env() -> Env:
    return Env()


def desc(content: bytes, media_type: str = LAYER) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(Digest.of(content)), "size": len(content)}


def image(config: bytes, *layers: bytes, **fields: Any) -> Manifest:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(config, OCI_CONFIG),
        "layers": [desc(layer) for layer in layers],
        **fields,
    }
    return parse_manifest(json.dumps(doc).encode(), None)


def index(*children: Manifest, media_type: str = OCI_INDEX) -> Manifest:
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [{"mediaType": c.media_type, "digest": str(c.digest), "size": c.size} for c in children],
    }
    return parse_manifest(json.dumps(doc).encode(), None)


def missing_of(env: Env, manifest: Manifest, repo: str = REPO) -> list[str]:
    with pytest.raises(ManifestBlobUnknown) as info:
        env.manifests.verify(repo, manifest)
    return info.value.digests


def test_verify_reports_all_three_missing_blobs_in_manifest_order(env: Env) -> None:
    env.blob(b"layer-present")
    m = image(b"config-missing", b"layer-a-missing", b"layer-present", b"layer-b-missing")
    assert missing_of(env, m) == [
        str(Digest.of(b"config-missing")),
        str(Digest.of(b"layer-a-missing")),
        str(Digest.of(b"layer-b-missing")),
    ]


def test_verify_lists_a_repeated_missing_digest_once(env: Env) -> None:
    m = image(b"cfg", b"same", b"same")
    assert missing_of(env, m) == [str(Digest.of(b"cfg")), str(Digest.of(b"same"))]


def test_blob_in_another_repository_or_without_data_counts_as_missing(env: Env) -> None:
    env.blob(b"cfg")
    env.blob(b"elsewhere", repo="other/repo")
    dangling = Digest.of(b"dangling")
    env.repo_blobs.link(REPO, dangling)  # a link whose data is gone
    m = image(b"cfg", b"elsewhere", b"dangling")
    assert missing_of(env, m) == [str(Digest.of(b"elsewhere")), str(dangling)]


def test_verify_passes_when_everything_is_linked(env: Env) -> None:
    env.blob(b"cfg")
    env.blob(b"l1")
    env.manifests.verify(REPO, image(b"cfg", b"l1"))


def test_foreign_layer_with_urls_need_not_exist(env: Env) -> None:
    env.blob(b"cfg")
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": desc(b"cfg", "application/vnd.docker.container.image.v1+json"),
        "layers": [
            {
                **desc(b"foreign", "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
                "urls": ["https://x/y"],
            }
        ],
    }
    env.manifests.verify(REPO, parse_manifest(json.dumps(doc).encode(), None))


def test_index_with_missing_child_is_reported(env: Env) -> None:
    env.blob(b"cfg")
    present = image(b"cfg", annotations={"n": "1"})
    absent = image(b"cfg", annotations={"n": "2"})
    elsewhere = image(b"cfg", annotations={"n": "3"})
    env.manifests.put(REPO, present)
    env.blob(b"cfg", repo="other/repo")
    env.manifests.put("other/repo", elsewhere)
    for media_type in (OCI_INDEX, DOCKER_LIST):
        idx = index(present, absent, elsewhere, media_type=media_type)
        assert missing_of(env, idx) == [str(absent.digest), str(elsewhere.digest)]


def test_rejected_verification_writes_nothing(env: Env) -> None:
    env.blob(b"cfg")
    before = env.files()
    missing_of(env, image(b"cfg", b"nope"))
    assert env.files() == before


def test_put_stores_blob_and_revision_link_in_distribution_layout(env: Env) -> None:
    env.blob(b"cfg")
    m = image(b"cfg")
    env.manifests.put(REPO, m)
    hexd = hashlib.sha256(m.raw).hexdigest()
    root = "/docker/registry/v2"
    assert env.driver.get_content(f"{root}/blobs/sha256/{hexd[:2]}/{hexd}/data") == m.raw
    link = f"{root}/repositories/{REPO}/_manifests/revisions/sha256/{hexd}/link"
    assert env.driver.get_content(link) == f"sha256:{hexd}".encode()
    # distribution links manifests as revisions only, never under _layers
    assert not env.driver.exists(paths.layer_link(REPO, m.digest))
    env.manifests.put(REPO, m)  # idempotent
    assert env.manifests.get(REPO, m.digest) == (m.raw, OCI_MANIFEST)
    assert env.manifests.exists(REPO, m.digest)
    assert not env.manifests.exists("other/repo", m.digest)


def test_put_by_sha512_stores_under_sha512(env: Env) -> None:
    env.blob(b"cfg")
    m = image(b"cfg")
    m512 = dataclasses.replace(m, digest=Digest.of(m.raw, "sha512"))
    env.manifests.put(REPO, m512)
    assert env.manifests.get(REPO, m512.digest)[0] == m.raw
    assert not env.manifests.exists(REPO, m.digest)


def test_empty_config_is_provided_by_put(env: Env) -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example",
        "config": {"mediaType": OCI_EMPTY, "digest": str(EMPTY_DIGEST), "size": 2},
        "layers": [],
    }
    m = parse_manifest(json.dumps(doc).encode(), None)
    env.manifests.verify(REPO, m)
    env.manifests.put(REPO, m)
    assert env.repo_blobs.stat(REPO, EMPTY_DIGEST) == 2
    assert env.blobs.get(EMPTY_DIGEST) == b"{}"


def test_get_unknown_or_bytes_missing_is_manifest_unknown(env: Env) -> None:
    env.blob(b"cfg")
    m = image(b"cfg")
    with pytest.raises(ManifestUnknown):
        env.manifests.get(REPO, m.digest)
    env.manifests.put(REPO, m)
    env.blobs.delete(m.digest)
    assert not env.manifests.exists(REPO, m.digest)
    with pytest.raises(ManifestUnknown):
        env.manifests.get(REPO, m.digest)


def test_detected_media_type_is_served(env: Env) -> None:
    env.blob(b"cfg")
    child = image(b"cfg")
    env.manifests.put(REPO, child)
    idx = index(child, media_type=DOCKER_LIST)
    env.manifests.put(REPO, idx)
    assert env.manifests.get(REPO, idx.digest)[1] == DOCKER_LIST


def test_delete_removes_revision_and_every_tag_pointing_at_it(env: Env) -> None:
    env.blob(b"cfg")
    a, b = image(b"cfg", annotations={"v": "a"}), image(b"cfg", annotations={"v": "b"})
    env.manifests.put(REPO, a)
    env.manifests.put(REPO, b)
    env.tags.tag(REPO, "one", a.digest)
    env.tags.tag(REPO, "two", a.digest)
    env.tags.tag(REPO, "other", b.digest)
    env.manifests.delete(REPO, a.digest)
    assert not env.manifests.exists(REPO, a.digest)
    assert env.tags.list(REPO) == ["other"]
    assert list(env.manifests.revisions(REPO)) == [b.digest]
    assert env.blobs.exists(a.digest)  # bytes stay for garbage collection
    with pytest.raises(ManifestUnknown):
        env.manifests.delete(REPO, a.digest)


def test_revisions_lists_linked_manifests(env: Env) -> None:
    assert list(env.manifests.revisions(REPO)) == []
    env.blob(b"cfg")
    ms = [image(b"cfg", annotations={"i": str(i)}) for i in range(3)]
    for m in ms:
        env.manifests.put(REPO, m)
    assert list(env.manifests.revisions(REPO)) == sorted(m.digest for m in ms)
