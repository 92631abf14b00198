"""The built-in token server (opt-in): Docker's token flow and its OAuth2 variant.

`GET <builtin_path>?service=…&scope=…&scope=…[&account=…][&offline_token=true]` with
optional HTTP Basic credentials, and `POST <builtin_path>` with a form body
(`grant_type=password` + `username`/`password`, or `grant_type=refresh_token` +
`refresh_token`; `scope` space-separated; `access_type=offline` for a refresh token).

The token grants the intersection of the requested scopes with what the access policy
allows the caller (anonymous callers get the policy's anonymous grants). Asking for more
than one may have is not an error: the registry refuses later, per request. Wrong
credentials are a 401 with a Basic challenge, the same whether the user exists or not.

Refresh tokens are bound to the user's htpasswd entry (a password change or removal
revokes them), rotate on every use when `rotate_refresh` is set (the answer carries the
next one; a used one is refused, and a replay revokes its whole family; off by default, as
the docker CLI reuses the identity token it stored), and die with `lading tokens revoke USER`.
Used ids and revocations live in `pipeline.auth.tokenrecords` (Redis when the deployment has one).
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.auth.challenge import basic_challenge, unauthorized
from api.auth.credentials import name_for_log, parse_basic
from api.auth.htpasswd import Htpasswd
from api.auth.logins import Logins, client_address
from api.auth.policy import PolicySource
from api.auth.tokens import AccessEntry, InvalidToken, IssuedToken, TokenSigner, resource_type
from api.errors import error_response
from pipeline.auth.policy import ALL, granted_actions
from pipeline.auth.throttle import LocalFailureCounters, LoginThrottle
from pipeline.auth.tokenrecords import LocalTokenRecords, TokenRecords
from pipeline.errors import TooManyRequests, Unauthorized
from pipeline.formats.names import is_valid_name

log = logging.getLogger("lading.auth")

MAX_SCOPES = 100
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 200
_TYPE_RE = re.compile(r"^[a-z0-9]+(?:\([a-z0-9]+\))?$")
_ACTION_RE = re.compile(r"^[a-z*]*$")


def parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """`type:name:action,action` → (type, name, actions), or None if malformed. The name may
    itself hold one `:` (a registry host's port), so type is split off the front and the
    actions off the back."""
    type_, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name or not _TYPE_RE.match(type_):
        return None
    wanted = [a for a in actions.split(",") if a]
    if not all(_ACTION_RE.match(a) for a in wanted):
        return None
    return resource_type(type_), name, wanted


def _scopes(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        out.extend(value.split())
    return out[:MAX_SCOPES]


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )


class TokenEndpoint:
    """Mount `handle` as a Starlette route (GET and POST)."""

    def __init__(
        self,
        signer: TokenSigner,
        credentials: Htpasswd,
        policy: PolicySource,
        *,
        realm: str,
        records: TokenRecords | None = None,
        rotate: bool = False,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.signer = signer
        self.credentials = credentials
        self.policy = policy
        self.realm = realm  # for the Basic challenge of a failed login
        self.records: TokenRecords = records if records is not None else LocalTokenRecords()
        self.rotate = rotate
        self.logins = Logins(credentials, throttle or LoginThrottle(LocalFailureCounters()))

    # --- the pieces --------------------------------------------------------------------

    def grant(self, user: str | None, scopes: Iterable[str]) -> list[AccessEntry]:
        """What a token for `user` (None = anonymous) asking for `scopes` may hold."""
        policy = self.policy.current()
        groups = policy.groups_of(user)
        requested: dict[tuple[str, str], set[str]] = {}
        for scope in scopes:
            parsed = parse_scope(scope)
            if parsed is not None:
                type_, name, scope_actions = parsed
                requested.setdefault((type_, name), set()).update(scope_actions)
        entries: list[AccessEntry] = []
        may_list = user is not None or policy.anonymous_access
        for (type_, name), actions in requested.items():
            granted: list[str] = []
            if type_ == "repository" and is_valid_name(name):
                granted = granted_actions(policy, user, name, actions, groups)
            elif type_ == "registry" and name == "catalog" and ALL in actions and may_list:
                granted = [ALL]
            if granted:
                entries.append(AccessEntry(type_, name, tuple(granted)))
        return entries

    async def _check_password(self, username: str, password: str, address: str) -> str:
        # An empty user name still pays for a bcrypt check: every failure looks alike.
        ok = await self.logins.check(username, password, address)
        if ok and username:
            return username
        log.info("token request: authentication failed for user %s", name_for_log(username))
        raise unauthorized(basic_challenge(self.realm))

    async def _new_refresh(self, user: str, family: str | None = None) -> str:
        credential = await run_in_threadpool(self.credentials.credential_id, user)
        if credential is None:  # removed between the password check and now
            raise unauthorized(basic_challenge(self.realm))
        return self.signer.issue_refresh(user, credential, family)

    async def _refresh(self, presented: str) -> tuple[str, str | None]:
        """(user, rotated refresh token) for a refresh grant, or Unauthorized. A refresh
        token works once: it must still match the user's htpasswd entry, not predate a
        `lading tokens revoke`, and not have been used before (a replay revokes the whole
        family, so a stolen token dies along with the one its rightful holder got)."""
        try:
            claims = self.signer.verify_refresh(presented)
        except InvalidToken as exc:
            log.info("token request: refresh token rejected: %s", exc)
            raise unauthorized(basic_challenge(self.realm)) from None
        user = claims.subject
        who = name_for_log(user)
        current = await run_in_threadpool(self.credentials.credential_id, user)
        if current is None or not hmac.compare_digest(current, claims.credential):
            log.info("token request: refresh token for %s predates a password change or removal", who)
            raise unauthorized(basic_challenge(self.realm))
        ttl = max(claims.expires_at - time.time(), 1.0)

        def check_and_consume() -> str | None:
            revoked_at = self.records.subject_revoked_at(user)
            if revoked_at is not None and claims.issued_at <= revoked_at:
                return "issued before the user's tokens were revoked"
            if self.records.family_revoked(claims.family):
                return "its family was revoked after a replay"
            if not self.rotate:
                return None
            if not self.records.consume(claims.token_id, ttl):
                self.records.revoke_family(claims.family, ttl)
                return "already used (replay): family revoked"
            return None

        refused = await run_in_threadpool(check_and_consume)
        if refused is not None:
            log.info("token request: refresh token for %s refused: %s", who, refused)
            raise unauthorized(basic_challenge(self.realm))
        if not self.rotate:
            return user, None
        return user, self.signer.issue_refresh(user, claims.credential, claims.family)

    def _service_ok(self, params: Mapping[str, Any]) -> bool:
        service = params.get("service")
        return service is None or service == self.signer.service

    def _respond(
        self, issued: IssuedToken, *, refresh: str | None = None, scope: str | None = None
    ) -> JSONResponse:
        body: dict[str, Any] = {
            "token": issued.token,
            "access_token": issued.token,
            "expires_in": issued.expires_in,
            "issued_at": issued.issued_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        if scope is not None:
            body["scope"] = scope
        return JSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    # --- the route ---------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        try:
            if request.method == "POST":
                return await self._post(request)
            return await self._get(request)
        except (Unauthorized, TooManyRequests) as exc:
            # Rendered here, not raised: a wrong password is an answer, not a server error.
            return error_response(exc, head=request.method == "HEAD")

    async def _get(self, request: Request) -> Response:
        params = request.query_params
        if not self._service_ok(params):
            return _oauth_error("invalid_request", "unknown service")
        user: str | None = None
        header = request.headers.get("authorization")
        if header is not None:
            username, password = _basic_credentials(header, self.realm)
            user = await self._check_password(username, password, client_address(request))
            account = params.get("account")
            if account and account != user:
                log.info("token request: account does not match user %s", name_for_log(user))
                raise unauthorized(basic_challenge(self.realm))
        access = self.grant(user, _scopes(params.getlist("scope")))
        issued = self.signer.issue(user or "", access)
        offline = params.get("offline_token", "").lower() == "true"
        refresh = await self._new_refresh(user) if offline and user is not None else None
        return self._respond(issued, refresh=refresh)

    async def _post(self, request: Request) -> Response:
        form = await _read_form(request)
        if form is None:
            return _oauth_error("invalid_request", "expected an application/x-www-form-urlencoded body")
        fields = dict(form)
        if not self._service_ok(fields):
            return _oauth_error("invalid_request", "unknown service")
        grant_type = fields.get("grant_type", "")
        refresh: str | None = None
        if grant_type == "password":
            username, password = fields.get("username", ""), fields.get("password", "")
            if not username:
                return _oauth_error("invalid_request", "username and password are required")
            user = await self._check_password(username, password, client_address(request))
            if fields.get("access_type") == "offline":
                refresh = await self._new_refresh(user)
        elif grant_type == "refresh_token":
            # Rotation: the answer always carries the refresh token to use next time.
            user, refresh = await self._refresh(fields.get("refresh_token", ""))
            if refresh is None and fields.get("access_type") == "offline":
                refresh = fields.get("refresh_token", "")  # rotation off: the same one again
        else:
            return _oauth_error("unsupported_grant_type", "grant_type must be password or refresh_token")
        scopes = _scopes(v for k, v in form if k == "scope")
        access = self.grant(user, scopes)
        issued = self.signer.issue(user, access)
        granted = " ".join(f"{e.type}:{e.name}:{','.join(e.actions)}" for e in access)
        return self._respond(issued, refresh=refresh, scope=granted)


async def _read_form(request: Request) -> list[tuple[str, str]] | None:
    """The fields of a url-encoded form body (bounded in size), None if it is not one.
    Parsed here because Starlette's form parser needs an extra package for a few fields."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError):
        return None


def _basic_credentials(header: str, realm: str) -> tuple[str, str]:
    parsed = parse_basic(header)
    if parsed is None:
        raise unauthorized(basic_challenge(realm))
    return parsed
