"""Run CNCF distribution 2.8.2 (Debian's `docker-registry`) on loopback for comparisons.

Tests that use it fail — they do not skip — when the binary is missing: the project's CI
installs it (`.ci/run`).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.net import free_port, wait_http

CONFIG = """version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


def registry_binary() -> str:
    path = shutil.which("docker-registry")
    assert path, "docker-registry (CNCF distribution) is not installed: apt-get install docker-registry"
    return path


@contextmanager
def distribution(root: Path, workdir: Path, extra: str = "") -> Iterator[str]:
    """Start distribution with filesystem storage at `root`; yield its `host:port`.
    `extra` is appended to the config, with `{port}` replaced by the chosen port."""
    port = free_port()
    config = workdir / f"distribution-{port}.yml"
    config.write_text(CONFIG.format(root=root, port=port) + extra.replace("{port}", str(port)))
    log = open(workdir / f"distribution-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([registry_binary(), "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/", proc=proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
