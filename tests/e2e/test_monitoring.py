"""Monitoring end to end: the all-in-one's real Prometheus scrapes the operator and the agent,
a booted guest's series carry its Instance's labels, the chart's alert rules load, and every
query of the chart's Grafana dashboard parses and names only metrics that exist."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from typing import Any

from allinone_kit import BOOT_TIMEOUT, Cloud, small_instance
from testsupport import REPO_ROOT, promtool_check_metrics, scrape, wait_until

DASHBOARD = REPO_ROOT / "charts" / "stratus" / "files" / "dashboard.json"


def query(cloud: Cloud, expr: str) -> list[dict[str, Any]]:
    """An instant query's result; fails on a query Prometheus refuses."""
    url = f"{cloud.dev.prometheus.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=30) as reply:
        answer = json.load(reply)
    assert answer["status"] == "success", (expr, answer)
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def api(cloud: Cloud, path: str) -> Any:
    with urllib.request.urlopen(f"{cloud.dev.prometheus.url}{path}", timeout=30) as reply:
        return json.load(reply)["data"]


def test_prometheus_sees_the_guest_with_its_instance_labels(cloud: Cloud) -> None:
    cloud.kubectl("apply", "-f", str(REPO_ROOT / "examples"))
    cloud.kubectl("apply", "-f", "-", input=json.dumps(small_instance("watched")))
    cloud.kubectl("wait", "--for=condition=Ready", "instance/watched",
                  f"--timeout={BOOT_TIMEOUT:.0f}s")  # fmt: skip
    uid = cloud.instance("watched")["metadata"]["uid"]
    try:
        guest = f'{{namespace="default", name="watched", uid="{uid}"}}'
        # The agent's series: the guest's CPU and its boot disk's reads, by its labels.
        cpu = wait_until("the guest's CPU time in Prometheus", lambda: query(
            cloud, f"stratus_guest_vcpu_seconds_total{guest} > 0"), timeout=120)  # fmt: skip
        assert cpu[0]["metric"]["job"] == "stratus-agent"
        assert cpu[0]["metric"]["hypervisor"] == "local"
        assert wait_until("disk reads", lambda: query(
            cloud, f"stratus_guest_disk_read_bytes_total{guest} > 0"), timeout=60)  # fmt: skip
        assert query(cloud, f'stratus_guest_state{guest[:-1]}, state="running"}} == 1')
        # The operator's: the Instance Ready, its node's figures, its reconciles.
        ready = wait_until("the Instance Ready in the operator's series", lambda: query(
            cloud, 'stratus_object_ready{kind="Instance", namespace="default", '
            'name="watched"} == 1'), timeout=60)  # fmt: skip
        assert ready[0]["metric"]["phase"] == "Running"
        assert query(cloud, 'stratus_hypervisor_allocated_vcpus{hypervisor="local"} >= 1')
        assert query(cloud, 'up{job="stratus-operator"} == 1')
        assert query(cloud, "stratus_operator_leader == 1")
    finally:
        cloud.kubectl("delete", "instance", "watched", "--timeout=120s")
    # Gone from the node: its series end with it.
    wait_until("the guest's series gone", lambda: not query(
        cloud, f"stratus_guest_state{guest}"), timeout=60)  # fmt: skip


def test_both_endpoints_pass_promtool_and_refuse_strangers(cloud: Cloud) -> None:
    prometheus = cloud.dev.prometheus
    ca = cloud.dev.plane.pki_dir / "ca.crt"
    operator = f"https://127.0.0.1:{cloud.dev.operator_metrics_port}/metrics"
    agent = f"https://127.0.0.1:{cloud.dev.port_of(cloud.dev.node_slot(1))}/metrics"
    for url, token in ((operator, prometheus.operator_token_file.read_text().strip()),
                       (agent, prometheus.agent_token_file.read_text().strip())):  # fmt: skip
        status, text = scrape(url, token, ca)
        assert status == 200, text
        assert promtool_check_metrics(text) == "", url
        assert scrape(url, None, ca)[0] == 401
    # The agents' metrics token opens /metrics and nothing else.
    agent_api = agent.replace("/metrics", "/v1/guests")
    assert scrape(agent_api, prometheus.agent_token_file.read_text().strip(), ca)[0] == 401


def test_the_alert_rules_load_and_the_dashboard_queries_what_exists(cloud: Cloud) -> None:
    groups = api(cloud, "/api/v1/rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} >= {"StratusOperatorDown", "StratusHypervisorDown"}
    assert all(r["health"] == "ok" for r in rules), [r for r in rules if r["health"] != "ok"]
    # The cloud's own parts are healthy: nothing about them fires.
    own = {"StratusOperatorDown", "StratusOperatorNoLeader", "StratusHypervisorDown",
           "StratusAgentUnreachable"}  # fmt: skip
    assert [r["name"] for r in rules if r["name"] in own and r["state"] == "firing"] == []

    known = set(api(cloud, "/api/v1/label/__name__/values"))
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"]
              if isinstance(v.get("query"), dict)]  # fmt: skip
    assert len(exprs) > 30
    for expr in exprs:
        concrete = re.sub(r"\$\w+", ".*", expr)
        if concrete.startswith("label_values("):  # Grafana's, not PromQL: its metric
            concrete = concrete[len("label_values(") :].rsplit(",", 1)[0]
        query(cloud, concrete)
        for name in set(re.findall(r"\b(stratus_[a-z0-9_]+|up)\b", concrete)):
            assert name in known, f"{name} in {expr!r} is no metric Prometheus has"
