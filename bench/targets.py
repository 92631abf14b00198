"""Starting the registries under test on 127.0.0.1, each with fresh filesystem storage, and
measuring the CPU their process trees use.

- `distribution`: CNCF distribution 2.8.2 (`docker-registry serve config.yml`) with the
  settings of its shipped config (in-memory blob descriptor cache), log level warn and no
  access log.
- `lading-scaled`: `lading serve` with a Redis broker and result backend on a dedicated DB
  number, plus one separate `lading worker --queues ingest,verify` process with the
  command's default pool and concurrency (what the README recommends) unless the caller
  names them. Redis is a private `redis-server` started here (so its CPU can be measured
  alone) unless a URL is given.
- `lading-scaled-<N>x<M>` (`--scale N,M`): the same with N API processes (one storage root;
  the client round-robins over their ports) and M worker processes.

Like distribution's shipped config, Lading runs with `storage.cache.blobdescriptor: inmemory`
(with a broker that is the cache shared in Redis).
- `lading-embedded`: `lading serve` alone (API + in-process worker, no broker).

Lading runs with `REGISTRY_LOG_LEVEL=warn` so neither registry writes a line per request.
Every process is started in its own session and stopped by its process group id.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = [
    "TARGET_NAMES",
    "Service",
    "Target",
    "free_port",
    "lading_command",
    "lading_ready",
    "start_process",
    "start_target",
    "tree_cpu_seconds",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_NAMES = ("distribution", "lading-scaled", "lading-embedded")
SCALED_SHAPE = re.compile(r"lading-scaled-(\d+)x(\d+)")  # N API processes x M workers
REDIS_DB = 11  # the benchmark's own DB number on whichever Redis it uses
ROLE_SERVER = "server"  # the registry itself: API + workers (what the table reports)
ROLE_REDIS = "redis"  # reported separately

DISTRIBUTION_CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  cache:
    blobdescriptor: inmemory
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: lading-bench
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 60.0) -> None:
    """Wait until `url` answers any HTTP status; RuntimeError (with the log's tail) if the
    process exits first or nothing answers within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def tree_cpu_seconds(proc: psutil.Process) -> float:
    """user+system CPU seconds of a process and all its descendants (reaped children too)."""
    total = 0.0
    for p in [proc, *_children(proc)]:
        try:
            t = p.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _children(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


@dataclass
class Service:
    """One started process (and its descendants) with the role its CPU is counted under."""

    role: str
    label: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def __post_init__(self) -> None:
        self.process = psutil.Process(self.popen.pid)

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process)

    def pids(self) -> list[int]:
        return [self.process.pid, *(c.pid for c in _children(self.process))]

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=timeout)
        except ProcessLookupError:
            pass


def start_process(
    args: list[str], log_path: Path, role: str, label: str, env: dict[str, str] | None = None
) -> Service:
    log = open(log_path, "wb")  # noqa: SIM115 - the child keeps it; closed below
    try:
        popen = subprocess.Popen(
            args,
            env=env,
            cwd=str(REPO_ROOT),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    return Service(role, label, popen, log_path)


@dataclass
class Target:
    """A running registry: its base URL and the services whose CPU belongs to it."""

    name: str
    url: str
    root: Path
    services: list[Service] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stack: ExitStack = field(default_factory=ExitStack)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far by role (`server`, and `redis` when it has its own)."""
        out: dict[str, float] = {}
        for service in self.services:
            out[service.role] = out.get(service.role, 0.0) + service.cpu_seconds()
        return out

    def cpu_by_service(self) -> dict[str, float]:
        """CPU seconds so far of each started process tree (api, worker, redis)."""
        return {service.label: service.cpu_seconds() for service in self.services}

    def api_pid(self) -> int:
        return next(s.popen.pid for s in self.services if s.label == "api")

    def close(self) -> None:
        self.stack.close()


def lading_command() -> list[str]:
    exe = Path(sys.executable).parent / "lading"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lading.cli"]


def lading_ready() -> str | None:
    """None when `lading serve` can be started, else why not."""
    try:
        done = subprocess.run(
            [*lading_command(), "serve", "--help"], cwd=str(REPO_ROOT), capture_output=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {' '.join(lading_command())}: {exc}"
    if done.returncode != 0:
        return f"`lading serve --help` failed: {done.stderr.decode(errors='replace')[-500:]}"
    return None


def _lading_env(root: Path, port: int, **extra: str) -> dict[str, str]:
    # A clean REGISTRY_* namespace: nothing from the caller's environment leaks in.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REGISTRY_") and k not in ("LADING_CONFIG", "PYTHONPATH")
    }
    env.update(
        {
            "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(root),
            "REGISTRY_LOG_LEVEL": "warn",
            "REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR": "inmemory",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    env.update(extra)
    return env


def _start_distribution(target: Target, workdir: Path) -> None:
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry (CNCF distribution 2.8.2) is not installed")
    port = free_port()
    config = workdir / "distribution.yml"
    config.write_text(DISTRIBUTION_CONFIG.format(root=target.root, port=port))
    log_path = workdir / "distribution.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    service = start_process([binary, "serve", str(config)], log_path, ROLE_SERVER, "api", env)
    target.stack.callback(service.stop)
    target.services.append(service)
    target.url = f"http://127.0.0.1:{port}"
    wait_http(target.url + "/v2/", service.popen, log_path)


def _start_redis(target: Target, workdir: Path) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (or pass --redis URL)")
    port = free_port()
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    args += ["--dir", str(workdir), "--databases", "16"]
    service = start_process(args, workdir / "redis.log", ROLE_REDIS, "redis")
    target.stack.callback(service.stop)
    target.services.append(service)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"redis://127.0.0.1:{port}/{REDIS_DB}"
        except OSError:
            if service.popen.poll() is not None:
                break
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not start:\n{_tail(workdir / 'redis.log')}")


def _start_lading_scaled(
    target: Target,
    workdir: Path,
    redis_url: str | None,
    pool: str | None,
    concurrency: int | None,
    config: list[str],
    apis: int = 1,
    workers: int = 1,
) -> None:
    if redis_url is None:
        broker = _start_redis(target, workdir)
        target.notes.append(f"private redis-server, db {REDIS_DB}")
    else:
        broker = redis_url
        target.notes.append(f"shared Redis {redis_url} (its CPU is not measured)")
    broker_env = {"REGISTRY_CELERY_BROKER_URL": broker, "REGISTRY_CELERY_RESULT_BACKEND": broker}
    worker_args = [*lading_command(), "worker", *config, "--queues", "ingest,verify"]
    shape = "defaults"
    if pool:
        worker_args += ["--pool", pool]
    if concurrency:
        worker_args += ["--concurrency", str(concurrency)]
    if pool or concurrency:
        shape = f"--pool {pool or 'default'} --concurrency {concurrency or 'default'}"
    started: list[tuple[Service, Path]] = []
    for i in range(workers):
        label = "worker" if i == 0 else f"worker{i + 1}"
        log_path = workdir / f"{label}.log"
        env = _lading_env(target.root, free_port(), **broker_env)
        worker = start_process(worker_args, log_path, ROLE_SERVER, label, env)
        target.stack.callback(worker.stop)
        target.services.append(worker)
        started.append((worker, log_path))
    target.notes.append(f"{workers} worker(s) `lading worker --queues ingest,verify` ({shape})")
    urls = []
    for i in range(apis):
        label = "api" if i == 0 else f"api{i + 1}"
        port = free_port()
        env = _lading_env(target.root, port, **broker_env)
        log_path = workdir / f"lading-{label}.log"
        api = start_process([*lading_command(), "serve", *config], log_path, ROLE_SERVER, label, env)
        target.stack.callback(api.stop)
        target.services.append(api)
        urls.append(f"http://127.0.0.1:{port}")
        wait_http(urls[-1] + "/v2/", api.popen, log_path)
    if apis > 1:
        target.notes.append(f"{apis} API processes (client round robin)")
    target.url = ",".join(urls)
    wait_workers_ready(broker, started)


def wait_workers_ready(broker: str, workers: list[tuple[Service, Path]], timeout: float = 90.0) -> None:
    """Until every worker answers a Celery ping (it consumes then; jobs sent earlier would
    only wait). RuntimeError if one exits first."""
    from celery import Celery

    app = Celery("lading-bench", broker=broker, set_as_current=False)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for worker, log_path in workers:
                if worker.popen.poll() is not None:
                    code = worker.popen.returncode
                    raise RuntimeError(f"lading worker exited with {code}:\n{_tail(log_path)}")
            if len(app.control.ping(timeout=0.5) or []) >= len(workers):
                return
    finally:
        app.close()
    # The warm-up push will still prove that the workers answer.


def _start_lading_embedded(target: Target, workdir: Path, config: list[str]) -> None:
    port = free_port()
    env = _lading_env(target.root, port)
    log_path = workdir / "lading-api.log"
    api = start_process([*lading_command(), "serve", *config], log_path, ROLE_SERVER, "api", env)
    target.stack.callback(api.stop)
    target.services.append(api)
    target.url = f"http://127.0.0.1:{port}"
    target.notes.append("API + in-process worker (no broker)")
    wait_http(target.url + "/v2/", api.popen, log_path)


def start_target(
    name: str,
    workdir: Path,
    redis_url: str | None = None,
    worker_pool: str | None = None,
    worker_concurrency: int | None = None,
    lading_config: Path | None = None,
) -> Target:
    """Start `name` (one of TARGET_NAMES) with fresh storage under `workdir/<name>/root`.

    `lading_config`: a config.yml every Lading process gets as its CONFIG argument (the
    REGISTRY_* variables set here still decide address, storage root, broker and log level)."""
    config = [str(lading_config.resolve())] if lading_config else []
    base = workdir / name
    root = base / "root"
    root.mkdir(parents=True)
    target = Target(name, "", root)
    try:
        if name == "distribution":
            _start_distribution(target, base)
        elif name == "lading-scaled" or SCALED_SHAPE.fullmatch(name):
            m = SCALED_SHAPE.fullmatch(name)
            apis, workers = (int(m.group(1)), int(m.group(2))) if m else (1, 1)
            _start_lading_scaled(
                target, base, redis_url, worker_pool, worker_concurrency, config, apis, workers
            )
            if lading_config:
                target.notes.append(f"config {lading_config.name}")
        elif name == "lading-embedded":
            _start_lading_embedded(target, base, config)
            if lading_config:
                target.notes.append(f"config {lading_config.name}")
        else:
            raise ValueError(f"unknown target {name!r} (known: {', '.join(TARGET_NAMES)})")
    except BaseException:
        target.close()
        raise
    return target
