"""Builds the storage driver a configuration names — the only place drivers are chosen.

Every driver it returns is wrapped in `CheckedDriver`, so no store can reach a backend
with an unchecked path.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.config.settings import StorageSettings
from pipeline.errors import ConfigurationError
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


def _gcs(storage: StorageSettings) -> StorageDriver:
    from pipeline.storage.gcs import GCSDriver  # the SDK is only imported when GCS is configured

    try:
        return GCSDriver(
            storage.gcs_bucket,
            root_directory=storage.gcs_rootdirectory,
            keyfile=storage.gcs_keyfile,
            credentials=storage.gcs_credentials or None,
            endpoint=storage.gcs_endpoint,
            chunk_size=storage.gcs_chunksize,
        )
    except (OSError, ValueError) as exc:  # unreadable or malformed key
        key = "storage.gcs.keyfile" if storage.gcs_keyfile else "storage.gcs.credentials"
        raise ConfigurationError(key, f"{key}: {exc}") from exc
    except Exception as exc:  # google.auth found no default credentials
        if type(exc).__name__ != "DefaultCredentialsError":
            raise
        key = "storage.gcs.keyfile"
        raise ConfigurationError(key, f"{key}: no key configured and no default credentials: {exc}") from exc


def _azure(storage: StorageSettings) -> StorageDriver:
    from pipeline.storage.azure import AzureDriver  # the SDK is only imported when Azure is configured

    try:
        return AzureDriver(
            storage.azure_accountname,
            storage.azure_accountkey,
            storage.azure_container,
            realm=storage.azure_realm,
            service_url=storage.azure_serviceurl,
            root_directory=storage.azure_rootdirectory,
        )
    except ValueError as exc:  # e.g. an account key that is not base64
        key = "storage.azure.accountkey"
        raise ConfigurationError(key, f"{key}: {exc}") from exc


DRIVERS: dict[str, Callable[[StorageSettings], StorageDriver]] = {
    "filesystem": _filesystem,
    "inmemory": _inmemory,
    "s3": _s3,
    "gcs": _gcs,
    "azure": _azure,
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
