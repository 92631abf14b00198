"""driver_from_settings: the configured backend, always behind CheckedDriver."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError, InvalidPath
from pipeline.settings import StorageSettings
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
