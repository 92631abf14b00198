"""skopeo with credentials against `lading serve` under access control, both ways Lading offers:

- htpasswd: HTTP Basic checked against a bcrypt (`$2y$`) htpasswd file;
- token: the Docker token flow with Lading's built-in token endpoint. The registry answers
  `401 Bearer realm=http://127.0.0.1:<port>/auth/token,...`, skopeo follows the challenge
  to the endpoint with Basic credentials, and retries with the token it got.

A policy file decides what each user may do: `alice` everything, `reader` only pull on
`team/*`. Each mode is one real `lading serve CONFIG` process (embedded worker) with a
config YAML written here; skopeo is the only client.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.api.auth.conftest import ec_key, write_htpasswd, write_private_key
from tests.lading.procs import Running, lading_command, process_env, running
from tests.support import skopeo
from tests.support.images import Image, make_image, read_oci_layout, write_oci_layout
from tests.support.net import free_port, wait_http

pytestmark = pytest.mark.e2e

USERS = {"alice": "wonderland", "reader": "read-only-pw"}
ALICE = "alice:wonderland"
READER = "reader:read-only-pw"
POLICY = {
    "rules": [
        {"repositories": ["**"], "users": ["alice"], "actions": ["*"]},
        {"repositories": ["team/*"], "users": ["reader"], "actions": ["pull"]},
    ]
}
TOKEN_PATH = "/auth/token"
# What skopeo says when the registry or the token endpoint refuses it: bad credentials are
# "unauthorized", missing rights "denied" (a Basic user's 403; a token's 401 insufficient_scope,
# which skopeo reports as "denied: requested access to the resource is denied", as with
# distribution).
BAD_CREDENTIALS = ("unauthorized",)
NO_RIGHTS = ("denied", "403")
ANY_REFUSAL = BAD_CREDENTIALS + NO_RIGHTS


@dataclass
class Registry:
    mode: str
    host: str
    server: Running
    seed: Image  # pushed by alice as team/seed:v1 and other/app:v1


def config_for(mode: str, tmp: Path, port: int) -> dict[str, object]:
    htpasswd = write_htpasswd(tmp / "htpasswd", USERS)
    policy = tmp / "policy.yml"
    policy.write_text(yaml.safe_dump(POLICY))
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {"filesystem": {"rootdirectory": str(tmp / "root")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    if mode == "htpasswd":
        config["auth"] = {"htpasswd": {"realm": "lading-e2e", "path": str(htpasswd)}}
        config["lading"] = {"auth": {"policy": str(policy)}}
    else:
        key = write_private_key(tmp / "signing.pem", ec_key())
        config["auth"] = {
            "token": {
                "realm": f"http://127.0.0.1:{port}{TOKEN_PATH}",
                "service": "lading-e2e",
                "issuer": "lading-e2e-issuer",
            }
        }
        config["lading"] = {
            "auth": {
                "policy": str(policy),
                "token": {"htpasswd": str(htpasswd), "signing_key": str(key), "path": TOKEN_PATH},
            }
        }
    return config


def push(layout: Path, tag: str, dest: str, creds: str) -> None:
    skopeo.copy(f"oci:{layout}:{tag}", f"docker://{dest}", f"--dest-creds={creds}")


def failing(*args: str) -> str:
    """Run skopeo expecting it to fail; its stderr in lower case."""
    cmd = [skopeo.skopeo_binary(), "--insecure-policy", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, f"{' '.join(cmd)} succeeded:\n{result.stdout}"
    return result.stderr.lower()


def refused(expect: tuple[str, ...], *args: str) -> str:
    """Run skopeo expecting it to be refused for one of the reasons in `expect`; its stderr."""
    stderr = failing(*args)
    assert any(word in stderr for word in expect), stderr
    return stderr


def assert_missing(ref: str) -> None:
    """alice (who may pull everything) finds no manifest at `ref`."""
    stderr = failing("inspect", "--tls-verify=false", f"--creds={ALICE}", f"docker://{ref}")
    assert "manifest unknown" in stderr or "not found" in stderr, stderr


def refused_push(layout: Path, tag: str, dest: str, creds: str | None, expect: tuple[str, ...]) -> str:
    extra = [f"--dest-creds={creds}"] if creds else []
    return refused(
        expect, "copy", "--dest-tls-verify=false", *extra, f"oci:{layout}:{tag}", f"docker://{dest}"
    )


def refused_inspect(ref: str, creds: str | None, expect: tuple[str, ...]) -> str:
    extra = [f"--creds={creds}"] if creds else []
    return refused(expect, "inspect", "--tls-verify=false", *extra, f"docker://{ref}")


def access_log(server: Running) -> list[dict[str, object]]:
    records = []
    for line in server.output.splitlines():
        if '"lading.access"' in line:
            records.append(json.loads(line))
    return records


@pytest.fixture(scope="module", params=["htpasswd", "token"])
def registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    mode = str(request.param)
    tmp = tmp_path_factory.mktemp(f"auth-{mode}")
    port = free_port()
    config = tmp / "config.yml"
    config.write_text(yaml.safe_dump(config_for(mode, tmp, port)))
    seed = make_image([2000, 40_000])
    layout = write_oci_layout(seed, tmp / "seed", tag="v1")
    host = f"127.0.0.1:{port}"
    with running([*lading_command(), "serve", str(config)], process_env(), cwd=tmp) as server:
        wait_http(f"http://{host}/v2/", timeout=60, proc=server.proc)
        push(layout, "v1", f"{host}/team/seed:v1", ALICE)
        push(layout, "v1", f"{host}/other/app:v1", ALICE)
        yield Registry(mode, host, server, seed)


def test_user_pushes_and_pulls_with_credentials(registry: Registry, tmp_path: Path) -> None:
    image = make_image([1500, 250_000, 3000])
    layout = write_oci_layout(image, tmp_path / "src", tag="v1")
    repository = f"team/app-{uuid.uuid4().hex[:8]}"
    ref = f"{registry.host}/{repository}:v1"
    log_before = len(access_log(registry.server))

    push(layout, "v1", ref, ALICE)
    inspected = skopeo.inspect(f"docker://{ref}", f"--creds={ALICE}")
    assert inspected["Digest"] == image.manifest_digest
    out = tmp_path / "pulled"
    skopeo.copy(f"docker://{ref}", f"oci:{out}:v1", f"--src-creds={ALICE}")
    pulled = read_oci_layout(out)
    for digest, data in image.blobs.items():
        assert pulled[digest] == data, digest

    # The server's output is read by another thread: lines of the fixture's own pushes may
    # land after log_before was taken, and this push's line after skopeo returned. Only
    # this repository's manifest PUTs count, once its line is in.
    def manifest_puts(requests: list[dict[str, object]]) -> list[dict[str, object]]:
        path = f"/v2/{repository}/manifests/"
        return [r for r in requests if r["method"] == "PUT" and str(r["path"]).startswith(path)]

    deadline = time.monotonic() + 30
    requests = access_log(registry.server)[log_before:]
    while not manifest_puts(requests) and time.monotonic() < deadline:
        time.sleep(0.05)
        requests = access_log(registry.server)[log_before:]
    assert [r["status"] for r in manifest_puts(requests)] == [201]
    token_requests = [r for r in requests if r["path"] == TOKEN_PATH]
    if registry.mode == "token":
        # skopeo followed the Bearer challenge to the built-in endpoint and got tokens.
        assert any(r["status"] == 200 for r in token_requests), requests
    else:
        assert token_requests == []


def test_wrong_password_and_no_credentials_are_refused(registry: Registry, tmp_path: Path) -> None:
    layout = write_oci_layout(make_image([1000]), tmp_path / "src", tag="v1")
    repo = f"team/wrong-{uuid.uuid4().hex[:8]}"
    dest = f"{registry.host}/{repo}:v1"
    refused_push(layout, "v1", dest, "alice:not-her-password", BAD_CREDENTIALS)
    refused_push(layout, "v1", dest, "mallory:wonderland", BAD_CREDENTIALS)
    refused_push(layout, "v1", dest, None, ANY_REFUSAL)
    refused_inspect(f"{registry.host}/team/seed:v1", "alice:not-her-password", BAD_CREDENTIALS)
    refused_inspect(f"{registry.host}/team/seed:v1", None, ANY_REFUSAL)
    # Nothing of the refused pushes was stored.
    assert_missing(f"{registry.host}/{repo}:v1")


def test_pull_only_user_pulls_team_images_but_cannot_push(registry: Registry, tmp_path: Path) -> None:
    seed = f"{registry.host}/team/seed"
    digest = registry.seed.manifest_digest
    assert skopeo.inspect(f"docker://{seed}:v1", f"--creds={READER}")["Digest"] == digest
    out = tmp_path / "pulled"
    skopeo.copy(f"docker://{seed}:v1", f"oci:{out}:v1", f"--src-creds={READER}")
    assert read_oci_layout(out)[registry.seed.manifest_digest] == registry.seed.manifest

    # Outside team/*: not even pull.
    refused_inspect(f"{registry.host}/other/app:v1", READER, NO_RIGHTS)

    layout = write_oci_layout(make_image([1200]), tmp_path / "src", tag="v2")
    refused_push(layout, "v2", f"{seed}:v2", READER, NO_RIGHTS)
    refused_push(layout, "v2", f"{registry.host}/team/new-{uuid.uuid4().hex[:8]}:v2", READER, NO_RIGHTS)
    # The refused push left no tag behind; the existing one is untouched.
    assert_missing(f"{seed}:v2")
    assert skopeo.inspect(f"docker://{seed}:v1", f"--creds={ALICE}")["Digest"] == digest
