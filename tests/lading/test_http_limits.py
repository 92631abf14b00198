"""Bounds on request heads and connections, on a real `lading serve` (uvicorn + httptools).

Before these bounds a 2 MiB `Authorization` header was parsed and HMAC'd, four unterminated
128 MiB headers grew the server from 68 to 758 MiB (and took two minutes of quadratic
copying), 10,000 header fields were answered 200, and a connection dribbling its head
was kept forever. distribution (Go's MaxHeaderBytes, 1 MiB) answers 431.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from tests.lading.procs import Running, lading_command, process_env, running
from tests.support.net import free_port, wait_http

MiB = 1 << 20


def start(tmp: Path, http: dict[str, object] | None = None) -> tuple[object, int]:
    port = free_port()
    config: dict[str, object] = {
        "storage": {"filesystem": {"rootdirectory": str(tmp / "root")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if http:
        config["lading"] = {"http": http}
    path = tmp / f"config-{port}.yml"
    path.write_text(yaml.safe_dump(config))
    return running([*lading_command(), "serve", str(path)], process_env(), cwd=tmp), port


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, int]]:
    cm, port = start(tmp_path_factory.mktemp("limits-default"))
    with cm as server:  # type: ignore[attr-defined]
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=server.proc)
        yield server, port


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, int]]:
    limits = {"maxheaderbytes": 8192, "maxheaders": 20, "headertimeout": 1, "maxconnections": 150}
    cm, port = start(tmp_path_factory.mktemp("limits-small"), limits)
    with cm as server:  # type: ignore[attr-defined]
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=server.proc)
        yield server, port


def exchange(port: int, request: bytes, timeout: float = 30.0, responses: int = 1) -> bytes:
    """Send `request` (ignoring a reset once the server has answered) and read until EOF, or
    until `responses` responses without `connection: close` have arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(request)
        except OSError:
            pass
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                got = b"".join(chunks)
                if got.count(b"\r\n\r\n") >= responses and b"connection: close" not in got.lower():
                    break
        except OSError:
            pass
        return b"".join(chunks)


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:100]
    return int(response[9:12])


def test_a_2mib_authorization_header_is_431(default_server: tuple[Running, int]) -> None:
    _, port = default_server
    head = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * (2 * MiB) + b"\r\n\r\n"
    assert status(exchange(port, head)) == 431
    # Just under the default limit (1 MiB, as Go's net/http) is still served.
    ok = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MiB - 4096) + b"\r\nConnection: close\r\n\r\n"
    assert status(exchange(port, ok)) == 200


def test_10000_header_fields_are_431(default_server: tuple[Running, int]) -> None:
    _, port = default_server
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    assert status(exchange(port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")) == 431


def test_unterminated_huge_headers_do_not_grow_the_server(default_server: tuple[Running, int]) -> None:
    server, port = default_server
    proc = psutil.Process(server.proc.pid)
    before = proc.memory_info().rss
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.02)

    answers: list[bytes] = []

    def attack() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
            try:
                for _ in range(128):  # 128 MiB, never terminated
                    s.sendall(b"a" * MiB)
            except OSError:
                pass  # the server answered and closed
            try:
                answers.append(s.recv(100))
            except OSError as exc:
                answers.append(repr(exc).encode())

    watcher = threading.Thread(target=watch)
    watcher.start()
    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for t in attackers:
        t.start()
    for t in attackers:
        t.join(120)
    done.set()
    watcher.join()
    assert all(a.startswith(b"HTTP/1.1 431") for a in answers), answers
    growth = (peak[0] - before) / MiB
    assert growth < 64, f"server grew by {growth:.0f} MiB for 4 x 128 MiB headers"


def test_body_arriving_with_the_head_is_not_counted_as_head(small_server: tuple[Running, int]) -> None:
    _, port = small_server
    body = b"x" * 65536  # far more than maxheaderbytes (8 KiB), sent in the same write
    request = (
        b"POST /v2/limits/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    ) + body
    assert status(exchange(port, request)) == 202
    # Two pipelined requests on one connection, each head under the limit: both answered.
    two = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert exchange(port, two, responses=2).count(b"HTTP/1.1 200") == 2


def test_configured_limits_are_applied(small_server: tuple[Running, int]) -> None:
    _, port = small_server
    too_big = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    assert status(exchange(port, too_big)) == 431
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(21))
    assert status(exchange(port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")) == 431
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(15))
    request = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + fields + b"Connection: close\r\n\r\n"
    assert status(exchange(port, request)) == 200


def test_slowloris_connections_are_closed_after_the_header_timeout(small_server: tuple[Running, int]) -> None:
    _, port = small_server
    conns = []
    for i in range(100):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        if i % 2:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a head that never ends
        conns.append(s)  # the even ones send nothing at all
    try:
        deadline = time.monotonic() + 30
        for s in conns:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            assert s.recv(100) == b""  # closed by the server (the 1 s header timeout)
    finally:
        for s in conns:
            s.close()
    # The registry still answers afterwards.
    assert status(exchange(port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


def test_a_slow_head_after_answered_requests_on_a_keepalive_connection_is_closed(
    small_server: tuple[Running, int],
) -> None:
    # Each head gets the whole header timeout from its own first byte, however many
    # requests the connection answered before: fast ones first, then one that never ends.
    _, port = small_server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for _ in range(3):
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.endswith(b"{}"):
                chunk = s.recv(4096)
                assert chunk, "the server closed a connection whose heads were complete"
                answer += chunk
            assert status(answer) == 200
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a head that never ends
        assert s.recv(100) == b""  # closed by the server (the 1 s header timeout)


def test_concurrent_connections_are_bounded(tmp_path: Path) -> None:
    cm, port = start(tmp_path, {"maxconnections": 5})
    with cm as server:  # type: ignore[attr-defined]
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=server.proc)
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(5)]
        try:
            request = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            assert status(exchange(port, request)) == 503
        finally:
            for s in idle:
                s.close()
        deadline = time.monotonic() + 30
        while status(exchange(port, request)) != 200:
            assert time.monotonic() < deadline, "connections were not released"
            time.sleep(0.05)
