"""Routers through the real API server and operator, on fake agents: a Router is placed on
a node that has its external Network's physical network, holds an address there, gets its
Networks' node specs to that node and then its own, moves when the node is lost, says what
it cannot route (naming the field), and leaves its node on delete."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from testsupport import Cluster, apply, condition, wait_until

if TYPE_CHECKING:
    from conftest import FakeAgent, Operator, StartFakeAgent


def network(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    gateway = cidr.replace(".0/", ".1/").split("/")[0]
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Network", "metadata": {"name": name},
            "spec": {"subnets": [{"cidr": cidr, "gateway": gateway}], **spec}}  # fmt: skip


def router(name: str, *networks: str, external: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"networks": [{"name": n} for n in networks]}
    if external is not None:
        spec["externalGateway"] = {"network": external}
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Router", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def status_of(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.get_json(kind, name, "-n", namespace).get("status", {})
    return found


def ready_of(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return condition(status_of(cluster, namespace, "router", name), "Ready") or {}


def uid_of(cluster: Cluster, namespace: str, kind: str, name: str) -> str:
    found: str = cluster.get_json(kind, name, "-n", namespace)["metadata"]["uid"]
    return found


def routers_on(agent: FakeAgent) -> list[str]:
    found: list[str] = agent.request("GET", "/v1/routers")["routers"]
    return found


def test_a_router_runs_on_a_node_with_its_external_network_and_leaves_it_on_delete(
    cluster: Cluster, namespace: str, start_fake_agent: StartFakeAgent, operator: Operator
) -> None:
    physnet = f"ext-{uuid.uuid4().hex[:8]}"  # physical networks are cluster-wide
    inside = start_fake_agent()
    edge_node = start_fake_agent(physical_networks={physnet: "br-ex"})
    apply(cluster, namespace, network("web", "10.50.0.0/24"), network("db", "10.51.0.0/24"),
          network("public", "172.24.9.0/24", type="flat", physicalNetwork=physnet,
                  external=True),
          router("edge", "web", "db", external="public"))  # fmt: skip
    wait_until("edge Ready", lambda: ready_of(cluster, namespace, "edge").get("status") == "True")
    status = status_of(cluster, namespace, "router", "edge")
    assert status["node"] == edge_node.name and status["node"] != inside.name
    assert status["externalAddress"] == "172.24.9.254"  # the highest free in the pool
    assert {i["network"]: i["addresses"] for i in status["interfaces"]} == {
        "web": ["10.50.0.1/24"], "db": ["10.51.0.1/24"]}  # fmt: skip
    assert ready_of(cluster, namespace, "edge")["reason"] == "Routing"

    uid = uid_of(cluster, namespace, "router", "edge")
    built = edge_node.request("GET", f"/v1/routers/{uid}")
    assert [p["addresses"] for p in built["ports"]] == [["10.50.0.1/24"], ["10.51.0.1/24"]]
    assert built["external"]["addresses"] == ["172.24.9.254/24"]
    assert built["external"]["gateway"] == "172.24.9.1" and built["external"]["snat"]
    # The node holds the node specs of all three Networks, told before the router.
    told = set(edge_node.request("GET", "/v1/networks")["networks"])
    assert {uid_of(cluster, namespace, "network", n) for n in ("web", "db", "public")} <= told
    assert routers_on(inside) == []

    # The external address is held in the Network's pool (no Instance gets it), and the
    # Router's node runs no DHCP server there: the one address in use is the Router's.
    wait_until("the address counted", lambda: status_of(
        cluster, namespace, "network", "public").get("allocated") == 1)  # fmt: skip
    assert not status_of(cluster, namespace, "network", "public").get("dhcpServers")

    cluster.kubectl("-n", namespace, "delete", "router", "edge", "--timeout=60s")
    assert routers_on(edge_node) == []


def test_what_a_router_cannot_route_is_stalled_naming_the_field(
    cluster: Cluster, namespace: str, start_fake_agent: StartFakeAgent, operator: Operator
) -> None:
    start_fake_agent()
    apply(cluster, namespace, network("web", "10.60.0.0/24"),
          network("wide", "10.60.0.0/16"), network("plain", "10.61.0.0/24"),
          router("both", "web", "wide"), router("out", "web", external="plain"),
          router("later", "web", "missing"))  # fmt: skip
    wait_until("both Stalled", lambda: ready_of(cluster, namespace, "both").get(
        "reason") == "SubnetsOverlap")  # fmt: skip
    stalled = status_of(cluster, namespace, "router", "both")
    assert (condition(stalled, "Stalled") or {}).get("status") == "True"
    assert ready_of(cluster, namespace, "both")["message"].startswith(
        "spec.networks[1].name: subnet 10.60.0.0/16 of Network wide overlaps 10.60.0.0/24"
    )
    wait_until("out Stalled", lambda: ready_of(cluster, namespace, "out").get(
        "reason") == "NetworkNotExternal")  # fmt: skip
    assert ready_of(cluster, namespace, "out")["message"].startswith(
        "spec.externalGateway.network: "
    )
    wait_until("later waits", lambda: ready_of(cluster, namespace, "later").get(
        "reason") == "NetworkNotFound")  # fmt: skip
    waiting = status_of(cluster, namespace, "router", "later")
    assert (condition(waiting, "Reconciling") or {}).get("status") == "True"

    # The missing Network appears: the Router is built without being touched.
    apply(cluster, namespace, network("missing", "10.62.0.0/24"))
    wait_until("later Ready", lambda: ready_of(cluster, namespace, "later").get(
        "status") == "True", timeout=90)  # fmt: skip


def test_a_router_moves_when_its_node_is_lost_and_the_node_forgets_it_on_return(
    cluster: Cluster, namespace: str, start_fake_agent: StartFakeAgent, operator: Operator
) -> None:
    physnet = f"ext-{uuid.uuid4().hex[:8]}"
    first = start_fake_agent(physical_networks={physnet: "br-ex"})
    apply(cluster, namespace, network("web", "10.55.0.0/24"),
          network("public", "172.24.8.0/24", type="flat", physicalNetwork=physnet,
                  external=True),
          router("edge", "web", external="public"))  # fmt: skip
    wait_until("edge Ready", lambda: ready_of(cluster, namespace, "edge").get("status") == "True")
    assert status_of(cluster, namespace, "router", "edge")["node"] == first.name
    address = status_of(cluster, namespace, "router", "edge")["externalAddress"]
    second = start_fake_agent(physical_networks={physnet: "br-ex"})

    first.stop()
    wait_until("edge moved", lambda: status_of(
        cluster, namespace, "router", "edge").get("node") == second.name, timeout=90)  # fmt: skip
    uid = uid_of(cluster, namespace, "router", "edge")
    assert routers_on(second) == [uid]
    assert status_of(cluster, namespace, "router", "edge")["externalAddress"] == address

    first.start()  # the fake driver kept nothing, as a wiped node; a real one keeps its
    # routers on disk and is told to remove them: shown with a router PUT by hand.
    spec = second.request("GET", f"/v1/routers/{uid}")
    first.request("PUT", f"/v1/routers/{uid}", spec)
    wait_until("the old node told to forget", lambda: routers_on(first) == [], timeout=60)
    assert routers_on(second) == [uid]
