"""pipeline.config: distribution's config.yml format, REGISTRY_* overrides, clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_settings, parse_addr, parse_duration, parse_size
from pipeline.errors import ConfigurationError

DEBIAN_CONFIG = Path("/etc/docker/registry/config.yml")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return str(path)


def error_text(exc: pytest.ExceptionInfo[ConfigurationError]) -> str:
    return str(exc.value)


# --- distribution's own shipped configuration -------------------------------------------


def test_debians_shipped_distribution_config_loads_with_warnings_naming_ignored_keys(tmp_path: Path) -> None:
    assert DEBIAN_CONFIG.exists(), "docker-registry is not installed: apt-get install docker-registry"
    config = yaml.safe_load(DEBIAN_CONFIG.read_text())
    config["storage"]["filesystem"]["rootdirectory"] = str(tmp_path / "data")
    config["http"]["addr"] = "127.0.0.1:15000"
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))

    settings = load_settings(str(path), {})

    assert settings.storage.driver == "filesystem"
    assert settings.storage.root == str(tmp_path / "data")
    assert settings.storage.delete_enabled is True
    assert settings.http.addr == "127.0.0.1:15000"
    assert settings.auth.htpasswd is not None and settings.auth.htpasswd.realm == "basic-realm"
    ignored = {w.split(":", 1)[0] for w in settings.warnings}
    assert {"log.fields", "http.headers", "health"} <= ignored
    assert settings.storage.blob_cache == "inmemory"  # storage.cache.blobdescriptor is honoured
    assert settings.celery.embedded  # no broker in a distribution config → embedded worker


def test_debians_file_unmodified_loads(tmp_path: Path) -> None:
    copy = tmp_path / "config.yml"
    shutil.copy(DEBIAN_CONFIG, copy)
    settings = load_settings(str(copy), {})
    assert settings.http.addr == ":5000"
    assert parse_addr(settings.http.addr) == ("0.0.0.0", 5000)


def test_every_supported_key_maps_to_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
version: 0.1
log: {level: debug}
storage:
  filesystem: {rootdirectory: /srv/registry}
  delete: {enabled: true}
  redirect: {disable: false}
  maintenance:
    uploadpurging: {enabled: false, age: 10m30s, interval: 1.5h, dryrun: true}
http:
  addr: 127.0.0.1:5001
  prefix: /my/nested/registry/
  secret: s3cret
  host: https://registry.example.com
  draintimeout: 45s
  debug:
    addr: 127.0.0.1:5002
    prometheus: {enabled: true, path: /m}
auth:
  token:
    realm: https://auth.example.com/token
    service: registry.example.com
    issuer: auth.example.com
    rootcertbundle: /certs/bundle.pem
    jwks: /certs/jwks.json
notifications:
  endpoints:
    - name: listener
      url: https://listener.example.com/event
      headers: {Authorization: [Bearer x], X-One: single}
      timeout: 500ms
      threshold: 5
      backoff: 2s
      ignoredmediatypes: [application/octet-stream]
      ignore:
        mediatypes: [application/x-custom]
        actions: [pull]
      disabled: true
celery:
  broker_url: redis://127.0.0.1:6379/3
  result_backend: redis://127.0.0.1:6379/4
  commit_timeout: 5m
  manifest_timeout: 90
  embedded_concurrency: 2
  worker_prefetch_multiplier: 1
lading:
  deep_verification: reject
  maintenance:
    scrub: {enabled: false, interval: 12h, rate: 8MiB, quarantine: false}
    gc: {enabled: true, interval: 6h, grace: 30m, remove_untagged: true}
    reconcile: {interval: 1m}
  auth:
    policy: /etc/lading/policy.yml
    anonymous_pull: true
    token: {htpasswd: /etc/lading/htpasswd, signing_key: /etc/lading/key.pem, expiration: 10m}
  http: {keepalive: 75s}
  metrics: {protected: true}
  health: {path: /health}
""",
    )
    s = load_settings(path, {})
    assert s.log_level == "debug"
    assert (s.storage.root, s.storage.delete_enabled) == ("/srv/registry", True)
    assert s.storage.redirect_disabled is False
    p = s.storage.upload_purging
    assert (p.enabled, p.age_seconds, p.interval_seconds, p.dryrun) == (False, 630.0, 5400.0, True)
    h = s.http
    assert (h.addr, h.prefix, h.host) == (
        "127.0.0.1:5001",
        "/my/nested/registry",
        "https://registry.example.com",
    )
    assert any(w.startswith("http.secret: not needed") for w in s.warnings)
    assert (h.metrics_addr, h.metrics_path, h.metrics_protected, h.health_path) == (
        "127.0.0.1:5002",
        "/m",
        True,
        "/health",
    )
    assert (h.drain_timeout_seconds, h.keepalive_seconds) == (45.0, 75.0)
    token = s.auth.token
    assert token is not None and s.auth.htpasswd is None
    assert (token.realm, token.service, token.issuer) == (
        "https://auth.example.com/token",
        "registry.example.com",
        "auth.example.com",
    )
    assert (token.rootcertbundle, token.jwks) == ("/certs/bundle.pem", "/certs/jwks.json")
    assert (token.builtin_htpasswd, token.builtin_signing_key, token.expiration_seconds) == (
        "/etc/lading/htpasswd",
        "/etc/lading/key.pem",
        600,
    )
    assert (s.auth.policy_path, s.auth.anonymous_pull) == ("/etc/lading/policy.yml", True)
    (endpoint,) = s.notifications
    assert endpoint.name == "listener" and endpoint.url == "https://listener.example.com/event"
    assert endpoint.headers == {"Authorization": ["Bearer x"], "X-One": ["single"]}
    assert (endpoint.timeout_seconds, endpoint.threshold, endpoint.backoff_seconds) == (0.5, 5, 2.0)
    assert endpoint.ignored_mediatypes == ("application/octet-stream", "application/x-custom")
    assert endpoint.ignored_actions == ("pull",) and endpoint.disabled
    c = s.celery
    assert (c.broker_url, c.result_backend, c.commit_timeout, c.manifest_timeout) == (
        "redis://127.0.0.1:6379/3",
        "redis://127.0.0.1:6379/4",
        300.0,
        90.0,
    )
    assert c.embedded_concurrency == 2 and not c.embedded
    assert c.extra == {"worker_prefetch_multiplier": 1}
    assert s.deep_verification == "reject"
    m = s.maintenance
    assert (m.scrub_enabled, m.scrub_interval_seconds, m.scrub_rate_bytes, m.scrub_quarantine) == (
        False,
        43200.0,
        8 * 1024 * 1024,
        False,
    )
    assert (m.gc_enabled, m.gc_interval_seconds, m.gc_grace_seconds, m.gc_remove_untagged) == (
        True,
        21600.0,
        1800.0,
        True,
    )
    assert m.reconcile_interval_seconds == 60.0
    assert [w.split(":", 1)[0] for w in s.warnings] == ["http.secret"]


def test_no_file_gives_the_embedded_defaults() -> None:
    s = load_settings(None, {})
    assert s.celery.embedded
    assert s.http.addr == "127.0.0.1:5000"
    assert s.storage.driver == "filesystem" and s.storage.root == "./lading-data"


def test_bare_off_in_yaml_means_off(tmp_path: Path) -> None:
    # YAML 1.1 reads an unquoted `off` as false; it must still mean the policy "off".
    s = load_settings(write(tmp_path, "lading: {deep_verification: off}\n"), {})
    assert s.deep_verification == "off"


def test_inmemory_driver(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "storage:\n  inmemory:\n"), {})
    assert s.storage.driver == "inmemory"


# --- environment overrides --------------------------------------------------------------


def test_environment_overrides_yaml_and_parses_types(tmp_path: Path) -> None:
    path = write(tmp_path, "http: {addr: '127.0.0.1:5000'}\nstorage: {filesystem: {rootdirectory: /a}}\n")
    s = load_settings(
        path,
        {
            "REGISTRY_HTTP_ADDR": "127.0.0.1:6000",
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/b",
            "REGISTRY_STORAGE_DELETE_ENABLED": "true",
            "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE": "10m30s",
            "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_DRYRUN": "False",
            "REGISTRY_CELERY_BROKER_URL": "redis://127.0.0.1:6379/5",
            "REGISTRY_CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/6",
            "REGISTRY_CELERY_EMBEDDED_CONCURRENCY": "3",
            "REGISTRY_CELERY_COMMIT_TIMEOUT": "2m",
            "REGISTRY_CELERY_WORKER_PREFETCH_MULTIPLIER": "1",
            "REGISTRY_LADING_AUTH_ANONYMOUS_PULL": "yes",
            "REGISTRY_LADING_MAINTENANCE_GC_REMOVE_UNTAGGED": "true",
            "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_NAME": "hook",
            "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL": "http://127.0.0.1:9/hook",
            "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_TIMEOUT": "3s",
            "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_IGNOREDMEDIATYPES": "[a/b, c/d]",
            "UNRELATED": "x",
        },
    )
    assert s.http.addr == "127.0.0.1:6000"
    assert s.storage.root == "/b" and s.storage.delete_enabled is True
    assert s.storage.upload_purging.age_seconds == 630.0 and s.storage.upload_purging.dryrun is False
    assert s.celery.broker_url == "redis://127.0.0.1:6379/5"
    assert s.celery.result_backend == "redis://127.0.0.1:6379/6"
    assert s.celery.embedded_concurrency == 3 and s.celery.commit_timeout == 120.0
    assert s.celery.extra == {"worker_prefetch_multiplier": 1}
    assert s.auth.anonymous_pull is True and s.maintenance.gc_remove_untagged is True
    (endpoint,) = s.notifications
    assert (endpoint.name, endpoint.url, endpoint.timeout_seconds) == ("hook", "http://127.0.0.1:9/hook", 3.0)
    assert endpoint.ignored_mediatypes == ("a/b", "c/d")
    assert s.warnings == ()


def test_environment_overrides_one_field_of_an_existing_list_entry(tmp_path: Path) -> None:
    path = write(tmp_path, "notifications:\n  endpoints:\n    - {name: a, url: 'http://x/a', threshold: 3}\n")
    s = load_settings(path, {"REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL": "http://y/a"})
    assert s.notifications[0].url == "http://y/a" and s.notifications[0].threshold == 3


def test_environment_swaps_storage_driver(tmp_path: Path) -> None:
    path = write(tmp_path, "storage:\n  filesystem: {rootdirectory: /a}\n  delete: {enabled: true}\n")
    s = load_settings(path, {"REGISTRY_STORAGE": "inmemory"})
    assert s.storage.driver == "inmemory" and s.storage.delete_enabled is True


def test_unknown_environment_variables_are_warnings_not_failures() -> None:
    # Kubernetes injects REGISTRY_PORT etc. for a service called "registry".
    s = load_settings(None, {"REGISTRY_PORT": "tcp://10.0.0.1:5000", "REGISTRY_HTTP_TLS_FOO": "/c"})
    assert any(w.startswith("REGISTRY_PORT:") for w in s.warnings)
    assert any(w.startswith("REGISTRY_HTTP_TLS_FOO:") for w in s.warnings)


def test_config_path_variable_is_not_an_override() -> None:
    s = load_settings(None, {"REGISTRY_CONFIGURATION_PATH": "/etc/docker/registry/config.yml"})
    assert s.warnings == ()


def test_empty_broker_url_from_environment_means_embedded(tmp_path: Path) -> None:
    path = write(tmp_path, "celery: {broker_url: 'redis://127.0.0.1:6379/0'}\n")
    assert load_settings(path, {"REGISTRY_CELERY_BROKER_URL": ""}).celery.embedded


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("http: {addr: 5}\n", "http.addr"),
        ("http: {addr: localhost}\n", "http.addr"),
        ("storage: {delete: {enabled: maybe}}\n", "storage.delete.enabled"),
        ("storage: {delete: {enabled: 'true'}}\n", "storage.delete.enabled"),
        ("storage: {maintenance: {uploadpurging: {age: 168}}}\n", "storage.maintenance.uploadpurging.age"),
        ("storage: {maintenance: {uploadpurging: {interval: 3 days}}}\n", "uploadpurging.interval"),
        ("storage: {azure: {accountname: x}}\n", "storage.azure.accountkey"),
        ("storage: {gcs: {rootdirectory: /x}}\n", "storage.gcs.bucket"),
        ("storage: {swift: {container: x}}\n", "storage.swift"),
        ("storage: {filesystem: {rootdirectory: /a}, inmemory: }\n", "storage"),
        ("storage: {filesystem: {rootdirectory: 7}}\n", "storage.filesystem.rootdirectory"),
        ("storage: [filesystem]\n", "storage"),
        ("notifications: {endpoints: [{name: a}]}\n", "notifications.endpoints.0.url"),
        ("notifications: {endpoints: [{name: a, url: 'x', threshold: lots}]}\n", "endpoints.0.threshold"),
        ("notifications: {endpoints: {name: a}}\n", "notifications.endpoints"),
        ("auth: {silly: {realm: r, service: s}}\n", "auth.silly"),
        ("auth: {htpasswd: {realm: r}}\n", "auth.htpasswd.path"),
        ("auth: {token: {realm: r, service: s}}\n", "auth.token.issuer"),
        ("log: {level: loud}\n", "log.level"),
        ("celery: {embedded_concurrency: 0}\n", "celery.embedded_concurrency"),
        ("celery: {commit_timeout: soon}\n", "celery.commit_timeout"),
        ("lading: {deep_verification: sometimes}\n", "lading.deep_verification"),
        ("lading: {auth: {anonymous_pull: 'perhaps'}}\n", "lading.auth.anonymous_pull"),
        ("version: 2\n", "version"),
    ],
)
def test_wrong_values_raise_configuration_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        load_settings(write(tmp_path, text), {})
    assert key in error_text(exc)


def test_wrong_type_from_environment_names_key_and_variable() -> None:
    with pytest.raises(ConfigurationError) as exc:
        load_settings(None, {"REGISTRY_STORAGE_DELETE_ENABLED": "maybe"})
    assert "storage.delete.enabled" in error_text(exc)
    assert "REGISTRY_STORAGE_DELETE_ENABLED" in error_text(exc)


def test_missing_file_and_bad_yaml_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_settings(str(tmp_path / "absent.yml"), {})
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_settings(write(tmp_path, "http: [unclosed\n"), {})


def test_unsupported_keys_are_warnings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
version: 0.1
log: {formatter: json}
storage:
  filesystem: {rootdirectory: /a, maxthreads: 100}
  maintenance: {readonly: {enabled: false}}
http: {addr: ':5000', relativeurls: true}
redis: {addr: 'localhost:6379'}
middleware: {registry: []}
validation: {disabled: true}
notifications: {events: {includereferences: true}}
made_up_key: 1
""",
    )
    s = load_settings(path, {})
    named = {w.split(":", 1)[0] for w in s.warnings}
    assert named == {
        "log.formatter",
        "storage.filesystem.maxthreads",
        "storage.maintenance.readonly",
        "http.relativeurls",
        "redis",
        "middleware",
        "validation",
        "notifications.events",
        "made_up_key",
    }


def test_http_tls_is_read_as_distribution_writes_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
http:
  tls:
    certificate: /c.pem
    key: /k.pem
    clientcas: [/ca1.pem, /ca2.pem]
    minimumtls: tls1.3
    ciphersuites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
""",
    )
    s = load_settings(path, {})
    tls = s.http.tls
    assert tls is not None
    assert (tls.certificate, tls.key, tls.clientcas) == ("/c.pem", "/k.pem", ("/ca1.pem", "/ca2.pem"))
    assert (tls.minimum_version, tls.clientauth) == ("tls1.3", "require")
    assert "http.tls" not in {w.split(":", 1)[0] for w in s.warnings}
    assert load_settings(None, {}).http.tls is None
    from_env = load_settings(None, {"REGISTRY_HTTP_TLS_CERTIFICATE": "/c", "REGISTRY_HTTP_TLS_KEY": "/k"})
    assert from_env.http.tls is not None and from_env.http.tls.key == "/k"
    with pytest.raises(ConfigurationError, match="certificate and key"):
        load_settings(None, {"REGISTRY_HTTP_TLS_CERTIFICATE": "/c"})


@pytest.mark.parametrize(
    ("tls", "key"),
    [
        ("{certificate: /c}", "http.tls"),
        ("{certificate: /c, key: /k, letsencrypt: {email: a@b.c}}", "http.tls.letsencrypt"),
        ("{certificate: /c, key: /k, minimumtls: tls1.1}", "http.tls.minimumtls"),
        ("{certificate: /c, key: /k, ciphersuites: [TLS_MADE_UP]}", "http.tls.ciphersuites"),
        ("{certificate: /c, key: /k, clientauth: request-client-cert}", "http.tls.clientauth"),
    ],
)
def test_http_tls_keys_lading_cannot_honour_are_errors(tmp_path: Path, tls: str, key: str) -> None:
    with pytest.raises(ConfigurationError, match=key.replace(".", r"\.")):
        load_settings(write(tmp_path, f"http: {{tls: {tls}}}\n"), {})


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("storage: {filesystem: {rootdirectroy: /srv}}\n", "storage.filesystem.rootdirectory"),
        ("http: {adress: ':5000'}\n", "http.addr"),
        ("http: {address: ':5000'}\n", "http.addr"),
        ("http: {Addr: ':5000'}\n", "http.addr"),
        ("storage: {delet: {enabled: true}}\n", "storage.delete"),
        ("auth: {htpaswd: {realm: r, path: /p}}\n", "auth.htpasswd"),
        (
            "notifications: {endpoints: [{name: a, url: u, treshold: 3}]}\n",
            "notifications.endpoints.0.threshold",
        ),
        ("lading: {maintenance: {gc: {grase: 1h}}}\n", "lading.maintenance.gc.grace"),
        ("middlware: {}\n", "middleware"),
        ("proxi: {remoteurl: x}\n", "proxy"),
    ],
)
def test_a_key_one_edit_from_a_known_key_is_an_error_with_a_hint(
    tmp_path: Path, text: str, error: str
) -> None:
    with pytest.raises(ConfigurationError) as exc:
        load_settings(write(tmp_path, text), {})
    assert f"did you mean {error}?" in error_text(exc)


def test_a_misspelled_environment_override_names_the_variable_and_the_key() -> None:
    with pytest.raises(ConfigurationError) as exc:
        load_settings(None, {"REGISTRY_HTTP_ADRESS": ":5000"})
    assert (
        "REGISTRY_HTTP_ADRESS: names no setting; did you mean REGISTRY_HTTP_ADDR (http.addr)?"
        in error_text(exc)
    )


def test_keys_far_from_every_known_key_stay_warnings(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, "http: {net: tcp}\nmade_up_key: 1\n"), {})
    assert {w.split(":", 1)[0] for w in s.warnings} == {"http.net", "made_up_key"}


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("validation: {manifests: {urls: {deny: ['^https?://']}}}\n", "validation", "deny"),
        (
            "storage: {maintenance: {readonly: {enabled: true}}}\n",
            "storage.maintenance.readonly",
            "read-only",
        ),
    ],
)
def test_an_unimplemented_section_that_changes_behaviour_stops_start_up(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    with pytest.raises(ConfigurationError) as exc:
        load_settings(write(tmp_path, text), {})
    assert f"configuration: {key}: " in error_text(exc) and words in error_text(exc)


def test_an_unimplemented_section_switched_off_is_only_a_warning(tmp_path: Path) -> None:
    text = "storage: {maintenance: {readonly: {enabled: false}}}\nvalidation: {disabled: true}\n"
    s = load_settings(write(tmp_path, text), {})
    assert {w.split(":", 1)[0] for w in s.warnings} == {"storage.maintenance.readonly", "validation"}


def test_s3_is_mapped_when_the_storage_settings_have_s3_fields(tmp_path: Path) -> None:
    import dataclasses

    from pipeline.config import StorageSettings

    path = write(
        tmp_path,
        "storage:\n  s3: {bucket: b, region: us-east-1, regionendpoint: 'http://127.0.0.1:9000',"
        " accesskey: ak, secretkey: sk}\n",
    )
    fields = {f.name for f in dataclasses.fields(StorageSettings)}
    if "s3_bucket" not in fields:
        with pytest.raises(ConfigurationError, match=r"storage\.s3"):
            load_settings(path, {})
        return
    s = load_settings(path, {})
    assert s.storage.driver == "s3"
    assert getattr(s.storage, "s3_bucket") == "b"  # noqa: B009
    for key, value in (
        ("region", "us-east-1"),
        ("regionendpoint", "http://127.0.0.1:9000"),
        ("accesskey", "ak"),
        ("secretkey", "sk"),
    ):
        if f"s3_{key}" in fields:
            assert getattr(s.storage, f"s3_{key}") == value


# --- value parsers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("168h", 604800.0),
        ("24h", 86400.0),
        ("10m30s", 630.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("2h45m", 9900.0),
        ("0", 0.0),
        ("1us", 1e-6),
        ("-1s", -1.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "10 m", "1d", "h", "1h 2m", "1.h.m"])
def test_invalid_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_sizes() -> None:
    assert parse_size("64MiB") == 64 * 1024**2
    assert parse_size("1G") == 1024**3
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def test_addresses() -> None:
    assert parse_addr(":5000") == ("0.0.0.0", 5000)
    assert parse_addr("127.0.0.1:5001") == ("127.0.0.1", 5001)
    assert parse_addr("[::1]:5002") == ("::1", 5002)
    with pytest.raises(ConfigurationError, match=r"http\.addr"):
        parse_addr("127.0.0.1")


def test_distribution_proxy_section_mirrors_the_whole_registry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "proxy: {remoteurl: 'https://registry-1.docker.io/', username: u, password: p, ttl: 24h}\n",
    )
    s = load_settings(path, {"REGISTRY_PROXY_PASSWORD": "from-env"})
    assert s.warnings == ()
    (up,) = s.proxy.upstreams
    assert (up.prefix, up.remoteurl, up.username, up.password) == (
        "",
        "https://registry-1.docker.io",
        "u",
        "from-env",
    )
    assert up.ttl_seconds == 24 * 3600
    only_env = load_settings(None, {"REGISTRY_PROXY_REMOTEURL": "http://127.0.0.1:1"})
    assert only_env.proxy.upstreams[0].remoteurl == "http://127.0.0.1:1"


def test_lading_proxy_upstreams_by_prefix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
lading:
  proxy:
    local: false
    upstreams:
      - {prefix: hub, remoteurl: 'https://registry-1.docker.io', ttl: 3600, tag_ttl: 60s,
         platforms: [linux/amd64, linux/arm64/v8]}
      - {prefix: ghcr/, remoteurl: 'https://ghcr.io'}
""",
    )
    s = load_settings(path, {})
    hub, ghcr = s.proxy.upstreams
    assert (hub.prefix, hub.ttl_seconds, hub.tag_ttl_seconds) == ("hub", 3600, 60)
    assert hub.platforms == ("linux/amd64", "linux/arm64/v8")
    assert ghcr.prefix == "ghcr" and s.proxy.local is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("proxy: {username: u}\n", "proxy.remoteurl: required"),
        ("proxy: {remoteurl: 'ftp://x'}\n", "proxy.remoteurl"),
        (
            "lading: {proxy: {upstreams: [{prefix: a, remoteurl: 'http://x'}, {prefix: a/b, remoteurl: 'http://y'}]}}\n",
            "overlap",
        ),
        ("lading: {proxy: {upstreams: [{prefix: 'A!', remoteurl: 'http://x'}]}}\n", "prefix"),
        (
            "lading: {proxy: {upstreams: [{prefix: a, remoteurl: 'http://x', platforms: [amd64]}]}}\n",
            "platforms",
        ),
        (
            "proxy: {remoteurl: 'http://x'}\nlading: {proxy: {upstreams: [{prefix: a, remoteurl: 'http://y'}]}}\n",
            "mirror",
        ),
    ],
)
def test_bad_proxy_configuration_stops_start(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_settings(write(tmp_path, text), {})
