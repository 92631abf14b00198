"""A file loaded once and reloaded whenever it changes on disk (htpasswd, policy).

Change is detected by `stat` (modification time, size, inode) on each use, which costs one
system call. The first load must succeed (a broken file at start-up is a configuration
error); a later reload that fails keeps serving the last good contents and logs why, so a
file caught half-written by an editor never locks everybody out or lets everybody in.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("lading.auth")


def _signature(path: str) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class WatchedFile(Generic[T]):
    """The parsed contents of `path`, reparsed with `load(path)` when the file changes."""

    def __init__(self, path: str, load: Callable[[str], T]) -> None:
        self.path = path
        self._load = load
        self._lock = threading.Lock()
        self._seen = _signature(path)  # the last version tried, loaded or not
        self._value = load(path)
        self._stat_failed = False

    def get(self) -> T:
        """The current contents (reloaded first if the file changed since the last try)."""
        try:
            signature = _signature(self.path)
        except OSError as exc:
            if not self._stat_failed:
                self._stat_failed = True
                log.warning("cannot stat %s: %s; keeping the last loaded contents", self.path, exc)
            return self._value
        self._stat_failed = False
        if signature == self._seen:
            return self._value
        with self._lock:
            if signature != self._seen:
                self._seen = signature
                try:
                    self._value = self._load(self.path)
                except Exception as exc:
                    log.warning("cannot reload %s: %s; keeping the last good contents", self.path, exc)
                else:
                    log.info("reloaded %s", self.path)
        return self._value
