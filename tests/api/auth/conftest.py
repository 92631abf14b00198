"""Helpers for the auth tests: htpasswd files, keys and certificates, a tiny Starlette app.

The app has one route, `/check?repo=<name>&actions=pull,push`, that calls
`Access.authorize` the way the registry router does, plus the built-in token endpoint when
enabled. Its error handler is the wiring the API's error mapper must do: status from the
error class, `WWW-Authenticate` from `challenge_headers`.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from api.auth import Access
from api.auth.challenge import challenge_headers
from api.auth.tokens import PrivateKey, libtrust_key_id
from pipeline.config import AuthSettings, HtpasswdAuth, Settings, TokenAuth
from pipeline.errors import Denied, RegistryError, TooManyRequests, Unauthorized

ISSUER = "test-issuer"
SERVICE = "test-service"
REALM = "https://auth.example.test/token"


def bcrypt_hash(password: str, prefix: str = "$2y$") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return prefix + hashed[4:]


def write_htpasswd(path: Path, users: dict[str, str], extra: str = "") -> Path:
    lines = [f"{user}:{bcrypt_hash(pw)}" for user, pw in users.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def touch_newer(path: Path) -> None:
    """Make sure the file's mtime differs from what a watcher saw (coarse clocks)."""
    st = path.stat()
    ns = st.st_mtime_ns + 5_000_000_000
    import os

    os.utime(path, ns=(ns, ns))


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def out_of_scope(response: Any, scope: str) -> bool:
    """Did the registry refuse a valid token for lacking `scope`, the way distribution's
    token controller does: 401 UNAUTHORIZED with a Bearer challenge saying
    `error="insufficient_scope"` and naming the scope to ask the token server for?"""
    challenge = response.headers.get("WWW-Authenticate", "")
    return (
        response.status_code == 401
        and response.json()["errors"][0]["code"] == "UNAUTHORIZED"
        and challenge.startswith("Bearer ")
        and 'error="insufficient_scope"' in challenge
        and f'scope="{scope}"' in challenge
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def htpasswd_settings(htpasswd: Path, policy: Path | None = None, anonymous_pull: bool = False) -> Settings:
    return Settings(
        auth=AuthSettings(
            htpasswd=HtpasswdAuth(realm="Lading Test", path=str(htpasswd)),
            policy_path=str(policy) if policy else "",
            anonymous_pull=anonymous_pull,
        )
    )


def token_settings(**token: Any) -> Settings:
    policy_path = token.pop("policy_path", "")
    anonymous_pull = token.pop("anonymous_pull", False)
    fields: dict[str, Any] = {"realm": REALM, "service": SERVICE, "issuer": ISSUER}
    fields.update(token)
    return Settings(
        auth=AuthSettings(token=TokenAuth(**fields), policy_path=policy_path, anonymous_pull=anonymous_pull)
    )


# --- the app ---------------------------------------------------------------------------


async def _on_auth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RegistryError)
    status, code = (401, "UNAUTHORIZED") if isinstance(exc, Unauthorized) else (403, "DENIED")
    body = {"errors": [{"code": code, "message": exc.text, "detail": exc.detail}]}
    return JSONResponse(body, status_code=status, headers=challenge_headers(exc))


async def _on_throttled(request: Request, exc: Exception) -> Response:
    from api.errors import error_response

    return error_response(exc)


def make_app(access: Access) -> Starlette:
    async def check(request: Request) -> Response:
        repo = request.query_params.get("repo") or None
        actions = {a for a in request.query_params.get("actions", "").split(",") if a}
        identity = await access.authorize(request, repo, actions)
        body = {"name": identity.name, "source": identity.source, "groups": sorted(identity.groups)}
        return JSONResponse(body)

    return Starlette(
        routes=[Route("/check", check), *access.routes()],
        exception_handlers={
            Unauthorized: _on_auth_error,
            Denied: _on_auth_error,
            TooManyRequests: _on_throttled,
        },
    )


@pytest.fixture
def client_for() -> Iterator[Any]:
    clients: list[TestClient] = []

    def build(settings: Settings) -> tuple[TestClient, Access]:
        access = Access(settings)
        client = TestClient(make_app(access), base_url="http://registry.test")
        clients.append(client)
        return client, access

    yield build
    for c in clients:
        c.close()


# --- keys, certificates, tokens --------------------------------------------------------


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_cert(
    key: PrivateKey,
    cn: str,
    *,
    issuer_key: PrivateKey | None = None,
    issuer_cn: str | None = None,
    ca: bool = False,
    days: int = 30,
    start_days_ago: int = 1,
    path_length: int | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    signer = issuer_key or key
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn or cn)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=start_days_ago))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    )
    algorithm = None if signer.__class__.__name__.startswith("Ed25519") else hashes.SHA256()
    return builder.sign(signer, algorithm)


def write_bundle(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def write_private_key(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path


def der_b64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "alice",
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": "test",
        "access": [{"type": "repository", "name": "a", "actions": ["pull"]}],
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def make_token(
    key: PrivateKey,
    *,
    alg: str = "ES256",
    kid: str | None = "libtrust",
    x5c: list[str] | None = None,
    **overrides: Any,
) -> str:
    headers: dict[str, Any] = {}
    if kid == "libtrust":
        kid = libtrust_key_id(key.public_key())
    if kid is not None:
        headers["kid"] = kid
    if x5c is not None:
        headers["x5c"] = x5c
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(payload).encode())
    return f"{head}.{body}.{b64url(signature)}"
