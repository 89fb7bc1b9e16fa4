"""Networks through the real API server and operator: every Network holds a segment of its
own (VNIs allocated, never hashed; a VLAN id once per physical network), a Network whose
segment is taken says so and its Instances wait, and deleting a Network waits while
Instances use it."""

from __future__ import annotations

import json
import urllib.error
from typing import TYPE_CHECKING, Any

from testsupport import Cluster, apply, basics, condition, instance, statuses, wait_until

if TYPE_CHECKING:
    from conftest import FakeAgent, ImageServer, Operator, StartFakeAgent


def network(name: str, cidr: str = "10.40.0.0/24", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Network", "metadata": {"name": name},
            "spec": {"subnets": [{"cidr": cidr}], **spec}}  # fmt: skip


def status_of(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.get_json(kind, name, "-n", namespace).get("status", {})
    return found


def warnings(cluster: Cluster, namespace: str, name: str) -> set[tuple[str, str]]:
    """(type, reason) of the Events recorded on the object `name`."""
    found = cluster.get_json("events", "-n", namespace, "--field-selector",
                             f"involvedObject.name={name}")["items"]  # fmt: skip
    return {(e["type"], e["reason"]) for e in found}


def ready_of(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return condition(status_of(cluster, namespace, kind, name), "Ready") or {}


def test_every_network_holds_its_own_segment_and_waits_for_its_instances(
    cluster: Cluster,
    namespace: str,
    start_fake_agent: StartFakeAgent,
    operator: Operator,
    image_server: ImageServer,
) -> None:
    node = start_fake_agent(physical_networks={"physnet1": "br-phys1"})
    vlan = {"type": "vlan", "physicalNetwork": "physnet1", "segmentationId": 100}
    apply(cluster, namespace, network("blue"), network("green"),
          network("first", **vlan))  # fmt: skip
    for name in ("blue", "green", "first"):
        wait_until(f"{name} Ready", lambda n=name: ready_of(
            cluster, namespace, "network", n).get("status") == "True")  # fmt: skip
    vnis = {status_of(cluster, namespace, "network", n)["segmentationId"]
            for n in ("blue", "green")}  # fmt: skip
    assert len(vnis) == 2, vnis  # allocated, distinct (same CIDR: isolation is the segment's)

    # The same VLAN on the same physical network: refused, naming the field and the holder;
    # on another physical network it is another segment.
    apply(cluster, namespace, network("second", **vlan),
          network("elsewhere", **{**vlan, "physicalNetwork": "physnet2"}))  # fmt: skip
    wait_until("second refused", lambda: ready_of(
        cluster, namespace, "network", "second").get("reason") == "SegmentInUse")  # fmt: skip
    refused = status_of(cluster, namespace, "network", "second")
    assert (condition(refused, "Ready") or {})["message"] == (
        f"spec.segmentationId: VLAN 100 on physical network physnet1 is used by Network "
        f"{namespace}/first"
    )
    assert (condition(refused, "Stalled") or {})["status"] == "True"
    wait_until("a Warning Event on second", lambda: ("Warning", "SegmentInUse") in warnings(
        cluster, namespace, "second"))  # fmt: skip
    wait_until("elsewhere Ready", lambda: ready_of(
        cluster, namespace, "network", "elsewhere").get("status") == "True")  # fmt: skip

    # An Instance on the refused Network waits, naming its NIC's field.
    apply(cluster, namespace, *basics(image_server.url())[1:],
          instance("stuck", networks=[{"name": "second"}],
                   nodeSelector={"stratus.io/test": node.name}),
          instance("user", networks=[{"name": "blue"}],
                   nodeSelector={"stratus.io/test": node.name}))  # fmt: skip
    wait_until("stuck waits", lambda: ready_of(
        cluster, namespace, "instance", "stuck").get("reason") == "NetworkNotReady")  # fmt: skip
    assert ready_of(cluster, namespace, "instance", "stuck")["message"].startswith(
        "spec.networks[0].name: Network second cannot be used: spec.segmentationId: VLAN 100"
    )
    # No node has physnet2 (the fake agent maps physnet1 only): never placed, saying why.
    apply(cluster, namespace, instance("unwired", networks=[{"name": "elsewhere"}]))
    wait_until("unwired unschedulable", lambda: "without physical network physnet2" in ready_of(
        cluster, namespace, "instance", "unwired").get("message", ""))  # fmt: skip
    # The holder goes: the waiting Network gets the VLAN, and its Instance runs.
    cluster.kubectl("-n", namespace, "delete", "network", "first")
    wait_until("second Ready", lambda: ready_of(
        cluster, namespace, "network", "second").get("status") == "True", 120)  # fmt: skip
    assert status_of(cluster, namespace, "network", "second")["segmentationId"] == 100
    wait_until("stuck Running", lambda: status_of(
        cluster, namespace, "instance", "stuck").get("phase") == "Running", 120)  # fmt: skip
    # status.allocated counts the addresses in use (updated every few seconds): the NIC's
    # and its node's DHCP server's.
    wait_until("second counts its NIC and DHCP server", lambda: status_of(
        cluster, namespace, "network", "second").get("allocated") == 2, 60)  # fmt: skip
    assert status_of(cluster, namespace, "network", "green").get("allocated") == 0

    # Deleting a Network an Instance uses waits, naming it, until the Instance is gone.
    wait_until("user Running", lambda: status_of(
        cluster, namespace, "instance", "user").get("phase") == "Running")  # fmt: skip
    cluster.kubectl("-n", namespace, "delete", "network", "blue", "--wait=false")
    wait_until("blue's deletion waits", lambda: ready_of(
        cluster, namespace, "network", "blue").get("reason") == "NetworkInUse")  # fmt: skip
    assert "Instance user uses the network" in ready_of(cluster, namespace, "network", "blue")[
        "message"]  # fmt: skip
    wait_until("a Warning Event on blue", lambda: ("Warning", "NetworkInUse") in warnings(
        cluster, namespace, "blue"))  # fmt: skip
    cluster.kubectl("-n", namespace, "delete", "instance", "user")
    cluster.kubectl("-n", namespace, "wait", "--for=delete", "network/blue", "--timeout=90s")
    names = {n["metadata"]["name"] for n in cluster.get_json("networks", "-n", namespace)["items"]}
    assert names == {"green", "second", "elsewhere"}, json.dumps(sorted(names))
    cluster.kubectl("-n", namespace, "delete", "instance", "unwired", "stuck")


def test_each_node_hosting_a_network_hears_of_the_others_and_serves_dhcp(
    cluster: Cluster,
    namespace: str,
    start_fake_agent: StartFakeAgent,
    operator: Operator,
    image_server: ImageServer,
) -> None:
    """l2population through the real API server: every node hosting an overlay Network is
    told the other hosting nodes' tunnel endpoints and their guests' MACs, and its DHCP
    server's address; a node whose last guest of it goes is told to forget it."""
    nodes = [start_fake_agent(tunnel_ip=f"10.99.0.{k}") for k in (1, 2, 3)]
    apply(cluster, namespace, *basics(image_server.url()), *(
        instance(f"vm-{k}", nodeSelector={"stratus.io/test": node.name})
        for k, node in enumerate(nodes)))  # fmt: skip
    wait_until("all three Running", lambda: all(
        s.get("phase") == "Running" for s in statuses(cluster, namespace).values())
        and len(statuses(cluster, namespace)) == 3)  # fmt: skip
    net_uid = cluster.get_json("network", "net", "-n", namespace)["metadata"]["uid"]
    macs = {s["node"]: s["interfaces"][0]["mac"] for s in statuses(cluster, namespace).values()}
    endpoints = {node.name: f"10.99.0.{k}" for k, node in zip((1, 2, 3), nodes, strict=True)}

    def told(node: FakeAgent) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = node.request("GET", f"/v1/networks/{net_uid}")
            return found
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            return None

    def peers(node: FakeAgent) -> dict[str, list[str]]:
        spec = told(node) or {}
        return {p["endpoint"]: p["macs"] for p in spec.get("peers", [])}

    for node in nodes:
        expected = {endpoints[o.name]: [macs[o.name]] for o in nodes if o is not node}
        wait_until(f"{node.name} told its peers", lambda n=node, e=expected: peers(n) == e)
    spec = told(nodes[0]) or {}
    assert spec["segmentationId"] == status_of(cluster, namespace, "network", "net")[
        "segmentationId"] and spec["mtu"] == 1450  # fmt: skip
    [dhcp] = spec["dhcp"]
    servers = {s["node"]: s["addresses"] for s in status_of(
        cluster, namespace, "network", "net")["dhcpServers"]}  # fmt: skip
    assert sorted(servers) == sorted(n.name for n in nodes)
    assert dhcp == {"cidr": "10.30.0.0/24", "serverAddress": servers[nodes[0].name][0],
                    "gateway": "10.30.0.1", "dnsServers": [], "leaseSeconds": 86400}  # fmt: skip
    assert len({a[0] for a in servers.values()}) == 3

    # One more guest on node 1: the others hear only that, a change to the revision they
    # hold, not every name and MAC again.
    whole = nodes[1].served("PUT", "/v1/networks/{uid}")
    apply(cluster, namespace, instance("vm-3", nodeSelector={"stratus.io/test": nodes[0].name}))
    wait_until("vm-3 Running", lambda: statuses(cluster, namespace).get("vm-3", {}).get(
        "phase") == "Running")  # fmt: skip
    both = sorted(
        [macs[nodes[0].name], statuses(cluster, namespace)["vm-3"]["interfaces"][0]["mac"]]
    )
    wait_until("node 2 told of vm-3", lambda: peers(nodes[1])[endpoints[nodes[0].name]] == both)
    names = {(n["name"], n["address"]) for n in (told(nodes[1]) or {})["names"]}
    assert ("vm-3", statuses(cluster, namespace)["vm-3"]["interfaces"][0]["ip"]) in names
    assert nodes[1].served("PATCH", "/v1/networks/{uid}") > 0
    assert nodes[1].served("PUT", "/v1/networks/{uid}") == whole

    # The last guest on node 3 goes: node 3 forgets the Network, the others forget node 3,
    # and its DHCP server's address is free again.
    cluster.kubectl("delete", "instance", "vm-2", "-n", namespace)
    wait_until("node 3 told to forget", lambda: told(nodes[2]) is None)
    wait_until("node 1 forgot node 3",
               lambda: sorted(peers(nodes[0])) == [endpoints[nodes[1].name]])  # fmt: skip
    wait_until("node 3's DHCP address released", lambda: sorted(
        s["node"] for s in status_of(cluster, namespace, "network", "net")["dhcpServers"])
        == sorted(n.name for n in nodes[:2]))  # fmt: skip
