"""The one tree of domain errors, and their wire form for crossing the job boundary.

```
LadingError
├── ConfigurationError                wrong type / unknown driver / missing key, at start-up
├── StorageError                      raised by storage drivers (translated there, once)
│   ├── PathNotFound                  no file or directory at the path
│   ├── InvalidPath                   the path breaks the path grammar (`..`, empty segment, ...)
│   ├── InvalidOffset                 a read or append at an offset the file does not have
│   ├── PathExists                    a move onto a directory that holds files (or dir onto file)
│   ├── UnsupportedMethod             the driver lacks an optional capability
│   └── StorageUnavailable            transient backend failure; the only *retryable* error
├── JobsUnavailable                   the job broker or result backend is unreachable (503)
├── DeliveryFailed                    a webhook endpoint did not accept a notification (retried)
└── RegistryError                     what a registry client can be told (api maps to OCI codes)
    ├── NameInvalid                   repository name breaks the distribution-spec grammar
    ├── NameUnknown                   repository does not exist
    ├── TagInvalid                    tag breaks the tag grammar
    ├── DigestInvalid                 malformed digest, unsupported algorithm, or content mismatch
    ├── SizeInvalid                   declared size differs from the stored size
    ├── BlobUnknown                   blob not linked into (or not present in) the repository
    │   └── BlobCorrupt               blob quarantined: its stored bytes no longer match its digest
    ├── BlobUploadUnknown             no such upload session
    ├── BlobUploadInvalid             the upload cannot proceed (bad chunk, bad state)
    ├── RangeInvalid                  chunk does not start at the session's current offset
    ├── ManifestUnknown               no manifest for that tag or digest
    ├── ManifestInvalid               unparseable, unsupported media type, too large, bad field
    ├── ManifestBlobUnknown           manifest references blobs/manifests missing here (all listed)
    ├── LayerInvalid                  a layer blob is not a (gzip/zstd-compressed) tar archive
    ├── OperationUnsupported          disabled by configuration (e.g. deletes)
    ├── Unauthorized                  no or invalid credentials
    ├── Denied                        valid credentials lacking the required action
    ├── TooManyRequests               a limit was hit; try later
    ├── JobTimeout                    a job did not finish within the bounded wait
    └── UpstreamUnavailable           a proxied upstream is unreachable, refused us or sent bad bytes
```

Errors cross the Celery boundary as plain dicts (`to_payload` / `from_payload`) so
the API can re-raise exactly what the worker raised without importing worker code.
"""

from __future__ import annotations

from typing import Any, ClassVar


class LadingError(Exception):
    """Base of every error Lading raises on purpose."""

    message: ClassVar[str] = "lading error"

    def __init__(self, detail: Any = None, message: str | None = None) -> None:
        self.detail = detail
        self.text = message or self.message
        super().__init__(self.text if detail is None else f"{self.text}: {detail}")

    def to_payload(self) -> dict[str, Any]:
        """A JSON-serialisable form that `from_payload` turns back into this error."""
        return {"kind": type(self).__name__, "message": self.text, "detail": self.detail}


# --- storage --------------------------------------------------------------------------


class ConfigurationError(LadingError):
    """Raised at start-up for a configuration that cannot run: a wrong type, an unknown
    storage driver, a missing required key. The message names the key."""

    message = "invalid configuration"


class StorageError(LadingError):
    """A storage driver could not do what was asked."""

    message = "storage error"


class PathNotFound(StorageError):
    """Raised when the path names no file (or directory, for list/delete)."""

    message = "path not found"

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(path)


class InvalidPath(StorageError):
    """Raised before any driver sees a path that breaks the path grammar."""

    message = "invalid path"

    def __init__(self, path: str, reason: str = "") -> None:
        self.path = path
        super().__init__({"path": path, "reason": reason})


class InvalidOffset(StorageError):
    """Raised for a read past the end of a file, or a negative offset."""

    message = "invalid offset"

    def __init__(self, path: str, offset: int) -> None:
        self.path = path
        self.offset = offset
        super().__init__({"path": path, "offset": offset})


class PathExists(StorageError):
    """Raised by `move` when the destination is a directory holding files, or a file while
    the source is a directory. Every driver refuses the same way and changes nothing."""

    message = "destination exists"


class UnsupportedMethod(StorageError):
    """Raised when an optional driver capability (redirect, walk, ...) is absent."""

    message = "unsupported storage method"


class StorageUnavailable(StorageError):
    """Transient backend failure (timeouts, throttling). Jobs retry it; the API says 503."""

    message = "storage temporarily unavailable"


class JobsUnavailable(LadingError):
    """The job broker (sending a job) or the result backend (waiting for one) cannot be
    reached. Nothing was committed; the client retries later (503 + Retry-After). Distinct
    from StorageUnavailable so the operator is told which service is down."""

    message = "job broker or result backend temporarily unavailable"


class DeliveryFailed(LadingError):
    """Raised when a notification endpoint could not be reached or answered outside 2xx/3xx.
    Transient by nature: the notify job retries it with backoff (it is no RegistryError,
    so `run_job` lets it through to the task layer)."""

    message = "notification delivery failed"


# --- registry -------------------------------------------------------------------------


class RegistryError(LadingError):
    """An error a registry client is told about, mapped to an OCI code by the API."""


class NameInvalid(RegistryError):
    """Raised when a repository name breaks the distribution-spec grammar."""

    message = "invalid repository name"


class NameUnknown(RegistryError):
    """Raised when a repository has no manifests, tags or layers at all."""

    message = "repository name not known to registry"


class TagInvalid(RegistryError):
    """Raised when a tag breaks `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`."""

    message = "manifest tag did not match URI"


class DigestInvalid(RegistryError):
    """Raised for a malformed digest, an unsupported algorithm, or content that hashes
    to something other than the digest the client declared."""

    message = "provided digest did not match uploaded content"


class SizeInvalid(RegistryError):
    """Raised when a declared length differs from the bytes stored."""

    message = "provided length did not match content length"


class BlobUnknown(RegistryError):
    """Raised when a blob is not linked into the repository (or absent from storage)."""

    message = "blob unknown to registry"


class BlobCorrupt(BlobUnknown):
    """Raised instead of serving a blob that scrub quarantined because its stored bytes no
    longer hash to its digest. A subclass of BlobUnknown on purpose: every caller that
    checks for a blob (HEAD, manifest verification, mount, commit) treats it as absent, so
    a client pushes it again and that push replaces the bad bytes."""

    message = "blob unknown to registry: stored content failed verification and is quarantined"


class BlobUploadUnknown(RegistryError):
    """Raised when an upload session id names no live session in the repository."""

    message = "blob upload unknown to registry"


class BlobUploadInvalid(RegistryError):
    """Raised when an upload cannot proceed (malformed chunk headers, bad state)."""

    message = "blob upload invalid"


class RangeInvalid(RegistryError):
    """Raised when a chunk does not start at the session's current offset (HTTP 416)."""

    message = "invalid content range"

    def __init__(self, detail: Any = None, *, current_size: int | None = None) -> None:
        self.current_size = current_size
        super().__init__(detail)


class ManifestUnknown(RegistryError):
    """Raised when no manifest exists for the tag or digest in the repository."""

    message = "manifest unknown"


class ManifestInvalid(RegistryError):
    """Raised for an unparseable or unsupported manifest (incl. schema1, over 4 MiB, a
    malformed descriptor, or a deep-verification failure under the reject policy). A
    digest-in-URL that differs from the body's digest is DigestInvalid, as in distribution."""

    message = "manifest invalid"


class ManifestBlobUnknown(RegistryError):
    """Raised when a manifest references blobs or child manifests missing from the
    repository. `digests` lists every one of them, not just the first."""

    message = "blob unknown to registry"

    def __init__(self, digests: list[str]) -> None:
        self.digests = list(digests)
        super().__init__(self.digests)


class LayerInvalid(RegistryError):
    """Raised when a layer blob is not a tar archive, plain or gzip/zstd-compressed:
    a bad or truncated compressed stream, a corrupt or truncated tar header or body."""

    message = "layer is not a valid tar archive"


class OperationUnsupported(RegistryError):
    """Raised when an operation is disabled by configuration (e.g. deletes)."""

    message = "the operation is unsupported"


class Unauthorized(RegistryError):
    """Raised when credentials are missing or invalid. `challenge` is the
    `WWW-Authenticate` value the response carries (set by api.auth; None elsewhere)."""

    message = "authentication required"
    challenge: str | None = None


class Denied(RegistryError):
    """Raised when valid credentials lack the action the request needs."""

    message = "requested access to the resource is denied"


class TooManyRequests(RegistryError):
    """Raised when a rate or concurrency limit was hit."""

    message = "too many requests"


class JobTimeout(RegistryError):
    """Raised when a job did not finish within the bounded wait. The job may still run."""

    message = "the job did not finish in time"


class JobFailed(LadingError):
    """Raised when a job failed for a reason the client cannot fix: an unexpected error in
    the worker (logged there, never sent to the client), or a job set aside after its
    process died too often (pipeline.stores.deadletter)."""

    message = "the job failed"


class UpstreamUnavailable(RegistryError):
    """Raised when the upstream of a proxied repository (pipeline.proxy) cannot be used:
    unreachable, 429/5xx, credentials refused, or content that fails its digest."""

    message = "the upstream registry is unavailable"


_KINDS: dict[str, type[LadingError]] = {}


def _register(cls: type[LadingError]) -> None:
    _KINDS[cls.__name__] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(LadingError)


def from_payload(payload: dict[str, Any]) -> LadingError:
    """Rebuild the error `LadingError.to_payload` described (unknown kinds → LadingError)."""
    cls = _KINDS.get(str(payload.get("kind")), LadingError)
    detail = payload.get("detail")
    err = cls.__new__(cls)
    LadingError.__init__(err, detail, payload.get("message"))
    if cls is ManifestBlobUnknown:
        err.digests = list(detail or [])  # type: ignore[attr-defined]
    if cls is RangeInvalid:
        err.current_size = None  # type: ignore[attr-defined]
    if cls is PathNotFound:
        err.path = str(detail)  # type: ignore[attr-defined]
    return err
