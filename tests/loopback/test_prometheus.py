"""The shipped deploy/ files against the real tools: Debian's ``prometheus`` and ``promtool``.

The main test starts Prometheus on 127.0.0.1 with a scrape config made from
``deploy/prometheus.yml`` (the target replaced by the test's massboot, 1 s intervals, the rule
file ``deploy/alerts.yml``), boots the simulated rack of ``test_metrics.py`` while it scrapes,
then evaluates through ``/api/v1/query`` every PromQL expression of
``deploy/grafana-dashboard.json`` and of the alert rules (as loaded by Prometheus, read back
from ``/api/v1/rules``). Each must succeed and return at least one sample. Alert expressions
are ``value > threshold``: the value alone must return data; the full expression must be
valid. Grafana's variables are replaced by what Grafana would send: ``$__rate_interval`` →
``1m``, ``$__range`` → ``10m``, ``$instance`` → ``.+`` (the "All" value).

The alerts' state is Prometheus' own, read from ``/api/v1/alerts``: for the conditions this
rack creates (stalled clients, a full pool, pool exhaustion, a failing ACL server) the
matching alerts must become active from Prometheus' rule evaluation. An alert without
``for:`` must be ``firing``; one with ``for: 1m`` or more is ``pending`` during this test
(it fires only after its condition held that long, which the test does not wait for), so
what is checked for it is that the condition holds in the rule evaluation and the ``for``
clock started. ``MassbootDown`` must not be active at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import massboot_script, require, require_tool
from tests.loopback import test_cli
from tests.loopback.test_metrics import FILES, HOST, Rack, boot_rack, wait_for
from tests.loopback.test_workers import pids, server  # noqa: F401  (server: a fixture)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "10m", "$instance": ".+"}
THRESHOLD = re.compile(r"(?s)(?P<value>.*\S)\s*(?:==|!=|>=|<=|>|<)\s*[-+]?[0-9.]+(?:e[-+]?\d+)?")
#: alerts the simulated rack must set off (stall_after = 1 s, a 3-address pool, a dead ACL answer)
FIRING = {"MassbootClientsStalled", "MassbootLeasePoolNearlyExhausted", "MassbootLeasePoolExhausted",
          "MassbootAclServerFailing"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def dashboard_expressions() -> list[tuple[str, str]]:
    """``(panel title, expr)`` of every query target of the dashboard."""
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def rfc3339(stamp: str) -> float:
    """Prometheus' ``activeAt`` (nanoseconds, ``Z``) as a Unix time."""
    match = re.fullmatch(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp)
    assert match is not None, stamp
    base, fraction, zone = match.groups()
    when = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return when.timestamp() + float("0." + (fraction or "0"))


def grafana_to_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def import_yaml() -> Any:
    """PyYAML (requirements-test.txt): skipped without it outside CI, a failure under CI."""
    try:
        import yaml
    except ImportError:
        require(False, "PyYAML is not installed")
    return yaml


# -- promtool ------------------------------------------------------------------------------

def test_promtool_checks_the_shipped_config_and_rules() -> None:
    require_tool("promtool")
    config = run("promtool", "check", "config", str(DEPLOY / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr
    rules = run("promtool", "check", "rules", str(DEPLOY / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


# -- the other deploy files ------------------------------------------------------------------

def test_dashboard_and_provisioning_agree() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dashboard["uid"] == "massboot" and dashboard["title"] == "massboot"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("phase", "leases", "transfers/s", "bytes/s", "retransmit", "acl", "cache hit",
                   "saturation"):
        assert wanted in titles, wanted
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "instance"}

    yaml = import_yaml()
    datasource = yaml.safe_load((DEPLOY / "grafana-datasource.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == datasource["uid"]
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert datasource["jsonData"]["timeInterval"] == scrape["scrape_configs"][0]["scrape_interval"]
    provider = yaml.safe_load((DEPLOY / "grafana-dashboards.yml").read_text())["providers"][0]
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    assert set(compose["services"]) == {"massboot", "prometheus", "grafana"}
    assert all(s["network_mode"] == "host" for s in compose["services"].values())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]}
    assert mounts[provider["options"]["path"] + "/massboot.json"] == "./grafana-dashboard.json"
    assert "./grafana-datasource.yml" in mounts.values() and "./grafana-dashboards.yml" in mounts.values()
    for name in ("prometheus.yml", "alerts.yml"):
        assert f"./{name}" in {v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]}
    alerts = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    for rule in alerts["groups"][0]["rules"]:
        assert THRESHOLD.fullmatch(rule["expr"].strip()), rule["alert"]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    require_tool("systemd-analyze")
    text = (DEPLOY / "massboot.service").read_text()
    assert "ExecStart=/usr/local/bin/massboot -c /etc/massboot/massboot.ini" in text
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE\n" in text
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" in text
    for line in ("Restart=on-failure", "StateDirectory=massboot", "CacheDirectory=massboot",
                 "DynamicUser=yes"):
        assert line + "\n" in text
    # the binary is not installed here: check the unit with a stand-in executable
    unit = tmp_path / "massboot.service"
    unit.write_text(text.replace("/usr/local/bin/massboot", shutil.which("true") or "/bin/true"))
    result = run("systemd-analyze", "verify", str(unit))
    assert result.returncode == 0, result.stdout + result.stderr


# -- a real Prometheus scraping a boot ---------------------------------------------------------

class Prometheus:
    """Debian's prometheus on 127.0.0.1, a free port and a temporary storage directory."""

    def __init__(self, tmp_path: Path, target_port: int) -> None:
        text = (DEPLOY / "prometheus.yml").read_text()
        text, n = re.subn(r"127\.0\.0\.1:9469", f"127.0.0.1:{target_port}", text)
        assert n == 1, "deploy/prometheus.yml: the massboot target 127.0.0.1:9469 is not there"
        text, n = re.subn(r"(?m)^(\s*)(scrape_interval|evaluation_interval|scrape_timeout):\s*\S+",
                          lambda m: f"{m.group(1)}{m.group(2)}: 1s", text)
        assert n >= 3
        text, n = re.subn(r"(?m)^(\s*-\s*)alerts\.yml\s*$", lambda m: f"{m.group(1)}{DEPLOY / 'alerts.yml'}",
                          text)
        assert n == 1, "deploy/prometheus.yml: rule_files does not name alerts.yml"
        self.config = tmp_path / "prometheus.yml"
        self.config.write_text(text)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = tmp_path / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ["prometheus", f"--config.file={self.config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                 f"--web.listen-address={HOST}:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        assert self.process.poll() is None, "prometheus exited:\n" + self.log.read_text()
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def query(self, expr: str) -> dict[str, Any]:
        response = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        return response.json()

    def scalar(self, expr: str) -> float:
        result = self.query(expr)["data"]["result"]
        return float(result[0]["value"][1]) if result else float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


@pytest.fixture
def prometheus_rack(tmp_path: Path) -> Iterator[tuple[Rack, Prometheus]]:
    require_tool("prometheus")
    rack = Rack(tmp_path, stall_after=1.0, http=True)
    prom: Prometheus | None = None
    try:
        prom = Prometheus(tmp_path, rack.metrics.port)
        yield rack, prom
    finally:
        if prom is not None:
            prom.stop()
        rack.close()


def test_prometheus_evaluates_every_dashboard_and_alert_expression(prometheus_rack) -> None:
    rack, prom = prometheus_rack
    wait_for(prom.ready, timeout=60, what="prometheus ready")
    wait_for(lambda: prom.scalar('up{job="massboot"}') == 1, timeout=30, what="massboot scraped")

    boot_rack(rack)
    # the HTTP panels: a file from the cache and a missing one, over HTTP (-H)
    assert rack.services.http is not None
    base = f"http://{HOST}:{rack.services.http.port}/"
    assert requests.get(base + "vmlinuz", timeout=10).content == FILES["vmlinuz"]
    assert requests.get(base + "missing", timeout=10).status_code == 404
    samples = 'count_over_time(massboot_build_info{job="massboot"}[10m])'
    after_boot = prom.scalar(samples)
    # three more scrapes, stalled clients seen, and the rules evaluated on them
    wait_for(lambda: prom.scalar(samples) >= after_boot + 3, timeout=30, what="3 scrapes after the boot")
    wait_for(lambda: prom.scalar('massboot_boot_clients{phase="done"}') == 1, timeout=30, what="done")
    wait_for(lambda: prom.scalar('massboot_boot_clients{phase="stalled"}') == 4, timeout=30, what="stalled")

    failures = []

    def evaluate(origin: str, expr: str, need_data: bool = True) -> list[Any]:
        answer = prom.query(expr)
        if answer.get("status") != "success":
            failures.append(f"{origin}: {expr}: {answer.get('error')}")
            return []
        result = answer["data"]["result"]
        if need_data and not result:
            failures.append(f"{origin}: {expr}: no data")
        return result

    expressions = dashboard_expressions()
    assert len(expressions) >= 20
    for title, expr in expressions:
        evaluate(f"dashboard panel {title!r}", grafana_to_promql(expr))

    groups = requests.get(prom.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = {rule["name"]: rule["query"] for group in groups for rule in group["rules"]}
    shipped = set(re.findall(r"(?m)^\s*- alert:\s*(\w+)", (DEPLOY / "alerts.yml").read_text()))
    assert set(rules) == shipped and len(shipped) >= 6
    for name, query in rules.items():
        match = THRESHOLD.fullmatch(query.strip())
        assert match is not None, f"{name}: not 'value <op> threshold': {query}"
        evaluate(f"alert {name} (value)", match.group("value"))
        evaluate(f"alert {name}", query, need_data=False)
    assert not failures, "\n".join(failures)

    # the alerts' real state, from Prometheus' rule evaluation
    holds = {rule["name"]: rule.get("duration", 0) for group in groups for rule in group["rules"]}

    def states() -> dict[str, tuple[str, float]]:
        """alert name → (state, seconds since it became active), one label set each."""
        alerts = requests.get(prom.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        now = time.time()
        return {a["labels"]["alertname"]: (a["state"], now - rfc3339(a["activeAt"])) for a in alerts}

    wait_for(lambda: FIRING <= set(states()), timeout=30, what=f"alerts {sorted(FIRING)} active")
    active = states()
    for name in FIRING:
        state, age = active[name]
        if holds[name] == 0:
            assert state == "firing", f"{name} (no for:) is {state}"
        elif age < holds[name]:      # its for: has not elapsed: Prometheus must hold it back
            assert state == "pending", f"{name} (for: {holds[name]} s) is {state} after {age:.0f} s"
        elif age > holds[name] + 5:  # long enough for a few 1 s rule evaluations
            assert state == "firing", f"{name} (for: {holds[name]} s) is {state} after {age:.0f} s"
    assert "MassbootDown" not in active
    from massboot.dhcp import packet

    if packet.CODEC == "compiled":      # built (CI=true requires it): nothing to say about it
        assert "MassbootCompiledCodeMissing" not in active

    # the numbers Prometheus holds are the exporter's
    assert prom.scalar("massboot_tftp_transfers_completed_total") == rack.value(
        "massboot_tftp_transfers_completed_total")
    assert prom.scalar('massboot_dhcp_replies_sent_total{type="ack"}') == 3


def test_worker_alerts_fire_for_a_dying_worker(server, tmp_path: Path) -> None:  # noqa: F811
    """``[tftpd] processes = 2`` scraped by the real Prometheus: a worker killed again each time
    it comes back (its restart delay doubles) sets off MassbootTftpWorkerRestarting (no for:,
    firing) and MassbootTftpWorkerDown (for: 1m, pending) for that worker only, and the new
    dashboard panels' expressions have data for both workers."""
    require_tool("prometheus")
    mb, _dhcp, _tftp, metrics, _payload = server
    prom = Prometheus(tmp_path, metrics)
    try:
        wait_for(prom.ready, timeout=60, what="prometheus ready")
        wait_for(lambda: prom.scalar('count(massboot_tftp_worker_up{job="massboot"} == 1)') == 2,
                 timeout=30, what="both workers scraped up")
        killed: set[int] = set()

        def alerts() -> dict[str, dict[str, str]]:
            found = requests.get(prom.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            return {a["labels"]["alertname"]: {**a["labels"], "state": a["state"]} for a in found
                    if a["labels"]["alertname"].startswith("MassbootTftpWorker")}

        def kill_and_look() -> bool:
            pid = pids(mb).get(1)
            if pid is not None and pid not in killed:
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)
            active = alerts()
            time.sleep(0.2)
            return {"MassbootTftpWorkerRestarting", "MassbootTftpWorkerDown"} <= set(active)

        wait_for(kill_and_look, timeout=45, what="the worker alerts active")
        active = alerts()
        assert active["MassbootTftpWorkerRestarting"]["worker"] == "1"
        assert active["MassbootTftpWorkerRestarting"]["state"] == "firing"
        assert active["MassbootTftpWorkerDown"]["worker"] == "1"
        assert active["MassbootTftpWorkerDown"]["state"] == "pending"     # for: 1m not elapsed
        for title, expr in dashboard_expressions():
            if "TFTP worker" in title:
                result = prom.query(grafana_to_promql(expr))["data"]["result"]
                assert {r["metric"]["worker"] for r in result} == {"0", "1"}, (title, result)
        assert prom.scalar('massboot_tftp_worker_restarts_total{worker="0"}') == 0
    finally:
        prom.stop()
        wait_for(lambda: pids(mb).get(1) not in killed, timeout=60,
                 what="worker 1 back")


def test_an_install_without_its_compiled_modules_sets_off_its_alert(tmp_path: Path) -> None:
    """README, Monitoring: massboot run as if installed without gcc and python3-dev (its DHCP
    codec's module hidden, as tests/loopback/test_cli.py does) says ``python`` in
    ``massboot_dhcp_codec``, and the real Prometheus, with ``deploy/alerts.yml``, holds
    MassbootCompiledCodeMissing for that instance (pending: its for: 5m has not elapsed). The
    rack of the test above, its modules built, does not set it off."""
    require_tool("prometheus")
    dhcp, tftp = test_cli.free_port(), test_cli.free_port()
    metrics = test_cli.free_port(socket.SOCK_STREAM)
    path = test_cli.write(tmp_path, test_cli.GOOD.format(dhcp=dhcp, tftp=tftp)
                          + f"[metrics]\naddress = {HOST}\nport = {metrics}\n")
    mb = test_cli.Running("-c", massboot_script(test_cli.CODEC_NOT_BUILT), "-c", path, prefix=())
    prom: Prometheus | None = None
    try:
        mb.wait_for("dhcp listening")
        assert "codec=python" in mb.log
        prom = Prometheus(tmp_path, metrics)
        wait_for(prom.ready, timeout=60, what="prometheus ready")
        wait_for(lambda: prom.scalar('massboot_dhcp_codec{codec="python"}') == 1, timeout=30,
                 what="the python codec scraped")
        assert prom.scalar('massboot_dhcp_codec{codec="compiled"}') == 0

        def missing() -> dict[str, Any] | None:
            alerts = requests.get(prom.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
            return next((a for a in alerts if a["labels"]["alertname"] == "MassbootCompiledCodeMissing"),
                        None)

        wait_for(lambda: missing() is not None, timeout=30, what="MassbootCompiledCodeMissing active")
        alert = missing()
        assert alert is not None and alert["state"] == "pending", alert
        assert alert["labels"]["instance"] == f"{HOST}:{metrics}"
        assert alert["labels"]["severity"] == "warning"
    finally:
        if prom is not None:
            prom.stop()
        mb.proc.send_signal(signal.SIGTERM)
        assert mb.exit_code() == 0, mb.log
