"""Registry bearer tokens (distribution's JWT profile): trusting keys, verifying, issuing.

A token is a signed JWT whose `access` claim lists what its holder may do:
`[{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]`. The registry
accepts it when

- `alg` is RS256, ES256 or EdDSA and fits the key (never `none`, never HS*: a public key
  must not double as an HMAC secret);
- the signing key is trusted: the header's `x5c` chain leads to a certificate in
  `rootcertbundle`, or its `kid` names a trusted key (a certificate's key, by libtrust
  fingerprint or RFC 7638 thumbprint, or a `jwks` key by its `kid`); without either, every
  trusted key is tried;
- the signature verifies, `iss` is the configured issuer, `aud` contains the service,
  and the current time is within `nbf`..`exp` (with LEEWAY_SECONDS of clock skew).

The built-in token server signs with `TokenSigner`; its tokens carry a libtrust-style
`kid`, which distribution 2.x also understands. Refresh tokens (for `docker login` /
OAuth2 `refresh_token` grants) are JWTs for a different audience, so a registry never
mistakes one for an access token.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from pipeline.errors import ConfigurationError

ALGORITHMS = ("RS256", "ES256", "EdDSA")
LEEWAY_SECONDS = 60
MIN_EXPIRES_IN = 60  # the token spec: never hand out a token with less than 60 s to live
REFRESH_LIFETIME_SECONDS = 30 * 24 * 3600
MAX_CHAIN_LENGTH = 10
_REFRESH_USE = "refresh"

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class InvalidToken(Exception):
    """The presented token cannot be trusted (the reason is for logs, never for clients)."""


def algorithm_for(key: PublicKey | PrivateKey) -> str | None:
    """The one JWS algorithm Lading accepts for `key`, or None if the key is unusable."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return "RS256" if key.key_size >= 2048 else None
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return "ES256" if isinstance(key.curve, ec.SECP256R1) else None
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "EdDSA"
    return None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")


def libtrust_key_id(key: PublicKey) -> str:
    """distribution 2.x's key id: SHA-256 of the DER public key, first 240 bits, base32,
    in colon-separated groups of four (`PYYO:TEWU:…`)."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def jwk_thumbprint(key: PublicKey) -> str:
    """The RFC 7638 SHA-256 thumbprint of `key` (distribution 3's key id for certificates)."""
    members: dict[str, str]
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        members = {"e": _b64url(_int_bytes(numbers.e)), "kty": "RSA", "n": _b64url(_int_bytes(numbers.n))}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        size = (key.curve.key_size + 7) // 8
        point = key.public_numbers()
        curves = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        crv = curves.get(key.curve.name, key.curve.name)
        members = {
            "crv": crv,
            "kty": "EC",
            "x": _b64url(_int_bytes(point.x, size)),
            "y": _b64url(_int_bytes(point.y, size)),
        }
    else:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        members = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return _b64url(hashlib.sha256(canonical).digest())


def _as_public(key: Any) -> PublicKey | None:
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        key = key.public_key()
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        return key
    return None


# --- loading keys ----------------------------------------------------------------------


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigurationError(key, f"{key}: cannot read {path}: {exc}") from exc


def load_certificates(path: str, key: str = "auth.token.rootcertbundle") -> list[x509.Certificate]:
    """Every CERTIFICATE block of a PEM bundle (other blocks are skipped)."""
    data = _read(path, key)
    try:
        certs = x509.load_pem_x509_certificates(data) if b"-----BEGIN CERTIFICATE-----" in data else []
    except ValueError as exc:
        raise ConfigurationError(key, f"{key}: {path}: invalid certificate: {exc}") from exc
    for cert in certs:
        if _as_public(cert.public_key()) is None:
            raise ConfigurationError(key, f"{key}: {path}: unsupported certificate key type")
    return certs


def load_jwks(path: str, key: str = "auth.token.jwks") -> list[tuple[str | None, PublicKey]]:
    """The asymmetric public keys of a JWK Set file, each with its `kid` (if any)."""
    try:
        data = json.loads(_read(path, key))
    except ValueError as exc:
        raise ConfigurationError(key, f"{key}: {path} is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigurationError(key, f'{key}: {path} must be a JWK Set ({{"keys": [...]}})')
    keys: list[tuple[str | None, PublicKey]] = []
    for index, item in enumerate(data["keys"]):
        if not isinstance(item, dict) or item.get("kty") == "oct":
            continue  # symmetric keys can never verify a registry token
        try:
            public = _as_public(jwt.PyJWK(item).key)
        except jwt.PyJWTError as exc:
            raise ConfigurationError(key, f"{key}: {path}: key {index}: {exc}") from exc
        if public is not None:
            kid = item.get("kid")
            keys.append((kid if isinstance(kid, str) and kid else None, public))
    return keys


_PRIVATE_PEM = re.compile(rb"-----BEGIN ((?:RSA |EC |)PRIVATE KEY)-----.+?-----END \1-----", re.S)


def load_private_key(path: str, key: str = "lading.auth.token.signing_key") -> PrivateKey:
    """The signing key from a PEM file (PKCS#8, SEC1 EC or PKCS#1 RSA; extra blocks ignored)."""
    match = _PRIVATE_PEM.search(_read(path, key))
    if match is None:
        raise ConfigurationError(key, f"{key}: {path} holds no PEM private key")
    try:
        private = serialization.load_pem_private_key(match.group(0), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(key, f"{key}: {path}: cannot load private key: {exc}") from exc
    if not isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ConfigurationError(key, f"{key}: {path}: use an EC P-256, RSA or Ed25519 key")
    if algorithm_for(private) is None:
        raise ConfigurationError(key, f"{key}: {path}: use an EC P-256, RSA (2048+ bits) or Ed25519 key")
    return private


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ES256 signing key (for a built-in token server with no configured key)."""
    return ec.generate_private_key(ec.SECP256R1())


# --- access claims ---------------------------------------------------------------------


@dataclass(frozen=True)
class AccessEntry:
    """One entry of a token's `access` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}

    def permits(self, type_: str, name: str, action: str) -> bool:
        return self.type == type_ and self.name == name and (action in self.actions or "*" in self.actions)


def resource_type(value: str) -> str:
    """`repository(plugin)` → `repository`: the resource class is deprecated and ignored."""
    return value.split("(", 1)[0]


def parse_access(claim: Any) -> tuple[AccessEntry, ...]:
    """The `access` claim as entries; anything but distribution's shape is InvalidToken."""
    if claim is None:
        return ()
    if not isinstance(claim, list):
        raise InvalidToken("access claim is not a list")
    entries = []
    for item in claim:
        if not isinstance(item, dict):
            raise InvalidToken("access entry is not an object")
        type_, name, actions = item.get("type"), item.get("name"), item.get("actions") or []
        if not isinstance(type_, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise InvalidToken("malformed access entry")
        if not all(isinstance(a, str) for a in actions):
            raise InvalidToken("malformed access actions")
        entries.append(AccessEntry(resource_type(type_), name, tuple(actions)))
    return tuple(entries)


# --- verifying -------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedToken:
    subject: str
    access: tuple[AccessEntry, ...]
    claims: dict[str, Any]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TrustStore:
    """The keys and root certificates tokens may be signed with."""

    def __init__(
        self, roots: Iterable[x509.Certificate] = (), keys: Iterable[tuple[str | None, PublicKey]] = ()
    ) -> None:
        self.roots: list[x509.Certificate] = []
        self._root_der: set[bytes] = set()
        self._keys: list[PublicKey] = []
        self._by_id: dict[str, PublicKey] = {}
        for cert in roots:
            self.add_root(cert)
        for kid, key in keys:
            self.add_key(key, kid)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def add_root(self, cert: x509.Certificate) -> None:
        self.roots.append(cert)
        self._root_der.add(cert.public_bytes(serialization.Encoding.DER))
        public = _as_public(cert.public_key())
        if public is not None:
            self.add_key(public)

    def add_key(self, key: PublicKey, kid: str | None = None) -> None:
        self._keys.append(key)
        ids = {libtrust_key_id(key), jwk_thumbprint(key)}
        if kid:
            ids.add(kid)
        for key_id in ids:
            self._by_id.setdefault(key_id, key)

    def candidates(self, header: dict[str, Any]) -> list[PublicKey]:
        """The trusted keys that may have signed a token with this header."""
        if "x5c" in header:
            return [self._verify_chain(header["x5c"])]
        kid = header.get("kid")
        if kid is not None:
            key = self._by_id.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise InvalidToken(f"untrusted key id {kid!r}")
            return [key]
        return list(self._keys)

    def _verify_chain(self, x5c: Any) -> PublicKey:
        if not isinstance(x5c, list) or not x5c or len(x5c) > MAX_CHAIN_LENGTH:
            raise InvalidToken("malformed x5c chain")
        try:
            chain = [
                x509.load_der_x509_certificate(base64.b64decode(item, validate=True))
                for item in x5c
                if isinstance(item, str)
            ]
        except (ValueError, binascii.Error) as exc:
            raise InvalidToken(f"undecodable x5c certificate: {exc}") from exc
        if len(chain) != len(x5c):
            raise InvalidToken("malformed x5c chain")
        leaf, intermediates = chain[0], chain[1:]
        if not self.roots:
            raise InvalidToken("x5c chain but no rootcertbundle to verify it against")
        # RFC 5280 path validation (cryptography's verifier, as Go's x509.Verify under
        # distribution): validity periods, signatures, CA basic constraints and path-length
        # limits. Token-signing leaves carry no particular EKU or SAN, so the leaf's
        # extensions are not held to any profile.
        ca_policy = ExtensionPolicy.permit_all().require_present(
            x509.BasicConstraints, Criticality.AGNOSTIC, None
        )
        verifier = (
            PolicyBuilder()
            .store(Store(self.roots))
            .time(_now())
            .max_chain_depth(MAX_CHAIN_LENGTH)
            .extension_policies(ca_policy=ca_policy, ee_policy=ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, intermediates)
        except VerificationError as exc:
            raise InvalidToken(f"x5c chain does not validate to a trusted root: {exc}") from None
        public = _as_public(leaf.public_key())
        if public is None:
            raise InvalidToken("unsupported x5c leaf key")
        return public


class TokenVerifier:
    """Checks bearer tokens presented to the registry."""

    def __init__(self, issuer: str, service: str, trust: TrustStore, leeway: float = LEEWAY_SECONDS) -> None:
        self.issuer = issuer
        self.service = service
        self.trust = trust
        self.leeway = leeway

    def verify(self, raw: str) -> VerifiedToken:
        """The token's subject and access, or InvalidToken."""
        claims = decode_token(raw, self.trust, issuer=self.issuer, audience=self.service, leeway=self.leeway)
        if claims.get("token_use") == _REFRESH_USE:
            raise InvalidToken("a refresh token is not an access token")
        subject = claims.get("sub", "")
        if not isinstance(subject, str):
            raise InvalidToken("sub is not a string")
        return VerifiedToken(subject=subject, access=parse_access(claims.get("access")), claims=claims)


def decode_token(raw: str, trust: TrustStore, *, issuer: str, audience: str, leeway: float) -> dict[str, Any]:
    """The verified claims of `raw` (signature, algorithm, iss, aud, exp, nbf) or InvalidToken."""
    if not raw or raw.count(".") != 2:
        raise InvalidToken("malformed token")
    try:
        header = jwt.get_unverified_header(raw)
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"malformed token header: {exc}") from exc
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise InvalidToken(f"signing algorithm {alg!r} not accepted")
    keys = [k for k in trust.candidates(header) if algorithm_for(k) == alg]
    if not keys:
        raise InvalidToken(f"no trusted {alg} key")
    for key in keys:
        try:
            claims: dict[str, Any] = jwt.decode(
                raw,
                key=key,
                algorithms=[alg],
                audience=audience,
                issuer=[issuer],
                leeway=leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        return claims
    raise InvalidToken("signature verification failed")


# --- issuing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    token: str
    issued_at: dt.datetime
    expires_in: int


class TokenSigner:
    """Signs access and refresh tokens for the built-in token server."""

    def __init__(self, private_key: PrivateKey, issuer: str, service: str, expiration_seconds: int) -> None:
        algorithm = algorithm_for(private_key)
        if algorithm is None:
            raise ConfigurationError("lading.auth.token.signing_key", "unsupported signing key")
        self.algorithm = algorithm
        self._private_key = private_key
        self.public_key: PublicKey = private_key.public_key()
        self.kid = libtrust_key_id(self.public_key)
        self.issuer = issuer
        self.service = service
        self.expires_in = max(int(expiration_seconds), MIN_EXPIRES_IN)
        self._own = TrustStore(keys=[(self.kid, self.public_key)])

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._private_key, algorithm=self.algorithm, headers={"kid": self.kid})

    def issue(self, subject: str, access: Sequence[AccessEntry], now: float | None = None) -> IssuedToken:
        """An access token for `subject` granting exactly `access`."""
        moment = time.time() if now is None else now
        issued = int(moment)
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": issued + self.expires_in,
            "nbf": issued,
            "iat": issued,
            "iat_ms": int(moment * 1000),  # `lading tokens revoke` compares at this grain
            "jti": secrets.token_urlsafe(18),
            "access": [entry.to_json() for entry in access],
        }
        return IssuedToken(self._sign(claims), dt.datetime.fromtimestamp(issued, dt.UTC), self.expires_in)

    @property
    def _refresh_audience(self) -> str:
        return f"{self.service}#refresh"

    def issue_refresh(self, subject: str, credential: str, family: str | None = None) -> str:
        """A long-lived refresh token for `subject` (only this token server accepts it),
        bound to `credential` (see `Htpasswd.credential_id`): it stops working when the
        user's htpasswd entry changes. `family` ties a rotated token to the login it
        descends from (a new login starts a new family)."""
        now = time.time()
        issued = int(now)
        return self._sign(
            {
                "iss": self.issuer,
                "sub": subject,
                "aud": self._refresh_audience,
                "iat_ms": int(now * 1000),  # revocations compare at a finer grain than iat
                "exp": issued + REFRESH_LIFETIME_SECONDS,
                "nbf": issued,
                "iat": issued,
                "jti": secrets.token_urlsafe(18),
                "token_use": _REFRESH_USE,
                "cred": credential,
                "fam": family or secrets.token_urlsafe(12),
            }
        )

    def verify_refresh(self, raw: str) -> RefreshClaims:
        """The claims of a refresh token this signer issued, or InvalidToken."""
        claims = decode_token(
            raw, self._own, issuer=self.issuer, audience=self._refresh_audience, leeway=LEEWAY_SECONDS
        )
        subject = claims.get("sub")
        if claims.get("token_use") != _REFRESH_USE or not isinstance(subject, str) or not subject:
            raise InvalidToken("not a refresh token")
        fields = (claims.get("jti"), claims.get("cred"), claims.get("fam"))
        numbers = (claims.get("iat_ms"), claims.get("exp"))
        if not all(isinstance(f, str) and f for f in fields) or not all(isinstance(n, int) for n in numbers):
            raise InvalidToken(
                "refresh token without id, credential binding or family (issued before rotation)"
            )
        issued_ms, expires = numbers
        return RefreshClaims(subject, *fields, issued_ms / 1000, expires)  # type: ignore[arg-type,operator]


@dataclass(frozen=True)
class RefreshClaims:
    subject: str
    token_id: str
    credential: str
    family: str
    issued_at: float  # Unix seconds, millisecond precision
    expires_at: int
