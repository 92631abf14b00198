"""Google Cloud Storage driver (the `google-cloud-storage` client), on the key layout of
distribution's gcs driver (see `objects.KeyLayout`).

- New-file writers buffer up to `chunk_size`; a small file is one upload, a larger one
  streams through a resumable upload session in `chunk_size` pieces (a multiple of
  256 KiB). Nothing is visible before commit finalizes the session; cancel abandons it
  (GCS drops unfinalized sessions after a week; they are never listed).
- Appending writers never send stored bytes again: the new bytes go to a temporary part
  object (hidden from listings), and commit composes `[object, part]` onto the object
  server-side, conditional on the generation seen at open, then deletes the part. The
  appended object is all there is: an upload survives any restart of the process. A part
  left by a process that died before composing is removed by `purge_unfinished_writes`
  once older than the purge age (the resumable sessions of dead writers are never listed
  and cost nothing; GCS drops them after a week).
- Redirects are V4 signed URLs; they need a service-account key (`keyfile` or
  `credentials`), so without one `capabilities.redirect` is false.
- `endpoint` (a Lading key, for emulators such as fake-gcs-server) sends API calls to that
  URL unauthenticated; a configured key is then used only to sign URLs.

SDK errors are translated to `pipeline.errors` in one place, `_translate`: throttling,
5xx, precondition races and connection failures become StorageUnavailable.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import requests
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exc
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from pipeline.errors import PathNotFound, StorageError, StorageUnavailable, UnsupportedMethod
from pipeline.storage.driver import Capabilities, FileWriter, UnfinishedWrite
from pipeline.storage.objects import (
    HIDDEN,
    AppendGuard,
    KeyLayout,
    ListedObjectStore,
    ObjectWriter,
    children,
    redirect_method,
)

CHUNK_UNIT = 256 * 1024  # resumable upload chunks are multiples of this
DEFAULT_CHUNK = 16 * 1024 * 1024
SIGN_SECONDS = 20 * 60  # distribution's redirect lifetime
SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
PARTS = "parts/"  # appenders' part objects: hidden names below this

_TRANSIENT = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    gexc.RetryError,
    gexc.DeadlineExceeded,
    gexc.PreconditionFailed,  # the object changed under a conditional write: try again
    requests.ConnectionError,
    requests.Timeout,
    auth_exc.TransportError,
    ConnectionError,
    TimeoutError,
)


def _status(exc: BaseException) -> int:
    """The HTTP status of a resumable-media error (`exc.response.status_code`), else 0."""
    response = getattr(exc, "response", None)
    return int(getattr(response, "status_code", 0) or 0)


def _translate(exc: BaseException, path: str) -> StorageError:
    """The one map from google-cloud-storage errors to driver errors."""
    if isinstance(exc, gexc.NotFound) or _status(exc) == 404:
        return PathNotFound(path)
    status = _status(exc) or int(getattr(exc, "code", 0) or 0)
    if isinstance(exc, _TRANSIENT) or status >= 500 or status in (408, 412, 429):
        return StorageUnavailable(f"{path}: {exc}")
    return StorageError(f"{path}: {exc}")


_SDK_ERRORS = (gexc.GoogleAPIError, requests.RequestException, auth_exc.GoogleAuthError, OSError, ValueError)


@contextlib.contextmanager
def _gcs_errors(path: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except _SDK_ERRORS as exc:
        raise _translate(exc, path) from exc
    except Exception as exc:  # resumable-media's InvalidResponse / DataCorruption
        if hasattr(exc, "response"):
            raise _translate(exc, path) from exc
        raise


def service_account(keyfile: str = "", info: dict[str, Any] | None = None) -> Credentials | None:
    """Service-account credentials from a key file or distribution's `credentials` map."""
    from google.oauth2 import service_account as sa

    if keyfile:
        return sa.Credentials.from_service_account_file(keyfile, scopes=SCOPES)
    if info:
        return sa.Credentials.from_service_account_info(dict(info), scopes=SCOPES)
    return None


_guard = AppendGuard()


class GCSDriver(ListedObjectStore):
    """Objects in `bucket` under `root_directory`."""

    name = "gcs"

    def __init__(
        self,
        bucket: str,
        *,
        root_directory: str = "",
        keyfile: str = "",
        credentials: dict[str, Any] | None = None,
        endpoint: str = "",
        project: str = "",
        chunk_size: int = DEFAULT_CHUNK,
        lock_timeout: float = 30.0,
        retry_deadline: float = 60.0,
        timeout: float = 60.0,
        http: requests.Session | None = None,
    ) -> None:
        self.bucket_name = bucket
        self.chunk_size = max(CHUNK_UNIT, chunk_size // CHUNK_UNIT * CHUNK_UNIT)
        self.lock_timeout = lock_timeout
        self.layout = KeyLayout(root_directory)
        self.endpoint = endpoint.rstrip("/")
        self.signer = service_account(keyfile, credentials)
        self.capabilities = Capabilities(redirect=self.signer is not None, walk=True)
        if self.endpoint:
            api: Credentials | None = AnonymousCredentials()
        else:
            api = self.signer  # None → google.auth's default chain
        project = project or str(
            (credentials or {}).get("project_id") or getattr(self.signer, "project_id", "")
        )
        options = {"api_endpoint": self.endpoint} if self.endpoint else None
        self.client = storage.Client(
            project=project or "lading", credentials=api, client_options=options, _http=http
        )
        self.bucket = self.client.bucket(bucket)
        self.http = http or requests.Session()  # resumable chunks: the session URI is the credential
        self._retry: Retry = DEFAULT_RETRY.with_deadline(retry_deadline)
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"GCSDriver(bucket={self.bucket_name!r}, root={self.layout.prefix!r})"

    def _blob(self, key: str, generation: int | None = None) -> Any:
        return self.bucket.blob(key, generation=generation)

    def _head(self, path: str) -> Any:
        """The object's resource (size, generation, updated), or None when absent."""
        with _gcs_errors(path):
            return self.bucket.get_blob(self.layout.key(path), retry=self._retry, timeout=self._timeout)

    def _keys(self, prefix: str, path: str, limit: int | None = None) -> Iterator[Any]:
        with _gcs_errors(path):
            yield from self.client.list_blobs(
                self.bucket, prefix=prefix, max_results=limit, retry=self._retry, timeout=self._timeout
            )

    # --- reading -------------------------------------------------------------------------

    def get_content(self, path: str) -> bytes:
        with _gcs_errors(path):
            data: bytes = self._blob(self.layout.key(path)).download_as_bytes(
                retry=self._retry, timeout=self._timeout
            )
        return data

    def _version(self, head: Any) -> int:
        return int(head.generation)

    def _read_range(self, path: str, generation: Any, start: int, length: int) -> bytes:
        with _gcs_errors(path):
            data: bytes = self._blob(self.layout.key(path), generation).download_as_bytes(
                start=start, end=start + length - 1, retry=self._retry, timeout=self._timeout
            )
        return data

    def _size_and_modified(self, obj: Any) -> tuple[int, datetime]:
        return int(obj.size or 0), obj.updated

    def list(self, path: str) -> list[str]:
        prefix = self.layout.dir_prefix(path)
        names: list[str] = []
        with _gcs_errors(path):
            pages = self.client.list_blobs(
                self.bucket, prefix=prefix, delimiter="/", retry=self._retry, timeout=self._timeout
            )
            for page in pages.pages:
                names += (b.name[len(prefix) :] for b in page)
                names += (p[len(prefix) :] for p in page.prefixes)
        return children(path, (n for n in names if path != "/" or n.rstrip("/") != HIDDEN))

    def redirect_url(self, path: str, method: str = "GET") -> str | None:
        redirect_method(method)
        if self.signer is None:
            raise UnsupportedMethod("redirect_url: GCS signed URLs need a service-account key")
        with _gcs_errors(path):
            url: str = self._blob(self.layout.key(path)).generate_signed_url(
                version="v4",
                expiration=timedelta(seconds=SIGN_SECONDS),
                method=method.upper(),
                credentials=self.signer,
                api_access_endpoint=self.endpoint or "https://storage.googleapis.com",
            )
        return url

    # --- writing -------------------------------------------------------------------------

    def put_content(self, path: str, content: bytes) -> None:
        with _gcs_errors(path):
            self._blob(self.layout.key(path)).upload_from_string(
                bytes(content), retry=self._retry, timeout=self._timeout
            )

    def writer(self, path: str, append: bool = False) -> FileWriter:
        if append:
            return _AppendWriter(self, path)
        return _ObjectWriter(self, path, self.layout.key(path))

    def _copy(self, path: str, source_key: str, dest_key: str) -> None:
        with _gcs_errors(path):
            self.bucket.copy_blob(
                self._blob(source_key), self.bucket, dest_key, retry=self._retry, timeout=self._timeout
            )

    def _delete_keys(self, path: str, keys: Sequence[str]) -> None:
        for key in keys:
            with contextlib.suppress(PathNotFound), _gcs_errors(path):
                self._blob(key).delete(retry=self._retry, timeout=self._timeout)

    def purge_unfinished_writes(self, before: datetime, dry_run: bool = False) -> Sequence[UnfinishedWrite]:
        stale = [b for b in self._keys(self.layout.hidden(PARTS), "/") if b.updated < before]
        if not dry_run:
            self._delete_keys("/", [b.name for b in stale])
        return [UnfinishedWrite(self.layout.path(b.name), b.updated, int(b.size or 0)) for b in stale]


class _ResumableSession:
    """One resumable upload session (created with the client's public
    `create_resumable_upload_session`; its URI authorizes the chunk PUTs by itself). Chunks
    are multiples of 256 KiB except the last; a chunk the service did not confirm is sent
    again from the offset it reports. Cancel deletes the session: no object ever appears."""

    def __init__(self, driver: GCSDriver, path: str, key: str, if_generation_match: int | None) -> None:
        self._driver = driver
        self._path = path
        with _gcs_errors(path):
            self.url: str = driver._blob(key).create_resumable_upload_session(
                if_generation_match=if_generation_match, timeout=driver._timeout, retry=driver._retry
            )
        self.offset = 0

    def send(self, data: bytes, final: bool, attempts: int = 5) -> None:
        start, view = self.offset, memoryview(data)
        for attempt in range(attempts):
            skip = self.offset - start
            body = view[skip:]
            end = self.offset + len(body) - 1
            total = str(self.offset + len(body)) if final else "*"
            span = f"{self.offset}-{end}" if len(body) else "*"
            try:
                with _gcs_errors(self._path):
                    response = self._driver.http.put(
                        self.url,
                        data=bytes(body),
                        headers={"Content-Range": f"bytes {span}/{total}"},
                        timeout=self._driver._timeout,
                    )
            except StorageUnavailable:
                if attempt == attempts - 1:
                    raise
                self._query()
                continue
            if response.status_code in (200, 201) and final:
                self.offset += len(body)
                return
            if response.status_code == 308 and not final:
                self._confirmed(response)
                if self.offset == start + len(data):
                    return
                continue
            if response.status_code >= 500 or response.status_code == 429:
                if attempt == attempts - 1:
                    break
                self._query()
                continue
            raise _from_status(response, self._path)
        raise StorageUnavailable(
            f"{self._path}: resumable upload did not accept a chunk after {attempts} tries"
        )

    def _confirmed(self, response: requests.Response) -> None:
        received = response.headers.get("Range", "")  # "bytes=0-N"; absent: nothing yet
        self.offset = int(received.rsplit("-", 1)[1]) + 1 if received else 0

    def _query(self) -> None:
        with _gcs_errors(self._path):
            response = self._driver.http.put(
                self.url, headers={"Content-Range": "bytes */*"}, timeout=self._driver._timeout
            )
        if response.status_code == 308:
            self._confirmed(response)
        elif response.status_code >= 400:
            raise _from_status(response, self._path)

    def cancel(self) -> None:
        with contextlib.suppress(StorageError, requests.RequestException):
            self._driver.http.delete(self.url, timeout=self._driver._timeout)


def _from_status(response: requests.Response, path: str) -> StorageError:
    text = f"{path}: resumable upload answered {response.status_code}: {response.text[:200]}"
    if response.status_code == 404:
        return StorageError(text)  # the session expired or was cancelled
    if response.status_code >= 500 or response.status_code in (408, 412, 429):
        return StorageUnavailable(text)
    return StorageError(text)


class _ObjectWriter(ObjectWriter):
    """Buffers up to `chunk_size`; past that, streams a resumable upload session. The
    object appears only when commit finalizes (conditional on `if_generation_match`)."""

    def __init__(
        self, driver: GCSDriver, path: str, key: str, if_generation_match: int | None = None
    ) -> None:
        super().__init__(path)
        self._driver = driver
        self._key = key
        self._match = if_generation_match
        self._session: _ResumableSession | None = None

    def _ready(self) -> bool:
        # More than a chunk: bytes are kept back, as the final chunk may not be empty.
        return len(self._buffer) > self._driver.chunk_size

    def _send(self) -> None:
        if self._session is None:
            self._session = _ResumableSession(self._driver, self._path, self._key, self._match)
        chunk = self._driver.chunk_size
        cut = (len(self._buffer) - 1) // chunk * chunk
        self._session.send(bytes(self._buffer[:cut]), final=False)
        del self._buffer[:cut]

    def _commit(self) -> None:
        if self._session is not None:
            self._session.send(bytes(self._buffer), final=True)
            self._session = None
            return
        with _gcs_errors(self._path):
            self._driver._blob(self._key).upload_from_string(
                bytes(self._buffer),
                if_generation_match=self._match,
                retry=self._driver._retry,
                timeout=self._driver._timeout,
            )

    def _abort(self) -> None:
        if self._session is not None:
            self._session.cancel()
            self._session = None


class _AppendWriter(ObjectWriter):
    """Appends through a hidden part object composed onto the object at commit."""

    def __init__(self, driver: GCSDriver, path: str) -> None:
        super().__init__(path)
        self._driver = driver
        self._key = driver.layout.key(path)
        self._guard_key = (driver.bucket_name, self._key)
        with _guard.opening(self._guard_key, driver.lock_timeout, path):
            head = driver._head(path)
            self._start = int(head.size or 0) if head is not None else 0
            self._generation = int(head.generation) if head is not None else 0  # 0: must not exist
            self._part_key: str | None = None
            if self._start == 0:
                # Nothing stored yet: write the object itself (replacing the empty one).
                self._inner = _ObjectWriter(driver, path, self._key, self._generation)
            else:
                self._part_key = driver.layout.hidden(PARTS + uuid.uuid4().hex)
                self._inner = _ObjectWriter(driver, path, self._part_key, 0)
            self._created = head is None

    @property
    def size(self) -> int:
        return self._start + self._inner.size

    def write(self, data: bytes) -> int:
        self._check_open()
        try:
            return self._inner.write(data)
        except BaseException:
            self.cancel()
            raise

    def _commit(self) -> None:
        if self._inner.size or self._created:
            self._inner.commit()
            if self._part_key is not None:
                self._compose()
        else:
            self._inner.cancel()  # nothing appended: the object stays exactly as it was

    def _compose(self) -> None:
        driver, part = self._driver, self._part_key
        assert part is not None
        try:
            with _gcs_errors(self._path):
                driver._blob(self._key).compose(
                    [driver._blob(self._key, self._generation), driver._blob(part)],
                    if_generation_match=self._generation,
                    retry=driver._retry,
                    timeout=driver._timeout,
                )
        finally:
            driver._delete_keys(self._path, [part])

    def _abort(self) -> None:
        self._inner.cancel()
        if self._part_key is not None and self._inner._state == "committed":
            self._driver._delete_keys(self._path, [self._part_key])

    def _finished(self) -> None:
        _guard.release(self._guard_key)
