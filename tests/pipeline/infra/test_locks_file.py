"""FileLocks: locks the processes of one host share through flock(2)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline.errors import TooManyRequests
from pipeline.infra.locks import FileLocks

HOLDER = """
import sys
from pipeline.infra.locks import FileLocks
with FileLocks(sys.argv[1]).lock("team/app", timeout=5):
    print("held", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def test_a_lock_held_by_another_process_excludes_this_one(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline().strip() == "held"
        locks = FileLocks(str(tmp_path))
        with pytest.raises(TooManyRequests), locks.lock("team/app", timeout=0.2):
            pass
        with locks.lock("team/other", timeout=0):  # per name
            pass
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        with locks.lock("team/app", timeout=5):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_threads_of_one_process_exclude_each_other(tmp_path: Path) -> None:
    locks = FileLocks(str(tmp_path))
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with locks.lock("_gc"):
            inside.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert inside.wait(30)
        with pytest.raises(TooManyRequests), locks.lock("_gc", timeout=0):
            pass
    finally:
        release.set()
        thread.join(30)
    with locks.lock("_gc", timeout=0):
        pass
