"""`python -m bench.drivers`: storage driver throughput — write, append, read, stat, list —
for filesystem, inmemory, s3 (moto server), gcs (fake-gcs-server) and azure (Azurite).

Runs on demand, never in CI: each emulator is started on 127.0.0.1 the way the tests start
it (`tests/support/emulators.py`, so run it from a checkout with the test dependencies and
Azurite installed). Emulator figures measure the driver plus a local emulator, not the
cloud service: they compare drivers' request patterns (how many requests, how many bytes),
not what a real bucket would do.

    python -m bench.drivers                      every driver, default sizes
    python -m bench.drivers --drivers s3,gcs --mib 64 --files 200
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from pipeline.storage.checked import CheckedDriver
from pipeline.storage.driver import StorageDriver

DRIVERS = ["filesystem", "inmemory", "s3", "gcs", "azure"]
MiB = 1024 * 1024


@dataclass
class Row:
    driver: str
    write_mib_s: float
    append_mib_s: float
    read_mib_s: float
    stat_ops_s: float
    list_ops_s: float
    list_entries: int


@contextmanager
def open_driver(name: str, workdir: str) -> Iterator[StorageDriver]:
    from tests.support import emulators

    unique = f"bench-{uuid.uuid4().hex[:12]}"
    if name == "filesystem":
        from pipeline.storage.filesystem import FilesystemDriver

        yield FilesystemDriver(os.path.join(workdir, "fs"))
    elif name == "inmemory":
        from pipeline.storage.memory import MemoryDriver

        yield MemoryDriver()
    elif name == "s3":
        from pipeline.storage.s3 import S3Driver

        with emulators.moto_server() as url:
            s3 = S3Driver(
                unique,
                endpoint_url=url,
                force_path_style=True,
                secure=False,
                access_key=emulators.S3_KEY,
                secret_key=emulators.S3_SECRET,
            )
            s3.client.create_bucket(Bucket=unique)
            yield s3
    elif name == "gcs":
        from pipeline.storage.gcs import GCSDriver

        with emulators.fake_gcs_server() as url:
            gcs = GCSDriver(unique, endpoint=url)
            gcs.client.create_bucket(unique)
            yield gcs
    elif name == "azure":
        from pipeline.storage.azure import AzureDriver

        with emulators.azurite() as url:
            az = AzureDriver(emulators.AZURITE_ACCOUNT, emulators.AZURITE_KEY, unique, service_url=url)
            az.container.create_container()
            yield az
    else:
        raise SystemExit(f"unknown driver {name!r} (have {', '.join(DRIVERS)})")


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(name: str, d: StorageDriver, mib: int, files: int, stats: int, lists: int) -> Row:
    block = os.urandom(MiB)
    n_big = 4
    per_file = max(1, mib // n_big)

    def write() -> None:
        for i in range(n_big):
            with d.writer(f"/big/{i}/data") as w:
                for _ in range(per_file):
                    w.write(block)
                w.commit()

    def append() -> None:  # an upload in PATCHes of 4 MiB, each its own writer
        d.put_content("/up/data", b"")
        chunk = block * 4
        for _ in range(max(1, mib // 4)):
            with d.writer("/up/data", append=True) as w:
                w.write(chunk)
                w.commit()

    def read() -> None:
        for i in range(n_big):
            with d.reader(f"/big/{i}/data") as stream:
                while stream.read(4 * MiB):
                    pass

    for i in range(files):
        d.put_content(f"/small/{i:05d}", b"x")

    def stat() -> None:
        for i in range(stats):
            d.stat(f"/small/{i % files:05d}")

    def listing() -> None:
        for _ in range(lists):
            assert len(d.list("/small")) == files

    written = n_big * per_file
    return Row(
        name,
        write_mib_s=written / timed(write),
        append_mib_s=max(1, mib // 4) * 4 / timed(append),
        read_mib_s=written / timed(read),
        stat_ops_s=stats / timed(stat),
        list_ops_s=lists / timed(listing),
        list_entries=files,
    )


def render(rows: list[Row], mib: int) -> str:
    entries = rows[0].list_entries if rows else 0
    head = "| driver | write MiB/s | append MiB/s (4 MiB PATCHes) | read MiB/s | stat/s "
    head += f"| list/s ({entries} entries) |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.driver} | {r.write_mib_s:.0f} | {r.append_mib_s:.0f} | {r.read_mib_s:.0f} "
            f"| {r.stat_ops_s:.0f} | {r.list_ops_s:.1f} |"
        )
    lines.append(f"\n{mib} MiB written, appended and read per driver; load average {os.getloadavg()[0]:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drivers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--drivers", default=",".join(DRIVERS), help="comma-separated (default: all)")
    parser.add_argument("--mib", type=int, default=64, help="MiB written, appended and read (default 64)")
    parser.add_argument("--files", type=int, default=200, help="small files for stat and list (default 200)")
    parser.add_argument("--stats", type=int, default=500, help="stat calls (default 500)")
    parser.add_argument("--lists", type=int, default=20, help="list calls (default 20)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lading-bench-drivers-") as workdir:
        for name in args.drivers.split(","):
            with ExitStack() as stack:
                driver = CheckedDriver(stack.enter_context(open_driver(name.strip(), workdir)))
                rows.append(measure(name.strip(), driver, args.mib, args.files, args.stats, args.lists))
                print(f"{name}: done", flush=True)
    print(render(rows, args.mib))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
