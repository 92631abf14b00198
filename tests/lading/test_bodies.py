"""Request and response bodies through lading.server's protocol (uvicorn httptools with
lading.http_limits' body handling and lading.zerocopy) on a real socket, under uvloop and
plain asyncio.

Downloads: the bytes of a filesystem blob go out by sendfile, whole or ranged, with
keep-alive framing intact afterwards; HEAD, 0-byte blobs, non-filesystem drivers and
clients leaving mid-download keep working, and an abandoned copy releases its descriptors.
Uploads: bodies handed to the app uncopied arrive whole and in order, streamed or chunked,
with `Expect: 100-continue`, pipelined, and a body cut short keeps nothing.

These pin the uvicorn internals both rely on: if uvicorn's cycle or parser callbacks
changed, the sendfile counter would stay at 0, or bodies or framing would break."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn

from api.app import create_app
from lading import zerocopy
from lading.http_limits import HeadLimits, limited_protocol
from pipeline.config import Settings, StorageSettings
from pipeline.registry import Registry, build_registry
from tests.support.inline_jobs import InlineJobClient
from tests.support.net import free_port, uvicorn_in_thread

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
    try:
        with uvicorn_in_thread(config):
            yield Server(f"http://127.0.0.1:{port}", port, registry, sendfiles)
    finally:
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
        # The same connection carries the next request: the response was framed as complete
        # (and the copy's thread has returned, so its count is in).
        assert client.get("/v2/").status_code == 200
        assert sum(fs_server.sendfiles) == len(big)
        assert client.get(f"/v2/repo/blobs/{digest}").content == big


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
        assert client.get("/v2/").status_code == 200  # on the same connection, after the copy
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


def test_with_every_sendfile_slot_taken_files_go_out_in_chunks(
    fs_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        zerocopy.FileSends, "limiter", property(lambda self: SimpleNamespace(available_tokens=0))
    )
    data = os.urandom(3 * MiB + 11)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        digest = push(client, "repo", data)
        assert client.get(f"/v2/repo/blobs/{digest}").content == data
        r = client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=1000000-"})
        assert r.status_code == 206 and r.content == data[1000000:]
        assert client.get("/v2/").status_code == 200
    assert fs_server.sendfiles == []


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
            received = s.recv(65536)
            assert received.startswith(b"HTTP/1.1 200")
            while len(received) < MiB:  # body bytes: the copy is under way
                received += s.recv(65536)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # closed with unread data: the server's copy fails on the reset
    deadline = time.monotonic() + 30
    while open_fds() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds() <= baseline, "a copy kept its descriptors after the client left"
    assert 2 * MiB <= sum(fs_server.sendfiles) < 3 * len(big)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        assert client.get(f"/v2/repo/blobs/{digest}").content == big


# --- uploads -------------------------------------------------------------------------------


def with_digest(location: str, data: bytes) -> str:
    path = httpx.URL(location).raw_path.decode()
    return f"{path}{'&' if '?' in path else '?'}digest={sha(data)}"


def response_heads(data: bytes) -> list[bytes]:
    return [part.split(b"\r\n", 1)[0] for part in data.split(b"HTTP/1.1 ")[1:]]


def read_until_closed(s: socket.socket) -> bytes:
    received = bytearray()
    while chunk := s.recv(1 << 20):
        received += chunk
    return bytes(received)


def test_a_large_monolithic_upload_arrives_whole(fs_server: Server) -> None:
    big = os.urandom(40 * MiB + 3)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        r = client.post("/v2/repo/blobs/uploads/")
        r = client.put(r.headers["location"], params={"digest": sha(big)}, content=big)
        assert r.status_code == 201, r.text
        assert client.get(f"/v2/repo/blobs/{sha(big)}").content == big


def test_a_chunked_transfer_encoding_body_arrives_whole(fs_server: Server) -> None:
    pieces = [os.urandom(n) for n in (1, 100, 70_000, 5, 300_000, 65_536, 1_000_000, 7)]
    data = b"".join(pieces)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        r = client.post("/v2/repo/blobs/uploads/")
        r = client.patch(r.headers["location"], content=iter(pieces))  # no length: chunked
        assert r.status_code == 202, r.text
        assert r.headers["range"] == f"0-{len(data) - 1}"
        r = client.put(r.headers["location"], params={"digest": sha(data)})
        assert r.status_code == 201, r.text
        assert client.get(f"/v2/repo/blobs/{sha(data)}").content == data


def test_expect_100_continue_then_body(fs_server: Server) -> None:
    data = os.urandom(2 * MiB)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        location = client.post("/v2/repo/blobs/uploads/").headers["location"]
    head = (
        f"PUT {with_digest(location, data)} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", fs_server.port), timeout=30) as s:
        s.sendall(head)
        assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(data)
        assert read_until_closed(s).startswith(b"HTTP/1.1 201")
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        assert client.get(f"/v2/repo/blobs/{sha(data)}").content == data


def test_pipelined_uploads_are_answered_in_order(fs_server: Server) -> None:
    first, second = os.urandom(MiB + 1), os.urandom(3 * MiB)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        locations = [client.post("/v2/repo/blobs/uploads/").headers["location"] for _ in range(2)]
    requests = b""
    for location, data in zip(locations, (first, second), strict=True):
        requests += (
            f"PUT {with_digest(location, data)} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode() + data
    requests += b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", fs_server.port), timeout=30) as s:
        s.sendall(requests)
        heads = response_heads(read_until_closed(s))
    assert heads == [b"201 Created", b"201 Created", b"200 OK"]
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        assert client.get(f"/v2/repo/blobs/{sha(first)}").content == first
        assert client.get(f"/v2/repo/blobs/{sha(second)}").content == second


def test_a_body_cut_short_keeps_nothing(fs_server: Server) -> None:
    kept = os.urandom(1000)
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        r = client.post("/v2/repo/blobs/uploads/")
        r = client.patch(r.headers["location"], content=kept, headers={"Content-Range": "0-999"})
        assert r.status_code == 202
        location = r.headers["location"]
    path = httpx.URL(location).raw_path.decode()
    head = f"PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {8 * MiB}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", fs_server.port), timeout=30) as s:
        s.sendall(head + os.urandom(3 * MiB))  # then go away mid-body
    with httpx.Client(base_url=fs_server.url, timeout=60) as client:
        deadline = time.monotonic() + 30
        while True:  # the server notices the disconnect and cancels the chunk
            r = client.get(location)
            if (r.status_code == 204 and r.headers["range"] == "0-999") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 204 and r.headers["range"] == "0-999"
        r = client.put(location, params={"digest": sha(kept)})
        assert r.status_code == 201, r.text
