"""The one map from domain errors to OCI error codes and HTTP statuses, and the error body.

Every error a client sees is rendered here as

    {"errors": [{"code": "<OCI code>", "message": "<text>", "detail": <json>}]}

with `Content-Type: application/json`. `pipeline.errors` classes are looked up along their
MRO in `ERROR_MAP`, so a subclass added later inherits its parent's code. Conditions that
exist only at the HTTP layer (an unknown route, a malformed `Content-Range`, a manifest body
over the size limit) are raised as `ApiError`, which carries its own code and status.

`MANIFEST_BLOB_UNKNOWN` is special: one entry per missing digest, each with
`detail: {"digest": ...}`, so a client learns every missing blob from one response.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

from pipeline.errors import (
    BlobCorrupt,
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    Denied,
    DigestInvalid,
    JobsUnavailable,
    JobTimeout,
    LadingError,
    LayerInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    OperationUnsupported,
    RangeInvalid,
    SizeInvalid,
    StorageError,
    StorageUnavailable,
    TagInvalid,
    TooManyRequests,
    Unauthorized,
    UpstreamUnavailable,
)

API_VERSION_HEADER = "Docker-Distribution-API-Version"
API_VERSION = "registry/2.0"
ERROR_CONTENT_TYPE = "application/json"

# Retry-After (seconds) suggested for errors that go away by themselves.
RETRY_AFTER_UNAVAILABLE = 5
RETRY_AFTER_TOO_MANY = 1

ERROR_MAP: dict[type[LadingError], tuple[str, int]] = {
    NameInvalid: ("NAME_INVALID", 400),
    NameUnknown: ("NAME_UNKNOWN", 404),
    TagInvalid: ("TAG_INVALID", 400),
    DigestInvalid: ("DIGEST_INVALID", 400),
    SizeInvalid: ("SIZE_INVALID", 400),
    BlobUnknown: ("BLOB_UNKNOWN", 404),
    # Quarantined by scrub (bytes no longer match the digest): to a client the blob is
    # unknown, so it pushes it again and that push replaces the bad bytes. The message
    # still says it is quarantined, for whoever reads the error.
    BlobCorrupt: ("BLOB_UNKNOWN", 404),
    BlobUploadUnknown: ("BLOB_UPLOAD_UNKNOWN", 404),
    BlobUploadInvalid: ("BLOB_UPLOAD_INVALID", 400),
    # The spec names only the status (416) for an out-of-order chunk; the code list has no
    # range code, so the closest listed one is used.
    RangeInvalid: ("BLOB_UPLOAD_INVALID", 416),
    ManifestUnknown: ("MANIFEST_UNKNOWN", 404),
    ManifestInvalid: ("MANIFEST_INVALID", 400),
    ManifestBlobUnknown: ("MANIFEST_BLOB_UNKNOWN", 400),
    # A layer that is not a tar archive fails the manifest that references it (deep
    # verification under the reject policy).
    LayerInvalid: ("MANIFEST_INVALID", 400),
    OperationUnsupported: ("UNSUPPORTED", 405),
    Unauthorized: ("UNAUTHORIZED", 401),
    Denied: ("DENIED", 403),
    TooManyRequests: ("TOOMANYREQUESTS", 429),
    JobTimeout: ("UNAVAILABLE", 503),
    JobsUnavailable: ("UNAVAILABLE", 503),
    UpstreamUnavailable: ("UNAVAILABLE", 503),
    StorageUnavailable: ("UNAVAILABLE", 503),
    StorageError: ("UNKNOWN", 500),
    LadingError: ("UNKNOWN", 500),
}


class ApiError(Exception):
    """An error that exists only at the HTTP layer, with its own OCI code(s) and status.

    `entries` overrides the single code/message/detail entry when one response must list
    several errors (e.g. one MANIFEST_BLOB_UNKNOWN per blob whose commit failed)."""

    def __init__(
        self,
        code: str,
        status: int,
        message: str,
        detail: Any = None,
        headers: Mapping[str, str] | None = None,
        entries: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message
        self.detail = detail
        self.headers = dict(headers or {})
        self.entries = entries if entries is not None else [entry(code, message, detail)]


def code_and_status(error: LadingError) -> tuple[str, int]:
    """The OCI code and HTTP status of a domain error (nearest mapped ancestor wins)."""
    for cls in type(error).__mro__:
        if cls in ERROR_MAP:
            return ERROR_MAP[cls]
    return ERROR_MAP[LadingError]


def entry(code: str, message: str, detail: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "detail": detail if detail is not None else {}}


def error_entries(error: LadingError) -> list[dict[str, Any]]:
    """The `errors` array for a domain error."""
    code, _ = code_and_status(error)
    if isinstance(error, ManifestBlobUnknown):
        digests = getattr(error, "digests", None) or list(error.detail or [])
        entries = []
        for item in digests:
            detail = dict(item) if isinstance(item, Mapping) else {"digest": str(item)}
            entries.append(entry(code, error.text, detail))
        if entries:
            return entries
    if isinstance(error, StorageError):
        # Storage errors carry paths and driver messages: logged by whoever handles them,
        # never sent (a client learns only that storage failed or is unavailable).
        return [entry(code, type(error).message, None)]
    return [entry(code, error.text, error.detail)]


def _extra_headers(error: BaseException, status: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    # An auth error may carry its challenge (WWW-Authenticate) as `headers` or `challenge`.
    extra = getattr(error, "headers", None)
    if isinstance(extra, Mapping):
        headers.update({str(k): str(v) for k, v in extra.items()})
    challenge = getattr(error, "challenge", None)
    if isinstance(challenge, str) and challenge:
        headers.setdefault("WWW-Authenticate", challenge)
    if status in (429, 503) and not any(k.lower() == "retry-after" for k in headers):
        retry = getattr(error, "retry_after", None)
        detail = getattr(error, "detail", None)
        if retry is None and isinstance(detail, Mapping):
            retry = detail.get("retry_after")
        if retry is None:
            retry = RETRY_AFTER_TOO_MANY if status == 429 else RETRY_AFTER_UNAVAILABLE
        headers["Retry-After"] = str(int(retry))
    return headers


def body_response(
    entries: list[dict[str, Any]], status: int, headers: Mapping[str, str] | None = None, head: bool = False
) -> Response:
    """An OCI error response. For HEAD the body is omitted but its length is announced."""
    body = json.dumps({"errors": entries}, separators=(",", ":")).encode()
    all_headers = {API_VERSION_HEADER: API_VERSION, **(headers or {})}
    if head:
        all_headers["Content-Length"] = str(len(body))
        return Response(b"", status_code=status, headers=all_headers, media_type=ERROR_CONTENT_TYPE)
    return Response(body, status_code=status, headers=all_headers, media_type=ERROR_CONTENT_TYPE)


def error_response(
    error: BaseException, head: bool = False, headers: Mapping[str, str] | None = None
) -> Response:
    """The response for any exception: domain errors by the map, ApiError as declared,
    anything else as a 500 UNKNOWN that reveals nothing about the server. `headers` adds
    context a route knows (e.g. the upload's Range on a 416)."""
    if isinstance(error, ApiError):
        extra = {**_extra_headers(error, error.status), **(headers or {})}
        return body_response(error.entries, error.status, extra, head)
    if isinstance(error, LadingError):
        _, status = code_and_status(error)
        extra = {**_extra_headers(error, status), **(headers or {})}
        return body_response(error_entries(error), status, extra, head)
    return body_response([entry("UNKNOWN", "unknown error", None)], 500, headers, head)


def not_found(path: str, head: bool = False) -> Response:
    """The OCI-style answer for a path no route matches."""
    return error_response(ApiError("UNSUPPORTED", 404, "no such endpoint", {"path": path}), head)


def method_not_allowed(method: str, allowed: list[str], head: bool = False) -> Response:
    """The answer for a known route called with a method it does not serve."""
    err = ApiError(
        "UNSUPPORTED",
        405,
        "the operation is unsupported",
        {"method": method},
        headers={"Allow": ", ".join(allowed)},
    )
    return error_response(err, head)
