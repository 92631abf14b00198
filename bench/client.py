"""The benchmark's one HTTP client, used unchanged against every registry and the machine's
loopback ceiling.

It has to stay cheap, because it shares two cores with the servers it measures: asyncio
(uvloop when installed) with one keep-alive aiohttp connection pool per run, request bodies
sent from pre-generated `bytes` (large ones as one write, chunks as memoryview slices, never
copied), digests computed before any timing starts, URLs passed pre-encoded so yarl does not
re-quote them, and downloads counted and discarded in 1 MiB reads.

`run_ops` drives N numbered operations from `concurrency` tasks and records each one's
latency; it stops issuing new operations at a deadline, so every scenario is bounded in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from yarl import URL

__all__ = [
    "OCI_CONFIG",
    "OCI_LAYER",
    "OCI_MANIFEST",
    "BenchRequestError",
    "Blob",
    "OpsResult",
    "RegistryClient",
    "make_blob",
    "new_event_loop",
    "run_ops",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PREFER_ASYNC = "respond-async"
READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Blob:
    """Bytes to push and their digest, computed before any timing starts."""

    data: bytes
    digest: str

    @property
    def size(self) -> int:
        return len(self.data)


def make_blob(data: bytes) -> Blob:
    return Blob(data, "sha256:" + hashlib.sha256(data).hexdigest())


class BenchRequestError(Exception):
    """A registry answered something the benchmark did not expect (or the request failed)."""


@dataclass
class OpsResult:
    """What `run_ops` observed: per-operation latencies (seconds) of the successful ones."""

    ops: int = 0
    bytes: int = 0
    errors: int = 0
    first_error: str | None = None
    elapsed: float = 0.0
    capped: bool = False  # the deadline stopped it before `count` operations were issued
    latencies: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)  # named sub-latencies

    def record(self, name: str, seconds: float) -> None:
        self.extra.setdefault(name, []).append(seconds)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (it halves the client's per-request CPU), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def run_ops(
    count: int,
    concurrency: int,
    op: Callable[[int, OpsResult], Awaitable[int]],
    time_cap: float,
    max_errors: int = 20,
) -> OpsResult:
    """Run op(0) … op(count-1) from `concurrency` tasks; each returns the bytes it moved.

    No new operation starts after `time_cap` seconds, or once `max_errors` failed (a broken
    target should not keep the run busy)."""
    result = OpsResult()
    next_index = 0
    started = time.perf_counter()
    deadline = started + time_cap

    async def runner() -> None:
        nonlocal next_index
        while next_index < count:
            if time.perf_counter() >= deadline:
                result.capped = True
                return
            if result.errors >= max_errors:
                return
            index = next_index
            next_index += 1
            t0 = time.perf_counter()
            try:
                moved = await op(index, result)
            except (TimeoutError, BenchRequestError, aiohttp.ClientError, OSError) as exc:
                result.errors += 1
                if result.first_error is None:
                    result.first_error = f"{type(exc).__name__}: {exc}"[:500]
                continue
            result.latencies.append(time.perf_counter() - t0)
            result.ops += 1
            result.bytes += moved

    await asyncio.gather(*(runner() for _ in range(max(1, min(concurrency, count)))))
    result.elapsed = time.perf_counter() - started
    return result


class RegistryClient:
    """Registry HTTP API v2 operations over one keep-alive connection pool.

    Use as `async with RegistryClient(base_url, concurrency) as client:`. `base_url` may
    list several bases separated by commas (API replicas of one registry): each request
    made from a path then goes to the next one in turn (round robin)."""

    def __init__(self, base_url: str, concurrency: int, timeout: float = 300.0) -> None:
        self.bases = [b.strip().rstrip("/") for b in base_url.split(",") if b.strip()]
        self.base = self.bases[0]
        self._turn = 0
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RegistryClient:
        connector = aiohttp.TCPConnector(limit=self.concurrency + 2, keepalive_timeout=60, ttl_dns_cache=None)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            auto_decompress=False,
            read_bufsize=READ_SIZE,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use RegistryClient as an async context manager"
        return self._session

    def url(self, path_or_location: str, **query: str) -> URL:
        """An absolute URL from a path or a Location header (relative or absolute)."""
        if path_or_location.startswith("http"):
            url = path_or_location
        else:
            self._turn = (self._turn + 1) % len(self.bases)
            url = self.bases[self._turn] + path_or_location
        if query:
            url += ("&" if "?" in url else "?") + "&".join(f"{k}={v}" for k, v in query.items())
        return URL(url, encoded=True)

    async def _call(
        self,
        method: str,
        url: URL,
        expect: tuple[int, ...],
        data: bytes | memoryview | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        async with self.session.request(method, url, data=data, headers=headers) as resp:
            body = await resp.read()
            if resp.status not in expect:
                raise BenchRequestError(f"{method} {url.path}: {resp.status} {body[:300]!r}")
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, body

    # --- generic ---------------------------------------------------------------------------

    async def get_status(self, path: str) -> int:
        status, _, _ = await self._call("GET", self.url(path), (200, 401))
        return status

    async def put_sink(self, path: str, data: bytes) -> None:
        """PUT a body somewhere that discards it (the loopback ceiling)."""
        await self._call("PUT", self.url(path), (200, 201, 202, 204), data=data)

    # --- blobs -----------------------------------------------------------------------------

    async def blob_exists(self, repo: str, digest: str) -> bool:
        """HEAD the blob, as docker and skopeo do before uploading each one."""
        status, _, _ = await self._call("HEAD", self.url(f"/v2/{repo}/blobs/{digest}"), (200, 404))
        return status == 200

    async def start_upload(self, repo: str) -> str:
        _, headers, _ = await self._call("POST", self.url(f"/v2/{repo}/blobs/uploads/"), (202,))
        return headers["location"]

    async def push_blob(
        self, repo: str, blob: Blob, chunk_size: int | None = None, prefer_async: bool = False
    ) -> int:
        """POST a session, then either PUT ?digest= with the whole body (monolithic) or PATCH
        `chunk_size` chunks with Content-Range and PUT ?digest= with no body. `prefer_async`
        sends `Prefer: respond-async` on the completing PUT (Lading's batch mode; 202)."""
        location = await self.start_upload(repo)
        headers = {"Content-Type": "application/octet-stream"}
        body: bytes | None = blob.data
        if chunk_size is not None:
            view = memoryview(blob.data)
            offset = 0
            while offset < blob.size:
                end = min(offset + chunk_size, blob.size)
                chunk_headers = {**headers, "Content-Range": f"{offset}-{end - 1}"}
                _, answer, _ = await self._call(
                    "PATCH", self.url(location), (202,), data=view[offset:end], headers=chunk_headers
                )
                location = answer["location"]
                offset = end
            body = None
        if prefer_async:
            headers["Prefer"] = PREFER_ASYNC
        await self._call(
            "PUT", self.url(location, digest=blob.digest), (201, 202), data=body or b"", headers=headers
        )
        return blob.size

    async def pull_blob(self, repo: str, digest: str, verify: bool = False) -> int:
        """GET a blob, counting (and with `verify`, hashing) the bytes; returns the size."""
        async with self.session.get(self.url(f"/v2/{repo}/blobs/{digest}")) as resp:
            if resp.status != 200:
                raise BenchRequestError(f"GET blob {digest}: {resp.status} {(await resp.read())[:300]!r}")
            size = 0
            hasher = hashlib.sha256() if verify else None
            while True:
                chunk = await resp.content.read(READ_SIZE)
                if not chunk:
                    break
                size += len(chunk)
                if hasher is not None:
                    hasher.update(chunk)
        if hasher is not None and "sha256:" + hasher.hexdigest() != digest:
            raise BenchRequestError(f"GET blob {digest}: the bytes have digest sha256:{hasher.hexdigest()}")
        return size

    # --- manifests -------------------------------------------------------------------------

    async def put_manifest(
        self, repo: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST
    ) -> str:
        _, headers, _ = await self._call(
            "PUT",
            self.url(f"/v2/{repo}/manifests/{reference}"),
            (201,),
            data=body,
            headers={"Content-Type": media_type},
        )
        return headers.get("docker-content-digest", "")

    async def get_manifest(self, repo: str, reference: str, media_type: str = OCI_MANIFEST) -> bytes:
        _, _, body = await self._call(
            "GET", self.url(f"/v2/{repo}/manifests/{reference}"), (200,), headers={"Accept": media_type}
        )
        return body
