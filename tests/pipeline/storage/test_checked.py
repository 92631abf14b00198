"""The path grammar and CheckedDriver: bad paths never reach a backend."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

import pytest

from pipeline.errors import InvalidPath
from pipeline.storage.checked import CheckedDriver, validate_path
from pipeline.storage.driver import Capabilities, FileInfo, FileWriter
from pipeline.storage.memory import MemoryDriver
from tests.pipeline.storage.contract import BAD_PATHS

GOOD_PATHS = [
    "/",
    "/a",
    "/docker/registry/v2/blobs/sha256/ab/ab12/data",
    "/docker/registry/v2/repositories/library/ubuntu/_manifests/tags/v1.0_rc-1/current/link",
    "/a/.hidden",
    "/a/..b",
    "/a/b..",
    "/a/...",
    "/A-Z_a-z.0-9",
]


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_valid_paths_pass_unchanged(path: str) -> None:
    assert validate_path(path) == path


@pytest.mark.parametrize("path", BAD_PATHS)
def test_invalid_paths_are_rejected(path: str) -> None:
    with pytest.raises(InvalidPath) as info:
        validate_path(path)
    assert info.value.path == path
    assert info.value.detail["reason"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("a/b", "absolute"),
        ("/a/", "end with"),
        ("/a//b", "empty segment"),
        ("/a/../b", "'..'"),
        ("/a/./b", "'.'"),
        ("/a/b c", "outside"),
    ],
)
def test_rejection_says_why(path: str, reason: str) -> None:
    with pytest.raises(InvalidPath) as info:
        validate_path(path)
    assert reason in info.value.detail["reason"]


def test_non_string_path_is_invalid() -> None:
    with pytest.raises(InvalidPath):
        validate_path(b"/a")  # type: ignore[arg-type]


class Recording(MemoryDriver):
    """Remembers every path that reached the backend."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def get_content(self, path: str) -> bytes:
        self.seen.append(path)
        return super().get_content(path)

    def put_content(self, path: str, content: bytes) -> None:
        self.seen.append(path)
        super().put_content(path, content)

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        self.seen.append(path)
        return super().reader(path, offset)

    def writer(self, path: str, append: bool = False) -> FileWriter:
        self.seen.append(path)
        return super().writer(path, append)

    def stat(self, path: str) -> FileInfo:
        self.seen.append(path)
        return super().stat(path)

    def list(self, path: str) -> list[str]:
        self.seen.append(path)
        return super().list(path)

    def move(self, source: str, dest: str) -> None:
        self.seen.extend([source, dest])
        super().move(source, dest)

    def delete(self, path: str) -> None:
        self.seen.append(path)
        super().delete(path)

    def walk(self, path: str) -> Iterator[FileInfo]:
        self.seen.append(path)
        return super().walk(path)

    def local_path(self, path: str) -> str | None:
        self.seen.append(path)
        return "/somewhere"

    def redirect_url(self, path: str, method: str = "GET") -> str | None:
        self.seen.append(path)
        return "https://example.invalid/x"


@pytest.mark.parametrize("bad", BAD_PATHS)
def test_no_invalid_path_reaches_the_backend(bad: str) -> None:
    inner = Recording()
    d = CheckedDriver(inner)
    d.put_content("/ok", b"x")
    inner.seen.clear()
    calls: list[Callable[[], object]] = [
        lambda: d.get_content(bad),
        lambda: d.put_content(bad, b""),
        lambda: d.reader(bad),
        lambda: d.writer(bad),
        lambda: d.stat(bad),
        lambda: d.list(bad),
        lambda: d.move("/ok", bad),
        lambda: d.move(bad, "/ok"),
        lambda: d.delete(bad),
        lambda: d.walk(bad),
        lambda: d.exists(bad),
        lambda: d.local_path(bad),
        lambda: d.redirect_url(bad),
    ]
    for call in calls:
        with pytest.raises(InvalidPath):
            call()
    assert inner.seen == []
    assert inner.get_content("/ok") == b"x"


def test_valid_calls_are_delegated_unchanged() -> None:
    inner = Recording()
    d = CheckedDriver(inner)
    d.put_content("/a/b", b"x")
    assert d.get_content("/a/b") == b"x"
    assert d.local_path("/a/b") == "/somewhere"
    assert d.redirect_url("/a/b") == "https://example.invalid/x"
    d.move("/a/b", "/a/c")
    assert inner.seen == ["/a/b", "/a/b", "/a/b", "/a/b", "/a/b", "/a/c"]
    assert [i.path for i in d.walk("/")] == ["/a", "/a/c"]
    assert inner.seen[6] == "/"


def test_wrapper_reports_the_backends_name_and_capabilities() -> None:
    class Fancy(MemoryDriver):
        name = "fancy"
        capabilities = Capabilities(redirect=True, walk=True, local_path=False)

    d = CheckedDriver(Fancy())
    assert d.name == "fancy"
    assert d.capabilities == Capabilities(redirect=True, walk=True, local_path=False)
    assert isinstance(d.inner, Fancy)
