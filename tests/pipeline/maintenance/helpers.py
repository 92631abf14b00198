"""Pushing images through the pipeline's own use cases (upload session → commit_blob →
commit_manifest), the way a client's push reaches storage, plus storage tweaks the
maintenance tests need (ageing files, flipping a byte)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline.blob_commit import commit_blob
from pipeline.config import MaintenanceSettings, Settings, StorageSettings
from pipeline.formats.digest import Digest
from pipeline.formats.manifests import OCI_INDEX, OCI_MANIFEST
from pipeline.maintenance.gc import garbage_collect
from pipeline.manifest_commit import commit_manifest
from pipeline.registry import Registry
from pipeline.storage import paths
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import StorageDriver
from pipeline.storage.filesystem import FilesystemDriver

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


class HookDriver(CheckedDriver):
    """Runs `on_move(source, dest)` after every move, `on_put(path)` after every
    put_content and `on_delete(path)` after every delete, so a test can run a push (or
    kill the collection) at an exact point inside it."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.on_move: Callable[[str, str], None] | None = None
        self.on_put: Callable[[str], None] | None = None
        self.on_delete: Callable[[str], None] | None = None

    def delete(self, path: str) -> None:
        super().delete(path)
        if self.on_delete is not None:
            self.on_delete(path)

    def move(self, source: str, dest: str) -> None:
        super().move(source, dest)
        if self.on_move is not None:
            self.on_move(source, dest)

    def put_content(self, path: str, content: bytes) -> None:
        super().put_content(path, content)
        if self.on_put is not None:
            self.on_put(path)


def kill_collection_in_the_trash(registry: Registry, driver: HookDriver, digest: Digest) -> None:
    """Run a collection that dies (a killed process) right after parking `digest`'s blob in
    the trash."""

    class Killed(Exception):
        pass

    def die(source: str, dest: str) -> None:
        if dest == paths.gc_trash(digest):
            raise Killed

    driver.on_move = die
    with pytest.raises(Killed):
        garbage_collect(registry)
    driver.on_move = None


def settings(**maintenance: Any) -> Settings:
    return Settings(
        storage=StorageSettings(driver="filesystem", delete_enabled=True),
        maintenance=MaintenanceSettings(**maintenance),
    )


def fs_registry(root: str, **maintenance: Any) -> Registry:
    return Registry.from_driver(settings(**maintenance), CheckedDriver(FilesystemDriver(root)))


def push_blob(registry: Registry, repo: str, data: bytes) -> Digest:
    """Upload session, one chunk, commit — as a monolithic client push does."""
    session = registry.uploads.create(repo)
    registry.uploads.append(repo, session.upload_id, data)
    digest = Digest.of(data)
    commit_blob(registry, repo, session.upload_id, str(digest), len(data))
    return digest


def descriptor(data: bytes, media_type: str = LAYER) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": str(Digest.of(data)), "size": len(data)}


@dataclass
class Image:
    repo: str
    manifest: bytes
    config: bytes
    layers: list[bytes]
    tags: list[str] = field(default_factory=list)

    @property
    def digest(self) -> Digest:
        return Digest.of(self.manifest)

    def blob_digests(self) -> set[Digest]:
        return {Digest.of(self.config), *(Digest.of(layer) for layer in self.layers)}

    def all_digests(self) -> set[Digest]:
        return {self.digest, *self.blob_digests()}


def image_manifest(config: bytes, layers: list[bytes], **fields: Any) -> bytes:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config, CONFIG),
        "layers": [descriptor(layer) for layer in layers],
    }
    doc.update(fields)
    return json.dumps(doc).encode()


def push_image(
    registry: Registry,
    repo: str,
    tag: str | None,
    layers: list[bytes] | None = None,
    config: bytes | None = None,
    **fields: Any,
) -> Image:
    """Push config and layers (skipping none), then the manifest by tag (or by digest)."""
    layers = layers if layers is not None else [os.urandom(2048)]
    config = config if config is not None else json.dumps({"id": os.urandom(8).hex()}).encode()
    for blob in (config, *layers):
        push_blob(registry, repo, blob)
    body = image_manifest(config, layers, **fields)
    commit_manifest(registry, repo, tag or str(Digest.of(body)), OCI_MANIFEST, body)
    return Image(repo, body, config, layers, [tag] if tag else [])


def push_index(registry: Registry, repo: str, tag: str, children: list[Image]) -> Digest:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {**descriptor(child.manifest, OCI_MANIFEST), "platform": {"os": "linux", "architecture": f"a{i}"}}
            for i, child in enumerate(children)
        ],
    }
    body = json.dumps(doc).encode()
    commit_manifest(registry, repo, tag, OCI_INDEX, body)
    return Digest.of(body)


def subject_of(image: Image) -> dict[str, Any]:
    return descriptor(image.manifest, OCI_MANIFEST)


def local(registry: Registry, path: str) -> str:
    """The OS path of a storage path (filesystem registries only)."""
    inner = registry.driver.inner if isinstance(registry.driver, CheckedDriver) else registry.driver
    assert isinstance(inner, FilesystemDriver)
    return inner.root + path


def age(registry: Registry, path: str, seconds: float) -> None:
    """Make a stored file look last written `seconds` ago."""
    when = os.stat(local(registry, path)).st_mtime - seconds
    os.utime(local(registry, path), (when, when))


def age_blobs(registry: Registry, seconds: float = 7 * 24 * 3600) -> None:
    """Age every stored blob (so the grace window does not protect it)."""
    for dirpath, _dirs, names in os.walk(local(registry, paths.blobs_root())):
        for name in names:
            full = os.path.join(dirpath, name)
            when = os.stat(full).st_mtime - seconds
            os.utime(full, (when, when))


def flip_byte(registry: Registry, digest: Digest, offset: int = 10) -> None:
    """Corrupt a stored blob in place, keeping its size (bit rot)."""
    with open(local(registry, paths.blob_data(digest)), "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def stored(registry: Registry, digest: Digest) -> bool:
    return registry.driver.exists(paths.blob_data(digest))


def assert_intact(registry: Registry, image: Image) -> None:
    """Every blob of the image is pullable from its repository with the right bytes."""
    body, _ = registry.manifests.get(image.repo, image.digest)
    assert body == image.manifest
    for blob in (image.config, *image.layers):
        assert registry.repo_blobs.open(image.repo, Digest.of(blob)).read() == blob
    for tag in image.tags:
        assert registry.tags.resolve(image.repo, tag) == image.digest
