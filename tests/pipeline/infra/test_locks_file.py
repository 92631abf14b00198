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


def test_names_used_once_leave_no_lock_file_behind(tmp_path: Path) -> None:
    # Upload sessions take a lock each (pipeline.blob_commit.advance_digest): one file per
    # session kept forever would fill the directory.
    locks = FileLocks(str(tmp_path / "locks"))
    for i in range(5):
        with locks.lock(f"_advance:{i}", timeout=0):
            pass
    assert list((tmp_path / "locks").iterdir()) == []


def test_a_waiter_on_a_removed_lock_file_still_excludes_the_next_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B opened the file A held and waits; A releases (removing the file) and C takes the
    lock on a new file: B, once it gets the old file's flock, must not enter beside C."""
    import pipeline.infra.locks as locks_module

    a, b, c = (FileLocks(str(tmp_path)) for _ in range(3))  # three "processes"
    polls: list[threading.Event] = [threading.Event(), threading.Event()]
    go = threading.Event()
    entered = threading.Event()
    real_sleep = locks_module.time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "b":
            for poll in polls:
                if not poll.is_set():
                    poll.set()
                    break
            go.wait(30)
        real_sleep(seconds)

    monkeypatch.setattr(locks_module.time, "sleep", sleep)

    def waiter() -> None:
        with b.lock("repo", timeout=30):
            entered.set()

    thread = threading.Thread(target=waiter, name="b")
    with a.lock("repo", timeout=0):
        thread.start()
        assert polls[0].wait(30)  # B has the file open and waits for its lock
    try:
        with c.lock("repo", timeout=0):
            go.set()
            assert polls[1].wait(30)  # B got the old file's lock, saw it removed, waits again
            assert not entered.is_set()
        assert entered.wait(30)
    finally:
        go.set()
        thread.join(30)
