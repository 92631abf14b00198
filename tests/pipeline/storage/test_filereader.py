"""FileReader: seekable, lazily (re)opened reads over a driver, like distribution's fileReader."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import pytest

from pipeline.errors import PathNotFound
from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import StorageDriver
from pipeline.storage.filereader import FileReader
from pipeline.storage.filesystem import FilesystemDriver
from pipeline.storage.memory import MemoryDriver

DATA = bytes(range(256)) * 40  # 10240 bytes, every offset recognisable


class CountingDriver(CheckedDriver):
    """Records every driver.reader call and the streams it handed out."""

    def __init__(self, inner: StorageDriver) -> None:
        super().__init__(inner)
        self.opens: list[int] = []
        self.streams: list[BinaryIO] = []

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        stream = super().reader(path, offset)
        self.opens.append(offset)
        self.streams.append(stream)
        return stream


@pytest.fixture(params=["inmemory", "filesystem"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> CountingDriver:
    inner: StorageDriver = MemoryDriver() if request.param == "inmemory" else FilesystemDriver(str(tmp_path))
    d = CountingDriver(inner)
    d.put_content("/blob", DATA)
    return d


def test_sequential_reads_use_one_stream(driver: CountingDriver) -> None:
    r = FileReader(driver, "/blob", len(DATA))
    assert driver.opens == [], "nothing is opened before the first read"
    parts = [r.read(1000) for _ in range(11)]
    assert b"".join(parts) == DATA
    assert r.read(10) == b""
    assert driver.opens == [0]


def test_seek_reopens_only_when_the_offset_changed(driver: CountingDriver) -> None:
    r = FileReader(driver, "/blob", len(DATA))
    assert r.read(10) == DATA[:10]
    assert r.seek(10) == 10  # already there: the open stream is kept
    assert r.read(5) == DATA[10:15]
    assert driver.opens == [0]
    assert r.seek(5000) == 5000
    assert driver.streams[0].closed, "the stale stream is closed on seek"
    assert r.read(3) == DATA[5000:5003]
    assert driver.opens == [0, 5000]


@pytest.mark.parametrize(
    ("offset", "whence", "expected"),
    [
        (100, io.SEEK_SET, 100),
        (-50, io.SEEK_CUR, 150),
        (25, io.SEEK_CUR, 225),
        (0, io.SEEK_END, len(DATA)),
        (-10, io.SEEK_END, len(DATA) - 10),
        (10, io.SEEK_END, len(DATA) + 10),
    ],
)
def test_seek_whence(driver: CountingDriver, offset: int, whence: int, expected: int) -> None:
    r = FileReader(driver, "/blob", len(DATA))
    r.seek(200)
    assert r.seek(offset, whence) == expected
    assert r.tell() == expected
    assert r.read(20) == DATA[expected : expected + 20]


def test_negative_position_is_refused(driver: CountingDriver) -> None:
    r = FileReader(driver, "/blob", len(DATA))
    r.seek(10)
    for offset, whence in [(-1, io.SEEK_SET), (-11, io.SEEK_CUR), (-len(DATA) - 1, io.SEEK_END)]:
        with pytest.raises(ValueError):
            r.seek(offset, whence)
    assert r.tell() == 10
    assert r.read(2) == DATA[10:12]


def test_reads_at_or_past_the_end_never_touch_the_driver(driver: CountingDriver) -> None:
    r = FileReader(driver, "/blob", len(DATA))
    r.seek(0, io.SEEK_END)
    assert r.read(100) == b""
    r.seek(len(DATA) + 1000)
    assert r.read() == b""
    assert driver.opens == []


def test_read_all_from_the_middle(driver: CountingDriver) -> None:
    r = FileReader(driver, "/blob", len(DATA))
    r.seek(7000)
    assert r.read() == DATA[7000:]
    assert r.tell() == len(DATA)


def test_reads_stop_at_the_declared_size(driver: CountingDriver) -> None:
    """A file still growing (an upload) is read only up to the size the reader was given."""
    r = FileReader(driver, "/blob", 100)
    driver.put_content("/blob", DATA + b"appended later")
    assert r.read() == DATA[:100]
    r.seek(90)
    assert r.read(50) == DATA[90:100]


def test_buffered_wrapper_gives_a_binary_stream(driver: CountingDriver) -> None:
    with io.BufferedReader(FileReader(driver, "/blob", len(DATA)), buffer_size=4096) as stream:
        assert stream.read(3) == DATA[:3]
        stream.seek(-3, io.SEEK_END)
        assert stream.read() == DATA[-3:]
        stream.seek(0)
        assert stream.read() == DATA


def test_close_closes_the_stream(driver: CountingDriver) -> None:
    r = FileReader(driver, "/blob", len(DATA))
    r.read(1)
    r.close()
    assert driver.streams[0].closed
    assert r.closed
    with pytest.raises(ValueError):
        r.read(1)
    with pytest.raises(ValueError):
        r.seek(0)
    r.close()  # idempotent


def test_vanished_file_is_an_error_not_an_empty_read(driver: CountingDriver) -> None:
    r = FileReader(driver, "/blob", len(DATA))
    driver.delete("/blob")
    with pytest.raises(PathNotFound):
        r.read(10)
