"""The composition of one registry's stores over one storage driver, and
`build_registry(settings)`: the one place a `Registry` is built from `Settings`.

Every process (API, worker, beat, CLI command, embedded) gets its `Registry` from
`build_registry`, called by the composition root `lading.composition` — or, in a worker
process started by Celery's own command line, by the task layer's `RegistryHolder`
(workers/ may not import lading/, so the pipeline-level half of the root lives here).
`build_registry` asks `pipeline.infra.coordination` where locks live, so no process can end up
with per-process locks in a deployment of many processes. The stores share the driver
and hold no per-request state, so one instance serves every thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.settings import Settings, StorageSettings
from pipeline.infra.coordination import Coordination, coordination_for
from pipeline.infra.locks import LocalLocks, RepositoryLocks
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import StorageDriver
from pipeline.storage.factory import driver_from_settings
from pipeline.storage.memory import MemoryDriver
from pipeline.stores.blobcache import BlobCache, blob_cache_from_settings
from pipeline.stores.blobs import BlobStore, RepositoryBlobs
from pipeline.stores.catalog import Catalog
from pipeline.stores.manifests import ManifestStore
from pipeline.stores.pending import PendingCommits
from pipeline.stores.referrers import Referrers
from pipeline.stores.tags import TagStore
from pipeline.stores.uploads import UploadStore


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
    pending: PendingCommits

    @classmethod
    def in_memory(cls, settings: Settings | None = None) -> Registry:
        """A throwaway registry on a fresh in-memory driver (path-checked like any other)."""
        if settings is None:
            settings = Settings(storage=StorageSettings(driver="inmemory"))
        return cls.from_driver(settings, CheckedDriver(MemoryDriver()))

    @classmethod
    def from_driver(
        cls,
        settings: Settings,
        driver: StorageDriver,
        locks: RepositoryLocks | None = None,
        blob_cache: BlobCache | None = None,
    ) -> Registry:
        """Stores over an already built driver (the caller decides on CheckedDriver); no
        blob descriptor cache unless one is passed."""
        blobs = BlobStore(driver, blob_cache)
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
            pending=PendingCommits(driver),
        )


def build_registry(
    settings: Settings, coordination: Coordination | None = None, *, driver: StorageDriver | None = None
) -> Registry:
    """The registry `settings` describes: storage from `settings.storage` (or `driver`),
    locks where `coordination` (default: `coordination_for(settings)`) puts them: Redis in
    a scaled-out deployment, in-process in embedded mode, and the blob descriptor cache
    `storage.cache` asks for (in the same Redis when there is one: pipeline.stores.blobcache).
    ConfigurationError for a scaled-out configuration with no shared place for locks."""
    coordination = coordination if coordination is not None else coordination_for(settings)
    locks = coordination.locks()
    if driver is None:
        driver = driver_from_settings(settings.storage)
    redis = (
        coordination.redis.client()
        if coordination.redis is not None and settings.storage.blob_cache
        else None
    )
    return Registry.from_driver(settings, driver, locks, blob_cache_from_settings(settings, redis))
