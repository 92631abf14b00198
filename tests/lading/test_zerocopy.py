"""Blob downloads through lading.server's protocol (uvicorn httptools + lading.zerocopy) on
a real socket, under uvloop and plain asyncio: the bytes of a filesystem blob go out by
sendfile, whole or ranged, with keep-alive framing intact afterwards; HEAD, 0-byte blobs,
non-filesystem drivers and clients leaving mid-download keep working, and an abandoned
copy releases its descriptors.

These pin the uvicorn internals lading.zerocopy relies on: if uvicorn's cycle changed, the
sendfile counter would stay at 0 or the framing checks would fail."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.app import create_app
from lading import zerocopy
from lading.http_limits import HeadLimits, limited_protocol
from pipeline.registry import Registry, build_registry
from pipeline.settings import Settings, StorageSettings
from tests.support.inline_jobs import InlineJobClient
from tests.support.net import free_port

MiB = 1 << 20


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Server:
    url: str
    port: int
    registry: Registry
    sendfiles: list[int]  # bytes per os.sendfile call made by lading.zerocopy


def serve(tmp: Path, loop: str, driver: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    sendfiles: list[int] = []
    real = zerocopy._sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        n = real(out_fd, in_fd, offset, count)
        sendfiles.append(n)
        return n

    monkeypatch.setattr(zerocopy, "_sendfile", counting)
    storage = StorageSettings(driver=driver, root=str(tmp) if driver == "filesystem" else "")
    settings = Settings(storage=storage)
    registry = build_registry(settings)
    jobs = InlineJobClient(registry)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, registry, jobs),
        host="127.0.0.1",
        port=port,
        http=limited_protocol(HeadLimits(1 << 20, 100, 30.0)),
        loop=loop,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Server(f"http://127.0.0.1:{port}", port, registry, sendfiles)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        jobs.close()


@pytest.fixture(params=["uvloop", "asyncio"])
def fs_server(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    yield from serve(tmp_path, request.param, "filesystem", monkeypatch)


@pytest.fixture
def memory_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    yield from serve(tmp_path, "uvloop", "inmemory", monkeypatch)


def push(client: httpx.Client, repo: str, data: bytes) -> str:
    r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha(data)}, content=data)
    assert r.status_code == 201, r.text
    return sha(data)


def test_whole_blob_goes_out_by_sendfile(fs_server: Server) -> None:
    big = os.urandom(24 * MiB + 17)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        digest = push(client, "repo", big)
        r = client.get(f"/v2/repo/blobs/{digest}")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(big))
        assert r.content == big
        assert sum(fs_server.sendfiles) == len(big)
        # The same connection carries the next request: the response was framed as complete.
        assert client.get(f"/v2/repo/blobs/{digest}").content == big
        assert client.get("/v2/").status_code == 200


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=1048570-2097160", 1048570, 2097160),
        ("bytes=-100", 3 * MiB - 100, 3 * MiB - 1),
        ("bytes=0-0", 0, 0),
    ],
)
def test_ranges_go_out_by_sendfile(fs_server: Server, header: str, start: int, end: int) -> None:
    data = os.urandom(3 * MiB)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        digest = push(client, "repo", data)
        r = client.get(f"/v2/repo/blobs/{digest}", headers={"Range": header})
        assert r.status_code == 206
        assert r.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
        assert r.content == data[start : end + 1]
        assert sum(fs_server.sendfiles) == end - start + 1
        assert client.get(f"/v2/repo/blobs/{digest}").content == data


def test_head_and_empty_blobs_send_no_body(fs_server: Server) -> None:
    data = os.urandom(MiB)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        digest = push(client, "repo", data)
        empty = push(client, "repo", b"")
        head = client.head(f"/v2/repo/blobs/{digest}")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        assert head.content == b""
        r = client.get(f"/v2/repo/blobs/{empty}")
        assert r.status_code == 200 and r.content == b"" and r.headers["content-length"] == "0"
        assert client.get(f"/v2/repo/blobs/{digest}").content == data


def test_pipelined_downloads_arrive_in_order(fs_server: Server) -> None:
    first, second = os.urandom(2 * MiB), os.urandom(3 * MiB + 1)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        a, b = push(client, "repo", first), push(client, "repo", second)
    requests = (
        b"".join(f"GET /v2/repo/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for d in (a, b))
        + b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", fs_server.port), timeout=30) as s:
        s.sendall(requests)
        received = bytearray()
        while chunk := s.recv(1 << 20):
            received += chunk
    assert received.count(b"HTTP/1.1 200 OK") == 3
    assert first in received and second in received
    assert received.index(first) < received.index(second)


def test_non_filesystem_drivers_stream_without_sendfile(memory_server: Server) -> None:
    data = os.urandom(3 * MiB + 5)
    with httpx.Client(base_url=memory_server.url, timeout=60) as client:
        digest = push(client, "repo", data)
        assert client.get(f"/v2/repo/blobs/{digest}").content == data
        r = client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=10-"})
        assert r.status_code == 206 and r.content == data[10:]
    assert memory_server.sendfiles == []


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_client_leaving_mid_download_frees_the_copy(fs_server: Server) -> None:
    big = os.urandom(64 * MiB)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        digest = push(client, "repo", big)
    baseline = open_fds()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", fs_server.port), timeout=30) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.sendall(f"GET /v2/repo/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # closed with unread data: the server's copy fails on the reset
    deadline = time.monotonic() + 30
    while open_fds() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= baseline, "a copy kept its descriptors after the client left"
    assert 0 < sum(fs_server.sendfiles) < 3 * len(big)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        assert client.get(f"/v2/repo/blobs/{digest}").content == big
