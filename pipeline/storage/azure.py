"""Azure Blob Storage driver (the `azure-storage-blob` client), on the key layout of
distribution's azure driver (see `objects.KeyLayout`), with block blobs.

- New-file writers stage blocks of `chunk_size` as they fill and commit the block list
  at commit, so nothing is visible before; a file that never filled a block is one Put
  Blob. Cancel stages nothing more (the service discards uncommitted blocks after a
  week). A new blob whose writer died holds only uncommitted blocks: listings show it
  only on request, and `purge_unfinished_writes` removes it once older than the purge
  age. (Uncommitted blocks staged onto an existing blob cannot be dated; they go with the
  blob's deletion, or after the service's week.)
- Appending writers never send stored bytes again: they stage only the new bytes as
  blocks and commit the object's committed block list plus the new blocks, conditional on
  the ETag seen at open. The committed block list is the upload's whole state, so an
  upload survives any restart. (A non-empty blob written in one Put Blob — by
  `put_content` or another tool — has no block list; its bytes are staged once as a block
  on the first append.) A blob holds at most 50,000 committed blocks.
- Redirects are SAS URLs signed with the account key (read-only, 20 minutes).
- `serviceurl` (distribution 3's key) replaces `https://<accountname>.blob.<realm>`, e.g.
  for Azurite.

SDK errors are translated to `pipeline.errors` in one place, `_translate`: throttling,
5xx, conditional-commit races and connection failures become StorageUnavailable.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core import exceptions as aexc
from azure.storage.blob import BlobBlock, BlobSasPermissions, BlobServiceClient, generate_blob_sas

from pipeline.errors import PathNotFound, StorageError, StorageUnavailable
from pipeline.storage.driver import Capabilities, FileWriter, UnfinishedWrite
from pipeline.storage.objects import (
    AppendGuard,
    KeyLayout,
    ListedObjectStore,
    ObjectWriter,
    children,
    chunks,
    redirect_method,
)

DEFAULT_CHUNK = 8 * 1024 * 1024
MAX_BLOCKS = 50_000  # committed blocks per blob
SAS_SECONDS = 20 * 60  # distribution's redirect lifetime
ID_BYTES = 16  # every block id of a blob must have the same length
_UNCHANGED = MatchConditions.IfNotModified

_TRANSIENT = (
    aexc.ServiceRequestError,
    aexc.ServiceResponseError,
    aexc.ResourceModifiedError,  # the blob changed under a conditional commit: try again
    aexc.ResourceNotModifiedError,
    ConnectionError,
    TimeoutError,
)


_RACES = frozenset({"InvalidBlockList"})  # a concurrent commit discarded our staged blocks


def _translate(exc: BaseException, path: str) -> StorageError:
    """The one map from azure-core / azure-storage-blob errors to driver errors."""
    if isinstance(exc, aexc.ResourceNotFoundError):
        return PathNotFound(path)
    status = int(getattr(exc, "status_code", 0) or 0)
    raw = getattr(exc, "error_code", "") or ""
    code = str(getattr(raw, "value", raw))
    text = f"{path}: {code or status or type(exc).__name__}: {getattr(exc, 'reason', '') or exc}"
    if status == 404:
        return PathNotFound(path)
    if isinstance(exc, _TRANSIENT) or status >= 500 or status in (408, 412, 429) or code in _RACES:
        return StorageUnavailable(text)
    return StorageError(text)


@contextlib.contextmanager
def _azure_errors(path: str) -> Iterator[None]:
    try:
        yield
    except aexc.AzureError as exc:
        raise _translate(exc, path) from exc


def _block_id(length: int = ID_BYTES) -> str:
    return base64.b64encode(secrets.token_bytes(length)).decode("ascii")


_guard = AppendGuard()


class AzureDriver(ListedObjectStore):
    """Blobs in `container` under `root_directory`."""

    name = "azure"
    capabilities = Capabilities(redirect=True, walk=True)

    def __init__(
        self,
        account_name: str,
        account_key: str,
        container: str,
        *,
        realm: str = "core.windows.net",
        service_url: str = "",
        root_directory: str = "",
        chunk_size: int = DEFAULT_CHUNK,
        lock_timeout: float = 30.0,
        max_attempts: int = 5,
        connect_timeout: float = 10.0,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.account_name = account_name
        self.account_key = account_key
        self.container_name = container
        self.chunk_size = max(chunk_size, 64 * 1024)
        self.lock_timeout = lock_timeout
        self.layout = KeyLayout(root_directory)
        url = service_url.rstrip("/") or f"https://{account_name}.blob.{realm}"
        self.service = BlobServiceClient(
            account_url=url,
            credential={"account_name": account_name, "account_key": account_key},
            retry_total=max(max_attempts - 1, 0),
            connection_timeout=connect_timeout,
            **(client_options or {}),
        )
        self.container = self.service.get_container_client(container)

    def __repr__(self) -> str:
        return f"AzureDriver(container={self.container_name!r}, root={self.layout.prefix!r})"

    def _blob(self, key: str) -> Any:
        return self.container.get_blob_client(key)

    def _head(self, path: str) -> Any:
        """The blob's properties (size, etag, last_modified), or None when absent."""
        try:
            with _azure_errors(path):
                return self._blob(self.layout.key(path)).get_blob_properties()
        except PathNotFound:
            return None

    def _keys(self, prefix: str, path: str, limit: int | None = None) -> Iterator[Any]:
        with _azure_errors(path):
            yield from self.container.list_blobs(name_starts_with=prefix or None, results_per_page=limit)

    # --- reading -------------------------------------------------------------------------

    def get_content(self, path: str) -> bytes:
        with _azure_errors(path):
            data: bytes = self._blob(self.layout.key(path)).download_blob().readall()
        return data

    def _version(self, head: Any) -> str:
        return str(head.etag)

    def _read_range(self, path: str, etag: Any, start: int, length: int) -> bytes:
        with _azure_errors(path):
            data: bytes = (
                self._blob(self.layout.key(path))
                .download_blob(offset=start, length=length, etag=etag, match_condition=_UNCHANGED)
                .readall()
            )
        return data

    def _size_and_modified(self, obj: Any) -> tuple[int, datetime]:
        return int(obj.size), obj.last_modified

    def list(self, path: str) -> list[str]:
        prefix = self.layout.dir_prefix(path)
        with _azure_errors(path):
            listed = self.container.walk_blobs(name_starts_with=prefix or None, delimiter="/")
            return children(path, (item.name[len(prefix) :] for item in listed))

    def redirect_url(self, path: str, method: str = "GET") -> str | None:
        redirect_method(method)
        key = self.layout.key(path)
        sas = generate_blob_sas(
            self.account_name,
            self.container_name,
            key,
            account_key=self.account_key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(UTC) + timedelta(seconds=SAS_SECONDS),
        )
        return f"{self._blob(key).url}?{sas}"

    # --- writing -------------------------------------------------------------------------

    def put_content(self, path: str, content: bytes) -> None:
        with _azure_errors(path):
            self._blob(self.layout.key(path)).upload_blob(bytes(content), overwrite=True)

    def writer(self, path: str, append: bool = False) -> FileWriter:
        return _AppendWriter(self, path) if append else _BlockWriter(self, path)

    def _copy(self, path: str, source_key: str, dest_key: str, poll_seconds: float = 300.0) -> None:
        """Server-side Copy Blob; waits for an asynchronous copy to finish."""
        target = self._blob(dest_key)
        with _azure_errors(path):
            copy = target.start_copy_from_url(self._blob(source_key).url)
            status = copy.get("copy_status")
            deadline = time.monotonic() + poll_seconds
            while status == "pending":
                if time.monotonic() > deadline:
                    raise StorageUnavailable(f"{path}: server-side copy pending after {poll_seconds:.0f} s")
                time.sleep(0.2)
                status = target.get_blob_properties().copy.status
        if status != "success":
            raise StorageError(f"{path}: server-side copy ended {status}")

    def _delete_keys(self, path: str, keys: Sequence[str]) -> None:
        for key in keys:
            with contextlib.suppress(PathNotFound), _azure_errors(path):
                self._blob(key).delete_blob()

    def purge_unfinished_writes(self, before: datetime, dry_run: bool = False) -> Sequence[UnfinishedWrite]:
        """Blobs of uncommitted blocks only (their Last-Modified: the first block staged).
        Delete Blob does not reach them, so each is committed empty — only while it still
        has no committed version — and that empty blob is deleted."""
        with _azure_errors("/"):
            listed = self.container.list_blobs(
                name_starts_with=self.layout.dir_prefix("/") or None, include=["uncommittedblobs"]
            )
            # A blob of uncommitted blocks lists with size 0; a committed one answers HEAD.
            candidates = [b for b in listed if int(b.size) == 0 and b.last_modified < before]
        purged: list[UnfinishedWrite] = []
        for item in candidates:
            path = self.layout.path(item.name)
            if self._head(path) is not None:
                continue
            blob = self._blob(item.name)
            with _azure_errors(path):
                _, uncommitted = blob.get_block_list("uncommitted")
                if not dry_run and not self._discard_uncommitted(blob):
                    continue
            purged.append(UnfinishedWrite(path, item.last_modified, sum(int(b.size) for b in uncommitted)))
        return purged

    @staticmethod
    def _discard_uncommitted(blob: Any) -> bool:
        """Commit an empty block list unless the blob was committed meanwhile (False),
        then delete that empty blob unless it changed since."""
        try:
            empty = blob.commit_block_list([], match_condition=MatchConditions.IfMissing)
            blob.delete_blob(etag=empty["etag"], match_condition=_UNCHANGED)
        except (aexc.ResourceExistsError, aexc.ResourceModifiedError, aexc.ResourceNotFoundError):
            return False  # a writer committed it after all: it is no leftover
        return True


class _BlockWriter(ObjectWriter):
    """Stages a block per `chunk_size` written; commit commits `base` + the new blocks.
    Cancel has nothing to abort: the service drops blocks that are never committed."""

    def __init__(self, driver: AzureDriver, path: str) -> None:
        super().__init__(path)
        self._driver = driver
        self._blob = driver._blob(driver.layout.key(path))
        self._buffer = bytearray()
        self._base: list[str] = []  # committed block ids this writer continues
        self._blocks: list[str] = []  # blocks staged by this writer
        self._id_bytes = ID_BYTES
        self._condition: dict[str, Any] = {}
        self._before: str | None = None  # the blob's ETag ("" absent) before the first staged block
        self._start = 0  # the size of the blob this writer continues

    def _ready(self) -> bool:
        return len(self._buffer) >= self._driver.chunk_size

    def _send(self) -> None:
        self._stage(self._driver.chunk_size)

    def _stage(self, whole: int) -> None:
        """Stage the buffer's leading multiple of `whole` bytes (all of it for whole=1)."""
        cut = len(self._buffer) // whole * whole
        if cut and not self._blocks and self._before is None:
            head = self._driver._head(self._path)
            self._before = str(head.etag) if head is not None else ""
        with _azure_errors(self._path):
            for piece in chunks(memoryview(self._buffer)[:cut], self._driver.chunk_size):
                block = _block_id(self._id_bytes)
                self._blob.stage_block(block, piece)
                self._blocks.append(block)
        del self._buffer[:cut]

    def _commit(self) -> None:
        if not self._blocks and not self._base and not self._condition:
            with _azure_errors(self._path):  # small new file: one Put Blob
                self._blob.upload_blob(bytes(self._buffer), overwrite=True)
            return
        self._stage(1)
        blocks = self._base + self._blocks
        if len(blocks) > MAX_BLOCKS:
            raise StorageError(f"{self._path}: more than {MAX_BLOCKS} blocks (Azure's limit per blob)")
        try:
            with _azure_errors(self._path):
                self._blob.commit_block_list([BlobBlock(b) for b in blocks], **self._condition)
        except StorageUnavailable:
            if not self._superseded():
                raise

    def _superseded(self) -> bool:
        """Whether another writer committed this blob after our first block was staged —
        which discards our uncommitted blocks (Put Block List drops every block it does
        not name). Then our whole content was replaced by theirs: the same end state as
        our commit followed by theirs, which is what concurrent writers of one path may
        get on every driver. Appenders (conditional commits) never count as superseded."""
        if self._condition or self._before is None:
            return False
        head = self._driver._head(self._path)
        return head is not None and str(head.etag) != self._before


class _AppendWriter(_BlockWriter):
    """Continues a blob from its committed block list."""

    def __init__(self, driver: AzureDriver, path: str) -> None:
        super().__init__(driver, path)
        self._guard_key = (driver.container_name, driver.layout.key(path))
        with _guard.opening(self._guard_key, driver.lock_timeout, path):
            self._open()

    def _open(self) -> None:
        head = self._driver._head(self._path)
        self._created = head is None
        if head is None:
            self._condition = {"match_condition": MatchConditions.IfMissing}
            return
        self._condition = {"etag": head.etag, "match_condition": MatchConditions.IfNotModified}
        self._start = self._size = int(head.size)
        if self._start == 0:
            return
        with _azure_errors(self._path):
            committed, _ = self._blob.get_block_list("committed")
        if sum(int(b.size) for b in committed) == self._start:
            self._base = [str(b.id) for b in committed]
            if self._base:
                self._id_bytes = len(base64.b64decode(self._base[0]))
            return
        # Written in one Put Blob: no block list yet. Stage its bytes once as blocks.
        content = self._driver.get_content(self._path)
        self._buffer = bytearray(content)
        self._stage(self._driver.chunk_size)
        self._stage(1)
        self._base, self._blocks = self._blocks, []

    def _commit(self) -> None:
        if not self._created and self._size == self._start:
            return  # nothing appended: the blob stays exactly as it was
        super()._commit()

    def _finished(self) -> None:
        _guard.release(self._guard_key)
