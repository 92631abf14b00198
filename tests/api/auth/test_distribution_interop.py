"""Tokens from Lading's built-in token server are accepted by CNCF distribution 2.8.2.

This proves the token format (libtrust `kid`, claims, `access`) is the one distribution's
token access controller expects: distribution is configured with a root certificate for
Lading's signing key and asked to authorize requests carrying Lading-issued tokens.
Fails (does not skip) when `docker-registry` is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.auth.conftest import (
    ISSUER,
    SERVICE,
    basic,
    ec_key,
    make_cert,
    token_settings,
    write_bundle,
    write_htpasswd,
    write_private_key,
)
from tests.support.distribution import distribution

pytestmark = pytest.mark.e2e

AUTH = """auth:
  token:
    realm: http://127.0.0.1:{port}/auth/token
    service: %s
    issuer: %s
    rootcertbundle: %s
"""


@pytest.fixture
def setup(tmp_path: Path, client_for: Any) -> Iterator[tuple[Any, str]]:
    key = ec_key()
    signing = write_private_key(tmp_path / "signing.pem", key)
    bundle = write_bundle(tmp_path / "bundle.pem", make_cert(key, "lading-token-server"))
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "wonderland"})
    client, _ = client_for(token_settings(builtin_htpasswd=str(htpasswd), builtin_signing_key=str(signing)))

    auth = AUTH % (SERVICE, ISSUER, bundle)
    with distribution(tmp_path / "data", tmp_path, extra=auth) as host:
        yield client, f"http://{host}"


def test_distribution_accepts_lading_tokens(setup: tuple[Any, str]) -> None:
    client, registry = setup
    r = client.get(
        "/auth/token",
        params=[("service", SERVICE), ("scope", "repository:team/app:pull,push")],
        headers=basic("alice", "wonderland"),
    )
    assert r.status_code == 200
    token = r.json()["token"]
    with httpx.Client(timeout=10) as http:
        assert http.get(f"{registry}/v2/").status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert http.get(f"{registry}/v2/", headers=auth).status_code == 200
        # Authorized: distribution answers about the (absent) repository, not about auth.
        tags = http.get(f"{registry}/v2/team/app/tags/list", headers=auth)
        assert tags.status_code == 404, tags.text
        assert tags.json()["errors"][0]["code"] == "NAME_UNKNOWN"
        # Outside the token's scope distribution refuses it.
        other = http.get(f"{registry}/v2/team/other/tags/list", headers=auth)
        assert other.status_code == 401
        assert 'error="insufficient_scope"' in other.headers["WWW-Authenticate"]
