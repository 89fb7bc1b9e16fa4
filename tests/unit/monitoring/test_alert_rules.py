"""The chart's alert rules, with Prometheus' own tools: they load, every alert the operator
needs is there with a summary and a description, and each fires when it should
(alerts_test.yaml, `promtool test rules`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from testsupport import REPO_ROOT

RULES = REPO_ROOT / "charts" / "stratus" / "files" / "alerts.yaml"
TESTS = Path(__file__).with_name("alerts_test.yaml")
NEEDED = {
    "StratusOperatorDown", "StratusHypervisorDown", "StratusAgentUnreachable",
    "StratusInstanceNotReady", "StratusImageImportFailing", "StratusVolumeError",
    "StratusReconcileErrorsHigh", "StratusNodeCapacityNearlyFull",
}  # fmt: skip


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, check=False)


def test_the_rules_load_and_every_alert_says_what_to_do() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= NEEDED
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert len(rule["annotations"]["summary"]) > 20, rule["alert"]
        assert len(rule["annotations"]["description"]) > 100, rule["alert"]


def test_each_alert_fires_when_it_should_and_only_then() -> None:
    tested = promtool("test", "rules", str(TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = yaml.safe_load(TESTS.read_text())["tests"]
    covered = {a["alertname"] for c in cases for a in c["alert_rule_test"] if a["exp_alerts"]}
    assert covered == NEEDED | {"StratusOperatorNoLeader"}
