"""MemoryDriver against the storage contract."""

from __future__ import annotations

import pytest

from pipeline.storage.driver import StorageDriver
from pipeline.storage.memory import MemoryDriver
from tests.pipeline.storage.contract import DriverContract


class TestMemoryDriver(DriverContract):
    @pytest.fixture
    def driver(self) -> StorageDriver:
        return MemoryDriver(lock_timeout=1.0)
