"""Builds the storage driver a configuration names — the only place drivers are chosen.

Every driver it returns is wrapped in `CheckedDriver`, so no store can reach a backend
with an unchecked path.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.errors import ConfigurationError
from pipeline.settings import StorageSettings
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import StorageDriver
from pipeline.storage.filesystem import FilesystemDriver
from pipeline.storage.memory import MemoryDriver


def _filesystem(storage: StorageSettings) -> StorageDriver:
    if not storage.root:
        key = "storage.filesystem.rootdirectory"
        raise ConfigurationError(key, f"{key}: must not be empty")
    return FilesystemDriver(storage.root)


def _inmemory(storage: StorageSettings) -> StorageDriver:
    return MemoryDriver()


def _s3(storage: StorageSettings) -> StorageDriver:
    if not storage.s3_bucket:
        raise ConfigurationError("storage.s3.bucket", "storage.s3.bucket: required")
    from pipeline.storage.s3 import S3Driver  # boto3 is only imported when S3 is configured

    return S3Driver(
        storage.s3_bucket,
        region=storage.s3_region,
        endpoint_url=storage.s3_regionendpoint or None,
        access_key=storage.s3_accesskey or None,
        secret_key=storage.s3_secretkey or None,
        root_directory=storage.s3_rootdirectory,
        force_path_style=storage.s3_forcepathstyle,
        secure=storage.s3_secure,
        chunk_size=storage.s3_chunksize,
    )


DRIVERS: dict[str, Callable[[StorageSettings], StorageDriver]] = {
    "filesystem": _filesystem,
    "inmemory": _inmemory,
    "s3": _s3,
}


def driver_from_settings(storage: StorageSettings) -> StorageDriver:
    """The configured driver, wrapped in CheckedDriver. ConfigurationError naming the
    `storage.<name>` key for a driver Lading does not have."""
    build = DRIVERS.get(storage.driver)
    if build is None:
        key = f"storage.{storage.driver}"
        raise ConfigurationError(
            key, f"{key}: unknown storage driver {storage.driver!r} (supported: {', '.join(sorted(DRIVERS))})"
        )
    return CheckedDriver(build(storage))
