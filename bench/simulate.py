"""A rack of simulated PXE clients booting from a DHCP/PXE + TFTP server, with figures.

Each client is a greenlet that boots like a real machine:

1. DHCP DISCOVER / OFFER / REQUEST / ACK with the PXE options of its firmware (60
   ``PXEClient:Arch:NNNNN:UNDI:...``, 93, 94, 97 UUID, 55 as the ROM sends it, 57; iPXE adds
   user class 77 ``iPXE``), retransmitted on the firmware's schedule (PXE spec: 4, 8, 16, 32 s;
   iPXE: 1, 2, 4, 8 s);
2. TFTP read of the boot file with the firmware's options (BIOS ROM: ``tsize`` and ``blksize``
   1432 or 1468; EDK2: ``blksize`` 1468, ``windowsize`` 4, ``tsize``; iPXE: ``blksize`` 1432,
   ``tsize``; plain: RFC 1350, no options);
3. PXELINUX-style config probes (``pxelinux.cfg/<uuid>``, ``01-<mac>``, the hex IP and its
   prefixes down to one digit, ``default``; the first that exists wins) with the second stage's
   options, or for iPXE the script the server names as its boot file;
4. the kernel and the initrd named by that config;
5. the booted OS's own DHCP exchange (no option 97, no ``PXEClient``), then optionally RELEASE.

The simulator talks to the server as a DHCP relay agent (``giaddr``), so replies come back by
unicast and it needs no root. By default it writes a boot root and a massboot config into a
temporary directory, starts ``python -m massboot`` as a subprocess on free loopback ports, runs
the rack, stops the server and reports its CPU time and peak RSS. ``--server HOST`` targets a
server that is already running (massboot, dnsmasq, pybootd...). ``--remote-root`` serves the
root over HTTP from the simulator (counting every GET and byte) and points massboot's
``[tftpd] root`` and ``cache_dir`` at it; ``--netns`` (root) runs massboot and the rack in two
network namespaces joined by a veth pair, with real broadcast DHCP (no ``giaddr``). Datagram
loss (``--loss``) is injected here, in both directions, never in the server.

Usage::

    python bench/simulate.py --clients 50
    python bench/simulate.py --clients 500 --mix bios=100 --json out.json
    python bench/simulate.py --dhcp-only --clients 500 --rounds 10
    python -m bench.simulate --clients 50        # the same, from the repository's root

This is the entry point only: the simulator is the package ``bench.sim`` (importable: its
``run`` takes ``Options`` and returns a ``Summary``). The exit status is 0 when every client
booted, 1 otherwise, 2 on a usage or startup error.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

if not __package__:  # run as a file: bench/ is on sys.path, not its parent (see bench/_as_file.py)
    import _as_file  # noqa: E402, F401

from bench.sim import PHASES, PROFILES, Options, Profile, Stage, Summary, main, run  # noqa: E402

__all__ = ["PHASES", "PROFILES", "Options", "Profile", "Stage", "Summary", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())
