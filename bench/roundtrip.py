"""Round trip of one cheap job, enqueue → worker → result → awaited by the API's client.

    python -m bench.roundtrip [--n 500] [--concurrency 16] [--redis redis://127.0.0.1:6379/12]

The job is ADVANCE_DIGEST on a 64-byte upload (read, hash, save the hash state): the real
task path with almost no work. Measured twice:
- redis: a `lading worker` subprocess (prefork, concurrency 2) on Redis
  (broker and result backend; the DB given is flushed), the client waiting on pub/sub;
- embedded: the in-process worker (threads pool) on the memory broker.
Each prints p50/p99 of sequential round trips, then the same with `--concurrency` jobs in
flight and the throughput that gives.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import redis
import yaml

from api.jobclient import CeleryJobClient
from bench.targets import lading_command, start_process, wait_workers_ready
from pipeline import jobs
from pipeline.config import Settings, StorageSettings, load_settings
from pipeline.registry import Registry, build_registry
from workers.app import create_app
from workers.embedded import start_embedded_worker

REPO_ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "bench/roundtrip"


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def measure(client: CeleryJobClient, upload_id: str, n: int, concurrency: int) -> None:
    async def once() -> float:
        start = time.perf_counter()
        await client.run(
            jobs.ADVANCE_DIGEST, 30, repository=REPOSITORY, upload_id=upload_id, algorithm="sha256"
        )
        return time.perf_counter() - start

    for _ in range(20):  # warm up connections, pools, imports
        await once()
    sequential = [await once() for _ in range(n)]
    print(
        f"  sequential  n={n}: p50 {percentile(sequential, 50) * 1e3:.2f} ms  "
        f"p99 {percentile(sequential, 99) * 1e3:.2f} ms  mean {statistics.mean(sequential) * 1e3:.2f} ms"
    )

    gate = asyncio.Semaphore(concurrency)

    async def gated() -> float:
        async with gate:
            return await once()

    start = time.perf_counter()
    parallel = await asyncio.gather(*(gated() for _ in range(n)))
    elapsed = time.perf_counter() - start
    print(
        f"  {concurrency} in flight n={n}: p50 {percentile(parallel, 50) * 1e3:.2f} ms  "
        f"p99 {percentile(parallel, 99) * 1e3:.2f} ms  {n / elapsed:.0f} jobs/s"
    )
    await client.aclose()


def tiny_upload(registry: Registry) -> str:
    status = registry.uploads.create(REPOSITORY)
    registry.uploads.append(REPOSITORY, status.upload_id, os.urandom(64))
    return status.upload_id


def bench_redis(redis_url: str, n: int, concurrency: int) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    with tempfile.TemporaryDirectory(prefix="lading-bench-") as tmp:
        config = Path(tmp) / "config.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "version": 0.1,
                    "log": {"level": "warn"},  # the worker logs no line per job
                    "storage": {
                        "filesystem": {"rootdirectory": f"{tmp}/root"},
                        "maintenance": {"uploadpurging": {"enabled": False}},
                    },
                    "celery": {"broker_url": redis_url, "result_backend": redis_url},
                }
            )
        )
        settings = load_settings(str(config), {})
        env = {**os.environ, "LADING_CONFIG": str(config), "PYTHONPATH": str(REPO_ROOT)}
        argv = [*lading_command(), "worker", "--pool", "prefork", "--concurrency", "2"]
        argv += ["--queues", ",".join(jobs.QUEUES), "--hostname", "lading-bench@localhost"]
        worker = start_process(argv, Path(tmp) / "worker.log", "worker", "worker", env)
        try:
            wait_workers_ready(redis_url, [(worker, Path(tmp) / "worker.log")])
            registry = build_registry(settings)
            upload_id = tiny_upload(registry)
            client = CeleryJobClient(create_app(settings))
            print(f"redis ({redis_url}, prefork worker subprocess, concurrency 2):")
            asyncio.run(measure(client, upload_id, n, concurrency))
        finally:
            worker.stop()
        redis.Redis.from_url(redis_url).flushdb()


def bench_embedded(n: int, concurrency: int) -> None:
    settings = Settings(storage=StorageSettings(driver="inmemory"))
    registry = Registry.in_memory(settings)
    app = create_app(settings, registry=registry)
    worker = start_embedded_worker(app, concurrency=settings.celery.embedded_concurrency)
    try:
        print(
            f"embedded (memory broker, in-process threads worker, concurrency "
            f"{settings.celery.embedded_concurrency}):"
        )
        asyncio.run(measure(CeleryJobClient(app), tiny_upload(registry), n, concurrency))
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--only", choices=("redis", "embedded"))
    args = parser.parse_args()
    if args.only != "embedded":
        bench_redis(args.redis, args.n, args.concurrency)
    if args.only != "redis":
        bench_embedded(args.n, args.concurrency)


if __name__ == "__main__":
    main()
