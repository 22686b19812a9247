"""The figures of a run: percentiles, the :class:`Summary`, the printed table, ``--json`` and
``--plot``."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .client import ClientResult
from .options import Options

if TYPE_CHECKING:
    from .rack import Rack
    from .servers import ServerProcess

__all__ = ["Summary", "format_summary", "percentiles", "summarise", "write_json", "write_plot"]


@dataclass
class Summary:
    """The figures of one run (``--json`` writes this, with every client's record).

    ``bytes`` counts every in-order DATA payload received, ``bytes_completed`` only the files
    read to the end (they differ when clients were still transferring at ``--duration``);
    ``mb_per_s`` is ``bytes`` over the span from the first power-on to the last client's last
    phase. ``dhcp_lost`` counts DORA exchanges that needed at least one retransmission.
    ``by_profile`` has, per profile, the clients, those booted, the time to fully booted and
    the time from the config (PXELINUX config or iPXE script) to the initrd's last byte
    (``kernel_initrd``: where TFTP and HTTP differ), as :func:`percentiles`.
    """

    mode: str
    target: str
    clients: int
    booted: int
    failed: int
    failures: dict[str, int]
    profiles: dict[str, int]
    loss_percent: float
    timeout_scale: float
    elapsed: float
    latency: dict[str, dict[str, float]]
    bytes: int
    bytes_completed: int
    mb_per_s: float
    dhcp_exchanges: int
    dhcp_exchanges_per_s: float
    dhcp_lost: int
    dhcp_resends: int
    tftp_transfers: int
    tftp_resends: int
    tftp_duplicates: int
    dropped_out: int
    dropped_in: int
    send_errors: int
    server_cpu_s: float | None
    server_peak_rss_mb: float | None
    simulator_cpu_s: float
    files: dict[str, int]
    throughput: list[tuple[float, float]]
    results: list[ClientResult]
    upstream: dict[str, Any] | None = None
    http_requests: int = 0
    http_connections: int = 0
    by_profile: dict[str, dict[str, Any]] | None = None
    http_server: dict[str, Any] | None = None  # the HTTP server started beside massboot (nginx)

    @property
    def all_booted(self) -> bool:
        """True when every client reached ``booted``."""
        return self.clients > 0 and self.booted == self.clients


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p95 (nearest rank) and max of ``values``; empty when there are none."""
    if not values:
        return {}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p * n) - 1)]

    return {"p50": rank(0.50), "p95": rank(0.95), "max": ordered[-1], "count": float(n)}


def summarise(opts: Options, target: str, rack: Rack, results: list[ClientResult], elapsed: float,
               server: ServerProcess | None, files: dict[str, int], samples: list[tuple[float, float]],
               sim_cpu: float) -> Summary:
    booted = [r for r in results if r.ok]
    failures: Counter[str] = Counter()
    for r in results:
        if not r.ok:
            failures[(r.failure or "unknown").split(" (", 1)[0]] += 1
    latency: dict[str, dict[str, float]] = {}
    for key, phase in (("address", "address"), ("bootfile", "bootfile"), ("booted", "booted")):
        values = [r.marks[phase] - r.marks["power_on"] for r in results if phase in r.marks]
        if values:
            latency[key] = percentiles(values)
    dora = [t for r in results for t in r.dora_times]
    if dora:
        latency["dora"] = percentiles(dora)
    ends = [max(r.marks.values()) for r in results if r.marks]
    starts = [r.marks["power_on"] for r in results if "power_on" in r.marks]
    span = (max(ends) - min(starts)) if ends and starts else elapsed
    dhcp_exchanges = sum(r.dhcp_exchanges for r in results)
    by_profile: dict[str, dict[str, Any]] = {}
    for name in sorted({r.profile for r in results}):
        rows = [r for r in results if r.profile == name]
        by_profile[name] = {
            "clients": len(rows), "booted": sum(1 for r in rows if r.ok),
            "booted_time": percentiles([r.marks["booted"] - r.marks["power_on"] for r in rows
                                        if "booted" in r.marks]),
            "kernel_initrd": percentiles([r.marks["initrd"] - r.marks["config"] for r in rows
                                          if "initrd" in r.marks and "config" in r.marks]),
            "http_requests": sum(r.http_requests for r in rows),
        }
    return Summary(
        mode="dhcp-only" if opts.dhcp_only else "boot",
        target=target,
        clients=len(results),
        booted=len(booted),
        failed=len(results) - len(booted),
        failures=dict(failures.most_common()),
        profiles=dict(Counter(r.profile for r in results)),
        loss_percent=opts.loss,
        timeout_scale=opts.timeout_scale,
        elapsed=round(elapsed, 3),
        latency=latency,
        bytes=rack.bytes,
        bytes_completed=sum(r.bytes for r in results),
        mb_per_s=(rack.bytes / span / 1e6) if span > 0 else 0.0,
        dhcp_exchanges=dhcp_exchanges,
        dhcp_exchanges_per_s=dhcp_exchanges / span if span > 0 else 0.0,
        dhcp_lost=sum(r.dhcp_lost for r in results),
        dhcp_resends=sum(r.dhcp_resends for r in results),
        tftp_transfers=rack.transfers,
        tftp_resends=sum(r.tftp_resends for r in results),
        tftp_duplicates=sum(r.tftp_duplicates for r in results),
        dropped_out=rack.dropped_out,
        dropped_in=rack.dropped_in,
        send_errors=rack.send_errors,
        server_cpu_s=server.cpu_s if server is not None else None,
        server_peak_rss_mb=server.peak_rss_mb if server is not None else None,
        simulator_cpu_s=round(sim_cpu, 3),
        files=files,
        throughput=samples,
        results=results,
        http_requests=rack.http_requests,
        http_connections=sum(r.http_connections for r in results),
        by_profile=by_profile,
    )


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def format_summary(s: Summary) -> str:
    """The summary table printed at the end of a run."""
    lines = []
    mix = ", ".join(f"{name} {count}" for name, count in sorted(s.profiles.items()))
    lines.append(f"massboot simulator: {s.clients} clients ({mix}), {s.mode}, loss {s.loss_percent:g} %, "
                 f"timeout scale {s.timeout_scale:g}")
    lines.append(f"target: {s.target}")
    verb = "done" if s.mode == "dhcp-only" else "booted"
    lines.append(f"clients {verb}: {s.booted}/{s.clients}, failed: {s.failed}")
    for reason, count in s.failures.items():
        lines.append(f"    {count:5d}  {reason}")
    lines.append("")
    lines.append(f"{'':26}{'p50':>10}{'p95':>10}{'max':>10}")
    labels = (("address", "time to address"), ("bootfile", "time to boot file"),
              ("booted", "time to fully booted" if s.mode == "boot" else "time to last DORA"),
              ("dora", "one DORA exchange"))
    for key, label in labels:
        stats = s.latency.get(key)
        if stats:
            lines.append(f"{label:26}{_fmt_s(stats['p50']):>10}{_fmt_s(stats['p95']):>10}"
                         f"{_fmt_s(stats['max']):>10}")
    if s.mode == "boot" and s.by_profile and len(s.by_profile) > 1:
        lines.append("")
        lines.append(f"{'by profile':12}{'booted':>10}{'fully booted p50':>18}{'p95':>10}{'max':>10}"
                     f"{'kernel+initrd p50':>19}{'p95':>10}")
        for name, row in s.by_profile.items():
            booted, ki = row["booted_time"], row["kernel_initrd"]
            lines.append(f"{name:12}{row['booted']:>6}/{row['clients']:<3}"
                         f"{_fmt_s(booted.get('p50')):>18}{_fmt_s(booted.get('p95')):>10}"
                         f"{_fmt_s(booted.get('max')):>10}{_fmt_s(ki.get('p50')):>19}{_fmt_s(ki.get('p95')):>10}")
    lines.append("")
    if s.mode == "boot":
        partial = s.bytes - s.bytes_completed
        http = (f" and {s.http_requests} HTTP GETs ({s.http_connections} connections)"
                if s.http_requests else "")
        lines.append(f"transferred: {s.bytes / 1e6:,.1f} MB in {s.tftp_transfers} TFTP transfers{http}, "
                     f"{s.mb_per_s:,.1f} MB/s aggregate"
                     + (f" ({partial / 1e6:,.1f} MB of unfinished files)" if partial else ""))
    lost_pct = 100.0 * s.dhcp_lost / s.dhcp_exchanges if s.dhcp_exchanges else 0.0
    lines.append(f"DHCP: {s.dhcp_exchanges} DORA exchanges, {s.dhcp_exchanges_per_s:,.0f}/s, "
                 f"{s.dhcp_lost} needed a resend ({lost_pct:.2f} %), {s.dhcp_resends} resends")
    if s.mode == "boot":
        lines.append(f"TFTP: {s.tftp_resends} client resends (RRQ/ACK), {s.tftp_duplicates} duplicate "
                     f"or out-of-order DATA (server resends seen)")
    lines.append(f"injected loss: {s.dropped_out} datagrams dropped outgoing, {s.dropped_in} incoming")
    if s.send_errors:
        lines.append(f"send errors (full socket buffers, counted as losses): {s.send_errors}")
    if s.upstream is not None:
        u = s.upstream
        lines.append(f"upstream: {u['gets_ok']} GETs, {u['bytes'] / 1e6:,.1f} MB "
                     f"(≈ {u['copies']:.2f} copies of each file; {len(u['distinct_files'])} distinct files, "
                     f"{u['distinct_bytes'] / 1e6:,.1f} MB)"
                     + (f"; {u['not_found']} GETs answered 404 (config probes)" if u["not_found"] else ""))
    if s.server_cpu_s is not None:
        per = f", {s.server_cpu_s / (s.bytes / 1e8):.2f} CPU-s per 100 MB" if s.bytes else ""
        lines.append(f"server: {s.server_cpu_s:.2f} CPU-seconds during the run{per}, "
                     f"peak RSS {s.server_peak_rss_mb or 0:.1f} MiB")
    if s.http_server is not None:
        h = s.http_server
        lines.append(f"HTTP server ({h['name']}): {h['cpu_s']:.2f} CPU-seconds during the run, "
                     f"peak RSS {h['peak_rss_mb']:.1f} MiB")
    lines.append(f"simulator: {s.simulator_cpu_s:.2f} CPU-seconds, wall {s.elapsed:.2f} s")
    return "\n".join(lines)


def write_json(summary: Summary, path: str) -> None:
    """``--json``: the summary and every client's record."""
    data = asdict(summary)
    data["all_booted"] = summary.all_booted
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")


_PHASE_COLOURS = {"power_on": "#bbbbbb", "address": "#4c72b0", "bootfile": "#dd8452", "config": "#937860",
                  "kernel": "#55a868", "initrd": "#c44e52", "booted": "#8172b3"}


def write_plot(summary: Summary, path: str) -> bool:
    """``--plot``: every client's boot over time (one row each, coloured by phase) and the
    aggregate throughput. Returns False (and says why) when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        print(f"--plot {path}: matplotlib is not installed (pip install matplotlib); no plot written",
              file=sys.stderr)
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gantt, rate) = plt.subplots(2, 1, figsize=(11, 8), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    order = sorted(summary.results, key=lambda r: r.marks.get("power_on", 0.0))
    for row, result in enumerate(order):
        marks = sorted(result.marks.items(), key=lambda kv: kv[1])
        for (_phase, start), (next_phase, end) in zip(marks, marks[1:], strict=False):
            gantt.broken_barh([(start, max(end - start, 1e-3))], (row, 0.9),
                              color=_PHASE_COLOURS.get(next_phase, "#333333"))
        if not result.ok and marks:
            gantt.plot([marks[-1][1]], [row + 0.45], "kx", markersize=3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _PHASE_COLOURS.values()]
    gantt.legend(handles, [f"until {p}" for p in _PHASE_COLOURS], loc="lower right", fontsize=7)
    gantt.set_ylabel("client")
    gantt.set_title(f"{summary.clients} clients, {summary.booted} booted: {summary.target}", fontsize=9)
    if summary.throughput:
        xs, ys = zip(*summary.throughput, strict=True)
        rate.plot(xs, ys)
    rate.set_ylabel("MB/s")
    rate.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

