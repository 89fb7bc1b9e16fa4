"""FloatingIPs through the real API server and operator, on fake agents: a FloatingIP holds
an address of its external Network and its Router's node maps it onto the Instance's fixed
address; it follows the Instance, says what keeps it from leading anywhere (naming the
field), and gives the address back on delete."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from testsupport import Cluster, apply, basics, condition, instance, wait_until

if TYPE_CHECKING:
    from conftest import FakeAgent, ImageServer, Operator, StartFakeAgent


def network(name: str, cidr: str, **spec: Any) -> dict[str, Any]:
    gateway = cidr.replace(".0/", ".1/").split("/")[0]
    subnet = {"cidr": cidr, "gateway": gateway, **spec.pop("subnet", {})}
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Network", "metadata": {"name": name},
            "spec": {"subnets": [subnet], **spec}}  # fmt: skip


def router(name: str, *networks: str, external: str) -> dict[str, Any]:
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "Router", "metadata": {"name": name},
            "spec": {"networks": [{"name": n} for n in networks],
                     "externalGateway": {"network": external}}}  # fmt: skip


def floating_ip(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "stratus.io/v1alpha1", "kind": "FloatingIP",
            "metadata": {"name": name}, "spec": {"network": "public", **spec}}  # fmt: skip


def status_of(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.get_json(kind, name, "-n", namespace).get("status", {})
    return found


def ready_of(cluster: Cluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return condition(status_of(cluster, namespace, kind, name), "Ready") or {}


def mapped_on(node: FakeAgent, router_uid: str) -> list[dict[str, str]]:
    found: list[dict[str, str]] = node.request("GET", f"/v1/routers/{router_uid}").get(
        "floating", []
    )
    return found


def test_a_floating_ip_leads_to_its_instance_through_the_router_and_is_given_back(
    cluster: Cluster, namespace: str, start_fake_agent: StartFakeAgent, operator: Operator,
    image_server: ImageServer,
) -> None:  # fmt: skip
    physnet = f"ext-{uuid.uuid4().hex[:8]}"
    node = start_fake_agent(physical_networks={physnet: "br-ex"})
    pinned = {"nodeSelector": {"stratus.io/test": node.name}}
    apply(cluster, namespace, *basics(image_server.url()),
          network("public", "172.24.6.0/24", type="flat", physicalNetwork=physnet,
                  external=True),
          router("edge", "net", external="public"),
          instance("web", **pinned), floating_ip("web-ip", instance="web"),
          floating_ip("spare"))  # fmt: skip
    wait_until("web-ip Ready", lambda: ready_of(
        cluster, namespace, "floatingip", "web-ip").get("status") == "True",
        timeout=90)  # fmt: skip
    status = status_of(cluster, namespace, "floatingip", "web-ip")
    fixed = status_of(cluster, namespace, "instance", "web")["interfaces"][0]["ip"]
    assert status["fixedAddress"] == fixed and status["router"] == "edge"
    assert status["node"] == node.name
    assert ready_of(cluster, namespace, "floatingip", "web-ip")["reason"] == "Mapped"
    router_uid = cluster.get_json("router", "edge", "-n", namespace)["metadata"]["uid"]
    assert mapped_on(node, router_uid) == [{"address": status["address"], "fixed": fixed}]
    # The router holds .254 (the highest free); floating addresses come from the bottom.
    assert status["address"] in ("172.24.6.2", "172.24.6.3")

    # Without an Instance it is held, and leads nowhere.
    wait_until("spare Ready", lambda: ready_of(
        cluster, namespace, "floatingip", "spare").get("reason") == "Allocated")  # fmt: skip
    spare = status_of(cluster, namespace, "floatingip", "spare")["address"]
    assert spare not in (status["address"], "172.24.6.254") and "fixedAddress" not in (
        status_of(cluster, namespace, "floatingip", "spare")
    )
    wait_until("three addresses counted", lambda: status_of(
        cluster, namespace, "network", "public").get("allocated") == 3)  # fmt: skip

    # Moved onto another Instance: the router maps it there instead.
    apply(cluster, namespace, instance("db", **pinned))
    wait_until("db has an address", lambda: status_of(
        cluster, namespace, "instance", "db").get("interfaces", [{}])[0].get("ip"))  # fmt: skip
    db_fixed = status_of(cluster, namespace, "instance", "db")["interfaces"][0]["ip"]
    apply(cluster, namespace, floating_ip("web-ip", instance="db"))
    wait_until("web-ip moved to db", lambda: status_of(
        cluster, namespace, "floatingip", "web-ip").get("fixedAddress") == db_fixed)  # fmt: skip
    assert mapped_on(node, router_uid) == [{"address": status["address"], "fixed": db_fixed}]

    # Its Instance deleted: unmapped within a health interval, waiting for it.
    cluster.kubectl("-n", namespace, "delete", "instance", "db", "--timeout=60s")
    wait_until("web-ip unmapped", lambda: ready_of(
        cluster, namespace, "floatingip", "web-ip").get("reason") == "InstanceNotFound",
        timeout=60)  # fmt: skip
    assert mapped_on(node, router_uid) == []
    assert status_of(cluster, namespace, "floatingip", "web-ip")["address"] == status["address"]

    cluster.kubectl("-n", namespace, "delete", "floatingip", "web-ip", "spare", "--timeout=60s")
    wait_until("addresses given back", lambda: status_of(
        cluster, namespace, "network", "public").get("allocated") == 1)  # fmt: skip


def test_what_keeps_a_floating_ip_from_leading_anywhere_is_named(
    cluster: Cluster, namespace: str, start_fake_agent: StartFakeAgent, operator: Operator,
    image_server: ImageServer,
) -> None:  # fmt: skip
    physnet = f"ext-{uuid.uuid4().hex[:8]}"
    node = start_fake_agent(physical_networks={physnet: "br-ex"})
    # Two addresses in the pool: the router takes the higher, one is left for FloatingIPs.
    pool = {"allocationPools": ["172.24.5.10/31"]}
    apply(cluster, namespace, *basics(image_server.url()),
          network("public", "172.24.5.0/24", type="flat", physicalNetwork=physnet,
                  external=True, subnet=pool),
          network("other", "10.31.0.0/24"),
          router("edge", "net", external="public"),
          instance("web", nodeSelector={"stratus.io/test": node.name}))  # fmt: skip
    wait_until("edge Ready", lambda: ready_of(
        cluster, namespace, "router", "edge").get("status") == "True", timeout=90)  # fmt: skip
    apply(cluster, namespace, floating_ip("first", address="172.24.5.10"))
    wait_until("first Ready", lambda: ready_of(
        cluster, namespace, "floatingip", "first").get("status") == "True", timeout=90)  # fmt: skip

    # The same address again: refused, naming the field; the pool is empty too.
    apply(cluster, namespace, floating_ip("again", address="172.24.5.10"),
          floating_ip("more"))  # fmt: skip
    wait_until("again refused", lambda: ready_of(
        cluster, namespace, "floatingip", "again").get("reason") == "AddressInUse")  # fmt: skip
    again = status_of(cluster, namespace, "floatingip", "again")
    assert ready_of(cluster, namespace, "floatingip", "again")["message"] == (
        "spec.address: 172.24.5.10 is already in use on this network"
    )
    assert (condition(again, "Stalled") or {}).get("status") == "True"
    wait_until("more waits for an address", lambda: ready_of(
        cluster, namespace, "floatingip", "more").get("reason") == "PoolExhausted")  # fmt: skip
    more = status_of(cluster, namespace, "floatingip", "more")
    assert ready_of(cluster, namespace, "floatingip", "more")["message"].startswith(
        "spec.network: no free address left in 172.24.5.0/24"
    )
    assert (condition(more, "Reconciling") or {}).get("status") == "True"
    cluster.kubectl("-n", namespace, "delete", "floatingip", "again", "more", "--timeout=60s")

    # An Instance on a Network no Router leads out of: it waits, saying so.
    apply(cluster, namespace, floating_ip("first", address="172.24.5.10", instance="web",
                                          nic="other"))  # fmt: skip
    wait_until("no such NIC", lambda: ready_of(
        cluster, namespace, "floatingip", "first").get("reason") == "NicNotFound")  # fmt: skip
    assert ready_of(cluster, namespace, "floatingip", "first")["message"] == (
        "spec.nic: Instance web has no NIC on Network other (its NICs: net)"
    )
    apply(cluster, namespace, router("edge", "other", external="public"),
          floating_ip("first", address="172.24.5.10", instance="web"))  # fmt: skip
    wait_until("no Router leads out of net", lambda: ready_of(
        cluster, namespace, "floatingip", "first").get("reason") == "NoRouter",
        timeout=60)  # fmt: skip
    assert ready_of(cluster, namespace, "floatingip", "first")["message"] == (
        "spec.instance: no Router joins Network net (Instance web's NICs) and leads out "
        f"through Network {namespace}/public"
    )

    # The Router joins net again: mapped, without touching the FloatingIP.
    apply(cluster, namespace, router("edge", "net", "other", external="public"))
    wait_until("first mapped", lambda: ready_of(
        cluster, namespace, "floatingip", "first").get("reason") == "Mapped",
        timeout=60)  # fmt: skip
