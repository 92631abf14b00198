"""Checking a user's password with failed attempts throttled (pipeline.auth.throttle).

Credentials verified recently (the htpasswd success cache) pass at once: they are not a
guess. Anything else is refused with `TooManyRequests` (429, `Retry-After`) while its
(user, address) pair or its address is over the limit, before any bcrypt is spent;
otherwise the password is checked and the outcome counted. Failures are logged with a
hash of the user name (api.auth.credentials.name_for_log), never the name as typed.
"""

from __future__ import annotations

import logging

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.auth.credentials import name_for_log
from api.auth.htpasswd import Htpasswd
from pipeline.auth.throttle import LoginThrottle
from pipeline.errors import TooManyRequests

log = logging.getLogger("lading.auth")


def client_address(request: Request) -> str:
    """The client's address as the server saw it (uvicorn applies X-Forwarded-For only from
    the proxies it trusts, `--forwarded-allow-ips`)."""
    return request.client.host if request.client is not None else "unknown"


class Logins:
    def __init__(self, credentials: Htpasswd, throttle: LoginThrottle) -> None:
        self.credentials = credentials
        self.throttle = throttle

    def _check(self, user: str, password: str, address: str) -> bool:
        if self.credentials.remembered(user, password):
            return True
        wait = self.throttle.retry_after(user, address)
        if wait is not None:
            log.info("login throttled for %s from %s (%.0fs left)", name_for_log(user), address, wait)
            error = TooManyRequests({"reason": "too many failed logins"})
            error.retry_after = wait  # type: ignore[attr-defined]
            raise error
        if self.credentials.verify(user, password):
            self.throttle.succeeded(user, address)
            return True
        self.throttle.failed(user, address)
        return False

    async def check(self, user: str, password: str, address: str) -> bool:
        """True if `password` is `user`'s; TooManyRequests while throttled (see module)."""
        return bool(await run_in_threadpool(self._check, user, password, address))
