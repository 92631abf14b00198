"""What this machine can do at best, printed next to the registry numbers so they can be read
against a ceiling:

- SHA-256 throughput of one core (hashlib, 1 MiB updates): a bound on any registry that
  hashes every pushed byte once.
- Sequential write + fsync, and read, of a file in the storage directory (the read after
  `posix_fadvise(DONTNEED)`, so it comes from the disk when the kernel honours it).
- A loopback HTTP ceiling: a trivial asyncio server in its own process answering `200` to
  GET and `201` to PUT (discarding the body), driven by the same client the scenarios use —
  requests/s of tiny GETs and MB/s of 64 MiB PUTs that no registry can beat here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.client import RegistryClient, new_event_loop, run_ops
from bench.targets import free_port, start_process, wait_http

__all__ = ["MachineLimits", "measure", "serve_trivial"]

MIB = 1024 * 1024


@dataclass
class MachineLimits:
    cpus: int
    sha256_mb_s: float
    disk_write_fsync_mb_s: float
    disk_read_mb_s: float
    disk_read_cold: bool  # the page cache was dropped for the file before reading
    loopback_get_req_s: float
    loopback_get_p99_ms: float
    loopback_put_mb_s: float
    load_average: tuple[float, float, float]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sha256_mb_s(total: int) -> float:
    block = os.urandom(MIB)
    hasher = hashlib.sha256()
    started = time.perf_counter()
    for _ in range(max(1, total // MIB)):
        hasher.update(block)
    hasher.hexdigest()
    return (max(1, total // MIB) * MIB) / (time.perf_counter() - started) / 1e6


def disk_mb_s(directory: Path, total: int) -> tuple[float, float, bool]:
    """(write+fsync MB/s, read MB/s, whether the read was cold)."""
    path = directory / "bench-disk-probe"
    block = os.urandom(MIB)
    blocks = max(1, total // MIB)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        started = time.perf_counter()
        try:
            for _ in range(blocks):
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        write = blocks * MIB / (time.perf_counter() - started) / 1e6
        cold = False
        fd = os.open(path, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                cold = True
            started = time.perf_counter()
            while os.read(fd, MIB):
                pass
            read = blocks * MIB / (time.perf_counter() - started) / 1e6
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    return write, read, cold


# --- the trivial server ---------------------------------------------------------------------

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"


class _TrivialProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive: 200 to a request without a body, 201 once a body is consumed."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.remaining = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.remaining:
            taken = min(self.remaining, len(data))
            self.remaining -= taken
            if self.remaining:
                return
            self.transport.write(_CREATED)
            if taken == len(data):
                return
            data = data[taken:]
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            del self.buffer[: end + 4]
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if not length:
                self.transport.write(_OK)
                continue
            taken = min(length, len(self.buffer))
            del self.buffer[:taken]
            self.remaining = length - taken
            if self.remaining:
                return
            self.transport.write(_CREATED)


def serve_trivial(port: int) -> None:
    """Run the trivial server on 127.0.0.1:`port` until killed (in its own process)."""
    loop = new_event_loop()
    server = loop.run_until_complete(loop.create_server(_TrivialProtocol, "127.0.0.1", port))
    try:
        loop.run_forever()
    finally:
        server.close()


async def _loopback(url: str, gets: int, puts: int, put_size: int) -> tuple[float, float, float]:
    async with RegistryClient(url, 16) as client:
        await run_ops(50, 16, lambda i, r: _get(client), 30)  # warm the pool
        got = await run_ops(gets, 16, lambda i, r: _get(client), 60)
    body = os.urandom(put_size)
    async with RegistryClient(url, 1) as client:
        put = await run_ops(puts, 1, lambda i, r: _put(client, body), 60)
    lat = sorted(got.latencies)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else 0.0
    return got.ops / got.elapsed, p99, put.bytes / put.elapsed / 1e6


async def _get(client: RegistryClient) -> int:
    await client.get_status("/")
    return 0


async def _put(client: RegistryClient, body: bytes) -> int:
    await client.put_sink("/sink", body)
    return len(body)


def measure(
    workdir: Path, hash_bytes: int, disk_bytes: int, gets: int, puts: int, put_size: int
) -> MachineLimits:
    """Measure every limit; the trivial server runs as a child process for the duration."""
    sha = sha256_mb_s(hash_bytes)
    write, read, cold = disk_mb_s(workdir, disk_bytes)
    port = free_port()
    code = f"from bench.machine import serve_trivial; serve_trivial({port})"
    service = start_process([sys.executable, "-c", code], workdir / "trivial.log", "trivial", "trivial")
    try:
        wait_http(f"http://127.0.0.1:{port}/", service.popen, workdir / "trivial.log", timeout=30)
        loop = new_event_loop()
        try:
            probe = _loopback(f"http://127.0.0.1:{port}", gets, puts, put_size)
            rps, p99, put_mb = loop.run_until_complete(probe)
        finally:
            loop.close()
    finally:
        service.stop()
    return MachineLimits(
        cpus=os.cpu_count() or 1,
        sha256_mb_s=sha,
        disk_write_fsync_mb_s=write,
        disk_read_mb_s=read,
        disk_read_cold=cold,
        loopback_get_req_s=rps,
        loopback_get_p99_ms=p99,
        loopback_put_mb_s=put_mb,
        load_average=os.getloadavg(),
    )
