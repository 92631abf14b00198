"""The `lading` command: serve, worker, beat, tarsum, maintenance one-shots, check-config.

Every command that reads configuration takes an optional CONFIG path (else `$LADING_CONFIG`,
else distribution's `$REGISTRY_CONFIGURATION_PATH`, else built-in defaults) and applies
`REGISTRY_*` environment overrides on top (pipeline.config). Exit codes: 0 success,
1 runtime or configuration error, 2 usage error. A failure prints one line on stderr
naming what failed (Redis, the broker, a file, storage); `--debug` or LADING_DEBUG=1 adds
the traceback.
The maintenance one-shots (gc, scrub, purge-uploads) draw progress on stderr and print a
summary (lading.reporting); they also exit 1 when skipped or when they found trouble.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.config import Settings, parse_addr
from pipeline.errors import LadingError
from pipeline.jobs import QUEUES, ROUTES

__all__ = ["build_parser", "main"]

log = logging.getLogger("lading")

POOLS = ("prefork", "threads", "solo")
DEFAULT_POOL = "threads"
EXIT_ERROR = 1


class CommandError(Exception):
    """A command cannot do what was asked; the message is for the user."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        return dist_version("lading")
    except PackageNotFoundError:  # running from a source tree
        from pipeline import __version__

        return __version__


# --- configuration ------------------------------------------------------------------------


def config_path(arg: str | None) -> str | None:
    return arg or os.environ.get("LADING_CONFIG") or os.environ.get("REGISTRY_CONFIGURATION_PATH") or None


def load(args: argparse.Namespace) -> Settings:
    from pipeline.config import load_settings

    return load_settings(config_path(getattr(args, "config", None)), os.environ)


def setup_logging(settings: Settings, quiet_celery: bool = False) -> None:
    from pipeline.infra.logs import configure_logging

    configure_logging(settings.log_level)
    if quiet_celery and settings.log_level != "debug":
        # The embedded worker would log every job (arguments and result) at info level.
        for name in ("celery", "kombu"):
            logging.getLogger(name).setLevel(logging.WARNING)
    for warning in settings.warnings:
        log.warning("configuration: %s", warning)


def _require_broker(settings: Settings, command: str) -> str:
    if settings.celery.embedded:
        raise CommandError(
            f"`lading {command}` needs a broker: set celery.broker_url in the configuration or "
            "REGISTRY_CELERY_BROKER_URL (without one, `lading serve` runs its own worker and schedule)"
        )
    return str(settings.celery.broker_url)


# --- commands -----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from lading.embedded import assemble
    from lading.server import serve

    settings = load(args)
    setup_logging(settings, quiet_celery=True)
    assembly = assemble(settings)
    host, port = parse_addr(settings.http.addr)
    scheme = "https" if settings.http.tls is not None else "http"
    where = f"{scheme}://{host}:{port}"
    log.info("lading %s: data in %s; listening on %s", version(), data_location(settings), where)
    try:
        serve(assembly.app, settings, metrics_registry=assembly.metrics.registry)
    finally:
        assembly.close()
    return 0


def data_location(settings: Settings) -> str:
    """Where the registry's data lives, for the start-up line."""
    storage = settings.storage
    if storage.driver == "filesystem":
        return f"{os.path.abspath(storage.root)} (filesystem)"
    if storage.driver == "inmemory":
        return "memory (lost when the process stops)"
    bucket = getattr(storage, f"{storage.driver}_bucket", "")
    prefix = getattr(storage, f"{storage.driver}_rootdirectory", "") or storage.root
    return f"{storage.driver}://{bucket}/{prefix.strip('/')}" if bucket else storage.driver


def beat_schedule_file(args: argparse.Namespace, settings: Settings) -> str:
    """Beat's state file: --schedule, else lading.beat.schedule, else under the data
    directory (a filesystem driver) or the user's state directory; never the CWD."""
    path = args.schedule or settings.maintenance.beat_schedule_path
    if not path:
        if settings.storage.driver == "filesystem":
            base = os.path.join(os.path.abspath(settings.storage.root), "lading-beat")
        else:
            state = os.environ.get("XDG_STATE_HOME") or os.path.join(
                os.path.expanduser("~"), ".local", "state"
            )
            base = os.path.join(state, "lading")
        path = os.path.join(base, "celerybeat-schedule")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def worker_argv(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The `celery worker` arguments `lading worker` runs with."""
    queues = args.queues or ",".join(QUEUES)
    argv = ["worker", "--loglevel", settings.log_level.upper(), "--queues", queues, "--pool", args.pool]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    # Unique per process so several workers on one host do not collide in Flower/control.
    argv += ["--hostname", args.hostname or f"lading-{queues.replace(',', '+')}-{os.getpid()}@%h"]
    return argv


def cmd_worker(args: argparse.Namespace) -> int:
    from lading.composition import compose
    from workers.logs import use_json_logging

    settings = load(args)
    setup_logging(settings)
    _require_broker(settings, "worker")
    unknown = [q for q in (args.queues or "").split(",") if q and q not in QUEUES]
    if unknown:
        raise CommandError(f"unknown queue(s) {', '.join(unknown)} (Lading has {', '.join(QUEUES)})", 2)
    app = compose(settings, "worker").celery
    assert app is not None
    use_json_logging(app, settings.log_level)
    argv = worker_argv(args, settings)
    # Celery's banner is plain text on stdout; the same facts as one JSON line instead.
    log.info("worker %s", " ".join(argv[1:]))
    app.worker_main(argv=["--quiet", *argv])
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    from lading.composition import compose
    from workers.logs import use_json_logging

    settings = load(args)
    setup_logging(settings)
    _require_broker(settings, "beat")
    app = compose(settings, "beat").celery
    assert app is not None
    use_json_logging(app, settings.log_level)
    schedule = beat_schedule_file(args, settings)
    log.info("beat schedule state in %s", schedule)
    app.start(argv=["--quiet", "beat", "--loglevel", settings.log_level.upper(), "--schedule", schedule])
    return 0


def cmd_tarsum(args: argparse.Namespace) -> int:
    from pipeline.formats.tarsum import tarsum_file

    try:
        print(tarsum_file(args.file))
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from lading.embedded import assemble
    from lading.server import uvicorn_config

    settings = load(args)
    # Everything `lading serve` builds at start, started nothing: the same checks, one path
    # (the app and what it loads, then the server's own: TLS files, limits).
    assembly = assemble(settings, start=False)
    try:
        uvicorn_config(assembly.app, settings)
    finally:
        assembly.close()
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    mode = "embedded worker" if settings.celery.embedded else "broker"
    print(f"configuration OK: {settings.storage.driver} storage, http {settings.http.addr}, {mode}")
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    import time

    from pipeline.auth.tokenrecords import token_records_for
    from pipeline.infra.coordination import coordination_for

    settings = load(args)
    token = settings.auth.token
    if token is None or not token.builtin_htpasswd:
        raise CommandError("no built-in token server (lading.auth.token.htpasswd): nothing to revoke")
    if settings.celery.embedded:
        raise CommandError(
            "embedded mode keeps token records inside the `lading serve` process: change the user's "
            "password or remove them from the htpasswd file, which revokes their refresh tokens at once"
        )
    token_records_for(coordination_for(settings)).revoke_subject(args.user, time.time())
    print(f"revoked every token of {args.user!r} issued until now")
    return 0


def cmd_signing_key(args: argparse.Namespace) -> int:
    from lading.signing import write_signing_key

    try:
        key, cert = write_signing_key(args.directory, bits=args.bits)
    except FileExistsError as exc:
        raise CommandError(f"{exc.filename} exists; remove it first or choose another directory") from None
    print(f"lading.signing.key: {key}\nlading.signing.certificate: {cert}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    """`lading jobs dead|retry|drop` (lading.jobs_cli)."""
    from lading import jobs_cli

    settings = load(args)
    try:
        letters = jobs_cli.letters_for(settings)
        if args.jobs_command == "dead":
            print(jobs_cli.dead(letters, args.json))
        elif args.jobs_command == "retry":
            from workers.app import create_app

            app = create_app(settings)

            def send(name: str, kwargs: dict[str, Any], queue: str) -> str:
                return str(app.send_task(name, kwargs=kwargs, queue=queue or ROUTES.get(name)).id)

            print(f"{args.job_id} sent again as {jobs_cli.retry(letters, args.job_id, send)}")
        else:
            jobs_cli.drop(letters, args.job_id)
            print(f"{args.job_id} dropped")
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    except KeyError:
        raise CommandError(f"no dead job {args.job_id}") from None
    return 0


def maintenance_function(command: str) -> Callable[..., dict[str, Any]]:
    """The pipeline.maintenance function a one-shot command runs."""
    from pipeline.maintenance import garbage_collect, purge_uploads, scrub

    functions: dict[str, Callable[..., dict[str, Any]]] = {
        "gc": garbage_collect,
        "scrub": scrub,
        "purge-uploads": purge_uploads,
    }
    return functions[command]


def cmd_maintenance(args: argparse.Namespace) -> int:
    """Run one maintenance function with a progress display on stderr; print a summary
    (or, with --json, the result dict) on stdout. Exit 1 when the run was skipped or found
    trouble (lading.reporting.exit_code)."""
    function = maintenance_function(args.command)
    from lading.composition import compose
    from lading.reporting import ProgressDisplay, exit_code, summary

    settings = load(args)
    setup_logging(settings)
    registry = compose(settings, "cli").registry  # the workers' locks (pipeline.infra.coordination)
    assert registry is not None
    progress = ProgressDisplay(args.command)
    try:
        result = function(registry, dry_run=args.dry_run, progress=progress)
    finally:
        progress.close()
    if args.json:
        print(json.dumps(result, default=str, indent=2, sort_keys=True))
    else:
        print(summary(args.command, result))
    return exit_code(args.command, result)


# --- parser -------------------------------------------------------------------------------


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG",
        help="config.yml in distribution's format (default: $LADING_CONFIG, then built-in defaults)",
    )


def _concurrency(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lading",
        description="Lading: a container image registry whose ingestion is a Celery pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"lading {version()}")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of a failure (also: LADING_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "serve",
        help="run the registry API (with an in-process worker when no broker is configured)",
        description="Serve the registry API on http.addr. Without celery.broker_url an in-process "
        "worker runs the jobs (embedded mode); with one, jobs go to `lading worker` processes.",
    )
    _add_config(p)
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser(
        "worker", help="run a Celery worker for Lading's jobs", description="Run a Celery worker."
    )
    _add_config(p)
    p.add_argument(
        "--queues", "-Q", metavar="Q1,Q2", help=f"queues to consume (default: all of {','.join(QUEUES)})"
    )
    p.add_argument("--concurrency", "-c", type=_concurrency, metavar="N", help="pool size (default: CPUs)")
    # threads measured fastest (python -m bench: ~40% less CPU per push than prefork, whose
    # parent/child pipe costs more than the GIL here: the jobs hash with hashlib, which
    # releases it). Time limits: only prefork enforces them (see README, Scaled out).
    p.add_argument(
        "--pool",
        "-P",
        choices=POOLS,
        default=DEFAULT_POOL,
        help=f"{DEFAULT_POOL} (default: the fastest measured) or prefork, which enforces job time limits",
    )
    p.add_argument("--hostname", "-n", help="worker node name (default: lading-<queues>-<pid>@<host>)")
    p.set_defaults(run=cmd_worker)

    p = sub.add_parser(
        "beat", help="schedule maintenance jobs (run exactly one)", description="Run Celery beat."
    )
    _add_config(p)
    p.add_argument(
        "--schedule",
        "-s",
        metavar="FILE",
        help="beat's schedule state file (default: lading.beat.schedule, else <rootdirectory>/lading-beat/)",
    )
    p.set_defaults(run=cmd_beat)

    p = sub.add_parser(
        "tarsum", help="print the TarSum v1 of a local tar or tar.gz", description="Print TarSum v1."
    )
    p.add_argument("file", metavar="FILE", help="a tar archive (plain, gzip or zstd)")
    p.set_defaults(run=cmd_tarsum)

    helps = {
        "gc": "delete blobs no manifest references (garbage collection)",
        "scrub": "re-hash stored blobs and report any that no longer match their digest",
        "purge-uploads": "delete abandoned upload sessions older than uploadpurging.age",
    }
    dry_runs = {
        "gc": "report what would be deleted, delete nothing",
        "scrub": "report corrupt blobs, quarantine nothing and record nothing",
        "purge-uploads": "report which sessions would be deleted, delete nothing",
    }
    for name, text in helps.items():
        p = sub.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ", once. Progress goes to stderr (a bar on a "
            "terminal), a summary to stdout; exit status 1 when the run was skipped or found trouble.",
        )
        _add_config(p)
        p.add_argument("--dry-run", action="store_true", help=dry_runs[name])
        p.add_argument("--json", action="store_true", help="print the raw result as JSON, not a summary")
        p.set_defaults(run=cmd_maintenance)

    p = sub.add_parser(
        "tokens",
        help="manage the built-in token server's tokens",
        description="Manage refresh tokens of the built-in token server.",
    )
    tokens = p.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    p = tokens.add_parser(
        "revoke",
        help="revoke every token of a user",
        description="Revoke every refresh and access token USER was issued so far (recorded in the "
        "deployment's Redis; every API replica refuses them within 5 seconds).",
    )
    p.add_argument("user", metavar="USER")
    _add_config(p)
    p.set_defaults(run=cmd_tokens_revoke)

    from lading import jobs_cli

    jobs_cli.add_parser(sub, _add_config, cmd_jobs)

    p = sub.add_parser(
        "signing-key",
        help="create the key and certificate that sign job messages (lading.signing)",
        description="Write DIR/key.pem (RSA, readable by the owner only) and DIR/cert.pem (self-signed). "
        "Give both to the API, beat and workers; never the key to Flower.",
    )
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--bits", type=int, choices=(2048, 3072, 4096), default=2048, help="RSA key size (2048)")
    p.set_defaults(run=cmd_signing_key)

    p = sub.add_parser(
        "check-config",
        help="load the configuration, print warnings, exit 1 if it cannot run",
        description="Validate a configuration file (with REGISTRY_* overrides applied).",
    )
    _add_config(p)
    p.set_defaults(run=cmd_check_config)
    return parser


def command_name(args: argparse.Namespace) -> str:
    """`purge-uploads`, `jobs dead`, `tokens revoke`: what the user ran."""
    words = [args.command, getattr(args, "jobs_command", None), getattr(args, "tokens_command", None)]
    return " ".join(w for w in words if w)


def describe_failure(exc: BaseException) -> str:
    """One line naming what failed, for an error no command anticipated."""
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import RedisError
    from redis.exceptions import TimeoutError as RedisTimeout

    if isinstance(exc, (RedisConnectionError, RedisTimeout)):
        return f"Redis is unreachable: {exc}"
    if isinstance(exc, RedisError):
        return f"Redis refused the request: {type(exc).__name__}: {exc}"
    if isinstance(exc, BrokerError):
        return f"the job broker is unreachable: {exc}"
    if isinstance(exc, OSError) and exc.filename is not None:
        what = exc.strerror or type(exc).__name__
        other = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return f"{what}: {exc.filename}{other}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def debugging(args: argparse.Namespace | None) -> bool:
    flag = bool(getattr(args, "debug", False))
    return flag or os.environ.get("LADING_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debugging(args):
            traceback.print_exc()
        if isinstance(exc, CommandError):
            print(f"lading: {exc}", file=sys.stderr)
            return exc.code
        if isinstance(exc, LadingError):  # configuration, storage, jobs: already a sentence
            print(f"lading: {exc}", file=sys.stderr)
            return EXIT_ERROR
        hint = "" if debugging(args) else " (--debug or LADING_DEBUG=1 shows the traceback)"
        print(f"lading: {command_name(args)} failed: {describe_failure(exc)}{hint}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
