"""Run Lading itself as real processes: `lading serve` (embedded or with a broker) and
`lading worker`, configured through distribution-style REGISTRY_* environment overrides."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.support.net import free_port, wait_http

VENV_BIN = Path(sys.executable).parent


def lading_command() -> list[str]:
    exe = VENV_BIN / "lading"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lading.cli"]


def base_env(root: Path, port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(root),
            "REGISTRY_STORAGE_DELETE_ENABLED": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@contextmanager
def process(args: list[str], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = open(log_path, "wb")  # noqa: SIM115
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@contextmanager
def lading_embedded(root: Path, workdir: Path, **env: str) -> Iterator[str]:
    """`lading serve` with no broker configured: API + in-process worker. Yields host:port."""
    port = free_port()
    environment = base_env(root, port, **env)
    for key in ("REGISTRY_CELERY_BROKER_URL", "REGISTRY_CELERY_RESULT_BACKEND"):
        environment.pop(key, None)
    with process([*lading_command(), "serve"], environment, workdir / f"lading-{port}.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=proc)
        yield f"127.0.0.1:{port}"


@contextmanager
def lading_scaled(
    root: Path, workdir: Path, broker_url: str, result_backend: str, workers: int = 1, **env: str
) -> Iterator[str]:
    """`lading serve` with a broker plus `workers` separate `lading worker` processes."""
    port = free_port()
    environment = base_env(
        root,
        port,
        REGISTRY_CELERY_BROKER_URL=broker_url,
        REGISTRY_CELERY_RESULT_BACKEND=result_backend,
        **env,
    )
    with ExitStack() as stack:
        for i in range(workers):
            stack.enter_context(
                process(
                    [*lading_command(), "worker", "--concurrency", "2"],
                    environment,
                    workdir / f"worker-{port}-{i}.log",
                )
            )
        proc = stack.enter_context(
            process([*lading_command(), "serve"], environment, workdir / f"lading-{port}.log")
        )
        wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=proc)
        yield f"127.0.0.1:{port}"
