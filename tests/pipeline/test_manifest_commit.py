"""commit_manifest / delete_manifest (the use cases behind PUT and DELETE of manifests),
and the per-repository locks they run under."""

from __future__ import annotations

import json
import threading
from contextlib import AbstractContextManager
from typing import Any

import pytest

from pipeline.config import Settings, StorageSettings
from pipeline.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    OperationUnsupported,
    PathNotFound,
    StorageUnavailable,
    TagInvalid,
    TooManyRequests,
)
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import EMPTY_DIGEST, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, parse_manifest
from pipeline.infra.locks import LocalLocks
from pipeline.manifest_commit import commit_manifest, delete_manifest
from pipeline.registry import Registry
from pipeline.storage import paths
from pipeline.storage.memory import MemoryDriver

REPO = "team/app"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


def deletable() -> Settings:
    return Settings(storage=StorageSettings(driver="inmemory", delete_enabled=True))


@pytest.fixture
def registry() -> Registry:
    return Registry.in_memory(deletable())


def upload(registry: Registry, content: bytes, repo: str = REPO) -> dict[str, Any]:
    digest = registry.blobs.put(content)
    registry.repo_blobs.link(repo, digest)
    return {"mediaType": LAYER, "digest": str(digest), "size": len(content)}


def ref(content: bytes, media_type: str = LAYER) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(Digest.of(content)), "size": len(content)}


def manifest(config: dict[str, Any], *layers: dict[str, Any], **fields: Any) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {**config, "mediaType": CONFIG}}
    doc["layers"] = list(layers)
    doc.update(fields)
    return json.dumps(doc, indent=3).encode()


def files(registry: Registry) -> dict[str, bytes]:
    return {
        info.path: registry.driver.get_content(info.path)
        for info in registry.driver.walk("/")
        if not info.is_dir
    }


def pushed_image(registry: Registry, name: str = "img", repo: str = REPO) -> bytes:
    config = upload(registry, f"{name}-config".encode(), repo)
    return manifest(config, upload(registry, f"{name}-layer".encode(), repo))


# --- commit ------------------------------------------------------------------------------


def test_commit_by_tag_stores_verifies_and_tags(registry: Registry) -> None:
    body = pushed_image(registry)
    result = commit_manifest(registry, REPO, "v1", OCI_MANIFEST, body)
    digest = Digest.of(body)
    assert result == {"digest": str(digest), "media_type": OCI_MANIFEST, "size": len(body), "subject": None}
    assert registry.manifests.get(REPO, digest) == (body, OCI_MANIFEST)
    assert registry.tags.resolve(REPO, "v1") == digest
    assert registry.catalog.repositories() == [REPO]
    # the same push again is harmless
    assert commit_manifest(registry, REPO, "v1", OCI_MANIFEST, body) == result


def test_commit_by_digest_does_not_tag(registry: Registry) -> None:
    body = pushed_image(registry)
    result = commit_manifest(registry, REPO, str(Digest.of(body)), OCI_MANIFEST, body)
    assert result["digest"] == str(Digest.of(body))
    assert registry.tags.list(REPO) == []
    assert registry.manifests.exists(REPO, Digest.of(body))


def test_commit_by_sha512_digest_uses_sha512(registry: Registry) -> None:
    body = pushed_image(registry)
    d512 = Digest.of(body, "sha512")
    assert commit_manifest(registry, REPO, str(d512), None, body)["digest"] == str(d512)
    assert registry.manifests.get(REPO, d512)[0] == body
    assert not registry.manifests.exists(REPO, Digest.of(body))


def test_digest_reference_mismatch_is_digest_invalid_and_writes_nothing(registry: Registry) -> None:
    body = pushed_image(registry)
    before = files(registry)
    with pytest.raises(DigestInvalid):
        commit_manifest(registry, REPO, str(Digest.of(b"something else")), OCI_MANIFEST, body)
    assert files(registry) == before


def test_rejected_manifest_leaves_no_blob_revision_or_tag(registry: Registry) -> None:
    old = pushed_image(registry, "old")
    commit_manifest(registry, REPO, "latest", OCI_MANIFEST, old)
    present = upload(registry, b"present layer")
    before = files(registry)
    body = manifest(ref(b"missing config"), present, ref(b"missing a"), ref(b"missing b"))
    with pytest.raises(ManifestBlobUnknown) as info:
        commit_manifest(registry, REPO, "latest", OCI_MANIFEST, body)
    assert info.value.digests == [str(Digest.of(x)) for x in (b"missing config", b"missing a", b"missing b")]
    assert files(registry) == before
    assert not registry.blobs.exists(Digest.of(body))
    assert registry.tags.resolve(REPO, "latest") == Digest.of(old)

    for bad in (b"{not json", manifest(ref(b"x"), schemaVersion=1)):
        with pytest.raises(ManifestInvalid):
            commit_manifest(registry, REPO, "latest", OCI_MANIFEST, bad)
    assert files(registry) == before


def test_index_with_missing_child_is_rejected(registry: Registry) -> None:
    child = pushed_image(registry, "child")
    commit_manifest(registry, REPO, str(Digest.of(child)), OCI_MANIFEST, child)
    missing = Digest.of(b"not pushed")
    idx = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(child)), "size": len(child)},
                {"mediaType": OCI_MANIFEST, "digest": str(missing), "size": 10},
            ],
        }
    ).encode()
    with pytest.raises(ManifestBlobUnknown) as info:
        commit_manifest(registry, REPO, "multi", OCI_INDEX, idx)
    assert info.value.digests == [str(missing)]
    with pytest.raises(ManifestUnknown):
        registry.tags.resolve(REPO, "multi")


def test_subject_is_reported_and_recorded_even_if_subject_is_absent(registry: Registry) -> None:
    subject = Digest.of(b"an image not pushed yet")
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sig",
            "config": {"mediaType": OCI_EMPTY, "digest": str(EMPTY_DIGEST), "size": 2},
            "layers": [upload(registry, b"signature")],
            "subject": {"mediaType": OCI_MANIFEST, "digest": str(subject), "size": 123},
        }
    ).encode()
    result = commit_manifest(registry, REPO, str(Digest.of(body)), OCI_MANIFEST, body)
    assert result["subject"] == str(subject)
    [listed] = registry.referrers.list(REPO, subject)
    assert listed.digest == Digest.of(body)
    assert listed.artifact_type == "application/vnd.example.sig"
    assert registry.repo_blobs.stat(REPO, EMPTY_DIGEST) == 2  # the empty config is pullable


def test_bad_names_and_tags(registry: Registry) -> None:
    body = pushed_image(registry)
    with pytest.raises(TagInvalid):
        commit_manifest(registry, REPO, "-bad", OCI_MANIFEST, body)
    with pytest.raises(NameInvalid):
        commit_manifest(registry, "Upper/Case", "v1", OCI_MANIFEST, body)
    with pytest.raises(DigestInvalid):
        commit_manifest(registry, REPO, "sha256:short", OCI_MANIFEST, body)


class _FailOn(MemoryDriver):
    """Fails writes to paths containing `marker`, as a crash or outage there would."""

    def __init__(self) -> None:
        super().__init__()
        self.marker: str | None = None

    def put_content(self, path: str, content: bytes) -> None:
        if self.marker is not None and self.marker in path:
            raise StorageUnavailable(path)
        super().put_content(path, content)


def test_failure_before_tag_never_leaves_tag_on_missing_manifest() -> None:
    driver = _FailOn()
    registry = Registry.from_driver(deletable(), driver)
    old = pushed_image(registry, "old")
    commit_manifest(registry, REPO, "latest", OCI_MANIFEST, old)
    new = pushed_image(registry, "new")

    driver.marker = "/current/link"  # the tag move fails
    with pytest.raises(StorageUnavailable):
        commit_manifest(registry, REPO, "latest", OCI_MANIFEST, new)
    assert registry.tags.resolve(REPO, "latest") == Digest.of(old)
    assert registry.manifests.exists(REPO, Digest.of(new))  # stored, merely untagged

    driver.marker = "/_manifests/revisions/"  # the revision link fails
    newer = pushed_image(registry, "newer")
    with pytest.raises(StorageUnavailable):
        commit_manifest(registry, REPO, "latest", OCI_MANIFEST, newer)
    assert registry.tags.resolve(REPO, "latest") == Digest.of(old)
    assert not registry.manifests.exists(REPO, Digest.of(newer))

    driver.marker = None  # the redelivered job completes
    commit_manifest(registry, REPO, "latest", OCI_MANIFEST, newer)
    assert registry.tags.resolve(REPO, "latest") == Digest.of(newer)


class _Busy:
    def lock(self, repository: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        raise TooManyRequests(repository)


def test_nothing_is_written_without_the_repository_lock() -> None:
    registry = Registry.from_driver(deletable(), MemoryDriver(), locks=_Busy())
    body = pushed_image(registry)
    before = files(registry)
    with pytest.raises(TooManyRequests):
        commit_manifest(registry, REPO, "v1", OCI_MANIFEST, body)
    assert files(registry) == before


def test_concurrent_pushes_of_one_tag_end_on_a_complete_manifest(registry: Registry) -> None:
    bodies = [pushed_image(registry, f"img{i}") for i in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(bodies))

    def push(body: bytes) -> None:
        try:
            start.wait(timeout=30)
            commit_manifest(registry, REPO, "latest", OCI_MANIFEST, body)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    winner = registry.tags.resolve(REPO, "latest")
    assert winner in {Digest.of(b) for b in bodies}
    body, _ = registry.manifests.get(REPO, winner)
    registry.manifests.verify(REPO, parse_manifest(body, None))  # every reference present
    for b in bodies:
        assert registry.manifests.exists(REPO, Digest.of(b))
        assert registry.driver.exists(paths.tag_index_link(REPO, "latest", Digest.of(b)))


# --- delete ------------------------------------------------------------------------------


def test_delete_is_refused_when_disabled() -> None:
    registry = Registry.in_memory()
    body = pushed_image(registry)
    commit_manifest(registry, REPO, "v1", OCI_MANIFEST, body)
    with pytest.raises(OperationUnsupported):
        delete_manifest(registry, REPO, "v1")
    assert registry.tags.resolve(REPO, "v1") == Digest.of(body)


def test_delete_by_tag_removes_only_the_tag(registry: Registry) -> None:
    body = pushed_image(registry)
    commit_manifest(registry, REPO, "v1", OCI_MANIFEST, body)
    commit_manifest(registry, REPO, "v2", OCI_MANIFEST, body)
    assert delete_manifest(registry, REPO, "v1") == {"digest": str(Digest.of(body)), "tags": ["v1"]}
    assert registry.tags.list(REPO) == ["v2"]
    assert registry.manifests.exists(REPO, Digest.of(body))
    with pytest.raises(ManifestUnknown):
        delete_manifest(registry, REPO, "v1")


def test_delete_by_digest_removes_revision_tags_and_referrer_link(registry: Registry) -> None:
    subject_body = pushed_image(registry, "subject")
    subject = Digest.of(subject_body)
    commit_manifest(registry, REPO, "v1", OCI_MANIFEST, subject_body)
    subject_desc = {"mediaType": OCI_MANIFEST, "digest": str(subject), "size": len(subject_body)}
    sig = manifest(upload(registry, b"sig-config"), subject=subject_desc)
    commit_manifest(registry, REPO, "sig", OCI_MANIFEST, sig)
    commit_manifest(registry, REPO, "sig-too", OCI_MANIFEST, sig)
    result = delete_manifest(registry, REPO, str(Digest.of(sig)))
    assert result == {"digest": str(Digest.of(sig)), "tags": ["sig", "sig-too"]}
    assert not registry.manifests.exists(REPO, Digest.of(sig))
    assert registry.tags.list(REPO) == ["v1"]
    assert registry.referrers.list(REPO, subject) == []
    assert not registry.driver.exists(paths.referrer_link(REPO, subject, Digest.of(sig)))
    with pytest.raises(ManifestUnknown):
        delete_manifest(registry, REPO, str(Digest.of(sig)))


# --- locks -------------------------------------------------------------------------------


def test_local_lock_times_out_with_too_many_requests() -> None:
    locks = LocalLocks()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with locks.lock("repo"):
            held.set()
            release.wait(timeout=30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(timeout=30)
        with pytest.raises(TooManyRequests), locks.lock("repo", timeout=0.05):
            pass
        with locks.lock("other/repo", timeout=0.05):  # other repositories are not blocked
            pass
    finally:
        release.set()
        t.join(timeout=30)
    with locks.lock("repo", timeout=5):
        pass


def test_local_locks_forget_idle_repositories() -> None:
    locks = LocalLocks()
    for i in range(50):
        with locks.lock(f"repo{i}"):
            pass
    assert locks._entries == {}


# --- late (redelivered) jobs never move a tag back -----------------------------------------


def test_a_late_commit_never_moves_a_tag_back_over_a_newer_push(registry: Registry) -> None:
    first, second = pushed_image(registry, "one"), pushed_image(registry, "two")
    d1 = commit_manifest(registry, REPO, "latest", OCI_MANIFEST, first, requested_at=100)["digest"]
    d2 = commit_manifest(registry, REPO, "latest", OCI_MANIFEST, second, requested_at=300)["digest"]
    # the job of the push requested at 200 comes back after both (a redelivery)
    late = commit_manifest(registry, REPO, "latest", OCI_MANIFEST, first, requested_at=200)
    assert late["digest"] == d1  # stored (idempotent) ...
    assert str(registry.tags.resolve(REPO, "latest")) == d2  # ... but the tag stays
    # the same job redelivered again after it was applied still applies (equal time)
    commit_manifest(registry, REPO, "other", OCI_MANIFEST, first, requested_at=400)
    commit_manifest(registry, REPO, "other", OCI_MANIFEST, first, requested_at=400)
    assert str(registry.tags.resolve(REPO, "other")) == d1


def test_a_late_commit_does_not_bring_back_a_deleted_tag(registry: Registry) -> None:
    body = pushed_image(registry)
    commit_manifest(registry, REPO, "gone", OCI_MANIFEST, body, requested_at=100)
    delete_manifest(registry, REPO, "gone")  # stamped now: far after 100
    commit_manifest(registry, REPO, "gone", OCI_MANIFEST, body, requested_at=200)
    with pytest.raises(ManifestUnknown):
        registry.tags.resolve(REPO, "gone")
    # distribution's layout is unchanged: the stamp lives under _lading/
    assert all("/_manifests/tags/gone" not in path for path in files(registry))
    assert any(path.endswith("/_lading/tags/gone/movedat") for path in files(registry))


# --- hostile manifests ----------------------------------------------------------------------


def test_deeply_nested_json_is_an_invalid_manifest(registry: Registry) -> None:
    with pytest.raises(ManifestInvalid, match="nested too deeply"):
        commit_manifest(registry, REPO, "deep", OCI_MANIFEST, b"[" * 100_000 + b"]" * 100_000)


def test_a_descriptor_size_that_differs_from_the_blob_is_rejected(registry: Registry) -> None:
    config = upload(registry, b"config")
    layer = upload(registry, b"layer bytes")
    lying = manifest(config, {**layer, "size": layer["size"] + 1})
    with pytest.raises(ManifestInvalid) as caught:
        commit_manifest(registry, REPO, "lie", OCI_MANIFEST, lying)
    assert caught.value.detail == [
        {"digest": layer["digest"], "size": layer["size"] + 1, "stored": layer["size"]}
    ]
    assert all("/_manifests/" not in path for path in files(registry))  # nothing stored
    honest = manifest(config, layer)
    commit_manifest(registry, REPO, "honest", OCI_MANIFEST, honest)


class VanishingDirectoryDriver(MemoryDriver):
    """The filesystem driver's failure when a delete removes the directory a link is being
    written into (its temp file's rename finds no directory): once per matching path."""

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment
        self.failed: list[str] = []

    def put_content(self, path: str, content: bytes) -> None:
        if self.fragment in path and path not in self.failed:
            self.failed.append(path)
            raise PathNotFound(path)
        super().put_content(path, content)


@pytest.mark.parametrize("fragment", ["/_manifests/revisions/", "/_manifests/tags/"])
def test_a_link_directory_removed_mid_write_does_not_fail_the_commit(fragment: str) -> None:
    driver = VanishingDirectoryDriver(fragment)
    registry = Registry.from_driver(deletable(), driver)
    body = pushed_image(registry)
    value = commit_manifest(registry, REPO, "latest", OCI_MANIFEST, body, requested_at=1)
    assert driver.failed  # the fault did happen
    assert str(registry.tags.resolve(REPO, "latest")) == value["digest"]
    assert registry.manifests.exists(REPO, Digest.parse(value["digest"]))
