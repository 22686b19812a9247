"""Two TFTP worker processes and one mirror: real curl clients across a veth pair, one GET.

massboot runs TFTP only with ``[tftpd] processes = 2`` and ``root = http://10.79.0.1:8081/``
(``python -m http.server`` in the server namespace is the mirror); eight curl clients in the
client namespace, from four source addresses (10.79.0.2 to .5: both workers, steered by
source address, README "TFTP worker processes"), fetch one 8 MiB file at once. Every copy must
be right, the mirror's log must show exactly one GET for it (one download for both processes:
the flight lock in the shared cache directory), and /metrics (the parent's, summed) must count
the eight transfers, each worker's share non-zero.

Root only (``ip netns``); under ``CI=true`` it must run.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_root, require_tool
from tests.netns.netns import Massboot, namespace_pair, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

SERVER_IP = "10.79.0.1"
CLIENT_IPS = ("10.79.0.2", "10.79.0.3", "10.79.0.4", "10.79.0.5")
MIRROR_PORT = 8081
METRICS_PORT = 9179
CONFIG = f"""\
[logger]
level = info
[massboot]
state_dir = state
[tftpd]
address = {SERVER_IP}
port = 69
root = http://{SERVER_IP}:{MIRROR_PORT}/
processes = 2
[metrics]
address = 127.0.0.1
port = {METRICS_PORT}
"""
GET = re.compile(r'"GET (?P<path>\S+) HTTP/1\.[01]" (?P<status>\d{3})')


def test_one_get_for_two_workers_and_real_clients(tmp_path: Path) -> None:
    require_root()
    require_tool("ip", "curl")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    body = os.urandom(8 << 20)
    (mirror / "vmlinuz").write_bytes(body)
    digest = hashlib.sha256(body).hexdigest()
    config = tmp_path / "massboot.ini"
    config.write_text(CONFIG)
    mirror_log = tmp_path / "mirror.log"
    with namespace_pair("tftpwk", server_addr=f"{SERVER_IP}/24", client_addr=f"{CLIENT_IPS[0]}/24",
                        server_if="mws0", client_if="mwc0") as pair:
        for ip in CLIENT_IPS[1:]:
            pair.run(pair.client, ["ip", "addr", "add", f"{ip}/24", "dev", "mwc0"], timeout=10)
        pair.run(pair.server, ["ip", "link", "set", "lo", "up"], timeout=10)
        with open(mirror_log, "wb") as log:
            http = pair.popen(pair.server, [sys.executable, "-u", "-m", "http.server", str(MIRROR_PORT),
                                            "--bind", SERVER_IP, "--directory", str(mirror)],
                              stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: "Serving HTTP" in mirror_log.read_text(errors="replace"), 20,
                       "the mirror listening")
            server = Massboot(pair, config, tmp_path, args=("-t",), ready="tftp listening on").start(30)
            wait_until(lambda: server.log_text().count("tftp listening on") >= 3, 30,
                       "both TFTP workers listening")
            try:
                outs = [tmp_path / f"out-{n}.bin" for n in range(8)]
                procs = [pair.popen(pair.client, ["curl", "-sS", "--tftp-blksize", "1428", "--interface",
                                                  CLIENT_IPS[n % len(CLIENT_IPS)], "-o", str(out),
                                                  f"tftp://{SERVER_IP}/vmlinuz"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                         for n, out in enumerate(outs)]
                for proc in procs:
                    said, _ = proc.communicate(timeout=120)
                    assert proc.returncode == 0, \
                        f"curl exited {proc.returncode}: {said!r}\n{server.log_text()}"
                for out in outs:
                    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
                gets = [m["path"] for m in GET.finditer(mirror_log.read_text(errors="replace"))]
                assert gets == ["/vmlinuz"], f"{gets}\n{server.log_text()}"

                def scrape() -> str:
                    return pair.run(pair.server, ["curl", "-sS", f"http://127.0.0.1:{METRICS_PORT}/metrics"],
                                    timeout=10).stdout

                completed = re.compile(r"^massboot_tftp_transfers_completed_total 8\.0$", re.M)
                wait_until(lambda: completed.search(scrape()), 10, "eight transfers in the parent's /metrics")
                text = scrape()
                for worker in (0, 1):
                    m = re.search(rf'^massboot_tftp_worker_events_total{{worker="{worker}"}} (\S+)$',
                                  text, re.M)
                    assert m and float(m.group(1)) >= 2, text    # tftp.start + tftp.done at least
            finally:
                status = server.stop()
            assert status == 0, server.log_text()
        finally:
            http.terminate()
            http.wait(timeout=10)
