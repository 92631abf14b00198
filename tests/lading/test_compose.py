"""docker-compose.yml and the Dockerfile describe a deployment that actually runs.

No Docker engine here, so the compose file is checked the way it will be executed:
every service command is parsed by the real `lading` argument parser (or is a
`celery -A lading.celery_app …` command), resolves to a console script the package
installs, and every service reads the same configuration. Then the whole deployment is
started as local processes (private Redis, API, one worker per queue, beat, Flower) with
the compose commands and configuration file, its healthchecks are run, and an image is
pushed and pulled through it with skopeo.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import socket
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from contextlib import ExitStack
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from lading import cli
from pipeline.config import load_settings
from pipeline.jobs import QUEUES
from tests.lading.procs import REPO, Running, celery_command, lading_command, process_env, running
from tests.support import skopeo
from tests.support.images import make_image, read_oci_layout, write_oci_layout
from tests.support.net import free_port, wait_http

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
CONFIG_IN_CONTAINER = "/etc/lading/config.yml"
HTPASSWD_IN_CONTAINER = "/etc/lading/htpasswd"


def documented_commands() -> dict[str, dict[str, str]]:
    """The `docker compose … up` command lines the compose file's header documents, each
    with the environment it sets (VAR=value before `docker`): what a user types."""
    commands: dict[str, dict[str, str]] = {}
    for line in COMPOSE.read_text().splitlines():
        text = line.lstrip("# ").strip()
        if not line.startswith("#") or "docker compose" not in text or not text.endswith(" up"):
            continue
        words = shlex.split(text)
        env = dict(w.split("=", 1) for w in words[: words.index("docker")])
        commands[" ".join(words[words.index("docker") :])] = env
    return commands


def documented_environment() -> dict[str, str]:
    """The environment of the plain `docker compose up` the header documents."""
    return documented_commands()["docker compose up"]


INTERPOLATION = documented_environment()
FLOWER_AUTH = INTERPOLATION["FLOWER_BASIC_AUTH"]


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR:?error}, $$ → $."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in values and (values[name] or op != ":-"):
            return values[name]
        if op == ":?":
            raise AssertionError(f"compose would stop: {arg}")
        return arg or ""

    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, text)
    return text.replace("$$", "$")


def interpolate_values(node: Any, values: dict[str, str]) -> Any:
    """Compose's substitution over every string of the parsed file (as compose does: after
    YAML parsing, so comments are not touched; keys included)."""
    if isinstance(node, dict):
        return {interpolate(str(k), values): interpolate_values(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate_values(v, values) for v in node]
    return interpolate(node, values) if isinstance(node, str) else node


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def lading_services() -> dict[str, dict[str, Any]]:
    """Services running the Lading image (everything but redis and minio)."""
    return {name: s for name, s in compose()["services"].items() if s.get("image", "").startswith("lading")}


def command(service: dict[str, Any]) -> list[str]:
    cmd = service["command"]
    assert isinstance(cmd, list), "commands are exec-form lists (no shell parsing surprises)"
    return [interpolate(str(a), INTERPOLATION) for a in cmd]


def config_mount(service: dict[str, Any]) -> str:
    mounts = [v for v in service.get("volumes", []) if v.split(":")[1] == CONFIG_IN_CONTAINER]
    assert len(mounts) == 1, f"config not mounted at {CONFIG_IN_CONTAINER}: {service.get('volumes')}"
    return mounts[0].split(":")[0]


# --- static checks ------------------------------------------------------------------------


def test_the_deployment_has_the_expected_services() -> None:
    services = compose()["services"]
    assert {"redis", "api", "beat", "flower", "minio"} <= set(services)
    assert services["minio"].get("profiles") == ["s3"]  # optional
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"


def test_the_documented_commands_interpolate_the_whole_file() -> None:
    # Compose substitutes variables in the whole file before applying profiles: a required
    # variable (${VAR:?…}) anywhere, even in a profile-gated service, must be set by every
    # documented command, or `docker compose up` stops before starting anything.
    commands = documented_commands()
    assert {"docker compose up", "docker compose --profile s3 up"} <= set(commands)
    for line, env in commands.items():
        try:
            interpolate_values(compose(), env)
        except AssertionError as exc:
            raise AssertionError(f"`{line}` with {env}: {exc}") from None
    assert set(documented_environment()) == {"FLOWER_BASIC_AUTH"}  # nothing else to prepare


def test_it_ships_safe() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    settings = load_settings(str(REPO / "deploy/config.yml"), {})
    assert settings.storage.delete_enabled is False
    assert settings.auth.htpasswd is not None and settings.auth.htpasswd.path == HTPASSWD_IN_CONTAINER
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["api"]["volumes"]}
    assert mounts[HTPASSWD_IN_CONTAINER] == "./deploy/htpasswd"
    assert "/deploy/htpasswd" in (REPO / ".gitignore").read_text().splitlines()  # never committed
    header = COMPOSE.read_text().split("services:", 1)[0]
    assert "htpasswd -Bc deploy/htpasswd" in header  # the documented first step
    flower = " ".join(command(services["flower"]))
    assert "--basic-auth=" in flower


def test_every_lading_command_is_accepted_by_the_real_parser() -> None:
    parser = cli.build_parser()
    subcommands = set()
    for name, service in lading_services().items():
        cmd = command(service)
        if cmd[0] == "lading":
            try:
                args = parser.parse_args(cmd[1:])
            except SystemExit as exc:
                raise AssertionError(f"{name}: `{shlex.join(cmd)}` is rejected by lading's parser") from exc
            subcommands.add(args.command)
            assert args.config == CONFIG_IN_CONTAINER, f"{name} does not read the shared config"
        else:
            assert cmd[:3] == ["celery", "-A", "lading.celery_app"], f"{name}: unexpected command {cmd}"
            assert cmd[3] == "flower"
    assert {"serve", "worker", "beat"} <= subcommands


def test_commands_are_console_scripts_the_package_installs() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert scripts["lading"] == "lading.cli:main" and cli.main is not None
    deps = " ".join(pyproject["project"]["dependencies"])
    assert "celery" in deps and "flower" in deps
    assert entry_points(group="console_scripts", name="celery"), "celery's console script is missing"
    flower = entry_points(group="celery.commands", name="flower")
    assert flower, "flower does not register the `celery flower` command"
    for service in lading_services().values():
        assert command(service)[0] in {"lading", "celery"}
    import lading.celery_app  # noqa: F401 - the module `celery -A lading.celery_app` imports


def test_all_services_share_one_configuration_and_environment() -> None:
    services = lading_services()
    host_files = {config_mount(s) for s in services.values()}
    assert host_files == {"./deploy/config.yml"}
    envs = []
    for service in services.values():
        env = dict(service["environment"])
        assert env["LADING_CONFIG"] == CONFIG_IN_CONTAINER
        env.pop("WORKER_NAME", None)
        envs.append(env)
    assert all(env == envs[0] for env in envs)
    settings = load_settings(str(REPO / "deploy/config.yml"), {})
    assert settings.warnings == ()
    assert settings.celery.broker_url == "redis://redis:6379/0", "the deployment is scaled out, not embedded"
    assert settings.storage.root in {v.split(":")[1] for v in services["api"]["volumes"]}


def test_every_queue_is_consumed_and_there_is_one_beat() -> None:
    parser = cli.build_parser()
    consumed: list[str] = []
    beats = 0
    for service in lading_services().values():
        cmd = command(service)
        if cmd[0] != "lading":
            continue
        args = parser.parse_args(cmd[1:])
        if args.command == "worker":
            assert args.queues, "each worker group names its queues"
            consumed += args.queues.split(",")
            assert args.hostname.split("@")[0] == service["environment"]["WORKER_NAME"]
        if args.command == "beat":
            beats += 1
            assert "replicas" not in service.get("deploy", {})
    assert sorted(consumed) == sorted(QUEUES)
    assert beats == 1


def test_dockerfile_builds_the_one_image_every_service_runs() -> None:
    text = DOCKERFILE.read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for package in pyproject["tool"]["importlinter"]["root_packages"]:  # what the services import
        assert re.search(rf"^COPY {package} ", text, re.M), f"Dockerfile does not copy {package}/"
    assert "COPY deploy/config.yml /etc/lading/config.yml" in text
    assert "pip install ." in text
    cmd = re.search(r"^CMD (.+)$", text, re.M)
    assert cmd and json.loads(cmd.group(1)) == ["lading", "serve", CONFIG_IN_CONTAINER]
    for service in lading_services().values():
        assert service["image"] == "lading:latest" and service["build"] == "."


# --- the deployment, started as local processes --------------------------------------------


def local_args(cmd: list[str], config: Path, tmp: Path, ports: dict[str, int]) -> list[str]:
    """A compose command as it runs here: the repo's config file, a temp beat schedule,
    loopback addresses and free ports."""
    out = []
    for arg in cmd:
        arg = arg.replace(CONFIG_IN_CONTAINER, str(config))
        arg = arg.replace("/var/lib/lading/beat/", f"{tmp}/")
        arg = arg.replace("--address=0.0.0.0", "--address=127.0.0.1")
        arg = arg.replace("--port=5555", f"--port={ports['flower']}")
        out.append(arg)
    if out[0] == "lading":
        return [*lading_command(), *out[1:]]
    return [*celery_command(), *out[1:]]


def healthcheck(
    service: dict[str, Any], env: dict[str, str], ports: dict[str, int], tmp: Path
) -> subprocess.CompletedProcess[str]:
    test = [
        interpolate(str(a), env).replace("/var/lib/lading/beat/", f"{tmp}/")
        for a in service["healthcheck"]["test"]
    ]
    kind, rest = test[0], test[1:]
    script = rest[0] if kind == "CMD-SHELL" else shlex.join(rest)
    script = script.replace("127.0.0.1:5000", f"127.0.0.1:{ports['api']}")
    script = script.replace("127.0.0.1:5555", f"127.0.0.1:{ports['flower']}")
    script = re.sub(r"^python ", f"{shlex.quote(str(Path(lading_command()[0]).parent / 'python'))} ", script)
    script = re.sub(r"^celery ", shlex.join(celery_command()) + " ", script)
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)


def _get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until_workers_answer(services: dict[str, Any], procs: dict[str, Running], broker: str) -> None:
    """Until every worker group answers a control ping (Celery's own liveness check)."""
    from celery import Celery

    names = [s["environment"]["WORKER_NAME"] for s in services.values() if "WORKER_NAME" in s["environment"]]
    app = Celery("compose-test", broker=broker, set_as_current=False)
    deadline = time.monotonic() + 120
    try:
        while True:
            replies = app.control.ping(timeout=1.0)
            alive = {name.split("@")[0] for reply in replies for name in reply}
            if set(names) <= alive:
                return
            for name, proc in procs.items():
                assert proc.proc.poll() is None, f"{name} exited:\n{proc.output[-3000:]}"
            assert time.monotonic() < deadline, f"workers {sorted(set(names) - alive)} never answered"
    finally:
        app.close()


def wait_until_beat_scheduled(procs: dict[str, Running], tmp: Path) -> None:
    """Until beat has written its schedule state (it has loaded the schedule)."""
    deadline = time.monotonic() + 120
    while not list(tmp.glob("celerybeat-schedule*")):
        assert procs["beat"].proc.poll() is None, procs["beat"].output[-3000:]
        assert time.monotonic() < deadline, "beat wrote no schedule state"
        time.sleep(0.1)


@pytest.mark.integration
@pytest.mark.e2e
def test_the_compose_deployment_runs_as_local_processes(private_redis: str, tmp_path: Path) -> None:
    services = lading_services()
    ports = {"api": free_port(), "flower": free_port()}
    config = REPO / "deploy" / "config.yml"
    user, password = "admin", "push-and-pull"
    htpasswd = tmp_path / "htpasswd"  # step 1 of the compose file's header
    htpasswd.write_text(f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()}\n")
    creds = f"{user}:{password}"
    env = process_env(
        # Container paths and service addresses mapped to this machine (what compose's
        # mounts and network provide); everything else is the documented command's.
        **INTERPOLATION,
        REGISTRY_AUTH_HTPASSWD_PATH=str(htpasswd),
        LADING_CONFIG=str(config),
        REGISTRY_HTTP_ADDR=f"127.0.0.1:{ports['api']}",
        REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=str(tmp_path / "data"),
        REGISTRY_CELERY_BROKER_URL=f"{private_redis}/0",
        REGISTRY_CELERY_RESULT_BACKEND=f"{private_redis}/1",
        FLOWER_UNAUTHENTICATED_API="",
    )
    procs: dict[str, Running] = {}
    with ExitStack() as stack:
        for name, service in services.items():
            service_env = {**env, **{k: str(v) for k, v in service["environment"].items()}}
            service_env["LADING_CONFIG"] = str(config)
            cmd = local_args(command(service), config, tmp_path, ports)
            procs[name] = stack.enter_context(running(cmd, service_env, cwd=tmp_path))
        wait_until_workers_answer(services, procs, f"{private_redis}/0")
        wait_until_beat_scheduled(procs, tmp_path)
        wait_http(f"http://127.0.0.1:{ports['api']}/v2/", timeout=120, proc=procs["api"].proc)
        wait_http(f"http://127.0.0.1:{ports['flower']}/healthcheck", timeout=120, proc=procs["flower"].proc)

        # Every healthcheck in the compose file passes against the running processes.
        hostname = socket.gethostname()
        for name, service in services.items():
            if "healthcheck" not in service:
                continue
            check_env = {**env, **{k: str(v) for k, v in service["environment"].items()}}
            check_env.update(HOSTNAME=hostname, LADING_CONFIG=str(config))
            result = healthcheck(service, check_env, ports, tmp_path)
            assert result.returncode == 0, f"{name} healthcheck failed:\n{result.stdout}\n{result.stderr}"

        # Flower requires the configured credentials and sees every worker group.
        flower = f"http://127.0.0.1:{ports['flower']}"
        assert _get(f"{flower}/api/workers")[0] == 401
        status, body = _get(f"{flower}/api/workers?refresh=1", FLOWER_AUTH)
        assert status == 200
        names = {w.split("@")[0] for w in json.loads(body)}
        assert {"ingest", "verify", "maintenance", "notify"} <= names

        # The split into per-queue workers runs every job a push needs.
        image = make_image([1500, 40_000])
        source = write_oci_layout(image, tmp_path / "image")
        target = f"docker://127.0.0.1:{ports['api']}/compose/smoke:1"
        assert _get(f"http://127.0.0.1:{ports['api']}/v2/")[0] == 401  # auth is on
        skopeo.copy(f"oci:{source}:latest", target, "--dest-creds", creds)
        skopeo.copy(target, f"oci:{tmp_path / 'pulled'}:1", "--src-creds", creds)
        pulled = read_oci_layout(tmp_path / "pulled")
        assert pulled[image.manifest_digest] == image.manifest
        assert all(pulled[layer.digest] == layer.blob for layer in image.layers)
        delete = urllib.request.Request(
            f"http://127.0.0.1:{ports['api']}/v2/compose/smoke/manifests/{image.manifest_digest}",
            method="DELETE",
            headers={"Authorization": "Basic " + base64.b64encode(creds.encode()).decode()},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(delete, timeout=10)
        assert refused.value.code == 405  # deletes are off

        codes = {name: proc.stop() for name, proc in procs.items()}
        # Every lading process shuts down cleanly on SIGTERM (what `docker compose stop` sends).
        for name, service in services.items():
            if command(service)[0] == "lading":
                assert codes[name] == 0, f"{name} exited with {codes[name]}:\n{procs[name].output[-3000:]}"
