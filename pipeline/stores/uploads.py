"""Upload sessions: `repositories/<name>/_uploads/<uuid>/{startedat, data, completing, hashstates/}`.

All session state lives in storage, never in a process's memory, so any API replica (or
worker) can take the next request of any session. The size of `data` is the session's
offset; `startedat` is the creation time as RFC 3339 UTC text, as distribution writes it
(so its upload purger and ours read each other's sessions).

Every method taking an upload id answers BlobUploadUnknown for an id that is not a
canonical lower-case UUID, before any storage path is built from it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from pipeline.errors import BlobUploadUnknown, PathNotFound, RangeInvalid
from pipeline.formats.names import is_valid_name, validate_name
from pipeline.storage import paths
from pipeline.storage.driver import FileWriter, StorageDriver

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)


def is_upload_id(upload_id: str) -> bool:
    """True for a canonical lower-case UUID string (the only ids Lading issues or accepts)."""
    return isinstance(upload_id, str) and _UUID_RE.match(upload_id) is not None


def format_started_at(moment: datetime) -> str:
    """Go's `time.RFC3339` layout in UTC, as distribution writes `startedat`: whole seconds, 'Z'."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_started_at(text: str) -> datetime:
    """Parse RFC 3339 (with or without fractional seconds, any offset) to an aware UTC datetime.
    ValueError if it is not RFC 3339."""
    m = _RFC3339_RE.match(text.strip())
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, zone = m.group(7), m.group(8)
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    if zone in ("Z", "z"):
        tz = UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    return datetime(year, month, day, hour, minute, second, micros, tzinfo=tz).astimezone(UTC)


@dataclass(frozen=True)
class UploadStatus:
    repository: str
    upload_id: str
    size: int
    started_at: datetime


@dataclass(frozen=True)
class CompletingPut:
    """A completing `PUT ?digest=` whose body (`length` bytes, ending at offset `size`) was
    appended to the session and whose commit job was sent. A retry of the same PUT after a
    JobTimeout finds it and commits again instead of appending the body a second time."""

    digest: str
    size: int
    length: int


class UploadStore:
    """Create, inspect, append to and cancel upload sessions."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver

    def _check(self, repo: str, upload_id: str) -> None:
        validate_name(repo)
        if not is_upload_id(upload_id):
            raise BlobUploadUnknown(upload_id)

    def create(self, repo: str) -> UploadStatus:
        """Start a session: a new uuid4 id, `startedat` = now, and an empty `data`."""
        validate_name(repo)
        upload_id = str(uuid.uuid4())
        started = format_started_at(datetime.now(UTC))
        # startedat first, as distribution does: its presence is what marks a session.
        self.driver.put_content(paths.upload_started_at(repo, upload_id), started.encode("ascii"))
        self.driver.put_content(paths.upload_data(repo, upload_id), b"")
        return UploadStatus(repo, upload_id, 0, parse_started_at(started))

    def status(self, repo: str, upload_id: str) -> UploadStatus:
        """The live session's size and start time. BlobUploadUnknown when the id is malformed
        or the session (its `startedat` or its `data`) is absent."""
        self._check(repo, upload_id)
        try:
            raw = self.driver.get_content(paths.upload_started_at(repo, upload_id))
            size = self.driver.stat(paths.upload_data(repo, upload_id)).size
        except PathNotFound:
            raise BlobUploadUnknown(upload_id) from None
        try:
            started = parse_started_at(raw.decode("utf-8", errors="replace"))
        except ValueError:
            raise BlobUploadUnknown(upload_id) from None
        return UploadStatus(repo, upload_id, size, started)

    def open_append(self, repo: str, upload_id: str, offset: int | None) -> FileWriter:
        """An append writer on the session's data. When `offset` is given it must equal the
        current size, else RangeInvalid(current_size=size). The caller commits (or cancels)."""
        status = self.status(repo, upload_id)
        if offset is not None and offset != status.size:
            raise RangeInvalid(
                f"chunk starts at {offset} but the upload holds {status.size} bytes",
                current_size=status.size,
            )
        writer = self.driver.writer(paths.upload_data(repo, upload_id), append=True)
        # The check above ran before the writer took the append lock: a concurrent PATCH at
        # the same offset may have won the race, so check again now that the lock is held.
        if offset is not None and writer.size != offset:
            current = writer.size
            writer.close()
            raise RangeInvalid(
                f"chunk starts at {offset} but the upload holds {current} bytes", current_size=current
            )
        return writer

    def append(self, repo: str, upload_id: str, data: bytes, offset: int | None = None) -> int:
        """Append one chunk and commit it; return the session's new size."""
        with self.open_append(repo, upload_id, offset) as writer:
            writer.write(data)
            writer.commit()
            return writer.size

    def mark_completing(self, repo: str, upload_id: str, put: CompletingPut) -> None:
        """Record that `put`'s body is in the session (replacing any earlier record)."""
        self._check(repo, upload_id)
        record = {"digest": put.digest, "size": put.size, "length": put.length}
        self.driver.put_content(paths.upload_completing(repo, upload_id), json.dumps(record).encode())

    def completing(self, repo: str, upload_id: str) -> CompletingPut | None:
        """The session's completing-PUT record; None when there is none (or it is unreadable:
        it only saves a retry from appending again). BlobUploadUnknown for a malformed id."""
        self._check(repo, upload_id)
        try:
            record = json.loads(self.driver.get_content(paths.upload_completing(repo, upload_id)))
            put = CompletingPut(str(record["digest"]), int(record["size"]), int(record["length"]))
        except PathNotFound:
            return None
        except (ValueError, KeyError, TypeError):
            return None
        return put

    def cancel(self, repo: str, upload_id: str) -> None:
        """Delete the whole session directory. BlobUploadUnknown if there is none."""
        self._check(repo, upload_id)
        try:
            self.driver.delete(paths.upload_dir(repo, upload_id))
        except PathNotFound:
            raise BlobUploadUnknown(upload_id) from None

    def sessions(self, repo: str) -> Iterator[UploadStatus]:
        """Every session directory of the repository, including leftovers a crash made
        (no `data`: size 0; no readable `startedat`: the directory's modification time),
        so the purger can remove them too."""
        yield from self._sessions(validate_name(repo))

    def _sessions(self, repo: str) -> Iterator[UploadStatus]:
        try:
            children = self.driver.list(paths.uploads_dir(repo))
        except PathNotFound:
            return
        for child in children:
            upload_id = child.rsplit("/", 1)[-1]
            if not is_upload_id(upload_id):
                continue
            status = self._lenient_status(repo, upload_id)
            if status is not None:
                yield status

    def _lenient_status(self, repo: str, upload_id: str) -> UploadStatus | None:
        try:
            dir_info = self.driver.stat(paths.upload_dir(repo, upload_id))
        except PathNotFound:
            return None
        started = dir_info.modified
        try:
            started = parse_started_at(
                self.driver.get_content(paths.upload_started_at(repo, upload_id)).decode("utf-8", "replace")
            )
        except (PathNotFound, ValueError):
            pass
        try:
            size = self.driver.stat(paths.upload_data(repo, upload_id)).size
        except PathNotFound:
            size = 0
        return UploadStatus(repo, upload_id, size, started)

    def all_sessions(self) -> Iterator[UploadStatus]:
        """Every session of every repository (walks `repositories/**/_uploads`; other
        `_`-prefixed directories such as `_layers` are never descended into)."""
        yield from self._walk(paths.repositories_root())

    def _walk(self, directory: str) -> Iterator[UploadStatus]:
        try:
            children = self.driver.list(directory)
        except PathNotFound:
            return
        prefix = paths.repositories_root() + "/"
        for child in children:
            base = child.rsplit("/", 1)[-1]
            if base == "_uploads":
                repo = directory[len(prefix) :]
                if is_valid_name(repo):
                    yield from self._sessions(repo)
            elif not base.startswith("_"):
                yield from self._walk(child)
