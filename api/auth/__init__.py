"""Authentication and authorization for the registry API: the `Access` object.

`Access.authorize(request, repository, actions)` is the one check the router runs per
request (see api/access_table.py). It returns the caller's `Identity`, or raises

- `Unauthorized` (401, carrying its `WWW-Authenticate` challenge — see
  `api.auth.challenge.challenge_headers`) when credentials are missing, wrong, or a token
  does not verify; or
- `Denied` (403) when valid Basic credentials lack an action. A valid bearer token that
  lacks one gets what distribution answers: `Unauthorized` whose challenge carries
  `error="insufficient_scope"` and the scope wanted, the signal clients act on by asking
  the token server for a wider token.

The messages never depend on whether a user or repository exists, and neither do the
checks: policy decisions are pure functions of names, and an unknown user costs the same
bcrypt comparison as a wrong password.

Access controllers (from `Settings.auth`):

- htpasswd: HTTP Basic against an htpasswd file; the `pipeline.auth.policy` rules decide what
  each user (or an anonymous caller) may do.
- token: bearer JWTs from a token server (`api.auth.tokens`); the token's `access` claim
  is authoritative, as in distribution. A caller without a token is challenged, even for
  public repositories: the token server hands out anonymous tokens.
  With `builtin_htpasswd` set, Lading runs that token server itself
  (`api.auth.token_endpoint`, mounted at `builtin_path`) and trusts its own signing key.

`repository=None` means a registry-wide request: no actions = "be authenticated"
(`GET /v2/`), any actions = the catalog (`registry:catalog:*`).
"""

from __future__ import annotations

import logging
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from api.auth.challenge import access_detail, basic_challenge, bearer_challenge, scope_for, unauthorized
from api.auth.credentials import decode_basic, name_for_log, split_authorization
from api.auth.htpasswd import Htpasswd
from api.auth.identity import ANONYMOUS, Identity
from api.auth.logins import Logins, client_address
from api.auth.policy import PolicySource
from api.auth.token_endpoint import TokenEndpoint
from api.auth.tokens import (
    AccessEntry,
    InvalidToken,
    TokenSigner,
    TokenVerifier,
    TrustStore,
    VerifiedToken,
    generate_private_key,
    load_certificates,
    load_jwks,
    load_private_key,
)
from pipeline.auth.policy import ACTIONS, ALL, PULL
from pipeline.auth.throttle import FailureCounters, LocalFailureCounters, LoginThrottle
from pipeline.auth.tokenrecords import LocalTokenRecords, TokenRecords
from pipeline.config import Settings, parse_addr
from pipeline.errors import ConfigurationError, Denied, Unauthorized

__all__ = ["ANONYMOUS", "Access", "AccessEntry", "Identity"]

log = logging.getLogger("lading.auth")

REVOCATION_CACHE_SECONDS = 5.0  # how late `lading tokens revoke` may reach an access token


def realm_url(settings: Settings) -> str:
    """The token realm a Bearer challenge names, from configuration only (never from the
    request's Host header, which a client chooses): `auth.token.realm` if absolute; a
    relative one (`/auth/token`) on `http.host`, else on `http.addr` when that names one
    address. A relative realm on a wildcard address without `http.host` cannot be made
    absolute: ConfigurationError."""
    token = settings.auth.token
    assert token is not None
    if not token.realm.startswith("/"):
        return token.realm
    http = settings.http
    if http.host:
        return http.host.rstrip("/") + token.realm
    host, port = parse_addr(http.addr)
    if host in ("0.0.0.0", "::", ""):
        raise ConfigurationError(
            f"auth.token.realm: the relative realm {token.realm!r} needs http.host (the registry's "
            f"external URL, e.g. https://registry.example.com) when http.addr {http.addr!r} listens "
            "on every interface"
        )
    scheme = "https" if http.tls is not None else "http"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}{token.realm}"


class Access:
    """Authenticates callers and decides what they may do, per `settings.auth`."""

    def __init__(
        self,
        settings: Settings,
        *,
        token_records: TokenRecords | None = None,
        failure_counters: FailureCounters | None = None,
    ) -> None:
        auth = settings.auth
        self.token_records: TokenRecords = token_records if token_records is not None else LocalTokenRecords()
        self._revocations: dict[str, tuple[float | None, float]] = {}  # subject → (revoked at, until)
        self.throttle = LoginThrottle(
            failure_counters if failure_counters is not None else LocalFailureCounters(),
            pair_limit=auth.login_failures_per_user_address,
            address_limit=auth.login_failures_per_address,
            window_seconds=auth.login_failure_window_seconds,
        )
        if auth.htpasswd is None and auth.token is None:
            raise ConfigurationError("auth", "auth: configure htpasswd or token to control access")
        self.settings = settings
        self.policy = PolicySource.from_settings(auth)
        self.htpasswd: Htpasswd | None = None
        self.basic_realm = ""
        self.logins: Logins | None = None
        if auth.htpasswd is not None:
            self.htpasswd = Htpasswd(auth.htpasswd.path)
            self.basic_realm = auth.htpasswd.realm
            self.logins = Logins(self.htpasswd, self.throttle)
        self.verifier: TokenVerifier | None = None
        self.signer: TokenSigner | None = None
        self.realm_url = realm_url(settings) if auth.token is not None else None
        self.token_endpoint: TokenEndpoint | None = None
        token = auth.token
        if token is not None:
            trust = TrustStore(
                roots=load_certificates(token.rootcertbundle) if token.rootcertbundle else (),
                keys=load_jwks(token.jwks) if token.jwks else (),
            )
            if token.builtin_htpasswd:
                self._start_token_server(settings, trust)
            if not trust:
                raise ConfigurationError(
                    "auth.token",
                    "auth.token: no key to verify tokens with (set rootcertbundle or jwks, "
                    "or lading.auth.token.htpasswd for the built-in token server)",
                )
            self.verifier = TokenVerifier(token.issuer, token.service, trust)

    def _start_token_server(self, settings: Settings, trust: TrustStore) -> None:
        token = settings.auth.token
        assert token is not None
        if token.builtin_signing_key:
            private_key = load_private_key(token.builtin_signing_key)
        else:
            private_key = generate_private_key()
            log.warning(
                "built-in token server: no lading.auth.token.signing_key, generated a temporary "
                "signing key; its tokens die with this process and other replicas reject them"
            )
        self.signer = TokenSigner(private_key, token.issuer, token.service, token.expiration_seconds)
        trust.add_key(self.signer.public_key, self.signer.kid)
        same_file = self.htpasswd is not None and self.htpasswd.path == token.builtin_htpasswd
        credentials = (
            self.htpasswd
            if same_file and self.htpasswd is not None
            else Htpasswd(token.builtin_htpasswd, key="lading.auth.token.htpasswd")
        )
        self.token_endpoint = TokenEndpoint(
            self.signer,
            credentials,
            self.policy,
            realm=self.basic_realm or token.service,
            records=self.token_records,
            rotate=token.rotate_refresh,
            throttle=self.throttle,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        token_records: TokenRecords | None = None,
        failure_counters: FailureCounters | None = None,
    ) -> Access | None:
        """The `Access` for `settings`, or None when no access controller is configured
        (an open registry, as distribution without `auth:`). `token_records`: where the
        built-in token server records used and revoked refresh tokens (shared by every
        replica: Redis when the deployment has one; in-process by default), and
        `failure_counters` where failed logins are counted (the same)."""
        auth = settings.auth
        if auth.htpasswd is None and auth.token is None:
            if auth.policy_path:
                raise ConfigurationError(
                    "lading.auth.policy", "lading.auth.policy: needs auth.htpasswd or auth.token configured"
                )
            return None
        return cls(settings, token_records=token_records, failure_counters=failure_counters)

    def reload_failures(self) -> dict[str, str]:
        """{path: reason} of each htpasswd or policy file whose current version on disk could
        not be loaded, so the last good one is still in force (checked now: one stat each)."""
        files = [self.policy.watched, self.htpasswd.watched if self.htpasswd else None]
        if self.token_endpoint is not None:
            files.append(self.token_endpoint.credentials.watched)
        failures: dict[str, str] = {}
        for watched in files:
            if watched is not None:
                watched.get()
                if watched.failure is not None:
                    failures[watched.path] = watched.failure
        return failures

    def watched_paths(self) -> list[str]:
        files = [self.policy.watched, self.htpasswd.watched if self.htpasswd else None]
        if self.token_endpoint is not None:
            files.append(self.token_endpoint.credentials.watched)
        return sorted({w.path for w in files if w is not None})

    def routes(self) -> list[Route]:
        """The built-in token endpoint's route (empty when it is not enabled)."""
        token = self.settings.auth.token
        if self.token_endpoint is None or token is None:
            return []
        return [Route(token.builtin_path, self.token_endpoint.handle, methods=["GET", "POST"])]

    # --- authorize -----------------------------------------------------------------------

    async def authorize(self, request: Request, repository: str | None, actions: set[str]) -> Identity:
        """The caller, if it may do every one of `actions` on `repository` (see module doc)."""
        wanted = frozenset(actions)
        parts = split_authorization(request.headers.get("authorization"))
        scheme, credentials = parts if parts is not None else ("", "")
        if scheme == "bearer" and self.verifier is not None:
            identity = await self._unrevoked(request, credentials, repository, wanted)
            if self._token_permits(identity, repository, wanted):
                return identity
            # As distribution's token controller: a 401 whose challenge says the scope was
            # too narrow, so a client (containerd, buildkit) fetches a wider token and
            # retries; a 403 would end the push there.
            raise self._challenge(request, repository, wanted, "insufficient_scope")
        if scheme == "basic" and self.htpasswd is not None:
            identity = await self._basic_identity(request, credentials, repository, wanted)
            if self._policy_permits(identity, repository, wanted):
                return identity
            raise Denied(access_detail(repository, wanted))
        anonymous_may_try = parts is None and self.verifier is None and (repository is not None or wanted)
        if anonymous_may_try and self._policy_permits(ANONYMOUS, repository, wanted):
            return ANONYMOUS
        raise self._challenge(request, repository, wanted)

    async def authorize_metrics(self, request: Request) -> Identity:
        """The caller, if it may read /metrics: a named user the registry accepts. Unlike
        `GET /v2/`, an anonymous token (which the token endpoint hands to anyone) or a token
        that grants nothing opens nothing; anonymous access rules never apply."""
        parts = split_authorization(request.headers.get("authorization"))
        scheme, credentials = parts if parts is not None else ("", "")
        if scheme == "bearer" and self.verifier is not None:
            identity = await self._unrevoked(request, credentials, None, frozenset())
            if identity.name and identity.token_access:
                return identity
            raise Denied([{"Type": "metrics", "Name": "metrics", "Action": "read"}])
        if scheme == "basic" and self.htpasswd is not None:
            return await self._basic_identity(request, credentials, None, frozenset())
        raise self._challenge(request, None, frozenset())

    def allowed(self, identity: Identity, repository: str, action: str) -> bool:
        """May `identity` do `action` on `repository`? (cross-repository mount source,
        or any check beyond the request's own; tokens decide by their claims alone)."""
        if identity.source == "token":
            return any(e.permits("repository", repository, action) for e in identity.token_access)
        return self._policy_permits(identity, repository, frozenset({action}))

    def catalog_visible(self, identity: Identity, repository: str) -> bool:
        """Should `_catalog` list `repository` to `identity`? Only repositories it may pull.
        A token's `registry:catalog:*` opens the route, not the list: when Lading knows the
        policy (its own token server, or lading.auth.policy), the policy decides for the
        token's subject (anonymous for an anonymous token). Only for an external token
        server and no policy of Lading's is the token server the authority (as in
        distribution, its catalog grant lists everything)."""
        if identity.source == "token":
            if self.token_endpoint is None and not self.settings.auth.policy_path:
                lists_all = any(e.permits("registry", "catalog", ALL) for e in identity.token_access)
                return lists_all or self.allowed(identity, repository, PULL)
            name = identity.name or None
            groups = self.policy.current().groups_of(name)
            subject = Identity(name=name, groups=groups, source="basic" if name else "anonymous")
            return self._policy_permits(subject, repository, frozenset({PULL}))
        return self.allowed(identity, repository, PULL)

    # --- the pieces ----------------------------------------------------------------------

    def _realm(self, request: Request) -> str:
        assert self.realm_url is not None
        return self.realm_url

    def _challenge(
        self, request: Request, repository: str | None, wanted: frozenset[str], error: str | None = None
    ) -> Unauthorized:
        token = self.settings.auth.token
        if token is not None:
            scope = scope_for(repository, wanted)
            value = bearer_challenge(self._realm(request), token.service, scope, error)
        else:
            value = basic_challenge(self.basic_realm)
        return unauthorized(value, access_detail(repository, wanted))

    def _verified(
        self, request: Request, raw: str, repository: str | None, wanted: frozenset[str]
    ) -> tuple[Identity, VerifiedToken]:
        assert self.verifier is not None
        try:
            verified = self.verifier.verify(raw)
        except InvalidToken as exc:
            log.info("bearer token rejected: %s", exc)
            raise self._challenge(request, repository, wanted, "invalid_token") from None
        identity = Identity(name=verified.subject or None, source="token", token_access=verified.access)
        return identity, verified

    async def _unrevoked(
        self, request: Request, raw: str, repository: str | None, wanted: frozenset[str]
    ) -> Identity:
        """The token's identity; for the built-in token server's tokens, not issued before a
        `lading tokens revoke` of their subject (looked up at most every REVOCATION_CACHE_SECONDS
        per subject; a record store that cannot answer is logged and does not refuse)."""
        identity, verified = self._verified(request, raw, repository, wanted)
        if self.token_endpoint is None or not verified.subject:
            return identity
        revoked_at = await self._revoked_at(verified.subject)
        if revoked_at is None:
            return identity
        claims = verified.claims
        issued_ms = claims.get("iat_ms")
        issued = issued_ms / 1000 if isinstance(issued_ms, int) else claims.get("iat")
        if isinstance(issued, int | float) and issued > revoked_at:
            return identity
        log.info("bearer token of %s refused: issued before its revocation", name_for_log(verified.subject))
        raise self._challenge(request, repository, wanted, "invalid_token")

    async def _revoked_at(self, subject: str) -> float | None:
        now = time.monotonic()
        cached = self._revocations.get(subject)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            value = await run_in_threadpool(self.token_records.subject_revoked_at, subject)
        except Exception as exc:
            log.warning("cannot read token revocations: %s", exc)
            return None
        if len(self._revocations) > 10_000:
            self._revocations.clear()
        self._revocations[subject] = (value, now + REVOCATION_CACHE_SECONDS)
        return value

    async def _basic_identity(
        self, request: Request, credentials: str, repository: str | None, wanted: frozenset[str]
    ) -> Identity:
        assert self.logins is not None
        parsed = decode_basic(credentials)
        user, password = parsed if parsed is not None else ("", "")
        # Malformed credentials still pay for a bcrypt check: every failure looks alike.
        ok = await self.logins.check(user, password, client_address(request))
        if not ok or parsed is None:
            log.info("basic authentication failed for %s", name_for_log(user))
            raise self._challenge(request, repository, wanted)
        return Identity(name=user, groups=self.policy.current().groups_of(user), source="basic")

    @staticmethod
    def _token_permits(identity: Identity, repository: str | None, wanted: frozenset[str]) -> bool:
        if repository is None:
            return not wanted or any(e.permits("registry", "catalog", ALL) for e in identity.token_access)
        entries = identity.token_access
        return all(any(e.permits("repository", repository, action) for e in entries) for action in wanted)

    def _policy_permits(self, identity: Identity, repository: str | None, wanted: frozenset[str]) -> bool:
        policy = self.policy.current()
        if repository is None:
            if not wanted:
                return not identity.anonymous
            return not identity.anonymous or policy.anonymous_access
        if not wanted <= ACTIONS | {ALL}:
            return False
        return policy.allows(identity.name, repository, wanted, identity.groups)
