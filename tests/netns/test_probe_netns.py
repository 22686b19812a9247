"""The ICMP probe (README, "Lease lifecycle") across a veth pair: an address that answers, one
that is silent, with the unprivileged datagram socket, the raw socket, and neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import require_root, require_tool
from tests.netns.netns import REPO, namespace_pair

SCRIPT = """
import json, sys, time
from gevent import monkey; monkey.patch_all()
import socket
from massboot.dhcp.probe import IcmpProber
prober = IcmpProber()
out = {}
for ip in sys.argv[1:]:
    started = time.monotonic()
    out[ip] = [prober(ip, 0.5), round(time.monotonic() - started, 2)]
out["kind"] = {socket.SOCK_DGRAM: "dgram", socket.SOCK_RAW: "raw", None: None}[prober._kind]
print(json.dumps(out))
"""


@pytest.mark.parametrize("mode", ["dgram", "raw", "none"])
def test_probe_across_a_veth_pair(mode):
    require_root()
    require_tool("ip", "setpriv")
    with namespace_pair(f"probe{mode}", server_addr="10.77.0.1/24", client_addr="10.77.0.2/24") as pair:
        # the datagram socket needs the group in ping_group_range (per namespace); "1 0" allows nobody
        group_range = "0 2147483647" if mode == "dgram" else "1 0"
        subprocess.run(["ip", "netns", "exec", pair.server, "sysctl", "-qw",
                        f"net.ipv4.ping_group_range={group_range}"], check=True)
        argv = [sys.executable, "-c", SCRIPT, "10.77.0.2", "10.77.0.99"]
        if mode == "none":      # root without CAP_NET_RAW: no raw socket either
            argv = ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", *argv]
        result = pair.run(pair.server, argv, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout.strip().splitlines()[-1])
        if mode == "none":
            assert out["10.77.0.2"][0] is None and out["kind"] is None
            assert "ICMP probes unavailable" in result.stderr
            return
        assert out["kind"] == mode
        assert out["10.77.0.2"][0] is True and out["10.77.0.2"][1] < 0.5   # the client answers
        assert out["10.77.0.99"][0] is False                               # nobody there
