"""Bearer token verification: what a registry must accept, and everything it must refuse."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from api.auth import Access, Identity
from api.auth.tokens import AccessEntry, jwk_thumbprint, libtrust_key_id
from pipeline.errors import ConfigurationError
from tests.api.auth.conftest import (
    ISSUER,
    REALM,
    SERVICE,
    b64url,
    bearer,
    claims,
    der_b64,
    ec_key,
    make_cert,
    make_token,
    out_of_scope,
    token_settings,
    unsigned_token,
    write_bundle,
)


@pytest.fixture
def signing_key() -> Any:
    return ec_key()


@pytest.fixture
def bundle(tmp_path: Path, signing_key: Any) -> Path:
    return write_bundle(tmp_path / "bundle.pem", make_cert(signing_key, "token-signer"))


@pytest.fixture
def client(client_for: Any, bundle: Path) -> Any:
    return client_for(token_settings(rootcertbundle=str(bundle)))[0]


def pulls_a(client: Any, token: str) -> int:
    return int(client.get("/check?repo=a&actions=pull", headers=bearer(token)).status_code)


def test_no_token_gets_a_bearer_challenge_with_the_needed_scope(client: Any) -> None:
    r = client.get("/check?repo=team/app&actions=push,pull")
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer realm="{REALM}",service="{SERVICE}",scope="repository:team/app:pull,push"'
    )
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert r.json()["errors"][0]["detail"] == [
        {"Type": "repository", "Name": "team/app", "Action": "pull"},
        {"Type": "repository", "Name": "team/app", "Action": "push"},
    ]
    ping = client.get("/check")
    assert ping.status_code == 401
    assert ping.headers["WWW-Authenticate"] == f'Bearer realm="{REALM}",service="{SERVICE}"'
    catalog = client.get("/check?actions=catalog")
    assert 'scope="registry:catalog:*"' in catalog.headers["WWW-Authenticate"]


def test_basic_credentials_are_not_a_token(client: Any) -> None:
    r = client.get("/check?repo=a&actions=pull", headers={"Authorization": "Basic YWxpY2U6eA=="})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer ")
    assert "error=" not in r.headers["WWW-Authenticate"]


def test_valid_token_is_accepted(client: Any, signing_key: Any) -> None:
    r = client.get("/check?repo=a&actions=pull", headers=bearer(make_token(signing_key)))
    assert r.status_code == 200
    assert r.json() == {"name": "alice", "source": "token", "groups": []}


def test_key_found_by_rfc7638_thumbprint_or_without_kid(client: Any, signing_key: Any) -> None:
    thumb = jwk_thumbprint(signing_key.public_key())
    assert pulls_a(client, make_token(signing_key, kid=thumb)) == 200
    assert pulls_a(client, make_token(signing_key, kid=None)) == 200


def test_token_scope_limits_what_it_may_do(client: Any, signing_key: Any) -> None:
    token = bearer(make_token(signing_key, access=[{"type": "repository", "name": "a", "actions": ["pull"]}]))
    assert client.get("/check?repo=a&actions=pull", headers=token).status_code == 200
    # Out of the token's scope: distribution's 401 with an insufficient_scope challenge,
    # which tells a client to ask the token server for a wider token (a 403 ends a push).
    assert out_of_scope(
        client.get("/check?repo=a&actions=pull,push", headers=token), "repository:a:pull,push"
    )
    assert out_of_scope(client.get("/check?repo=b&actions=pull", headers=token), "repository:b:pull")
    assert out_of_scope(client.get("/check?actions=catalog", headers=token), "registry:catalog:*")
    # The ping only needs a valid token.
    assert client.get("/check", headers=token).status_code == 200


def test_wildcard_actions_plugin_class_and_catalog(client: Any, signing_key: Any) -> None:
    token = bearer(
        make_token(
            signing_key,
            access=[
                {"type": "repository", "name": "a", "actions": ["*"]},
                {"type": "repository(plugin)", "name": "p", "actions": ["pull"]},
                {"type": "registry", "name": "catalog", "actions": ["*"]},
            ],
        )
    )
    assert client.get("/check?repo=a&actions=pull,push,delete", headers=token).status_code == 200
    assert client.get("/check?repo=p&actions=pull", headers=token).status_code == 200
    assert client.get("/check?actions=catalog", headers=token).status_code == 200


def test_audience_may_be_a_list(client: Any, signing_key: Any) -> None:
    token = make_token(signing_key, aud=["other", SERVICE])
    assert client.get("/check?repo=a&actions=pull", headers=bearer(token)).status_code == 200


def _rejected(client: Any, token: str) -> None:
    r = client.get("/check?repo=a&actions=pull", headers=bearer(token))
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"] == (
        f'Bearer realm="{REALM}",service="{SERVICE}",scope="repository:a:pull",error="invalid_token"'
    )
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"


def test_expired_token_is_rejected(client: Any, signing_key: Any) -> None:
    now = int(time.time())
    _rejected(client, make_token(signing_key, exp=now - 3600, nbf=now - 7200, iat=now - 7200))


def test_not_yet_valid_token_is_rejected(client: Any, signing_key: Any) -> None:
    now = int(time.time())
    _rejected(client, make_token(signing_key, nbf=now + 3600, exp=now + 7200))


def test_token_without_expiry_is_rejected(client: Any, signing_key: Any) -> None:
    _rejected(client, make_token(signing_key, exp=None))


def test_wrong_issuer_is_rejected(client: Any, signing_key: Any) -> None:
    _rejected(client, make_token(signing_key, iss="someone-else"))
    _rejected(client, make_token(signing_key, iss=ISSUER[:-1]))


def test_wrong_audience_is_rejected(client: Any, signing_key: Any) -> None:
    _rejected(client, make_token(signing_key, aud="another-registry"))
    _rejected(client, make_token(signing_key, aud=None))


def test_token_signed_by_an_untrusted_key_is_rejected(client: Any, signing_key: Any) -> None:
    stranger = ec_key()
    # Claims a trusted key id but is signed by another key.
    _rejected(client, make_token(stranger, kid=libtrust_key_id(signing_key.public_key())))
    # Names its own (untrusted) key.
    _rejected(client, make_token(stranger))
    _rejected(client, make_token(stranger, kid=None))


def test_tampered_token_is_rejected(client: Any, signing_key: Any) -> None:
    head, _, sig = make_token(signing_key).split(".")
    everything = [{"type": "repository", "name": "a", "actions": ["*"]}]
    forged = b64url(json.dumps(claims(access=everything)).encode())
    _rejected(client, f"{head}.{forged}.{sig}")


def test_alg_none_is_rejected(client: Any, signing_key: Any) -> None:
    kid = libtrust_key_id(signing_key.public_key())
    _rejected(client, unsigned_token({"alg": "none", "typ": "JWT", "kid": kid}, claims()))
    _rejected(client, unsigned_token({"alg": "none", "typ": "JWT"}, claims()))


def test_hs256_with_the_public_key_as_secret_is_rejected(client: Any, signing_key: Any, bundle: Path) -> None:
    public_pem = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public_pem, bundle.read_bytes()):
        header = {"alg": "HS256", "typ": "JWT", "kid": libtrust_key_id(signing_key.public_key())}
        head = b64url(json.dumps(header).encode())
        body = b64url(json.dumps(claims()).encode())
        sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        _rejected(client, f"{head}.{body}.{b64url(sig)}")


def test_algorithm_must_fit_the_key(client: Any, signing_key: Any) -> None:
    # The same valid ES256 signature under a header naming another algorithm is refused.
    _, body, sig = make_token(signing_key).split(".")
    kid = libtrust_key_id(signing_key.public_key())
    for alg in ("ES384", "RS256", "EdDSA", "PS256"):
        head = b64url(json.dumps({"alg": alg, "kid": kid}).encode())
        _rejected(client, f"{head}.{body}.{sig}")


@pytest.mark.parametrize("raw", ["", "garbage", "a.b", "a.b.c", "x.y.z.w"])
def test_malformed_tokens_are_rejected(client: Any, raw: str) -> None:
    r = client.get("/check?repo=a&actions=pull", headers={"Authorization": f"Bearer {raw}"})
    assert r.status_code == 401


def test_malformed_access_claim_is_rejected(client: Any, signing_key: Any) -> None:
    _rejected(client, make_token(signing_key, access={"type": "repository"}))
    not_a_list = [{"type": "repository", "name": "a", "actions": "pull"}]
    _rejected(client, make_token(signing_key, access=not_a_list))


# --- x5c chains ------------------------------------------------------------------------


def test_x5c_chain_to_a_root_in_the_bundle(client_for: Any, tmp_path: Path) -> None:
    root_key, inter_key, leaf_key = ec_key(), ec_key(), ec_key()
    root = make_cert(root_key, "root", ca=True)
    inter = make_cert(inter_key, "intermediate", issuer_key=root_key, issuer_cn="root", ca=True)
    leaf = make_cert(leaf_key, "leaf", issuer_key=inter_key, issuer_cn="intermediate")
    client, _ = client_for(token_settings(rootcertbundle=str(write_bundle(tmp_path / "b.pem", root))))

    token = make_token(leaf_key, kid=None, x5c=[der_b64(leaf), der_b64(inter)])
    assert client.get("/check?repo=a&actions=pull", headers=bearer(token)).status_code == 200
    # Without the intermediate the chain does not reach the root.
    _rejected(client, make_token(leaf_key, kid=None, x5c=[der_b64(leaf)]))
    # A chain to a root that is not in the bundle.
    other_root_key = ec_key()
    other_leaf = make_cert(leaf_key, "leaf", issuer_key=other_root_key, issuer_cn="root")
    _rejected(client, make_token(leaf_key, kid=None, x5c=[der_b64(other_leaf)]))
    # A valid chain, but the token is signed by a different key than the leaf's.
    _rejected(client, make_token(ec_key(), kid=None, x5c=[der_b64(leaf), der_b64(inter)]))
    # A non-CA intermediate may not sign.
    fake_inter = make_cert(inter_key, "intermediate", issuer_key=root_key, issuer_cn="root", ca=False)
    _rejected(client, make_token(leaf_key, kid=None, x5c=[der_b64(leaf), der_b64(fake_inter)]))
    _rejected(client, make_token(leaf_key, kid=None, x5c=["not base64!"]))


def test_x5c_chain_over_a_root_path_length_limit_is_rejected(client_for: Any, tmp_path: Path) -> None:
    # A root with pathLen 0 may sign only leaves; a CA intermediate under it breaks the
    # limit, and distribution (Go's x509.Verify) refuses the chain. Before: accepted.
    root_key, inter_key, leaf_key = ec_key(), ec_key(), ec_key()
    root = make_cert(root_key, "root", ca=True, path_length=0)
    inter = make_cert(inter_key, "intermediate", issuer_key=root_key, issuer_cn="root", ca=True)
    leaf = make_cert(leaf_key, "leaf", issuer_key=inter_key, issuer_cn="intermediate")
    client, _ = client_for(token_settings(rootcertbundle=str(write_bundle(tmp_path / "b.pem", root))))
    _rejected(client, make_token(leaf_key, kid=None, x5c=[der_b64(leaf), der_b64(inter)]))
    # The same leaf directly under that root is fine.
    direct = make_cert(leaf_key, "leaf", issuer_key=root_key, issuer_cn="root")
    token = make_token(leaf_key, kid=None, x5c=[der_b64(direct)])
    assert client.get("/check?repo=a&actions=pull", headers=bearer(token)).status_code == 200
    # And an intermediate limited to pathLen 0 may not sign another CA either.
    limited = make_cert(
        inter_key, "intermediate", issuer_key=root_key, issuer_cn="root", ca=True, path_length=0
    )
    sub_key = ec_key()
    sub = make_cert(sub_key, "sub", issuer_key=inter_key, issuer_cn="intermediate", ca=True)
    sub_leaf = make_cert(leaf_key, "leaf", issuer_key=sub_key, issuer_cn="sub")
    root1 = make_cert(root_key, "root", ca=True)
    client, _ = client_for(token_settings(rootcertbundle=str(write_bundle(tmp_path / "b1.pem", root1))))
    chain = [der_b64(sub_leaf), der_b64(sub), der_b64(limited)]
    _rejected(client, make_token(leaf_key, kid=None, x5c=chain))


def test_x5c_with_an_expired_certificate_is_rejected(client_for: Any, tmp_path: Path) -> None:
    root_key, leaf_key = ec_key(), ec_key()
    root = make_cert(root_key, "root", ca=True)
    old_leaf = make_cert(leaf_key, "leaf", issuer_key=root_key, issuer_cn="root", days=-1, start_days_ago=10)
    client, _ = client_for(token_settings(rootcertbundle=str(write_bundle(tmp_path / "b.pem", root))))
    _rejected(client, make_token(leaf_key, kid=None, x5c=[der_b64(old_leaf)]))


def test_x5c_leaf_that_is_itself_in_the_bundle(client: Any, signing_key: Any, bundle: Path) -> None:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(bundle.read_bytes())
    token = make_token(signing_key, kid=None, x5c=[der_b64(cert)])
    assert client.get("/check?repo=a&actions=pull", headers=bearer(token)).status_code == 200


# --- other key types and sources -------------------------------------------------------


def test_rsa_and_ed25519_keys(client_for: Any, tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    path = write_bundle(tmp_path / "b.pem", make_cert(rsa_key, "rsa"), make_cert(ed_key, "ed"))
    client, _ = client_for(token_settings(rootcertbundle=str(path)))
    assert pulls_a(client, make_token(rsa_key, alg="RS256")) == 200
    assert pulls_a(client, make_token(ed_key, alg="EdDSA")) == 200
    _rejected(client, make_token(rsa_key, alg="PS256"))
    _rejected(client, make_token(rsa_key, alg="RS512"))


def test_jwks_keys_by_kid(client_for: Any, tmp_path: Path) -> None:
    import jwt

    key = ec_key()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "my-key-1"
    oct_key = {"kty": "oct", "k": b64url(b"secret-secret-secret"), "kid": "hmac"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk, oct_key]}))
    client, _ = client_for(token_settings(jwks=str(path)))
    assert pulls_a(client, make_token(key, kid="my-key-1")) == 200
    _rejected(client, make_token(ec_key(), kid="my-key-1"))
    # A symmetric key in the set is never trusted.
    header = {"alg": "HS256", "kid": "hmac"}
    head, body = b64url(json.dumps(header).encode()), b64url(json.dumps(claims()).encode())
    sig = hmac.new(b"secret-secret-secret", f"{head}.{body}".encode(), hashlib.sha256).digest()
    _rejected(client, f"{head}.{body}.{b64url(sig)}")


def test_token_auth_without_any_key_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        Access(token_settings())
    with pytest.raises(ConfigurationError):
        Access(token_settings(rootcertbundle=str(tmp_path / "missing.pem")))


def test_allowed_uses_the_token_claims_only(bundle: Path) -> None:
    access = Access(token_settings(rootcertbundle=str(bundle)))
    ident = Identity(
        name="alice",
        source="token",
        token_access=(AccessEntry("repository", "a", ("pull",)), AccessEntry("repository", "b", ("*",))),
    )
    assert access.allowed(ident, "a", "pull")
    assert not access.allowed(ident, "a", "push")
    assert access.allowed(ident, "b", "delete")
    assert not access.allowed(ident, "c", "pull")
    assert [r for r in ("a", "b", "c") if access.catalog_visible(ident, r)] == ["a", "b"]
    lister = Identity(name="x", source="token", token_access=(AccessEntry("registry", "catalog", ("*",)),))
    assert access.catalog_visible(lister, "c")
    assert not access.allowed(lister, "c", "pull")  # listing is not reading


def test_relative_realm_comes_from_configuration_never_the_host_header(client_for: Any, bundle: Path) -> None:
    # Before: the realm was built from the request's Host, so a client (or a cache keyed
    # without Host) could send users' credentials to a token server of its choosing.
    import dataclasses

    from api.auth import realm_url
    from pipeline.config import HttpSettings
    from pipeline.errors import ConfigurationError

    settings = token_settings(rootcertbundle=str(bundle), realm="/auth/token")
    client, _ = client_for(settings)
    r = client.get("/check?repo=a&actions=pull", headers={"Host": "evil.example"})
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="http://127.0.0.1:5000/auth/token",')
    behind = dataclasses.replace(settings, http=HttpSettings(host="https://registry.example.com/"))
    client, _ = client_for(behind)
    r = client.get("/check?repo=a&actions=pull", headers={"Host": "evil.example"})
    assert r.headers["WWW-Authenticate"].startswith('Bearer realm="https://registry.example.com/auth/token",')
    wildcard = dataclasses.replace(settings, http=HttpSettings(addr=":5000"))
    with pytest.raises(ConfigurationError, match=r"http\.host"):
        realm_url(wildcard)
