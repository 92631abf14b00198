"""Garbage collection on every storage driver — filesystem, memory, S3 (moto), GCS
(fake-gcs-server) and Azure (Azurite). gc parks a blob directory in the trash with `move`
and moves it back when a push rescued it; when the push stored the same blob again
meanwhile, the move back must refuse (the one move rule: PathExists, nothing merged) so gc
keeps the pushed copy and drops its own. The interleavings are forced with the driver
wrapper of the gc tests (`helpers.HookDriver`), which runs a push right after gc's move
into the trash."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.formats.digest import Digest
from pipeline.formats.manifests import OCI_MANIFEST
from pipeline.maintenance.gc import garbage_collect
from pipeline.maintenance.reconcile import reconcile
from pipeline.manifest_commit import commit_manifest, delete_manifest
from pipeline.registry import Registry
from pipeline.storage import paths
from pipeline.storage.azure import AzureDriver
from pipeline.storage.driver import StorageDriver
from pipeline.storage.filesystem import FilesystemDriver
from pipeline.storage.gcs import GCSDriver
from pipeline.storage.memory import MemoryDriver
from pipeline.storage.s3 import S3Driver
from tests.pipeline.maintenance.helpers import (
    HookDriver,
    assert_intact,
    kill_collection_in_the_trash,
    push_blob,
    push_image,
    settings,
    stored,
)
from tests.support.emulators import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    S3_KEY,
    S3_SECRET,
    azurite,
    fake_gcs_server,
    moto_server,
)

DRIVERS = ["filesystem", "inmemory", "s3", "gcs", "azure"]


def files_in(registry: Registry, directory: str) -> list[str]:
    """Files below a directory (a filesystem keeps emptied directories; object stores do not)."""
    if not registry.driver.exists(directory):
        return []
    return [info.path for info in registry.driver.walk(directory) if not info.is_dir]


@pytest.fixture(scope="module")
def endpoints() -> Iterator[dict[str, str]]:
    with moto_server() as s3, fake_gcs_server() as gcs, azurite() as az:
        yield {"s3": s3, "gcs": gcs, "azure": az}


def backend(name: str, endpoints: dict[str, str], tmp_path: Path) -> StorageDriver:
    unique = f"lading-{uuid.uuid4().hex[:16]}"
    if name == "filesystem":
        return FilesystemDriver(str(tmp_path / "root"))
    if name == "inmemory":
        return MemoryDriver()
    if name == "s3":
        s3 = S3Driver(
            unique,
            endpoint_url=endpoints["s3"],
            force_path_style=True,
            secure=False,
            access_key=S3_KEY,
            secret_key=S3_SECRET,
        )
        s3.client.create_bucket(Bucket=unique)
        return s3
    if name == "gcs":
        gcs = GCSDriver(unique, endpoint=endpoints["gcs"], retry_deadline=10.0)
        gcs.client.create_bucket(unique)
        return gcs
    az = AzureDriver(AZURITE_ACCOUNT, AZURITE_KEY, unique, service_url=endpoints["azure"])
    az.container.create_container()
    return az


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest, endpoints: dict[str, str], tmp_path: Path) -> HookDriver:
    return HookDriver(backend(request.param, endpoints, tmp_path))


@pytest.fixture
def registry(driver: HookDriver) -> Registry:
    return Registry.from_driver(settings(gc_grace_seconds=0), driver)


def test_collection_reclaims_a_deleted_image_and_keeps_the_rest(registry: Registry) -> None:
    keep = push_image(registry, "app", "v1")
    gone = push_image(registry, "app", "v2")
    delete_manifest(registry, "app", str(gone.digest))
    summary = garbage_collect(registry)
    assert summary["blobs_deleted"] == 3
    assert all(not stored(registry, d) for d in gone.all_digests())
    assert_intact(registry, keep)
    assert not registry.driver.exists(paths.blob_dir(gone.digest))
    assert files_in(registry, paths.gc_trash_root()) == []


def test_blob_stored_again_while_in_the_trash_is_kept_once(registry: Registry, driver: HookDriver) -> None:
    image = push_image(registry, "app", "v1")
    delete_manifest(registry, "app", str(image.digest))
    layer_bytes = image.layers[0]
    layer = Digest.of(layer_bytes)

    def push_during_sweep(source: str, dest: str) -> None:
        if dest == paths.gc_trash(layer):
            driver.on_move = None
            push_blob(registry, "other", layer_bytes)  # finds no blob: stores it again, rescued

    driver.on_move = push_during_sweep
    garbage_collect(registry)
    assert registry.repo_blobs.open("other", layer).read() == layer_bytes
    assert registry.driver.list(paths.blob_dir(layer)) == [paths.blob_data(layer)]
    assert files_in(registry, paths.gc_trash_root()) == []


def test_a_killed_collection_is_put_back_by_reconcile(registry: Registry, driver: HookDriver) -> None:
    image = push_image(registry, "app", "v1")
    body = image.manifest
    delete_manifest(registry, "app", str(image.digest))
    layer = Digest.of(image.layers[0])
    kill_collection_in_the_trash(registry, driver, layer)
    assert not stored(registry, layer)
    assert reconcile(registry)["gc"]["restored"] == 1
    assert stored(registry, layer)
    assert registry.repo_blobs.open("app", layer).read() == image.layers[0]
    for blob in (image.config, *image.layers):
        if not stored(registry, Digest.of(blob)):
            push_blob(registry, "app", blob)
    commit_manifest(registry, "app", "v2", OCI_MANIFEST, body)
    assert registry.manifests.get("app", image.digest)[0] == body
