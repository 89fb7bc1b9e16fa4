"""SecurityGroups as plain data (controllers/security_group.py): which NICs a group applies
to, its rules as nodes enforce them, remote groups as their members' addresses."""

from __future__ import annotations

import uuid
from typing import Any

from stratus_api.security_group_wire import Direction, Protocol
from stratus_api.v1alpha1 import Instance, SecurityGroup
from stratus_api.v1alpha1.securitygroup import SecurityGroupStatus
from stratus_operator.controllers import security_group as plan


def meta(name: str, namespace: str = "ns") -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()), "generation": 3}


def group(name: str, *rules: dict[str, Any]) -> SecurityGroup:
    return SecurityGroup.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "SecurityGroup", "metadata": meta(name),
        "spec": {"rules": list(rules)},
    })  # fmt: skip


def instance(
    name: str, node: str | None, *nics: tuple[str, str | None, list[str] | None]
) -> Instance:
    return Instance.model_validate({
        "apiVersion": "stratus.io/v1alpha1", "kind": "Instance", "metadata": meta(name),
        "spec": {"cpu": 1, "memory": "128Mi", "boot": {"image": "img"},
                 "networks": [{"name": n, **({"securityGroups": g} if g else {})}
                              for n, _, g in nics]},
        "status": {"node": node,
                   "interfaces": [{"network": n, "ip": ip} for n, ip, _ in nics if ip]},
    })  # fmt: skip


def test_a_nic_naming_no_group_is_in_default_and_its_node_names_it_with_the_namespace() -> None:
    web = instance("web", "n1", ("net", "10.0.0.5", None), ("db", "10.1.0.5", ["db", "ops"]))
    assert plan.nic_group_keys(web, web.spec.networks[0]) == ["ns/default"]
    assert plan.nic_group_keys(web, web.spec.networks[1]) == ["ns/db", "ns/ops"]


def test_ports_and_members_of_a_group() -> None:
    a = instance("a", "n1", ("net", "10.0.0.5", None))
    b = instance("b", "n2", ("net", "10.0.0.6", ["web"]), ("back", None, None))
    c = instance("c", None, ("net", None, None))  # not placed, no address yet
    ports = plan.ports_in("default", [a, b, c])
    assert [(p.instance, p.network, p.address, p.node) for p in ports] == [
        ("a", "net", "10.0.0.5", "n1"), ("b", "back", None, "n2"), ("c", "net", None, None),
    ]  # fmt: skip
    addresses = plan.member_addresses()
    addresses.add(tuple(ports))
    assert addresses.items() == ["10.0.0.5/32"]
    assert [p.instance for p in plan.ports_in("web", [a, b, c])] == ["b"]


def test_rules_resolve_ports_and_remote_groups() -> None:
    web = group(
        "web",
        {"direction": "ingress", "protocol": "tcp", "port": 22},
        {"direction": "ingress", "protocol": "udp", "port": 5000, "endPort": 5100,
         "remoteCIDR": "192.168.0.0/16"},
        {"direction": "ingress", "protocol": "icmp", "remoteGroup": {"name": "ops"}},
        {"direction": "egress"},
    )  # fmt: skip
    spec = plan.node_spec(web, lambda name: {"ops": ["10.0.0.9/32"]}.get(name, []))
    assert spec.key == "ns/web"
    ssh, udp, icmp, out = spec.rules
    assert (ssh.protocol, ssh.port_min, ssh.port_max, ssh.remotes) == (
        Protocol.TCP,
        22,
        22,
        ["0.0.0.0/0"],
    )
    assert (udp.port_min, udp.port_max, udp.remotes) == (5000, 5100, ["192.168.0.0/16"])
    assert (icmp.protocol, icmp.port_min, icmp.remotes) == (Protocol.ICMP, None, ["10.0.0.9/32"])
    assert (out.direction, out.protocol, out.remotes) == (Direction.EGRESS, Protocol.ANY,
                                                          ["0.0.0.0/0"])  # fmt: skip


def test_a_remote_group_of_another_namespace_is_refused_naming_the_field_and_opens_nothing() -> (
    None
):
    bad = group(
        "web",
        {"direction": "egress"},
        {"direction": "ingress", "remoteGroup": {"name": "db", "namespace": "other"}},
    )
    problem = plan.remote_problem(bad)
    assert problem is not None and not problem.waiting
    assert str(problem).startswith("spec.rules[1].remoteGroup.namespace: group other/db")
    spec = plan.node_spec(bad, lambda _: ["10.9.9.9/32"])
    assert spec.rules[1].remotes == []
    same = group("web", {"direction": "ingress", "remoteGroup": {"name": "db", "namespace": "ns"}})
    assert plan.remote_problem(same) is None


def test_status_counts_ports_and_nodes_and_says_which_nodes_were_not_told() -> None:
    a, b = instance("a", "n1", ("net", "10.0.0.5", None)), instance("b", "n1", ("net", None, None))
    count = plan.port_count()
    for ports in (plan.ports_in("default", [a]), plan.ports_in("default", [b])):
        count.add(tuple(ports))
    counted = plan.census(count)
    assert counted == plan.Census(ports=2, nodes=("n1",))
    count.remove(tuple(plan.ports_in("default", [a])))
    count.remove(tuple(plan.ports_in("default", [b])))
    assert plan.census(count) == plan.Census(ports=0, nodes=())
    done = plan.enforced(counted, [])(SecurityGroupStatus(), 3)
    assert (done.port_count, done.node_count, done.observed_generation) == (2, 1, 3)
    ready = {c.type: c for c in done.conditions}["Ready"]
    assert (ready.status, ready.reason) == ("True", "Enforced")
    waiting = plan.enforced(counted, ["n1"])(SecurityGroupStatus(), 3)
    conditions = {c.type: c.status for c in waiting.conditions}
    assert conditions == {"Ready": "False", "Reconciling": "True", "Stalled": "False"}


def test_the_default_group_lets_its_members_in_and_everything_out() -> None:
    spec = plan.default_spec()
    ingress, egress = spec.rules
    assert ingress.remote_group is not None and ingress.remote_group.name == "default"
    assert egress.direction == "egress" and egress.remote_cidr is None
