"""Talking to one upstream registry: `UpstreamClient` (httpx, synchronous, thread-safe).

Authentication follows what the upstream asks for. A request goes first with the
credentials that worked last time for its repository; a `401` with
`WWW-Authenticate: Bearer realm=…,service=…,scope=…` runs the Docker token flow (GET the
realm with `service` and `scope`, Basic credentials when configured, anonymous otherwise),
caches the token per scope until shortly before it expires, and retries once; a `401` with
`Basic` retries once with the configured username and password.

Errors: a `404` becomes the registry error of what was asked for (ManifestUnknown,
BlobUnknown, NameUnknown); anything that says "not now" — connection failure, timeout,
`429`, `5xx`, refused credentials, another status — becomes UpstreamUnavailable, which
callers answer from the cache when they hold a copy. Every request and error is counted in
pipeline.proxy.stats under the upstream's label.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from pipeline.config.settings import Upstream
from pipeline.errors import BlobUnknown, ManifestUnknown, NameUnknown, UpstreamUnavailable
from pipeline.proxy import stats

DEFAULT_TOKEN_LIFETIME = 60.0
TOKEN_MARGIN = 10.0  # renew a token this long before it expires
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """(scheme lower-cased, parameters) of one `WWW-Authenticate` value."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM.finditer(rest)
    }
    return scheme.lower(), params


class UpstreamClient:
    """Requests to `upstream.remoteurl` with its credentials (see module docstring)."""

    def __init__(self, upstream: Upstream, transport: httpx.BaseTransport | None = None) -> None:
        self.upstream = upstream
        self.label = upstream.label
        self._http = httpx.Client(
            timeout=httpx.Timeout(60.0, connect=10.0),
            follow_redirects=True,  # blob downloads are often redirected to a CDN
            transport=transport,
            headers={"User-Agent": "lading-proxy"},
        )
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}  # scope → (token, expires at)
        self._basic = False  # the upstream asked for Basic

    def close(self) -> None:
        self._http.close()

    # --- requests -------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.upstream.remoteurl}/v2/{path}"

    def _auth_header(self, scope: str) -> dict[str, str]:
        with self._lock:
            token = self._tokens.get(scope)
            if token is not None and token[1] > time.monotonic():
                return {"Authorization": f"Bearer {token[0]}"}
            basic = self._basic
        if basic and self.upstream.username:
            pair = f"{self.upstream.username}:{self.upstream.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        return {}

    @contextmanager
    def request(
        self, method: str, path: str, repository: str, headers: dict[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        """A streamed response to `method /v2/<path>` (body unread; closed on exit). Raises
        UpstreamUnavailable for what the module docstring lists; other statuses, 404
        included, are the caller's to interpret."""
        scope = f"repository:{repository}:pull"
        response = self._send(method, path, scope, headers)
        try:
            if response.status_code == 401:
                challenge = response.headers.get("www-authenticate", "")
                response.close()
                self._authenticate(challenge, scope)
                response = self._send(method, path, scope, headers)
            if response.status_code in (401, 403):
                raise self._error(f"upstream refused our credentials ({response.status_code})", response)
            if response.status_code == 429 or response.status_code >= 500:
                raise self._error(f"upstream answered {response.status_code}", response)
            yield response
        finally:
            response.close()

    def _send(self, method: str, path: str, scope: str, headers: dict[str, str] | None) -> httpx.Response:
        all_headers = {**(headers or {}), **self._auth_header(scope)}
        stats.add(self.label, "upstream_requests")
        try:
            request = self._http.build_request(method, self._url(path), headers=all_headers)
            return self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            stats.add(self.label, "upstream_errors")
            raise UpstreamUnavailable(
                {"upstream": self.upstream.remoteurl, "reason": str(exc) or type(exc).__name__}
            ) from None

    def _error(self, reason: str, response: httpx.Response) -> UpstreamUnavailable:
        stats.add(self.label, "upstream_errors")
        detail: dict[str, Any] = {"upstream": self.upstream.remoteurl, "reason": reason}
        if response.headers.get("retry-after"):
            detail["retry_after"] = response.headers["retry-after"]
        return UpstreamUnavailable(detail)

    def _authenticate(self, challenge: str, scope: str) -> None:
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            with self._lock:
                self._basic = True
            return
        if scheme != "bearer" or "realm" not in params:
            return  # the retry fails with 401 and reports it
        query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
        auth = (
            httpx.BasicAuth(self.upstream.username, self.upstream.password)
            if self.upstream.username
            else None
        )
        stats.add(self.label, "upstream_requests")
        try:
            response = self._http.get(
                params["realm"], params={k: v for k, v in query.items() if v}, auth=auth
            )
        except httpx.HTTPError as exc:
            stats.add(self.label, "upstream_errors")
            raise UpstreamUnavailable({"upstream": params["realm"], "reason": str(exc)}) from None
        if response.status_code != 200:
            raise self._error(f"token endpoint answered {response.status_code}", response)
        try:
            body = response.json()
            token = str(body.get("token") or body.get("access_token"))
            lifetime = float(body.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            raise self._error("token endpoint answered no token", response) from None
        with self._lock:
            self._tokens[scope] = (token, time.monotonic() + max(lifetime - TOKEN_MARGIN, 1.0))

    # --- what the cache asks --------------------------------------------------------

    def get_manifest(
        self, repository: str, reference: str, accept: list[str]
    ) -> tuple[bytes, str, str | None]:
        """(body, content type, Docker-Content-Digest or None). ManifestUnknown on 404."""
        headers = {"Accept": ", ".join(accept)} if accept else {}
        with self.request("GET", f"{repository}/manifests/{reference}", repository, headers) as response:
            if response.status_code == 404:
                raise ManifestUnknown({"upstream": self.upstream.remoteurl, "reference": reference})
            self._expect_ok(response)
            body = response.read()
            stats.add(self.label, "upstream_bytes", len(body))
            content_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
            return body, content_type, response.headers.get("docker-content-digest")

    def head_manifest(self, repository: str, reference: str, accept: list[str]) -> str | None:
        """The digest the upstream names for `reference` now (None if it names none)."""
        headers = {"Accept": ", ".join(accept)} if accept else {}
        with self.request("HEAD", f"{repository}/manifests/{reference}", repository, headers) as response:
            if response.status_code == 404:
                raise ManifestUnknown({"upstream": self.upstream.remoteurl, "reference": reference})
            self._expect_ok(response)
            return response.headers.get("docker-content-digest")

    @contextmanager
    def open_blob(self, repository: str, digest: str) -> Iterator[httpx.Response]:
        """The upstream's 200 response for blob `digest`, body not yet read."""
        with self.request("GET", f"{repository}/blobs/{digest}", repository) as response:
            if response.status_code == 404:
                raise BlobUnknown({"upstream": self.upstream.remoteurl, "digest": digest})
            self._expect_ok(response)
            yield response

    def get_json(
        self, repository: str, path: str, query: dict[str, str] | None = None
    ) -> tuple[Any, dict[str, str]]:
        """(decoded JSON, response headers) of GET /v2/<repository>/<path>; NameUnknown on 404."""
        suffix = f"{repository}/{path}"
        if query:
            suffix += "?" + str(httpx.QueryParams(query))
        with self.request("GET", suffix, repository) as response:
            if response.status_code == 404:
                raise NameUnknown({"upstream": self.upstream.remoteurl, "repository": repository})
            self._expect_ok(response)
            body = response.read()
            stats.add(self.label, "upstream_bytes", len(body))
            try:
                return httpx.Response(200, content=body).json(), dict(response.headers)
            except ValueError:
                raise self._error("upstream answered malformed JSON", response) from None

    def _expect_ok(self, response: httpx.Response) -> None:
        if response.status_code != 200:
            raise self._error(f"upstream answered {response.status_code}", response)


_clients: dict[Upstream, UpstreamClient] = {}
_clients_lock = threading.Lock()


def client_for(upstream: Upstream) -> UpstreamClient:
    """The process's one client per upstream (shared token cache and connection pool)."""
    with _clients_lock:
        client = _clients.get(upstream)
        if client is None:
            client = _clients[upstream] = UpstreamClient(upstream)
        return client
