"""Garbage collection: what is reclaimed and what is kept, and the protocol that keeps a
racing manifest push from ever tagging a deleted blob — each interleaving forced explicitly."""

from __future__ import annotations

import json
import os
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ManifestBlobUnknown
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import OCI_MANIFEST
from pipeline.infra.locks import LocalLocks
from pipeline.maintenance.gc import garbage_collect
from pipeline.maintenance.reconcile import reconcile
from pipeline.manifest_commit import commit_manifest, delete_manifest
from pipeline.registry import Registry
from pipeline.storage import paths
from pipeline.storage.filesystem import FilesystemDriver
from tests.pipeline.maintenance.helpers import (
    HookDriver,
    Image,
    age_blobs,
    assert_intact,
    descriptor,
    fs_registry,
    image_manifest,
    kill_collection_in_the_trash,
    push_blob,
    push_image,
    push_index,
    settings,
    stored,
    subject_of,
)


@pytest.fixture
def driver(tmp_path: Path) -> HookDriver:
    return HookDriver(FilesystemDriver(str(tmp_path)))


class SpyLocks(LocalLocks):
    """Sets `gc_waits` when the collection (main thread) asks for a repository lock while armed."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.gc_waits = threading.Event()

    def lock(self, repository: str, timeout: float = 60.0) -> AbstractContextManager[None]:
        if self.armed and repository == "app" and threading.current_thread() is threading.main_thread():
            self.gc_waits.set()
        return super().lock(repository, timeout)


@pytest.fixture
def registry(driver: HookDriver) -> Registry:
    return Registry.from_driver(settings(gc_grace_seconds=0), driver, locks=SpyLocks())


# --- what is collected --------------------------------------------------------------------


def test_blobs_of_a_deleted_image_are_reclaimed_and_everything_referenced_is_kept(registry: Registry) -> None:
    shared = os.urandom(3000)
    keep = push_image(registry, "app", "v1", layers=[shared, os.urandom(2000)])
    gone = push_image(registry, "app", "old", layers=[shared, os.urandom(4000)])
    delete_manifest(registry, "app", str(gone.digest))

    summary = garbage_collect(registry)

    assert summary["blobs_deleted"] == 3  # gone's manifest, config and unique layer
    assert summary["bytes_freed"] == len(gone.manifest) + len(gone.config) + 4000
    for digest in {gone.digest, Digest.of(gone.config), Digest.of(gone.layers[1])}:
        assert not stored(registry, digest)
    assert_intact(registry, keep)
    # The unique layer's `_layers` link went with it; the shared one stays.
    assert not registry.repo_blobs.is_linked("app", Digest.of(gone.layers[1]))
    assert registry.repo_blobs.is_linked("app", Digest.of(shared))
    assert summary["links_removed"] == 2  # gone's config and unique layer
    assert summary["manifests_deleted"] == 0 and summary["dry_run"] is False
    assert summary["blobs_per_s"] is not None and summary["marked"] >= 4


def test_blobs_a_go_writer_references_in_another_case_are_kept(registry: Registry) -> None:
    # A manifest written into the shared layout by a Go tool (distribution) may spell a
    # field `Layers`: every Go reader takes it for `layers`, so its blobs are referenced.
    config, layer = b'{"id":"go"}', os.urandom(3000)
    for blob in (config, layer):
        push_blob(registry, "app", blob)
    doc = json.loads(image_manifest(config, []))
    doc["Layers"] = [descriptor(layer)]
    body = json.dumps(doc).encode()
    digest = registry.blobs.put(body)
    registry.driver.put_content(paths.manifest_revision_link("app", digest), str(digest).encode())
    registry.tags.tag("app", "go", digest)

    garbage_collect(registry)

    assert stored(registry, Digest.of(layer)) and stored(registry, Digest.of(config))
    assert registry.repo_blobs.is_linked("app", Digest.of(layer))


def test_index_children_and_referrers_are_kept(registry: Registry) -> None:
    amd, arm = push_image(registry, "app", None), push_image(registry, "app", None)
    index = push_index(registry, "app", "multi", [amd, arm])
    sbom = push_image(registry, "app", None, config=b"{}", subject=subject_of(amd), artifactType="x/sbom")
    stray = push_blob(registry, "app", os.urandom(100))  # uploaded, never referenced

    summary = garbage_collect(registry)

    assert summary["blobs_deleted"] == 1 and not stored(registry, stray)
    for image in (amd, arm, sbom):
        assert_intact(registry, image)
    assert registry.manifests.exists("app", index)


def test_blobs_referenced_from_another_repository_are_kept(registry: Registry) -> None:
    shared = os.urandom(2000)
    push_image(registry, "one", "v1", layers=[shared])
    two = push_image(registry, "two", "v1", layers=[shared])
    delete_manifest(registry, "one", "v1")  # tag only: the revision keeps it
    assert garbage_collect(registry)["blobs_deleted"] == 0
    assert_intact(registry, two)


def test_grace_window_protects_fresh_blobs(tmp_path: Path) -> None:
    registry = fs_registry(str(tmp_path), gc_grace_seconds=3600)
    image = push_image(registry, "app", "v1")
    delete_manifest(registry, "app", str(image.digest))
    fresh = garbage_collect(registry)
    assert fresh["blobs_deleted"] == 0 and fresh["candidates"] == 0
    assert all(stored(registry, d) for d in image.all_digests())
    age_blobs(registry, 2 * 3600)
    assert garbage_collect(registry)["blobs_deleted"] == 3


def test_dry_run_reports_and_deletes_nothing(registry: Registry) -> None:
    image = push_image(registry, "app", "v1")
    delete_manifest(registry, "app", str(image.digest))
    before = sorted(info.path for info in registry.driver.walk("/"))
    summary = garbage_collect(registry, dry_run=True)
    assert summary["dry_run"] is True and summary["blobs_deleted"] == 0
    assert summary["would_delete"]["blobs"] == 3
    assert sorted(summary["would_delete"]["digests"]) == sorted(str(d) for d in image.all_digests())
    assert sorted(info.path for info in registry.driver.walk("/")) == before


def test_remove_untagged_reclaims_overwritten_tags_but_keeps_what_tags_reach(registry: Registry) -> None:
    old = push_image(registry, "app", "latest")
    new = push_image(registry, "app", "latest")  # overwrites the tag: `old` is untagged now
    amd, arm = push_image(registry, "app", None), push_image(registry, "app", None)
    index = push_index(registry, "app", "multi", [amd, arm])
    sig = push_image(registry, "app", None, config=b"{}", subject=subject_of(new), artifactType="x/sig")
    old_sig = push_image(registry, "app", None, config=b"{}", subject=subject_of(old), artifactType="x/sig")

    kept = garbage_collect(registry)  # default: every revision is kept
    assert kept["blobs_deleted"] == 0 and kept["manifests_deleted"] == 0

    summary = garbage_collect(registry, remove_untagged=True)

    assert summary["manifests_deleted"] == 2  # `old` and its referrer
    assert not registry.manifests.exists("app", old.digest)
    assert not registry.manifests.exists("app", old_sig.digest)
    assert all(not stored(registry, d) for d in old.all_digests() - {Digest.of(b"{}")})
    for image in (new, amd, arm, sig):
        assert_intact(registry, image)
    assert registry.manifests.exists("app", index)
    assert [d.digest for d in registry.referrers.list("app", new.digest)] == [sig.digest]
    assert registry.referrers.list("app", old.digest) == []
    # The tag's history no longer names the deleted revision.
    assert not registry.driver.exists(paths.tag_index_link("app", "latest", old.digest))


def test_a_second_collection_while_one_runs_is_skipped(registry: Registry) -> None:
    with registry.locks.lock("_gc"):
        assert garbage_collect(registry) == {"skipped": "another garbage collection is running"}


def test_unreadable_manifest_stops_the_sweep(registry: Registry, driver: HookDriver) -> None:
    image = push_image(registry, "app", "v1")
    stray = push_blob(registry, "app", os.urandom(100))
    driver.put_content(paths.blob_data(image.digest), b"not json")  # references unknowable
    summary = garbage_collect(registry)
    assert "sweep_skipped" in summary and summary["blobs_deleted"] == 0
    assert stored(registry, stray) and stored(registry, Digest.of(image.layers[0]))


# --- the race protocol, one interleaving at a time ------------------------------------------


def orphan(registry: Registry) -> tuple[Image, bytes]:
    """An image whose manifest was deleted: its old blobs are unreferenced GC candidates,
    and a client that HEADs them (still there) would skip their upload. Returns the image
    and a new manifest body naming the same blobs."""
    image = push_image(registry, "app", "v1")
    delete_manifest(registry, "app", str(image.digest))
    age_blobs(registry)
    return image, image_manifest(image.config, image.layers, annotations={"again": "yes"})


def test_push_before_the_sweep_rescues_the_blobs(registry: Registry, driver: HookDriver) -> None:
    image, body = orphan(registry)
    pushed: list[dict[str, object]] = []

    def push_after_markers(path: str) -> None:
        # The push lands right after GC wrote its candidate markers: it rescues the blobs.
        if path.startswith(paths.gc_candidates_root()) and not pushed:
            pushed.append(commit_manifest(registry, "app", "v2", OCI_MANIFEST, body))

    driver.on_put = push_after_markers
    summary = garbage_collect(registry)
    driver.on_put = None

    assert pushed and summary["blobs_deleted"] == 1  # only the old manifest's own bytes
    assert_intact(registry, Image("app", body, image.config, image.layers, ["v2"]))


def test_push_between_move_and_marker_check_fails_cleanly_and_the_blob_comes_back(
    registry: Registry, driver: HookDriver
) -> None:
    image, body = orphan(registry)
    layer = Digest.of(image.layers[0])
    errors: list[Exception] = []

    def push_during_sweep(source: str, dest: str) -> None:
        # The sweep just moved the layer to the trash, and has not looked at the marker yet.
        if dest == paths.gc_trash(layer):
            try:
                commit_manifest(registry, "app", "v2", OCI_MANIFEST, body)
            except ManifestBlobUnknown as exc:
                errors.append(exc)

    driver.on_move = push_during_sweep
    summary = garbage_collect(registry)
    driver.on_move = None

    # The push saw the blob missing and failed with MANIFEST_BLOB_UNKNOWN, writing nothing…
    assert len(errors) == 1 and str(layer) in errors[0].digests  # type: ignore[attr-defined]
    assert registry.tags.list("app") == []
    assert not registry.manifests.exists("app", Digest.of(body))
    # …and since it rescued the blob, the sweep moved it back.
    assert stored(registry, layer) and summary["rescued"] >= 1
    # The client retries: it uploads what HEAD says is missing (the config, when the sweep
    # reached it before the push) — never the rescued layer — and succeeds.
    missing_now = [b for b in (image.config, *image.layers) if not stored(registry, Digest.of(b))]
    assert image.layers[0] not in missing_now
    for blob in missing_now:
        push_blob(registry, "app", blob)
    commit_manifest(registry, "app", "v2", OCI_MANIFEST, body)
    assert_intact(registry, Image("app", body, image.config, image.layers, ["v2"]))


def test_push_after_the_marker_check_fails_cleanly_and_the_blob_is_gone(
    registry: Registry, driver: HookDriver
) -> None:
    image, body = orphan(registry)
    layer = Digest.of(image.layers[0])
    errors: list[Exception] = []

    def push_after_delete(path: str) -> None:
        # The sweep found the marker still there and deleted the trashed layer.
        if path == paths.gc_trash(layer):
            driver.on_delete = None
            try:
                commit_manifest(registry, "app", "v2", OCI_MANIFEST, body)
            except ManifestBlobUnknown as exc:
                errors.append(exc)

    driver.on_delete = push_after_delete
    garbage_collect(registry)

    assert len(errors) == 1 and registry.tags.list("app") == []
    assert not stored(registry, layer)
    # The client's retry uploads the blobs again (HEAD says unknown) and succeeds.
    for blob in (image.config, *image.layers):
        push_blob(registry, "app", blob)
    commit_manifest(registry, "app", "v2", OCI_MANIFEST, body)
    assert_intact(registry, Image("app", body, image.config, image.layers, ["v2"]))


def test_push_that_rescued_before_the_markers_is_seen_through_the_lock_barrier(
    registry: Registry, driver: HookDriver
) -> None:
    """The push rescues (no marker yet) and verifies BEFORE GC writes its markers, but
    writes its links only after GC has finished marking: the barrier (GC takes and drops
    each repository lock before its second mark) makes GC wait for those links."""
    image, body = orphan(registry)
    locks = registry.locks
    assert isinstance(locks, SpyLocks)
    verified, markers_written = threading.Event(), threading.Event()
    result: list[object] = []

    def markers(path: str) -> None:
        if path.startswith(paths.gc_candidates_root()):
            markers_written.set()

    original_put = registry.manifests.put

    def put_late(repo: str, manifest: Any) -> None:
        verified.set()  # rescued and verified, under the repository lock
        assert markers_written.wait(10)  # GC writes its markers after our rescue…
        assert locks.gc_waits.wait(10)  # …and reaches the barrier while we hold the lock
        original_put(repo, manifest)

    registry.manifests.put = put_late  # type: ignore[method-assign]
    driver.on_put = markers

    def push() -> None:
        result.append(commit_manifest(registry, "app", "v2", OCI_MANIFEST, body))

    pusher = threading.Thread(target=push)
    locks.armed = True
    pusher.start()
    assert verified.wait(10)
    summary = garbage_collect(registry)
    pusher.join(10)
    driver.on_put = None

    assert result, "the push must succeed"
    assert summary["blobs_deleted"] == 1  # only the deleted manifest's own bytes
    assert_intact(registry, Image("app", body, image.config, image.layers, ["v2"]))


def test_commit_of_the_same_blob_during_the_sweep_keeps_it(registry: Registry, driver: HookDriver) -> None:
    image, _ = orphan(registry)
    layer_bytes = image.layers[0]
    layer = Digest.of(layer_bytes)

    def upload_during_sweep(source: str, dest: str) -> None:
        if dest == paths.gc_trash(layer):
            driver.on_move = None
            push_blob(registry, "other", layer_bytes)  # finds no blob: stores fresh bytes

    driver.on_move = upload_during_sweep
    garbage_collect(registry)
    assert registry.repo_blobs.open("other", layer).read() == layer_bytes


def test_mount_rescues_the_blob(registry: Registry, driver: HookDriver) -> None:
    image = push_image(registry, "src", "v1")
    layer = Digest.of(image.layers[0])
    age_blobs(registry)
    registry.driver.put_content(paths.gc_sweeping(), b"")  # as if a sweep were about to run
    registry.driver.put_content(paths.gc_candidate(layer), b"")
    assert registry.repo_blobs.mount("src", "dst", layer)
    assert not registry.driver.exists(paths.gc_candidate(layer))


def test_a_killed_collection_is_recovered(registry: Registry, driver: HookDriver) -> None:
    image, body = orphan(registry)
    layer = Digest.of(image.layers[0])
    kill_collection_in_the_trash(registry, driver, layer)
    assert not stored(registry, layer)  # parked in the trash by the dead run
    summary = reconcile(registry)
    assert summary["gc"]["restored"] == 1 and summary["gc"]["markers"] >= 1
    assert stored(registry, layer)
    assert not registry.driver.exists(paths.gc_candidates_root())
    assert not registry.driver.exists(paths.gc_sweeping())
    # A push relying on it succeeds without uploading it again (the config may have been
    # swept before the run died: that one the client uploads).
    for blob in (image.config, *image.layers):
        if not stored(registry, Digest.of(blob)):
            assert blob == image.config
            push_blob(registry, "app", blob)
    commit_manifest(registry, "app", "v2", OCI_MANIFEST, body)
    assert_intact(registry, Image("app", body, image.config, image.layers, ["v2"]))


def test_candidates_left_over_never_block_a_push(registry: Registry) -> None:
    image, body = orphan(registry)
    registry.driver.put_content(paths.gc_sweeping(), b"")  # what a killed collection leaves
    for digest in image.all_digests():
        registry.driver.put_content(paths.gc_candidate(digest), json.dumps({}).encode())
    commit_manifest(registry, "app", "v2", OCI_MANIFEST, body)
    assert all(not registry.driver.exists(paths.gc_candidate(d)) for d in image.blob_digests())
    assert garbage_collect(registry)["blobs_deleted"] == 1  # the deleted manifest only
    assert_intact(registry, Image("app", body, image.config, image.layers, ["v2"]))
