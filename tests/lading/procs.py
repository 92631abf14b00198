"""Starting `lading` and `celery` commands as real processes and watching their output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def lading_command() -> list[str]:
    """The installed `lading` script next to this interpreter, else the module."""
    exe = Path(sys.executable).parent / "lading"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lading.cli"]


def celery_command() -> list[str]:
    exe = Path(sys.executable).parent / "celery"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "celery"]


def process_env(**extra: str) -> dict[str, str]:
    """The test's environment without REGISTRY_* leftovers, with the repo importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_") and k != "LADING_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Running:
    """A started process whose combined output is collected by a reader thread."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._chunks: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            with self._lock:
                self._chunks.append(line.decode("utf-8", "replace"))

    @property
    def output(self) -> str:
        with self._lock:
            return "".join(self._chunks)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        """Block until `pattern` (a regex) appears in the output; fail if the process
        exits first or `timeout` passes."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if regex.search(self.output):
                return self.output
            if self.proc.poll() is not None:
                self._reader.join(2)
                if regex.search(self.output):
                    return self.output
                raise AssertionError(f"exited with {self.proc.returncode} before /{pattern}/:\n{self.output}")
            time.sleep(0.05)
        raise AssertionError(f"no /{pattern}/ within {timeout}s:\n{self.output}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the process group, wait; SIGKILL if it does not end in `timeout`."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode


@contextmanager
def running(args: list[str], env: dict[str, str], cwd: Path | None = None) -> Iterator[Running]:
    proc = subprocess.Popen(
        args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    run = Running(proc)
    try:
        yield run
    finally:
        run.stop()
