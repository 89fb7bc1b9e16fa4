"""The operator's rights, proven over the whole e2e suite (conftest runs this module last).

The all-in-one's operator runs as the chart's ServiceAccount with the chart's ClusterRole
(DevCloud._operator_credentials), and the API server audits every call it makes. Here: none
of them was denied, and the ClusterRole grants nothing the operator never used."""

from __future__ import annotations

import json

from allinone_kit import Cloud
from stratus_devcloud.allinone import AGENT_SYSTEM_NAMESPACE, OPERATOR_ACCOUNT
from testsupport import audited, granted

USER = f"system:serviceaccount:{AGENT_SYSTEM_NAMESPACE}:{OPERATOR_ACCOUNT}"


def test_the_operator_was_denied_nothing_and_used_every_right_it_has(cloud: Cloud) -> None:
    calls = audited(cloud.dev.plane.state_dir / "logs", USER)
    assert calls, "the operator made no call as its ServiceAccount"
    denied = sorted({call.right for call in calls if call.code == 403})
    # Any other answer (200, 404, 409...) means RBAC let the call through.
    used = {call.right for call in calls if call.code != 403}
    role = json.loads(cloud.kubectl("get", "clusterrole", OPERATOR_ACCOUNT, "-o", "json"))
    unused = sorted(granted(role["rules"]) - used)
    print("operator calls:", ", ".join(sorted(used)))
    assert not denied, f"denied: {denied}"
    assert not unused, f"granted but never used over the e2e suite: {unused}"
