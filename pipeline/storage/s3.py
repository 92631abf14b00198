"""S3 (and S3-compatible) storage driver, on the same key layout as distribution's s3 driver.

Storage path `/docker/registry/v2/x` is the key `<rootdirectory>/docker/registry/v2/x`
(without the leading `/` when there is no root directory). Directories are implied by the
keys below them, as on every object store: deleting a directory's last file makes the
directory disappear.

- New-file writers upload parts as they fill (`chunk_size`, at least 5 MiB) and make the
  object visible only at commit (CompleteMultipartUpload, or one PutObject when small);
  cancel aborts the multipart upload, so nothing is left behind.
- Appending writers build a new version of the object: the existing bytes are copied
  server-side (UploadPartCopy, guarded by the ETag seen at open) and the new bytes follow;
  commit swaps the object in one step, cancel leaves the old one untouched. Appenders of
  one path exclude each other within this process (a bounded wait, then
  StorageUnavailable); across processes the upload store's offset check is the guard.
- A writer whose process died leaves its multipart upload open (S3 keeps its parts, and
  bills them, until it is aborted). `purge_unfinished_writes` lists the multipart uploads
  below the root directory, as distribution's writer does to find one to resume, and
  aborts those started and last given a part before the purge age. (distribution never
  aborts them: its abort-at-start was left as a TODO because uploads "have no
  timestamps"; ListMultipartUploads does report `Initiated` and ListParts each part's
  `LastModified`.)
- `walk` is native: one flat listing, not a request per directory.
- `move` follows the one rule of every driver (`objects.check_move`): it never merges
  into a directory that holds files.

boto/botocore errors are translated to `pipeline.errors` in one place, `_translate`:
throttling, 5xx and connection failures become StorageUnavailable.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)

from pipeline.errors import (
    InvalidOffset,
    PathNotFound,
    StorageError,
    StorageUnavailable,
)
from pipeline.storage.driver import Capabilities, FileInfo, FileWriter, StorageDriver, UnfinishedWrite
from pipeline.storage.filereader import FileReader
from pipeline.storage.objects import (
    AppendGuard,
    KeyLayout,
    ObjectWriter,
    check_move,
    children,
    redirect_method,
    walked,
)

MIN_PART = 5 * 1024 * 1024  # S3's smallest non-final multipart part
MAX_COPY_PART = 1024 * 1024 * 1024  # copy ranges stay well under S3's 5 GiB part limit
DEFAULT_CHUNK = 10 * 1024 * 1024
PRESIGN_SECONDS = 20 * 60  # distribution's redirect lifetime

_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404", "NoSuchUpload"})
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "InternalError",
        "OperationAborted",
    }
)
_TRANSIENT_EXCEPTIONS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
    HTTPClientError,
)


def _translate(exc: Exception, path: str) -> StorageError:
    """The one map from boto errors to driver errors."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return _from_code(str(error.get("Code", "")), status, str(error.get("Message", "")), path)
    if isinstance(exc, _TRANSIENT_EXCEPTIONS):
        return StorageUnavailable(f"{path}: {exc}")
    return StorageError(f"{path}: {exc}")


def _from_code(code: str, status: int, message: str, path: str) -> StorageError:
    if code in _MISSING_CODES or status == 404:
        return PathNotFound(path)
    text = f"{path}: {code or status}" + (f": {message}" if message else "")
    if code in _TRANSIENT_CODES or status >= 500 or status == 429:
        return StorageUnavailable(text)
    return StorageError(text)


@contextlib.contextmanager
def _s3_errors(path: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise _translate(exc, path) from exc


_Objects = list[dict[str, Any]]  # spelled here: the driver's own `list` method shadows the builtin

# Appenders of one object exclude each other across every S3Driver in the process.
_guard = AppendGuard()


class S3Driver(StorageDriver):
    """Objects in `bucket` under `root_directory`."""

    name = "s3"
    capabilities = Capabilities(redirect=True, walk=True)

    def __init__(
        self,
        bucket: str,
        *,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        root_directory: str = "",
        force_path_style: bool = False,
        secure: bool = True,
        chunk_size: int = DEFAULT_CHUNK,
        lock_timeout: float = 30.0,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
    ) -> None:
        self.bucket = bucket
        self.chunk_size = max(chunk_size, MIN_PART)
        self.lock_timeout = lock_timeout
        self.layout = KeyLayout(root_directory)
        self._prefix = self.layout.prefix
        config = Config(
            region_name=region,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            s3={"addressing_style": "path" if force_path_style else "auto"},
            connect_timeout=connect_timeout,
            max_pool_connections=32,
        )
        session = boto3.session.Session()
        self.client: Any = session.client(
            "s3",
            endpoint_url=endpoint_url or None,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            use_ssl=secure,
            config=config,
        )

    def __repr__(self) -> str:
        return f"S3Driver(bucket={self.bucket!r}, root={self._prefix!r})"

    # --- keys ----------------------------------------------------------------------------

    def _key(self, path: str) -> str:
        return self.layout.key(path)

    def _dir_prefix(self, path: str) -> str:
        return self.layout.dir_prefix(path)

    def _path(self, key: str) -> str:
        return self.layout.path(key)

    def _objects(self, prefix: str, path: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        with _s3_errors(path):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", [])

    def _head(self, path: str) -> dict[str, Any]:
        with _s3_errors(path):
            response: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self._key(path))
        return response

    # --- reading -------------------------------------------------------------------------

    def get_content(self, path: str) -> bytes:
        with _s3_errors(path):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
        return data

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        size = int(self._head(path)["ContentLength"])
        if offset < 0 or offset > size:
            raise InvalidOffset(path, offset)
        raw = _ObjectReader(self, path, size)
        raw.seek(offset)
        return io.BufferedReader(raw, buffer_size=1024 * 1024)

    def _open_range(self, path: str, offset: int) -> Any:
        with _s3_errors(path):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(path), Range=f"bytes={offset}-")[
                "Body"
            ]

    def stat(self, path: str) -> FileInfo:
        if path == "/":
            return FileInfo("/", 0, datetime.now(UTC), True)
        try:
            head = self._head(path)
        except PathNotFound:
            contents = self._first_below(path)
            if not contents:
                raise
            return FileInfo(path, 0, contents[0]["LastModified"], True)
        return FileInfo(path, int(head["ContentLength"]), head["LastModified"], False)

    def list(self, path: str) -> list[str]:
        prefix = self._dir_prefix(path)
        names: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        with _s3_errors(path):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
                names += (p["Prefix"][len(prefix) :] for p in page.get("CommonPrefixes", []))
                names += (o["Key"][len(prefix) :] for o in page.get("Contents", []))
        return children(path, names)

    def walk(self, path: str) -> Iterator[FileInfo]:
        prefix = self._dir_prefix(path)
        objects = self._objects(prefix, path)
        files = [(self._path(o["Key"]), int(o["Size"]), o["LastModified"]) for o in objects]
        yield from walked(files, path)

    def redirect_url(self, path: str, method: str = "GET") -> str | None:
        operation = {"GET": "get_object", "HEAD": "head_object"}[redirect_method(method)]
        with _s3_errors(path):
            url: str = self.client.generate_presigned_url(
                operation, Params={"Bucket": self.bucket, "Key": self._key(path)}, ExpiresIn=PRESIGN_SECONDS
            )
        return url

    # --- writing -------------------------------------------------------------------------

    def put_content(self, path: str, content: bytes) -> None:
        with _s3_errors(path):
            self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=bytes(content))

    def writer(self, path: str, append: bool = False) -> FileWriter:
        return _AppendWriter(self, path) if append else _ObjectWriter(self, path)

    def _is_file(self, path: str) -> bool:
        try:
            self._head(path)
        except PathNotFound:
            return False
        return True

    def move(self, source: str, dest: str) -> None:
        source_is_dir = not self._is_file(source)
        if source_is_dir and not self._first_below(source):
            raise PathNotFound(source)
        check_move(
            source,
            dest,
            source_is_dir,
            dest_is_file=source_is_dir and self._is_file(dest),
            dest_has_children=bool(self._first_below(dest)),
        )
        if source_is_dir:
            self._move_dir(source, dest)
            return
        self._copy(source, self._key(source), self._key(dest))
        with _s3_errors(source):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(source))

    def _copy(self, path: str, source_key: str, dest_key: str) -> None:
        """One CopyObject request (objects up to 5 GiB); the managed multipart copy, with
        its thread pool, only for larger ones."""
        source = {"Bucket": self.bucket, "Key": source_key}
        try:
            with _s3_errors(path):
                self.client.copy_object(CopySource=source, Bucket=self.bucket, Key=dest_key)
            return
        except StorageError as exc:
            cause = exc.__cause__
            code = cause.response.get("Error", {}).get("Code") if isinstance(cause, ClientError) else None
            if code not in ("InvalidRequest", "EntityTooLarge"):
                raise
        with _s3_errors(path):
            self.client.copy(source, self.bucket, dest_key)

    def _move_dir(self, source: str, dest: str) -> None:
        """Object stores have no directories: copy every key below, then delete the originals.
        Not atomic; a crash in between leaves both copies, never neither."""
        source_prefix, dest_prefix = self._dir_prefix(source), self._dir_prefix(dest)
        keys = [o["Key"] for o in self._objects(source_prefix, source)]
        for key in keys:
            self._copy(source, key, dest_prefix + key[len(source_prefix) :])
        self._delete_keys(source, keys)

    def _first_below(self, path: str) -> _Objects:
        """At most one object below directory `path` (none: no such directory)."""
        prefix = self._dir_prefix(path)
        with _s3_errors(path):
            listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        contents: _Objects = listing.get("Contents", [])
        return contents

    def delete(self, path: str) -> None:
        if path == "/":
            keys = [o["Key"] for o in self._objects(self._dir_prefix(path), path)]
        else:
            key = self._key(path)
            below = key + "/"
            objects = self._objects(key, path)  # also lists prefix siblings (`/a/bc` for `/a/b`)
            keys = [o["Key"] for o in objects if o["Key"] == key or o["Key"].startswith(below)]
            if not keys:
                raise PathNotFound(path)
        self._delete_keys(path, keys)

    def purge_unfinished_writes(self, before: datetime, dry_run: bool = False) -> Sequence[UnfinishedWrite]:
        uploads = self.client.get_paginator("list_multipart_uploads")
        with _s3_errors("/"):
            stale = [
                upload
                for page in uploads.paginate(Bucket=self.bucket, Prefix=self._dir_prefix("/"))
                for upload in page.get("Uploads", [])
                if upload["Initiated"] < before
            ]
        purged: list[UnfinishedWrite] = []
        for upload in stale:
            key, upload_id, path = upload["Key"], upload["UploadId"], self._path(upload["Key"])
            try:
                size, modified = self._parts_summary(path, key, upload_id, upload["Initiated"])
                if modified >= before:
                    continue  # started long ago, but a part arrived recently: still uploading
                if not dry_run:
                    with _s3_errors(path):
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except PathNotFound:
                continue  # completed or aborted while we looked
            purged.append(UnfinishedWrite(path, modified, size))
        return purged

    def _parts_summary(
        self, path: str, key: str, upload_id: str, initiated: datetime
    ) -> tuple[int, datetime]:
        """The bytes held by a multipart upload's parts and when the newest arrived."""
        size, modified = 0, initiated
        parts = self.client.get_paginator("list_parts")
        with _s3_errors(path):
            for page in parts.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                for part in page.get("Parts", []):
                    size += int(part["Size"])
                    modified = max(modified, part["LastModified"])
        return size, modified

    def _delete_keys(self, path: str, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            with _s3_errors(path):
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            for error in response.get("Errors") or []:
                failed = self._path(str(error.get("Key", ""))) if error.get("Key") else path
                raise _from_code(str(error.get("Code", "")), 0, str(error.get("Message", "")), failed)


class _ObjectReader(FileReader):
    """FileReader whose stream is a ranged GET; read errors are translated too."""

    def __init__(self, driver: S3Driver, path: str, size: int) -> None:
        super().__init__(driver, path, size)
        self._s3 = driver

    def _open(self) -> Any:
        if self._stream is None:
            self._stream = self._s3._open_range(self.path, self._offset)
        return self._stream

    def readinto(self, buffer: Any) -> int:
        with _s3_errors(self.path):
            return super().readinto(buffer)

    def readall(self) -> bytes:
        with _s3_errors(self.path):
            return super().readall()


class _ObjectWriter(ObjectWriter):
    """Buffers up to `chunk_size`, then streams parts of a multipart upload."""

    def __init__(self, driver: S3Driver, path: str, initial: bytes = b"") -> None:
        super().__init__(path)
        self._driver = driver
        self._key = driver._key(path)
        self._buffer = bytearray(initial)
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._size = len(initial)
        self._copy_from: tuple[int, str] | None = None  # (size, etag) of bytes to copy first

    def _ready(self) -> bool:
        return len(self._buffer) >= self._driver.chunk_size

    def _send(self) -> None:
        self._flush_part()

    def _start_upload(self) -> None:
        client, bucket = self._driver.client, self._driver.bucket
        with _s3_errors(self._path):
            self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._key)["UploadId"]
            if self._copy_from is not None:
                size, etag = self._copy_from
                ranges = max(1, -(-size // MAX_COPY_PART))
                step = -(-size // ranges)
                for start in range(0, size, step):
                    end = min(start + step, size) - 1
                    copied = client.upload_part_copy(
                        Bucket=bucket,
                        Key=self._key,
                        UploadId=self._upload_id,
                        PartNumber=len(self._parts) + 1,
                        CopySource={"Bucket": bucket, "Key": self._key},
                        CopySourceIfMatch=etag,
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                    etag = copied["CopyPartResult"]["ETag"]
                    self._parts.append({"PartNumber": len(self._parts) + 1, "ETag": etag})

    def _flush_part(self) -> None:
        if self._upload_id is None:
            self._start_upload()
        with _s3_errors(self._path):
            uploaded = self._driver.client.upload_part(
                Bucket=self._driver.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=len(self._parts) + 1,
                Body=bytes(self._buffer),
            )
        self._parts.append({"PartNumber": len(self._parts) + 1, "ETag": uploaded["ETag"]})
        self._buffer = bytearray()

    def _commit(self) -> None:
        client, bucket = self._driver.client, self._driver.bucket
        if self._upload_id is None and self._copy_from is None:
            with _s3_errors(self._path):
                client.put_object(Bucket=bucket, Key=self._key, Body=bytes(self._buffer))
            return
        if self._buffer or not self._parts:
            self._flush_part()
        with _s3_errors(self._path):
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )

    def _abort(self) -> None:
        if self._upload_id is not None:
            with _s3_errors(self._path):
                self._driver.client.abort_multipart_upload(
                    Bucket=self._driver.bucket, Key=self._key, UploadId=self._upload_id
                )


class _AppendWriter(_ObjectWriter):
    """Continues an object: small ones are re-uploaded, larger ones copied server-side."""

    def __init__(self, driver: S3Driver, path: str) -> None:
        self._guard_key = (driver.bucket, driver._key(path))
        with _guard.opening(self._guard_key, driver.lock_timeout, path):
            try:
                head = driver._head(path)
            except PathNotFound:
                head = None
            size = int(head["ContentLength"]) if head else 0
            initial = driver.get_content(path) if head and size < MIN_PART else b""
            super().__init__(driver, path, initial)
            self._created = head is None
            self._start = size
            if head is not None and size >= MIN_PART:
                self._copy_from = (size, str(head["ETag"]))
                self._size = size

    def commit(self) -> None:
        if self._state == "open" and not self._created and self._size == self._start:
            self._state = "committed"  # nothing appended: the object stays exactly as it was
            self._finished()
            return
        super().commit()

    def _finished(self) -> None:
        _guard.release(self._guard_key)
