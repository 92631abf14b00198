"""The composition of one registry's stores over one storage driver.

Every process (API, worker, CLI) builds a `Registry` once from its `Settings` and passes
it to the use cases; the stores share the driver and hold no per-request state, so one
instance serves every thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.blobs import BlobStore, RepositoryBlobs
from pipeline.catalog import Catalog
from pipeline.locks import LocalLocks, RepositoryLocks
from pipeline.manifeststore import ManifestStore
from pipeline.referrers import Referrers
from pipeline.settings import Settings, StorageSettings
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import StorageDriver
from pipeline.storage.factory import driver_from_settings
from pipeline.storage.memory import MemoryDriver
from pipeline.tags import TagStore
from pipeline.uploads import UploadStore


@dataclass
class Registry:
    settings: Settings
    driver: StorageDriver
    blobs: BlobStore
    repo_blobs: RepositoryBlobs
    uploads: UploadStore
    manifests: ManifestStore
    tags: TagStore
    referrers: Referrers
    catalog: Catalog
    locks: RepositoryLocks

    @classmethod
    def from_settings(cls, settings: Settings, locks: RepositoryLocks | None = None) -> Registry:
        """The registry the configuration describes (storage from `settings.storage`);
        in-process locks unless a shared implementation (Redis) is passed."""
        return cls.from_driver(settings, driver_from_settings(settings.storage), locks)

    @classmethod
    def in_memory(cls, settings: Settings | None = None) -> Registry:
        """A throwaway registry on a fresh in-memory driver (path-checked like any other)."""
        if settings is None:
            settings = Settings(storage=StorageSettings(driver="inmemory"))
        return cls.from_driver(settings, CheckedDriver(MemoryDriver()))

    @classmethod
    def from_driver(
        cls, settings: Settings, driver: StorageDriver, locks: RepositoryLocks | None = None
    ) -> Registry:
        """Stores over an already built driver (the caller decides on CheckedDriver)."""
        blobs = BlobStore(driver)
        repo_blobs = RepositoryBlobs(driver, blobs)
        manifests = ManifestStore(driver, blobs, repo_blobs)
        return cls(
            settings=settings,
            driver=driver,
            blobs=blobs,
            repo_blobs=repo_blobs,
            uploads=UploadStore(driver),
            manifests=manifests,
            tags=TagStore(driver),
            referrers=Referrers(driver, manifests),
            catalog=Catalog(driver),
            locks=locks if locks is not None else LocalLocks(),
        )
