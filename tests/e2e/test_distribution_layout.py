"""Storage-layout compatibility with CNCF distribution 2.8.2, proved with real tools.

distribution writes a repository (pushed by skopeo) and Lading's stores read it; Lading's
stores write a repository and distribution serves it to skopeo. Both directions go through
the bytes on disk only — no Lading HTTP involved.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Settings, StorageSettings
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import parse_manifest
from pipeline.registry import Registry, build_registry
from tests.support import skopeo
from tests.support.distribution import distribution
from tests.support.images import make_image, read_oci_layout, write_oci_layout

pytestmark = pytest.mark.e2e


def lading_on(root: Path) -> Registry:
    return build_registry(Settings(storage=StorageSettings(driver="filesystem", root=str(root))))


def test_lading_reads_a_repository_written_by_distribution(tmp_path: Path) -> None:
    image = make_image([3000, 70_000, 1_500_000])
    layout = write_oci_layout(image, tmp_path / "image", tag="v1")
    root = tmp_path / "distribution-root"
    with distribution(root, tmp_path) as host:
        skopeo.copy(f"oci:{layout}:v1", f"docker://{host}/library/demo:v1")
        skopeo.copy(f"oci:{layout}:v1", f"docker://{host}/library/demo:v2")
        skopeo.copy(f"oci:{layout}:v1", f"docker://{host}/other/nested/repo:latest")

    registry = lading_on(root)
    assert registry.tags.list("library/demo") == ["v1", "v2"]
    assert registry.catalog.repositories() == ["library/demo", "other/nested/repo"]
    digest = registry.tags.resolve("library/demo", "v1")
    assert str(digest) == image.manifest_digest
    body, media_type = registry.manifests.get("library/demo", digest)
    assert body == image.manifest
    assert media_type == "application/vnd.oci.image.manifest.v1+json"
    manifest = parse_manifest(body, media_type)
    registry.manifests.verify("library/demo", manifest)  # every reference is linked and present
    for descriptor in manifest.blob_references():
        assert registry.repo_blobs.stat("library/demo", descriptor.digest) == descriptor.size
        with registry.repo_blobs.open("library/demo", descriptor.digest) as stream:
            data = stream.read()
        assert Digest.of(data) == descriptor.digest
        assert data == image.blobs[str(descriptor.digest)]
    assert registry.tags.lookup("library/demo", digest) == ["v1", "v2"]


def test_distribution_serves_a_repository_written_by_lading(tmp_path: Path) -> None:
    image = make_image([5000, 200_000])
    root = tmp_path / "lading-root"
    registry = lading_on(root)
    repo = "team/app"
    for blob_digest, data in image.blobs.items():
        if blob_digest == image.manifest_digest:
            continue
        assert str(registry.blobs.put(data)) == blob_digest
        registry.repo_blobs.link(repo, Digest.parse(blob_digest))
    manifest = parse_manifest(image.manifest, "application/vnd.oci.image.manifest.v1+json")
    registry.manifests.verify(repo, manifest)
    registry.manifests.put(repo, manifest)
    registry.tags.tag(repo, "1.0", manifest.digest)

    out = tmp_path / "pulled"
    with distribution(root, tmp_path) as host:
        inspected = skopeo.inspect(f"docker://{host}/{repo}:1.0")
        assert inspected["Digest"] == image.manifest_digest
        assert skopeo.raw_manifest(f"docker://{host}/{repo}:1.0") == image.manifest
        skopeo.copy(f"docker://{host}/{repo}:1.0", f"oci:{out}:1.0")
    pulled = read_oci_layout(out)
    for blob_digest, data in image.blobs.items():
        assert pulled[blob_digest] == data


def test_link_files_match_distribution_byte_for_byte(tmp_path: Path) -> None:
    """The same image pushed to distribution and written by Lading gives identical link
    files (content and location) for layers, revisions and tags."""
    image = make_image([1234, 5678])
    layout = write_oci_layout(image, tmp_path / "image", tag="t")
    dist_root = tmp_path / "dist"
    with distribution(dist_root, tmp_path) as host:
        skopeo.copy(f"oci:{layout}:t", f"docker://{host}/x/y:t")

    lading_root = tmp_path / "lading"
    registry = lading_on(lading_root)
    for blob_digest, data in image.blobs.items():
        if blob_digest != image.manifest_digest:
            registry.blobs.put(data)
            registry.repo_blobs.link("x/y", Digest.parse(blob_digest))
    manifest = parse_manifest(image.manifest, None)
    registry.manifests.put("x/y", manifest)
    registry.tags.tag("x/y", "t", manifest.digest)

    def links(root: Path) -> dict[str, bytes]:
        base = root / "docker/registry/v2/repositories"
        return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("link")}

    def blobs(root: Path) -> dict[str, bytes]:
        base = root / "docker/registry/v2/blobs"
        return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("data")}

    assert links(lading_root) == links(dist_root)
    assert blobs(lading_root) == blobs(dist_root)
