"""`python -m bench`: Lading against CNCF distribution 2.8.2 on this machine.

Starts every target registry on 127.0.0.1 with fresh filesystem storage in a temporary
directory, warms each up, drives the same scenarios with the same client against each
(interleaved scenario by scenario, target order rotated every repeat), and prints a table
of throughput, latency percentiles, server CPU per GB or per operation and the
Lading/distribution ratio, after the machine's own limits. Bounded: a fixed number of
operations per scenario, a per-scenario time cap and an overall deadline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.client import RegistryClient, new_event_loop
from bench.machine import MachineLimits, measure
from bench.report import medians, render, write_json
from bench.scenarios import PROFILES, SCENARIOS, Measurement, run_scenario, warm_up
from bench.targets import TARGET_NAMES, Target, lading_ready, start_target

EPILOG = (
    """scenarios (--scenarios, comma-separated; default all):
"""
    + "\n".join(f"  {name:<20} {s.title}" for name, s in SCENARIOS.items())
    + """

examples:
  python -m bench                              full run (7-9 min on 2 cores)
  python -m bench --quick --json out.json      short run, results also as JSON
  python -m bench --scenarios push-small-c8,ci-batch-async-c16 --repeat 3
  python -m bench --targets distribution,lading-embedded --worker-pool prefork
  python -m bench --quick --scale 1,1 --scale 2,2 --scale 1,4 --scenarios push-small-c8,ci-batch-c16
                                               the scaled shape with N APIs x M workers, side by side
"""
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else None,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="short run: fewer operations, 30 s time cap")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="seconds-long run with tiny sizes: proves the tool works, measures nothing",
    )
    p.add_argument(
        "--repeat", type=_positive, default=1, metavar="N", help="run everything N times, report medians"
    )
    p.add_argument("--scenarios", metavar="A,B", help="only these scenarios (see below)")
    p.add_argument(
        "--targets",
        metavar="A,B",
        default=",".join(TARGET_NAMES),
        help=f"registries to run (default: {','.join(TARGET_NAMES)}); distribution is the ratio's baseline",
    )
    p.add_argument(
        "--worker-pool",
        choices=("threads", "prefork", "solo"),
        help="pool of lading-scaled's `lading worker` (default: the command's own, as the README runs it)",
    )
    p.add_argument(
        "--worker-concurrency", type=_positive, metavar="N", help="its concurrency (default: the command's)"
    )
    p.add_argument(
        "--scale",
        action="append",
        type=_shape,
        metavar="N,M",
        help="instead of lading-scaled, run lading-scaled-NxM: N API processes (client round robin) and M "
        "workers on one Redis and one storage root; repeat for several shapes side by side",
    )
    p.add_argument(
        "--redis",
        metavar="URL",
        help="use this Redis (e.g. redis://127.0.0.1:6379/11) instead of starting a private redis-server "
        "(a private one is what lets its CPU be measured alone)",
    )
    p.add_argument(
        "--lading-config",
        type=Path,
        metavar="FILE",
        help="config.yml given to every Lading process, e.g. to compare Celery settings "
        "(REGISTRY_* variables still set address, storage, broker and log level)",
    )
    p.add_argument("--json", type=Path, metavar="FILE", help="also write results (medians and raw) as JSON")
    p.add_argument(
        "--workdir", type=Path, metavar="DIR", help="where storage and logs go (default: a temp dir)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (storage and server logs)")
    p.add_argument("--no-machine", action="store_true", help="skip the machine-limit probes")
    p.add_argument(
        "--time-cap", type=float, metavar="S", help="per scenario and target (default: the profile's)"
    )
    p.add_argument(
        "--count", type=_positive, metavar="N", help="operations per scenario (default: the profile's)"
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=20.0,
        metavar="MIN",
        help="skip scenarios not started after MIN minutes (default 20)",
    )
    p.add_argument("--pause-after-warmup", type=float, default=0.0, metavar="S", help=argparse.SUPPRESS)
    return p


def _shape(text: str) -> str:
    try:
        apis, workers = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected N,M (API processes, worker processes)") from None
    if apis < 1 or workers < 1:
        raise argparse.ArgumentTypeError("N and M must be at least 1")
    return f"lading-scaled-{apis}x{workers}"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _selected(raw: str | None, known: list[str] | tuple[str, ...], what: str) -> list[str]:
    if not raw:
        return list(known)
    names = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def _idle_cpu(targets: list[Target], seconds: float) -> dict[str, float]:
    before = {t.name: sum(t.cpu().values()) for t in targets}
    time.sleep(seconds)
    return {t.name: (sum(t.cpu().values()) - before[t.name]) / seconds * 100 for t in targets}


def run(args: argparse.Namespace) -> int:
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.count:
        profile = replace(profile, counts=dict.fromkeys(profile.counts, args.count))
    scenario_names = _selected(args.scenarios, list(SCENARIOS), "scenario")
    target_names = _selected(args.targets, TARGET_NAMES, "target")
    if args.scale:
        at = target_names.index("lading-scaled") if "lading-scaled" in target_names else len(target_names)
        others = [n for n in target_names if n != "lading-scaled"]
        target_names = others[:at] + list(dict.fromkeys(args.scale)) + others[at:]
    if any(n.startswith("lading") for n in target_names):
        problem = lading_ready()
        if problem:
            raise SystemExit(f"bench: {problem}")
    time_cap = args.time_cap or profile.time_cap
    started = time.monotonic()
    deadline = started + args.deadline * 60
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lading-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    limits: MachineLimits | None = None
    raw: list[Measurement] = []
    context: dict[str, Any] = {"profile": profile.name, "repeat": args.repeat, "targets": {}}
    loop = new_event_loop()
    try:
        if not args.no_machine:
            _log("measuring machine limits ...")
            mc = profile.machine
            limits = measure(workdir, mc["hash"], mc["disk"], mc["gets"], mc["puts"], mc["put_size"])
        with ExitStack() as stack:
            targets: list[Target] = []
            for name in target_names:
                _log(f"starting {name} ...")
                target = start_target(
                    name, workdir, args.redis, args.worker_pool, args.worker_concurrency, args.lading_config
                )
                stack.callback(target.close)
                targets.append(target)
                loop.run_until_complete(_warm(target))
                context["targets"][name] = target.notes
                context.setdefault("pids", {})[name] = {s.label: s.popen.pid for s in target.services}
                _log(f"  {name} at {target.url} ({', '.join(target.notes) or 'defaults'})")
            if args.pause_after_warmup:
                time.sleep(args.pause_after_warmup)
            context["idle_cpu_percent"] = _idle_cpu(targets, 0.5 if args.smoke else 2.0)
            for repeat in range(args.repeat):
                order = targets[repeat % len(targets) :] + targets[: repeat % len(targets)]
                for name in scenario_names:
                    if time.monotonic() > deadline:
                        _log(f"deadline reached: skipping {name}")
                        context.setdefault("skipped", []).append(name)
                        continue
                    scenario = SCENARIOS[name]
                    scenario.prepare(profile, repeat)
                    try:
                        for target in order:
                            run = run_scenario(scenario, target, profile, repeat, time_cap)
                            m = loop.run_until_complete(run)
                            raw.append(m)
                            err = f", {m.errors} errors ({m.first_error})" if m.errors else ""
                            _log(
                                f"[{repeat + 1}/{args.repeat}] {name:<20} {target.name:<16} "
                                f"{m.throughput:9.1f} {m.unit:<8} p99 {m.p99_ms:7.1f} ms  "
                                f"{m.ops} ops in {m.elapsed_s:.1f}s{err}"
                            )
                    finally:
                        scenario.release()
            context["load_average_end"] = os.getloadavg()
        context["wall_seconds"] = time.monotonic() - started
        table = medians(raw)
        titles = {name: s.title for name, s in SCENARIOS.items()}
        print(render(table, titles, limits, context), flush=True)
        if args.json:
            write_json(args.json, raw, table, limits, context)
    finally:
        loop.close()
        if not args.keep and args.workdir is None:
            _log("removing the work directory ...")  # many small files: can take a minute
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep:
            _log(f"work directory kept: {workdir}")
    failed = sum(m.errors for m in raw)
    return 1 if failed or not raw else 0


async def _warm(target: Target) -> None:
    async with RegistryClient(target.url, 2) as client:
        await warm_up(client)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except (TimeoutError, RuntimeError, OSError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
