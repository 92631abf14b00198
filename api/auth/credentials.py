"""Reading the `Authorization` header: its scheme, and HTTP Basic user and password."""

from __future__ import annotations

import base64
import binascii
import hashlib


def split_authorization(header: str | None) -> tuple[str, str] | None:
    """(scheme in lower case, credentials) of an `Authorization` header, None if absent."""
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    return scheme.lower(), credentials.strip()


def parse_basic(header: str) -> tuple[str, str] | None:
    """(user, password) of a `Basic` header, or None if it is not well-formed Basic."""
    parts = split_authorization(header)
    if parts is None or parts[0] != "basic":
        return None
    return decode_basic(parts[1])


def decode_basic(credentials: str) -> tuple[str, str] | None:
    """(user, password) from base64 `user:password`, or None if malformed or the user is empty."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return user, password


def name_for_log(user: str | None) -> str:
    """How a user name that failed to log in appears in logs: a short hash, never the name
    as typed (people type passwords into the user field). `user#` + the first 12 hex digits
    of its SHA-256: an operator can compute it for a name to match log lines."""
    if not user:
        return "user#-"
    return "user#" + hashlib.sha256(user.encode("utf-8")).hexdigest()[:12]
