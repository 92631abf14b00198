"""driver_from_settings: the configured backend, always behind CheckedDriver."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import StorageSettings
from pipeline.errors import ConfigurationError, InvalidPath
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.factory import driver_from_settings
from pipeline.storage.filesystem import FilesystemDriver
from pipeline.storage.memory import MemoryDriver


def test_filesystem_driver_on_the_configured_root(tmp_path: Path) -> None:
    d = driver_from_settings(StorageSettings(driver="filesystem", root=str(tmp_path)))
    assert isinstance(d, CheckedDriver)
    assert isinstance(d.inner, FilesystemDriver)
    d.put_content("/docker/registry/v2/x", b"1")
    assert (tmp_path / "docker/registry/v2/x").read_bytes() == b"1"
    with pytest.raises(InvalidPath):
        d.get_content("/docker/../../etc/passwd")


def test_inmemory_driver() -> None:
    d = driver_from_settings(StorageSettings(driver="inmemory"))
    assert isinstance(d, CheckedDriver)
    assert isinstance(d.inner, MemoryDriver)
    with pytest.raises(InvalidPath):
        d.put_content("relative", b"")


def test_unknown_driver_names_the_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        driver_from_settings(StorageSettings(driver="gcsx"))
    assert info.value.detail == "storage.gcsx"
    assert "storage.gcsx" in str(info.value)
    assert "filesystem" in str(info.value)


def test_filesystem_needs_a_root() -> None:
    with pytest.raises(ConfigurationError) as info:
        driver_from_settings(StorageSettings(driver="filesystem", root=""))
    assert "storage.filesystem.rootdirectory" in str(info.value)


def test_distribution_gcs_section_and_environment_overrides(tmp_path: Path) -> None:
    from pipeline.config import load_settings

    config = tmp_path / "config.yml"
    config.write_text(
        "storage:\n  gcs:\n    bucket: from-file\n    keyfile: /etc/gcs.json\n"
        "    rootdirectory: /reg\n    chunksize: 5242880\n    useragent: x\n"
    )
    storage = load_settings(
        str(config), {"REGISTRY_STORAGE_GCS_BUCKET": "from-env", "REGISTRY_STORAGE_GCS_ENDPOINT": "http://e"}
    ).storage
    assert (storage.driver, storage.gcs_bucket, storage.gcs_keyfile) == ("gcs", "from-env", "/etc/gcs.json")
    assert (storage.gcs_rootdirectory, storage.gcs_chunksize, storage.gcs_endpoint) == (
        "/reg",
        5242880,
        "http://e",
    )


def test_distribution_azure_section_from_the_environment_alone(tmp_path: Path) -> None:
    from pipeline.config import load_settings

    env = {
        "REGISTRY_STORAGE": "azure",
        "REGISTRY_STORAGE_AZURE_ACCOUNTNAME": "acct",
        "REGISTRY_STORAGE_AZURE_ACCOUNTKEY": "a2V5",
        "REGISTRY_STORAGE_AZURE_CONTAINER": "registry",
        "REGISTRY_STORAGE_AZURE_REALM": "core.chinacloudapi.cn",
        "REGISTRY_STORAGE_AZURE_ROOTDIRECTORY": "/r",
    }
    config = tmp_path / "config.yml"
    config.write_text("storage:\n  filesystem: {rootdirectory: /var/lib/registry}\n")
    storage = load_settings(str(config), env).storage
    assert storage.driver == "azure"
    assert (storage.azure_accountname, storage.azure_accountkey, storage.azure_container) == (
        "acct",
        "a2V5",
        "registry",
    )
    assert (storage.azure_realm, storage.azure_rootdirectory) == ("core.chinacloudapi.cn", "/r")
    d = driver_from_settings(storage)
    assert d.inner.name == "azure"
    url = d.redirect_url("/docker/x")  # signed locally: no request
    assert url is not None and url.startswith("https://acct.blob.core.chinacloudapi.cn/registry/r/docker/x?")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("storage: {azure: {accountname: a, accountkey: k}}\n", "storage.azure.container"),
        ("storage: {gcs: {bucket: b, chunksize: big}}\n", "storage.gcs.chunksize"),
        ("storage: {gcs: {bucket: b, credentials: [x]}}\n", "storage.gcs.credentials"),
    ],
)
def test_bad_object_store_sections_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    from pipeline.config import load_settings

    config = tmp_path / "config.yml"
    config.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        load_settings(str(config), {})
    assert key in str(info.value)


def test_gcs_key_file_that_cannot_be_read_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        driver_from_settings(
            StorageSettings(driver="gcs", gcs_bucket="b", gcs_keyfile=str(tmp_path / "missing.json"))
        )
    assert "storage.gcs.keyfile" in str(info.value)
