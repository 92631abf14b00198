"""Users and passwords from an Apache htpasswd file, bcrypt entries only (as distribution).

Lines are `user:hash`; blank lines and lines starting with `#` are skipped. Only bcrypt
hashes (`$2y$`, `$2a$`, `$2b$`) are accepted; any other entry (MD5 `$apr1$`, SHA1 `{SHA}`,
crypt, plain text) is ignored with a warning naming the line, so that user cannot log in.

Checking a password never reveals whether the user exists: an unknown user costs the same
bcrypt comparison, against a dummy hash of the file's usual cost, and gets the same answer
as a wrong password. The file is reloaded when it changes on disk.

bcrypt is deliberately slow (~0.1 s at cost 10) and clients send Basic credentials with
every request, so a successful check is remembered for a few minutes under an HMAC of the
credentials keyed by a per-process secret (never the password itself); editing the file
forgets everything remembered.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field

import bcrypt

from api.auth.watch import WatchedFile
from pipeline.errors import ConfigurationError

log = logging.getLogger("lading.auth")

BCRYPT_PREFIXES = ("$2y$", "$2a$", "$2b$")
_BCRYPT_RE = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_BCRYPT_MAX_BYTES = 72  # bcrypt only ever looks at the first 72 bytes
_DEFAULT_COST = 10
_MAX_DUMMY_COST = 16

SUCCESS_TTL_SECONDS = 300.0
SUCCESS_CACHE_SIZE = 4096


@dataclass(frozen=True)
class HtpasswdEntries:
    """The usable entries of one version of the file."""

    users: dict[str, bytes]
    dummy: bytes = field(repr=False)  # bcrypt hash of a random secret, for unknown users


def parse_htpasswd(text: str, source: str = "htpasswd") -> dict[str, bytes]:
    """The bcrypt entries of an htpasswd file's text; other lines are skipped with a warning."""
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            log.warning("%s line %d: not a user:hash entry; ignored", source, number)
            continue
        if not hashed.startswith(BCRYPT_PREFIXES) or not _BCRYPT_RE.match(hashed):
            log.warning(
                "%s line %d: user %r does not have a bcrypt hash ($2y$, $2a$ or $2b$); ignored",
                source,
                number,
                user,
            )
            continue
        users[user] = hashed.encode("ascii")
    return users


def _dummy_hash(users: dict[str, bytes]) -> bytes:
    costs = collections.Counter(int(h[4:6]) for h in users.values())
    cost = costs.most_common(1)[0][0] if costs else _DEFAULT_COST
    cost = max(4, min(cost, _MAX_DUMMY_COST))
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))


def load_htpasswd(path: str) -> HtpasswdEntries:
    """The entries of the file at `path`; none for a directory (see `Htpasswd`)."""
    users: dict[str, bytes] = {}
    if not os.path.isdir(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            users = parse_htpasswd(f.read(), path)
    return HtpasswdEntries(users=users, dummy=_dummy_hash(users))


class Htpasswd:
    """The htpasswd file at `path`, checked with `verify` (blocking: run it in a thread)."""

    def __init__(self, path: str, *, key: str = "auth.htpasswd.path") -> None:
        if not path:
            raise ConfigurationError(key, f"{key}: required")
        if os.path.isdir(path):
            # Debian's shipped config.yml points here at /etc/docker/registry. distribution
            # 2.8.2 starts with it and fails every login (400, "is a directory"); Lading also
            # starts, says so once, and answers every login with a 401 challenge. Replacing
            # the directory by a file is picked up like any other edit.
            log.warning("%s: %s is a directory, not an htpasswd file: no user can log in", key, path)
        elif not os.path.isfile(path):
            raise ConfigurationError(key, f"{key}: {path} is not a file")
        try:
            self._file = WatchedFile(path, load_htpasswd)
        except OSError as exc:
            raise ConfigurationError(key, f"{key}: cannot read {path}: {exc}") from exc
        self.path = path
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._remembered: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._remembered_for: HtpasswdEntries | None = None

    @property
    def watched(self) -> WatchedFile[HtpasswdEntries]:
        return self._file

    def _mark(self, username: str, password: str) -> bytes:
        return hmac.new(
            self._secret, username.encode("utf-8") + b"\0" + password.encode("utf-8"), hashlib.sha256
        ).digest()

    def remembered(self, username: str, password: str) -> bool:
        """True if these exact credentials were verified recently (no bcrypt spent)."""
        return self._recall(self._file.get(), self._mark(username, password))

    def verify(self, username: str, password: str) -> bool:
        """True if `password` is `username`'s. Unknown users cost one bcrypt check too."""
        entries = self._file.get()
        mark = self._mark(username, password)
        if self._recall(entries, mark):
            return True
        hashed = entries.users.get(username)
        candidate = password.encode("utf-8")[:_BCRYPT_MAX_BYTES]
        try:
            ok = bcrypt.checkpw(candidate, hashed if hashed is not None else entries.dummy)
        except ValueError:
            ok = False
        if ok and hashed is not None:
            self._remember(entries, mark)
            return True
        return False

    def has_user(self, username: str) -> bool:
        """True if the current file has a usable entry for `username`."""
        return username in self._file.get().users

    def credential_id(self, username: str) -> str | None:
        """A fingerprint of `username`'s current entry (None without one): tokens bound to
        it die when the password changes or the user is removed and re-added. A hash of
        the bcrypt entry, which is itself salted, so it reveals nothing about the password."""
        hashed = self._file.get().users.get(username)
        if hashed is None:
            return None
        digest = hashlib.sha256(b"lading-credential\0" + username.encode("utf-8") + b"\0" + hashed).digest()
        return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")

    def _recall(self, entries: HtpasswdEntries, mark: bytes) -> bool:
        with self._lock:
            if self._remembered_for is not entries:
                self._remembered.clear()
                self._remembered_for = entries
                return False
            expires = self._remembered.get(mark)
            if expires is None:
                return False
            if expires < time.monotonic():
                del self._remembered[mark]
                return False
            return True

    def _remember(self, entries: HtpasswdEntries, mark: bytes) -> None:
        with self._lock:
            if self._remembered_for is not entries:
                self._remembered.clear()
                self._remembered_for = entries
            self._remembered[mark] = time.monotonic() + SUCCESS_TTL_SECONDS
            self._remembered.move_to_end(mark)
            while len(self._remembered) > SUCCESS_CACHE_SIZE:
                self._remembered.popitem(last=False)
