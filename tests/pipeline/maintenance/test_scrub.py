"""Scrub: corrupt bytes are found, reported with what they break, quarantined (pulls get an
error, never the bad bytes), healed by a re-push; runs resume and respect the rate limit."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest

from pipeline.errors import BlobCorrupt, BlobUnknown, ManifestBlobUnknown, ManifestUnknown
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import OCI_MANIFEST
from pipeline.maintenance.scrub import scrub
from pipeline.manifest_commit import commit_manifest
from pipeline.registry import Registry
from pipeline.storage import paths
from tests.pipeline.maintenance.helpers import (
    flip_byte,
    fs_registry,
    image_manifest,
    push_blob,
    push_image,
    push_index,
)

# The package exports the function `scrub`, which shadows the module's attribute name.
scrub_module = importlib.import_module("pipeline.maintenance.scrub")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return fs_registry(str(tmp_path), scrub_rate_bytes=0)


def test_healthy_store_checks_every_blob_and_records_it(registry: Registry) -> None:
    image = push_image(registry, "app", "v1", layers=[os.urandom(5000), os.urandom(7000)])
    summary = scrub(registry)
    assert summary["checked"] == 4  # config, two layers, manifest
    assert summary["corrupt"] == [] and summary["missing"] == []
    assert summary["complete"] is True
    assert summary["bytes"] == sum(len(b) for b in (image.config, *image.layers, image.manifest))
    record = json.loads(registry.driver.get_content(paths.scrub_record(image.digest)))
    assert record["ok"] is True and record["size"] == len(image.manifest)


def test_flipped_byte_is_reported_with_repositories_and_tags_and_quarantined(registry: Registry) -> None:
    shared = os.urandom(4096)
    app = push_image(registry, "app", "v1", layers=[shared])
    other = push_image(registry, "team/other", "latest", layers=[shared, os.urandom(100)])
    index = push_index(registry, "app", "multi", [app])
    unaffected = push_image(registry, "clean", "v1")
    bad = Digest.of(shared)
    flip_byte(registry, bad)

    summary = scrub(registry)

    assert [c["digest"] for c in summary["corrupt"]] == [str(bad)]
    report = summary["corrupt"][0]
    assert report["actual"] != str(bad)
    assert report["repositories"] == ["app", "team/other"]
    # The index that contains the broken image is broken too.
    assert sorted(report["tags"]) == ["app:multi", "app:v1", "team/other:latest"]
    assert f"app@{index}" in report["manifests"] and f"app@{app.digest}" in report["manifests"]
    assert f"team/other@{other.digest}" in report["manifests"]
    assert summary["quarantined"] == 1
    assert registry.driver.exists(paths.quarantine_marker(bad))
    record = json.loads(registry.driver.get_content(paths.scrub_record(bad)))
    assert record["ok"] is False and record["actual"] == report["actual"]

    # A pull gets an error, not the corrupt bytes — through every read path.
    with pytest.raises(BlobCorrupt):
        registry.blobs.open(bad)
    with pytest.raises(BlobCorrupt):
        registry.blobs.get(bad)
    with pytest.raises(BlobCorrupt):
        registry.repo_blobs.open("app", bad)
    with pytest.raises(BlobUnknown):  # BlobCorrupt is a BlobUnknown: HEAD says unknown and
        registry.repo_blobs.stat("app", bad)  # the client uploads the blob again
    assert registry.blobs.open(Digest.of(unaffected.layers[0])).read() == unaffected.layers[0]


def test_quarantined_blob_cannot_back_a_new_manifest_until_pushed_again(registry: Registry) -> None:
    layer = os.urandom(3000)
    image = push_image(registry, "app", "v1", layers=[layer])
    bad = Digest.of(layer)
    flip_byte(registry, bad)
    scrub(registry)

    retag = image_manifest(image.config, image.layers, annotations={"v": "2"})
    with pytest.raises(ManifestBlobUnknown) as err:
        commit_manifest(registry, "app", "v2", OCI_MANIFEST, retag)
    assert err.value.digests == [str(bad)]

    # The client re-pushes the layer: fresh verified bytes replace the corrupt ones.
    push_blob(registry, "app", layer)
    assert not registry.driver.exists(paths.quarantine_marker(bad))
    assert registry.repo_blobs.open("app", bad).read() == layer
    commit_manifest(registry, "app", "v2", OCI_MANIFEST, retag)
    again = scrub(registry)
    assert again["corrupt"] == []


def test_corrupt_manifest_bytes_are_quarantined_and_the_tag_reports_unknown(registry: Registry) -> None:
    image = push_image(registry, "app", "v1")
    flip_byte(registry, image.digest, offset=3)
    summary = scrub(registry)
    assert [c["digest"] for c in summary["corrupt"]] == [str(image.digest)]
    assert summary["corrupt"][0]["tags"] == ["app:v1"]
    with pytest.raises(ManifestUnknown):
        registry.manifests.get("app", image.digest)


def test_without_quarantine_it_only_reports(registry: Registry) -> None:
    layer = os.urandom(1000)
    push_image(registry, "app", "v1", layers=[layer])
    flip_byte(registry, Digest.of(layer))
    summary = scrub(registry, quarantine=False)
    assert len(summary["corrupt"]) == 1 and summary["quarantined"] == 0
    assert not registry.driver.exists(paths.quarantine_marker(Digest.of(layer)))


def test_a_healthy_rescrub_lifts_a_quarantine(registry: Registry) -> None:
    layer = os.urandom(1000)
    push_image(registry, "app", "v1", layers=[layer])
    digest = Digest.of(layer)
    registry.driver.put_content(paths.quarantine_marker(digest), b"{}")  # e.g. bytes since restored
    with pytest.raises(BlobCorrupt):
        registry.blobs.stat(digest)
    summary = scrub(registry)
    assert summary["released"] == 1 and summary["corrupt"] == []
    assert registry.blobs.get(digest) == layer


def test_missing_blob_is_reported_with_what_it_breaks(registry: Registry) -> None:
    layer = os.urandom(1000)
    push_image(registry, "app", "v1", layers=[layer])
    registry.driver.delete(paths.blob_dir(Digest.of(layer)))
    summary = scrub(registry)
    assert [m["digest"] for m in summary["missing"]] == [str(Digest.of(layer))]
    assert summary["missing"][0]["tags"] == ["app:v1"]


def test_limit_stops_and_the_next_run_resumes_after_the_cursor(registry: Registry) -> None:
    for i in range(4):
        push_image(registry, f"r{i}", "v1")  # 3 blobs each → 12
    seen: list[int] = []
    first = scrub(registry, limit=5, progress=lambda done, total: seen.append(done))
    assert first["checked"] == 5 and first["complete"] is False and seen == [1, 2, 3, 4, 5]
    second = scrub(registry)
    assert second["resumed_from"] is not None
    assert second["checked"] == 7 and second["complete"] is True
    third = scrub(registry)  # a new pass starts from the beginning
    assert third["checked"] == 12 and third["resumed_from"] is None


def test_a_killed_run_continues_where_it_stopped(registry: Registry) -> None:
    for i in range(3):
        push_image(registry, f"r{i}", "v1")  # 9 blobs

    def killed(done: int, total: int | None) -> None:
        if done == 4:
            raise KeyboardInterrupt  # the worker dies right after the 4th blob

    with pytest.raises(KeyboardInterrupt):
        scrub(registry, progress=killed)
    resumed = scrub(registry)
    assert resumed["checked"] == 5
    assert scrub(registry, resume=False)["checked"] == 9


def test_rate_limit_paces_reads(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    push_image(registry, "app", "v1", layers=[os.urandom(300_000), os.urandom(200_000)])
    clock = [0.0]
    monkeypatch.setattr(scrub_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(scrub_module.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    summary = scrub(registry, rate_bytes_per_s=100_000)
    # Half a megabyte at 100 kB/s takes (simulated) five seconds, never less.
    assert summary["bytes"] > 500_000
    assert clock[0] >= summary["bytes"] / 100_000 - 1e-6


def test_a_second_scrub_while_one_runs_is_skipped(registry: Registry) -> None:
    with registry.locks.lock("_scrub"):
        assert scrub(registry) == {"skipped": "another scrub is running"}


def test_sha512_blobs_are_checked_by_their_algorithm(registry: Registry) -> None:
    data = os.urandom(500)
    digest = registry.blobs.put(data, "sha512")
    assert digest.algorithm == "sha512"
    flip_byte(registry, digest)
    summary = scrub(registry)
    assert [c["digest"] for c in summary["corrupt"]] == [str(digest)]
    assert summary["corrupt"][0]["actual"].startswith("sha512:")


def test_dry_run_reports_and_writes_nothing(registry: Registry) -> None:
    layer = os.urandom(1000)
    push_image(registry, "app", "v1", layers=[layer])
    flip_byte(registry, Digest.of(layer))
    summary = scrub(registry, dry_run=True)
    assert [c["digest"] for c in summary["corrupt"]] == [str(Digest.of(layer))]
    assert summary["quarantined"] == 0 and summary["dry_run"] is True
    assert not registry.driver.exists(paths.quarantine_root())
    assert not registry.driver.exists(paths.scrub_root())
    assert not registry.driver.exists(paths.maintenance_state("scrub"))


def test_the_cli_entry_points_are_the_package_exports() -> None:
    import pipeline.maintenance as maintenance

    assert maintenance.scrub is scrub
    assert {"garbage_collect", "purge_uploads", "reconcile", "scrub"} <= set(dir(maintenance))


def test_scrubs_the_in_memory_driver_too() -> None:
    registry = Registry.in_memory()
    layer = os.urandom(1000)
    push_image(registry, "app", "v1", layers=[layer])
    digest = Digest.of(layer)
    registry.driver.put_content(paths.blob_data(digest), b"X" + layer[1:])
    summary = scrub(registry, rate_bytes_per_s=0)
    assert [c["tags"] for c in summary["corrupt"]] == [["app:v1"]]
    with pytest.raises(BlobCorrupt):
        registry.repo_blobs.open("app", digest)
