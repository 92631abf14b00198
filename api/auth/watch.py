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
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

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
        self.failure: str | None = None  # why the file on disk is not the one in force

    def get(self) -> T:
        """The current contents (reloaded first if the file changed since the last try)."""
        try:
            signature = _signature(self.path)
        except OSError as exc:
            if not self._stat_failed:
                self._stat_failed = True
                log.warning("cannot stat %s: %s; keeping the last loaded contents", self.path, exc)
            self.failure = f"cannot stat: {exc}"
            return self._value
        if self._stat_failed:
            self._stat_failed = False
            if self.failure is not None and self.failure.startswith("cannot stat"):
                self.failure = None
        if signature == self._seen:
            return self._value
        with self._lock:
            if signature != self._seen:
                self._seen = signature
                try:
                    self._value = self._load(self.path)
                except Exception as exc:
                    self.failure = f"cannot reload: {exc}"
                    log.warning("cannot reload %s: %s; keeping the last good contents", self.path, exc)
                else:
                    self.failure = None
                    log.info("reloaded %s", self.path)
        return self._value


class ReloadFailedCollector:
    """Prometheus collector: `lading_auth_reload_failed{file}` is 1 while `file` changed on
    disk but could not be loaded (the last good rules are in force), else 0. `failures`
    returns {path: reason} and `paths` every watched file (api.auth.Access)."""

    def __init__(self, failures: Callable[[], dict[str, str]], paths: Callable[[], list[str]]) -> None:
        self._failures = failures
        self._paths = paths

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        gauge = GaugeMetricFamily(
            "lading_auth_reload_failed",
            "1 while an htpasswd or policy file changed on disk but cannot be loaded "
            "(the last good version stays in force)",
            labels=["file"],
        )
        failed = self._failures()
        for path in self._paths():
            gauge.add_metric([path], 1.0 if path in failed else 0.0)
        yield gauge

    def describe(self) -> list[Metric]:
        return []
