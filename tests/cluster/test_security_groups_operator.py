"""SecurityGroups through the real API server and operator, on fake agents: a node with a
NIC in a group is told its rules with remote groups as their members' addresses, and told
again when a rule or a member changes; status lists the NICs; the namespace's group
`default` is made for NICs that name none; a rule naming another namespace's group is
refused naming the field; a group in use is deleted only once no NIC is in it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from testsupport import Cluster, apply, basics, condition, instance, wait_until

if TYPE_CHECKING:
    from conftest import FakeAgent, ImageServer, Operator


def security_group(name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "SecurityGroup",
            "metadata": {"name": name}, "spec": {"rules": list(rules)}}  # fmt: skip


def group_json(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.get_json("securitygroup", name, "-n", namespace)
    return found


def told(node: FakeAgent, uid: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = node.request("GET", f"/v1/security-groups/{uid}")
    except Exception:  # 404: not told (any more)
        return None
    return found


def test_groups_reach_the_nodes_of_their_nics_with_members_resolved(
    cluster: Cluster, namespace: str, fake_agent: FakeAgent, operator: Operator,
    image_server: ImageServer,
) -> None:  # fmt: skip
    on_node = {"nodeSelector": {"stratus.io/test": fake_agent.name}}
    apply(cluster, namespace, *basics(image_server.url()),
          security_group("web", {"direction": "ingress", "protocol": "tcp", "port": 80},
                         {"direction": "ingress", "protocol": "tcp", "port": 22,
                          "remoteGroup": {"name": "ops"}}),
          instance("web-1", networks=[{"name": "net", "securityGroups": ["web"]}], **on_node),
          instance("bastion", networks=[{"name": "net", "securityGroups": ["ops"]}],
                   **on_node),
          instance("plain", **on_node))  # fmt: skip
    wait_until("web's status counts its NIC", lambda: (
        (s := group_json(cluster, namespace, "web").get("status", {})).get("portCount"),
        s.get("nodeCount")) == (1, 1), timeout=90)  # fmt: skip
    web = group_json(cluster, namespace, "web")
    assert (condition(web["status"], "Ready") or {}).get("reason") == "Enforced"
    bastion_ip = wait_until("bastion's address", lambda: (cluster.get_json(
        "instance", "bastion", "-n", namespace).get("status", {}).get("interfaces") or [{}])[
        0].get("ip"), timeout=60)  # fmt: skip
    wait_until("the node told web's rules with ops' members", lambda: (
        (spec := told(fake_agent, web["metadata"]["uid"])) is not None
        and spec["rules"][1]["remotes"] == [f"{bastion_ip}/32"]), timeout=30)  # fmt: skip
    spec = told(fake_agent, web["metadata"]["uid"])
    assert spec is not None and spec["rules"][0]["remotes"] == ["0.0.0.0/0"]
    assert (spec["rules"][0]["portMin"], spec["rules"][0]["portMax"]) == (80, 80)

    # A NIC naming no group is in `default`, which the operator made.
    wait_until("default made, with plain's NIC", lambda: group_json(
        cluster, namespace, "default").get("status", {}).get("portCount") == 1,
        timeout=60)  # fmt: skip
    default = group_json(cluster, namespace, "default")
    assert [r["direction"] for r in default["spec"]["rules"]] == ["ingress", "egress"]

    # A rule change reaches the node.
    cluster.kubectl("patch", "securitygroup", "web", "-n", namespace, "--type=json", "-p",
                    '[{"op": "add", "path": "/spec/rules/-", "value": '
                    '{"direction": "ingress", "protocol": "icmp"}}]')  # fmt: skip
    wait_until("the node told the new rule", lambda: len(
        (told(fake_agent, web["metadata"]["uid"]) or {}).get("rules", [])) == 3,
        timeout=30)  # fmt: skip

    # A rule naming another namespace's group: Stalled, naming the field.
    apply(
        cluster,
        namespace,
        security_group(
            "nosy", {"direction": "ingress", "remoteGroup": {"name": "db", "namespace": "other"}}
        ),
    )
    wait_until("nosy Stalled", lambda: (condition(group_json(
        cluster, namespace, "nosy").get("status", {}), "Stalled") or {}).get("status") == "True",
        timeout=60)  # fmt: skip
    stalled = condition(group_json(cluster, namespace, "nosy")["status"], "Stalled") or {}
    assert stalled["reason"] == "GroupInOtherNamespace"
    assert stalled["message"].startswith("spec.rules[0].remoteGroup.namespace:")

    # In use: the delete waits, saying why; once the NIC is gone, the node forgets it.
    cluster.kubectl("delete", "securitygroup", "web", "-n", namespace, "--wait=false")
    wait_until("web says it is in use", lambda: (condition(group_json(
        cluster, namespace, "web")["status"], "Ready") or {}).get(
        "reason") == "SecurityGroupInUse", timeout=60)  # fmt: skip
    cluster.kubectl("delete", "instance", "web-1", "-n", namespace, "--timeout=60s")
    wait_until("web gone", lambda: "securitygroup.stratus.io/web" not in cluster.kubectl(
        "get", "securitygroups", "-n", namespace, "-o", "name"
    ).stdout.split(), timeout=60)  # fmt: skip
    assert told(fake_agent, web["metadata"]["uid"]) is None
