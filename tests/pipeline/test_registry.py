"""Registry: one composition of every store over one driver, built from settings."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.blob_commit import commit_blob
from pipeline.config import Settings, StorageSettings
from pipeline.errors import ConfigurationError, InvalidPath
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import OCI_CONFIG, OCI_MANIFEST
from pipeline.infra.locks import LocalLocks
from pipeline.manifest_commit import commit_manifest
from pipeline.registry import Registry, build_registry
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.factory import driver_from_settings
from pipeline.storage.filesystem import FilesystemDriver
from pipeline.storage.memory import MemoryDriver

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def fs_settings(root: Path) -> Settings:
    return Settings(storage=StorageSettings(driver="filesystem", root=str(root)))


def push_image(registry: Registry, repo: str, tag: str) -> tuple[Digest, Digest, Digest]:
    """Push a config, a layer and a manifest the way the API and the jobs do."""
    digests = []
    for content in (b'{"architecture":"amd64","os":"linux"}', b"layer tar bytes" * 100):
        upload_id = registry.uploads.create(repo).upload_id
        registry.uploads.append(repo, upload_id, content, 0)
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        commit_blob(registry, repo, upload_id, digest, len(content))
        digests.append((Digest.parse(digest), len(content)))
    (config, config_size), (layer, layer_size) = digests
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": str(config), "size": config_size},
            "layers": [{"mediaType": LAYER_TAR, "digest": str(layer), "size": layer_size}],
        }
    ).encode()
    result = commit_manifest(registry, repo, tag, OCI_MANIFEST, body)
    return config, layer, Digest.parse(result["digest"])


def test_in_memory_composes_every_store_on_one_checked_driver() -> None:
    registry = Registry.in_memory()
    assert isinstance(registry.driver, CheckedDriver)
    assert isinstance(registry.driver.inner, MemoryDriver)
    assert registry.settings.storage.driver == "inmemory"
    for store in (
        registry.blobs,
        registry.repo_blobs,
        registry.uploads,
        registry.manifests,
        registry.tags,
        registry.referrers,
        registry.catalog,
    ):
        assert store.driver is registry.driver
    assert registry.repo_blobs.blobs is registry.blobs
    assert isinstance(registry.locks, LocalLocks)
    with pytest.raises(InvalidPath):
        registry.driver.get_content("/docker/../etc/passwd")


def test_in_memory_registries_are_independent() -> None:
    first, second = Registry.in_memory(), Registry.in_memory()
    digest = first.blobs.put(b"only in the first")
    assert not second.blobs.exists(digest)


def test_in_memory_keeps_given_settings() -> None:
    settings = Settings(deep_verification="warn")
    assert Registry.in_memory(settings).settings is settings


def test_a_pushed_image_reads_back(tmp_path: Path) -> None:
    registry = build_registry(fs_settings(tmp_path))
    _config, layer, manifest = push_image(registry, "library/app", "v1")
    assert registry.tags.resolve("library/app", "v1") == manifest
    assert registry.repo_blobs.stat("library/app", layer) == len(b"layer tar bytes" * 100)
    assert registry.catalog.repositories() == ["library/app"]


def test_replicas_built_from_the_same_settings_share_state(tmp_path: Path) -> None:
    api = build_registry(fs_settings(tmp_path))
    worker = build_registry(fs_settings(tmp_path))
    assert isinstance(api.driver, CheckedDriver)
    assert isinstance(api.driver.inner, FilesystemDriver)
    upload_id = api.uploads.create("repo").upload_id
    api.uploads.append("repo", upload_id, b"written by the api", 0)
    digest = "sha256:" + hashlib.sha256(b"written by the api").hexdigest()
    commit_blob(worker, "repo", upload_id, digest, None)  # the worker finishes what the api began
    with api.repo_blobs.open("repo", Digest.parse(digest)) as stream:
        assert stream.read() == b"written by the api"
    assert (tmp_path / "docker/registry/v2/repositories/repo/_layers/sha256").is_dir()


def test_passed_locks_are_used(tmp_path: Path) -> None:
    taken: list[str] = []

    class RecordingLocks:
        @contextmanager
        def lock(self, repository: str, timeout: float = 60.0) -> Iterator[None]:
            taken.append(repository)
            yield

    locks = RecordingLocks()
    settings = fs_settings(tmp_path)
    registry = Registry.from_driver(settings, driver_from_settings(settings.storage), locks)
    assert registry.locks is locks
    push_image(registry, "repo", "latest")
    assert taken == ["repo"]


def test_unknown_storage_driver_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="storage"):
        build_registry(Settings(storage=StorageSettings(driver="floppy")))


def test_from_driver_uses_the_given_driver(tmp_path: Path) -> None:
    driver = CheckedDriver(FilesystemDriver(str(tmp_path)))
    registry = Registry.from_driver(Settings(), driver)
    assert registry.driver is driver
    assert isinstance(registry.locks, LocalLocks)
