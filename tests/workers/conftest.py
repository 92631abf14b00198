"""Fixtures for worker tests: real Redis (DB 7, flushed), real `celery worker` processes
built from a config file like production, one asyncio loop thread standing in for the
API's event loop, and helpers to upload bytes the way the API does.

Redis is the test session's own redis-server (tests.support.redis_server).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import yaml
from celery import Celery

from api.jobclient import CeleryJobClient
from pipeline.config import Settings, load_settings
from pipeline.jobs import QUEUES
from pipeline.registry import Registry, build_registry
from tests.support import redis_server
from tests.support.redis_server import RedisServer
from workers.app import create_app

REPO_ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = redis_server.url(7)
T = TypeVar("T")


# --- an event loop like the API's -------------------------------------------------------


class LoopThread:
    """One asyncio loop in a daemon thread; `run(coro)` blocks the caller until done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="session")
def loop() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


# --- uploads ----------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload(registry: Registry, repository: str, data: bytes, chunks: int = 1) -> str:
    """Create an upload session holding `data` (appended in `chunks` pieces); its id."""
    status = registry.uploads.create(repository)
    step = max(1, -(-len(data) // chunks))
    for start in range(0, len(data), step):
        registry.uploads.append(repository, status.upload_id, data[start : start + step], offset=start)
    return status.upload_id


# --- configuration and worker processes -------------------------------------------------


def write_config(path: Path, root: Path, broker_url: str, result_backend: str, **celery_extra: Any) -> Path:
    """A distribution-style config.yml, as an operator would write it for a worker."""
    config = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {
            "filesystem": {"rootdirectory": str(root)},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "celery": {"broker_url": broker_url, "result_backend": result_backend, **celery_extra},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def settings_from(config: Path) -> Settings:
    return load_settings(str(config), {})


def require_redis(url: str) -> None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need Redis at {url}: {exc}")


def flush(url: str) -> None:
    redis.Redis.from_url(url).flushdb()


class WorkerProcess:
    """`celery -A workers.main worker` as a subprocess in its own process group."""

    def __init__(self, config: Path, log: Path, concurrency: int = 2) -> None:
        self.name = f"lading-test-{uuid.uuid4().hex[:8]}@localhost"
        self.log = log
        env = {**os.environ, "LADING_CONFIG": str(config), "PYTHONPATH": str(REPO_ROOT)}
        env.pop("REGISTRY_CELERY_BROKER_URL", None)
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.main",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(concurrency),
            "-Q",
            ",".join(QUEUES),
            "-n",
            self.name,
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
        ]
        self._log_file = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(timeout=60)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            if b" ready." in self.log.read_bytes():
                return
            time.sleep(0.1)
        self.kill()
        pytest.fail(f"worker not ready after {timeout}s:\n{self.log.read_text()[-4000:]}")

    def pool_pids(self) -> list[int]:
        import psutil

        return [child.pid for child in psutil.Process(self.proc.pid).children()]

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once (a crashed machine)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log_file.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log_file.close()


# --- the session's Redis deployment -------------------------------------------------------


class Deployment:
    """Storage root, settings, a worker process, and the API-side app/client/registry."""

    def __init__(self, settings: Settings, worker: WorkerProcess) -> None:
        self.settings = settings
        self.worker = worker
        self.app: Celery = create_app(settings)
        self.client = CeleryJobClient(self.app)
        self.registry = build_registry(settings)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop, freeze or count it."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(str(workdir))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_deployment(tmp_path_factory: pytest.TempPathFactory, loop: LoopThread) -> Iterator[Deployment]:
    require_redis(REDIS_URL)
    flush(REDIS_URL)
    base = tmp_path_factory.mktemp("redis-deployment")
    (base / "root").mkdir()
    config = write_config(base / "config.yml", base / "root", REDIS_URL, REDIS_URL)
    worker = WorkerProcess(config, base / "worker.log")
    deployment = Deployment(settings_from(config), worker)
    yield deployment
    loop.run(deployment.client.aclose())
    worker.stop()
