"""How the maintenance commands (`lading gc`, `scrub`, `purge-uploads`) talk to a person:
a progress display on stderr while they run, and a summary of what they did.

`ProgressDisplay` is the `progress(done, total_or_None)` callback pipeline.maintenance
functions take. On a terminal it redraws one line in place (a bar when the total is known,
a running count otherwise), at most `TTY_INTERVAL` apart; on anything else (a log file,
a pipe, cron) it prints plain lines, at most one per `PLAIN_INTERVAL` second and none at
all for a run shorter than that. `summary(command, result)` turns a run's result dict into
a few lines of text, and `exit_code(command, result)` says whether the run found trouble.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["PLAIN_INTERVAL", "TTY_INTERVAL", "ProgressDisplay", "exit_code", "human_bytes", "summary"]

TTY_INTERVAL = 0.1
PLAIN_INTERVAL = 1.0
BAR_WIDTH = 30
LISTED = 20  # digests / sessions listed in a summary before "... and N more"

# command -> (what is counted when the total is unknown, ... when it is known)
UNITS: dict[str, tuple[str, str]] = {
    "gc": ("repositories marked", "candidate blobs swept"),
    "scrub": ("blobs checked", "blobs checked"),
    "purge-uploads": ("upload sessions examined", "upload sessions examined"),
}


def human_bytes(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


class ProgressDisplay:
    """The progress callback of one command run. Call `close()` when the run ends."""

    def __init__(
        self,
        command: str,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = command
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self._isatty() if tty is None else tty
        self.clock = clock
        self.units = UNITS.get(command, ("done", "done"))
        self.started = clock()
        # A plain line only after a full interval: a quick run prints nothing but its summary.
        self.last: float | None = None if self.tty else self.started
        self.done = 0
        self.total: int | None = None
        self.drawn = False

    def _isatty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        try:
            return bool(isatty()) if callable(isatty) else False
        except (OSError, ValueError):
            return False

    def __call__(self, done: int, total: int | None) -> None:
        self.done, self.total = done, total
        now = self.clock()
        interval = TTY_INTERVAL if self.tty else PLAIN_INTERVAL
        if self.last is not None and now - self.last < interval:
            return
        self.last = now
        self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the current state (without control characters)."""
        elapsed = (self.clock() if now is None else now) - self.started
        if self.total is not None:
            total = max(self.total, 1)
            fraction = min(self.done / total, 1.0) if self.total else 1.0
            filled = int(fraction * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            return (
                f"{self.command}: [{bar}] {self.done}/{self.total} {self.units[1]} "
                f"{fraction * 100:3.0f}% {elapsed:.0f}s"
            )
        rate = f", {self.done / elapsed:.1f}/s" if elapsed > 0 else ""
        return f"{self.command}: {self.done} {self.units[0]} ({elapsed:.0f}s{rate})"

    def _draw(self, now: float) -> None:
        text = self.line(now)
        try:
            if self.tty:
                self.stream.write("\r" + text + "\x1b[K")
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            return  # a closed stderr must not stop the maintenance run
        self.drawn = True

    def close(self) -> None:
        """On a terminal: draw the final state and end the line (if anything was drawn)."""
        if self.tty and self.drawn:
            self._draw(self.clock())
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass


# --- summaries ----------------------------------------------------------------------------


def _listed(items: list[str], total: int | None = None) -> list[str]:
    lines = [f"    {item}" for item in items[:LISTED]]
    more = (total if total is not None else len(items)) - min(len(items), LISTED)
    if more > 0:
        lines.append(f"    ... and {more} more")
    return lines


def _gc(result: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    examined = (
        f"examined {_plural(result.get('blobs_examined', 0), 'blob')} in "
        f"{_plural(result.get('repositories', 0), 'repository', 'repositories')}"
    )
    if result.get("dry_run"):
        would = result.get("would_delete") or {}
        lines.append(
            f"Garbage collection (dry run): would delete {_plural(would.get('blobs', 0), 'blob')} "
            f"({human_bytes(would.get('bytes', 0))}) and {_plural(would.get('manifests', 0), 'manifest')}; "
            "nothing was changed."
        )
        lines.append(f"  {examined}; {result.get('marked', 0)} in use")
        lines += _held(result)
        lines += _listed(list(would.get("digests") or []), would.get("blobs"))
        lines += _listed(list(would.get("revisions") or []), would.get("manifests"))
    else:
        lines.append(
            f"Garbage collection: deleted {_plural(result.get('blobs_deleted', 0), 'blob')} "
            f"({human_bytes(result.get('bytes_freed', 0))}) and "
            f"{_plural(result.get('manifests_deleted', 0), 'manifest')}, "
            f"removed {_plural(result.get('links_removed', 0), 'dangling link')}."
        )
        lines.append(
            f"  {examined}; {result.get('marked', 0)} in use; "
            f"{result.get('rescued', 0)} kept for pushes that arrived meanwhile; {result.get('seconds', 0)} s"
        )
        lines += _held(result)
        recovered = result.get("recovered") or {}
        if recovered.get("restored") or recovered.get("markers"):
            lines.append(
                f"  recovered an interrupted run: {_plural(recovered.get('restored', 0), 'blob')} restored, "
                f"{_plural(recovered.get('markers', 0), 'marker')} cleared"
            )
    if result.get("sweep_skipped"):
        lines.append(f"  Sweep skipped (nothing deleted): {result['sweep_skipped']}")
    return lines


def human_seconds(seconds: float) -> str:
    """'1h', '30m', '90s', '1h30m' for a duration."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n)
    return text or "0s"


def _held(result: Mapping[str, Any]) -> list[str]:
    """The line about unreferenced blobs the grace period keeps (none: no line)."""
    held = result.get("held_by_grace") or {}
    if not held.get("blobs"):
        return []
    until = datetime.fromtimestamp(float(held["until"]), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    grace = human_seconds(float(held.get("grace_seconds", 0)))
    return [
        f"  {_plural(held['blobs'], 'unreferenced blob')} ({human_bytes(held.get('bytes', 0))}) "
        f"held back by the {grace} grace period (lading.maintenance.gc.grace), the last until {until}"
    ]


def _impact(item: Mapping[str, Any]) -> str:
    parts = []
    for key in ("tags", "manifests", "repositories"):
        values = list(item.get(key) or [])
        if values:
            shown = ", ".join(values[:5]) + (f" (+{len(values) - 5})" if len(values) > 5 else "")
            parts.append(f"{key}: {shown}")
            break  # the most specific thing it breaks is enough for a line
    return "; ".join(parts) if parts else "referenced by nothing"


def _scrub(result: Mapping[str, Any]) -> list[str]:
    checked = result.get("checked", 0)
    rate = result.get("blobs_per_s")
    head = "Scrub (dry run)" if result.get("dry_run") else "Scrub"
    lines = [
        f"{head}: checked {_plural(checked, 'blob')} ({human_bytes(result.get('bytes', 0))}) in "
        f"{result.get('seconds', 0)} s" + (f" ({rate} blobs/s)." if rate else ".")
    ]
    corrupt = list(result.get("corrupt") or [])
    missing = list(result.get("missing") or [])
    if corrupt:
        lines.append(f"  {_plural(len(corrupt), 'corrupt blob')} (stored bytes no longer match the digest):")
        lines += _listed([f"{c['digest']} ({human_bytes(c.get('size', 0))}) - {_impact(c)}" for c in corrupt])
    if missing:
        lines.append(f"  {_plural(len(missing), 'missing blob')} (referenced but not stored):")
        lines += _listed([f"{m['digest']} - {_impact(m)}" for m in missing])
    if result.get("dry_run"):
        if corrupt:
            lines.append("  Dry run: nothing was quarantined or recorded.")
    elif result.get("quarantined") or result.get("released"):
        lines.append(
            f"  quarantined {result.get('quarantined', 0)}; released {result.get('released', 0)} "
            "(healthy again after a new push)"
        )
    elif corrupt:
        lines.append("  Quarantine is off: corrupt blobs are still served.")
    if not result.get("complete", True):
        lines.append("  Stopped before the end: the next run continues where this one stopped.")
    if not corrupt and not missing:
        lines.append("  No problems found.")
    return lines


def _session(session: Mapping[str, Any]) -> str:
    return f"{human_bytes(session.get('size', 0))}, started {session.get('started_at')}"


def _purge(result: Mapping[str, Any]) -> list[str]:
    purged = result.get("purged", 0)
    verb = "would delete" if result.get("dry_run") else "deleted"
    head = "Upload purge (dry run)" if result.get("dry_run") else "Upload purge"
    lines = [
        f"{head}: {verb} {_plural(purged, 'abandoned upload session')} "
        f"({human_bytes(result.get('bytes', 0))}); kept {result.get('kept', 0)} still active."
    ]
    sessions = list(result.get("sessions") or [])
    lines += _listed([f"{s['repository']} {s['upload_id']} ({_session(s)})" for s in sessions])
    unfinished = result.get("unfinished_writes", 0)
    if unfinished:
        lines.append(
            f"  Storage: {verb} {_plural(unfinished, 'unfinished write')} of crashed writers "
            f"({human_bytes(result.get('unfinished_bytes', 0))})."
        )
    if result.get("dry_run") and (purged or unfinished):
        lines.append("  Dry run: nothing was deleted.")
    return lines


_SUMMARIES: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "gc": _gc,
    "scrub": _scrub,
    "purge-uploads": _purge,
}


def summary(command: str, result: Mapping[str, Any]) -> str:
    """What a person reads after `lading <command>`."""
    if "skipped" in result:
        return f"{command} skipped: {result['skipped']}"
    render = _SUMMARIES.get(command)
    if render is None:
        return "\n".join(f"{k}: {v}" for k, v in sorted(result.items()))
    return "\n".join(render(result))


def exit_code(command: str, result: Mapping[str, Any]) -> int:
    """0 when the run did its job and found nothing wrong; 1 when it was skipped (another
    run holds the lock), gc could not sweep, or scrub found corrupt or missing blobs — so
    cron and scripts notice."""
    if "skipped" in result or result.get("sweep_skipped"):
        return 1
    if command == "scrub" and (result.get("corrupt") or result.get("missing")):
        return 1
    return 0
