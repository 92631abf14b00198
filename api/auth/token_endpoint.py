"""The built-in token server (opt-in): Docker's token flow and its OAuth2 variant.

`GET <builtin_path>?service=…&scope=…&scope=…[&account=…][&offline_token=true]` with
optional HTTP Basic credentials, and `POST <builtin_path>` with a form body
(`grant_type=password` + `username`/`password`, or `grant_type=refresh_token` +
`refresh_token`; `scope` space-separated; `access_type=offline` for a refresh token).

The token grants the intersection of the requested scopes with what the access policy
allows the caller (anonymous callers get the policy's anonymous grants). Asking for more
than one may have is not an error: the registry refuses later, per request. Wrong
credentials are a 401 with a Basic challenge, the same whether the user exists or not.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from api.auth.challenge import basic_challenge, unauthorized
from api.auth.credentials import parse_basic
from api.auth.htpasswd import Htpasswd
from api.auth.policy import PolicySource
from api.auth.tokens import AccessEntry, InvalidToken, IssuedToken, TokenSigner, resource_type
from api.errors import error_response
from pipeline.access import ALL, granted_actions
from pipeline.errors import Unauthorized
from pipeline.names import is_valid_name

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
        self, signer: TokenSigner, credentials: Htpasswd, policy: PolicySource, *, realm: str
    ) -> None:
        self.signer = signer
        self.credentials = credentials
        self.policy = policy
        self.realm = realm  # for the Basic challenge of a failed login

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

    async def _check_password(self, username: str, password: str) -> str:
        # An empty user name still pays for a bcrypt check: every failure looks alike.
        ok: bool = await run_in_threadpool(self.credentials.verify, username, password)
        if ok and username:
            return username
        log.info("token request: authentication failed for user %r", username)
        raise unauthorized(basic_challenge(self.realm))

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
        except Unauthorized as exc:
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
            user = await self._check_password(username, password)
            account = params.get("account")
            if account and account != user:
                log.info("token request: account %r does not match user %r", account, user)
                raise unauthorized(basic_challenge(self.realm))
        access = self.grant(user, _scopes(params.getlist("scope")))
        issued = self.signer.issue(user or "", access)
        offline = params.get("offline_token", "").lower() == "true"
        refresh = self.signer.issue_refresh(user) if offline and user is not None else None
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
            user = await self._check_password(username, password)
            if fields.get("access_type") == "offline":
                refresh = self.signer.issue_refresh(user)
        elif grant_type == "refresh_token":
            presented = fields.get("refresh_token", "")
            try:
                user = self.signer.verify_refresh(presented)
            except InvalidToken as exc:
                log.info("token request: refresh token rejected: %s", exc)
                raise unauthorized(basic_challenge(self.realm)) from None
            # A user removed from htpasswd can no longer refresh (has_user may reload the file).
            if not await run_in_threadpool(self.credentials.has_user, user):
                log.info("token request: refresh token for removed user %r", user)
                raise unauthorized(basic_challenge(self.realm))
            refresh = presented if fields.get("access_type") == "offline" else None
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
