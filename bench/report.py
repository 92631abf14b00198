"""Printing the benchmark's results: the machine limits, one table row per scenario and
target (medians over repeats), the Lading/distribution ratio per scenario, and the same
data as JSON for `--json FILE`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.machine import MachineLimits
from bench.scenarios import Measurement, median_measurement

__all__ = ["BASELINE", "medians", "render", "write_json"]

BASELINE = "distribution"


def medians(measurements: Sequence[Measurement]) -> list[Measurement]:
    """One median Measurement per (scenario, target), in first-seen order."""
    groups: dict[tuple[str, str], list[Measurement]] = {}
    for m in measurements:
        groups.setdefault((m.scenario, m.target), []).append(m)
    return [median_measurement(items) for items in groups.values()]


def ratio(m: Measurement, table: Sequence[Measurement]) -> float | None:
    """Throughput of `m` over the baseline's in the same scenario."""
    base = next((b for b in table if b.scenario == m.scenario and b.target == BASELINE), None)
    if base is None or not base.throughput:
        return None
    return m.throughput / base.throughput


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def render_machine(limits: MachineLimits) -> str:
    cold = "cold" if limits.disk_read_cold else "page cache"
    la = ", ".join(f"{x:.2f}" for x in limits.load_average)
    return "\n".join(
        [
            "Machine limits",
            f"  CPUs: {limits.cpus}   load average at start: {la}",
            f"  SHA-256, one core:               {limits.sha256_mb_s:8.0f} MB/s",
            f"  storage dir write + fsync:       {limits.disk_write_fsync_mb_s:8.0f} MB/s",
            f"  storage dir read ({cold}):{' ' * (12 - len(cold))}{limits.disk_read_mb_s:8.0f} MB/s",
            f"  loopback HTTP GET, c=16:         {limits.loopback_get_req_s:8.0f} req/s "
            f"(p99 {limits.loopback_get_p99_ms:.1f} ms)",
            f"  loopback HTTP PUT 64 MiB, c=1:   {limits.loopback_put_mb_s:8.0f} MB/s",
        ]
    )


def render_table(table: Sequence[Measurement], titles: dict[str, str]) -> str:
    header = (
        f"{'scenario':<19} {'target':<16} {'throughput':>15} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'srv CPU':>13} {'redis CPU':>10} {'client':>7} {'x dist':>7}  notes"
    )
    lines = [header, "-" * len(header)]
    previous = None
    for m in table:
        if m.scenario != previous:
            if previous is not None:
                lines.append("")
            lines.append(f"# {m.scenario}: {titles.get(m.scenario, '')}")
            previous = m.scenario
        unit = "s/GB" if m.per_gb else "ms/op"
        notes = []
        if m.errors:
            notes.append(f"{m.errors} errors: {m.first_error}")
        if m.capped:
            notes.append("time-capped")
        if "worker" in m.cpu_by_service_s and m.server_cpu_s > 0:
            api = sum(v for k, v in m.cpu_by_service_s.items() if kind_of(k) == "api") / m.server_cpu_s * 100
            notes.append(f"api {api:.0f}% / worker {100 - api:.0f}% of srv CPU")
        for name, p99 in m.extra_p99_ms.items():
            notes.append(f"{name} p50 {m.extra_p50_ms.get(name, 0.0):.1f} / p99 {p99:.1f} ms")
        r = ratio(m, table)
        client_cpu = _fmt(m.client_cpu_norm, 2)
        redis = f"{_fmt(m.redis_cpu_norm, 2)} {unit}" if m.redis_cpu_norm is not None else "-"
        lines.append(
            f"{'':<19} {m.target:<16} {_fmt(m.throughput):>8} {m.unit:<6} {m.p50_ms:8.1f} {m.p95_ms:8.1f} "
            f"{m.p99_ms:8.1f} {_fmt(m.server_cpu_norm, 2):>7} {unit:<5} {redis:>10} {client_cpu:>7} "
            f"{(_fmt(r, 2) + 'x') if r is not None else '-':>7}  {'; '.join(notes)}"
        )
    return "\n".join(lines)


def kind_of(label: str) -> str:
    """The process kind of a service label: api, api2 → api; worker3 → worker; redis."""
    return label.rstrip("0123456789")


def cpu_by_kind(m: Measurement) -> dict[str, float]:
    """CPU per operation (ms) or per GB (s) of each process kind, and their sum."""
    seconds: dict[str, float] = {}
    for label, value in m.cpu_by_service_s.items():
        seconds[kind_of(label)] = seconds.get(kind_of(label), 0.0) + value
    out = {kind: m._norm(value) for kind, value in seconds.items()}
    out["sum"] = sum(out.values())
    return out


def render_cpu_split(table: Sequence[Measurement]) -> str:
    """Server CPU per op by process kind (API, worker, Redis, summed) for every target."""
    lines = [
        "Server CPU by process kind (ms/op, or s/GB for MB/s scenarios; Lading embedded's worker "
        "runs inside its API process)",
        f"  {'scenario':<20} {'target':<22} {'api':>8} {'worker':>8} {'redis':>8} {'sum':>8} {'x dist':>7}",
    ]
    for scenario in dict.fromkeys(m.scenario for m in table):
        rows = [m for m in table if m.scenario == scenario]
        base = next((m for m in rows if m.target == BASELINE), None)
        base_sum = cpu_by_kind(base)["sum"] if base is not None else None
        for m in rows:
            split = cpu_by_kind(m)
            rel = f"{split['sum'] / base_sum:.2f}x" if base_sum else "-"
            cells = "".join(
                f"{_fmt(split.get(k), 2) if k in split else '-':>9}" for k in ("api", "worker", "redis")
            )
            lines.append(f"  {scenario:<20} {m.target:<22}{cells}{_fmt(split['sum'], 2):>9} {rel:>7}")
    return "\n".join(lines)


def render_ratios(table: Sequence[Measurement]) -> str:
    targets = [t for t in dict.fromkeys(m.target for m in table) if t != BASELINE]
    if not targets:
        return ""
    lines = ["Throughput ratio Lading / distribution (higher is better for Lading)"]
    lines.append(f"  {'scenario':<20}" + "".join(f"{t:>18}" for t in targets))
    for scenario in dict.fromkeys(m.scenario for m in table):
        cells = []
        for t in targets:
            m = next((x for x in table if x.scenario == scenario and x.target == t), None)
            r = ratio(m, table) if m else None
            cells.append(f"{(_fmt(r, 2) + 'x') if r is not None else '-':>18}")
        lines.append(f"  {scenario:<20}" + "".join(cells))
    return "\n".join(lines)


def render(
    table: Sequence[Measurement],
    titles: dict[str, str],
    limits: MachineLimits | None,
    context: dict[str, Any],
) -> str:
    parts = []
    if limits is not None:
        parts.append(render_machine(limits))
    targets = [f"{name} ({', '.join(notes) or 'defaults'})" for name, notes in context["targets"].items()]
    parts.append("Targets: " + "; ".join(targets))
    parts.append(
        f"Profile {context['profile']}, {context['repeat']} repeat(s) (medians), "
        f"idle server CPU per target (%/core): "
        + ", ".join(f"{k} {v:.1f}" for k, v in context.get("idle_cpu_percent", {}).items())
    )
    parts.append(
        "srv CPU = the registry's process tree (Lading: API + workers), per GB moved or per operation; "
        "redis CPU separately (same unit); client = this benchmark's own CPU (same unit)."
    )
    parts.append(render_table(table, titles))
    ratios = render_ratios(table)
    if ratios:
        parts.append(ratios)
    parts.append(render_cpu_split(table))
    parts.append(f"Wall time {context['wall_seconds']:.0f} s")
    return "\n\n".join(parts)


def write_json(
    path: Path,
    raw: Sequence[Measurement],
    table: Sequence[Measurement],
    limits: MachineLimits | None,
    context: dict[str, Any],
) -> None:
    data = {
        "context": context,
        "machine": limits.as_dict() if limits else None,
        "results": [
            {**m.as_dict(), "ratio_vs_distribution": ratio(m, table), "cpu_by_kind": cpu_by_kind(m)}
            for m in table
        ],
        "raw": [m.as_dict() for m in raw],
    }
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
