"""A scaled-out Lading with Flower for e2e tests: `lading worker`, `lading serve` and
`celery -A lading.celery_app flower`, each a process reading the config named in `env`."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from tests.lading.procs import Running, celery_command, lading_command, running
from tests.support.net import wait_http


def start_worker_and_api(
    stack: ExitStack, config: Path, env: dict[str, str], cwd: Path, port: int, hostname: str
) -> tuple[Running, Running]:
    """`lading worker` (named `hostname`) and `lading serve config` (on `port`), both ready;
    `stack` stops them."""
    worker_args = [*lading_command(), "worker", "--concurrency", "2", "--hostname", hostname]
    worker = stack.enter_context(running(worker_args, env, cwd=cwd))
    server = stack.enter_context(running([*lading_command(), "serve", str(config)], env, cwd=cwd))
    worker.wait_for(r"ready\.", timeout=60)
    wait_http(f"http://127.0.0.1:{port}/v2/", timeout=60, proc=server.proc)
    return worker, server


def start_flower(
    stack: ExitStack, port: int, auth: tuple[str, str], env: dict[str, str], cwd: Path
) -> Running:
    """Flower on 127.0.0.1:`port` behind basic auth `auth`, answering its health check;
    `stack` stops it."""
    args = [
        *celery_command(),
        "-A",
        "lading.celery_app",
        "flower",
        "--address=127.0.0.1",
        f"--port={port}",
        f"--basic-auth={':'.join(auth)}",
    ]
    flower = stack.enter_context(running(args, env, cwd=cwd))
    wait_http(f"http://127.0.0.1:{port}/healthcheck", timeout=60, proc=flower.proc)
    return flower
