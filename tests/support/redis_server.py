"""The test session's own `redis-server`, so tests never share a database with anything
else on the machine (another checkout's test run, a developer's registry, a CI neighbour).

`start()` runs one `redis-server` on a free loopback port in a temporary directory, with
no persistence, and exports its URL as `LADING_TEST_REDIS` before test modules are
imported (the root conftest calls it from `pytest_configure`); `url(db)` builds the URL
of one database of it. Subprocesses a test starts (workers, Flower, `lading serve`) get
that URL through the configuration the test writes, never by looking at 6379.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import redis

from tests.support.net import free_port

ENV = "LADING_TEST_REDIS"


def url(db: int = 0) -> str:
    """`redis://127.0.0.1:<port>/<db>` of the session's own server."""
    base = os.environ.get(ENV)
    if not base:
        raise RuntimeError(f"{ENV} is not set: the root conftest starts the test redis-server")
    return f"{base}/{db}"


def port() -> int:
    return int(url().rsplit(":", 1)[1].split("/", 1)[0])


class RedisServer:
    """One `redis-server` on a free loopback port in `workdir`, without persistence.

    `unixsocket`: also listen on that unix socket. `sentinel_of`: run as a Redis Sentinel
    (`redis-server --sentinel`, the same binary) monitoring that server as master
    `master_name`. Fault tests use their own: `freeze()`/`thaw()` (SIGSTOP/SIGCONT) and
    `restart()` (SIGKILL, then a new, empty server on the same port)."""

    def __init__(
        self,
        workdir: str,
        *,
        unixsocket: str | None = None,
        sentinel_of: RedisServer | None = None,
        master_name: str = "lading",
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.unixsocket = unixsocket
        self._sentinel_of = sentinel_of
        self._master_name = master_name
        self._start()

    def _start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: .ci/run installs it (apt redis-server)")
        workdir, unixsocket, sentinel_of = self.workdir, self.unixsocket, self._sentinel_of
        head: list[str] = []
        if sentinel_of is not None:
            conf = os.path.join(workdir, f"sentinel-{self.port}.conf")
            with open(conf, "w") as f:  # sentinel rewrites its config file: it must be its own
                f.write(f"sentinel monitor {self._master_name} 127.0.0.1 {sentinel_of.port} 1\n")
            head = [conf, "--sentinel"]
        extra = ["--unixsocket", unixsocket, "--unixsocketperm", "700"] if unixsocket else []
        persistence = (
            [] if sentinel_of is not None else ["--save", "", "--appendonly", "no", "--databases", "32"]
        )
        self._proc = subprocess.Popen(
            [
                binary,
                *head,
                *extra,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                *persistence,
                "--dir",
                workdir,
                "--logfile",
                os.path.join(workdir, f"redis-{self.port}.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        self._proc.kill()
                        raise RuntimeError(f"test redis-server did not start on port {self.port}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        self.thaw()
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung server)."""
        self._proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Kill the server (SIGKILL) and start a new, empty one on the same port."""
        self._proc.kill()
        self._proc.wait(10)
        deadline = time.monotonic() + 20
        while True:
            try:
                self._start()
                return
            except RuntimeError:  # the port may linger a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def start() -> RedisServer | None:
    """Start the session's redis-server (unless `LADING_TEST_REDIS` names one already,
    e.g. a nested run); stopped at interpreter exit."""
    if os.environ.get(ENV):
        return None
    workdir = tempfile.mkdtemp(prefix="lading-test-redis-")
    server = RedisServer(workdir)
    os.environ[ENV] = server.url

    def stop() -> None:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    atexit.register(stop)
    return server


@contextlib.contextmanager
def emptied(db_url: str) -> Iterator[redis.Redis]:
    """A client of one database of the session's server, emptied before the block (what an
    earlier test left) and after it (what this one leaves)."""
    client = redis.Redis.from_url(db_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()
