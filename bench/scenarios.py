"""The benchmark's scenarios, its size profiles, and running one scenario against one target.

Each scenario prepares its payloads once per repeat (random bytes, digests and manifests
computed before any timing, shared by every target so all registries receive identical
requests), optionally sets a target up untimed (e.g. pushes the blobs a pull scenario then
reads), and runs N numbered operations at a fixed concurrency with `bench.client.run_ops`.
Every repeat uses fresh random content under a fresh repository prefix, so no registry ever
answers from an "already exists" shortcut.

`run_scenario` measures the wall time, per-operation latencies, the registry's CPU seconds
(its whole process tree: API and workers; Redis separately) and the client's own CPU.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import aiohttp
import psutil

from bench.client import (
    OCI_CONFIG,
    OCI_LAYER,
    OCI_MANIFEST,
    BenchRequestError,
    Blob,
    OpsResult,
    RegistryClient,
    make_blob,
    run_ops,
)
from bench.targets import ROLE_REDIS, ROLE_SERVER, Target

__all__ = [
    "PROFILES",
    "SCENARIOS",
    "Image",
    "Measurement",
    "Profile",
    "Scenario",
    "make_image",
    "percentile",
    "push_image",
    "run_scenario",
    "warm_up",
]

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class Profile:
    """Sizes, counts and time caps of one kind of run."""

    name: str
    big: int  # the "64 MiB" blobs
    chunk: int  # PATCH chunk of the chunked push
    small: int  # the "4 KiB" blobs
    layer_min: int
    layer_max: int
    pull_blobs: int  # distinct big blobs the pull scenarios cycle through
    counts: dict[str, int]
    time_cap: float  # per scenario and target: no new operation starts after it
    machine: dict[str, int]  # sizes/counts of the machine-limit probes


_FULL_COUNTS = {
    "push-mono-c1": 6,
    "push-mono-c4": 12,
    "push-chunked-c1": 6,
    "push-small-c1": 200,
    "push-small-c8": 600,
    "push-small-c32": 1000,
    "push-image-c8": 100,
    "pull-c1": 16,
    "pull-c4": 32,
    "manifest-get-c16": 3000,
    "ci-batch-c16": 1000,
    "ci-batch-async-c16": 1000,
    "ci-shared-c16": 1000,
}

PROFILES: dict[str, Profile] = {
    "full": Profile(
        "full", 64 * MIB, 8 * MIB, 4 * KIB, 16 * KIB, 256 * KIB, 4, _FULL_COUNTS, 90.0,
        {"hash": 512 * MIB, "disk": 256 * MIB, "gets": 5000, "puts": 8, "put_size": 64 * MIB},
    ),
    "quick": Profile(
        "quick", 64 * MIB, 8 * MIB, 4 * KIB, 16 * KIB, 256 * KIB, 2,
        {
            "push-mono-c1": 2, "push-mono-c4": 4, "push-chunked-c1": 2,
            "push-small-c1": 100, "push-small-c8": 200, "push-small-c32": 400,
            "push-image-c8": 40, "pull-c1": 4, "pull-c4": 8, "manifest-get-c16": 1000,
            "ci-batch-c16": 150, "ci-batch-async-c16": 150, "ci-shared-c16": 150,
        },
        30.0,
        {"hash": 128 * MIB, "disk": 64 * MIB, "gets": 1500, "puts": 2, "put_size": 64 * MIB},
    ),
    # Seconds long: proves the tool runs end to end (the smoke test), measures nothing.
    "smoke": Profile(
        "smoke", 1 * MIB, 256 * KIB, 4 * KIB, 4 * KIB, 16 * KIB, 1,
        {name: 2 for name in _FULL_COUNTS}
        | {"ci-batch-c16": 4, "ci-batch-async-c16": 4, "ci-shared-c16": 4, "manifest-get-c16": 16},
        20.0,
        {"hash": 8 * MIB, "disk": 4 * MIB, "gets": 50, "puts": 1, "put_size": 1 * MIB},
    ),
}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _hash_all(datas: Iterable[bytes]) -> list[Blob]:
    # hashlib releases the GIL: two threads use both cores while nothing is being timed.
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(make_blob, datas))


def _big_blobs(count: int, size: int) -> list[Blob]:
    """`count` distinct blobs of `size` random bytes: one random body, each with a unique
    16-byte head (generating fresh gigabytes of randomness would dominate the run)."""
    base = os.urandom(size)
    nonce = os.urandom(8)
    return _hash_all(nonce + i.to_bytes(8, "big") + base[16:] for i in range(count))


@dataclass(frozen=True)
class Image:
    layers: list[Blob]
    config: Blob
    manifest: bytes


def make_image(
    rng: random.Random, layers: int, size_min: int, size_max: int, label: str, base: list[Blob] | None = None
) -> Image:
    """`layers` fresh random layers on top of `base` (shared layers), a config, a manifest."""
    blobs = [*(base or []), *_hash_all(os.urandom(rng.randint(size_min, size_max)) for _ in range(layers))]
    config = make_blob(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Labels": {"bench": label}},
                "rootfs": {"type": "layers", "diff_ids": [b.digest for b in blobs]},
            },
            separators=(",", ":"),
        ).encode()
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": b.digest, "size": b.size} for b in blobs],
    }
    return Image(blobs, config, json.dumps(manifest, separators=(",", ":")).encode())


async def push_image(
    client: RegistryClient,
    repo: str,
    tag: str,
    image: Image,
    result: OpsResult | None,
    batch: bool = False,
    head_first: bool = False,
) -> int:
    """Layers, then config, then the manifest under `tag`, one after the other (each
    completing PUT with `Prefer: respond-async` when `batch`; with `head_first`, a HEAD
    before each blob and no upload of one the repository has, as docker and skopeo do).
    Records `manifest_put`."""
    moved = 0
    for blob in [*image.layers, image.config]:
        if head_first and await client.blob_exists(repo, blob.digest):
            continue
        moved += await client.push_blob(repo, blob, prefer_async=batch)
    t0 = time.perf_counter()
    await client.put_manifest(repo, tag, image.manifest)
    if result is not None:
        result.record("manifest_put", time.perf_counter() - t0)
    return moved + len(image.manifest)


async def warm_up(client: RegistryClient) -> None:
    """One push and pull through every code path, so lazy imports and first-job set-up in
    the registry are not charged to the first scenario."""
    image = make_image(random.Random(1), 2, 4 * KIB, 8 * KIB, "warm-up")
    for i in range(3):
        await push_image(client, "bench/warmup", f"w{i}", image, None)
        await client.get_manifest("bench/warmup", f"w{i}")
        await client.pull_blob("bench/warmup", image.layers[0].digest, verify=True)


@dataclass
class Scenario:
    """One workload. `kind` picks prepare/setup/op; the rest parameterises it."""

    name: str
    title: str
    unit: str  # "MB/s" (bytes) or "<things>/s" (operations)
    concurrency: int
    kind: str
    chunked: bool = False
    batch: bool = False
    prefix: str = ""
    blobs: list[Blob] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)

    @property
    def per_gb(self) -> bool:
        return self.unit == "MB/s"

    def count(self, profile: Profile) -> int:
        return profile.counts[self.name]

    def prepare(self, profile: Profile, repeat: int) -> None:
        """Build this repeat's payloads (untimed)."""
        self.prefix = f"r{repeat}-{os.urandom(3).hex()}"
        rng = random.Random(f"{self.name}/{repeat}/{self.prefix}")
        n = self.count(profile)
        if self.kind == "push-big":
            self.blobs = _big_blobs(n, profile.big)
        elif self.kind == "push-small":
            self.blobs = _hash_all(os.urandom(profile.small) for _ in range(n))
        elif self.kind == "pull":
            self.blobs = _big_blobs(profile.pull_blobs, profile.big)
        elif self.kind in ("image", "ci"):
            layers = 5 if self.kind == "image" else 3
            self.images = [
                make_image(rng, layers, profile.layer_min, profile.layer_max, f"{self.prefix}-{i}")
                for i in range(n)
            ]
        elif self.kind == "ci-shared":
            base = _hash_all(os.urandom(rng.randint(profile.layer_min, profile.layer_max)) for _ in range(2))
            self.images = [
                make_image(rng, 1, profile.layer_min, profile.layer_max, f"{self.prefix}-{i}", base)
                for i in range(n)
            ]
        elif self.kind == "manifest-get":
            self.images = [make_image(rng, 1, profile.small, profile.small, self.prefix)]

    def release(self) -> None:
        self.blobs = []
        self.images = []

    @property
    def repo(self) -> str:
        return f"bench/{self.prefix}/{self.name}"

    async def setup(self, client: RegistryClient) -> None:
        """Untimed per-target preparation (with a correctness check of what it stored)."""
        if self.kind == "pull":
            for blob in self.blobs:
                await client.push_blob(self.repo, blob)
            await client.pull_blob(self.repo, self.blobs[0].digest, verify=True)
        elif self.kind == "manifest-get":
            await push_image(client, self.repo, "latest", self.images[0], None)
            if await client.get_manifest(self.repo, "latest") != self.images[0].manifest:
                raise BenchRequestError(f"{self.name}: GET returned a different manifest than was pushed")

    async def op(self, client: RegistryClient, i: int, result: OpsResult, profile: Profile) -> int:
        if self.kind in ("push-big", "push-small"):
            chunk = profile.chunk if self.chunked else None
            return await client.push_blob(self.repo, self.blobs[i], chunk_size=chunk)
        if self.kind == "pull":
            blob = self.blobs[i % len(self.blobs)]
            size = await client.pull_blob(self.repo, blob.digest)
            if size != blob.size:
                raise BenchRequestError(f"pulled {size} bytes of a {blob.size}-byte blob")
            return size
        if self.kind == "image":
            return await push_image(client, self.repo, f"t{i}", self.images[i], result)
        if self.kind in ("ci", "ci-shared"):
            # 16 CI jobs, each pushing its builds into its own repository.
            repo = f"{self.repo}/app{i % self.concurrency}"
            shared = self.kind == "ci-shared"
            return await push_image(
                client, repo, f"build-{i}", self.images[i], result, batch=self.batch, head_first=shared
            )
        if self.kind == "manifest-get":
            body = await client.get_manifest(self.repo, "latest")
            if len(body) != len(self.images[0].manifest):
                raise BenchRequestError("manifest GET returned a different body")
            return 0
        raise ValueError(self.kind)


def _scenarios() -> list[Scenario]:
    return [
        Scenario("push-mono-c1", "monolithic push, 64 MiB blobs (POST + PUT?digest with body), c=1",
                 "MB/s", 1, "push-big"),
        Scenario("push-mono-c4", "monolithic push, 64 MiB blobs, c=4", "MB/s", 4, "push-big"),
        Scenario("push-chunked-c1", "chunked push, 64 MiB blobs in 8 MiB PATCH chunks, c=1", "MB/s", 1,
                 "push-big", chunked=True),
        Scenario("push-small-c1", "small-blob push, 4 KiB (POST + PUT), c=1", "blobs/s", 1, "push-small"),
        Scenario("push-small-c8", "small-blob push, 4 KiB, c=8", "blobs/s", 8, "push-small"),
        Scenario("push-small-c32", "small-blob push, 4 KiB, c=32", "blobs/s", 32, "push-small"),
        Scenario("push-image-c8", "image push: 5 layers 16-256 KiB + config + manifest + tag, c=8",
                 "images/s", 8, "image"),
        Scenario("pull-c1", "blob pull, 64 MiB, c=1", "MB/s", 1, "pull"),
        Scenario("pull-c4", "blob pull, 64 MiB, c=4", "MB/s", 4, "pull"),
        Scenario("manifest-get-c16", "manifest GET by tag, c=16", "req/s", 16, "manifest-get"),
        Scenario("ci-batch-c16", "CI batch: 3-layer images from 16 clients, waiting on each commit",
                 "images/s", 16, "ci"),
        Scenario("ci-batch-async-c16", "CI batch with Prefer: respond-async on blob PUTs (Lading batch mode)",
                 "images/s", 16, "ci", batch=True),
        Scenario("ci-shared-c16", "CI batch as docker pushes: HEAD each blob first; 2 base layers shared "
                 "by every image + 1 own layer", "images/s", 16, "ci-shared"),
    ]  # fmt: skip


SCENARIOS: dict[str, Scenario] = {s.name: s for s in _scenarios()}


@dataclass
class Measurement:
    """One scenario against one target in one repeat."""

    scenario: str
    target: str
    repeat: int
    unit: str
    per_gb: bool
    ops: int
    bytes: int
    errors: int
    first_error: str | None
    elapsed_s: float
    capped: bool
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    server_cpu_s: float
    redis_cpu_s: float | None
    client_cpu_s: float
    cpu_by_service_s: dict[str, float] = field(default_factory=dict)  # api / worker / redis
    extra_p99_ms: dict[str, float] = field(default_factory=dict)
    extra_p50_ms: dict[str, float] = field(default_factory=dict)

    @property
    def server_cpu_norm(self) -> float:
        """CPU seconds per GB moved, or CPU milliseconds per operation."""
        return self._norm(self.server_cpu_s)

    @property
    def redis_cpu_norm(self) -> float | None:
        return None if self.redis_cpu_s is None else self._norm(self.redis_cpu_s)

    @property
    def client_cpu_norm(self) -> float:
        return self._norm(self.client_cpu_s)

    def _norm(self, seconds: float) -> float:
        if self.per_gb:
            return seconds / (self.bytes / 1e9) if self.bytes else 0.0
        return seconds * 1000 / self.ops if self.ops else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["server_cpu_norm"] = self.server_cpu_norm
        out["redis_cpu_norm"] = self.redis_cpu_norm
        out["client_cpu_norm"] = self.client_cpu_norm
        out["cpu_norm_unit"] = "s/GB" if self.per_gb else "ms/op"
        return out


async def run_scenario(
    scenario: Scenario, target: Target, profile: Profile, repeat: int, time_cap: float
) -> Measurement:
    """Set up (untimed), then run and measure `scenario` against `target`."""
    async with RegistryClient(target.url, scenario.concurrency) as client:
        try:
            await scenario.setup(client)
        except (BenchRequestError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            # A target that cannot even be set up gets a failed row; the run goes on.
            failed = OpsResult(errors=1, first_error=f"setup: {type(exc).__name__}: {exc}"[:500])
            return _measurement(scenario, target, repeat, failed, {}, {}, 0.0)
        me = psutil.Process()
        cpu0, split0, client0 = target.cpu(), target.cpu_by_service(), _own_cpu(me)
        result = await run_ops(
            scenario.count(profile),
            scenario.concurrency,
            lambda i, r: scenario.op(client, i, r, profile),
            time_cap,
        )
        cpu1, split1, client1 = target.cpu(), target.cpu_by_service(), _own_cpu(me)
    cpu = {k: v - cpu0.get(k, 0.0) for k, v in cpu1.items()}
    split = {k: v - split0.get(k, 0.0) for k, v in split1.items()}
    return _measurement(scenario, target, repeat, result, cpu, split, client1 - client0)


def _measurement(
    scenario: Scenario,
    target: Target,
    repeat: int,
    result: OpsResult,
    cpu: dict[str, float],
    split: dict[str, float],
    client_cpu: float,
) -> Measurement:
    ms = [x * 1000 for x in result.latencies]
    amount = result.bytes / 1e6 if scenario.per_gb else result.ops
    throughput = amount / result.elapsed if result.elapsed else 0.0
    redis = cpu.get(ROLE_REDIS) if any(s.role == ROLE_REDIS for s in target.services) else None
    return Measurement(
        scenario=scenario.name,
        target=target.name,
        repeat=repeat,
        unit=scenario.unit,
        per_gb=scenario.per_gb,
        ops=result.ops,
        bytes=result.bytes,
        errors=result.errors,
        first_error=result.first_error,
        elapsed_s=result.elapsed,
        capped=result.capped,
        throughput=throughput,
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        server_cpu_s=cpu.get(ROLE_SERVER, 0.0),
        redis_cpu_s=redis,
        client_cpu_s=client_cpu,
        cpu_by_service_s=split,
        extra_p99_ms={k: percentile([x * 1000 for x in v], 99) for k, v in result.extra.items()},
        extra_p50_ms={k: percentile([x * 1000 for x in v], 50) for k, v in result.extra.items()},
    )


def _own_cpu(me: psutil.Process) -> float:
    t = me.cpu_times()
    return t.user + t.system


def median_measurement(items: list[Measurement]) -> Measurement:
    """Field-wise medians of several repeats of one scenario on one target."""
    if len(items) == 1:
        return items[0]
    first = items[0]

    def med(get: Callable[[Measurement], float]) -> float:
        return float(statistics.median(get(m) for m in items))

    redis = [m.redis_cpu_s for m in items if m.redis_cpu_s is not None]
    errors = [m.first_error for m in items if m.first_error]
    return Measurement(
        scenario=first.scenario,
        target=first.target,
        repeat=-1,
        unit=first.unit,
        per_gb=first.per_gb,
        ops=int(med(lambda m: m.ops)),
        bytes=int(med(lambda m: m.bytes)),
        errors=sum(m.errors for m in items),
        first_error=errors[0] if errors else None,
        elapsed_s=med(lambda m: m.elapsed_s),
        capped=any(m.capped for m in items),
        throughput=med(lambda m: m.throughput),
        p50_ms=med(lambda m: m.p50_ms),
        p95_ms=med(lambda m: m.p95_ms),
        p99_ms=med(lambda m: m.p99_ms),
        server_cpu_s=med(lambda m: m.server_cpu_s),
        redis_cpu_s=float(statistics.median(redis)) if redis else None,
        client_cpu_s=med(lambda m: m.client_cpu_s),
        cpu_by_service_s=_median_dicts([m.cpu_by_service_s for m in items]),
        extra_p99_ms=_median_dicts([m.extra_p99_ms for m in items]),
        extra_p50_ms=_median_dicts([m.extra_p50_ms for m in items]),
    )


def _median_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for d in dicts for k in d}
    return {k: float(statistics.median(d[k] for d in dicts if k in d)) for k in sorted(keys)}
