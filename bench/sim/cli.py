"""The command line of ``bench/simulate.py``: argparse, signals, exit status (0: every client
booted, 1: some did not, 2: the run could not start)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gevent

from .options import Options, SetupError, parse_size
from .profiles import parse_mix
from .rack import run
from .report import Summary, format_summary, write_json, write_plot
from .servers import ExternalServer, make_root

__all__ = ["build_parser", "main", "options_from_args", "run_with"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simulate.py",
        description="Boot a rack of simulated PXE clients against massboot (started here, on loopback, "
                    "no root needed) or any running DHCP/TFTP server, and report the figures.")
    d = Options()
    parser.add_argument("--clients", type=int, default=d.clients, help="number of machines (%(default)s)")
    parser.add_argument("--mix", default="bios=60,uefi=30,ipxe=10",
                        help="firmware profiles and weights, name=W or name:W: bios, uefi, ipxe, http "
                             "(PXE ROM, then iPXE over HTTP), plain (%(default)s)")
    parser.add_argument("--ramp", type=float, default=d.ramp,
                        help="power-on spread in seconds, uniform (%(default)s: all at once)")
    parser.add_argument("--loss", type=float, default=d.loss,
                        help="percent of datagrams dropped by the simulator, each direction (%(default)s)")
    parser.add_argument("--duration", type=float, default=d.duration,
                        help="give up on clients still booting after this many seconds (%(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (%(default)s)")
    parser.add_argument("--dhcp-only", action="store_true", help="only the PXE DORA exchange")
    parser.add_argument("--rounds", type=int, default=d.rounds,
                        help="with --dhcp-only: DORA exchanges per client (%(default)s)")
    parser.add_argument("--release", action="store_true", help="send DHCPRELEASE once booted")
    parser.add_argument("--timeout-scale", type=float, default=d.timeout_scale,
                        help="multiply every firmware timeout (%(default)s: the real ones)")
    parser.add_argument("--bootfile-size", type=parse_size, default="40K", help="%(default)s")
    parser.add_argument("--kernel-size", type=parse_size, default="4M", help="%(default)s")
    parser.add_argument("--initrd-size", type=parse_size, default="16M", help="%(default)s")
    parser.add_argument("--server", metavar="HOST",
                        help="use a running server at HOST instead of starting massboot")
    parser.add_argument("--dhcp-port", type=int, default=d.dhcp_port, help="with --server (%(default)s)")
    parser.add_argument("--tftp-port", type=int, default=d.tftp_port, help="with --server (%(default)s)")
    parser.add_argument("--servers", metavar="HOST:DHCP:TFTP,...", type=parse_servers, default=[],
                        help="use several running servers sharing one lease pool: the relay forwards "
                             "every request to all of them (README, Several servers)")
    parser.add_argument("--boot-retries", type=int, default=d.boot_retries,
                        help="whole boots a client starts again from DISCOVER after a DHCP or TFTP "
                             "timeout, as firmware set to retry network boot does (%(default)s)")
    parser.add_argument("--server-pid", type=int,
                        help="with --server: report this process's CPU time and peak RSS")
    parser.add_argument("--relay-ip", default=d.relay_ip, help="relay agent address, giaddr (%(default)s)")
    parser.add_argument("--relay-port", type=int, default=d.relay_port,
                        help="port of the shared relay socket; servers that answer relays on their own "
                             "port (dnsmasq) need it equal to --dhcp-port (%(default)s: any)")
    parser.add_argument("--relay-socket", choices=("shared", "per-client"), default=d.relay_socket,
                        help="one relay socket for the rack, or one per DHCP exchange (%(default)s)")
    parser.add_argument("--server-log-level", default=d.server_log_level,
                        help="[logger] level of the massboot started here (%(default)s)")
    parser.add_argument("--tftp-fast-path", choices=("auto", "on", "off"), default=d.tftp_fast_path,
                        help="[tftpd] fast_path of the massboot started here: the compiled TFTP data "
                             "path or the pure-Python one (unset: massboot's default, auto)")
    parser.add_argument("--remote-root", action="store_true",
                        help="serve the root over HTTP from here; massboot reads it through its cache")
    parser.add_argument("--http-server", choices=("massboot", "nginx"), default=d.http_server,
                        help="with the http profile in the mix: who serves the script, kernel and initrd "
                             "over HTTP, massboot's -H or a private nginx on the same root (%(default)s)")
    parser.add_argument("--netns", action="store_true",
                        help="(root) massboot and the rack in two namespaces: broadcast DHCP over a veth")
    parser.add_argument("--proxy", action="store_true",
                        help="massboot in proxy mode (proxyDHCP) beside a site DHCP server: the "
                             "simulator's own minimal one, or --site-server")
    parser.add_argument("--site-server", metavar="HOST:PORT",
                        help="with --proxy: a running site DHCP server the relay forwards to as well")
    parser.add_argument("--make-root", metavar="DIR",
                        help="write the boot root (files of the given sizes) into DIR and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (root, log)")
    parser.add_argument("--json", metavar="FILE", help="write the summary and per-client records")
    parser.add_argument("--plot", metavar="FILE.png", help="draw the boot over time (needs matplotlib)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    return parser


def parse_servers(text: str) -> list[tuple[str, int, int]]:
    """``HOST:DHCP:TFTP,HOST:DHCP:TFTP`` → ``[(host, dhcp_port, tftp_port), ...]``."""
    out = []
    for item in text.split(","):
        try:
            host, dhcp, tftp = item.strip().rsplit(":", 2)
            out.append((host, int(dhcp), int(tftp)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not HOST:DHCP_PORT:TFTP_PORT") from None
    return out


def options_from_args(args: argparse.Namespace) -> Options:
    """Options from parsed arguments (ValueError on a bad ``--mix``)."""
    return Options(clients=args.clients, mix=parse_mix(args.mix), ramp=args.ramp, loss=args.loss,
                   duration=args.duration, seed=args.seed, dhcp_only=args.dhcp_only, rounds=args.rounds,
                   release=args.release, timeout_scale=args.timeout_scale,
                   bootfile_size=args.bootfile_size, kernel_size=args.kernel_size,
                   initrd_size=args.initrd_size, server=args.server, dhcp_port=args.dhcp_port,
                   tftp_port=args.tftp_port, server_pid=args.server_pid, relay_ip=args.relay_ip,
                   relay_port=args.relay_port, relay_socket=args.relay_socket,
                   server_log_level=args.server_log_level, tftp_fast_path=args.tftp_fast_path,
                   remote_root=args.remote_root, netns=args.netns,
                   proxy=args.proxy, site_server=args.site_server,
                   http_server=args.http_server,
                   keep=args.keep, json_path=args.json, plot_path=args.plot, progress=not args.quiet,
                   servers=args.servers, boot_retries=args.boot_retries)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0: every client booted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.make_root:
        sizes = make_root(args.make_root, args.bootfile_size, args.kernel_size, args.initrd_size)
        for name, size in sorted(sizes.items()):
            print(f"{size:>12}  {os.path.join(args.make_root, name)}")
        return 0
    try:
        opts = options_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    external: ExternalServer | None = None
    if opts.server is not None and opts.server_pid is not None:
        external = ExternalServer(opts.server_pid)
    previous = _interrupt_on_signals()
    try:
        summary = run_with(opts, external.sample if external else None)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if external is not None:
        summary.server_cpu_s, summary.server_peak_rss_mb = external.cpu_s, external.peak_rss_mb
    print(format_summary(summary))
    if opts.json_path:
        write_json(summary, opts.json_path)
    if opts.plot_path:
        write_plot(summary, opts.plot_path)
    return 0 if summary.all_booted else 1


def _interrupt_on_signals() -> dict[int, Any]:
    """SIGINT and SIGTERM interrupt the main greenlet (not whichever client runs), so a run
    unwinds cleanly: the massboot it started is stopped and the temporary directory removed.

    Returns:
        The previous handlers, to restore.
    """
    main_greenlet = gevent.getcurrent()
    loop = gevent.get_hub().loop

    def interrupt(signum: int, frame: object) -> None:
        loop.run_callback(main_greenlet.throw, KeyboardInterrupt)

    return {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}


def run_with(opts: Options, after: Callable[[], None] | None) -> Summary:
    """:func:`run`, then ``after()`` (sampling an external server while it still runs)."""
    summary = run(opts)
    if after is not None:
        after()
    return summary


if __name__ == "__main__":
    sys.exit(main())
