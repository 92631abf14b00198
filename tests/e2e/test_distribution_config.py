"""Debian's shipped `/etc/docker/registry/config.yml` runs under `lading serve` as it is.

Only what an operator must change to run it next to other tests is changed: the storage
root (a temporary directory) and `http.addr` (a free loopback port). Everything else stays,
including `auth.htpasswd.path: /etc/docker/registry`, which is a *directory*.

What distribution 2.8.2 (`docker-registry serve`, run on the same file here) does with that:
it starts, challenges a caller without credentials with `401 Basic realm="basic-realm"`,
and answers any credentials with a bare `400` ("read /etc/docker/registry: is a directory",
logged on every request). Lading does the same or better: it starts, warns once at start that
nobody can log in, challenges a caller without credentials identically, and answers any
credentials with `401` and the same challenge, so clients report "unauthorized" instead of
a puzzling 400. Both fail closed: nothing is reachable.

Fails (does not skip) when the Debian file or `docker-registry` is missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.lading.procs import lading_command, process_env, running
from tests.support.distribution import registry_binary
from tests.support.net import free_port, wait_http

pytestmark = pytest.mark.e2e

DEBIAN_CONFIG = Path("/etc/docker/registry/config.yml")
# The keys of Debian's file Lading does not support: each must be named in a start-up warning.
IGNORED_KEYS = ("log.fields", "http.headers", "health")


def debian_config() -> dict[str, Any]:
    assert DEBIAN_CONFIG.is_file(), f"{DEBIAN_CONFIG} is missing: apt-get install docker-registry"
    data = yaml.safe_load(DEBIAN_CONFIG.read_text())
    assert isinstance(data, dict)
    return data


def adapted(root: Path, port: int) -> dict[str, Any]:
    """Debian's config with only the storage root and the listening address changed."""
    config = debian_config()
    config["storage"]["filesystem"]["rootdirectory"] = str(root)
    config["http"]["addr"] = f"127.0.0.1:{port}"
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def warnings_in(output: str) -> list[str]:
    messages = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") == "warning":
            messages.append(str(record.get("msg", "")))
    return messages


def test_lading_serves_debians_config_and_answers_as_its_auth_demands(tmp_path: Path) -> None:
    lading_port, dist_port = free_port(), free_port()
    lading_config = write_config(tmp_path / "lading.yml", adapted(tmp_path / "lading-root", lading_port))
    dist_config = write_config(tmp_path / "dist.yml", adapted(tmp_path / "dist-root", dist_port))
    htpasswd = debian_config()["auth"]["htpasswd"]
    realm = htpasswd["realm"]
    assert Path(htpasswd["path"]).is_dir()  # the case this test is about
    lading_url = f"http://127.0.0.1:{lading_port}"

    dist_url = f"http://127.0.0.1:{dist_port}"

    with (
        running([registry_binary(), "serve", str(dist_config)], process_env()) as dist,
        running([*lading_command(), "serve", str(lading_config)], process_env(), cwd=tmp_path) as server,
    ):
        wait_http(f"{dist_url}/v2/", timeout=30, proc=dist.proc)
        wait_http(f"{lading_url}/v2/", timeout=60, proc=server.proc)
        urls = (lading_url, dist_url)
        with httpx.Client(timeout=10) as client:
            anonymous = {url: client.get(f"{url}/v2/") for url in urls}
            with_creds = {url: client.get(f"{url}/v2/", auth=("admin", "admin")) for url in urls}
            catalog = client.get(f"{lading_url}/v2/_catalog")
        output = server.output
        assert server.proc.poll() is None, output[-3000:]

    # Started, and said which of the file's keys it ignores.
    warnings = warnings_in(output)
    for key in IGNORED_KEYS:
        assert any(msg.startswith(f"configuration: {key}:") for msg in warnings), (key, warnings)
    assert any("auth.htpasswd.path" in msg and "directory" in msg for msg in warnings), warnings

    # No credentials: the same Basic challenge as distribution.
    for response in anonymous.values():
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == f'Basic realm="{realm}"'
    assert anonymous[lading_url].json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert catalog.status_code == 401

    # Credentials: nobody can log in. distribution answers a bare 400; Lading a 401 challenge.
    assert with_creds[dist_url].status_code == 400
    refused = with_creds[lading_url]
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == f'Basic realm="{realm}"'
    assert refused.json()["errors"][0]["code"] == "UNAUTHORIZED"
