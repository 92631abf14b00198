"""Deep verification of real (small) images stored in an in-memory registry."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from pipeline.deepverify import deep_verify, tarsum_blob, verification_result
from pipeline.errors import BlobUnknown, LayerInvalid, ManifestInvalid, ManifestUnknown
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import parse_manifest
from pipeline.formats.tarsum import tarsum
from pipeline.registry import Registry
from pipeline.storage import paths
from tests.support.images import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, Image, make_image, sha256

REPO = "team/app"


def push(registry: Registry, image: Image, repo: str = REPO) -> str:
    """Store every blob, link it, and store the manifest, as a finished push would."""
    for digest, data in image.blobs.items():
        if digest == image.manifest_digest:
            continue
        stored = registry.blobs.put(data)
        assert str(stored) == digest
        registry.repo_blobs.link(repo, stored)
    manifest = parse_manifest(image.manifest, OCI_MANIFEST)
    registry.manifests.put(repo, manifest)
    return str(manifest.digest)


def manifest_for(registry: Registry, config: bytes, layers: list[bytes], repo: str = REPO) -> str:
    """Push an image made of these exact blobs; return the manifest digest."""
    for blob in [config, *layers]:
        registry.repo_blobs.link(repo, registry.blobs.put(blob))
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(b), "size": len(b)} for b in layers],
        }
    ).encode()
    manifest = parse_manifest(body, OCI_MANIFEST)
    registry.manifests.put(repo, manifest)
    return str(manifest.digest)


def config_with(diff_ids: list[str]) -> bytes:
    return json.dumps({"os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


@pytest.fixture
def registry() -> Registry:
    return Registry.in_memory()


@pytest.mark.parametrize("policy", ["warn", "reject"])
def test_a_correct_image_passes_and_is_recorded(registry: Registry, policy: str) -> None:
    image = make_image([3000, 50_000, 10])
    digest = push(registry, image)
    result = deep_verify(registry, REPO, digest, policy)
    assert result["ok"] is True
    assert result["mismatches"] == []
    assert result["skipped"] is None
    assert result["policy"] == policy
    assert verification_result(registry, REPO, digest) == result
    # The uncompressed digest of every layer was computed once and cached per blob.
    for layer in image.layers:
        record = json.loads(registry.driver.get_content(paths.tarsum_record(Digest.parse(layer.digest))))
        assert record["diff_id"] == layer.diff_id
        assert record["size"] == len(layer.blob)
        assert record["tarsum"] == tarsum(io.BytesIO(layer.blob))


def test_a_lying_config_is_rejected_under_reject(registry: Registry) -> None:
    wrong = sha256(b"not this layer")
    lie = make_image([1000, 2000])
    config = config_with([lie.layers[0].diff_id, wrong])
    digest = manifest_for(registry, config, [layer.blob for layer in lie.layers])

    with pytest.raises(ManifestInvalid) as info:
        deep_verify(registry, REPO, digest, "reject")
    assert info.value.detail == [
        {
            "index": 1,
            "layer": lie.layers[1].digest,
            "expected": wrong,
            "actual": lie.layers[1].diff_id,
            "reason": "uncompressed digest differs from the config's diff_id",
        }
    ]
    recorded = verification_result(registry, REPO, digest)
    assert recorded is not None
    assert recorded["ok"] is False
    assert recorded["mismatches"] == info.value.detail


def test_a_lying_config_is_flagged_under_warn(registry: Registry) -> None:
    image = make_image([500, 600])
    swapped = config_with([image.layers[1].diff_id, image.layers[0].diff_id])  # right ids, wrong order
    digest = manifest_for(registry, swapped, [layer.blob for layer in image.layers])
    result = deep_verify(registry, REPO, digest, "warn")
    assert result["ok"] is False
    assert [m["index"] for m in result["mismatches"]] == [0, 1]
    assert verification_result(registry, REPO, digest) == result


def test_layer_count_mismatch_is_a_failure(registry: Registry) -> None:
    image = make_image([100, 200])
    too_many = config_with([*(layer.diff_id for layer in image.layers), sha256(b"extra")])
    digest = manifest_for(registry, too_many, [layer.blob for layer in image.layers])
    result = deep_verify(registry, REPO, digest, "warn")
    assert result["ok"] is False
    assert result["mismatches"] == [
        {
            "index": 2,
            "layer": None,
            "expected": sha256(b"extra"),
            "actual": None,
            "reason": "config lists more diff_ids than the manifest has layers",
        }
    ]
    too_few = config_with([image.layers[0].diff_id])
    digest = manifest_for(registry, too_few, [layer.blob for layer in image.layers])
    mismatches = deep_verify(registry, REPO, digest, "warn")["mismatches"]
    assert [(m["index"], m["expected"], m["actual"]) for m in mismatches] == [
        (1, None, image.layers[1].diff_id)
    ]


def test_a_layer_that_is_not_a_tar_fails_verification(registry: Registry) -> None:
    not_tar = gzip.compress(b"this is not a tar archive" * 40)
    config = config_with([sha256(b"this is not a tar archive" * 40)])
    digest = manifest_for(registry, config, [not_tar])
    result = deep_verify(registry, REPO, digest, "warn")
    assert result["ok"] is False
    assert result["mismatches"][0]["actual"] is None
    assert "not a tar" in result["mismatches"][0]["reason"]
    with pytest.raises(LayerInvalid):
        tarsum_blob(registry, sha256(not_tar))


def test_off_does_nothing(registry: Registry) -> None:
    image = make_image([100])
    digest = manifest_for(registry, config_with([sha256(b"wrong")]), [image.layers[0].blob])
    result = deep_verify(registry, REPO, digest, "off")
    assert result["ok"] is True
    assert result["skipped"]
    assert verification_result(registry, REPO, digest) is None
    assert not registry.driver.exists(paths.tarsum_record(Digest.parse(image.layers[0].digest)))


def test_configs_without_diff_ids_are_skipped_not_failed(registry: Registry) -> None:
    image = make_image([100])
    artifact_config = b'{"kind": "helm chart"}'
    digest = manifest_for(registry, artifact_config, [image.layers[0].blob])
    result = deep_verify(registry, REPO, digest, "reject")
    assert result["ok"] is True
    assert result["skipped"] == "config has no rootfs.diff_ids"
    assert verification_result(registry, REPO, digest) == result


def test_unknown_manifest_and_policy(registry: Registry) -> None:
    with pytest.raises(ManifestUnknown):
        deep_verify(registry, REPO, sha256(b"nothing"), "warn")
    digest = push(registry, make_image([10]))
    with pytest.raises(ValueError):
        deep_verify(registry, REPO, digest, "sometimes")
    assert verification_result(registry, REPO, sha256(b"never verified")) is None


def test_tarsum_blob_is_computed_once_and_cached(registry: Registry) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"world"))
    blob = gzip.compress(raw.getvalue())
    digest = registry.blobs.put(blob)
    first = tarsum_blob(registry, str(digest))
    assert first == {
        "tarsum": tarsum(io.BytesIO(raw.getvalue())),
        "diff_id": sha256(raw.getvalue()),
        "size": len(blob),
    }
    # A second call answers from the record: it no longer needs the blob's bytes.
    registry.driver.delete(paths.blob_dir(digest))
    assert tarsum_blob(registry, str(digest)) == first
    with pytest.raises(BlobUnknown):
        tarsum_blob(registry, sha256(b"absent"))


def _push_blobs_only(registry: Registry, image: Image, repo: str = REPO) -> None:
    for digest, data in image.blobs.items():
        if digest != image.manifest_digest:
            registry.repo_blobs.link(repo, registry.blobs.put(data))


def test_commit_under_reject_refuses_a_lying_config_and_writes_nothing() -> None:
    from pipeline.config import Settings
    from pipeline.manifest_commit import commit_manifest

    registry = Registry.in_memory(Settings(deep_verification="reject"))
    honest = make_image([2000, 3000])
    liar = make_image([2000, 3000], diff_ids=[sha256(b"not it"), sha256(b"nor this")])
    _push_blobs_only(registry, honest)
    _push_blobs_only(registry, liar)

    committed = commit_manifest(registry, REPO, "v1", OCI_MANIFEST, honest.manifest)
    assert committed["digest"] == honest.manifest_digest
    assert verification_result(registry, REPO, honest.manifest_digest)["ok"] is True

    with pytest.raises(ManifestInvalid):
        commit_manifest(registry, REPO, "v1", OCI_MANIFEST, liar.manifest)
    assert str(registry.tags.resolve(REPO, "v1")) == honest.manifest_digest  # tag not moved
    assert not registry.manifests.exists(REPO, Digest.parse(liar.manifest_digest))
    assert not registry.blobs.exists(Digest.parse(liar.manifest_digest))


def test_commit_under_warn_stores_and_records_the_mismatch() -> None:
    from pipeline.config import Settings
    from pipeline.manifest_commit import commit_manifest

    registry = Registry.in_memory(Settings(deep_verification="warn"))
    liar = make_image([1000], diff_ids=[sha256(b"wrong")])
    _push_blobs_only(registry, liar)
    commit_manifest(registry, REPO, "v1", OCI_MANIFEST, liar.manifest)
    assert str(registry.tags.resolve(REPO, "v1")) == liar.manifest_digest
    recorded = verification_result(registry, REPO, liar.manifest_digest)
    assert recorded is not None and recorded["ok"] is False
    assert recorded["mismatches"][0]["expected"] == sha256(b"wrong")
